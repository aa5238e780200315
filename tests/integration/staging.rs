//! Staging apps with the real wasm buildpacks, end to end: source in, droplet out.

use dea::staging::StagingError;
use dea_tests::*;
use std::path::Path;

fn info(droplet: &std::path::Path) -> serde_yaml_ng::Value {
    let text = droplet_file(droplet, "./staging_info.yml").expect("staging_info.yml in droplet");
    serde_yaml_ng::from_str(&text).expect("staging_info.yml is YAML")
}

#[tokio::test]
async fn static_example_stages_into_a_cf_shaped_droplet() {
    let base = tempfile::tempdir().expect("tempdir");
    let stager = stager(test_config(base.path()), default_buildpacks());
    let out = base.path().join("out/droplet.tgz");
    let example = repo_root().join("examples/static-site");
    let (result, log) = stage(&stager, request(&example, &out)).await;
    let staged = result.expect("static example stages");

    let entries = droplet_entries(&out);
    for wanted in [
        "./app/index.html",
        "./staging_info.yml",
        "./logs/staging_task.log",
        "./tmp/",
    ] {
        assert!(
            entries.iter().any(|e| e == wanted),
            "{wanted} missing from {entries:?}"
        );
    }
    let info = info(&out);
    assert_eq!(info["detected_buildpack"].as_str(), Some("staticfile"));
    assert!(
        info["start_command"]
            .as_str()
            .is_some_and(|c| c.contains("http.server")),
        "start command: {:?}",
        info["start_command"]
    );
    assert_eq!(info["buildpack_key"].as_str(), Some("staticfile"));
    assert!(info["effective_procfile"]["web"].is_string());

    // Digests are of the file as written.
    let bytes = std::fs::read(&out).expect("droplet");
    assert_eq!(staged.droplet.sha256, sha256_hex(&bytes));
    assert_eq!(staged.droplet.size, bytes.len() as u64);
    assert_eq!(staged.droplet.sha1.len(), 40);

    // The log streamed live and shipped in the droplet.
    assert!(log.contains("-----> Detected staticfile"), "{log}");
    assert!(log.contains("-----> Uploading droplet"), "{log}");
    let shipped = droplet_file(&out, "./logs/staging_task.log").expect("log in droplet");
    assert!(
        shipped.contains("Setting up static file server"),
        "{shipped}"
    );

    // No workspace is left behind, and no partial droplet.
    let leftovers: Vec<_> = std::fs::read_dir(base.path().join("staging"))
        .expect("staging dir")
        .collect();
    assert!(leftovers.is_empty(), "workspace left: {leftovers:?}");
    let partials: Vec<_> = std::fs::read_dir(base.path().join("out"))
        .expect("out dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(partials.is_empty());
}

#[tokio::test]
async fn each_example_detects_its_buildpack() {
    let base = tempfile::tempdir().expect("tempdir");
    let stager = stager(test_config(base.path()), default_buildpacks());
    let cases: [(&[(&str, &str)], &str); 4] = [
        (&[("index.html", "<h1>hi</h1>")], "staticfile"),
        (
            &[("Staticfile", "root: public\n"), ("public/index.html", "x")],
            "staticfile",
        ),
        (
            &[
                ("Procfile", "web: ./server --port $PORT\n"),
                ("server", "#!/bin/sh\n"),
            ],
            "procfile",
        ),
        // An app with both: the configured order puts staticfile first.
        (
            &[("Procfile", "web: ./run\n"), ("index.html", "x")],
            "staticfile",
        ),
    ];
    for (index, (files, expected)) in cases.iter().enumerate() {
        let app = base.path().join(format!("app-{index}"));
        write_app(&app, files);
        let out = base.path().join(format!("droplet-{index}.tgz"));
        let (result, log) = stage(&stager, request(&app, &out)).await;
        let staged = result.unwrap_or_else(|e| panic!("case {index}: {e}\n{log}"));
        assert_eq!(staged.info.buildpack_key, *expected, "case {index}");
    }
}

#[tokio::test]
async fn no_match_is_cf_no_app_detected_error() {
    let base = tempfile::tempdir().expect("tempdir");
    let stager = stager(test_config(base.path()), default_buildpacks());
    let app = base.path().join("app");
    write_app(&app, &[("README.txt", "nothing to see")]);
    let out = base.path().join("droplet.tgz");
    let (result, log) = stage(&stager, request(&app, &out)).await;
    let error = result.expect_err("nothing detects a README");
    assert!(matches!(error, StagingError::NoAppDetected), "{error:?}");
    assert_eq!(error.cf_type().as_str(), "NoAppDetectedError");
    assert_eq!(
        error.to_string(),
        "An application could not be detected by any available buildpack"
    );
    assert!(log.contains("Staging failed"), "{log}");
    assert!(!out.exists(), "no droplet on failure");
}

#[tokio::test]
async fn procfile_web_overrides_and_named_buildpack_skips_detection() {
    let base = tempfile::tempdir().expect("tempdir");
    let stager = stager(test_config(base.path()), default_buildpacks());
    let app = base.path().join("app");
    write_app(
        &app,
        &[
            ("index.html", "x"),
            ("Procfile", "web: ./custom-server\nworker: ./work\n"),
        ],
    );
    let out = base.path().join("a.tgz");
    let (result, log) = stage(&stager, request(&app, &out)).await;
    let staged = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(staged.info.buildpack_key, "staticfile");
    assert_eq!(
        staged.info.start_command.as_deref(),
        Some("./custom-server")
    );
    assert_eq!(
        staged
            .info
            .effective_procfile
            .get("worker")
            .map(String::as_str),
        Some("./work")
    );

    // Naming procfile skips detection even though staticfile would match first.
    let mut named = request(&app, &base.path().join("b.tgz"));
    named.buildpacks = vec!["procfile".into()];
    let (result, log) = stage(&stager, named).await;
    let staged = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(staged.info.buildpack_key, "procfile");

    // An explicit start command beats both.
    let mut explicit = request(&app, &base.path().join("c.tgz"));
    explicit.start_command = Some("./explicit".into());
    let (result, _) = stage(&stager, explicit).await;
    assert_eq!(
        result.expect("stages").info.start_command.as_deref(),
        Some("./explicit")
    );

    // A named buildpack that is not installed is a clear error.
    let mut missing = request(&app, &base.path().join("d.tgz"));
    missing.buildpacks = vec!["cobol".into()];
    let (result, _) = stage(&stager, missing).await;
    let error = result.expect_err("unknown buildpack");
    assert!(error.to_string().contains("cobol"), "{error}");
}

#[tokio::test]
async fn zip_and_tgz_sources_stage_like_directories() {
    let base = tempfile::tempdir().expect("tempdir");
    let stager = stager(test_config(base.path()), default_buildpacks());

    let zip_path = base.path().join("app.zip");
    {
        let file = std::fs::File::create(&zip_path).expect("zip file");
        let mut zip = zip::ZipWriter::new(file);
        let options = zip::write::SimpleFileOptions::default().unix_permissions(0o644);
        zip.start_file("index.html", options).expect("zip entry");
        std::io::Write::write_all(&mut zip, b"<h1>zip</h1>").expect("zip write");
        zip.add_directory("assets/", options).expect("zip dir");
        zip.start_file("assets/app.css", options)
            .expect("zip entry");
        std::io::Write::write_all(&mut zip, b"body{}").expect("zip write");
        zip.finish().expect("zip finish");
    }
    let out = base.path().join("zip.tgz");
    let (result, log) = stage(&stager, request(&zip_path, &out)).await;
    result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(
        droplet_file(&out, "./app/index.html").as_deref(),
        Some("<h1>zip</h1>")
    );
    assert_eq!(
        droplet_file(&out, "./app/assets/app.css").as_deref(),
        Some("body{}")
    );

    let tgz_path = base.path().join("app.tgz");
    std::fs::write(
        &tgz_path,
        make_tgz(&[("Procfile", "web: ./go\n"), ("go", "#!/bin/sh\n")]),
    )
    .expect("tgz");
    let out = base.path().join("tgz.tgz");
    let (result, log) = stage(&stager, request(&tgz_path, &out)).await;
    let staged = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(staged.info.buildpack_key, "procfile");
    assert!(droplet_entries(&out).contains(&"./app/go".to_string()));
}

#[tokio::test]
async fn node_buildpack_installs_a_pinned_runtime_through_fetch() {
    let base = tempfile::tempdir().expect("tempdir");
    let runtime = make_tgz(&[
        (
            "node-v20.11.1-linux-x64/bin/node",
            "#!/bin/sh\necho fake node \"$@\"\n",
        ),
        ("node-v20.11.1-linux-x64/LICENSE", "MIT\n"),
    ]);
    let server = FileServer::start(vec![("/mirror/node/node-20.11.1.tgz", runtime.clone())]).await;
    let upstream = "https://buildpacks.cloudfoundry.org/dependencies/node/node-20.11.1.tgz";
    let node = node_buildpack_pinned(
        &base.path().join("node-bp"),
        upstream,
        &sha256_hex(&runtime),
    );

    let mut config = test_config(base.path());
    config.fetch.mirrors = vec![node_mirror(&server)];
    let stager = stager(config, vec![buildpack("staticfile"), node]);

    let app = base.path().join("app");
    write_app(
        &app,
        &[
            ("package.json", r#"{"name":"x","engines":{"node":"20.x"}}"#),
            ("server.js", ""),
        ],
    );
    let out = base.path().join("node.tgz");
    let (result, log) = stage(&stager, request(&app, &out)).await;
    let staged = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(staged.info.detected_buildpack, "node.js");
    assert_eq!(staged.info.start_command.as_deref(), Some("node server.js"));
    assert_eq!(
        staged.info.config_vars.get("NODE_ENV").map(String::as_str),
        Some("production")
    );
    let entries = droplet_entries(&out);
    assert!(
        entries.contains(&"./app/.node/bin/node".to_string()),
        "{entries:?}"
    );
    // The host unpacked it, so the runtime is still executable.
    assert_eq!(
        droplet_mode(&out, "./app/.node/bin/node").map(|m| m & 0o111),
        Some(0o111)
    );
    let profile = droplet_file(&out, "./app/.profile.d/000_node.sh").expect("profile.d script");
    assert!(profile.contains(".node/bin"), "{profile}");
    // Whether the cache answered is the run's to report, not the log's (it is in the droplet).
    assert!(!staged.fetches[0].cached, "{:?}", staged.fetches);
    assert!(!log.contains("cache miss"), "{log}");
    assert!(
        log.contains(&server.url("/mirror/node/node-20.11.1.tgz")),
        "{log}"
    );
    assert_eq!(server.hits("/mirror/node/node-20.11.1.tgz"), 1);

    // A second staging (fresh app cache) is served by the host's download cache.
    let (result, log) = stage(&stager, request(&app, &base.path().join("again.tgz"))).await;
    let again = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert!(again.fetches[0].cached, "{:?}", again.fetches);
    assert!(!log.contains("cache hit"), "{log}");
    assert_eq!(
        server.hits("/mirror/node/node-20.11.1.tgz"),
        1,
        "served from cache"
    );
}

#[tokio::test]
async fn node_download_with_wrong_checksum_or_outside_allowlist_fails() {
    let base = tempfile::tempdir().expect("tempdir");
    let runtime = make_tgz(&[("n/bin/node", "#!/bin/sh\n")]);
    let server = FileServer::start(vec![("/mirror/node/n.tgz", runtime)]).await;
    let upstream = "https://buildpacks.cloudfoundry.org/dependencies/node/n.tgz";
    let wrong = "0".repeat(64);
    let node = node_buildpack_pinned(&base.path().join("node-bp"), upstream, &wrong);
    let mut config = test_config(base.path());
    config.fetch.mirrors = vec![node_mirror(&server)];
    let stager = stager(config, vec![node.clone()]);
    let app = base.path().join("app");
    write_app(&app, &[("package.json", "{}")]);
    let (result, log) = stage(&stager, request(&app, &base.path().join("x.tgz"))).await;
    let error = result.expect_err("checksum mismatch fails");
    assert_eq!(error.cf_type().as_str(), "BuildpackCompileFailed");
    assert!(error.to_string().contains("checksum mismatch"), "{error}");
    assert!(log.contains(upstream), "log names the URL: {log}");

    // Without a mirror and with declared downloads switched off, nothing may be fetched.
    let mut config = test_config(base.path());
    config.fetch.allow_buildpack_declared = false;
    let stager = dea_tests::stager(config, vec![node]);
    let (result, _) = stage(&stager, request(&app, &base.path().join("y.tgz"))).await;
    let error = result.expect_err("denied download fails");
    let message = error.to_string();
    assert!(
        message.contains("denied") && message.contains(upstream),
        "{message}"
    );
}

/// `len` bytes of noise, the same every run (incompressible: packed as stored members).
fn noise(len: usize) -> Vec<u8> {
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

#[tokio::test]
async fn a_compile_that_rewrites_the_app_is_packed_as_it_left_it() {
    let base = tempfile::tempdir().expect("tempdir");
    let stager = stager(test_config(base.path()), vec![buildpack("hostile")]);
    let app = base.path().join("app");
    write_app(
        &app,
        &[
            ("hostile", ""),
            ("modified.txt", "original\n"),
            ("deleted.txt", "to be deleted"),
            ("replaced.txt", "to be replaced"),
            ("keep/untouched.js", &"let kept = true;\n".repeat(100_000)),
        ],
    );
    std::fs::write(app.join("keep/asset.bin"), noise(3 << 20)).expect("asset");
    let before = tree_listing(&app);
    let out = base.path().join("droplet.tgz");
    let mut req = request(&app, &out);
    req.env = vec![
        ("HOSTILE".into(), "rewrite-app".into()),
        ("HOSTILE_PHASE".into(), "compile".into()),
    ];
    let (result, log) = stage(&stager, req).await;
    result.unwrap_or_else(|e| panic!("{e}\n{log}"));

    let unpacked = base.path().join("unpacked");
    std::fs::create_dir(&unpacked).expect("unpacked");
    untar_droplet(&out, &unpacked);
    let packed = tree_listing(&unpacked.join("app"));
    let content = |name: &str| packed.get(Path::new(name)).map(|(_, _, c)| c.clone());
    assert_eq!(
        content("modified.txt").as_deref(),
        Some(&b"original\nchanged by compile\n"[..])
    );
    assert!(!packed.contains_key(Path::new("deleted.txt")), "{packed:?}");
    assert_eq!(
        packed
            .get(Path::new("replaced.txt"))
            .map(|(kind, ..)| *kind),
        Some("dir")
    );
    assert_eq!(
        content("replaced.txt/inside").as_deref(),
        Some(&b"a directory now"[..])
    );
    assert_eq!(
        content("added.txt").as_deref(),
        Some(&b"added by compile"[..])
    );
    // What the compile left alone is packed byte for byte, mode for mode.
    for name in ["keep/untouched.js", "keep/asset.bin", "hostile"] {
        assert_eq!(
            packed.get(Path::new(name)),
            before.get(Path::new(name)),
            "{name}"
        );
    }
    // The source itself is untouched, and nothing is left mounted or on disk.
    assert_eq!(tree_listing(&app), before);
    assert!(mounts_beneath(base.path()).is_empty());
    let leftovers: Vec<_> = std::fs::read_dir(base.path().join("staging"))
        .expect("staging dir")
        .collect();
    assert!(leftovers.is_empty(), "workspace left: {leftovers:?}");
}

#[tokio::test]
async fn links_in_a_source_directory_are_packed_as_links_never_followed() {
    let base = tempfile::tempdir().expect("tempdir");
    let stager = stager(test_config(base.path()), default_buildpacks());
    let app = base.path().join("app");
    write_app(
        &app,
        &[
            ("Procfile", "web: ./run\n"),
            ("run", "#!/bin/sh\n"),
            ("lib/real.txt", "real"),
        ],
    );
    std::os::unix::fs::symlink("lib/real.txt", app.join("inside")).expect("link");
    std::os::unix::fs::symlink("lib", app.join("dir-link")).expect("link");
    let out = base.path().join("droplet.tgz");
    let (result, log) = stage(&stager, request(&app, &out)).await;
    result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    let unpacked = base.path().join("unpacked");
    std::fs::create_dir(&unpacked).expect("unpacked");
    untar_droplet(&out, &unpacked);
    let packed = tree_listing(&unpacked.join("app"));
    assert_eq!(
        packed.get(Path::new("inside")),
        Some(&("link", 0, b"lib/real.txt".to_vec()))
    );
    assert_eq!(
        packed.get(Path::new("dir-link")),
        Some(&("link", 0, b"lib".to_vec()))
    );
    assert!(!packed.contains_key(Path::new("dir-link/real.txt")));

    // A link out of the app is refused, and what it points at reaches no droplet.
    std::fs::write(base.path().join("secret"), "s3cret").expect("secret");
    std::os::unix::fs::symlink("../secret", app.join("leak")).expect("link");
    let out = base.path().join("leak.tgz");
    let (result, log) = stage(&stager, request(&app, &out)).await;
    let error = result.expect_err("a link out of the app");
    assert!(error.to_string().contains("leak"), "{error}\n{log}");
    assert!(!out.exists());
    assert!(mounts_beneath(base.path()).is_empty());
}

#[tokio::test]
async fn a_staged_app_past_the_droplet_cap_fails_with_its_own_error() {
    let base = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(base.path());
    config.instances.max_droplet_mb = 1;
    let stager = stager(config, default_buildpacks());
    let app = base.path().join("app");
    write_app(&app, &[("Procfile", "web: ./run\n")]);
    std::fs::write(app.join("big.bin"), noise(2 << 20)).expect("big");
    let out = base.path().join("droplet.tgz");
    let (result, log) = stage(&stager, request(&app, &out)).await;
    let error = result.expect_err("larger than a droplet may be");
    assert!(
        error.to_string().contains("more than the limit of 1 MiB"),
        "{error}\n{log}"
    );
    assert!(!out.exists());
    assert!(mounts_beneath(base.path()).is_empty());
}
