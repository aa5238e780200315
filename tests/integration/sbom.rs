//! The bill of materials in every droplet: `sbom.cdx.json` (validated by the CycloneDX
//! library, `cyclonedx-bom`), `dependencies:` in `staging_info.yml`, the completion reply's
//! extension, and the pins policy. Real stagings: a wasm buildpack fetching through a mirror
//! rule from a loopback server, a classic one downloading with curl and wget through the
//! proxy, and an agent on a real nats-server.

use dea::sbom::Dependencies;
use dea::sbom::cyclonedx::Bom;
use dea_tests::controller::{ContainerCleanup, Controller, NatsServer, zip_files};
use dea_tests::*;
use serde_json::json;
use std::path::Path;
use std::time::Duration;

/// The droplet's `sbom.cdx.json`, validated as CycloneDX 1.5 by the CycloneDX library; and
/// the facts this agent reads back out of it.
fn validated_sbom(droplet: &Path) -> (String, Dependencies) {
    use cyclonedx_bom::prelude::{Bom as CdxBom, SpecVersion, Validate};
    let text = droplet_file(droplet, "./sbom.cdx.json").expect("the droplet has sbom.cdx.json");
    let parsed = CdxBom::parse_from_json_v1_5(text.as_bytes()).expect("CycloneDX 1.5 JSON");
    let report = parsed.validate_version(SpecVersion::V1_5);
    assert!(report.passed(), "{report:?}\n{text}");
    // The library ignores keys it does not know: written back out, the document must be the
    // same, so that no key of ours was misspelt or misplaced and silently dropped.
    let mut again = Vec::new();
    parsed.output_as_json_v1_5(&mut again).expect("writes");
    let ours: serde_json::Value = serde_json::from_str(&text).expect("json");
    let theirs: serde_json::Value = serde_json::from_slice(&again).expect("json");
    assert_eq!(ours, theirs, "{text}");
    let deps = Bom::parse(text.as_bytes())
        .expect("ours")
        .dependencies()
        .expect("facts");
    (text, deps)
}

fn staging_info_dependencies(droplet: &Path) -> Dependencies {
    let yaml = droplet_file(droplet, "./staging_info.yml").expect("staging_info.yml");
    let info: dea::droplet::StagingInfo = serde_yaml_ng::from_str(&yaml).expect("parses");
    info.dependencies
        .unwrap_or_else(|| panic!("no dependencies: in\n{yaml}"))
}

#[tokio::test]
async fn a_wasm_download_through_a_mirror_is_in_the_bill_of_materials() {
    let base = tempfile::tempdir().expect("tempdir");
    let upstream = CountingListener::start().await;
    let runtime = make_tgz(&[("node/bin/node", "#!/bin/sh\necho node\n")]);
    let mirror = FileServer::start(vec![("/mirror/x.tgz", runtime.clone())]).await;
    let upstream_base = format!("https://127.0.0.1:{}/", upstream.port);
    let asked = format!("{upstream_base}x.tgz");
    let node = node_buildpack_pinned_allowing(
        &base.path().join("node-bp"),
        &asked,
        &sha256_hex(&runtime),
        &upstream_base,
    );
    let component =
        std::fs::read(node.dir.join("buildpack.wasm")).expect("the buildpack's component");
    let mut config = test_config(base.path());
    config.fetch.mirrors = vec![dea::config::MirrorRule {
        from: upstream_base.clone(),
        to: mirror.url("/mirror/"),
    }];
    let stager = stager(config, vec![node]);
    let package = make_tgz(&[("package.json", "{}")]);
    let source = base.path().join("app.tgz");
    std::fs::write(&source, &package).expect("package");

    let out = base.path().join("first.tgz");
    let (result, log) = stage(&stager, request(&source, &out)).await;
    let staged = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    let (text, deps) = validated_sbom(&out);
    assert_eq!(
        deps.app.sha256,
        sha256_hex(&package),
        "of the package as received"
    );
    assert_eq!(deps.app.digest_of, dea::sbom::DigestOf::File);
    assert_eq!(deps.stack, "cflinuxfs4");
    assert_eq!(deps.buildpacks.len(), 1, "{text}");
    assert_eq!(deps.buildpacks[0].id, "node");
    assert_eq!(deps.buildpacks[0].kind, "wasm");
    assert_eq!(deps.buildpacks[0].sha256, sha256_hex(&component));
    let download = match deps.downloads.as_slice() {
        [one] => one,
        other => panic!("exactly one download, not {other:?}"),
    };
    assert_eq!(download.url_asked, asked);
    assert_eq!(download.url_used, mirror.url("/mirror/x.tgz"));
    assert_eq!(download.sha256, sha256_hex(&runtime));
    assert_eq!(download.size, runtime.len() as u64);
    assert_eq!(
        (download.buildpack.as_str(), download.phase.as_str()),
        ("node", "compile")
    );
    assert!(download.pinned);
    assert_eq!(download.pinned_by.as_deref(), Some("buildpack"));
    assert!(deps.fully_pinned && !deps.pins_required);
    assert_eq!(staging_info_dependencies(&out), deps);
    assert_eq!(staged.dependencies, deps);
    assert!(!staged.fetches[0].cached, "the run knows it downloaded");
    assert!(!text.contains("\"timestamp\""), "no clock in the droplet");

    // The same staging again is served from the download cache; the droplet may not tell.
    let again = base.path().join("again.tgz");
    let (result, log) = stage(&stager, request(&source, &again)).await;
    let staged = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert!(staged.fetches[0].cached, "the run knows the cache answered");
    assert_eq!(mirror.hits("/mirror/x.tgz"), 1);
    for entry in [
        "./sbom.cdx.json",
        "./staging_info.yml",
        "./logs/staging_task.log",
    ] {
        assert_eq!(
            droplet_file(&out, entry),
            droplet_file(&again, entry),
            "{entry} differs between a download and a cache hit"
        );
    }
}

#[tokio::test]
async fn a_classic_download_through_the_proxy_is_in_the_bill_of_materials() {
    let base = tempfile::tempdir().expect("tempdir");
    let upstream = CountingListener::start().await;
    let tool = make_tgz(&[("tool/bin/tool", "#!/bin/sh\necho tool\n")]);
    let mirror = FileServer::start(vec![("/mirror/x.tgz", tool.clone())]).await;
    let asked = format!("https://127.0.0.1:{}/x.tgz", upstream.port);
    let mut config = test_config(base.path());
    config.fetch.mirrors = vec![dea::config::MirrorRule {
        from: format!("https://127.0.0.1:{}/", upstream.port),
        to: mirror.url("/mirror/"),
    }];
    let stager = stager(config, vec![classic_buildpack("downloader")]);
    let app = base.path().join("app");
    write_app(&app, &[("download.txt", "")]);
    let out = base.path().join("classic.tgz");
    let mut req = request(&app, &out);
    req.env = vec![("URL".into(), asked.clone())];
    let (result, log) = stage(&stager, req).await;
    let staged = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    let (text, deps) = validated_sbom(&out);
    assert_eq!(deps.app.digest_of, dea::sbom::DigestOf::Tree);
    let bp = &deps.buildpacks[0];
    assert_eq!(
        (bp.id.as_str(), bp.kind.as_str()),
        ("downloader", "classic")
    );
    assert_eq!(bp.digest_of, dea::sbom::DigestOf::Tree);
    // curl and wget both asked: one download in the droplet, two fetches in the run.
    let download = match deps.downloads.as_slice() {
        [one] => one,
        other => panic!("exactly one download, not {other:?}\n{text}"),
    };
    assert_eq!(download.url_asked, asked);
    assert_eq!(download.url_used, mirror.url("/mirror/x.tgz"));
    assert_eq!(download.sha256, sha256_hex(&tool));
    assert_eq!(download.buildpack, "downloader");
    assert_eq!(download.phase, "compile");
    assert!(!download.pinned && !deps.fully_pinned);
    assert_eq!(staged.fetches.len(), 2, "{:?}", staged.fetches);
    assert_eq!(staging_info_dependencies(&out), deps);
    // The proxy's lines come after the script's own output, whenever the downloads ended:
    // the log ships in the droplet, so where they land must not depend on timing.
    let done = log.find("       done").expect(&log);
    let fetched: Vec<usize> = log
        .match_indices("fetch https://")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(fetched.len(), 2, "{log}");
    assert!(fetched.iter().all(|at| *at > done), "{log}");
}

#[tokio::test]
async fn require_pins_refuses_an_unpinned_download_and_passes_a_pinned_one() {
    let base = tempfile::tempdir().expect("tempdir");
    let upstream = CountingListener::start().await;
    let tool = make_tgz(&[("tool/bin/tool", "#!/bin/sh\necho tool\n")]);
    let mirror = FileServer::start(vec![("/mirror/x.tgz", tool.clone())]).await;
    let asked = format!("https://127.0.0.1:{}/x.tgz", upstream.port);
    let mut config = test_config(base.path());
    config.fetch.mirrors = vec![dea::config::MirrorRule {
        from: format!("https://127.0.0.1:{}/", upstream.port),
        to: mirror.url("/mirror/"),
    }];
    config.fetch.require_pins = true;
    let app = base.path().join("app");
    write_app(&app, &[("download.txt", "")]);
    let staging = |out: &str| {
        let mut req = request(&app, &base.path().join(out));
        req.env = vec![("URL".into(), asked.clone())];
        req
    };

    let strict = stager(config.clone(), vec![classic_buildpack("downloader")]);
    let (result, log) = stage(&strict, staging("unpinned.tgz")).await;
    result.expect_err("an unpinned download fails the build");
    assert!(
        log.contains("fetch.require_pins") && log.contains(&asked),
        "the refusal names the URL and the policy\n{log}"
    );
    assert!(
        log.contains("dea fetch --pin"),
        "and says how to pin\n{log}"
    );
    assert_eq!(
        mirror.hits("/mirror/x.tgz"),
        0,
        "nothing unpinned is downloaded"
    );

    config.fetch.pins.insert(asked.clone(), sha256_hex(&tool));
    config.base_dir = base.path().join("pinned");
    let pinned = stager(config, vec![classic_buildpack("downloader")]);
    let out = base.path().join("pinned.tgz");
    let (result, log) = stage(&pinned, staging("pinned.tgz")).await;
    result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    let (_, deps) = validated_sbom(&out);
    assert!(deps.pins_required && deps.fully_pinned, "{deps:?}");
    assert_eq!(deps.downloads[0].pinned_by.as_deref(), Some("fetch.pins"));
}

#[tokio::test]
async fn a_wasm_buildpack_pinned_by_its_manifest_passes_require_pins() {
    let base = tempfile::tempdir().expect("tempdir");
    let runtime = make_tgz(&[("node/bin/node", "#!/bin/sh\necho node\n")]);
    let server = FileServer::start(vec![("/mirror/node/node-20.11.1.tgz", runtime.clone())]).await;
    let node = node_buildpack_pinned(
        &base.path().join("node-bp"),
        "https://buildpacks.cloudfoundry.org/dependencies/node/node-20.11.1.tgz",
        &sha256_hex(&runtime),
    );
    let mut config = test_config(base.path());
    config.fetch.mirrors = vec![node_mirror(&server)];
    config.fetch.require_pins = true;
    let stager = stager(config, vec![node]);
    let app = base.path().join("app");
    write_app(&app, &[("package.json", "{}")]);
    let out = base.path().join("node.tgz");
    let (result, log) = stage(&stager, request(&app, &out)).await;
    result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    let (_, deps) = validated_sbom(&out);
    assert!(deps.pins_required && deps.fully_pinned);
    assert_eq!(deps.downloads[0].pinned_by.as_deref(), Some("buildpack"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_completion_reply_carries_the_bill_of_materials_and_the_cache_hits() {
    let base = tempfile::tempdir().expect("tempdir");
    let _cleanup = ContainerCleanup(base.path().to_path_buf());
    let nats = NatsServer::start().await;
    let controller = Controller::connect(&nats).await;
    let advertise = controller.listen("dea.advertise").await;
    let runtime = make_tgz(&[("node/bin/node", "#!/bin/sh\necho node\n")]);
    let server = FileServer::start(vec![("/mirror/node/node-20.11.1.tgz", runtime.clone())]).await;
    let node = node_buildpack_pinned(
        &base.path().join("node-bp"),
        "https://buildpacks.cloudfoundry.org/dependencies/node/node-20.11.1.tgz",
        &sha256_hex(&runtime),
    );
    let package = zip_files(&[("package.json", "{}"), ("Procfile", "web: node x.js\n")]);
    let blobs =
        dea_tests::controller::BlobStore::start(vec![("/packages/app.zip", package.clone())]).await;
    let mut config = test_config(base.path());
    config.agent.nats_servers = vec![nats.url()];
    config.agent.staging_memory_mb = 128;
    config.agent.staging_disk_mb = 256;
    config.directory_server.port = 0;
    config.fetch.mirrors = vec![node_mirror(&server)];
    let agent = dea::node::Node::start(config, dea::buildpack::BuildpackSet::from_list(vec![node]))
        .await
        .expect("agent starts")
        .agent;
    advertise
        .wait_for(Duration::from_secs(10), |m| m["id"] == agent.id())
        .await
        .expect("the agent advertises (and so listens)");
    let subject = format!("staging.{}.start", agent.id());

    let mut hits = Vec::new();
    for round in 0..2 {
        let staging = json!({
            "app_id": "app-s", "task_id": format!("task-s{round}"),
            "download_uri": blobs.url("/packages/app.zip"),
            "upload_uri": blobs.url(&format!("/upload/droplet-s{round}")),
        });
        let replies = controller
            .request_many(&subject, &staging, 2, Duration::from_secs(60))
            .await;
        let completion = replies.get(1).unwrap_or_else(|| panic!("{replies:?}"));
        assert!(completion["error"].is_null(), "{completion}");
        let bom = &completion["dea_bill_of_materials"];
        assert_eq!(bom["app_sha256"], sha256_hex(&package), "{completion}");
        assert_eq!(bom["app_digest_of"], "file");
        assert_eq!(bom["buildpacks"][0]["id"], "node");
        assert_eq!(bom["fully_pinned"], true);
        let download = &bom["downloads"][0];
        assert_eq!(
            download["url_used"],
            server.url("/mirror/node/node-20.11.1.tgz")
        );
        assert_eq!(download["sha256"], sha256_hex(&runtime));
        assert_eq!(download["pinned_by"], "buildpack");
        hits.push(download["cache_hit"].clone());
    }
    assert_eq!(hits, [json!(false), json!(true)], "the run's own fact");

    // A failed staging has no bill of materials to give: the key is absent.
    let broken = json!({
        "app_id": "app-s", "task_id": "task-broken",
        "download_uri": blobs.url("/packages/missing.zip"),
        "upload_uri": blobs.url("/upload/droplet-broken"),
    });
    let replies = controller
        .request_many(&subject, &broken, 2, Duration::from_secs(60))
        .await;
    let completion = replies.last().unwrap_or_else(|| panic!("{replies:?}"));
    assert!(!completion["error"].is_null(), "{completion}");
    assert!(
        completion.get("dea_bill_of_materials").is_none(),
        "{completion}"
    );
}
