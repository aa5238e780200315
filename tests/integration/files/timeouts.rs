//! The directory server against clients that hold connections without finishing anything:
//! nothing sent, a head sent a byte at a time, an idle keep-alive, a large answer nobody
//! reads (on the fast path and on hyper's), and more connections than `max_connections`.
//! Each is closed by the server (the client sees the end of the stream), and others are
//! answered meanwhile. The outer timeouts only keep a broken server from hanging the test.

use super::fast_path::{connect, read_head, request};
use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Long enough that nothing here is closed before it should be, short enough for a test.
const HEAD_SECS: u64 = 2;

async fn short_fixture(max_connections: u32) -> Fixture {
    fixture_with_head(max_connections, HEAD_SECS).await
}

async fn fixture_with_head(max_connections: u32, header_timeout_secs: u64) -> Fixture {
    fixture_with(DirectoryServerConfig {
        header_timeout_secs,
        send_timeout_secs: 1,
        max_connections,
        ..DirectoryServerConfig::default()
    })
    .await
}

/// Reads until the server closes the connection (or resets it); what came before.
async fn until_closed(connection: &mut (impl AsyncReadExt + Unpin)) -> Vec<u8> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), connection.read_to_end(&mut got))
        .await
        .expect("the server closes the connection");
    if let Err(e) = read {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    got
}

async fn answered_meanwhile(f: &Fixture) {
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        f.get_text(&f.instance_url("abc", "logs/stdout.log")),
    )
    .await
    .expect("answered while other connections stall");
    assert_eq!(answer, (200, "hello from the app\n".to_string()));
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed() {
    let f = short_fixture(0).await;
    let mut silent = connect(f.server.local_addr, None).await;
    answered_meanwhile(&f).await;
    assert!(until_closed(&mut silent).await.is_empty());
}

#[tokio::test]
async fn a_head_sent_a_byte_at_a_time_is_cut_off_unanswered() {
    let f = short_fixture(0).await;
    let head = request("GET", &f.instance_url("abc", "logs/stdout.log"), "");
    let mut connection = connect(f.server.local_addr, None).await;
    // Every byte arrives well within the timeout of the one before: only a deadline for the
    // whole head ends this, not an idle timer.
    let mut closed = false;
    for byte in head.iter().take(head.len() - 1) {
        if connection.get_mut().write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut probe = [0u8; 1];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::ZERO, connection.read(&mut probe)).await {
            assert_eq!(n, 0, "nothing is answered to half a head");
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "a head trickled over {} bytes was let through",
        head.len()
    );
    answered_meanwhile(&f).await;
}

#[tokio::test]
async fn an_idle_keep_alive_is_closed_on_either_path() {
    let f = short_fixture(0).await;
    // The fast path's answer, then nothing.
    let mut fast = connect(f.server.local_addr, None).await;
    let plain = request("GET", &f.instance_url("abc", "logs/stdout.log"), "");
    fast.get_mut().write_all(&plain).await.expect("send");
    assert!(read_head(&mut fast).await[0].contains("200"));
    // hyper's (a HEAD goes there), then nothing.
    let mut hyper = connect(f.server.local_addr, None).await;
    let head = request("HEAD", &f.instance_url("abc", "logs/stdout.log"), "");
    hyper.get_mut().write_all(&head).await.expect("send");
    assert!(read_head(&mut hyper).await[0].contains("200"));
    let rest = until_closed(&mut fast).await;
    assert_eq!(rest, b"hello from the app\n", "the body, then the end");
    assert!(until_closed(&mut hyper).await.is_empty());
    answered_meanwhile(&f).await;
}

#[tokio::test]
async fn an_answer_nobody_reads_ends_on_either_path() {
    let f = short_fixture(0).await;
    let len: usize = 64 << 20;
    std::fs::File::create(f.home().join("app/large.bin"))
        .and_then(|file| file.set_len(len as u64))
        .expect("sparse file");
    let url = f.instance_url("abc", "app/large.bin");
    let fast_request = request("GET", &url, "");
    // HTTP/1.0 goes to hyper.
    let hyper_request = String::from_utf8(request("GET", &url, ""))
        .expect("ascii")
        .replacen("HTTP/1.1", "HTTP/1.0", 1)
        .into_bytes();
    let mut stalled = Vec::new();
    for bytes in [fast_request, hyper_request] {
        let mut connection = connect(f.server.local_addr, Some(16 * 1024)).await;
        connection.get_mut().write_all(&bytes).await.expect("send");
        assert!(read_head(&mut connection).await[0].contains("200"));
        stalled.push(connection);
    }
    answered_meanwhile(&f).await;
    // Not read for several send timeouts: the server gave up on both.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for mut connection in stalled {
        let got = until_closed(&mut connection).await;
        assert!(got.len() < len, "{} of {len} bytes: not cut off", got.len());
    }
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_until_one_is_free() {
    // Long timeouts: here connections are held by the test, not ended by the server.
    let f = fixture_with(DirectoryServerConfig {
        max_connections: 2,
        header_timeout_secs: 30,
        send_timeout_secs: 30,
        ..DirectoryServerConfig::default()
    })
    .await;
    std::fs::File::create(f.home().join("app/large.bin"))
        .and_then(|file| file.set_len(64 << 20))
        .expect("sparse file");
    let large = request("GET", &f.instance_url("abc", "app/large.bin"), "");
    // Three clients ask for a large file and read nothing past the head: each one served
    // holds its place. Which two are served depends on which worker the kernel hands each
    // connection to; that no more than two are is the point.
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut connection = connect(f.server.local_addr, Some(16 * 1024)).await;
        connection.get_mut().write_all(&large).await.expect("send");
        clients.push(connection);
    }
    let mut served = Vec::new();
    let mut waiting = Vec::new();
    for mut connection in clients {
        match tokio::time::timeout(Duration::from_millis(1500), read_head(&mut connection)).await {
            Ok(head) => {
                assert!(head[0].contains("200"), "{head:?}");
                served.push(connection);
            }
            Err(_) => waiting.push(connection),
        }
    }
    assert_eq!(
        (served.len(), waiting.len()),
        (2, 1),
        "max_connections 2: two served, one waiting"
    );
    // One served client goes away: the waiting one gets its place.
    drop(served.pop());
    let mut last = waiting.pop().expect("one waits");
    let head = tokio::time::timeout(Duration::from_secs(30), read_head(&mut last))
        .await
        .expect("served once a place is free");
    assert!(head[0].contains("200"), "{head:?}");
}
