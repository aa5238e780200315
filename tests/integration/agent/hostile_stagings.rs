//! Hostile stagings and buildpack caches through the real protocol: classic buildpacks that
//! plant FIFOs, links out of the tree, endless, deep and sparse trees where the agent (root)
//! reads or packs after compile, and caches made of the same. Each fails its staging with a
//! clear error while a [`Liveness`] probe shows the agent serving all along.

use super::local;
use dea_tests::controller::{
    BlobStore, ContainerCleanup, Controller, NatsServer, zip_dir_with_modes, zip_files,
};
use dea_tests::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

use super::probe::*;

/// One hostile staging: the admin buildpack that runs it, the `PLANT` it gets, and what the
/// completion error must name.
#[derive(Clone, Copy)]
struct Attack {
    plant: &'static str,
    buildpack: &'static str,
    /// Named by `buildpack_key`, or left to detection (the app has the `plant.txt` the
    /// planter detects).
    by_key: bool,
    expected: &'static [&'static str],
}

const fn planted(plant: &'static str, by_key: bool, expected: &'static [&'static str]) -> Attack {
    Attack {
        plant,
        buildpack: "planter",
        by_key,
        expected,
    }
}

/// Every attack `tests/classic/planter` knows, and a fast deep tree.
const ATTACKS: &[Attack] = &[
    // A FIFO Procfile blocked the agent's read (on an async worker) forever.
    planted("procfile-fifo", true, &["Procfile", "FIFO"]),
    // A link to /dev/zero: read until out of memory.
    planted(
        "procfile-zero",
        false,
        &["Procfile", "leads out of its directory"],
    ),
    // A link to /etc/shadow: its lines landed in staging_info.yml.
    planted(
        "procfile-shadow",
        true,
        &["Procfile", "leads out of its directory"],
    ),
    planted(
        "procfile-chain",
        false,
        &["Procfile", "leads out of its directory"],
    ),
    planted(
        "procfile-huge",
        true,
        &["Procfile", "larger than the limit"],
    ),
    planted("export-fifo", false, &["export", "FIFO"]),
    planted(
        "export-shadow",
        true,
        &["export", "leads out of its directory"],
    ),
    // 100 GB of holes, which a packer reading the bytes would compress for hours.
    planted("sparse", false, &["more than the limit"]),
    planted("fifo-in-app", true, &["FIFO"]),
    // 1,500 levels made by the planter with one `mkdir -p`.
    planted("deep-tree", false, &["deeper than the limit"]),
    // 1,500 nested directories made at once: the recursive packer overflowed its stack.
    Attack {
        plant: "deep-tree-fast",
        buildpack: "deep",
        by_key: true,
        expected: &["deeper than the limit"],
    },
    // 3,000: past PATH_MAX, so only descriptor-relative code can still remove the workspace.
    Attack {
        plant: "deep-past-path-max",
        buildpack: "deep",
        by_key: true,
        expected: &["deeper than the limit"],
    },
];

/// An admin buildpack that leaves 1,500 nested directories in the app, made by one
/// `mkdir -p` so that compile finishes in about a second.
fn deep_buildpack() -> Vec<u8> {
    // Twice as deep for `deep-past-path-max`: 3,000 levels, whose paths no syscall takes.
    let compile = r#"#!/bin/bash
set -e
plant="$(cat "$3/PLANT")"
cd "$1"
echo "-----> Planting $plant"
echo 'web: sleep 1' > Procfile
levels="$(printf 'd/%.0s' $(seq 1500))"
mkdir -p "$levels"
if [ "$plant" = deep-past-path-max ]; then cd "$levels"; mkdir -p "$levels"; fi
"#;
    zip_scripts(&[
        ("bin/detect", "#!/bin/bash\necho Deep\n"),
        ("bin/compile", compile),
        (
            "bin/release",
            "#!/bin/bash\nprintf -- '---\\ndefault_process_types:\\n  web: sleep 1\\n'\n",
        ),
    ])
}

/// A zip of executable scripts (mode 0755), as a buildpack archive.
fn zip_scripts(files: &[(&str, &str)]) -> Vec<u8> {
    use std::io::Write;
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, content) in files {
        let options = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
        writer.start_file(*name, options).expect("zip entry");
        writer.write_all(content.as_bytes()).expect("zip write");
    }
    writer.finish().expect("zip").into_inner()
}

/// One hostile staging, as the controller sees it.
struct PlantedStaging {
    attack: Attack,
    setup: Value,
    completion: Option<Value>,
    /// The staging log, followed live from the setup reply's URL until the task was gone.
    log: String,
    log_status: u16,
    elapsed: Duration,
}

/// Sends a staging request for the `plant.txt` app with `PLANT=<plant>` and the attack's
/// buildpack as the only admin buildpack, and follows its log while it runs.
async fn stage_planted(
    nats: &NatsServer,
    agent_id: &str,
    blobs: &BlobStore,
    directory: &dea::files::DirectoryServer,
    attack: Attack,
) -> PlantedStaging {
    let client = Controller::connect(nats).await;
    let plant = attack.plant;
    let task = format!("task-{plant}");
    let mut properties = json!({"environment": [format!("PLANT={plant}")], "meta": {}});
    if attack.by_key {
        properties["buildpack_key"] = json!(attack.buildpack);
    }
    let request = json!({
        "app_id": format!("app-{plant}"), "task_id": task, "stack": "cflinuxfs4",
        "download_uri": blobs.url("/packages/plant.zip"),
        "upload_uri": blobs.url(&format!("/upload/droplet-{plant}")),
        "admin_buildpacks": [{
            "key": attack.buildpack,
            "url": blobs.url(&format!("/buildpacks/{}.zip", attack.buildpack)),
        }],
        "properties": properties,
        "memory_limit": 128, "disk_limit": 256,
    });
    let inbox = client.client.new_inbox();
    let mut replies = client
        .client
        .subscribe(inbox.clone())
        .await
        .expect("subscribe inbox");
    let started = Instant::now();
    client
        .client
        .publish_with_reply(
            format!("staging.{agent_id}.start"),
            inbox,
            request.to_string().into(),
        )
        .await
        .expect("publish staging request");
    client.client.flush().await.expect("flush");
    let setup = next_reply(&mut replies, Duration::from_secs(60))
        .await
        .unwrap_or_else(|| panic!("{plant}: no setup reply"));
    // Follow the log from its start; the stream ends when the task's directory is removed.
    let tail = setup["task_streaming_log_url"].as_str().map(|url| {
        let url = format!("{}&tail&tail_offset=0", local(url, directory));
        tokio::spawn(async move {
            let Ok(mut response) = reqwest::get(url).await else {
                return (0, Vec::new());
            };
            let status = response.status().as_u16();
            let mut bytes = Vec::new();
            while let Ok(Some(chunk)) = response.chunk().await {
                bytes.extend_from_slice(&chunk);
            }
            (status, bytes)
        })
    });
    // Generous: the compile timeout is 20 s, and before the fixes these never came at all.
    let completion = next_reply(&mut replies, Duration::from_secs(120)).await;
    let elapsed = started.elapsed();
    let (log_status, log) = match tail {
        Some(tail) => tokio::time::timeout(Duration::from_secs(30), tail)
            .await
            .unwrap_or_else(|_| panic!("{plant}: the log tail did not end with the task"))
            .expect("tail task"),
        None => (0, Vec::new()),
    };
    PlantedStaging {
        attack,
        setup,
        completion,
        log: String::from_utf8_lossy(&log).into_owned(),
        log_status,
        elapsed,
    }
}

/// The next message on `subscriber` as JSON, if one comes within `limit`.
async fn next_reply(subscriber: &mut async_nats::Subscriber, limit: Duration) -> Option<Value> {
    match tokio::time::timeout(limit, subscriber.next()).await {
        Ok(Some(message)) => Some(serde_json::from_slice(&message.payload).unwrap_or(Value::Null)),
        _ => None,
    }
}

/// Hostile classic buildpacks, several stagings at once: each fails with an error naming
/// what was wrong, nothing is uploaded or leaked, nothing is left behind, and the agent
/// answers and heartbeats on time throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_stagings_fail_cleanly_while_the_agent_keeps_serving() {
    let base = tempfile::tempdir().expect("tempdir");
    let _cleanup = ContainerCleanup(base.path().to_path_buf());
    let nats = NatsServer::start().await;
    let controller = Controller::connect(&nats).await;
    let advertise = controller.listen("dea.advertise").await;
    let bus = BusRecorder::start(&nats).await;
    let shadow = shadow_lines();
    let planter = zip_dir_with_modes(&repo_root().join("tests/classic/planter"));
    let package = zip_files(&[("plant.txt", "the planter detects this app\n")]);
    let blobs = BlobStore::start(vec![
        ("/buildpacks/planter.zip", planter),
        ("/buildpacks/deep.zip", deep_buildpack()),
        ("/packages/plant.zip", package),
    ])
    .await;
    let agent = IsolatedAgent::start(base.path(), &nats).await;
    let directory = &agent.directory;
    advertise
        .wait_for(Duration::from_secs(10), |m| m["id"] == agent.id())
        .await
        .expect("the agent advertises");

    let probe = Liveness::start(&nats, agent.id()).await;
    // Two waves (the agent admits eight 128 MB stagings at most); the two FIFO attacks
    // share the first, as two blocked workers were all this agent's runtime had.
    let attacks = ATTACKS;
    let mut runs = Vec::new();
    for wave in attacks.chunks(6) {
        let stagings = wave
            .iter()
            .map(|attack| stage_planted(&nats, agent.id(), &blobs, directory, *attack));
        runs.extend(futures_util::future::join_all(stagings).await);
    }
    let report = probe.finish(Duration::from_secs(5)).await;

    assert_eq!(runs.len(), attacks.len());
    for run in &runs {
        let plant = run.attack.plant;
        assert!(run.setup["error"].is_null(), "{plant}: {}", run.setup);
        let completion = run
            .completion
            .as_ref()
            .unwrap_or_else(|| panic!("{plant}: no completion reply in {:?}", run.elapsed));
        eprintln!(
            "{plant} ({:.1} s): {}",
            run.elapsed.as_secs_f64(),
            completion["error"]
        );
        let error = completion["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{plant} staged without error: {completion}"));
        for part in run.attack.expected {
            assert!(error.contains(part), "{plant}: {error:?} lacks {part:?}");
        }
        assert!(
            completion["droplet_sha1"].is_null(),
            "{plant}: {completion}"
        );
        assert_eq!(completion["task_id"], format!("task-{plant}"));
        // The attack really ran: the planter's own line is in the log it streamed.
        assert_eq!(run.log_status, 200, "{plant}: log status");
        assert!(
            run.log.contains(&format!("-----> Planting {plant}")),
            "{plant}: log {:?}",
            run.log
        );
        assert!(
            run.log.contains("Staging failed"),
            "{plant}: log {:?}",
            run.log
        );
        assert_no_shadow(
            &shadow,
            &format!("{plant}'s staging log"),
            run.log.as_bytes(),
        );
        assert!(
            blobs.blob(&format!("/droplet-{plant}")).is_none(),
            "{plant}: a droplet was uploaded"
        );
    }
    assert!(blobs.uploads().is_empty(), "uploads: {:?}", blobs.uploads());
    for message in bus.all() {
        assert_no_shadow(&shadow, "a message on the bus", &message);
    }
    assert!(
        bus.all().len() > 100,
        "the bus recorder saw only {} messages",
        bus.all().len()
    );
    report.assert_alive("twelve hostile stagings");
    // No workspace left, even the 1,500-deep one; no container still running.
    assert_nothing_left(base.path()).await;
    let status = controller
        .request_many("dea.status", &json!({}), 1, Duration::from_secs(5))
        .await;
    assert_eq!(status.len(), 1, "dea.status after the attacks");
    agent.shutdown().await;
}

/// An admin buildpack that stages the app fine but leaves `CACHE_PLANT` in its cache
/// directory, which the agent packs and uploads after the staging.
fn cacher_buildpack() -> Vec<u8> {
    let compile = r#"#!/bin/bash
set -e
build="$1" cache="$2" env_dir="$3"
attack="$(cat "$env_dir/CACHE_PLANT")"
echo "-----> Caching $attack"
echo "web: sleep 1" > "$build/Procfile"
echo kept > "$cache/kept.txt"
case "$attack" in
  fifo) mkfifo "$cache/pipe" ;;
  shadow) ln -s /etc/shadow "$cache/shadow" ;;
  sparse) truncate -s 100G "$cache/sparse" ;;
  deep) cd "$cache"; mkdir -p "$(printf 'd/%.0s' $(seq 1500))" ;;
esac
"#;
    zip_scripts(&[
        ("bin/detect", "#!/bin/bash\necho Cacher\n"),
        ("bin/compile", compile),
        (
            "bin/release",
            "#!/bin/bash\nprintf -- '---\\ndefault_process_types:\\n  web: sleep 1\\n'\n",
        ),
    ])
}

/// The raw tar stream inside a `.tgz`.
fn gunzip(tgz: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(tgz)
        .read_to_end(&mut tar)
        .expect("gunzip");
    tar
}

/// The buildpack cache is the tenant's across stagings: a hostile cache coming in is
/// ignored, and whatever a buildpack leaves in the cache going out (a FIFO, a link to
/// /etc/shadow, 100 GB of holes, 1,500 nested directories) is refused or packed as it is,
/// never followed or read endlessly. The stagings themselves succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_buildpack_caches_are_neither_followed_nor_kept() {
    let base = tempfile::tempdir().expect("tempdir");
    let _cleanup = ContainerCleanup(base.path().to_path_buf());
    let nats = NatsServer::start().await;
    let controller = Controller::connect(&nats).await;
    let advertise = controller.listen("dea.advertise").await;
    let bus = BusRecorder::start(&nats).await;
    let shadow = shadow_lines();
    // What a previous staging "left": a link out and a FIFO.
    let cache_in = droplet_tgz(&[
        ("./kept-before.txt", Node::File("from before\n")),
        ("./shadow", Node::Link("/etc/shadow")),
        ("./pipe", Node::Fifo),
    ]);
    let blobs = BlobStore::start(vec![
        ("/buildpacks/cacher.zip", cacher_buildpack()),
        ("/packages/app.zip", zip_files(&[("app.txt", "an app\n")])),
        ("/caches/hostile.tgz", cache_in),
    ])
    .await;
    let agent = IsolatedAgent::start(base.path(), &nats).await;
    advertise
        .wait_for(Duration::from_secs(10), |m| m["id"] == agent.id())
        .await
        .expect("the agent advertises");

    // (what the buildpack leaves, what the packing warning must say; None: packed)
    let plants: [(&str, Option<&str>); 4] = [
        ("fifo", Some("FIFO")),
        ("shadow", None),
        ("sparse", Some("more than the limit")),
        ("deep", Some("deeper than the limit")),
    ];
    let probe = Liveness::start(&nats, agent.id()).await;
    let stagings = plants.iter().map(|(plant, _)| {
        let request = json!({
            "app_id": format!("app-cache-{plant}"), "task_id": format!("task-cache-{plant}"),
            "download_uri": blobs.url("/packages/app.zip"),
            "upload_uri": blobs.url(&format!("/upload/droplet-cache-{plant}")),
            "buildpack_cache_download_uri": blobs.url("/caches/hostile.tgz"),
            "buildpack_cache_upload_uri": blobs.url(&format!("/upload/cache-{plant}")),
            "admin_buildpacks": [{"key": "cacher", "url": blobs.url("/buildpacks/cacher.zip")}],
            "properties": {
                "environment": [format!("CACHE_PLANT={plant}")], "buildpack_key": "cacher",
            },
            "memory_limit": 128, "disk_limit": 256,
        });
        let (nats, agent_id, directory) = (&nats, agent.id(), &agent.directory);
        async move {
            let client = Controller::connect(nats).await;
            let inbox = client.client.new_inbox();
            let mut replies = client
                .client
                .subscribe(inbox.clone())
                .await
                .expect("subscribe inbox");
            client
                .client
                .publish_with_reply(
                    format!("staging.{agent_id}.start"),
                    inbox,
                    request.to_string().into(),
                )
                .await
                .expect("publish");
            client.client.flush().await.expect("flush");
            let setup = next_reply(&mut replies, Duration::from_secs(60))
                .await
                .unwrap_or_else(|| panic!("{plant}: no setup reply"));
            let url = setup["task_streaming_log_url"]
                .as_str()
                .map(|url| format!("{}&tail&tail_offset=0", local(url, directory)))
                .unwrap_or_else(|| panic!("{plant}: no log URL in {setup}"));
            let tail = tokio::spawn(async move {
                let mut response = reqwest::get(url).await.expect("tail the log");
                let mut bytes = Vec::new();
                while let Ok(Some(chunk)) = response.chunk().await {
                    bytes.extend_from_slice(&chunk);
                }
                String::from_utf8_lossy(&bytes).into_owned()
            });
            let completion = next_reply(&mut replies, Duration::from_secs(120)).await;
            let log = tokio::time::timeout(Duration::from_secs(30), tail)
                .await
                .unwrap_or_else(|_| panic!("{plant}: the log tail did not end"))
                .expect("tail task");
            (completion, log)
        }
    });
    let results = futures_util::future::join_all(stagings).await;
    let report = probe.finish(Duration::from_secs(5)).await;

    for ((plant, refused), (completion, log)) in plants.iter().zip(&results) {
        let completion = completion
            .as_ref()
            .unwrap_or_else(|| panic!("{plant}: no completion reply"));
        assert!(completion["error"].is_null(), "{plant}: {completion}");
        assert!(
            completion["droplet_sha1"].is_string(),
            "{plant}: {completion}"
        );
        assert!(
            log.contains(&format!("-----> Caching {plant}")),
            "{plant}: {log}"
        );
        // The hostile cache coming in was refused as a whole.
        assert!(
            log.contains("Ignoring the buildpack cache"),
            "{plant}: {log}"
        );
        assert_no_shadow(&shadow, &format!("{plant}'s staging log"), log.as_bytes());
        let droplet = blobs
            .blob(&format!("/droplet-cache-{plant}"))
            .unwrap_or_else(|| panic!("{plant}: no droplet uploaded"));
        assert_no_shadow(&shadow, &format!("{plant}'s droplet"), &gunzip(&droplet));
        let cache = blobs.blob(&format!("/cache-{plant}"));
        match refused {
            Some(reason) => {
                let warning = log
                    .lines()
                    .find(|l| l.contains("Packing the buildpack cache"))
                    .unwrap_or_else(|| panic!("{plant}: no packing warning in {log}"));
                assert!(warning.contains(reason), "{plant}: {warning}");
                assert!(cache.is_none(), "{plant}: a cache was uploaded");
            }
            None => {
                // Packed as it is: the link stays a link, the file behind it is not read.
                let cache = cache.unwrap_or_else(|| panic!("{plant}: no cache uploaded"));
                let tar = gunzip(&cache);
                assert_no_shadow(&shadow, "the uploaded cache", &tar);
                let mut archive = tar::Archive::new(&tar[..]);
                let link = archive
                    .entries()
                    .expect("entries")
                    .filter_map(Result::ok)
                    .find(|e| e.path_bytes().ends_with(b"shadow"))
                    .map(|e| e.header().entry_type());
                assert_eq!(link, Some(tar::EntryType::Symlink), "{plant}");
            }
        }
    }
    for message in bus.all() {
        assert_no_shadow(&shadow, "a message on the bus", &message);
    }
    report.assert_alive("hostile buildpack caches");
    assert_nothing_left(base.path()).await;
    agent.shutdown().await;
}
