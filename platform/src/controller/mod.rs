//! `dea controller`: stages apps through agents, places their instances and keeps what runs
//! equal to what is wanted.
//!
//! Every controller process watches the bus (advertisements, heartbeats, exits); only the
//! holder of the `controller` lease acts, so two can run at once and either can be killed.
//! What must survive a controller lives in JetStream (apps, stagings, events, blobs); what
//! the agents repeat every few seconds (who runs what) is learned again from the bus, and a
//! new leader waits one heartbeat interval before acting on it.

pub mod actual;
pub mod converge;
pub mod fleet;
mod leader;
mod observe;
mod stage;

use crate::jetstream::Platform;
use actual::Actual;
use converge::CrashRecord;
use fleet::Fleet;
use parking_lot::Mutex;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The controller's settings (`controller:` in `dea.yml`); the defaults suit agents with
/// the DEA's intervals (advertise every 5 s, heartbeat every 10 s).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControllerConfig {
    /// This process's name in the lease (unique per process; default: host name + uuid).
    pub id: Option<String>,
    /// An agent not heard from for this long is gone, and its instances are started
    /// elsewhere.
    pub agent_timeout_secs: u64,
    /// Time between convergence passes.
    pub converge_interval_ms: u64,
    /// How long a new leader listens before acting (at least one heartbeat interval).
    pub settle_secs: u64,
    /// How long a staging may take, from the setup reply to the completion.
    pub staging_timeout_secs: u64,
    /// How long a start counts as STARTING without the agent's heartbeat showing it.
    pub start_wait_secs: u64,
    /// How long the lease lasts without renewal (at most the lease bucket's TTL).
    pub lease_secs: u64,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            id: None,
            agent_timeout_secs: 12,
            converge_interval_ms: 1000,
            settle_secs: 11,
            staging_timeout_secs: 900,
            start_wait_secs: 90,
            lease_secs: 10,
        }
    }
}

impl ControllerConfig {
    fn staging_timeout(&self) -> Duration {
        Duration::from_secs(self.staging_timeout_secs)
    }
}

/// What this process knows of the bus.
#[derive(Default)]
struct View {
    fleet: Fleet,
    actual: Actual,
    /// Crashes per app guid and index, for the back-off.
    crashes: HashMap<String, BTreeMap<u32, CrashRecord>>,
    /// Instances seen RUNNING, since when (a `Started` event is published once per
    /// instance; one that ran long before crashing starts its index's back-off afresh).
    running: HashMap<String, std::time::Instant>,
    /// App names by guid, for events (which are kept per app name).
    names: HashMap<String, String>,
}

struct Shared {
    platform: Platform,
    config: ControllerConfig,
    id: String,
    view: Mutex<View>,
    /// Apps this process is staging now.
    stagings: Mutex<HashSet<String>>,
    /// Whether this process holds the lease (and so publishes events and acts).
    leading: std::sync::atomic::AtomicBool,
}

/// A running controller.
pub struct ControllerHandle {
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl ControllerHandle {
    /// Whether this process holds the lease now.
    pub fn is_leader(&self) -> bool {
        self.shared
            .leading
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// Stops acting and hands the lease back.
    pub async fn shutdown(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("subscribing to {subject}: {source}")]
    Subscribe {
        subject: &'static str,
        #[source]
        source: async_nats::SubscribeError,
    },
}

pub struct Controller;

impl Controller {
    /// Starts watching the bus and competing for the lease.
    pub async fn start(
        platform: Platform,
        config: ControllerConfig,
    ) -> Result<ControllerHandle, ControllerError> {
        let id = config.id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_default();
            let suffix = uuid::Uuid::new_v4().simple().to_string();
            format!(
                "{}{}",
                if host.is_empty() { "controller" } else { &host },
                &suffix[..12]
            )
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect()
        });
        let shared = Arc::new(Shared {
            platform,
            config,
            id,
            view: Mutex::new(View::default()),
            stagings: Mutex::new(HashSet::new()),
            leading: std::sync::atomic::AtomicBool::new(false),
        });
        let stop = CancellationToken::new();
        let mut tasks = observe::start(shared.clone(), stop.clone()).await?;
        tasks.push(tokio::spawn(leader::run(shared.clone(), stop.clone())));
        Ok(ControllerHandle {
            stop,
            tasks,
            shared,
        })
    }
}
