//! The directory server over real HTTP on 127.0.0.1, with real files in temporary directories:
//! URLs signed by an independent implementation of the DEA's scheme, every refusal with its
//! exact status and body, listings, ranges, conditional requests and `tail`.

use dea::files::{DirectoryServer, DirectoryServerConfig, FileRoot, FileRoots, UrlSigner};
use hmac::{Hmac, Mac};
use sha2::Sha512;
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const KEY: &str = "0123456789abcdef0123456789abcdef";

// ---- an independent implementation of the DEA's URL signing (reference dea_ng.md §5.3) ----

/// Ruby's `URI.encode_www_form_component`.
fn www_form(value: &[u8]) -> String {
    let mut out = String::new();
    for &b in value {
        if b.is_ascii_alphanumeric() || b"*-._".contains(&b) {
            out.push(b as char);
        } else if b == b' ' {
            out.push('+');
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn hmac_hex(url_path: &str, path: &str, timestamp: &str) -> String {
    let message = format!(
        "{url_path}?path={}&timestamp={}",
        www_form(path.as_bytes()),
        www_form(timestamp.as_bytes())
    );
    let mut mac = Hmac::<Sha512>::new_from_slice(KEY.as_bytes()).expect("any key length");
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

// ---- the agent's side: where files live ----

struct Roots {
    instances: HashMap<String, FileRoot>,
    tasks: HashMap<String, FileRoot>,
}

impl FileRoots for Roots {
    fn instance(&self, instance_id: &str) -> FileRoot {
        self.instances
            .get(instance_id)
            .cloned()
            .unwrap_or(FileRoot::Unknown)
    }
    fn staging_task(&self, task_id: &str) -> FileRoot {
        self.tasks
            .get(task_id)
            .cloned()
            .unwrap_or(FileRoot::Unknown)
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    server: DirectoryServer,
    client: reqwest::Client,
}

impl Fixture {
    fn base(&self) -> String {
        format!("http://{}", self.server.local_addr)
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("instances/abc")
    }

    /// A URL for instance `id` signed now, the path escaped canonically.
    fn instance_url(&self, id: &str, path: &str) -> String {
        self.signed(&format!("/instance_paths/{id}"), path, &now().to_string())
    }

    fn staging_url(&self, id: &str, path: &str) -> String {
        self.signed(
            &format!("/staging_tasks/{id}/file_path"),
            path,
            &now().to_string(),
        )
    }

    fn signed(&self, url_path: &str, path: &str, timestamp: &str) -> String {
        format!(
            "{}{url_path}?hmac={}&path={}&timestamp={timestamp}",
            self.base(),
            hmac_hex(url_path, path, timestamp),
            www_form(path.as_bytes())
        )
    }

    async fn get(&self, url: &str) -> reqwest::Response {
        self.client
            .get(url)
            .send()
            .await
            .expect("request completes")
    }

    async fn get_text(&self, url: &str) -> (u16, String) {
        let response = self.get(url).await;
        let status = response.status().as_u16();
        (status, response.text().await.expect("body"))
    }
}

/// Opens and reads of some files from now on, seen through inotify: proof that a refused
/// request never touched a file outside its root, not even to open it.
struct OpenWatch(rustix::fd::OwnedFd);

impl OpenWatch {
    fn new(paths: &[PathBuf]) -> OpenWatch {
        use rustix::fs::inotify::{CreateFlags, WatchFlags, add_watch, init};
        let fd = init(CreateFlags::NONBLOCK | CreateFlags::CLOEXEC).expect("inotify");
        for path in paths {
            add_watch(&fd, path, WatchFlags::OPEN | WatchFlags::ACCESS).expect("watch");
        }
        OpenWatch(fd)
    }

    fn events(&self) -> usize {
        let mut buffer = [std::mem::MaybeUninit::uninit(); 4096];
        let mut reader = rustix::fs::inotify::Reader::new(&self.0, &mut buffer);
        let mut count = 0;
        while reader.next().is_ok() {
            count += 1;
        }
        count
    }
}

fn write(path: &Path, content: impl AsRef<[u8]>) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, content).expect("write fixture");
}

/// `instances/abc` (a running instance's home), `instances/abc-evil` and `instances/other`
/// (siblings, one whose name extends `abc`), `instances/down` (not running), and a staging
/// task whose root holds the staging log.
async fn fixture(streaming_timeout_secs: u64) -> Fixture {
    fixture_with(DirectoryServerConfig {
        streaming_timeout_secs,
        ..DirectoryServerConfig::default()
    })
    .await
}

/// The same files, served with `config` (on any free port).
async fn fixture_with(config: DirectoryServerConfig) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let instances = dir.path().join("instances");
    let home = instances.join("abc");
    write(&home.join("logs/stdout.log"), "hello from the app\n");
    write(&home.join("logs/my file.txt"), "spaced\n");
    write(
        &home.join("app/data.bin"),
        (0..=255u8).cycle().take(200_000).collect::<Vec<_>>(),
    );
    write(&instances.join("abc-evil/secret"), "EVIL SECRET");
    write(&instances.join("other/secret"), "OTHER SECRET");
    symlink("/etc/passwd", home.join("passwd")).expect("symlink");
    symlink("../other/secret", home.join("sibling")).expect("symlink");
    symlink("../abc-evil/secret", home.join("prefix-sibling")).expect("symlink");
    symlink(instances.join("other/secret"), home.join("absolute")).expect("symlink");
    symlink("logs/stdout.log", home.join("inside")).expect("symlink");

    let task = dir.path().join("staging/t1");
    write(
        &task.join("tmp/staged/logs/staging_task.log"),
        "-----> Downloaded app\n",
    );
    symlink("staged", task.join("tmp/link")).expect("symlink");

    let roots = Roots {
        instances: HashMap::from([
            ("abc".to_string(), FileRoot::Dir(home)),
            ("down".to_string(), FileRoot::Unavailable),
        ]),
        tasks: HashMap::from([
            ("t1".to_string(), FileRoot::Dir(task)),
            ("pending".to_string(), FileRoot::Unavailable),
        ]),
    };
    let config = DirectoryServerConfig { port: 0, ..config };
    let server = dea::files::serve(&config, Arc::new(UrlSigner::new(KEY)), Arc::new(roots))
        .await
        .expect("server starts");
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    Fixture {
        dir,
        server,
        client,
    }
}

#[tokio::test]
async fn independently_signed_urls_verify_and_serve() {
    let f = fixture(60).await;
    let response = f.get(&f.instance_url("abc", "logs/stdout.log")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
    assert_eq!(response.text().await.expect("body"), "hello from the app\n");

    // The module's own signer produces the same URL shape and signature.
    let theirs = UrlSigner::new(KEY).instance_url(&f.base(), "abc", "logs/stdout.log");
    let (status, body) = f.get_text(&theirs).await;
    assert_eq!((status, body.as_str()), (200, "hello from the app\n"));
    let hmac = theirs
        .split("hmac=")
        .nth(1)
        .and_then(|rest| rest.split('&').next())
        .expect("hmac in URL");
    let timestamp = theirs.rsplit("timestamp=").next().expect("timestamp");
    assert_eq!(
        hmac,
        hmac_hex("/instance_paths/abc", "logs/stdout.log", timestamp)
    );

    let (status, body) = f
        .get_text(&f.staging_url("t1", "/tmp/staged/logs/staging_task.log"))
        .await;
    assert_eq!((status, body.as_str()), (200, "-----> Downloaded app\n"));
}

#[tokio::test]
async fn the_clients_escaping_does_not_matter() {
    let f = fixture(60).await;
    let ts = now().to_string();
    let hmac = hmac_hex("/instance_paths/abc", "logs/my file.txt", &ts);
    // Escaped differently from the canonical `logs%2Fmy+file.txt`: lowercase, `%20`, a needless
    // escape of `l`, a literal slash.
    for path in [
        "logs/my%20file.txt",
        "%6cogs%2fmy+file%2etxt",
        "logs%2Fmy+file.txt",
    ] {
        let url = format!(
            "{}/instance_paths/abc?timestamp={ts}&path={path}&hmac={hmac}",
            f.base()
        );
        assert_eq!(
            f.get_text(&url).await,
            (200, "spaced\n".to_string()),
            "{path}"
        );
    }
}

#[tokio::test]
async fn tampered_or_incomplete_urls_are_refused() {
    let f = fixture(60).await;
    let ts = now().to_string();
    let hmac = hmac_hex("/instance_paths/abc", "logs/stdout.log", &ts);
    let invalid = (401, r#"{"error":"Invalid HMAC"}"#.to_string());
    let mut flipped = hmac.clone().into_bytes();
    flipped[10] = if flipped[10] == b'0' { b'1' } else { b'0' };
    let flipped = String::from_utf8(flipped).expect("hex");
    let base = f.base();
    let cases = [
        // hmac tampered, shortened, upper-cased
        format!("{base}/instance_paths/abc?hmac={flipped}&path=logs%2Fstdout.log&timestamp={ts}"),
        format!(
            "{base}/instance_paths/abc?hmac={}&path=logs%2Fstdout.log&timestamp={ts}",
            &hmac[..64]
        ),
        format!(
            "{base}/instance_paths/abc?hmac={}&path=logs%2Fstdout.log&timestamp={ts}",
            hmac.to_uppercase()
        ),
        // path changed
        format!("{base}/instance_paths/abc?hmac={hmac}&path=logs%2Fstderr.log&timestamp={ts}"),
        // timestamp changed (made later, to outlive the URL)
        format!(
            "{base}/instance_paths/abc?hmac={hmac}&path=logs%2Fstdout.log&timestamp={}",
            now() + 100_000
        ),
        // another instance, or the staging route, with the same signature
        format!("{base}/instance_paths/abd?hmac={hmac}&path=logs%2Fstdout.log&timestamp={ts}"),
        format!(
            "{base}/staging_tasks/abc/file_path?hmac={hmac}&path=logs%2Fstdout.log&timestamp={ts}"
        ),
    ];
    for url in cases {
        assert_eq!(f.get_text(&url).await, invalid, "{url}");
    }
    assert_eq!(
        f.get_text(&format!("{base}/instance_paths/abc?path=x"))
            .await,
        (
            400,
            r#"{"error":"hmac is missing, timestamp is missing"}"#.to_string()
        )
    );
    assert_eq!(
        f.get_text(&format!(
            "{base}/instance_paths/abc?hmac=1&path=x&timestamp=soon"
        ))
        .await,
        (400, r#"{"error":"timestamp is invalid"}"#.to_string())
    );
}

#[tokio::test]
async fn expired_urls_are_refused_and_future_ones_accepted() {
    let f = fixture(60).await;
    let old = (now() - 3601).to_string();
    assert_eq!(
        f.get_text(&f.signed("/instance_paths/abc", "logs/stdout.log", &old))
            .await,
        (400, r#"{"error":"Url expired"}"#.to_string())
    );
    let recent = (now() - 3000).to_string();
    let future = (now() + 100_000).to_string();
    for ts in [recent, future] {
        let (status, _) = f
            .get_text(&f.signed("/instance_paths/abc", "logs/stdout.log", &ts))
            .await;
        assert_eq!(status, 200, "timestamp {ts}");
    }
}

#[tokio::test]
async fn nothing_outside_the_instance_is_served() {
    let f = fixture(60).await;
    let outside = [
        f.dir.path().join("instances/other/secret"),
        f.dir.path().join("instances/abc-evil/secret"),
    ];
    let watch = OpenWatch::new(&outside);
    let refused = (403, r#"{"error":"Not accessible"}"#.to_string());
    for path in [
        "../other/secret",
        "logs/../../other/secret",
        "../abc-evil/secret",
        "../../../../../../etc/passwd",
        "passwd",         // symlink to /etc/passwd
        "sibling",        // relative symlink into another instance
        "prefix-sibling", // passes the DEA's string-prefix test, not ours
        "absolute",       // absolute symlink into another instance
        "..",
    ] {
        assert_eq!(
            f.get_text(&f.instance_url("abc", path)).await,
            refused,
            "{path}"
        );
    }
    // Percent-encoded traversal, sent raw: decoded before checking, so it is just `..`.
    let ts = now().to_string();
    let hmac = hmac_hex("/instance_paths/abc", "../other/secret", &ts);
    let url = format!(
        "{}/instance_paths/abc?hmac={hmac}&path=%2e%2e%2fother%2Fsecret&timestamp={ts}",
        f.base()
    );
    assert_eq!(f.get_text(&url).await, refused);
    assert_eq!(watch.events(), 0, "a file outside was opened");
    // The watch does see opens.
    std::fs::read(&outside[0]).expect("read");
    assert!(watch.events() > 0);
    // An absolute path is joined to the home, as the DEA's File.join does: it names
    // <home>/etc/passwd, which does not exist, and never the host's /etc/passwd.
    let (status, body) = f.get_text(&f.instance_url("abc", "/etc/passwd")).await;
    assert_eq!((status, body.as_str()), (400, "Entity not found.\n"));
    // Symlinks that stay inside are fine, as in the DEA.
    let (status, body) = f.get_text(&f.instance_url("abc", "inside")).await;
    assert_eq!((status, body.as_str()), (200, "hello from the app\n"));
    let (status, body) = f
        .get_text(&f.instance_url("abc", "/logs/../logs/stdout.log"))
        .await;
    assert_eq!((status, body.as_str()), (200, "hello from the app\n"));
}

#[tokio::test]
async fn staging_paths_refuse_any_symlink_and_parent() {
    let f = fixture(60).await;
    let refused = (403, r#"{"error":"Not accessible"}"#.to_string());
    for path in [
        "/tmp/link/logs/staging_task.log",
        "/tmp/staged/../staged/logs/staging_task.log",
        "/../../../etc/passwd",
    ] {
        assert_eq!(
            f.get_text(&f.staging_url("t1", path)).await,
            refused,
            "{path}"
        );
    }
    assert_eq!(
        f.get_text(&f.staging_url("nope", "/tmp")).await,
        (404, r#"{"error":"Unknown staging task"}"#.to_string())
    );
    assert_eq!(
        f.get_text(&f.staging_url("pending", "/tmp")).await,
        (503, r#"{"error":"Staging task unavailable"}"#.to_string())
    );
}

#[tokio::test]
async fn unknown_unavailable_and_missing() {
    let f = fixture(60).await;
    assert_eq!(
        f.get_text(&f.instance_url("nope", "logs")).await,
        (404, r#"{"error":"Unknown instance"}"#.to_string())
    );
    assert_eq!(
        f.get_text(&f.instance_url("down", "logs")).await,
        (503, r#"{"error":"Instance unavailable"}"#.to_string())
    );
    let response = f.get(&f.instance_url("abc", "logs/missing.log")).await;
    assert_eq!(response.status(), 400);
    assert_eq!(response.headers()["content-type"], "text/plain");
    assert_eq!(response.headers()["x-cascade"], "pass");
    assert_eq!(response.text().await.expect("body"), "Entity not found.\n");
    // The HMAC is checked before anything is looked up.
    let ts = now().to_string();
    let url = format!(
        "{}/instance_paths/nope?hmac=00&path=logs&timestamp={ts}",
        f.base()
    );
    assert_eq!(f.get_text(&url).await.0, 401);
}

#[tokio::test]
async fn directories_are_listed_like_the_go_server() {
    let f = fixture(60).await;
    let dir = f.home().join("listing");
    write(&dir.join("b.txt"), [0u8; 10]);
    write(
        &dir.join("a-longer-name-than-thirty-five-characters.log"),
        [0u8; 1536],
    );
    std::fs::create_dir(dir.join("sub")).expect("mkdir");
    std::fs::File::create(dir.join("big.bin"))
        .and_then(|file| file.set_len(3 << 20))
        .expect("sparse file");
    std::fs::File::create(dir.join("huge.img"))
        .and_then(|file| file.set_len(5 << 30))
        .expect("sparse file");
    let response = f.get(&f.instance_url("abc", "listing")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/plain");
    assert_eq!(
        response.text().await.expect("body"),
        concat!(
            "a-longer-name-than-thirty-five-characters.log       1.5K\n",
            "b.txt                                      10B\n",
            "big.bin                                   3.0M\n",
            "huge.img                                  5.0G\n",
            "sub/                                         -\n",
        )
    );
    // The home itself, by an empty path and by `/`.
    for path in ["", "/"] {
        let (status, body) = f.get_text(&f.instance_url("abc", path)).await;
        assert_eq!(status, 200);
        assert!(
            body.contains("logs/                                        -\n"),
            "{body}"
        );
    }
}

#[tokio::test]
async fn ranges_and_conditional_requests() {
    let f = fixture(60).await;
    let url = f.instance_url("abc", "logs/stdout.log");
    let response = f
        .client
        .get(&url)
        .header("Range", "bytes=6-9")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 206);
    assert_eq!(response.headers()["content-range"], "bytes 6-9/19");
    assert_eq!(response.text().await.expect("body"), "from");

    let response = f
        .client
        .get(&url)
        .header("Range", "bytes=-4")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 206);
    assert_eq!(response.text().await.expect("body"), "app\n");

    let response = f
        .client
        .get(&url)
        .header("Range", "bytes=19-")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 416);
    assert_eq!(response.headers()["content-range"], "bytes */19");

    // A streamed (large) file.
    let big = f.instance_url("abc", "app/data.bin");
    let response = f
        .client
        .get(&big)
        .header("Range", "bytes=100000-100009")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 206);
    assert_eq!(
        response.headers()["content-range"],
        "bytes 100000-100009/200000"
    );
    let expected: Vec<u8> = (100_000..100_010).map(|i| (i % 256) as u8).collect();
    assert_eq!(response.bytes().await.expect("body").as_ref(), expected);
    let whole = f.get(&big).await.bytes().await.expect("body");
    assert_eq!(whole.len(), 200_000);
    assert!(whole.iter().enumerate().all(|(i, &b)| b == (i % 256) as u8));

    // If-Modified-Since: the file's own Last-Modified gives 304, an older date 200.
    let response = f.get(&url).await;
    let last_modified = response.headers()["last-modified"].clone();
    let response = f
        .client
        .get(&url)
        .header("If-Modified-Since", last_modified)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 304);
    assert!(response.bytes().await.expect("body").is_empty());
    let response = f
        .client
        .get(&url)
        .header("If-Modified-Since", "Sun, 06 Nov 1994 08:49:37 GMT")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
}

/// Reads a streaming body until `want` bytes arrived (or `limit` passes).
async fn read_at_least(response: &mut reqwest::Response, want: usize, limit: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    while got.len() < want {
        match tokio::time::timeout_at(deadline, response.chunk()).await {
            Ok(Ok(Some(chunk))) => got.extend_from_slice(&chunk),
            Ok(Ok(None)) | Ok(Err(_)) | Err(_) => break,
        }
    }
    got
}

fn append(path: &Path, bytes: &[u8]) {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open for append");
    file.write_all(bytes).expect("append");
}

#[tokio::test]
async fn tail_streams_bytes_appended_after_the_request() {
    let f = fixture(60).await;
    let log = f.home().join("logs/stdout.log");
    let mut response = f
        .get(&format!(
            "{}&tail",
            f.instance_url("abc", "logs/stdout.log")
        ))
        .await;
    assert_eq!(response.status(), 200);
    let writer = {
        let log = log.clone();
        tokio::spawn(async move {
            for line in ["one\n", "two\n", "three\n"] {
                tokio::time::sleep(Duration::from_millis(100)).await;
                append(&log, line.as_bytes());
            }
        })
    };
    let got = read_at_least(&mut response, 14, Duration::from_secs(5)).await;
    assert_eq!(String::from_utf8_lossy(&got), "one\ntwo\nthree\n");
    writer.await.expect("writer");

    // Deleting the file ends the stream normally, after the last bytes.
    append(&log, b"last\n");
    let rest = read_at_least(&mut response, 5, Duration::from_secs(5)).await;
    assert_eq!(rest, b"last\n");
    std::fs::remove_file(&log).expect("remove");
    let end = tokio::time::timeout(Duration::from_secs(5), response.chunk())
        .await
        .expect("stream ends soon after the file goes");
    assert!(matches!(end, Ok(None)), "clean end of stream: {end:?}");
}

#[tokio::test]
async fn tail_ends_when_the_file_is_renamed() {
    let f = fixture(60).await;
    let log = f.home().join("logs/stdout.log");
    let response = f
        .get(&format!(
            "{}&tail",
            f.instance_url("abc", "logs/stdout.log")
        ))
        .await;
    assert_eq!(response.status(), 200);
    std::fs::rename(&log, f.home().join("logs/stdout.log.1")).expect("rename");
    let body = tokio::time::timeout(Duration::from_secs(5), response.bytes())
        .await
        .expect("stream ends")
        .expect("cleanly");
    assert!(body.is_empty());
}

#[tokio::test]
async fn tail_offset_starts_where_asked() {
    let f = fixture(60).await;
    let url = f.instance_url("abc", "logs/stdout.log");
    // From the start: what is there already comes first.
    let mut response = f.get(&format!("{url}&tail&tail_offset=0")).await;
    assert_eq!(response.status(), 200);
    let got = read_at_least(&mut response, 19, Duration::from_secs(5)).await;
    assert_eq!(got, b"hello from the app\n");
    drop(response);

    // Past the end: nothing until the file grows beyond the offset.
    let log = f.home().join("logs/stdout.log");
    let mut response = f.get(&format!("{url}&tail&tail_offset=25")).await;
    assert_eq!(response.status(), 200);
    let early = tokio::time::timeout(Duration::from_millis(300), response.chunk()).await;
    assert!(early.is_err(), "nothing to send yet: {early:?}");
    append(&log, b"0123456789ABCDEF");
    let got = read_at_least(&mut response, 10, Duration::from_secs(5)).await;
    assert_eq!(got, b"6789ABCDEF");

    for bad in ["-1", "x", "1.5"] {
        assert_eq!(
            f.get_text(&format!("{url}&tail&tail_offset={bad}")).await,
            (
                500,
                "Can't serve request due to error: Tail offset must be a positive integer."
                    .to_string()
            ),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn an_idle_tail_is_cut_off_without_the_final_chunk() {
    let f = fixture(1).await;
    let mut response = f
        .get(&format!(
            "{}&tail",
            f.instance_url("abc", "logs/stdout.log")
        ))
        .await;
    assert_eq!(response.status(), 200);
    let started = std::time::Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(10), response.chunk())
        .await
        .expect("the server gives up within its timeout");
    assert!(
        end.is_err(),
        "a truncated chunked body, not a clean end: {end:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
}

mod fast_path;
mod timeouts;
