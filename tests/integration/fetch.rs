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
        record: None,
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

// Attacks on the rules. Each asserts the refusal names the problem and that the forbidden
// path was never asked for (or the forbidden file never read).

/// A classic buildpack's grant: any URL may be asked for; the rules decide.
fn classic() -> FetchGrant {
    FetchGrant {
        buildpack: "classic".into(),
        declared: Vec::new(),
        any_request: true,
        record: None,
    }
}

fn grant_declaring(declared: &[&str]) -> FetchGrant {
    FetchGrant {
        buildpack: "wasm".into(),
        declared: declared.iter().map(|s| s.to_string()).collect(),
        any_request: false,
        record: None,
    }
}

/// Fetch config with one attempt and, unless a test says otherwise, no reach for what a
/// buildpack declares (so a failing test can never send traffic off this machine).
fn config_with(mirrors: Vec<MirrorRule>, allow: Vec<String>) -> FetchConfig {
    FetchConfig {
        mirrors,
        allow,
        allow_buildpack_declared: false,
        attempts: 1,
        timeout_secs: 10,
        ..FetchConfig::default()
    }
}

#[tokio::test]
async fn traversal_past_an_allowed_prefix_never_reaches_the_server() {
    let server = FileServer::start(vec![
        ("/m/x.tgz", b"tool".to_vec()),
        ("/secret", b"TOP SECRET".to_vec()),
    ])
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let base = server.url("");
    let config = config_with(Vec::new(), vec![server.url("/m/")]);
    let service = FetchService::new(config, dir.path().join("cache")).expect("service");
    for (attack, why) in [
        (format!("{base}/m/../secret"), "not on the allowlist"),
        (format!("{base}/m/%2e%2e/secret"), "not on the allowlist"),
        (format!("{base}/m/%2E%2e/secret"), "not on the allowlist"),
        (format!("{base}/m/.%2E/secret"), "not on the allowlist"),
        (format!("{base}/m\\..\\secret"), "not on the allowlist"),
        (format!("{base}/m/..%2fsecret"), "encoded slash"),
        (format!("{base}/m/..%2Fsecret"), "encoded slash"),
        (format!("{base}/m/%2e%2e%2Fsecret"), "encoded"),
        (format!("{base}/m/..%5csecret"), "encoded backslash"),
        (format!("{base}/m/..%5C..%5Csecret"), "encoded backslash"),
        (format!("{base}/mx/../secret"), "not on the allowlist"),
    ] {
        let error = service
            .fetch(&attack, None, &classic())
            .await
            .expect_err(&attack);
        let message = error.to_string();
        assert!(
            matches!(error, FetchError::Denied { .. } | FetchError::BadUrl { .. }),
            "{attack}: {error:?}"
        );
        assert!(message.contains(why), "{attack}: {message}");
        assert!(!message.contains("TOP SECRET"), "{message}");
    }
    assert_eq!(server.hits("/secret"), 0);
    assert_eq!(server.total_hits(), 0, "nothing was requested at all");
    // The prefix itself still works.
    let fetched = service
        .fetch(&format!("{base}/m/x.tgz"), None, &classic())
        .await
        .expect("allowed fetch");
    assert_eq!(std::fs::read(&fetched.blob).expect("blob"), b"tool");
    assert_eq!(server.total_hits(), 1);
}

#[tokio::test]
async fn traversal_in_a_mirrored_url_never_leaves_the_mirror_prefix() {
    let server = FileServer::start(vec![
        ("/m/node/x.tgz", b"node".to_vec()),
        ("/secret", b"TOP SECRET".to_vec()),
    ])
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_with(
        vec![MirrorRule {
            from: "https://upstream.invalid/dependencies/".into(),
            to: server.url("/m/"),
        }],
        Vec::new(),
    );
    let service = FetchService::new(config, dir.path().join("cache")).expect("service");
    let grant = grant_declaring(&["https://upstream.invalid/dependencies/"]);
    for attack in [
        "https://upstream.invalid/dependencies/../../secret",
        "https://upstream.invalid/dependencies/%2e%2e/%2e%2e/secret",
        "https://upstream.invalid/dependencies/%2E%2e/secret",
        "https://upstream.invalid/dependencies/..%2f..%2fsecret",
        "https://upstream.invalid/dependencies/%2e%2e%2F%2e%2e%2Fsecret",
        "https://upstream.invalid/dependencies\\..\\..\\secret",
        "https://upstream.invalid/dependencies/..%5c..%5csecret",
    ] {
        let error = service.fetch(attack, None, &grant).await.expect_err(attack);
        assert!(
            matches!(
                error,
                FetchError::NotDeclared { .. } | FetchError::BadUrl { .. }
            ),
            "{attack}: {error:?}"
        );
        assert!(error.to_string().contains(attack), "{error}");
    }
    assert_eq!(server.hits("/secret"), 0);
    assert_eq!(server.total_hits(), 0);
    // Resolved dot segments that stay beneath the prefix are fine.
    let fetched = service
        .fetch(
            "https://upstream.invalid/dependencies/other/../node/x.tgz",
            None,
            &grant,
        )
        .await
        .expect("normalised fetch");
    assert_eq!(fetched.url_used, server.url("/m/node/x.tgz"));
}

#[tokio::test]
async fn a_file_mirror_serves_only_regular_files_beneath_its_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mirror = dir.path().join("mirror");
    std::fs::create_dir_all(mirror.join("sub")).expect("mkdir");
    std::fs::write(mirror.join("x.tgz"), b"mirrored").expect("write");
    std::fs::write(dir.path().join("secret.txt"), b"TOP SECRET").expect("write");
    let link = |target: &str, name: &str| {
        std::os::unix::fs::symlink(target, mirror.join(name)).expect("symlink");
    };
    link("x.tgz", "inside-link");
    link("../secret.txt", "escape");
    link(
        dir.path().join("secret.txt").to_str().expect("utf-8"),
        "absolute",
    );
    link("/dev/zero", "zero");
    link("/proc/self/root/etc/hostname", "magic");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        mirror.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .expect("mkfifo");
    let config = config_with(
        vec![MirrorRule {
            from: "https://files.invalid/dl/".into(),
            to: format!("file://{}/", mirror.display()),
        }],
        Vec::new(),
    );
    let service = FetchService::new(config, dir.path().join("cache")).expect("service");
    let fetch = |url: String| {
        let service = &service;
        async move {
            tokio::time::timeout(
                std::time::Duration::from_secs(5),
                service.fetch(&url, None, &classic()),
            )
            .await
            .unwrap_or_else(|_| panic!("{url} hung"))
        }
    };
    let ok = fetch("https://files.invalid/dl/x.tgz".into())
        .await
        .expect("regular file");
    assert_eq!(std::fs::read(&ok.blob).expect("blob"), b"mirrored");
    let ok = fetch("https://files.invalid/dl/inside-link".into())
        .await
        .expect("a link that stays inside");
    assert_eq!(std::fs::read(&ok.blob).expect("blob"), b"mirrored");

    for (name, why) in [
        ("../secret.txt", "no mirror rule matches"),
        ("%2e%2e/secret.txt", "no mirror rule matches"),
        ("../../../../etc/passwd", "no mirror rule matches"),
        ("..%2fsecret.txt", "encoded slash"),
        ("%2e%2e%2f%2e%2e%2fetc%2fpasswd", "encoded"),
        ("..%5csecret.txt", "encoded backslash"),
        ("..\\secret.txt", "no mirror rule matches"),
        ("escape", "out of the mirror directory"),
        ("absolute", "out of the mirror directory"),
        ("zero", "out of the mirror directory"),
        ("magic", "out of the mirror directory"),
        ("fifo", "not a regular file but a FIFO"),
        ("sub", "not a regular file but a directory"),
    ] {
        let url = format!("https://files.invalid/dl/{name}");
        let error = fetch(url.clone()).await.expect_err(&url);
        let message = error.to_string();
        assert!(message.contains(why), "{url}: {message}");
        assert!(!message.contains("TOP SECRET"), "{message}");
    }
    let missing = fetch("https://files.invalid/dl/missing.tgz".into())
        .await
        .expect_err("missing");
    assert!(
        matches!(missing, FetchError::Status { status: 404, .. }),
        "{missing:?}"
    );
    // Only the mirrored file ever reached the cache.
    for blob in std::fs::read_dir(dir.path().join("cache/blobs")).expect("blobs") {
        let content = std::fs::read(blob.expect("entry").path()).expect("read blob");
        assert_eq!(content, b"mirrored");
    }
}

#[tokio::test]
async fn declared_file_and_loopback_prefixes_grant_nothing() {
    let server = FileServer::start(vec![("/x", b"local".to_vec())]).await;
    let port = server.addr.port();
    let dir = tempfile::tempdir().expect("tempdir");
    let declared = [
        "file:///".to_string(),
        server.url("/"),
        format!("http://localhost:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
    ];
    let declared: Vec<&str> = declared.iter().map(String::as_str).collect();
    let grant = grant_declaring(&declared);
    let mut config = config_with(Vec::new(), Vec::new());
    config.allow_buildpack_declared = true;
    let service = FetchService::new(config.clone(), dir.path().join("cache")).expect("service");

    let error = service
        .fetch("file:///etc/hostname", None, &grant)
        .await
        .expect_err("file: from a buildpack");
    assert!(matches!(error, FetchError::BadUrl { .. }), "{error:?}");
    assert!(
        error.to_string().contains("file:///etc/hostname")
            && error
                .to_string()
                .contains("file: URLs may not be requested"),
        "{error}"
    );
    for url in [
        server.url("/x"),
        format!("http://localhost:{port}/x"),
        format!("http://[::ffff:127.0.0.1]:{port}/x"),
        format!("http://0x7f.1:{port}/x"),
        format!("http://2130706433:{port}/x"),
    ] {
        let error = service.fetch(&url, None, &grant).await.expect_err(&url);
        assert!(
            matches!(error, FetchError::Denied { .. }),
            "{url}: {error:?}"
        );
        assert!(error.to_string().contains("loopback"), "{error}");
    }
    assert_eq!(server.total_hits(), 0);

    // The operator may allow the same URL, by address or by name.
    config.allow = vec![server.url("/"), format!("http://localhost:{port}/")];
    let service = FetchService::new(config, dir.path().join("cache2")).expect("service");
    let fetched = service
        .fetch(&server.url("/x"), None, &grant)
        .await
        .expect("operator-allowed loopback");
    assert_eq!(std::fs::read(&fetched.blob).expect("blob"), b"local");
    service
        .fetch(&format!("http://localhost:{port}/x"), None, &grant)
        .await
        .expect("operator-allowed localhost resolves");
    assert_eq!(server.hits("/x"), 2);
}

#[tokio::test]
async fn every_redirect_hop_is_checked_against_the_allowlist() {
    let other = FileServer::start(vec![("/secret", b"OTHER SECRET".to_vec())]).await;
    let other_secret = other.url("/secret");
    let server = ScriptedServer::scripted(vec![
        ("/m/real.tgz", Reply::Body(b"real".to_vec())),
        ("/secret", Reply::Body(b"TOP SECRET".to_vec())),
        ("/m/to-inside", Reply::Redirect(302, "/m/real.tgz".into())),
        ("/m/to-inside-abs", Reply::Redirect(301, "real.tgz".into())),
        (
            "/m/to-other-port",
            Reply::Redirect(302, other_secret.clone()),
        ),
        ("/m/to-outside", Reply::Redirect(307, "/secret".into())),
        ("/m/to-dotdot", Reply::Redirect(308, "/m/../secret".into())),
        (
            "/m/to-encoded",
            Reply::Redirect(302, "/m/..%2fsecret".into()),
        ),
        (
            "/m/to-file",
            Reply::Redirect(302, "file:///etc/hostname".into()),
        ),
        (
            "/m/to-userinfo",
            Reply::Redirect(302, "http://u:p@127.0.0.1/m/".into()),
        ),
        ("/m/loop", Reply::Redirect(302, "/m/loop".into())),
    ])
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config_with(
        vec![MirrorRule {
            from: "https://upstream.invalid/".into(),
            to: server.url("/m/"),
        }],
        Vec::new(),
    );
    // Declarations count for hops here, but a declared loopback address still does not.
    config.allow_buildpack_declared = true;
    let service = FetchService::new(config, dir.path().join("cache")).expect("service");
    let grant = grant_declaring(&["https://upstream.invalid/", &other.url("/")]);

    for path in ["to-inside", "to-inside-abs"] {
        let fetched = service
            .fetch(&format!("https://upstream.invalid/{path}"), None, &grant)
            .await
            .expect("a redirect within the prefix");
        assert_eq!(std::fs::read(&fetched.blob).expect("blob"), b"real");
    }
    for (path, why) in [
        ("to-other-port", other_secret.as_str()),
        ("to-outside", "is beneath no mirror target"),
        ("to-dotdot", "is beneath no mirror target"),
        ("to-encoded", "encoded slash"),
        ("to-file", "file: URLs may not be requested"),
        ("to-userinfo", "credentials"),
        ("loop", "more than 5 redirects"),
    ] {
        let url = format!("https://upstream.invalid/{path}");
        let error = service.fetch(&url, None, &grant).await.expect_err(&url);
        assert!(
            matches!(error, FetchError::Denied { .. }),
            "{url}: {error:?}"
        );
        let message = error.to_string();
        assert!(message.contains(why), "{url}: {message}");
        if path != "loop" {
            assert!(message.contains("redirect from"), "{message}");
        }
    }
    let error = service
        .fetch("https://upstream.invalid/to-other-port", None, &grant)
        .await
        .expect_err("other port");
    assert!(error.to_string().contains("loopback"), "{error}");
    assert_eq!(server.hits("/secret"), 0);
    assert_eq!(other.total_hits(), 0);
    assert_eq!(server.hits("/m/loop"), 6, "the first request and five hops");
}

#[tokio::test]
async fn a_pin_alone_does_not_answer_for_a_url_never_fetched() {
    let body = b"shared runtime".to_vec();
    let sha = sha256_hex(&body);
    let server = FileServer::start(vec![
        ("/m/x.tgz", body.clone()),
        ("/m/copy.tgz", body.clone()),
    ])
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = vec![MirrorRule {
        from: "https://upstream.invalid/".into(),
        to: server.url("/m/"),
    }];
    let service = FetchService::new(
        config_with(rules.clone(), Vec::new()),
        dir.path().join("cache"),
    )
    .expect("service");
    let grant = grant_declaring(&["https://upstream.invalid/"]);
    service
        .fetch("https://upstream.invalid/x.tgz", Some(&sha), &grant)
        .await
        .expect("first fetch");

    // The digest is in the cache, but this URL never produced it: the server is asked.
    let error = service
        .fetch("https://upstream.invalid/missing.tgz", Some(&sha), &grant)
        .await
        .expect_err("a URL that does not exist");
    assert!(
        matches!(error, FetchError::Status { status: 404, .. }),
        "{error:?}"
    );
    assert_eq!(server.hits("/m/missing.tgz"), 1);

    let copy = service
        .fetch("https://upstream.invalid/copy.tgz", Some(&sha), &grant)
        .await
        .expect("same content under another URL");
    assert!(!copy.cached);
    assert_eq!(server.hits("/m/copy.tgz"), 1);
    let again = service
        .fetch("https://upstream.invalid/copy.tgz", Some(&sha), &grant)
        .await
        .expect("now recorded");
    assert!(again.cached);
    assert_eq!(server.hits("/m/copy.tgz"), 1);

    // Offline (air-gapped), the digest alone answers: there is no server to ask.
    let mut offline = config_with(rules, Vec::new());
    offline.offline = true;
    let offline = FetchService::new(offline, dir.path().join("cache")).expect("service");
    let seeded = offline
        .fetch("https://upstream.invalid/never.tgz", Some(&sha), &grant)
        .await
        .expect("offline digest hit");
    assert!(seeded.cached);
    assert_eq!(server.hits("/m/never.tgz"), 0);
}

#[tokio::test]
async fn network_errors_carry_their_cause() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config_with(Vec::new(), vec![format!("http://127.0.0.1:{closed}/")]);
    config.attempts = 2;
    let service = FetchService::new(config, dir.path().join("cache")).expect("service");
    let url = format!("http://127.0.0.1:{closed}/x.tgz");
    let error = service
        .fetch(&url, None, &classic())
        .await
        .expect_err("nothing listens");
    let message = error.to_string();
    assert!(matches!(error, FetchError::Network { .. }), "{error:?}");
    assert!(
        message.contains(&url) && message.to_lowercase().contains("refused"),
        "{message}"
    );
    assert!(!message.contains('\u{1b}'), "{message:?}");
}
