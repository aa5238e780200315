//! Running droplets as instances: the registry of this host's instances and the types the
//! rest of the agent sees.
//!
//! The [`InstanceManager`] takes a start request through the DEA's sequence (reference
//! dea_ng.md §4.2–4.4): get the droplet (stored once per SHA-1), unpack it under the
//! instance's `home/vcap`, start a runc container (stack read-only, `/home/vcap` and `/app`
//! bind-mounted from the instance directory, non-root, memory and pids limits, its own network
//! namespace), run the start script (environment, `.profile.d`, exec of the start command),
//! publish the app's port on a host port, and health-check it. States go BORN → STARTING →
//! RUNNING → STOPPING → STOPPED, or CRASHED, each change timestamped. The app's stdout and
//! stderr are files under the instance's `home/logs/` (`/home/vcap/logs`); a crashed
//! instance's logs are kept under `crashes/`.
//!
//! This file holds the registry (ids to instances, state changes and who hears of them) and
//! the public types; each part of an instance's life has its own file:
//!
//! | file | holds |
//! |---|---|
//! | `settings.rs` | [`InstanceSettings`]: limits and places, from the configuration |
//! | `start.rs` | the start path: registration, droplet, home, network, container |
//! | `spec.rs` | the container an instance runs in, and its start script |
//! | `monitor.rs` | one instance's watch: health check, exit, disk, reachability, clean-up |
//! | `control.rs` | orders from outside: stop, abandon, evacuate, wait |
//! | `capacity.rs` | memory and disk left for instances and staging reservations |
//! | `crashes.rs` | crash logs and the reaper of old crashes |
//! | `usage.rs` | [`Usage`]: memory, CPU and disk of a running instance |
//! | `snapshot.rs` | the registry on disk, and recovery after a restart |
//! | `ids.rs` | instance ids in the DEA's shape |
//! | `layers.rs` | droplets unpacked once per host, shared as the lower layer of homes |
//! | `home.rs`, `disk.rs`, `network.rs`, `droplet_store.rs` | the instance's files, disk use, network and droplets |

pub mod droplet_store;

mod capacity;
mod control;
mod crashes;
pub mod disk;
mod home;
mod ids;
mod layers;
mod monitor;
pub mod network;
mod settings;
mod snapshot;
mod spec;
mod start;
mod usage;

use capacity::StagingReservations;
use monitor::Control;
use network::{Attached, Network};

use crate::config::EgressRule;
use crate::container::Runc;
use crate::droplet;
pub use capacity::CapacityError;
pub use droplet_store::{DropletError, DropletStore};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
pub use settings::InstanceSettings;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{oneshot, watch};
pub use usage::Usage;

pub use network::CONTAINER_PORT;

pub use dea_protocol::InstanceState;

/// Why an instance could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error(transparent)]
    Droplet(#[from] DropletError),
    #[error("unpacking droplet: {0}")]
    Unpack(#[from] droplet::UnpackError),
    #[error("missing start command")]
    MissingStartCommand,
    #[error("instance setup: {0}")]
    Setup(String),
    #[error("no instance {0}")]
    Unknown(String),
    #[error("instance home: {0}")]
    Home(#[from] crate::tenant_fs::TenantFsError),
    #[error("instance network: {0}")]
    Network(#[from] network::NetworkError),
}

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct StartRequest {
    /// A droplet path or an http(s) URL.
    pub droplet: String,
    pub sha1: Option<String>,
    pub application_id: String,
    pub name: String,
    pub index: u32,
    pub env: Vec<(String, String)>,
    /// Host port to publish on (0: any free port).
    pub host_port: u16,
    pub memory_mb: u64,
    pub disk_mb: u64,
    pub start_command: Option<String>,
    /// Wait for the port to accept connections (CF does when the app has routes).
    pub health_check: bool,
    pub health_check_timeout: Duration,
    /// The controller's bookkeeping, reported back in heartbeats and `droplet.exited`.
    pub version: String,
    pub uris: Vec<String>,
    pub cc_partition: String,
    /// The controller's `vcap_application`, merged into the instance's `VCAP_APPLICATION`.
    pub vcap_application: serde_json::Value,
    /// `VCAP_SERVICES`, as JSON.
    pub services: serde_json::Value,
    /// Open-file limit (the start message's `limits.fds`; 0: the default).
    pub fds: u64,
    /// A reason already known to fail this start (say, an unknown stack): the instance is
    /// registered and CRASHED at once, as the DEA does, so the controller hears of it.
    pub refusal: Option<String>,
    /// Egress this app is allowed besides the platform's (the controller's security groups).
    pub egress: Vec<EgressRule>,
    /// The stack to run on (`None`: the first configured).
    pub stack: Option<String>,
}

/// An instance as the registry reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceInfo {
    pub instance_id: String,
    pub application_id: String,
    pub droplet_sha1: String,
    pub state: InstanceState,
    pub state_timestamp: f64,
    /// When each state was entered, by state name.
    pub state_timestamps: BTreeMap<String, f64>,
    pub host_port: u16,
    pub container_port: u16,
    pub exit_status: Option<i32>,
    pub exit_description: Option<String>,
    pub start_command: Option<String>,
    pub dir: PathBuf,
    /// The runc container and the network namespace, for re-attaching after a restart.
    pub container_id: String,
    pub netns: String,
    pub memory_mb: u64,
    pub disk_mb: u64,
    /// Milliseconds spent in each start step: droplet, extract, container, health_check.
    #[serde(default)]
    pub start_timings_ms: BTreeMap<String, f64>,
    #[serde(default)]
    pub application_name: String,
    #[serde(default)]
    pub application_version: String,
    #[serde(default)]
    pub application_uris: Vec<String>,
    #[serde(default)]
    pub instance_index: u32,
    #[serde(default)]
    pub cc_partition: String,
    /// Sent to routers for sticky sessions (two random ids, as the DEA).
    #[serde(default)]
    pub private_instance_id: String,
    /// Its veth pair, addresses and published port (see [`network`]).
    #[serde(default)]
    pub network: Option<Attached>,
}

impl InstanceInfo {
    fn holds_resources(&self) -> bool {
        matches!(
            self.state,
            InstanceState::Born
                | InstanceState::Starting
                | InstanceState::Running
                | InstanceState::Resuming
                | InstanceState::Stopping
                | InstanceState::Evacuating
        )
    }

    /// Seconds since the instance entered STARTING.
    pub fn uptime_secs(&self) -> u64 {
        let started = self
            .state_timestamps
            .get("STARTING")
            .copied()
            .unwrap_or(self.state_timestamp);
        (now_secs() - started).max(0.0) as u64
    }

    fn set_state(&mut self, state: InstanceState) {
        let now = now_secs();
        self.state = state;
        self.state_timestamp = now;
        self.state_timestamps.insert(state.name().to_string(), now);
    }
}

/// A fully filled-in instance, for unit tests: every field has a value a test can check.
#[cfg(test)]
pub(crate) fn example_info(id: &str, state: InstanceState) -> InstanceInfo {
    InstanceInfo {
        instance_id: id.to_string(),
        application_id: format!("app-of-{id}"),
        droplet_sha1: "da39a3ee5e6b4b0d3255bfef95601890afd80709".into(),
        state,
        state_timestamp: 1_700_000_000.5,
        state_timestamps: BTreeMap::from([(state.name().to_string(), 1_700_000_000.5)]),
        host_port: 61001,
        container_port: CONTAINER_PORT,
        exit_status: None,
        exit_description: None,
        start_command: Some("bundle exec rackup".into()),
        dir: PathBuf::from("/var/vcap/instances").join(id),
        container_id: format!("dea-app-{id}"),
        netns: format!("dea-i-{id}"),
        memory_mb: 256,
        disk_mb: 1024,
        start_timings_ms: BTreeMap::from([("droplet".to_string(), 12.5)]),
        application_name: "dora".into(),
        application_version: "v1".into(),
        application_uris: vec!["dora.example.com".into()],
        instance_index: 2,
        cc_partition: "default".into(),
        private_instance_id: format!("{id}{id}"),
        network: Some(Attached {
            host_if: "dea-h-0001".into(),
            host_ip: "10.254.0.1".into(),
            container_ip: "10.254.0.2".into(),
            host_port: 61001,
            egress: false,
        }),
    }
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One registered instance: its info, and the registry's ends of its monitor's channels.
struct Handle {
    info: Mutex<InstanceInfo>,
    /// Orders for its monitor; the first order takes it (`None`: no monitor, or already told).
    control: Mutex<Option<oneshot::Sender<Control>>>,
    /// Turns true when its monitor has finished (or when it never gets one).
    done: watch::Receiver<bool>,
}

/// The monitor's ends of a [`Handle`]'s channels: orders in, "finished" out.
struct Lifeline {
    control: oneshot::Receiver<Control>,
    done: watch::Sender<bool>,
}

impl Handle {
    /// A handle for an instance that is to have a monitor, and the monitor's ends.
    fn new(info: InstanceInfo) -> (Arc<Handle>, Lifeline) {
        let (control_tx, control) = oneshot::channel();
        let (done, done_rx) = watch::channel(false);
        let handle = Arc::new(Handle {
            info: Mutex::new(info),
            control: Mutex::new(Some(control_tx)),
            done: done_rx,
        });
        (handle, Lifeline { control, done })
    }

    /// A handle for an instance that is already finished: no monitor will watch it.
    fn finished(info: InstanceInfo) -> Arc<Handle> {
        let (_, done) = watch::channel(true);
        Arc::new(Handle {
            info: Mutex::new(info),
            control: Mutex::new(None),
            done,
        })
    }
}

impl Lifeline {
    /// Tells whoever waits on the handle that the instance is finished without a monitor.
    fn finish(self) {
        let _ = self.done.send(true);
    }
}

/// The registry of instances on this host.
pub struct InstanceManager {
    settings: InstanceSettings,
    runc: Runc,
    /// Instance networking, shared with the blocking pool.
    network: Arc<Network>,
    droplets: DropletStore,
    /// Unpacked droplets that homes are layered over.
    layers: layers::Layers,
    /// Instances by id. Reads (lookups, listings, capacity) share it; registering,
    /// unregistering and reserving capacity take it for writing, which keeps concurrent
    /// reservations from both fitting.
    instances: RwLock<HashMap<String, Arc<Handle>>>,
    /// Staging tasks' reservations, by task id.
    staging: Mutex<StagingReservations>,
    /// Every state change, for the NATS agent (routes, heartbeats, `droplet.exited`). Deep
    /// enough for a burst of hundreds of starts; its slots hold pointers, since a channel
    /// allocates and keeps every slot (4096 `InstanceInfo`s were 2 MiB of an idle agent).
    events: tokio::sync::broadcast::Sender<Arc<InstanceInfo>>,
}

impl InstanceManager {
    /// A manager with an empty registry. Installs (or refreshes) this agent's nftables
    /// table, which fails without nftables or root.
    pub fn new(
        mut settings: InstanceSettings,
        runc: Runc,
    ) -> Result<Arc<InstanceManager>, InstanceError> {
        // Bind-mount sources must be absolute for runc.
        if let Ok(absolute) = std::path::absolute(&settings.base_dir) {
            settings.base_dir = absolute;
        }
        let network = Network::new(settings.network.clone())?;
        network.install()?;
        // A droplet is gzip'd: what it unpacks to is capped separately, at the same figure.
        let droplets = DropletStore::with_limit(
            settings.base_dir.join("droplets"),
            settings.max_droplet_mb << 20,
        );
        let layers = layers::Layers::new(&settings.base_dir, settings.layered_homes);
        Ok(Arc::new(InstanceManager {
            settings,
            runc,
            network: Arc::new(network),
            droplets,
            layers,
            instances: RwLock::new(HashMap::new()),
            staging: Mutex::new(StagingReservations::default()),
            events: tokio::sync::broadcast::channel(4096).0,
        }))
    }

    /// State changes from now on: the instance's info just after each change.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<InstanceInfo>> {
        self.events.subscribe()
    }

    pub fn settings(&self) -> &InstanceSettings {
        &self.settings
    }

    pub fn droplets(&self) -> &DropletStore {
        &self.droplets
    }

    /// Moves an instance to `state`, saves the snapshot and tells subscribers.
    fn enter(&self, handle: &Handle, state: InstanceState) {
        let info = {
            let mut info = handle.info.lock();
            info.set_state(state);
            info.clone()
        };
        self.save_snapshot();
        let _ = self.events.send(Arc::new(info));
    }

    pub fn get(&self, id: &str) -> Option<InstanceInfo> {
        self.instances.read().get(id).map(|h| h.info.lock().clone())
    }

    pub fn list(&self) -> Vec<InstanceInfo> {
        self.instances
            .read()
            .values()
            .map(|h| h.info.lock().clone())
            .collect()
    }

    /// The host pid of an instance's main process, while it runs.
    pub async fn pid(&self, id: &str) -> Option<u32> {
        // The container keeps the name it started with, even after `update` re-keys it.
        let container = self.get(id)?.container_id;
        self.runc.pid_of(&container).await
    }

    /// Registered instances per app, any state (`app_id_to_count` of `dea.advertise`).
    pub fn app_id_to_count(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for info in self.list() {
            *counts.entry(info.application_id).or_insert(0) += 1;
        }
        counts
    }

    /// Applies `dea.update` to one instance: new routes, and a new version, which (as in the
    /// DEA) gives the instance a new id. Returns the updated info.
    pub fn update(&self, id: &str, uris: &[String], version: Option<&str>) -> Option<InstanceInfo> {
        let mut instances = self.instances.write();
        let handle = instances.get(id).cloned()?;
        let info = {
            let mut info = handle.info.lock();
            info.application_uris = uris.to_vec();
            if let Some(version) = version
                && version != info.application_version
            {
                info.application_version = version.to_string();
                info.instance_id = ids::new_id();
                instances.remove(id);
                instances.insert(info.instance_id.clone(), handle.clone());
            }
            info.clone()
        };
        drop(instances);
        self.save_snapshot();
        Some(info)
    }
}
