//! Tenants attacking the agent itself, through the real protocol (real nats-server, real
//! runc): classic buildpacks that plant FIFOs, links out of the tree, endless and sparse
//! trees where the agent (root) reads or packs after compile; apps that turn their logs into
//! links to the agent's private state, or into FIFOs, before crashing; droplets whose home is
//! made of links; an app hiding its disk use behind a tree deeper than the agent walks. Each
//! attack must fail with a clear error *and* the agent must keep serving all along: a
//! [`Liveness`] probe asks `dea.status` every 200 ms and times every heartbeat from before the
//! attack until after it, against an agent on its own runtime ([`IsolatedAgent`]).

use super::{local, start_agent};
use dea_tests::controller::{
    BlobStore, ContainerCleanup, Controller, NatsServer, zip_dir_with_modes, zip_files,
};
use dea_tests::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use sha1::Digest;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest acceptable `dea.status` round trip while under attack.
const MAX_STATUS_LATENCY: Duration = Duration::from_secs(2);
/// Longest acceptable silence between heartbeats: 3x the agent's 1 s interval.
const MAX_HEARTBEAT_GAP: Duration = Duration::from_secs(3);

/// Watches the agent from outside while an attack runs: a blocked or busy async worker shows
/// as a slow or missing status reply or a heartbeat gap. (A stack overflow or an OOM kills
/// the whole test process, which fails the test anyway.)
struct Liveness {
    started: Instant,
    stop: tokio::sync::watch::Sender<bool>,
    /// One entry per `dea.status` sent: its latency, or `None` if unanswered within 5 s.
    status: tokio::task::JoinHandle<Vec<Option<Duration>>>,
    heartbeats: Arc<Mutex<Vec<Instant>>>,
    listener: tokio::task::JoinHandle<()>,
}

/// What a [`Liveness`] probe saw.
#[derive(Debug)]
struct LivenessReport {
    watched: Duration,
    requests: usize,
    unanswered: usize,
    max_latency: Duration,
    heartbeats: usize,
    /// Includes the silences from the probe's start to the first heartbeat and from the
    /// last one to the probe's end, so a heartbeat loop that stops late is still caught.
    max_gap: Duration,
}

impl Liveness {
    async fn start(nats: &NatsServer, agent_id: &str) -> Liveness {
        // Its own connection, so the test's other traffic cannot delay it.
        let client = Controller::connect(nats).await;
        let mut subscriber = client
            .client
            .subscribe("dea.heartbeat")
            .await
            .expect("subscribe to heartbeats");
        client.client.flush().await.expect("flush");
        let heartbeats = Arc::new(Mutex::new(Vec::new()));
        let sink = heartbeats.clone();
        let id = agent_id.to_string();
        let listener = tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                let beat: Value = serde_json::from_slice(&message.payload).unwrap_or(Value::Null);
                if beat["dea"] == id.as_str() {
                    sink.lock().expect("heartbeats").push(Instant::now());
                }
            }
        });
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let id = agent_id.to_string();
        let status = tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => break,
                }
                let sent = Instant::now();
                let replies = client
                    .request_many("dea.status", &json!({}), 1, Duration::from_secs(5))
                    .await;
                let answered = replies.first().is_some_and(|r| r["id"] == id.as_str());
                samples.push(answered.then(|| sent.elapsed()));
            }
            samples
        });
        Liveness {
            started: Instant::now(),
            stop,
            status,
            heartbeats,
            listener,
        }
    }

    /// Stops the probe, but not before it has watched for `at_least` (an attack that
    /// ends quickly can still stall the agent a moment later).
    async fn finish(self, at_least: Duration) -> LivenessReport {
        tokio::time::sleep_until((self.started + at_least).into()).await;
        let _ = self.stop.send(true);
        let samples = self.status.await.expect("the status probe");
        let ended = Instant::now();
        self.listener.abort();
        let beats = self.heartbeats.lock().expect("heartbeats").clone();
        let mut marks = vec![self.started];
        marks.extend(beats.iter().copied().filter(|t| *t >= self.started));
        marks.push(ended);
        let max_gap = marks
            .windows(2)
            .map(|pair| pair[1].saturating_duration_since(pair[0]))
            .max()
            .unwrap_or_default();
        LivenessReport {
            watched: ended - self.started,
            requests: samples.len(),
            unanswered: samples.iter().filter(|s| s.is_none()).count(),
            max_latency: samples.iter().flatten().copied().max().unwrap_or_default(),
            heartbeats: beats.len(),
            max_gap,
        }
    }
}

impl LivenessReport {
    /// The agent answered every status request quickly and heartbeat on time throughout.
    fn assert_alive(&self, during: &str) {
        eprintln!(
            "liveness during {during}: {} s watched, {} dea.status sent, {} unanswered, \
             max latency {:?}; {} heartbeats, max gap {:?}",
            self.watched.as_secs_f64(),
            self.requests,
            self.unanswered,
            self.max_latency,
            self.heartbeats,
            self.max_gap
        );
        // The probe itself must have worked: about one request per 200 ms (each one taking
        // up to its latency), so "all answered" is a statement about many requests.
        let expected = (self.watched.as_millis() / 500) as usize;
        assert!(
            self.requests >= expected.max(10),
            "the probe sent only {} status requests in {:?} during {during}",
            self.requests,
            self.watched
        );
        assert_eq!(
            self.unanswered, 0,
            "dea.status went unanswered during {during}: {self:?}"
        );
        assert!(
            self.max_latency < MAX_STATUS_LATENCY,
            "dea.status took {:?} during {during}",
            self.max_latency
        );
        assert!(
            self.heartbeats as u64 >= self.watched.as_secs() / 2,
            "only {} heartbeats in {:?} during {during}",
            self.heartbeats,
            self.watched
        );
        assert!(
            self.max_gap < MAX_HEARTBEAT_GAP,
            "no heartbeat for {:?} during {during}",
            self.max_gap
        );
    }
}

/// The agent on a runtime of its own (two workers), as if it were another process: an agent
/// that blocks its workers then shows as unanswered requests and missing heartbeats, instead
/// of also stalling the test's timers and its probe and hanging the test.
struct IsolatedAgent {
    agent: Arc<dea::nats::Agent>,
    directory: dea::files::DirectoryServer,
    runtime: Option<tokio::runtime::Runtime>,
}

impl IsolatedAgent {
    async fn start(base: &Path, nats: &NatsServer) -> IsolatedAgent {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("isolated-agent")
            .enable_all()
            .build()
            .expect("the agent's runtime");
        // Everything the agent spawns while starting lands on its own runtime.
        let (agent, directory) =
            tokio::task::block_in_place(|| runtime.block_on(start_agent(base, nats)));
        IsolatedAgent {
            agent,
            directory,
            runtime: Some(runtime),
        }
    }

    fn id(&self) -> &str {
        self.agent.id()
    }

    async fn shutdown(&self) {
        let agent = self.agent.clone();
        let runtime = self.runtime.as_ref().expect("running");
        tokio::time::timeout(
            Duration::from_secs(30),
            runtime.spawn(async move { agent.shutdown().await }),
        )
        .await
        .expect("the agent shuts down within 30 s")
        .expect("shutdown task");
    }
}

impl Drop for IsolatedAgent {
    fn drop(&mut self) {
        // Stop the agent's tasks before the test's base directory goes (a failed test skips
        // `shutdown`), but never wait long for blocking work an attack may have stuck.
        // Dropping a runtime blocks, which inside the test's runtime needs `block_in_place`.
        if let Some(runtime) = self.runtime.take() {
            tokio::task::block_in_place(|| runtime.shutdown_timeout(Duration::from_secs(5)));
        }
    }
}

/// Every message on the bus, raw: whatever the agent published, wherever it went.
struct BusRecorder {
    messages: Arc<Mutex<Vec<Vec<u8>>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl BusRecorder {
    async fn start(nats: &NatsServer) -> BusRecorder {
        let client = Controller::connect(nats).await;
        let mut subscriber = client.client.subscribe(">").await.expect("subscribe >");
        client.client.flush().await.expect("flush");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = messages.clone();
        let task = tokio::spawn(async move {
            // The client lives as long as the subscription needs it.
            let _client = client;
            while let Some(message) = subscriber.next().await {
                sink.lock().expect("bus").push(message.payload.to_vec());
            }
        });
        BusRecorder {
            messages,
            _task: task,
        }
    }

    fn all(&self) -> Vec<Vec<u8>> {
        self.messages.lock().expect("bus").clone()
    }
}

/// What a leak of the host's `/etc/shadow` would show (the test runs as root, as the agent
/// does): each line, and each line's fields after the user name, since a Procfile parser
/// turns `root:*:19000:...` into the process `root` with the command `*:19000:...`.
fn shadow_lines() -> Vec<String> {
    let shadow = std::fs::read_to_string("/etc/shadow").expect("read /etc/shadow as root");
    let mut needles = Vec::new();
    for line in shadow.lines().map(str::trim).filter(|l| l.len() >= 8) {
        needles.push(line.to_string());
        if let Some((_, fields)) = line.split_once(':')
            && fields.len() >= 10
        {
            needles.push(fields.to_string());
        }
    }
    assert!(!needles.is_empty(), "/etc/shadow has lines to look for");
    needles
}

fn assert_no_shadow(shadow: &[String], what: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    for line in shadow {
        assert!(
            !text.contains(line.as_str()),
            "a line of /etc/shadow appears in {what}"
        );
    }
}

fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// The names directly in `dir` (none if it does not exist).
fn names_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// The containers runc knows under the agent's state directory.
async fn runc_containers(base: &Path) -> Vec<String> {
    let output = tokio::process::Command::new("runc")
        .arg("--root")
        .arg(base.join("runc"))
        .args(["list", "-q"])
        .output()
        .await
        .expect("runc list");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// Waits (up to 60 s) until the agent left no staging task, workspace or container behind.
async fn assert_nothing_left(base: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let tasks = names_in(&base.join("tasks"));
        let workspaces = names_in(&base.join("staging"));
        let containers = runc_containers(base).await;
        if tasks.is_empty() && workspaces.is_empty() && containers.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: tasks {tasks:?}, staging workspaces {workspaces:?}, containers {containers:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

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
    // The planter's `mkdir d; cd d` loop costs the kernel time quadratic in the depth: on
    // these machines it does not reach 1,500 levels within the 20 s compile timeout, so
    // this is the timeout path with a deep tree half made (killed, then removed).
    planted("deep-tree", false, &["did not finish within 20s"]),
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

/// A start message for `app` running `command` (no routes: no health check, the instance
/// is RUNNING as soon as its process is).
fn bare_start(app: &str, url: &str, sha1: &str, command: Option<&str>) -> Value {
    let mut start = super::start_message(app, 0, url, sha1);
    start["name"] = json!(app);
    start["uris"] = json!([]);
    start["start_command"] = json!(command);
    start
}

fn sha1_hex(bytes: &[u8]) -> String {
    hex::encode(sha1::Sha1::digest(bytes))
}

/// Everything under `dir`, links not followed: (path, file type, content of regular files).
fn tree_of(dir: &Path) -> Vec<(PathBuf, std::fs::FileType, Option<Vec<u8>>)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current).into_iter().flatten().flatten() {
            let path = entry.path();
            let kind = std::fs::symlink_metadata(&path).expect("lstat").file_type();
            if kind.is_dir() {
                stack.push(path.clone());
            }
            let content = kind
                .is_file()
                .then(|| std::fs::read(&path).expect("read a kept file"));
            found.push((path, kind, content));
        }
    }
    found
}

/// A signed link from the agent itself (`dea.find.droplet` with `path`, as `cf files` asks)
/// into a crashed instance of `app`, fetched from the directory server: (status, body).
async fn crashed_file(
    controller: &Controller,
    directory: &dea::files::DirectoryServer,
    app: &str,
    path: &str,
) -> (u16, Vec<u8>) {
    let found = controller
        .request_many(
            "dea.find.droplet",
            &json!({"droplet": app, "states": ["CRASHED"], "path": path}),
            1,
            Duration::from_secs(10),
        )
        .await;
    let uri = found
        .first()
        .and_then(|f| f["file_uri_v2"].as_str())
        .unwrap_or_else(|| panic!("{app}: no file_uri_v2 for {path}: {found:?}"));
    // A FIFO or an endless file must not hold the request either.
    let response = tokio::time::timeout(Duration::from_secs(10), async {
        let response = reqwest::get(local(uri, directory))
            .await
            .expect("GET file_uri_v2");
        let status = response.status().as_u16();
        (status, response.bytes().await.unwrap_or_default().to_vec())
    })
    .await;
    response.unwrap_or_else(|_| panic!("{app}: GET {path} did not finish in 10 s"))
}

/// Apps that, once running, turn their logs into links to the agent's private state (or
/// into FIFOs, endless or huge files) and crash. The agent, copying the crash logs as root,
/// must keep none of it: the directory server never serves the agent's key, and every
/// crash is still reported at once while the agent keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_logs_cannot_be_turned_into_the_agents_secrets() {
    let base = tempfile::tempdir().expect("tempdir");
    let _cleanup = ContainerCleanup(base.path().to_path_buf());
    let nats = NatsServer::start().await;
    let controller = Controller::connect(&nats).await;
    let advertise = controller.listen("dea.advertise").await;
    let exits = controller.listen("droplet.exited").await;
    let droplet = make_tgz(&[("./app/README", "an app that attacks its crash logs\n")]);
    let sha1 = sha1_hex(&droplet);
    let blobs = BlobStore::start(vec![("/droplets/crasher.tgz", droplet)]).await;
    let agent = IsolatedAgent::start(base.path(), &nats).await;
    let directory = &agent.directory;
    advertise
        .wait_for(Duration::from_secs(10), |m| m["id"] == agent.id())
        .await
        .expect("the agent advertises");
    let db = base.path().join("db");
    let key = std::fs::read(db.join("directory_server.key")).expect("the agent's key");
    assert!(key.len() >= 16, "a real key: {} bytes", key.len());

    // A real attacker reads the base dir from /proc/self/mountinfo; the test just says it.
    let db_path = db.display().to_string();
    let logs = "/home/vcap/logs";
    let apps: Vec<(&str, String)> = vec![
        // The control: an honest crash, whose logs are kept and served. It shows that the
        // listings and files asked for below would be there if the agent had copied them.
        (
            "honest",
            "echo honest-output; echo honest-error >&2; sleep 1; exit 3".into(),
        ),
        // The whole logs directory becomes a link to the agent's db/.
        (
            "logs-link",
            format!(
                "echo before; sleep 1; mv {logs} /home/vcap/old-logs; ln -s {db_path} {logs}; exit 7"
            ),
        ),
        // A real logs directory, with links (absolute and relative) to the key and the
        // registry, a link to /dev/zero and a 100 GB sparse file among the logs.
        (
            "odd-files",
            format!(
                "echo kept-output; sleep 1; rm -f {logs}/stderr.log; \
                 ln -s {db_path}/directory_server.key {logs}/stderr.log; \
                 ln -s {db_path}/instances.json {logs}/instances.json; \
                 ln -s ../../../../db/directory_server.key {logs}/relative.key; \
                 ln -s /dev/zero {logs}/zero.log; truncate -s 100G {logs}/huge.log; exit 7"
            ),
        ),
        // stdout.log becomes a FIFO nobody writes: a copy that opened it would wait forever.
        (
            "fifo-log",
            format!(
                "echo fifo-app; sleep 1; rm -f {logs}/stdout.log; mkfifo {logs}/stdout.log; exit 7"
            ),
        ),
    ];

    let probe = Liveness::start(&nats, agent.id()).await;
    let started = Instant::now();
    for (app, command) in &apps {
        let start = bare_start(
            app,
            &blobs.url("/droplets/crasher.tgz"),
            &sha1,
            Some(&format!("sh -c '{command}'")),
        );
        controller
            .publish(&format!("dea.{}.start", agent.id()), &start)
            .await;
    }
    let mut crashed = std::collections::HashMap::new();
    for (app, _) in &apps {
        let exited = exits
            .wait_for(Duration::from_secs(30), |m| m["droplet"] == *app)
            .await
            .unwrap_or_else(|| panic!("{app}: no droplet.exited within 30 s"));
        eprintln!(
            "{app}: droplet.exited after {:.1} s: {exited}",
            started.elapsed().as_secs_f64()
        );
        assert_eq!(exited["reason"], "CRASHED", "{app}: {exited}");
        let status = if *app == "honest" { 3 } else { 7 };
        assert_eq!(exited["exit_status"], status, "{app}: {exited}");
        crashed.insert(
            *app,
            exited["instance"].as_str().expect("instance").to_string(),
        );
    }
    // Every crash is reported promptly: each app exits ~1 s after it starts.
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "crashes reported after {:?}",
        started.elapsed()
    );

    // The control's logs are kept and served: listing and content.
    let (status, listing) = crashed_file(&controller, directory, "honest", "logs/").await;
    let listing = String::from_utf8_lossy(&listing).into_owned();
    assert_eq!(status, 200, "{listing}");
    assert!(listing.contains("stdout.log"), "{listing}");
    assert!(listing.contains("stderr.log"), "{listing}");
    let (status, stdout) = crashed_file(&controller, directory, "honest", "logs/stdout.log").await;
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&stdout).contains("honest-output"));

    // logs -> db: nothing of db/ is listed or served.
    let (status, listing) = crashed_file(&controller, directory, "logs-link", "logs/").await;
    let listing = String::from_utf8_lossy(&listing).into_owned();
    eprintln!("logs-link: logs/ answered {status}: {listing}");
    assert!(!listing.contains("directory_server.key"), "{listing}");
    assert!(!listing.contains("instances.json"), "{listing}");
    for path in ["logs/directory_server.key", "logs/instances.json"] {
        let (status, body) = crashed_file(&controller, directory, "logs-link", path).await;
        assert_ne!(status, 200, "{path} served");
        assert!(!contains_bytes(&body, &key), "{path} served the key");
    }

    // Links among real logs: the real file is kept, no link is, nothing endless is read.
    let (status, listing) = crashed_file(&controller, directory, "odd-files", "logs/").await;
    let listing = String::from_utf8_lossy(&listing).into_owned();
    assert_eq!(status, 200, "{listing}");
    assert!(listing.contains("stdout.log"), "{listing}");
    for name in ["stderr.log", "instances.json", "relative.key", "zero.log"] {
        assert!(!listing.contains(name), "{name} kept: {listing}");
    }
    for path in [
        "logs/stderr.log",
        "logs/relative.key",
        "logs/instances.json",
        "logs/zero.log",
    ] {
        let (status, body) = crashed_file(&controller, directory, "odd-files", path).await;
        assert_ne!(status, 200, "{path} served");
        assert!(!contains_bytes(&body, &key), "{path} served the key");
    }
    let (_, stdout) = crashed_file(&controller, directory, "odd-files", "logs/stdout.log").await;
    assert!(String::from_utf8_lossy(&stdout).contains("kept-output"));

    // The FIFO was not kept (nor waited on); stderr.log was.
    let (status, listing) = crashed_file(&controller, directory, "fifo-log", "logs/").await;
    let listing = String::from_utf8_lossy(&listing).into_owned();
    assert_eq!(status, 200, "{listing}");
    assert!(listing.contains("stderr.log"), "{listing}");
    assert!(!listing.contains("stdout.log"), "{listing}");

    // On disk: crashes/ holds regular files and directories only, none of them the key or
    // the registry, and the 100 GB log was kept as a bounded tail.
    let crashes = base.path().join("crashes");
    let kept = tokio::task::spawn_blocking(move || tree_of(&crashes))
        .await
        .expect("walk crashes/");
    assert!(
        kept.iter().any(|(path, _, _)| path.ends_with("stdout.log")),
        "{kept:?}"
    );
    for (path, kind, content) in &kept {
        assert!(
            kind.is_dir() || kind.is_file(),
            "{} is kept as {kind:?}",
            path.display()
        );
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        assert!(
            !matches!(
                name.as_deref(),
                Some("directory_server.key" | "instances.json")
            ),
            "{} kept",
            path.display()
        );
        if let Some(content) = content {
            assert_ne!(content, &key, "{} holds the agent's key", path.display());
            assert!(
                content.len() <= 16 << 20,
                "{} kept {} bytes",
                path.display(),
                content.len()
            );
        }
    }
    let of_link = base.path().join("crashes").join(&crashed["logs-link"]);
    assert!(
        tree_of(&of_link).iter().all(|(_, kind, _)| kind.is_dir()),
        "a crash whose logs/ was a link keeps no file: {:?}",
        tree_of(&of_link)
    );

    let report = probe.finish(Duration::from_secs(5)).await;
    report.assert_alive("crash-log attacks");
    let status = controller
        .request_many("dea.status", &json!({}), 1, Duration::from_secs(5))
        .await;
    assert_eq!(status.len(), 1, "dea.status after the crashes");
    agent.shutdown().await;
}

/// An entry of a hand-made droplet.
enum Node<'a> {
    Dir,
    File(&'a str),
    Link(&'a str),
    Fifo,
}

/// A droplet `.tgz` holding exactly `entries`, links and FIFOs as they are.
fn droplet_tgz(entries: &[(&str, Node<'_>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (path, node) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o755);
        header.set_size(0);
        match node {
            Node::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                builder
                    .append_data(&mut header, path, std::io::empty())
                    .expect("dir");
            }
            Node::File(content) => {
                header.set_size(content.len() as u64);
                builder
                    .append_data(&mut header, path, content.as_bytes())
                    .expect("file");
            }
            Node::Link(target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                builder
                    .append_link(&mut header, path, target)
                    .expect("link");
            }
            Node::Fifo => {
                header.set_entry_type(tar::EntryType::Fifo);
                builder
                    .append_data(&mut header, path, std::io::empty())
                    .expect("fifo");
            }
        }
    }
    builder.into_inner().expect("tar").finish().expect("gzip")
}

/// Droplets (served with their right sha1, as if staged elsewhere) whose home is made of
/// links out of it, links where the agent needs real directories, or a FIFO where it opens
/// the app's log: each instance ends CRASHED with a reason saying so, and nothing outside
/// its directory is written, chowned or read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn droplets_made_of_links_do_not_start() {
    let base = tempfile::tempdir().expect("tempdir");
    let _cleanup = ContainerCleanup(base.path().to_path_buf());
    // A directory of root's that a followed link would let the agent write into or chown.
    let outside = tempfile::tempdir().expect("outside");
    std::fs::write(outside.path().join("keep.txt"), "root's\n").expect("sentinel");
    let outside_path = outside.path().display().to_string();
    let nats = NatsServer::start().await;
    let controller = Controller::connect(&nats).await;
    let advertise = controller.listen("dea.advertise").await;
    let exits = controller.listen("droplet.exited").await;
    let bus = BusRecorder::start(&nats).await;
    let shadow = shadow_lines();
    let readme = ("./app/README", Node::File("hello\n"));
    let readme_too = ("./app/README", Node::File("hello\n"));
    let big = format!("start_command: {}\n", "x".repeat(2 << 20));
    let droplets: Vec<(&str, Vec<u8>, &[&str])> = vec![
        // /app would be a bind mount of the instance's directory.
        (
            "app-up",
            droplet_tgz(&[("./app", Node::Link(".."))]),
            &["\"app\" is a link", "outside the app directory"],
        ),
        // stdout.log would be created (and the tree chowned) in a directory of root's.
        (
            "logs-out",
            droplet_tgz(&[readme, ("./logs", Node::Link(&outside_path))]),
            &["\"logs\" is a link", "outside the app directory"],
        ),
        // Each link harmless by name; together they climb out of the home.
        (
            "chain",
            droplet_tgz(&[
                ("./app/README", Node::File("hello\n")),
                ("./d", Node::Dir),
                ("./d/up", Node::Link("..")),
                ("./tmp", Node::Link("d/up/..")),
            ]),
            &["\"tmp\" is a link", "outside the app directory"],
        ),
        // Links that stay inside the home, where the agent needs real directories.
        (
            "app-inside",
            droplet_tgz(&[
                ("./elsewhere/README", Node::File("hello\n")),
                ("./app", Node::Link("elsewhere")),
            ]),
            &["./app must be a directory"],
        ),
        (
            "logs-inside",
            droplet_tgz(&[
                ("./app/README", Node::File("hello\n")),
                ("./logs", Node::Link("app")),
            ]),
            &["./logs must be a directory"],
        ),
        // The start command would be read from /etc/shadow.
        (
            "info-shadow",
            droplet_tgz(&[
                ("./app/README", Node::File("hello\n")),
                ("./staging_info.yml", Node::Link("/etc/shadow")),
            ]),
            &[
                "\"staging_info.yml\" is a link",
                "outside the app directory",
            ],
        ),
        // The agent opens logs/stdout.log for the container's output.
        (
            "fifo-log",
            droplet_tgz(&[
                ("./app/README", Node::File("hello\n")),
                ("./logs/stdout.log", Node::Fifo),
            ]),
            &["logs/stdout.log", "FIFO"],
        ),
        // A staging_info.yml that is a link inside the home, to something too big to read,
        // or a directory: refused when the agent reads the start command from it.
        (
            "info-huge",
            droplet_tgz(&[
                ("./app/big.yml", Node::File(&big)),
                ("./staging_info.yml", Node::Link("app/big.yml")),
            ]),
            &["staging_info.yml", "larger than the limit"],
        ),
        (
            "info-dir",
            droplet_tgz(&[readme_too, ("./staging_info.yml/x", Node::File("x"))]),
            &["staging_info.yml", "not a regular file"],
        ),
    ];
    let served: Vec<(String, Vec<u8>)> = droplets
        .iter()
        .map(|(name, bytes, _)| (format!("/droplets/{name}.tgz"), bytes.clone()))
        .collect();
    let blobs = BlobStore::start(
        served
            .iter()
            .map(|(path, bytes)| (path.as_str(), bytes.clone()))
            .collect(),
    )
    .await;
    let agent = IsolatedAgent::start(base.path(), &nats).await;
    advertise
        .wait_for(Duration::from_secs(10), |m| m["id"] == agent.id())
        .await
        .expect("the agent advertises");

    let probe = Liveness::start(&nats, agent.id()).await;
    for (name, bytes, _) in &droplets {
        // No start command in the message: the droplet's staging_info.yml must give it.
        let command = (!name.starts_with("info-")).then_some("sleep 600");
        let start = bare_start(
            name,
            &blobs.url(&format!("/droplets/{name}.tgz")),
            &sha1_hex(bytes),
            command,
        );
        controller
            .publish(&format!("dea.{}.start", agent.id()), &start)
            .await;
    }
    let mut exited_all = Vec::new();
    for (name, _, _) in &droplets {
        let exited = exits
            .wait_for(Duration::from_secs(30), |m| m["droplet"] == *name)
            .await
            .unwrap_or_else(|| panic!("{name}: no droplet.exited within 30 s"));
        eprintln!("{name}: {}", exited["exit_description"]);
        exited_all.push(exited);
    }
    for ((name, _, expected), exited) in droplets.iter().zip(&exited_all) {
        assert_eq!(exited["reason"], "CRASHED", "{name}: {exited}");
        let description = exited["exit_description"].as_str().unwrap_or_default();
        for part in *expected {
            assert!(
                description.contains(part),
                "{name}: {description:?} lacks {part:?}"
            );
        }
    }
    let report = probe.finish(Duration::from_secs(5)).await;

    // Nothing ran, nothing outside was touched, nothing of /etc/shadow went anywhere.
    assert!(runc_containers(base.path()).await.is_empty());
    assert_eq!(names_in(outside.path()), vec!["keep.txt".to_string()]);
    let meta = std::fs::metadata(outside.path()).expect("outside");
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        0,
        "outside chowned"
    );
    let keep = std::fs::metadata(outside.path().join("keep.txt")).expect("keep.txt");
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&keep),
        0,
        "keep.txt chowned"
    );
    for message in bus.all() {
        assert_no_shadow(&shadow, "a message on the bus", &message);
    }
    report.assert_alive("hostile droplets");
    agent.shutdown().await;
}

/// An app over its disk limit is stopped, however it arranges its files: one that first
/// nests directories deeper than the agent's usage walk goes must not make its usage
/// unmeasurable, and so unlimited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_trees_do_not_hide_disk_use() {
    let base = tempfile::tempdir().expect("tempdir");
    let _cleanup = ContainerCleanup(base.path().to_path_buf());
    let nats = NatsServer::start().await;
    let controller = Controller::connect(&nats).await;
    let advertise = controller.listen("dea.advertise").await;
    let exits = controller.listen("droplet.exited").await;
    let droplet = make_tgz(&[("./app/README", "an app that fills its disk\n")]);
    let sha1 = sha1_hex(&droplet);
    let blobs = BlobStore::start(vec![("/droplets/filler.tgz", droplet)]).await;
    let agent = IsolatedAgent::start(base.path(), &nats).await;
    advertise
        .wait_for(Duration::from_secs(10), |m| m["id"] == agent.id())
        .await
        .expect("the agent advertises");
    // 320 MiB against the 256 MiB limit of `start_message`, then waiting to be stopped.
    let fill = "dd if=/dev/zero of=fill bs=1M count=320 2>/dev/null; sleep 600";
    let apps = [
        // The control: the same fill, no tree.
        ("flat-filler", format!("cd /home/vcap/tmp; {fill}")),
        // 300 nested directories first (the walk stops at 256).
        (
            "deep-filler",
            format!("cd /home/vcap/tmp; mkdir -p $(printf \"d/%.0s\" $(seq 300)); {fill}"),
        ),
    ];
    let probe = Liveness::start(&nats, agent.id()).await;
    for (app, command) in &apps {
        let start = bare_start(
            app,
            &blobs.url("/droplets/filler.tgz"),
            &sha1,
            Some(&format!("sh -c '{command}'")),
        );
        controller
            .publish(&format!("dea.{}.start", agent.id()), &start)
            .await;
    }
    for (app, _) in &apps {
        // The disk is checked every second here: 30 s is ample to write 320 MiB and be seen.
        let exited = exits
            .wait_for(Duration::from_secs(30), |m| m["droplet"] == *app)
            .await
            .unwrap_or_else(|| panic!("{app}: still running 30 s after filling its disk"));
        eprintln!("{app}: {}", exited["exit_description"]);
        assert_eq!(exited["reason"], "CRASHED", "{app}: {exited}");
        let description = exited["exit_description"].as_str().unwrap_or_default();
        assert!(
            description.contains("disk limit") || description.contains("deeper than"),
            "{app}: {description:?}"
        );
    }
    let report = probe.finish(Duration::from_secs(5)).await;
    report.assert_alive("disk fillers");
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

/// A running app fills its home with a FIFO, links to /etc/shadow, to the agent's key and to
/// /dev/zero, then asks for them through the directory server (`cf files`): nothing is
/// served from outside the home, the FIFO and the device hold no request, and the agent
/// keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_apps_links_and_fifos_are_not_served() {
    let base = tempfile::tempdir().expect("tempdir");
    let _cleanup = ContainerCleanup(base.path().to_path_buf());
    let nats = NatsServer::start().await;
    let controller = Controller::connect(&nats).await;
    let advertise = controller.listen("dea.advertise").await;
    let shadow = shadow_lines();
    let droplet = make_tgz(&[("./app/README", "an app that plants in its home\n")]);
    let sha1 = sha1_hex(&droplet);
    let blobs = BlobStore::start(vec![("/droplets/planter-app.tgz", droplet)]).await;
    let agent = IsolatedAgent::start(base.path(), &nats).await;
    advertise
        .wait_for(Duration::from_secs(10), |m| m["id"] == agent.id())
        .await
        .expect("the agent advertises");
    let key = std::fs::read(base.path().join("db/directory_server.key")).expect("the key");
    let command = format!(
        "cd /home/vcap/app; mkfifo pipe; ln -s /etc/shadow shadow; \
         ln -s ../../../../db/directory_server.key key; ln -s {}/db db; \
         ln -s /dev/zero zero; echo real > real.txt; sleep 600",
        base.path().display()
    );
    let probe = Liveness::start(&nats, agent.id()).await;
    let start = bare_start(
        "home-planter",
        &blobs.url("/droplets/planter-app.tgz"),
        &sha1,
        Some(&format!("sh -c '{command}'")),
    );
    controller
        .publish(&format!("dea.{}.start", agent.id()), &start)
        .await;
    // `tail` (a query flag, outside the signed path) streams a file as it grows.
    let get = |path: &'static str, tail: bool| {
        let controller = &controller;
        let directory = &agent.directory;
        async move {
            let found = controller
                .request_many(
                    "dea.find.droplet",
                    &json!({"droplet": "home-planter", "states": ["RUNNING"], "path": path}),
                    1,
                    Duration::from_secs(5),
                )
                .await;
            let uri = found.first().and_then(|f| f["file_uri_v2"].as_str())?;
            let fetched = tokio::time::timeout(Duration::from_secs(10), async {
                let url = local(uri, directory) + if tail { "&tail&tail_offset=0" } else { "" };
                let mut response = reqwest::get(url).await.ok()?;
                let status = response.status().as_u16();
                if tail {
                    // A tail that works never ends: its first chunk is enough.
                    let first = tokio::time::timeout(Duration::from_secs(3), response.chunk());
                    let first = first.await.ok().and_then(Result::ok).flatten();
                    return Some((status, first.unwrap_or_default().to_vec()));
                }
                Some((status, response.bytes().await.unwrap_or_default().to_vec()))
            })
            .await;
            fetched.unwrap_or_else(|_| panic!("GET {path} did not finish in 10 s"))
        }
    };
    // The app has planted everything once real.txt is there.
    let mut ready = false;
    for _ in 0..150 {
        if get("app/real.txt", false)
            .await
            .is_some_and(|(status, _)| status == 200)
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ready, "the app never became RUNNING with its files planted");
    let (status, listing) = get("app/", false).await.expect("the app's listing");
    let listing = String::from_utf8_lossy(&listing).into_owned();
    assert_eq!(status, 200, "{listing}");
    assert!(listing.contains("pipe"), "the plants are there: {listing}");
    // Tailing works on a real file, so its refusal below means something.
    let (status, real) = get("app/real.txt", true).await.expect("tail real.txt");
    assert_eq!(status, 200);
    assert_eq!(String::from_utf8_lossy(&real), "real\n");
    for (path, tail) in [
        ("app/pipe", false),
        ("app/pipe", true),
        ("app/shadow", false),
        ("app/shadow", true),
        ("app/key", false),
        ("app/db/directory_server.key", false),
        ("app/db/", false),
        ("app/zero", false),
        ("app/zero", true),
    ] {
        let (status, body) = get(path, tail)
            .await
            .unwrap_or_else(|| panic!("{path}: no answer"));
        eprintln!("{path} (tail: {tail}): {status}");
        assert_ne!(status, 200, "{path} served");
        assert!(!contains_bytes(&body, &key), "{path} served the key");
        assert_no_shadow(&shadow, path, &body);
    }
    let report = probe.finish(Duration::from_secs(5)).await;
    report.assert_alive("serving a hostile home");
    controller
        .publish("dea.stop", &json!({"droplet": "home-planter"}))
        .await;
    agent.shutdown().await;
}

/// An instance's home is the tenant's disk: once the instance has crashed (its logs kept
/// under `crashes/`) or been stopped, the home must go. Otherwise an app that fills its disk
/// and crashes, restarted by the health manager again and again, leaves a full home behind
/// each time, outside every limit, until the host's disk is full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_homes_do_not_outlive_their_instances() {
    let base = tempfile::tempdir().expect("tempdir");
    let _cleanup = ContainerCleanup(base.path().to_path_buf());
    let nats = NatsServer::start().await;
    let controller = Controller::connect(&nats).await;
    let advertise = controller.listen("dea.advertise").await;
    let exits = controller.listen("droplet.exited").await;
    let droplet = make_tgz(&[("./app/README", "an app that leaves things behind\n")]);
    let sha1 = sha1_hex(&droplet);
    let blobs = BlobStore::start(vec![("/droplets/leaver.tgz", droplet)]).await;
    let agent = IsolatedAgent::start(base.path(), &nats).await;
    advertise
        .wait_for(Duration::from_secs(10), |m| m["id"] == agent.id())
        .await
        .expect("the agent advertises");
    let url = blobs.url("/droplets/leaver.tgz");
    for (app, command) in [
        (
            "crash-leaver",
            "dd if=/dev/zero of=/home/vcap/tmp/junk bs=1M count=20 2>/dev/null; exit 1",
        ),
        (
            "stop-leaver",
            "dd if=/dev/zero of=/home/vcap/tmp/junk bs=1M count=20 2>/dev/null; sleep 600",
        ),
    ] {
        let start = bare_start(app, &url, &sha1, Some(&format!("sh -c '{command}'")));
        controller
            .publish(&format!("dea.{}.start", agent.id()), &start)
            .await;
    }
    let crashed = exits
        .wait_for(Duration::from_secs(30), |m| m["droplet"] == "crash-leaver")
        .await
        .expect("the crash is reported");
    let crashed = crashed["instance"].as_str().expect("instance").to_string();
    let mut running = Vec::new();
    for _ in 0..100 {
        running = controller
            .request_many(
                "dea.find.droplet",
                &json!({"droplet": "stop-leaver", "states": ["RUNNING"]}),
                1,
                Duration::from_millis(500),
            )
            .await;
        if !running.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stopped = running
        .first()
        .and_then(|r| r["instance"].as_str())
        .expect("stop-leaver runs")
        .to_string();
    // Its 20 MiB are written before it is stopped.
    tokio::time::sleep(Duration::from_secs(2)).await;
    controller
        .publish("dea.stop", &json!({"droplet": "stop-leaver"}))
        .await;
    let instances = base.path().join("instances");
    let deadline = Instant::now() + Duration::from_secs(20);
    let left = loop {
        let left: Vec<String> = names_in(&instances)
            .into_iter()
            .filter(|id| *id == crashed || *id == stopped)
            .collect();
        if left.is_empty() || Instant::now() > deadline {
            break left;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // The crash's logs are what is kept of it.
    assert!(
        base.path()
            .join("crashes")
            .join(&crashed)
            .join("logs")
            .is_dir(),
        "the crash's logs are kept"
    );
    assert!(
        left.is_empty(),
        "instance directories left after crash ({crashed}) and stop ({stopped}): {left:?}"
    );
    agent.shutdown().await;
}
