//! Reproducible droplets: the same app, buildpacks and downloads give a byte-identical
//! droplet whoever stages it and when, with wasm and classic buildpacks; a buildpack that
//! writes the time is named by the diff; and an offline rebuild from the download cache gives
//! the droplet staged online, or names the download it lacks.

use dea::buildpack::Buildpack;
use dea::config::Config;
use dea::droplet::{
    DEFAULT_EPOCH, DiffLimits, Difference, PackLimits, PackOptions, Stamp, diff_droplets,
    pack_tree_with,
};
use dea::staging::Staged;
use dea_tests::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

/// Stages `app` with `buildpacks` on `config`, the app's variables `env`, into `out`.
async fn staged(
    config: Config,
    buildpacks: Vec<Buildpack>,
    app: &Path,
    out: &Path,
    env: &[(&str, &str)],
) -> Staged {
    let stager = stager(config, buildpacks);
    let mut req = request(app, out);
    req.env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let (result, log) = stage(&stager, req).await;
    result.unwrap_or_else(|e| panic!("{e}\n{log}"))
}

/// Every entry's (name, uid, gid, mtime).
fn stamps(droplet: &Path) -> Vec<(String, u64, u64, u64)> {
    let file = std::fs::File::open(droplet).expect("droplet opens");
    let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(file));
    archive
        .entries()
        .expect("entries")
        .map(|e| {
            let e = e.expect("entry");
            let h = e.header();
            (
                String::from_utf8_lossy(&e.path_bytes()).into_owned(),
                h.uid().expect("uid"),
                h.gid().expect("gid"),
                h.mtime().expect("mtime"),
            )
        })
        .collect()
}

/// Dates every file of `app` `secs` after 1970: inputs that differ only in time.
fn touch_all(app: &Path, secs: u64) {
    let time = UNIX_EPOCH + Duration::from_secs(secs);
    for entry in std::fs::read_dir(app).expect("app") {
        let path = entry.expect("entry").path();
        std::fs::File::open(&path)
            .and_then(|f| f.set_modified(time))
            .expect("touch");
    }
}

#[tokio::test]
async fn equal_inputs_give_identical_droplets_with_wasm_and_classic_buildpacks() {
    let base = tempfile::tempdir().expect("tempdir");
    let app = base.path().join("app");
    write_app(&app, &[("index.html", "<p>hi</p>"), ("hello.txt", "hi")]);
    let kinds = [
        ("wasm", buildpack("staticfile")),
        ("classic", classic_buildpack("hello")),
    ];
    for (kind, buildpack) in kinds {
        let mut droplets = Vec::new();
        for round in 0..2 {
            // A fresh state directory each time, and the app's files dated differently.
            touch_all(&app, 1_000_000_000 + round * 86_400);
            let config = test_config(&base.path().join(format!("{kind}-state-{round}")));
            let out = base.path().join(format!("{kind}-{round}.tgz"));
            droplets.push(staged(config, vec![buildpack.clone()], &app, &out, &[]).await);
        }
        let (a, b) = (&droplets[0].droplet, &droplets[1].droplet);
        let diff = diff_droplets(&a.path, &b.path, DiffLimits::default()).expect("diff");
        assert_eq!(a.sha256, b.sha256, "{kind}:\n{}", diff.report("a", "b"));
        assert_eq!(a.sha1, b.sha1, "{kind}");
        // Owned by the user instances run as (not root for wasm, nor the classic
        // containers' user by accident), all dated the default epoch.
        let config = test_config(base.path());
        for (name, uid, gid, mtime) in stamps(&a.path) {
            assert_eq!(
                (uid, gid),
                (
                    u64::from(config.instances.uid),
                    u64::from(config.instances.gid)
                ),
                "{kind} {name}"
            );
            assert_eq!(mtime, DEFAULT_EPOCH, "{kind} {name}");
        }

        // Unpacked by GNU tar and packed again, on one thread or three, it is the same
        // droplet: the compression's blocks do not depend on the number of threads.
        let tree = base.path().join(format!("{kind}-unpacked"));
        std::fs::create_dir(&tree).expect("mkdir");
        untar_droplet(&a.path, &tree);
        for threads in [1, 3] {
            let options = PackOptions {
                level: config.staging.droplet_compression_level,
                threads,
                limits: PackLimits::default(),
                stamp: Stamp::for_config(&config),
            };
            let out = base.path().join(format!("{kind}-repacked-{threads}.tgz"));
            let repacked = pack_tree_with(&tree, &out, &options).expect("repack");
            assert_eq!(repacked.sha256, a.sha256, "{kind}, {threads} threads");
        }
    }
}

#[tokio::test]
async fn source_date_epoch_dates_every_entry() {
    let base = tempfile::tempdir().expect("tempdir");
    let app = base.path().join("app");
    write_app(&app, &[("clock.txt", "")]);
    let mut config = test_config(&base.path().join("state"));
    config.staging.source_date_epoch = Some(1_700_000_000);
    let out = base.path().join("clock.tgz");
    staged(config, vec![classic_buildpack("clock")], &app, &out, &[]).await;
    let stamps = stamps(&out);
    assert!(stamps.len() > 5, "{stamps:?}");
    assert!(stamps.iter().all(|s| s.3 == 1_700_000_000), "{stamps:?}");
}

#[tokio::test]
async fn a_buildpack_that_writes_the_time_is_named_by_the_diff() {
    let base = tempfile::tempdir().expect("tempdir");
    let app = base.path().join("app");
    write_app(&app, &[("clock.txt", "")]);
    let mut outs: Vec<PathBuf> = Vec::new();
    for round in 0..2 {
        let config = test_config(&base.path().join(format!("state-{round}")));
        let out = base.path().join(format!("clock-{round}.tgz"));
        staged(config, vec![classic_buildpack("clock")], &app, &out, &[]).await;
        outs.push(out);
    }
    let diff = diff_droplets(&outs[0], &outs[1], DiffLimits::default()).expect("diff");
    let report = diff.report("first", "second");
    // The time (in nanoseconds) is the only difference, and the diff says where it is.
    assert!(
        diff.only_in_first.is_empty() && diff.only_in_second.is_empty(),
        "{report}"
    );
    assert_eq!(diff.changed.len(), 1, "{report}");
    let (name, differences) = &diff.changed[0];
    assert_eq!(name, "app/built-at.txt", "{report}");
    assert!(
        matches!(differences.as_slice(), [Difference::Content(..)]),
        "{report}"
    );
    assert!(
        report.starts_with("app/built-at.txt: content differs"),
        "{report}"
    );
}

/// A config whose downloads go through `cache`, allowed to reach `server`.
fn fetching_config(state: &Path, cache: &Path, server: &FileServer) -> Config {
    let mut config = test_config(state);
    config.fetch.cache_dir = Some(cache.to_path_buf());
    config.fetch.allow = vec![server.url("/")];
    config.fetch.mirrors = vec![node_mirror(server)];
    config
}

#[tokio::test]
async fn an_offline_rebuild_from_the_download_cache_gives_the_droplet_staged_online() {
    let base = tempfile::tempdir().expect("tempdir");
    let tool = make_tgz(&[("tool/bin/tool", "#!/bin/sh\necho tool\n")]);
    let runtime = make_tgz(&[("node/bin/node", "#!/bin/sh\necho node\n")]);
    let server = FileServer::start(vec![
        ("/x.tgz", tool),
        ("/mirror/node/node.tgz", runtime.clone()),
    ])
    .await;
    let url = server.url("/x.tgz");
    let node = node_buildpack_pinned(
        &base.path().join("node-bp"),
        "https://buildpacks.cloudfoundry.org/dependencies/node/node.tgz",
        &sha256_hex(&runtime),
    );
    let app = base.path().join("app");
    write_app(&app, &[("download.txt", ""), ("package.json", "{}")]);
    let cache = base.path().join("shared-fetch-cache");
    // A classic buildpack downloading with curl and wget through the proxy, then a wasm one
    // through the fetch import: both roads to the network.
    let buildpacks = vec![classic_buildpack("downloader"), node];
    let named = |config: &Config, out: &Path| {
        let stager = stager(config.clone(), buildpacks.clone());
        let mut req = request(&app, out);
        req.buildpacks = vec!["downloader".into(), "node".into()];
        req.env = vec![("URL".into(), url.clone())];
        (stager, req)
    };

    // Online. The fetch lines of the staging log say whether the cache answered, so the
    // droplet to rebuild is the one staged once the cache holds everything, as it would
    // on a site the cache was carried to.
    let mut online = Vec::new();
    for round in 0..2 {
        let config = fetching_config(
            &base.path().join(format!("online-{round}")),
            &cache,
            &server,
        );
        let out = base.path().join(format!("online-{round}.tgz"));
        let (stager, req) = named(&config, &out);
        let (result, log) = stage(&stager, req).await;
        online.push(result.unwrap_or_else(|e| panic!("{e}\n{log}")).droplet);
    }
    assert!(droplet_file(&online[1].path, "./app/from-curl/tool/bin/tool").is_some());
    assert!(droplet_file(&online[1].path, "./app/.node/bin/node").is_some());
    let hits = server.total_hits();

    // Offline, on a fresh state directory, with only the shared download cache.
    let mut config = fetching_config(&base.path().join("offline"), &cache, &server);
    config.fetch.offline = true;
    let out = base.path().join("offline.tgz");
    let (stager, req) = named(&config, &out);
    let (result, log) = stage(&stager, req).await;
    let rebuilt = result.unwrap_or_else(|e| panic!("{e}\n{log}")).droplet;
    assert_eq!(
        server.total_hits(),
        hits,
        "an offline staging reached the server"
    );
    let diff = diff_droplets(&online[1].path, &rebuilt.path, DiffLimits::default()).expect("diff");
    assert_eq!(
        rebuilt.sha256,
        online[1].sha256,
        "{}",
        diff.report("online", "offline")
    );
    assert_eq!(rebuilt.sha1, online[1].sha1);

    // Offline with an empty cache: the download it lacks is named.
    config.fetch.cache_dir = Some(base.path().join("empty-cache"));
    let (stager, req) = named(&config, &base.path().join("missing.tgz"));
    let (result, log) = stage(&stager, req).await;
    result.expect_err("nothing to download from");
    assert!(
        log.contains(&format!("{url} is not in the download cache")),
        "{log}"
    );
    assert_eq!(
        server.total_hits(),
        hits,
        "an offline staging reached the server"
    );
}
