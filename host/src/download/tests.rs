//! The helper against a real HTTP server on 127.0.0.1 ([`super::test_server`]), so lengths,
//! chunking and stalls are exactly what a test says.

use super::test_server::{Answer, chunked, ok, status};
use super::*;
use std::net::SocketAddr;

/// A server answering `routes` (path, answer); unknown paths are 404s.
async fn server(routes: Vec<(&'static str, Answer)>) -> SocketAddr {
    super::test_server::serve(move |path, _| {
        routes
            .iter()
            .find(|(p, _)| *p == path)
            .map_or_else(|| status("404 Not Found", ""), |(_, answer)| answer.clone())
    })
    .await
    .addr
}

fn url(addr: SocketAddr, path: &str) -> Url {
    Url::parse(&format!("http://{addr}{path}")).expect("url")
}

fn options(max_bytes: u64) -> Options {
    Options {
        max_bytes,
        digests: Digests {
            sha1: true,
            sha256: true,
        },
        accept: Accept::Ok,
    }
}

fn downloader(timeouts: Timeouts) -> Downloader {
    Downloader::new(timeouts).expect("client")
}

const QUICK: Timeouts = Timeouts {
    connect: Duration::from_secs(5),
    read: Duration::from_secs(5),
    overall: None,
};

#[tokio::test]
async fn streams_the_body_with_the_digests_asked_for() {
    let addr = server(vec![("/a", ok(b"hello")), ("/b", chunked(b"hello"))]).await;
    for path in ["/a", "/b"] {
        let mut out = Vec::new();
        let got = downloader(QUICK)
            .download(&url(addr, path), &options(5), &mut out)
            .await
            .expect("downloaded");
        assert_eq!(out, b"hello");
        assert_eq!(got.size, 5);
        assert_eq!(
            got.sha1.as_deref(),
            Some("aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d")
        );
        assert_eq!(
            got.sha256.as_deref(),
            Some("2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")
        );
    }
    // Only the digests asked for are computed.
    let mut out = Vec::new();
    let only_sha1 = Options {
        digests: Digests::SHA1,
        ..options(5)
    };
    let got = downloader(QUICK)
        .download(&url(addr, "/a"), &only_sha1, &mut out)
        .await
        .expect("downloaded");
    assert!(got.sha1.is_some() && got.sha256.is_none(), "{got:?}");
}

#[tokio::test]
async fn streams_into_a_file() {
    let body = vec![7u8; 300_000];
    let addr = server(vec![("/big", ok(&body))]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("out");
    let mut file = tokio::fs::File::create(&path).await.expect("create");
    let got = downloader(QUICK)
        .download(&url(addr, "/big"), &options(300_000), &mut file)
        .await
        .expect("downloaded");
    drop(file);
    assert_eq!(got.size, 300_000);
    assert_eq!(std::fs::read(&path).expect("read"), body);
}

#[tokio::test]
async fn the_size_cap_holds_on_the_announced_length_and_on_the_bytes_read() {
    let addr = server(vec![
        ("/announced", ok(&[1u8; 11])),
        ("/unannounced", chunked(&[1u8; 11])),
    ])
    .await;
    for path in ["/announced", "/unannounced"] {
        let mut out = Vec::new();
        let error = downloader(QUICK)
            .download(&url(addr, path), &options(10), &mut out)
            .await
            .expect_err("over the cap");
        assert!(
            matches!(&error, DownloadError::TooLarge { max_bytes: 10, .. }),
            "{error:?}"
        );
        assert!(out.len() <= 10, "{path}: {} bytes written", out.len());
        let text = error.to_string();
        assert!(
            text.contains(url(addr, path).as_str()) && text.contains("larger than 10 bytes"),
            "{text}"
        );
    }
    // The announced length alone refuses: nothing is read.
    let mut out = Vec::new();
    let _ = downloader(QUICK)
        .download(&url(addr, "/announced"), &options(10), &mut out)
        .await;
    assert!(out.is_empty());
    // Limits in whole MiB are said in MiB.
    assert_eq!(limit_text(1 << 20), "1 MiB");
    assert_eq!(limit_text((1 << 20) + 1), "1048577 bytes");
    assert_eq!(limit_text(0), "0 bytes");
}

#[tokio::test]
async fn statuses_other_than_the_accepted_ones_are_errors() {
    let addr = server(vec![
        ("/created", status("201 Created", "")),
        ("/moved", status("302 Found", "Location: /elsewhere\r\n")),
    ])
    .await;
    let mut out = Vec::new();
    let error = downloader(QUICK)
        .download(&url(addr, "/missing"), &options(10), &mut out)
        .await
        .expect_err("404");
    assert!(
        matches!(&error, DownloadError::Status { status, .. } if status.as_u16() == 404),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        format!("{} answered HTTP 404 Not Found", url(addr, "/missing"))
    );
    // 201 is not 200; it is a success.
    let created = url(addr, "/created");
    let error = downloader(QUICK)
        .download(&created, &options(10), &mut out)
        .await
        .expect_err("201 is not 200");
    assert!(matches!(error, DownloadError::Status { .. }), "{error:?}");
    let any_success = Options {
        accept: Accept::Success,
        ..options(10)
    };
    let got = downloader(QUICK)
        .download(&created, &any_success, &mut out)
        .await
        .expect("any 2xx");
    assert_eq!(got.size, 0);
}

#[tokio::test]
async fn redirects_are_followed_or_handed_back_as_the_client_says() {
    let addr = server(vec![
        ("/moved", status("302 Found", "Location: /here\r\n")),
        ("/no-location", status("307 Temporary Redirect", "")),
        ("/here", ok(b"here")),
    ])
    .await;
    // The default client follows.
    let mut out = Vec::new();
    downloader(QUICK)
        .download(&url(addr, "/moved"), &options(10), &mut out)
        .await
        .expect("followed");
    assert_eq!(out, b"here");

    // One that does not follow hands the 3xx back, and writes nothing.
    let manual = Downloader::from_builder(
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()),
        QUICK,
    )
    .expect("client");
    let mut out = Vec::new();
    let step = manual
        .download_or_redirect(&url(addr, "/moved"), &options(10), &mut out)
        .await
        .expect("redirect");
    assert_eq!(
        step,
        Step::Redirect {
            status: 302,
            location: Some("/here".into())
        }
    );
    assert!(out.is_empty());
    let step = manual
        .download_or_redirect(&url(addr, "/no-location"), &options(10), &mut out)
        .await
        .expect("redirect");
    assert_eq!(
        step,
        Step::Redirect {
            status: 307,
            location: None
        }
    );
    // `download` on such a client treats the 3xx as any other refused status.
    let error = manual
        .download(&url(addr, "/moved"), &options(10), &mut out)
        .await
        .expect_err("not followed");
    assert!(matches!(error, DownloadError::Status { .. }), "{error:?}");
    // And a plain 200 is content either way.
    let step = manual
        .download_or_redirect(&url(addr, "/here"), &options(10), &mut out)
        .await
        .expect("content");
    assert!(
        matches!(step, Step::Done(Downloaded { size: 4, .. })),
        "{step:?}"
    );
}

#[tokio::test]
async fn a_stalled_transfer_fails_after_the_read_timeout() {
    let addr = server(vec![("/stall", Answer::Stall { length: 100 })]).await;
    let timeouts = Timeouts {
        read: Duration::from_millis(300),
        ..QUICK
    };
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    let error = downloader(timeouts)
        .download(&url(addr, "/stall"), &options(1000), &mut out)
        .await
        .expect_err("stalled");
    assert!(error.is_timeout(), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let text = error.to_string();
    assert!(text.contains(url(addr, "/stall").as_str()), "{text}");
    assert!(std::error::Error::source(&error).is_some());
}

#[tokio::test]
async fn a_slow_transfer_fails_after_the_overall_timeout() {
    // Each byte comes well within the read timeout; all of them would take two seconds.
    let trickle = Answer::Trickle {
        bytes: vec![b'x'; 40],
        every: Duration::from_millis(50),
    };
    let addr = server(vec![("/slow", trickle)]).await;
    let started = std::time::Instant::now();
    let timeouts = Timeouts {
        overall: Some(Duration::from_millis(400)),
        ..QUICK
    };
    let mut out = Vec::new();
    let error = downloader(timeouts)
        .download(&url(addr, "/slow"), &options(1000), &mut out)
        .await
        .expect_err("too slow overall");
    assert!(error.is_timeout(), "{error:?}");
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert!(!out.is_empty() && out.len() < 40, "{} bytes", out.len());
    // Without the overall limit the same transfer completes.
    let mut out = Vec::new();
    downloader(QUICK)
        .download(&url(addr, "/slow"), &options(1000), &mut out)
        .await
        .expect("slow but moving");
    assert_eq!(out.len(), 40);
}

#[tokio::test]
async fn connection_failures_name_the_url_and_keep_their_cause() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let target = url(closed, "/x");
    let mut out = Vec::new();
    let error = downloader(QUICK)
        .download(&target, &options(10), &mut out)
        .await
        .expect_err("nothing listens");
    let text = error.to_string();
    assert!(
        text.starts_with(&format!("{target}: ")) && text.to_lowercase().contains("refused"),
        "{text}"
    );
    // The URL is said once: reqwest's own copy is taken out of the source.
    assert_eq!(text.matches(target.as_str()).count(), 1, "{text}");
    let source = std::error::Error::source(&error).expect("source kept");
    assert!(source.downcast_ref::<reqwest::Error>().is_some());
}

#[tokio::test]
async fn write_failures_are_their_own_error() {
    struct Full;
    impl AsyncWrite for Full {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::task::Poll::Ready(Err(std::io::Error::from_raw_os_error(28)))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }
    let addr = server(vec![("/a", ok(b"hello"))]).await;
    let error = downloader(QUICK)
        .download(&url(addr, "/a"), &options(10), &mut Full)
        .await
        .expect_err("disk full");
    assert!(matches!(error, DownloadError::Write { .. }), "{error:?}");
}
