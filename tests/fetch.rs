//! The fetch service against a real HTTP server on 127.0.0.1.

use dea::config::{FetchConfig, MirrorRule};
use dea::fetch::{FetchError, FetchGrant, FetchService};
use dea_tests::*;
use std::sync::Arc;

fn grant() -> FetchGrant {
    FetchGrant {
        buildpack: "test".into(),
        declared: vec!["https://upstream.example/".into()],
        any_request: false,
    }
}

#[tokio::test]
async fn mirrors_cache_and_single_flight() {
    let body = vec![7u8; 256 * 1024];
    let server = FileServer::start(vec![("/m/x.tgz", body.clone())]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = FetchConfig {
        mirrors: vec![MirrorRule {
            from: "https://upstream.example/".into(),
            to: server.url("/m/"),
        }],
        attempts: 1,
        ..FetchConfig::default()
    };
    let service = Arc::new(FetchService::new(config, dir.path().join("cache")).expect("service"));
    let sha = sha256_hex(&body);

    // Eight concurrent fetches of one URL: one transfer.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let service = service.clone();
            let sha = sha.clone();
            tokio::spawn(async move {
                service
                    .fetch("https://upstream.example/x.tgz", Some(&sha), &grant())
                    .await
            })
        })
        .collect();
    let mut misses = 0;
    for task in tasks {
        let fetched = task.await.expect("join").expect("fetch");
        assert_eq!(fetched.sha256, sha);
        assert_eq!(fetched.size, body.len() as u64);
        assert_eq!(std::fs::read(&fetched.blob).expect("blob"), body);
        misses += usize::from(!fetched.cached);
    }
    assert_eq!(misses, 1);
    assert_eq!(server.hits("/m/x.tgz"), 1);

    // A restarted service (same cache dir) still hits, even without a pinned digest.
    let config = FetchConfig {
        mirrors: vec![MirrorRule {
            from: "https://upstream.example/".into(),
            to: server.url("/m/"),
        }],
        offline: true,
        ..FetchConfig::default()
    };
    let again = FetchService::new(config, dir.path().join("cache")).expect("service");
    let fetched = again
        .fetch("https://upstream.example/x.tgz", None, &grant())
        .await
        .expect("offline cache hit");
    assert!(fetched.cached);
    let missing = again
        .fetch("https://upstream.example/other.tgz", None, &grant())
        .await
        .expect_err("offline miss");
    assert!(matches!(missing, FetchError::Offline { .. }), "{missing:?}");
    assert_eq!(server.hits("/m/x.tgz"), 1);
}

#[tokio::test]
async fn errors_name_the_url() {
    let server = FileServer::start(vec![("/m/x.tgz", b"hello".to_vec())]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = FetchConfig {
        mirrors: vec![MirrorRule {
            from: "https://upstream.example/".into(),
            to: server.url("/m/"),
        }],
        max_download_mb: 1,
        attempts: 1,
        ..FetchConfig::default()
    };
    let service = FetchService::new(config, dir.path().join("cache")).expect("service");
    let error = service
        .fetch("https://upstream.example/missing.tgz", None, &grant())
        .await
        .expect_err("404");
    assert!(
        matches!(error, FetchError::Status { status: 404, .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("/m/missing.tgz"), "{error}");

    let error = service
        .fetch("https://elsewhere.example/x.tgz", None, &grant())
        .await
        .expect_err("undeclared");
    assert!(matches!(error, FetchError::NotDeclared { .. }), "{error:?}");

    let error = service
        .fetch(
            "https://upstream.example/x.tgz",
            Some(&"ab".repeat(32)),
            &grant(),
        )
        .await
        .expect_err("mismatch");
    assert!(
        matches!(error, FetchError::ChecksumMismatch { .. }),
        "{error:?}"
    );
    // Nothing unverified stays in the cache.
    let blobs = std::fs::read_dir(dir.path().join("cache/blobs"))
        .expect("blobs")
        .count();
    assert_eq!(blobs, 0);
}
