//! The directory server's fast path (plain GETs of a file, large bodies by `sendfile`) over
//! raw TCP on 127.0.0.1: the same bytes as hyper's answers, whole files and ranges byte for
//! byte, files swapped or resized while served, slow readers, pipelining across the hand-over
//! to hyper, and graceful shutdown.

use super::*;
use std::net::SocketAddr;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

/// The request target of a signed URL: what follows `http://host:port`.
fn target(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    url[after_scheme..]
        .find('/')
        .map_or(url, |i| &url[after_scheme + i..])
}

/// `GET` (or another method) for a signed URL, HTTP/1.1, with `more` header lines.
pub(super) fn request(method: &str, url: &str, more: &str) -> Vec<u8> {
    format!(
        "{method} {} HTTP/1.1\r\nHost: files.test\r\n{more}\r\n",
        target(url)
    )
    .into_bytes()
}

/// A connection; with `receive_buffer`, a small socket receive buffer makes a reader slow.
pub(super) async fn connect(addr: SocketAddr, receive_buffer: Option<u32>) -> BufReader<TcpStream> {
    let socket = TcpSocket::new_v4().expect("socket");
    if let Some(size) = receive_buffer {
        socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
    }
    BufReader::new(socket.connect(addr).await.expect("connect"))
}

#[derive(Debug)]
struct Answer {
    /// The status line and header lines, without line ends.
    head: Vec<String>,
    body: Vec<u8>,
}

impl Answer {
    fn status(&self) -> u16 {
        self.head[0]
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status line")
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head[1..].iter().find_map(|line| {
            let (key, value) = line.split_once(": ")?;
            key.eq_ignore_ascii_case(name).then_some(value)
        })
    }

    /// The head without its `date` line, which differs from second to second.
    fn dateless_head(&self) -> Vec<&str> {
        self.head
            .iter()
            .map(String::as_str)
            .filter(|line| !line.starts_with("date: "))
            .collect()
    }
}

pub(super) async fn read_head(connection: &mut BufReader<TcpStream>) -> Vec<String> {
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        let n = connection.read_line(&mut line).await.expect("head");
        assert!(n > 0, "connection closed in a head: {head:?}");
        let line = line.trim_end_matches("\r\n").to_string();
        if line.is_empty() {
            return head;
        }
        head.push(line);
    }
}

/// One answer: its head, then `content-length` bytes of body (none for a HEAD).
async fn read_answer(connection: &mut BufReader<TcpStream>, has_body: bool) -> Answer {
    let head = read_head(connection).await;
    let mut answer = Answer {
        head,
        body: Vec::new(),
    };
    if has_body {
        let length: usize = answer
            .header("content-length")
            .and_then(|l| l.parse().ok())
            .expect("content-length");
        answer.body = vec![0; length];
        connection
            .read_exact(&mut answer.body)
            .await
            .expect("whole body");
    }
    answer
}

async fn ask(addr: SocketAddr, bytes: &[u8]) -> Answer {
    let mut connection = connect(addr, None).await;
    connection.get_mut().write_all(bytes).await.expect("send");
    read_answer(&mut connection, true).await
}

/// Bytes whose value depends on their offset with a period (251) that is no power of two, so
/// a body shifted by a chunk or a page shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn sparse(path: &Path, len: u64) {
    std::fs::File::create(path)
        .and_then(|file| file.set_len(len))
        .expect("sparse file");
}

#[tokio::test]
async fn whole_files_and_ranges_are_byte_identical_on_both_sides_of_the_sendfile_threshold() {
    let f = fixture(60).await;
    // 16 KiB is still sent from a buffer, one byte more by sendfile; 3 MiB takes several
    // sendfile calls.
    for size in [16 * 1024, 16 * 1024 + 1, 3 * 1024 * 1024 + 123] {
        let content = pattern(size);
        let name = format!("app/file-{size}.bin");
        write(&f.home().join(&name), &content);
        let url = f.instance_url("abc", &name);
        let response = f.get(&url).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-length"], size.to_string());
        assert_eq!(
            response.headers()["content-type"],
            "application/octet-stream"
        );
        assert!(response.bytes().await.expect("body") == content, "{size}");

        let middle = size / 2;
        for (range, start, end) in [
            ("bytes=0-0".to_string(), 0, 0),
            ("bytes=1-".to_string(), 1, size - 1),
            ("bytes=-1".to_string(), size - 1, size - 1),
            ("bytes=-5000".to_string(), size - 5000, size - 1),
            (
                format!("bytes={}-{}", middle - 5, middle + 5),
                middle - 5,
                middle + 5,
            ),
            (format!("bytes=100-{}", size + 1000), 100, size - 1),
        ] {
            let response = f
                .client
                .get(&url)
                .header("Range", &range)
                .send()
                .await
                .expect("request");
            assert_eq!(response.status(), 206, "{size} {range}");
            assert_eq!(
                response.headers()["content-range"],
                format!("bytes {start}-{end}/{size}"),
                "{size} {range}"
            );
            let body = response.bytes().await.expect("body");
            assert!(body == content[start..=end], "{size} {range}");
        }
        let response = f
            .client
            .get(&url)
            .header("Range", format!("bytes={size}-"))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 416);
    }
}

#[tokio::test]
async fn the_fast_path_answers_exactly_as_hyper_does() {
    let f = fixture(60).await;
    let addr = f.server.local_addr;
    let log = f.instance_url("abc", "logs/stdout.log");
    let data = f.instance_url("abc", "app/data.bin");
    for (url, more) in [
        (&log, ""),
        (&log, "Range: bytes=6-9\r\n"),
        (&log, "If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n"),
        (&data, ""),
        (&data, "Range: bytes=100000-150000\r\n"),
        (&data, "Range: bytes=-10\r\n"),
        (&log, "Connection: keep-alive\r\n"),
        (&log, "Connection: close\r\n"),
        (&data, "Range: bytes=5-100004\r\nConnection: close\r\n"),
    ] {
        let get = request("GET", url, more);
        // A fresh connection's first GET of a file is the fast path's.
        let mut connection = connect(addr, None).await;
        connection.get_mut().write_all(&get).await.expect("send");
        let fast = read_answer(&mut connection, true).await;
        if more.contains("close") {
            let mut rest = Vec::new();
            connection.read_to_end(&mut rest).await.expect("closed");
            assert!(rest.is_empty());
        }
        // After a HEAD (which only hyper answers) the connection is hyper's for good.
        let mut connection = connect(addr, None).await;
        let mut both = request("HEAD", url, &more.replace("Connection: close\r\n", ""));
        both.extend_from_slice(&get);
        connection.get_mut().write_all(&both).await.expect("send");
        let head = read_answer(&mut connection, false).await;
        let hyper = read_answer(&mut connection, true).await;
        assert_eq!(fast.dateless_head(), hyper.dateless_head(), "{more}");
        // The HEAD asked to keep the connection, so its answer lacks only that line.
        let mut hyper_head = hyper.dateless_head();
        hyper_head.retain(|line| *line != "connection: close");
        assert_eq!(head.dateless_head(), hyper_head, "{more}");
        assert!(fast.header("date").is_some());
        assert!(fast.body == hyper.body, "{more}");
        assert!(matches!(fast.status(), 200 | 206));
    }
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_across_the_hand_over() {
    let f = fixture(60).await;
    let log = f.instance_url("abc", "logs/stdout.log");
    let data = f.instance_url("abc", "app/data.bin");
    let forged = log.replacen("hmac=", "hmac=0", 1);
    let mut all = request("GET", &log, "");
    all.extend_from_slice(&request("GET", &data, "Range: bytes=100000-150000\r\n"));
    all.extend_from_slice(&request("GET", &forged, ""));
    all.extend_from_slice(&request("GET", &log, ""));
    let mut connection = connect(f.server.local_addr, None).await;
    // One write: the server finds the later requests already read.
    connection.get_mut().write_all(&all).await.expect("send");
    let expected: Vec<u8> = (100_000..=150_000).map(|i| (i % 256) as u8).collect();
    let answers = [
        (200, b"hello from the app\n".to_vec()),
        (206, expected),
        (401, br#"{"error":"Invalid HMAC"}"#.to_vec()),
        (200, b"hello from the app\n".to_vec()),
    ];
    for (index, (status, body)) in answers.into_iter().enumerate() {
        let answer = read_answer(&mut connection, true).await;
        assert_eq!(answer.status(), status, "answer {index}");
        assert!(answer.body == body, "answer {index}");
    }
}

/// Replaces whatever is at `path` by `make`'s making.
fn swap(path: &Path, make: impl FnOnce(&Path)) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(_) => std::fs::remove_dir_all(path).expect("remove"),
    }
    make(path);
}

fn fifo(path: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .expect("mkfifo");
}

#[tokio::test]
async fn a_file_swapped_for_a_link_a_fifo_or_a_device_is_refused_at_once() {
    let f = fixture(60).await;
    let swapped = f.home().join("app/swapped");
    write(&swapped, "regular");
    fifo(&f.home().join("app/pipe"));
    let url = f.instance_url("abc", "app/swapped");
    let refused = (403, r#"{"error":"Not accessible"}"#.to_string());
    let fixture = &f;
    let get = |url: String| async move {
        tokio::time::timeout(Duration::from_secs(5), fixture.get_text(&url))
            .await
            .expect("answered without hanging")
    };
    assert_eq!(get(url.clone()).await, (200, "regular".to_string()));

    type Make = Box<dyn FnOnce(&Path)>;
    let mut attacks: Vec<(&str, Make)> = vec![
        (
            "link to /dev/zero",
            Box::new(|p| symlink("/dev/zero", p).expect("symlink")),
        ),
        (
            "link to /etc/passwd",
            Box::new(|p| symlink("/etc/passwd", p).expect("symlink")),
        ),
        (
            "link into another instance",
            Box::new(|p| symlink("../../other/secret", p).expect("symlink")),
        ),
        ("FIFO", Box::new(fifo)),
        (
            "link to a FIFO inside",
            Box::new(|p| symlink("pipe", p).expect("symlink")),
        ),
    ];
    // A device node needs CAP_MKNOD; the test runs as root on CI, not always elsewhere.
    let probe = f.home().join("app/probe-device");
    let dev_null = rustix::fs::makedev(1, 3);
    let devices = rustix::fs::mknodat(
        rustix::fs::CWD,
        &probe,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        dev_null,
    )
    .is_ok();
    if devices {
        std::fs::remove_file(&probe).expect("remove probe");
        attacks.push((
            "character device",
            Box::new(move |p| {
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    p,
                    rustix::fs::FileType::CharacterDevice,
                    rustix::fs::Mode::from_raw_mode(0o666),
                    dev_null,
                )
                .expect("mknod")
            }),
        ));
    }
    for (what, make) in attacks {
        swap(&swapped, make);
        assert_eq!(get(url.clone()).await, refused, "{what}");
        // The same on a connection of its own, where it is the first request.
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            ask(f.server.local_addr, &request("GET", &url, "")),
        )
        .await
        .expect("answered without hanging");
        assert_eq!(answer.status(), 403, "{what}");
    }
    // A directory there is listed (by hyper), a file served again.
    swap(&swapped, |p| std::fs::create_dir(p).expect("mkdir"));
    assert_eq!(get(url.clone()).await.0, 200);
    swap(&swapped, |p| std::fs::write(p, "again").expect("write"));
    assert_eq!(get(url).await, (200, "again".to_string()));
}

#[tokio::test]
async fn a_file_that_shrinks_while_sent_ends_the_connection_short() {
    let f = fixture(60).await;
    let path = f.home().join("app/shrinks.bin");
    let size = 64 << 20;
    sparse(&path, size);
    let mut connection = connect(f.server.local_addr, Some(16 * 1024)).await;
    let get = request("GET", &f.instance_url("abc", "app/shrinks.bin"), "");
    connection.get_mut().write_all(&get).await.expect("send");
    let head = read_head(&mut connection).await;
    assert!(
        head.contains(&format!("content-length: {size}")),
        "{head:?}"
    );
    // The slow reader has taken almost nothing; the rest is now gone.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|file| file.set_len(1 << 20))
        .expect("truncate");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), connection.read_to_end(&mut rest))
        .await
        .expect("the server closes the connection instead of hanging")
        .expect("read");
    assert!(
        (rest.len() as u64) < size,
        "{} bytes of a response promised {size} and cut short",
        rest.len()
    );
}

#[tokio::test]
async fn a_file_that_grows_while_sent_gets_exactly_its_promised_length() {
    let f = fixture(60).await;
    let path = f.home().join("app/grows.bin");
    let before = pattern(8 << 20);
    write(&path, &before);
    let url = f.instance_url("abc", "app/grows.bin");
    let mut connection = connect(f.server.local_addr, Some(16 * 1024)).await;
    connection
        .get_mut()
        .write_all(&request("GET", &url, ""))
        .await
        .expect("send");
    let head = read_head(&mut connection).await;
    assert!(head.contains(&format!("content-length: {}", before.len())));
    append(&path, &pattern(1 << 20));
    let mut body = vec![0; before.len()];
    connection.read_exact(&mut body).await.expect("body");
    assert!(body == before);
    // Nothing beyond the promised length came: the next answer on this connection starts
    // right here, and has the new length.
    connection
        .get_mut()
        .write_all(&request("GET", &url, ""))
        .await
        .expect("send");
    let answer = read_answer(&mut connection, true).await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.body.len(), (9 << 20) as usize);
    assert!(answer.body[before.len()..] == pattern(1 << 20)[..]);
}

#[tokio::test]
async fn slow_readers_of_large_files_do_not_hold_up_other_clients() {
    let f = fixture(60).await;
    sparse(&f.home().join("app/large.bin"), 64 << 20);
    let large = request("GET", &f.instance_url("abc", "app/large.bin"), "");
    // Enough connections that every worker has some; none of them reads past the head.
    let mut stalled = Vec::new();
    for _ in 0..8 {
        let mut connection = connect(f.server.local_addr, Some(16 * 1024)).await;
        connection.get_mut().write_all(&large).await.expect("send");
        read_head(&mut connection).await;
        stalled.push(connection);
    }
    let started = std::time::Instant::now();
    for _ in 0..40 {
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            f.get_text(&f.instance_url("abc", "logs/stdout.log")),
        )
        .await
        .expect("answered while large bodies wait for their readers");
        assert_eq!(answer, (200, "hello from the app\n".to_string()));
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(stalled);
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_finishes_bodies_in_flight() {
    let f = fixture(60).await;
    let addr = f.server.local_addr;
    let log = f.instance_url("abc", "logs/stdout.log");
    let path = f.home().join("app/in-flight.bin");
    let content = pattern(16 << 20);
    write(&path, &content);
    // Idle on the fast path, idle with hyper (after a HEAD), and a large body under way.
    let mut idle_fast = connect(addr, None).await;
    idle_fast
        .get_mut()
        .write_all(&request("GET", &log, ""))
        .await
        .expect("send");
    read_answer(&mut idle_fast, true).await;
    let mut idle_hyper = connect(addr, None).await;
    idle_hyper
        .get_mut()
        .write_all(&request("HEAD", &log, ""))
        .await
        .expect("send");
    read_answer(&mut idle_hyper, false).await;
    let mut in_flight = connect(addr, Some(16 * 1024)).await;
    in_flight
        .get_mut()
        .write_all(&request(
            "GET",
            &f.instance_url("abc", "app/in-flight.bin"),
            "",
        ))
        .await
        .expect("send");
    read_head(&mut in_flight).await;

    let Fixture {
        dir: _dir, server, ..
    } = f;
    let shutdown = tokio::spawn(server.shutdown(Duration::from_secs(30)));
    for idle in [&mut idle_fast, &mut idle_hyper] {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut rest))
            .await
            .expect("idle connections are closed")
            .expect("read");
        assert!(rest.is_empty());
    }
    let mut body = vec![0; content.len()];
    in_flight
        .read_exact(&mut body)
        .await
        .expect("the body in flight is finished");
    assert!(body == content);
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("shutdown ends once the body is sent")
        .expect("shutdown task");
    assert!(TcpStream::connect(addr).await.is_err(), "nothing listens");
}
