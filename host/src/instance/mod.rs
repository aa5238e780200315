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

pub mod disk;
mod home;

use home::PreparedHome;

use crate::container::{BindMount, ContainerSpec, Runc, RunningContainer};
use crate::droplet::{self, UnpackLimits};
use crate::netns::NetNamespace;
use crate::tenant_fs::{Links, TenantDir};
pub use droplet_store::{DropletError, DropletStore};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The port apps listen on inside their container (each has its own network namespace).
pub const CONTAINER_PORT: u16 = 8080;

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

    /// Parses a wire name; `None` for anything else.
    pub fn from_name(name: &str) -> Option<InstanceState> {
        [
            InstanceState::Born,
            InstanceState::Starting,
            InstanceState::Running,
            InstanceState::Stopping,
            InstanceState::Stopped,
            InstanceState::Crashed,
            InstanceState::Resuming,
            InstanceState::Evacuating,
        ]
        .into_iter()
        .find(|s| s.name() == name)
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

/// Memory and disk held by a staging task (the DEA reserves both from the same pool as
/// instances).
#[derive(Debug, Clone, Copy)]
struct Reservation {
    memory_mb: u64,
    disk_mb: u64,
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

/// What the monitor of an instance is told.
enum Control {
    /// TERM, grace period, KILL, STOPPED.
    Stop,
    /// Let go without touching the container (an agent going away; tests use it to
    /// simulate a crash of the agent).
    Abandon,
}

/// The container's main process, as this agent knows it.
enum Process {
    /// Started by this agent: its `runc run` child.
    Child(RunningContainer),
    /// Found running after a restart: watched through `runc state`.
    Adopted {
        runc: Runc,
        id: String,
        home: PathBuf,
    },
}

impl Process {
    async fn wait(&mut self) -> i32 {
        match self {
            Process::Child(container) => container.wait().await,
            Process::Adopted { runc, id, home } => loop {
                if runc.pid_of(id).await.is_none() {
                    // The start script records the app's status on its way out, in the
                    // app's own home: read it as a tenant's file (it could be a FIFO or a
                    // link to /dev/zero by now).
                    let home = home.clone();
                    let status = tokio::task::spawn_blocking(move || {
                        TenantDir::open(&home)
                            .and_then(|dir| {
                                dir.read_string(Path::new("exit_status"), Links::Refuse, 64)
                            })
                            .ok()
                            .flatten()
                            .and_then(|s| s.trim().parse().ok())
                    })
                    .await;
                    return status.ok().flatten().unwrap_or(255);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            },
        }
    }

    async fn signal(&self, signal: &str) {
        match self {
            Process::Child(container) => container.signal(signal).await,
            Process::Adopted { runc, id, .. } => runc.signal_container(id, signal).await,
        }
    }

    async fn remove(self) {
        match self {
            Process::Child(container) => container.remove().await,
            Process::Adopted { runc, id, .. } => runc.remove_container(&id).await,
        }
    }
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
    /// The host address instance ports are published on.
    pub publish_address: String,
    /// Most files and directories an instance's home may hold (an inode limit).
    pub max_files: u64,
    /// Deepest nesting of directories accepted in a droplet.
    pub max_dir_depth: usize,
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
            disk_check_interval: Duration::from_secs(5),
            publish_address: instances.publish_address.clone(),
            max_files: instances.max_files,
            max_dir_depth: config.staging.max_dir_depth,
        }
    }
}

/// The registry of instances on this host.
pub struct InstanceManager {
    settings: InstanceSettings,
    runc: Runc,
    droplets: DropletStore,
    instances: Mutex<HashMap<String, Arc<Handle>>>,
    /// Staging tasks' reservations, by task id.
    staging: Mutex<HashMap<String, Reservation>>,
    /// Every state change, for the NATS agent (routes, heartbeats, `droplet.exited`).
    events: tokio::sync::broadcast::Sender<InstanceInfo>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl InstanceManager {
    pub fn new(mut settings: InstanceSettings, runc: Runc) -> Arc<InstanceManager> {
        // Bind-mount sources must be absolute for runc.
        if let Ok(absolute) = std::path::absolute(&settings.base_dir) {
            settings.base_dir = absolute;
        }
        // A droplet is gzip'd: what it unpacks to is capped separately, at the same figure.
        let droplets = DropletStore::with_limit(
            settings.base_dir.join("droplets"),
            settings.max_droplet_mb << 20,
        );
        Arc::new(InstanceManager {
            settings,
            runc,
            droplets,
            instances: Mutex::new(HashMap::new()),
            staging: Mutex::new(HashMap::new()),
            events: tokio::sync::broadcast::channel(4096).0,
        })
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
            let mut info = lock(&handle.info);
            info.set_state(state);
            info.clone()
        };
        self.save_snapshot();
        let _ = self.events.send(info);
    }

    pub fn get(&self, id: &str) -> Option<InstanceInfo> {
        lock(&self.instances).get(id).map(|h| lock(&h.info).clone())
    }

    pub fn list(&self) -> Vec<InstanceInfo> {
        lock(&self.instances)
            .values()
            .map(|h| lock(&h.info).clone())
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
            let mut instances = lock(&self.instances);
            let refused = request
                .refusal
                .clone()
                .or_else(|| self.refuse_for_resources(&instances, &request));
            instances.insert(id.clone(), handle.clone());
            refused
        };
        if let Some(message) = refused {
            lock(&handle.info).exit_description = Some(message);
            self.enter(&handle, InstanceState::Crashed);
            let _ = done_tx.send(true);
            return Ok(lock(&handle.info).clone());
        }
        self.enter(&handle, InstanceState::Starting);

        let prepared = self.prepare(&handle, &request).await;
        let (container, namespace, forwarder) = match prepared {
            Ok(parts) => parts,
            Err(error) => {
                lock(&handle.info).exit_description = Some(error.to_string());
                self.enter(&handle, InstanceState::Crashed);
                let _ = done_tx.send(true);
                return Ok(lock(&handle.info).clone());
            }
        };
        let manager = self.clone();
        let monitor_handle = handle.clone();
        let health = request.health_check.then_some(request.health_check_timeout);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            manager
                .monitor(
                    monitor_handle,
                    Process::Child(container),
                    namespace,
                    forwarder,
                    control_rx,
                    health,
                    ready_tx,
                )
                .await;
            let _ = done_tx.send(true);
        });
        let _ = ready_rx.await;
        Ok(lock(&handle.info).clone())
    }

    /// Droplet, directories, network and container: everything up to a running process.
    async fn prepare(
        &self,
        handle: &Arc<Handle>,
        request: &StartRequest,
    ) -> Result<(RunningContainer, NetNamespace, tokio::task::JoinHandle<()>), InstanceError> {
        let setup = |e: &dyn std::fmt::Display| InstanceError::Setup(e.to_string());
        let timer = std::time::Instant::now();
        let record = |step: &str, since: std::time::Instant| {
            lock(&handle.info)
                .start_timings_ms
                .insert(step.to_string(), since.elapsed().as_secs_f64() * 1000.0);
        };
        let (droplet_path, sha1) = self
            .droplets
            .get(&request.droplet, request.sha1.as_deref())
            .await?;
        record("droplet", timer);
        let timer = std::time::Instant::now();
        let dir = lock(&handle.info).dir.clone();
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

        let netns_name = lock(&handle.info).netns.clone();
        let _ = NetNamespace::existing(&netns_name); // a stale one from an earlier agent goes
        let namespace = NetNamespace::create_named(&netns_name).map_err(|e| setup(&e))?;
        let listener = tokio::net::TcpListener::bind((
            self.settings.publish_address.as_str(),
            request.host_port,
        ))
        .await
        .map_err(|e| setup(&format!("publishing port {}: {e}", request.host_port)))?;
        let host_port = listener.local_addr().map_err(|e| setup(&e))?.port();
        {
            let mut info = lock(&handle.info);
            info.droplet_sha1 = sha1;
            info.host_port = host_port;
            info.start_command = Some(command.clone());
        }
        let info = lock(&handle.info).clone();
        let spec = self.container_spec(&info, request, &home, &namespace, &command);
        let container = self
            .runc
            .spawn(&spec, prepared.stdout, prepared.stderr)
            .await
            .map_err(|e| setup(&e))?;
        let forwarder = tokio::spawn(publish(listener, namespace.path()));
        record("container", timer);
        Ok((container, namespace, forwarder))
    }

    fn container_spec(
        &self,
        info: &InstanceInfo,
        request: &StartRequest,
        home: &std::path::Path,
        namespace: &NetNamespace,
        command: &str,
    ) -> ContainerSpec {
        let started = info.state_timestamp as u64;
        // The controller's part first, then what only the agent knows (§4.3).
        let mut vcap_application = match &request.vcap_application {
            serde_json::Value::Object(map) => map.clone(),
            _ => serde_json::Map::new(),
        };
        let ours = serde_json::json!({
            "application_id": request.application_id,
            "application_name": request.name,
            "application_version": request.version,
            "application_uris": request.uris,
            "instance_id": info.instance_id,
            "instance_index": request.index,
            "host": "0.0.0.0",
            "port": CONTAINER_PORT,
            "started_at_timestamp": started,
            "state_timestamp": started,
            "limits": {"mem": request.memory_mb, "disk": request.disk_mb, "fds": request.fds},
        });
        if let serde_json::Value::Object(ours) = ours {
            for (key, value) in ours {
                vcap_application.entry(key).or_insert(value);
            }
        }
        let vcap_application = serde_json::Value::Object(vcap_application);
        let vcap_services = match &request.services {
            serde_json::Value::Null => "{}".to_string(),
            services => services.to_string(),
        };
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
            ("VCAP_APPLICATION".into(), vcap_application.to_string()),
            ("VCAP_SERVICES".into(), vcap_services),
            ("MEMORY_LIMIT".into(), format!("{}m", request.memory_mb)),
            ("HOME".into(), "/home/vcap/app".into()),
            ("TMPDIR".into(), "/home/vcap/tmp".into()),
            ("VCAP_APP_HOST".into(), "0.0.0.0".into()),
            ("VCAP_APP_PORT".into(), CONTAINER_PORT.to_string()),
            ("PORT".into(), CONTAINER_PORT.to_string()),
            ("CF_INSTANCE_INDEX".into(), request.index.to_string()),
            ("CF_INSTANCE_IP".into(), "127.0.0.1".into()),
            ("CF_INSTANCE_PORT".into(), CONTAINER_PORT.to_string()),
            (
                "CF_INSTANCE_ADDR".into(),
                format!("127.0.0.1:{}", info.host_port),
            ),
            (
                "CF_INSTANCE_PORTS".into(),
                format!(
                    "[{{\"external\":{},\"internal\":{CONTAINER_PORT}}}]",
                    info.host_port
                ),
            ),
            ("CF_INSTANCE_GUID".into(), info.instance_id.clone()),
            ("LANG".into(), "C.UTF-8".into()),
        ];
        env.extend(request.env.iter().cloned());
        // Source .profile.d (after the app's own variables, so scripts can default them),
        // then run the start command as a child: this shell is PID 1 of the container, which
        // the kernel shields from signals it does not handle, so it forwards TERM itself.
        let script = "umask 077; unset GEM_PATH; \
            if [ -d app/.profile.d ]; then for i in app/.profile.d/*.sh; do [ -r \"$i\" ] && . \"$i\"; done; unset i; fi; \
            [ -r app/.profile ] && . app/.profile; \
            DROPLET_BASE_DIR=$PWD; cd app; \
            bash -c \"$1\" & child=$!; echo $child >> \"$DROPLET_BASE_DIR/run.pid\"; \
            trap 'kill -TERM $child 2>/dev/null' TERM INT; \
            wait $child; status=$?; \
            while kill -0 $child 2>/dev/null; do wait $child; status=$?; done; \
            echo $status > \"$DROPLET_BASE_DIR/exit_status\"; exit $status";
        ContainerSpec {
            id: info.container_id.clone(),
            args: vec![
                "/bin/bash".into(),
                "-c".into(),
                script.into(),
                "dea-start".into(),
                command.into(),
            ],
            env,
            cwd: "/home/vcap".into(),
            mounts: vec![
                BindMount {
                    source: home.to_path_buf(),
                    destination: "/home/vcap".into(),
                    read_only: false,
                },
                // /app is the same directory, as a bind mount: works on any filesystem.
                BindMount {
                    source: home.join("app"),
                    destination: "/app".into(),
                    read_only: false,
                },
            ],
            uid: self.settings.uid,
            gid: self.settings.gid,
            memory_limit_bytes: (request.memory_mb << 20) as i64,
            pids_limit: self.settings.pids_limit,
            timeout: Duration::MAX,
            tmp_size_mb: 64,
            network_namespace: Some(namespace.path()),
            file_mounts: Vec::new(),
            hostname: info.instance_id.chars().take(12).collect(),
        }
    }

    /// Health check, then waits for the process to exit or a stop; records the outcome.
    #[allow(clippy::too_many_arguments)]
    async fn monitor(
        &self,
        handle: Arc<Handle>,
        mut container: Process,
        namespace: NetNamespace,
        forwarder: tokio::task::JoinHandle<()>,
        mut control: tokio::sync::oneshot::Receiver<Control>,
        health: Option<Duration>,
        ready: tokio::sync::oneshot::Sender<()>,
    ) {
        let namespace = Arc::new(namespace);
        let mut ready = Some(ready);
        let health_started = std::time::Instant::now();
        let healthy = match health {
            None => Health::Healthy,
            Some(limit) => {
                tokio::select! {
                    ok = wait_for_port(namespace.clone(), limit) => {
                        if ok { Health::Healthy } else { Health::Unhealthy }
                    }
                    code = container.wait() => Health::Exited(code),
                    order = &mut control => Health::Ordered(order.unwrap_or(Control::Abandon)),
                }
            }
        };
        let exit = match healthy {
            Health::Healthy => {
                let resumed_state = {
                    let mut info = lock(&handle.info);
                    info.start_timings_ms.insert(
                        "health_check".into(),
                        health_started.elapsed().as_secs_f64() * 1000.0,
                    );
                    // An instance adopted while the agent was evacuating stays EVACUATING.
                    if info.state == InstanceState::Evacuating {
                        InstanceState::Evacuating
                    } else {
                        InstanceState::Running
                    }
                };
                self.enter(&handle, resumed_state);
                if let Some(ready) = ready.take() {
                    let _ = ready.send(());
                }
                let (home, limit_mb, container_id) = {
                    let info = lock(&handle.info);
                    (
                        info.dir.join("home"),
                        info.disk_mb,
                        info.container_id.clone(),
                    )
                };
                let mut disk_check = tokio::time::interval(self.settings.disk_check_interval);
                loop {
                    tokio::select! {
                        code = container.wait() => break Ending::Exited(code),
                        order = &mut control => {
                            break Ending::Ordered(order.unwrap_or(Control::Abandon));
                        }
                        _ = disk_check.tick() => {
                            let (dir, container_id) = (home.clone(), container_id.clone());
                            let max_files = self.settings.max_files;
                            let used = tokio::task::spawn_blocking(move || {
                                disk::usage(&dir, &container_id, max_files)
                            })
                            .await;
                            let over = match used {
                                Ok(Ok(usage)) if usage.bytes > limit_mb << 20 => Some(format!(
                                    "app instance exceeded its disk limit of {limit_mb} MiB"
                                )),
                                Ok(Err(disk::DiskError::TooManyFiles { limit })) => Some(format!(
                                    "app instance exceeded its limit of {limit} files and directories"
                                )),
                                Ok(Err(e)) => {
                                    tracing::warn!("measuring an instance's disk: {e}");
                                    None
                                }
                                _ => None,
                            };
                            if let Some(reason) = over {
                                lock(&handle.info).exit_description = Some(reason);
                                container.signal("KILL").await;
                                break Ending::Exited(container.wait().await);
                            }
                        }
                    }
                }
            }
            Health::Unhealthy => {
                let index = lock(&handle.info).instance_id.clone();
                lock(&handle.info).exit_description = Some(format!(
                    "Instance {index} failed to start accepting connections"
                ));
                container.signal("KILL").await;
                Ending::Exited(container.wait().await)
            }
            Health::Exited(code) => Ending::Exited(code),
            Health::Ordered(order) => Ending::Ordered(order),
        };
        match exit {
            Ending::Ordered(Control::Abandon) => {
                // The agent goes; the container, its namespace and its logs stay.
                forwarder.abort();
                if let Ok(namespace) = Arc::try_unwrap(namespace) {
                    namespace.leak();
                }
                if let Some(ready) = ready.take() {
                    let _ = ready.send(());
                }
                if let Process::Child(child) = container {
                    std::mem::forget(child);
                }
                return;
            }
            Ending::Exited(code) => {
                {
                    let mut info = lock(&handle.info);
                    if info.exit_description.is_none() {
                        info.exit_description = Some(if code == 137 {
                            // The cgroup (and its OOM counter) is gone by now; inside the
                            // container nothing else sends SIGKILL.
                            format!(
                                "app instance was killed (SIGKILL), most likely out of memory (limit {} MiB)",
                                info.memory_mb
                            )
                        } else {
                            format!("app instance exited with status {code}")
                        });
                    }
                    info.exit_status = Some(code);
                }
                self.keep_crash_logs(&handle).await;
                self.enter(&handle, InstanceState::Crashed);
            }
            Ending::Ordered(Control::Stop) => {
                self.enter(&handle, InstanceState::Stopping);
                container.signal("TERM").await;
                let exited = tokio::time::timeout(self.settings.stop_grace, container.wait()).await;
                if exited.is_err() {
                    container.signal("KILL").await;
                    container.wait().await;
                }
                self.enter(&handle, InstanceState::Stopped);
                // Stopped instances leave the registry, as in the DEA.
                let id = lock(&handle.info).instance_id.clone();
                lock(&self.instances).remove(&id);
            }
        }
        forwarder.abort();
        container.remove().await;
        drop(namespace);
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
    }

    /// Removes kept crash logs older than `crash_lifetime`.
    /// Also drops CRASHED instances from the registry as the DEA's reaper does: past
    /// `crash_lifetime`, and all but the most recent crash of each app.
    pub fn reap_crashes(&self) {
        let lifetime = self.settings.crash_lifetime.as_secs_f64();
        let now = now_secs();
        let pruned = {
            let mut instances = lock(&self.instances);
            let mut latest: HashMap<String, (f64, String)> = HashMap::new();
            let mut expired = Vec::new();
            for (id, handle) in instances.iter() {
                let info = lock(&handle.info);
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
        let info = lock(&handle.info).clone();
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

    /// CF's refusal when a start does not fit the host's (overcommitted) capacity.
    fn refuse_for_resources(
        &self,
        instances: &HashMap<String, Arc<Handle>>,
        request: &StartRequest,
    ) -> Option<String> {
        let (memory, disk) = self.remaining_in(instances);
        if request.memory_mb > memory {
            Some("Not enough memory resource available.".into())
        } else if request.disk_mb > disk {
            Some("Not enough disk resource available.".into())
        } else {
            None
        }
    }

    /// Memory and disk (MiB) not yet reserved by instances or staging tasks.
    fn remaining_in(&self, instances: &HashMap<String, Arc<Handle>>) -> (u64, u64) {
        let (mut memory, mut disk) = (0u64, 0u64);
        for handle in instances.values() {
            let info = lock(&handle.info);
            if info.holds_resources() {
                memory += info.memory_mb;
            }
            // A crashed instance's files are still on disk (the DEA counts them too).
            if info.holds_resources() || info.state == InstanceState::Crashed {
                disk += info.disk_mb;
            }
        }
        for reservation in lock(&self.staging).values() {
            memory += reservation.memory_mb;
            disk += reservation.disk_mb;
        }
        let settings = &self.settings;
        let memory_cap = settings.memory_capacity_mb as f64 * settings.memory_overcommit_factor;
        let disk_cap = settings.disk_capacity_mb as f64 * settings.disk_overcommit_factor;
        (
            (memory_cap as u64).saturating_sub(memory),
            (disk_cap as u64).saturating_sub(disk),
        )
    }

    /// Memory and disk (MiB) still free for new instances and stagings.
    pub fn remaining(&self) -> (u64, u64) {
        let instances = lock(&self.instances);
        self.remaining_in(&instances)
    }

    /// Reserves memory and disk for a staging task; CF's refusal message when they do not fit.
    pub fn reserve_staging(
        &self,
        task_id: &str,
        memory_mb: u64,
        disk_mb: u64,
    ) -> Result<(), String> {
        let instances = lock(&self.instances);
        let (memory, disk) = self.remaining_in(&instances);
        if memory_mb > memory {
            return Err("Not enough memory resources available".into());
        }
        if disk_mb > disk {
            return Err("Not enough disk resources available".into());
        }
        lock(&self.staging).insert(task_id.to_string(), Reservation { memory_mb, disk_mb });
        Ok(())
    }

    pub fn release_staging(&self, task_id: &str) {
        lock(&self.staging).remove(task_id);
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
        let handles: Vec<Arc<Handle>> = lock(&self.instances).values().cloned().collect();
        for handle in handles {
            let live = matches!(
                lock(&handle.info).state,
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
        let mut instances = lock(&self.instances);
        let handle = instances.get(id).cloned()?;
        let info = {
            let mut info = lock(&handle.info);
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
        let disk_bytes = tokio::task::spawn_blocking(move || {
            disk::usage(&home, &container_id, max_files).map_or(0, |u| u.bytes)
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

    fn snapshot_path(&self) -> PathBuf {
        self.settings.base_dir.join("db").join("instances.json")
    }

    /// Writes the registry to `db/instances.json` (atomically) so a restarted agent can
    /// find its instances. STOPPED ones are gone from the registry, as in the DEA.
    fn save_snapshot(&self) {
        let instances: Vec<InstanceInfo> = self
            .list()
            .into_iter()
            .filter(|info| info.state != InstanceState::Stopped)
            .collect();
        let snapshot = serde_json::json!({ "instances": instances });
        let path = self.snapshot_path();
        let written =
            crate::config::ensure_private_dir(path.parent().unwrap_or(&self.settings.base_dir))
                .and_then(|()| {
                    let bytes = serde_json::to_vec_pretty(&snapshot).unwrap_or_default();
                    crate::fetch::write_atomic(&path, &bytes)
                });
        if let Err(e) = written {
            tracing::warn!("saving instance snapshot {}: {e}", path.display());
        }
    }

    /// A manager for a restarted agent: re-attaches to the containers of its snapshot that
    /// still run (RESUMING → RUNNING, the app untouched) and marks the rest CRASHED.
    pub async fn recover(settings: InstanceSettings, runc: Runc) -> Arc<InstanceManager> {
        let manager = InstanceManager::new(settings, runc);
        let text = std::fs::read_to_string(manager.snapshot_path()).unwrap_or_default();
        let saved: Vec<InstanceInfo> = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| serde_json::from_value(v["instances"].clone()).ok())
            .unwrap_or_default();
        for mut info in saved {
            let alive = manager.runc.pid_of(&info.container_id).await.is_some();
            let namespace = NetNamespace::existing(&info.netns);
            let (control_tx, control_rx) = tokio::sync::oneshot::channel();
            let (done_tx, done_rx) = tokio::sync::watch::channel(false);
            let resumable = alive
                && matches!(
                    info.state,
                    InstanceState::Running | InstanceState::Resuming | InstanceState::Evacuating
                );
            let listener = if resumable {
                let address = manager.settings.publish_address.as_str();
                tokio::net::TcpListener::bind((address, info.host_port))
                    .await
                    .ok()
            } else {
                None
            };
            match (namespace, listener) {
                (Some(namespace), Some(listener)) if resumable => {
                    // RESUMING until the monitor has re-attached, then back to what it was.
                    let was = info.state;
                    info.set_state(InstanceState::Resuming);
                    if was == InstanceState::Evacuating {
                        info.state = InstanceState::Evacuating;
                    }
                    let handle = Arc::new(Handle {
                        info: Mutex::new(info.clone()),
                        control: Mutex::new(Some(control_tx)),
                        done: done_rx,
                    });
                    lock(&manager.instances).insert(info.instance_id.clone(), handle.clone());
                    let forwarder = tokio::spawn(publish(listener, namespace.path()));
                    let process = Process::Adopted {
                        runc: manager.runc.clone(),
                        id: info.container_id.clone(),
                        home: info.dir.join("home"),
                    };
                    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
                    let monitor = manager.clone();
                    tokio::spawn(async move {
                        monitor
                            .monitor(
                                handle, process, namespace, forwarder, control_rx, None, ready_tx,
                            )
                            .await;
                        let _ = done_tx.send(true);
                    });
                    let _ = ready_rx.await;
                }
                (namespace, _) => {
                    if info.holds_resources() {
                        info.exit_description =
                            Some("instance was gone when the agent restarted".into());
                        info.set_state(InstanceState::Crashed);
                    }
                    if alive {
                        manager
                            .runc
                            .signal_container(&info.container_id, "KILL")
                            .await;
                        manager.runc.remove_container(&info.container_id).await;
                    }
                    drop(namespace);
                    let _ = done_tx.send(true);
                    let handle = Arc::new(Handle {
                        info: Mutex::new(info.clone()),
                        control: Mutex::new(None),
                        done: done_rx,
                    });
                    lock(&manager.instances).insert(info.instance_id.clone(), handle);
                }
            }
        }
        manager.save_snapshot();
        manager
    }

    /// Lets go of every instance without stopping it, as an agent that exits (or dies)
    /// does; a later [`InstanceManager::recover`] picks them up.
    pub async fn abandon(&self) {
        let handles: Vec<Arc<Handle>> = lock(&self.instances).values().cloned().collect();
        for handle in handles {
            if let Some(control) = lock(&handle.control).take() {
                let _ = control.send(Control::Abandon);
            }
        }
        // Give the monitors a moment to release their listeners.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    /// Stops an instance: TERM, then KILL after the grace period. Returns its final info.
    pub async fn stop(&self, id: &str) -> Result<InstanceInfo, InstanceError> {
        let handle = lock(&self.instances)
            .get(id)
            .cloned()
            .ok_or_else(|| InstanceError::Unknown(id.to_string()))?;
        if let Some(control) = lock(&handle.control).take() {
            let _ = control.send(Control::Stop);
        }
        let mut done = handle.done.clone();
        while !*done.borrow() {
            if done.changed().await.is_err() {
                break;
            }
        }
        Ok(lock(&handle.info).clone())
    }

    /// Waits until the instance leaves STARTING/RUNNING (crash or stop), up to `limit`.
    pub async fn wait_until_finished(&self, id: &str, limit: Duration) -> Option<InstanceInfo> {
        let handle = lock(&self.instances).get(id).cloned()?;
        let mut done = handle.done.clone();
        let _ = tokio::time::timeout(limit, async {
            while !*done.borrow() {
                if done.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
        Some(lock(&handle.info).clone())
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

/// How the start's health check ended.
enum Health {
    Healthy,
    Unhealthy,
    Exited(i32),
    Ordered(Control),
}

/// How an instance's life ended, as far as this agent is concerned.
enum Ending {
    Exited(i32),
    Ordered(Control),
}

/// Polls the app's port inside its namespace until it accepts a connection; false when
/// `limit` passes first.
async fn wait_for_port(namespace: Arc<NetNamespace>, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let ns = namespace.clone();
        let connected = tokio::task::spawn_blocking(move || {
            ns.connect(&format!("127.0.0.1:{CONTAINER_PORT}")).is_ok()
        })
        .await
        .unwrap_or(false);
        if connected {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Forwards connections on the host port into the instance's namespace.
async fn publish(listener: tokio::net::TcpListener, namespace: PathBuf) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let namespace = namespace.clone();
        tokio::spawn(async move {
            let outbound = tokio::task::spawn_blocking(move || {
                crate::netns::connect_in(&namespace, &format!("127.0.0.1:{CONTAINER_PORT}"))
            })
            .await;
            let Ok(Ok(outbound)) = outbound else {
                return;
            };
            if outbound.set_nonblocking(true).is_err() {
                return;
            }
            let Ok(mut outbound) = tokio::net::TcpStream::from_std(outbound) else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
        });
    }
}
