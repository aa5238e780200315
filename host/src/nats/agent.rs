//! The agent: one NATS connection, the DEA's subscriptions, its periodic messages and its
//! lifecycle (shutdown, evacuation). Handlers live in `handlers` (instances) and
//! `staging_task` (staging); this file decides what runs when.

use super::cmd;
use super::messages::{self, Hello};
use crate::config::Config;
use crate::instance::InstanceManager;
use crate::staging::Stager;
use crate::staging::remote::RemoteStager;
use async_nats::Subject;
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Longest the agent waits on NATS for one publish or flush: the server may be unreachable,
/// and neither shutdown nor the periodic messages may hang on it.
const NATS_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("connecting to NATS {servers:?}: {message}")]
    Connect {
        servers: Vec<String>,
        message: String,
    },
    #[error("subscribing to {subject}: {message}")]
    Subscribe { subject: String, message: String },
}

/// Signed links into the directory server (issue 7 builds them); the agent puts them in
/// `file_uri_v2` and `task_streaming_log_url`, and registers the server's route.
pub trait FileLinks: Send + Sync {
    fn instance_file(&self, instance_id: &str, path: &str) -> String;
    fn staging_file(&self, task_id: &str, path: &str) -> String;
    /// The directory server's route: its host name (`<uuid>.<domain>`) and port.
    fn route(&self) -> Option<(String, u16)>;
}

/// Where the agent is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Serving,
    Evacuating,
    ShuttingDown,
}

/// A staging task in flight.
pub(super) struct StagingHandle {
    pub app_id: String,
    pub cancel: CancellationToken,
    /// Stands for the staging container's `/` (the log is `tmp/staged/logs/staging_task.log`).
    pub dir: PathBuf,
}

/// What each subscription is for.
#[derive(Debug, Clone, Copy)]
enum Inbox {
    Start,
    Stop,
    Update,
    FindDroplet,
    Status,
    Locate,
    StagingLocate,
    HealthManagerStart,
    RouterStart,
    Staging,
    StagingStop,
}

/// A DEA on a NATS bus.
pub struct Agent {
    pub(super) id: String,
    pub(super) config: Config,
    pub(super) local_ip: String,
    pub(super) client: async_nats::Client,
    pub(super) instances: Arc<InstanceManager>,
    /// Stagings for the controller (downloads, staging, uploads).
    pub(super) remote: RemoteStager,
    pub(super) links: Option<Arc<dyn FileLinks>>,
    pub(super) stagings: Mutex<HashMap<String, StagingHandle>>,
    pub(super) mode: Mutex<Mode>,
    pub(super) advertising: AtomicBool,
    pub(super) heartbeating: AtomicBool,
    /// Ends the subscriptions and the periodic loops.
    pub(super) stopping: CancellationToken,
    /// Messages dropped because they did not parse or validate.
    pub(super) rejected: AtomicU64,
    /// Set once shutdown has finished.
    pub(super) finished: tokio::sync::watch::Sender<bool>,
}

impl Agent {
    /// Connects (retrying forever in the background), subscribes, announces itself and
    /// starts the periodic messages.
    pub async fn start(
        config: Config,
        instances: Arc<InstanceManager>,
        stager: Arc<Stager>,
        links: Option<Arc<dyn FileLinks>>,
    ) -> Result<Arc<Agent>, AgentError> {
        let (connected_tx, mut connected_rx) = tokio::sync::mpsc::unbounded_channel();
        let servers = config.agent.nats_servers.clone();
        let addresses: Vec<async_nats::ServerAddr> = servers
            .iter()
            .map(|s| s.parse::<async_nats::ServerAddr>())
            .collect::<Result<_, _>>()
            .map_err(|e| AgentError::Connect {
                servers: servers.clone(),
                message: e.to_string(),
            })?;
        let client = async_nats::ConnectOptions::new()
            .name("dea")
            .retry_on_initial_connect()
            .max_reconnects(None)
            .ping_interval(Duration::from_secs(30))
            // Reconnect quickly: the controller drops DEAs that stop advertising.
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((100 * attempts as u64).min(1000))
            })
            .event_callback(move |event| {
                let connected_tx = connected_tx.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            let _ = connected_tx.send(());
                        }
                        other => tracing::info!("NATS: {other}"),
                    }
                }
            })
            .connect(addresses)
            .await
            .map_err(|e| AgentError::Connect {
                servers: servers.clone(),
                message: e.to_string(),
            })?;
        let local_ip = local_ip(&config);
        // Packages and droplets named `dea-blob://` come from (and go to) the platform's
        // object stores over this same connection.
        let blobs = crate::blobstore::BlobStore::new(client.clone());
        let remote = RemoteStager::new(&config, stager).with_blobs(blobs.clone());
        instances.droplets().attach_blobs(blobs);
        let agent = Arc::new(Agent {
            id: uuid::Uuid::new_v4().to_string(),
            config,
            local_ip,
            client,
            instances,
            remote,
            links,
            stagings: Mutex::new(HashMap::new()),
            mode: Mutex::new(Mode::Serving),
            advertising: AtomicBool::new(true),
            heartbeating: AtomicBool::new(true),
            stopping: CancellationToken::new(),
            rejected: AtomicU64::new(0),
            finished: tokio::sync::watch::channel(false).0,
        });
        // No staging survives a restart (the controller hears nothing more of it and stages
        // again): what the last run's stagings left is removed before new ones begin.
        crate::tenant_fs::remove_tree_off_thread(agent.config.base_dir.join("tasks")).await;
        agent.subscribe_all().await?;
        // Compile (or map from the disk cache) every installed wasm buildpack now, on the
        // blocking pool while the agent serves, so the first staging does not wait for it.
        // A staging that arrives first and needs a component being compiled waits for that
        // compile (one per digest) rather than compiling it again, and its detect answers
        // as soon as the first match in order is known, whatever is still compiling.
        let stager = agent.remote.stager().clone();
        tokio::task::spawn_blocking(move || stager.preload());
        agent.clone().follow_instances();
        agent.clone().periodic();
        // Every (re)connection: tell the bus again who we are and where our routes go.
        let on_connect = agent.clone();
        tokio::spawn(async move {
            while connected_rx.recv().await.is_some() {
                tracing::info!(id = %on_connect.id, "connected to NATS");
                on_connect.advertise().await;
                on_connect.register_routes().await;
                on_connect.heartbeat().await;
            }
        });
        agent
            .publish(
                "dea.start",
                &Hello {
                    id: agent.id.clone(),
                    ip: agent.local_ip.clone(),
                    version: env!("CARGO_PKG_VERSION").into(),
                },
            )
            .await;
        tracing::info!(id = %agent.id, "DEA agent started");
        Ok(agent)
    }

    /// This DEA's uuid.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn instances(&self) -> &Arc<InstanceManager> {
        &self.instances
    }

    /// How many inbound messages were dropped as malformed so far.
    pub fn rejected_messages(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// The host directory standing for a staging task's container root, while it runs.
    pub fn staging_task_dir(&self, task_id: &str) -> Option<PathBuf> {
        self.stagings.lock().get(task_id).map(|t| t.dir.clone())
    }

    pub(super) fn mode(&self) -> Mode {
        *self.mode.lock()
    }

    async fn subscribe_all(self: &Arc<Self>) -> Result<(), AgentError> {
        let mut subjects = vec![
            (format!("dea.{}.start", self.id), Inbox::Start, None),
            ("dea.stop".to_string(), Inbox::Stop, None),
            ("dea.update".to_string(), Inbox::Update, None),
            ("dea.find.droplet".to_string(), Inbox::FindDroplet, None),
            ("dea.status".to_string(), Inbox::Status, None),
            ("dea.locate".to_string(), Inbox::Locate, None),
            (
                "healthmanager.start".to_string(),
                Inbox::HealthManagerStart,
                None,
            ),
            ("router.start".to_string(), Inbox::RouterStart, None),
        ];
        if self.config.agent.staging_enabled {
            subjects.extend([
                (format!("staging.{}.start", self.id), Inbox::Staging, None),
                ("staging".to_string(), Inbox::Staging, Some("staging")),
                ("staging.stop".to_string(), Inbox::StagingStop, None),
                ("staging.locate".to_string(), Inbox::StagingLocate, None),
            ]);
        }
        for (subject, inbox, queue) in subjects {
            let failed = |e: &dyn std::fmt::Display| AgentError::Subscribe {
                subject: subject.clone(),
                message: e.to_string(),
            };
            let mut subscriber = match queue {
                Some(group) => self
                    .client
                    .queue_subscribe(subject.clone(), group.to_string())
                    .await
                    .map_err(|e| failed(&e))?,
                None => self
                    .client
                    .subscribe(subject.clone())
                    .await
                    .map_err(|e| failed(&e))?,
            };
            let agent = self.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        message = subscriber.next() => match message {
                            Some(message) => agent.dispatch(inbox, message),
                            None => break,
                        },
                        // Dropping the subscriber unsubscribes.
                        _ = agent.stopping.cancelled() => break,
                    }
                }
            });
        }
        Ok(())
    }

    /// Hands a message to its handler. Handlers that take time run on their own task, so a
    /// slow start never holds up the subscription.
    fn dispatch(self: &Arc<Self>, inbox: Inbox, message: async_nats::Message) {
        let subject = message.subject.to_string();
        let reply = message.reply.clone();
        let payload = message.payload;
        let agent = self.clone();
        let result = match inbox {
            Inbox::Start => self.parse(&subject, &payload).map(|start| {
                tokio::spawn(async move { agent.handle_start(start).await });
            }),
            Inbox::Stop => self
                .parse::<messages::InstanceFilter>(&subject, &payload)
                .map(|filter| {
                    let only_droplet = only_key(&payload, "droplet");
                    let matcher = cmd::filter::Matcher::from(filter);
                    tokio::spawn(async move { agent.handle_stop(matcher, only_droplet).await });
                }),
            Inbox::Update => self.parse(&subject, &payload).map(|update| {
                tokio::spawn(async move { agent.handle_update(update).await });
            }),
            Inbox::FindDroplet => self
                .parse::<messages::InstanceFilter>(&subject, &payload)
                .and_then(|filter| {
                    let matcher = cmd::filter::Matcher::from(filter);
                    let reply = self.reply_to(&subject, reply)?;
                    tokio::spawn(async move { agent.handle_find(matcher, reply).await });
                    Some(())
                }),
            Inbox::Status => self.reply_to(&subject, reply).map(|reply| {
                tokio::spawn(async move { agent.handle_status(reply).await });
            }),
            Inbox::Locate => {
                tokio::spawn(async move { agent.advertise_dea().await });
                Some(())
            }
            Inbox::StagingLocate => {
                tokio::spawn(async move { agent.advertise_staging().await });
                Some(())
            }
            Inbox::HealthManagerStart => {
                tokio::spawn(async move { agent.heartbeat().await });
                Some(())
            }
            Inbox::RouterStart => {
                tokio::spawn(async move { agent.register_routes().await });
                Some(())
            }
            Inbox::Staging => match self.parse(&subject, &payload) {
                Some(request) => self.reply_to(&subject, reply).map(|reply| {
                    tokio::spawn(async move { agent.handle_staging(request, reply).await });
                }),
                None => {
                    // A request that cannot be parsed is still answered when it can be: the
                    // controller would otherwise wait out its timeout in silence.
                    if let Some(reply) = reply {
                        let error = messages::parse::<messages::StagingRequest>(
                            subject_kind(&subject),
                            &payload,
                        )
                        .err()
                        .map_or_else(String::new, |e| e.to_string());
                        let (task_id, app_id) = (
                            string_field(&payload, "task_id"),
                            string_field(&payload, "app_id"),
                        );
                        tokio::spawn(async move {
                            agent
                                .refuse_staging(
                                    &reply,
                                    &task_id,
                                    &app_id,
                                    &format!("Error staging: {error}"),
                                )
                                .await;
                        });
                    }
                    None
                }
            },
            Inbox::StagingStop => {
                self.parse::<messages::StagingStop>(&subject, &payload)
                    .map(|stop| {
                        agent.stop_stagings(&stop.app_id);
                    })
            }
        };
        if result.is_none() {
            self.rejected.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Parses a payload; a malformed one is logged with its subject and dropped.
    fn parse<T: serde::de::DeserializeOwned>(&self, subject: &str, payload: &[u8]) -> Option<T> {
        match messages::parse::<T>(subject_kind(subject), payload) {
            Ok(message) => Some(message),
            Err(error) => {
                tracing::warn!(%subject, bytes = payload.len(), "dropped: {error}");
                None
            }
        }
    }

    /// A request's reply inbox; a request without one is dropped (nothing could be told).
    fn reply_to(&self, subject: &str, reply: Option<Subject>) -> Option<Subject> {
        if reply.is_none() {
            tracing::warn!(%subject, "dropped: a request without a reply subject");
        }
        reply
    }

    /// Rejects a message in `subject` for `reason` (already parsed, but not acceptable).
    pub(super) fn reject(&self, subject: &str, reason: &str) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%subject, "dropped: {reason}");
    }

    /// Publishes `message` as JSON on `subject`. A failure is logged: the bus is best-effort.
    pub(super) async fn publish<T: Serialize>(&self, subject: impl Into<String>, message: &T) {
        let subject = subject.into();
        let payload = match serde_json::to_vec(message) {
            Ok(bytes) => Bytes::from(bytes),
            Err(e) => {
                tracing::error!(%subject, "encoding message: {e}");
                return;
            }
        };
        // While NATS is unreachable the client buffers, and a full buffer makes `publish`
        // wait: nothing the agent does may hang on that.
        match tokio::time::timeout(NATS_TIMEOUT, self.client.publish(subject.clone(), payload))
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(%subject, "publishing: {e}"),
            Err(_) => tracing::warn!(%subject, "publishing: NATS did not take the message in time"),
        }
    }

    /// Flushes, giving up after [`NATS_TIMEOUT`] (the server may be gone).
    pub(super) async fn flush(&self) {
        match tokio::time::timeout(NATS_TIMEOUT, self.client.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("flushing NATS: {e}"),
            Err(_) => tracing::warn!("flushing NATS: no answer in {NATS_TIMEOUT:?}; going on"),
        }
    }
}

/// True when the JSON object has exactly one key, `key` (a `dea.stop` for a whole app also
/// stops its stagings).
fn only_key(payload: &[u8], key: &str) -> bool {
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(payload)
        .is_ok_and(|map| map.len() == 1 && map.contains_key(key))
}

/// A top-level string field of a JSON object, or empty (for answering a malformed request
/// with what it could be matched by), cut to a sane length.
fn string_field(payload: &[u8], key: &str) -> String {
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(payload)
        .ok()
        .and_then(|map| map.get(key).and_then(|v| v.as_str()).map(str::to_string))
        .map(|s| s.chars().take(256).collect())
        .unwrap_or_default()
}

/// The message kind for error messages: the subject without this DEA's uuid.
fn subject_kind(subject: &str) -> &'static str {
    match subject {
        "dea.stop" => "dea.stop",
        "dea.update" => "dea.update",
        "dea.find.droplet" => "dea.find.droplet",
        "staging.stop" => "staging.stop",
        "staging" => "staging",
        s if s.starts_with("staging.") => "staging.start",
        s if s.starts_with("dea.") => "dea.start",
        _ => "NATS",
    }
}

/// The address routers reach this host at: configured, else the instances' publish address,
/// else (when that is a wildcard) the source address of a route to the outside.
fn local_ip(config: &Config) -> String {
    if let Some(ip) = &config.agent.local_ip {
        return ip.clone();
    }
    let publish = &config.instances.publish_address;
    if publish != "0.0.0.0" && publish != "::" {
        return publish.clone();
    }
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|socket| {
            socket.connect("198.41.0.4:1")?;
            socket.local_addr()
        })
        .map_or_else(|_| "127.0.0.1".to_string(), |addr| addr.ip().to_string())
}
