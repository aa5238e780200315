//! Mirrors: every download a buildpack makes, wasm or classic (curl, wget, through the
//! proxy), is rewritten to a mirror by the host's fetch service; the "upstream" is never
//! reached, the cache serves repeats, and what the rules do not allow is refused.

use dea_tests::*;

#[tokio::test]
async fn curl_and_wget_download_https_upstream_urls_from_the_mirror() {
    let base = tempfile::tempdir().expect("tempdir");
    let upstream = CountingListener::start().await;
    let tool = make_tgz(&[("tool/bin/tool", "#!/bin/sh\necho tool\n")]);
    let mirror = FileServer::start(vec![("/mirror/x.tgz", tool.clone())]).await;
    let upstream_url = format!("https://127.0.0.1:{}/x.tgz", upstream.port);

    let mut config = test_config(base.path());
    config.fetch.mirrors = vec![dea::config::MirrorRule {
        from: format!("https://127.0.0.1:{}/", upstream.port),
        to: mirror.url("/mirror/"),
    }];
    let stager = stager(config.clone(), vec![classic_buildpack("downloader")]);
    let app = base.path().join("app");
    write_app(&app, &[("download.txt", "")]);
    let out = base.path().join("dl.tgz");
    let mut req = request(&app, &out);
    req.env = vec![("URL".into(), upstream_url.clone())];
    let (result, log) = stage(&stager, req).await;
    let staged = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    for from in ["from-curl", "from-wget"] {
        assert!(
            droplet_file(&out, &format!("./app/{from}/tool/bin/tool")).is_some(),
            "{from}: {:?}",
            droplet_entries(&out)
        );
    }
    assert_eq!(upstream.hits(), 0, "the upstream was reached");
    // curl and wget each asked once; the second was served from the cache.
    assert_eq!(mirror.hits("/mirror/x.tgz"), 1, "{log}");
    assert!(
        log.contains(&format!(
            "fetch {upstream_url} -> {}",
            mirror.url("/mirror/x.tgz")
        )),
        "{log}"
    );
    let cached: Vec<bool> = staged.fetches.iter().map(|f| f.cached).collect();
    assert_eq!(cached, [false, true], "{:?}", staged.fetches);

    // A second staging is served from the cache: the mirror's counter does not move.
    let mut req = request(&app, &base.path().join("dl2.tgz"));
    req.env = vec![("URL".into(), upstream_url.clone())];
    let (result, log) = stage(&stager, req).await;
    result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(mirror.hits("/mirror/x.tgz"), 1);

    // A URL no rule or allowlist covers is refused, naming the URL.
    let elsewhere = format!("https://127.0.0.1:{}/other.tgz", mirror.addr.port());
    let mut req = request(&app, &base.path().join("dl3.tgz"));
    req.env = vec![("URL".into(), elsewhere.clone())];
    let (result, log) = stage(&stager, req).await;
    result.expect_err("a download outside the allowlist fails the build");
    assert!(log.contains("denied") && log.contains(&elsewhere), "{log}");

    // A pinned checksum that does not match fails too.
    let mut pinned = config.clone();
    pinned.base_dir = base.path().join("pinned");
    pinned
        .fetch
        .pins
        .insert(upstream_url.clone(), "0".repeat(64));
    let stager = dea_tests::stager(pinned, vec![classic_buildpack("downloader")]);
    let mut req = request(&app, &base.path().join("dl4.tgz"));
    req.env = vec![("URL".into(), upstream_url)];
    let (result, log) = stage(&stager, req).await;
    result.expect_err("checksum mismatch fails the build");
    assert!(log.contains("checksum mismatch"), "{log}");
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn wasm_fetch_of_an_https_upstream_comes_from_the_mirror() {
    let base = tempfile::tempdir().expect("tempdir");
    let upstream = CountingListener::start().await;
    let runtime = make_tgz(&[("node/bin/node", "#!/bin/sh\necho node\n")]);
    let mirror = FileServer::start(vec![("/mirror/x.tgz", runtime.clone())]).await;
    let upstream_base = format!("https://127.0.0.1:{}/", upstream.port);
    let node = node_buildpack_pinned_allowing(
        &base.path().join("node-bp"),
        &format!("{upstream_base}x.tgz"),
        &sha256_hex(&runtime),
        &upstream_base,
    );
    let mut config = test_config(base.path());
    config.fetch.mirrors = vec![dea::config::MirrorRule {
        from: upstream_base.clone(),
        to: mirror.url("/mirror/"),
    }];
    let stager = stager(config, vec![node]);
    let app = base.path().join("app");
    write_app(&app, &[("package.json", "{}")]);
    for round in 0..2 {
        let out = base.path().join(format!("n{round}.tgz"));
        let (result, log) = stage(&stager, request(&app, &out)).await;
        let staged = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
        assert!(droplet_file(&out, "./app/.node/bin/node").is_some());
        assert_eq!(staged.fetches.len(), 1, "{:?}", staged.fetches);
        assert_eq!(staged.fetches[0].cached, round == 1, "{:?}", staged.fetches);
    }
    assert_eq!(upstream.hits(), 0);
    assert_eq!(mirror.hits("/mirror/x.tgz"), 1);
}

/// A fetch proxy (as a classic buildpack's container gets) on 127.0.0.1, over `config`.
async fn start_proxy(
    config: dea::config::FetchConfig,
    cache: &std::path::Path,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<dea::proxy::CertificateAuthority>,
    tokio::task::JoinHandle<()>,
) {
    let fetch = std::sync::Arc::new(
        dea::fetch::FetchService::new(config, cache.to_path_buf()).expect("fetch service"),
    );
    let ca = std::sync::Arc::new(dea::proxy::CertificateAuthority::generate().expect("ca"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let ctx = dea::proxy::ProxyContext {
        fetch,
        ca: ca.clone(),
        grant: dea::fetch::FetchGrant {
            buildpack: "classic".into(),
            declared: Vec::new(),
            any_request: true,
            record: None,
        },
        log: quiet_log(),
    };
    (addr, ca, tokio::spawn(dea::proxy::serve(listener, ctx)))
}

fn connect_request(authority: &str) -> String {
    format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n")
}

#[tokio::test]
async fn the_proxy_checks_connect_hosts_and_bounds_its_certificate_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, ca, task) = start_proxy(Default::default(), &dir.path().join("cache")).await;
    let long = vec!["a".repeat(60); 5].join(".");
    for bad in [
        "bad!host:443",
        "a..b:443",
        "-x.example:443",
        "x_.example-:443",
        &format!("{long}:443"),
        "user@host.example:443",
    ] {
        let head = raw_http(addr, &connect_request(bad)).await;
        assert!(
            !head.starts_with("HTTP/1.1 200"),
            "CONNECT {bad} was accepted: {head}"
        );
    }
    assert!(ca.is_empty(), "no certificate was issued for a bad name");

    let bound = dea::proxy::ca::CACHED_HOSTS.get();
    for i in 0..bound + 64 {
        let head = raw_http(addr, &connect_request(&format!("h{i}.example:443"))).await;
        assert!(head.starts_with("HTTP/1.1 200"), "h{i}: {head}");
        assert!(ca.len() <= bound, "{} certificates cached", ca.len());
    }
    assert_eq!(ca.len(), bound);
    let head = raw_http(addr, &connect_request("[::1]:443")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    task.abort();
}

#[tokio::test]
async fn proxied_urls_are_normalised_before_the_rules() {
    let server = FileServer::start(vec![
        ("/m/x.tgz", b"tool".to_vec()),
        ("/secret", b"TOP SECRET".to_vec()),
    ])
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dea::config::FetchConfig {
        allow: vec![server.url("/m/")],
        attempts: 1,
        ..Default::default()
    };
    let (addr, _ca, task) = start_proxy(config, &dir.path().join("cache")).await;
    let get = |url: String| {
        format!(
            "GET {url} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            server.addr
        )
    };
    for (attack, status) in [
        (server.url("/m/../secret"), "403"),
        (server.url("/m/%2e%2e/secret"), "403"),
        (server.url("/m/..%2fsecret"), "400"),
        (server.url("/m/..%5Csecret"), "400"),
    ] {
        let head = raw_http(addr, &get(attack.clone())).await;
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status}")),
            "{attack}: {head}"
        );
    }
    assert_eq!(server.total_hits(), 0);
    let head = raw_http(addr, &get(server.url("/m/x.tgz"))).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(server.hits("/m/x.tgz"), 1);
    task.abort();
}

#[tokio::test]
async fn the_proxy_serves_a_bounded_number_of_connections_at_once() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, _ca, task) = start_proxy(Default::default(), &dir.path().join("cache")).await;
    // Each intercepted tunnel holds its slot while it waits for a TLS handshake.
    let mut held = Vec::new();
    for i in 0..dea::proxy::MAX_CONNECTIONS {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let head = raw_exchange(&mut stream, &connect_request(&format!("t{i}.example:443"))).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        held.push(stream);
    }
    let mut extra = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tokio::io::AsyncWriteExt::write_all(
        &mut extra,
        b"GET http://nowhere.invalid/x HTTP/1.1\r\nHost: nowhere.invalid\r\n\r\n",
    )
    .await
    .expect("write");
    let mut buf = [0u8; 64];
    let early =
        tokio::time::timeout(std::time::Duration::from_millis(500), extra.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "connection {} was served at once",
        held.len() + 1
    );
    // One tunnel closes: the waiting connection is served (and refused by the rules).
    drop(held.pop());
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), extra.read(&mut buf))
        .await
        .expect("served once a slot is free")
        .expect("read");
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    task.abort();
}

#[tokio::test]
async fn a_wasm_buildpack_declaring_file_or_loopback_urls_reaches_neither() {
    let base = tempfile::tempdir().expect("tempdir");
    let runtime = make_tgz(&[("node/bin/node", "#!/bin/sh\necho node\n")]);
    let server = FileServer::start(vec![("/x.tgz", runtime.clone())]).await;
    let hostname = std::fs::read("/etc/hostname").unwrap_or_default();
    let app = base.path().join("app");
    write_app(&app, &[("package.json", "{}")]);
    for (name, uri, sha, allow, why) in [
        (
            "file",
            "file:///etc/hostname".to_string(),
            sha256_hex(&hostname),
            "file:///".to_string(),
            "file: URLs may not be requested",
        ),
        (
            "loopback",
            server.url("/x.tgz"),
            sha256_hex(&runtime),
            server.url("/"),
            "loopback",
        ),
    ] {
        let node = node_buildpack_pinned_allowing(
            &base.path().join(format!("bp-{name}")),
            &uri,
            &sha,
            &allow,
        );
        let mut config = test_config(&base.path().join(name));
        config.fetch.allow_buildpack_declared = true;
        let stager = stager(config, vec![node]);
        let out = base.path().join(format!("{name}.tgz"));
        let (result, log) = stage(&stager, request(&app, &out)).await;
        let error = result.expect_err("the download is refused");
        assert!(
            log.contains(why) && log.contains(&uri),
            "{name}: {error}\n{log}"
        );
    }
    assert_eq!(server.total_hits(), 0);
}
