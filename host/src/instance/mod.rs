//! Running droplets as instances.
//!
//! The [`InstanceManager`] takes a start request through the DEA's sequence (reference
//! dea_ng.md §4.2–4.4): get the droplet (stored once per SHA-1), unpack it under the
//! instance's `home/vcap`, start a runc container (stack read-only, `/home/vcap` and `/app`
//! bind-mounted from the instance directory, non-root, memory and pids limits, its own network
//! namespace), run the start script (environment, `.profile.d`, exec of the start command),
//! publish the app's port on a host port, and health-check it. States go BORN → STARTING →
//! RUNNING → STOPPING → STOPPED, or CRASHED, each change timestamped. The app's stdout and
//! stderr are files under the instance's `home/logs/` (`/home/vcap/logs`); a crashed instance's logs are kept under
//! `crashes/`.

pub mod droplet_store;

mod capacity;
pub mod disk;
mod home;
mod monitor;
pub mod network;
mod snapshot;
mod spec;

use capacity::Reservation;
use home::PreparedHome;
use monitor::{Control, Process, Running, Watch};
use network::{Attached, Network, NetworkSettings};

use crate::config::EgressRule;
use crate::container::Runc;
use crate::droplet::{self, UnpackLimits};
use crate::netns::NetNamespace;
pub use droplet_store::{DropletError, DropletStore};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use network::CONTAINER_PORT;

/// An instance's state, as the DEA names them on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InstanceState {
    Born,
    Starting,
    Running,
    Stopping,
    Stopped,
    Crashed,
    Resuming,
    /// The agent is draining (SIGUSR2): still serving, to be stopped at shutdown.
    Evacuating,
}

impl InstanceState {
    /// The wire name (`RUNNING`, ...).
    pub fn name(self) -> &'static str {
        match self {
            InstanceState::Born => "BORN",
            InstanceState::Starting => "STARTING",
            InstanceState::Running => "RUNNING",
            InstanceState::Stopping => "STOPPING",
            InstanceState::Stopped => "STOPPED",
            InstanceState::Crashed => "CRASHED",
            InstanceState::Resuming => "RESUMING",
            InstanceState::Evacuating => "EVACUATING",
        }
    }
}

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

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Resource use of a running instance, for `dea.find.droplet` stats.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Usage {
    pub mem_bytes: u64,
    pub disk_bytes: u64,
    /// Fraction of one core used since the previous sample.
    pub cpu: f64,
}

struct Handle {
    info: Mutex<InstanceInfo>,
    control: Mutex<Option<tokio::sync::oneshot::Sender<Control>>>,
    done: tokio::sync::watch::Receiver<bool>,
}

/// Limits and places for instances.
#[derive(Debug, Clone)]
pub struct InstanceSettings {
    pub base_dir: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub pids_limit: i64,
    pub stop_grace: Duration,
    pub max_droplet_mb: u64,
    /// Memory this host offers to instances, in MiB, and how far it may be overcommitted.
    pub memory_capacity_mb: u64,
    pub memory_overcommit_factor: f64,
    /// Disk this host offers to instances, in MiB, and how far it may be overcommitted.
    pub disk_capacity_mb: u64,
    pub disk_overcommit_factor: f64,
    /// How long a crashed instance's logs are kept under `crashes/`.
    pub crash_lifetime: Duration,
    /// How often a running instance's disk use is measured against its limit.
    pub disk_check_interval: Duration,
    /// Addresses, published ports and egress of instances.
    pub network: NetworkSettings,
    /// How often a running instance with routes is checked to accept connections.
    pub health_check_interval: Duration,
    /// Most files and directories an instance's home may hold (an inode limit).
    pub max_files: u64,
    /// Deepest nesting of directories accepted in a droplet.
    pub max_dir_depth: usize,
    /// The stacks instances run on.
    pub stacks: crate::stack::Stacks,
}

impl InstanceSettings {
    /// The settings `config` describes (memory capacity defaults to the machine's RAM).
    pub fn from_config(config: &crate::config::Config) -> InstanceSettings {
        let instances = &config.instances;
        let machine_mb = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
            .map_or(4096, |kb| kb / 1024);
        InstanceSettings {
            base_dir: config.base_dir.clone(),
            uid: instances.uid,
            gid: instances.gid,
            pids_limit: instances.pids_limit,
            stop_grace: Duration::from_secs(instances.stop_grace_secs),
            max_droplet_mb: instances.max_droplet_mb,
            memory_capacity_mb: instances.memory_capacity_mb.unwrap_or(machine_mb),
            memory_overcommit_factor: instances.memory_overcommit_factor,
            disk_capacity_mb: instances.disk_capacity_mb,
            disk_overcommit_factor: instances.disk_overcommit_factor,
            crash_lifetime: Duration::from_secs(instances.crash_lifetime_secs),
            disk_check_interval: Duration::from_secs(instances.disk_check_interval_secs.max(1)),
            network: NetworkSettings {
                subnet: instances.network.clone(),
                port_range: (instances.port_range[0], instances.port_range[1]),
                // An address that is not IPv4 (a name) publishes on every local address.
                publish_address: instances
                    .publish_address
                    .parse()
                    .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
                egress: instances.egress_rules.clone(),
                table: NetworkSettings::table_for(&config.base_dir),
            },
            health_check_interval: Duration::from_secs(instances.health_check_interval_secs.max(1)),
            max_files: instances.max_files,
            max_dir_depth: config.staging.max_dir_depth,
            stacks: config.stacks(),
        }
    }
}

/// The registry of instances on this host.
pub struct InstanceManager {
    settings: InstanceSettings,
    runc: Runc,
    /// Instance networking, shared with the blocking pool.
    network: Arc<Network>,
    droplets: DropletStore,
    instances: RwLock<HashMap<String, Arc<Handle>>>,
    /// Staging tasks' reservations, by task id.
    staging: Mutex<HashMap<String, Reservation>>,
    /// Every state change, for the NATS agent (routes, heartbeats, `droplet.exited`).
    events: tokio::sync::broadcast::Sender<InstanceInfo>,
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
        Ok(Arc::new(InstanceManager {
            settings,
            runc,
            network: Arc::new(network),
            droplets,
            instances: RwLock::new(HashMap::new()),
            staging: Mutex::new(HashMap::new()),
            events: tokio::sync::broadcast::channel(4096).0,
        }))
    }

    /// State changes from now on: the instance's info just after each change.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<InstanceInfo> {
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
        let _ = self.events.send(info);
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

    /// Starts an instance; returns once it is RUNNING or CRASHED.
    pub async fn start(
        self: &Arc<Self>,
        request: StartRequest,
    ) -> Result<InstanceInfo, InstanceError> {
        let id = new_id();
        let dir = self.settings.base_dir.join("instances").join(&id);
        let mut info = InstanceInfo {
            instance_id: id.clone(),
            application_id: request.application_id.clone(),
            droplet_sha1: String::new(),
            state: InstanceState::Born,
            state_timestamp: 0.0,
            state_timestamps: BTreeMap::new(),
            host_port: 0,
            container_port: CONTAINER_PORT,
            exit_status: None,
            exit_description: None,
            start_command: None,
            dir: dir.clone(),
            container_id: format!("dea-app-{id}"),
            netns: format!("dea-i-{}", &id[..16.min(id.len())]),
            memory_mb: request.memory_mb,
            disk_mb: request.disk_mb,
            start_timings_ms: BTreeMap::new(),
            application_name: request.name.clone(),
            application_version: request.version.clone(),
            application_uris: request.uris.clone(),
            instance_index: request.index,
            cc_partition: request.cc_partition.clone(),
            private_instance_id: format!("{}{}", new_id(), new_id()),
            network: None,
        };
        info.set_state(InstanceState::Born);
        let (control_tx, control_rx) = tokio::sync::oneshot::channel();
        let (done_tx, done_rx) = tokio::sync::watch::channel(false);
        let handle = Arc::new(Handle {
            info: Mutex::new(info),
            control: Mutex::new(Some(control_tx)),
            done: done_rx,
        });
        // Reserve under the registry lock, so concurrent starts cannot both fit.
        let refused = {
            let mut instances = self.instances.write();
            let refused = request
                .refusal
                .clone()
                .or_else(|| self.refuse_for_resources(&instances, &request));
            instances.insert(id.clone(), handle.clone());
            refused
        };
        if let Some(message) = refused {
            handle.info.lock().exit_description = Some(message);
            self.enter(&handle, InstanceState::Crashed);
            let _ = done_tx.send(true);
            return Ok(handle.info.lock().clone());
        }
        self.enter(&handle, InstanceState::Starting);

        let running = match self.prepare(&handle, &request).await {
            Ok(running) => running,
            Err(error) => {
                handle.info.lock().exit_description = Some(error.to_string());
                self.enter(&handle, InstanceState::Crashed);
                self.release(&handle, None, None).await;
                let _ = done_tx.send(true);
                return Ok(handle.info.lock().clone());
            }
        };
        let manager = self.clone();
        let monitor_handle = handle.clone();
        let watch = Watch {
            health: request.health_check.then_some(request.health_check_timeout),
            reachability: request.health_check,
        };
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            manager
                .monitor(monitor_handle, running, control_rx, watch, ready_tx)
                .await;
            let _ = done_tx.send(true);
        });
        let _ = ready_rx.await;
        Ok(handle.info.lock().clone())
    }

    /// Droplet, directories, network and container: everything up to a running process.
    async fn prepare(
        &self,
        handle: &Arc<Handle>,
        request: &StartRequest,
    ) -> Result<Running, InstanceError> {
        let setup = |e: &dyn std::fmt::Display| InstanceError::Setup(e.to_string());
        let timer = std::time::Instant::now();
        let record = |step: &str, since: std::time::Instant| {
            handle
                .info
                .lock()
                .start_timings_ms
                .insert(step.to_string(), since.elapsed().as_secs_f64() * 1000.0);
        };
        let (droplet_path, sha1) = self
            .droplets
            .get(&request.droplet, request.sha1.as_deref())
            .await?;
        record("droplet", timer);
        let timer = std::time::Instant::now();
        let dir = handle.info.lock().dir.clone();
        let home = dir.join("home");
        let limits = UnpackLimits {
            max_bytes: self.settings.max_droplet_mb << 20,
            max_files: 1_000_000,
            max_depth: self.settings.max_dir_depth,
        };
        let (uid, gid) = (self.settings.uid, self.settings.gid);
        let (from, to) = (droplet_path.clone(), home.clone());
        // The droplet is a tenant's archive: unpacked safely, then every path the agent
        // itself uses in it is opened beneath the home, never through a link.
        let prepared =
            tokio::task::spawn_blocking(move || -> Result<PreparedHome, InstanceError> {
                droplet::unpack_source(&from, &to, limits)?;
                PreparedHome::new(&to, uid, gid)
            })
            .await
            .map_err(|e| setup(&e))??;
        let command = request
            .start_command
            .clone()
            .or(prepared.staged_command)
            .ok_or(InstanceError::MissingStartCommand)?;
        record("extract", timer);
        let timer = std::time::Instant::now();

        let (netns_name, instance_id) = {
            let info = handle.info.lock();
            (info.netns.clone(), info.instance_id.clone())
        };
        let _ = NetNamespace::existing(&netns_name); // a stale one from an earlier agent goes
        let namespace = NetNamespace::create_named(&netns_name).map_err(|e| setup(&e))?;
        let (manager, requested, egress) = (
            self.network.clone(),
            request.host_port,
            request.egress.clone(),
        );
        let (network, port) = tokio::task::spawn_blocking(move || {
            manager.attach(&netns_name, &instance_id, requested, &egress)
        })
        .await
        .map_err(|e| setup(&e))??;
        {
            let mut info = handle.info.lock();
            info.droplet_sha1 = sha1;
            info.host_port = network.host_port;
            info.network = Some(network.clone());
            info.start_command = Some(command.clone());
        }
        // Saved before the container starts, so a restarted agent can always tear it down.
        self.save_snapshot();
        let info = handle.info.lock().clone();
        let spec =
            spec::container_spec(&self.settings, &info, request, &home, &namespace, &command);
        let container = match self
            .runc
            .spawn(&spec, prepared.stdout, prepared.stderr)
            .await
        {
            Ok(container) => container,
            Err(e) => {
                let manager = self.network.clone();
                let _ = tokio::task::spawn_blocking(move || manager.detach(&network)).await;
                return Err(setup(&e));
            }
        };
        record("container", timer);
        Ok(Running {
            process: Process::Child(container),
            namespace,
            network,
            port,
        })
    }

    /// Removes kept crash logs older than `crash_lifetime`.
    /// Also drops CRASHED instances from the registry as the DEA's reaper does: past
    /// `crash_lifetime`, and all but the most recent crash of each app.
    pub fn reap_crashes(&self) {
        let lifetime = self.settings.crash_lifetime.as_secs_f64();
        let now = now_secs();
        let pruned = {
            let mut instances = self.instances.write();
            let mut latest: HashMap<String, (f64, String)> = HashMap::new();
            let mut expired = Vec::new();
            for (id, handle) in instances.iter() {
                let info = handle.info.lock();
                if info.state != InstanceState::Crashed {
                    continue;
                }
                if now - info.state_timestamp > lifetime {
                    expired.push(id.clone());
                    continue;
                }
                let newer = (info.state_timestamp, id.clone());
                match latest.get_mut(&info.application_id) {
                    Some(kept) if kept.0 >= newer.0 => expired.push(id.clone()),
                    Some(kept) => expired.push(std::mem::replace(kept, newer).1),
                    None => {
                        latest.insert(info.application_id.clone(), newer);
                    }
                }
            }
            for id in &expired {
                instances.remove(id);
            }
            !expired.is_empty()
        };
        if pruned {
            self.save_snapshot();
        }
        let Ok(entries) = std::fs::read_dir(self.settings.base_dir.join("crashes")) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > self.settings.crash_lifetime);
            if old {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    async fn keep_crash_logs(&self, handle: &Handle) {
        self.reap_crashes();
        let info = handle.info.lock().clone();
        let target = self
            .settings
            .base_dir
            .join("crashes")
            .join(&info.instance_id)
            .join("logs");
        let home = info.dir.join("home");
        let kept = tokio::task::spawn_blocking(move || home::keep_crash_logs(&home, &target)).await;
        match kept {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(instance = %info.instance_id, "keeping crash logs: {e}"),
            Err(e) => tracing::warn!(instance = %info.instance_id, "keeping crash logs: {e}"),
        }
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

    /// Marks every live instance EVACUATING (they keep running and keep their routes).
    pub fn evacuate(&self) {
        let handles: Vec<Arc<Handle>> = self.instances.read().values().cloned().collect();
        for handle in handles {
            let live = matches!(
                handle.info.lock().state,
                InstanceState::Born
                    | InstanceState::Starting
                    | InstanceState::Resuming
                    | InstanceState::Running
            );
            if live {
                self.enter(&handle, InstanceState::Evacuating);
            }
        }
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
                info.instance_id = new_id();
                instances.remove(id);
                instances.insert(info.instance_id.clone(), handle.clone());
            }
            info.clone()
        };
        drop(instances);
        self.save_snapshot();
        Some(info)
    }

    /// Memory, disk and CPU use of a running instance.
    pub async fn usage(&self, id: &str) -> Option<Usage> {
        let info = self.get(id)?;
        let cgroup = |file: &str| {
            std::fs::read_to_string(format!(
                "/sys/fs/cgroup/memory/dea/{}/{file}",
                info.container_id
            ))
            .or_else(|_| {
                std::fs::read_to_string(format!("/sys/fs/cgroup/dea/{}/{file}", info.container_id))
            })
            .ok()
        };
        let mem_bytes = cgroup("memory.usage_in_bytes")
            .or_else(|| cgroup("memory.current"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let cpu = self.cpu_fraction(&info.container_id).await;
        let home = info.dir.join("home");
        let (container_id, max_files) = (info.container_id.clone(), self.settings.max_files);
        let max_depth = self.settings.max_dir_depth;
        let disk_bytes = tokio::task::spawn_blocking(move || {
            disk::usage(&home, &container_id, max_files, max_depth).map_or(0, |u| u.bytes)
        })
        .await
        .unwrap_or(0);
        Some(Usage {
            mem_bytes,
            disk_bytes,
            cpu,
        })
    }

    /// CPU used over a short sample, as a fraction of one core (cgroup cpuacct).
    async fn cpu_fraction(&self, container_id: &str) -> f64 {
        let read = || {
            std::fs::read_to_string(format!(
                "/sys/fs/cgroup/cpuacct/dea/{container_id}/cpuacct.usage"
            ))
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let Some(before) = read() else {
            return 0.0;
        };
        let window = Duration::from_millis(100);
        tokio::time::sleep(window).await;
        let after = read().unwrap_or(before);
        after.saturating_sub(before) as f64 / window.as_nanos() as f64
    }

    /// Lets go of every instance without stopping it, as an agent that exits (or dies)
    /// does; a later [`InstanceManager::recover`] picks them up.
    pub async fn abandon(&self) {
        let handles: Vec<Arc<Handle>> = self.instances.read().values().cloned().collect();
        for handle in handles {
            if let Some(control) = handle.control.lock().take() {
                let _ = control.send(Control::Abandon);
            }
        }
        // Give the monitors a moment to release their listeners.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    /// When no instance holds a network any more (after a shutdown that stopped them all),
    /// removes this agent's nftables table: a host the agent has left keeps nothing of it.
    pub async fn release_network_if_idle(&self) {
        let idle = self
            .list()
            .iter()
            .all(|info| info.network.is_none() || !info.holds_resources());
        if idle {
            let network = self.network.clone();
            match tokio::task::spawn_blocking(move || network.uninstall()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("removing the instance network table: {e}"),
                Err(e) => tracing::warn!("removing the instance network table: {e}"),
            }
        }
    }

    /// Stops an instance: TERM, then KILL after the grace period. Returns its final info.
    pub async fn stop(&self, id: &str) -> Result<InstanceInfo, InstanceError> {
        let handle = self
            .instances
            .read()
            .get(id)
            .cloned()
            .ok_or_else(|| InstanceError::Unknown(id.to_string()))?;
        if let Some(control) = handle.control.lock().take() {
            let _ = control.send(Control::Stop);
        }
        let mut done = handle.done.clone();
        while !*done.borrow() {
            if done.changed().await.is_err() {
                break;
            }
        }
        Ok(handle.info.lock().clone())
    }

    /// Waits until the instance leaves STARTING/RUNNING (crash or stop), up to `limit`.
    pub async fn wait_until_finished(&self, id: &str, limit: Duration) -> Option<InstanceInfo> {
        let handle = self.instances.read().get(id).cloned()?;
        let mut done = handle.done.clone();
        let _ = tokio::time::timeout(limit, async {
            while !*done.borrow() {
                if done.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
        Some(handle.info.lock().clone())
    }
}

fn new_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!("{:016x}{:016x}", rand_u64(), rand_u64() ^ nanos)
}

/// 64 random bits from the standard library's per-instance SipHash keys.
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(u64::from(std::process::id()));
    hasher.finish()
}
