//! What the hostile tests share: a liveness probe (`dea.status` latency, heartbeat gaps),
//! an agent on a runtime of its own, a recorder of the whole bus, and checks that nothing of
//! the host leaked or was left behind.

use super::start_agent;
use dea_tests::controller::{Controller, NatsServer};
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest acceptable `dea.status` round trip while under attack.
pub(crate) const MAX_STATUS_LATENCY: Duration = Duration::from_secs(2);
/// Longest acceptable silence between heartbeats: 3x the agent's 1 s interval.
pub(crate) const MAX_HEARTBEAT_GAP: Duration = Duration::from_secs(3);

/// Watches the agent from outside while an attack runs: a blocked or busy async worker shows
/// as a slow or missing status reply or a heartbeat gap. (A stack overflow or an OOM kills
/// the whole test process, which fails the test anyway.)
pub(crate) struct Liveness {
    pub(crate) started: Instant,
    pub(crate) stop: tokio::sync::watch::Sender<bool>,
    /// One entry per `dea.status` sent: its latency, or `None` if unanswered within 5 s.
    pub(crate) status: tokio::task::JoinHandle<Vec<Option<Duration>>>,
    pub(crate) heartbeats: Arc<Mutex<Vec<Instant>>>,
    pub(crate) listener: tokio::task::JoinHandle<()>,
}

/// What a [`Liveness`] probe saw.
#[derive(Debug)]
pub(crate) struct LivenessReport {
    pub(crate) watched: Duration,
    pub(crate) requests: usize,
    pub(crate) unanswered: usize,
    pub(crate) max_latency: Duration,
    pub(crate) heartbeats: usize,
    /// Includes the silences from the probe's start to the first heartbeat and from the
    /// last one to the probe's end, so a heartbeat loop that stops late is still caught.
    pub(crate) max_gap: Duration,
}

impl Liveness {
    pub(crate) async fn start(nats: &NatsServer, agent_id: &str) -> Liveness {
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
    pub(crate) async fn finish(self, at_least: Duration) -> LivenessReport {
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
    pub(crate) fn assert_alive(&self, during: &str) {
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
pub(crate) struct IsolatedAgent {
    pub(crate) agent: Arc<dea::nats::Agent>,
    pub(crate) directory: dea::files::DirectoryServer,
    pub(crate) runtime: Option<tokio::runtime::Runtime>,
}

impl IsolatedAgent {
    pub(crate) async fn start(base: &Path, nats: &NatsServer) -> IsolatedAgent {
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

    pub(crate) fn id(&self) -> &str {
        self.agent.id()
    }

    pub(crate) async fn shutdown(&self) {
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
pub(crate) struct BusRecorder {
    pub(crate) messages: Arc<Mutex<Vec<Vec<u8>>>>,
    pub(crate) _task: tokio::task::JoinHandle<()>,
}

impl BusRecorder {
    pub(crate) async fn start(nats: &NatsServer) -> BusRecorder {
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

    pub(crate) fn all(&self) -> Vec<Vec<u8>> {
        self.messages.lock().expect("bus").clone()
    }
}

/// What a leak of the host's `/etc/shadow` would show (the test runs as root, as the agent
/// does): each line, and each line's fields after the user name, since a Procfile parser
/// turns `root:*:19000:...` into the process `root` with the command `*:19000:...`.
pub(crate) fn shadow_lines() -> Vec<String> {
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

pub(crate) fn assert_no_shadow(shadow: &[String], what: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    for line in shadow {
        assert!(
            !text.contains(line.as_str()),
            "a line of /etc/shadow appears in {what}"
        );
    }
}

pub(crate) fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// The names directly in `dir` (none if it does not exist).
pub(crate) fn names_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// The containers runc knows under the agent's state directory.
pub(crate) async fn runc_containers(base: &Path) -> Vec<String> {
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
pub(crate) async fn assert_nothing_left(base: &Path) {
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

/// An entry of a hand-made droplet.
pub(crate) enum Node<'a> {
    Dir,
    File(&'a str),
    Link(&'a str),
    Fifo,
}

/// A droplet `.tgz` holding exactly `entries`, links and FIFOs as they are.
pub(crate) fn droplet_tgz(entries: &[(&str, Node<'_>)]) -> Vec<u8> {
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
