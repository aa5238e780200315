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
    result.unwrap_or_else(|e| panic!("{e}\n{log}"));
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
    assert!(log.contains("cache hit"), "{log}");

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
        result.unwrap_or_else(|e| panic!("{e}\n{log}"));
        assert!(droplet_file(&out, "./app/.node/bin/node").is_some());
        assert!(
            log.contains(if round == 0 {
                "cache miss"
            } else {
                "cache hit"
            }),
            "{log}"
        );
    }
    assert_eq!(upstream.hits(), 0);
    assert_eq!(mirror.hits("/mirror/x.tgz"), 1);
}
