//! Running droplets as instances.
//!
//! The [`InstanceManager`] takes a start request through the DEA's sequence (reference
//! dea_ng.md §4.2–4.4): get the droplet (stored once per SHA-1), unpack it under the
//! instance's `home/vcap`, start a runc container (stack read-only, `/home/vcap` and `/app`
//! bind-mounted from the instance directory, non-root, memory and pids limits, its own network
//! namespace), run the start script (environment, `.profile.d`, exec of the start command),
//! publish the app's port on a host port, and health-check it. States go BORN → STARTING →
//! RUNNING → STOPPING → STOPPED, or CRASHED, each change timestamped. The app's stdout and
//! stderr are files under the instance's `logs/`; a crashed instance's logs are kept under
//! `crashes/`.

pub mod droplet_store;

use crate::container::{BindMount, ContainerSpec, Runc, RunningContainer};
use crate::droplet::{self, UnpackLimits};
use crate::netns::NetNamespace;
pub use droplet_store::{DropletError, DropletStore};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
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
}

/// What to run.
#[derive(Debug, Clone)]
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
    pub start_command: Option<String>,
    /// Wait for the port to accept connections (CF does when the app has routes).
    pub health_check: bool,
    pub health_check_timeout: Duration,
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
}

impl InstanceInfo {
    fn set_state(&mut self, state: InstanceState) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.state = state;
        self.state_timestamp = now;
        let name = serde_json::to_value(state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        self.state_timestamps.insert(name, now);
    }
}

struct Handle {
    info: Mutex<InstanceInfo>,
    stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
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
}

/// The registry of instances on this host.
pub struct InstanceManager {
    settings: InstanceSettings,
    runc: Runc,
    droplets: DropletStore,
    instances: Mutex<HashMap<String, Arc<Handle>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl InstanceManager {
    pub fn new(settings: InstanceSettings, runc: Runc) -> Arc<InstanceManager> {
        let droplets = DropletStore::new(settings.base_dir.join("droplets"));
        Arc::new(InstanceManager {
            settings,
            runc,
            droplets,
            instances: Mutex::new(HashMap::new()),
        })
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
        };
        info.set_state(InstanceState::Born);
        info.set_state(InstanceState::Starting);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let (done_tx, done_rx) = tokio::sync::watch::channel(false);
        let handle = Arc::new(Handle {
            info: Mutex::new(info),
            stop: Mutex::new(Some(stop_tx)),
            done: done_rx,
        });
        lock(&self.instances).insert(id.clone(), handle.clone());

        let prepared = self.prepare(&handle, &request).await;
        let (container, namespace, forwarder) = match prepared {
            Ok(parts) => parts,
            Err(error) => {
                let mut info = lock(&handle.info);
                info.exit_description = Some(error.to_string());
                info.set_state(InstanceState::Crashed);
                let _ = done_tx.send(true);
                return Ok(info.clone());
            }
        };
        let namespace = Arc::new(namespace);
        let manager = self.clone();
        let monitor_handle = handle.clone();
        let health = request.health_check.then_some(request.health_check_timeout);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            manager
                .monitor(
                    monitor_handle,
                    container,
                    namespace,
                    forwarder,
                    stop_rx,
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
        let (droplet_path, sha1) = self
            .droplets
            .get(&request.droplet, request.sha1.as_deref())
            .await?;
        let dir = lock(&handle.info).dir.clone();
        let home = dir.join("home");
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(|e| setup(&e))?;
        let limits = UnpackLimits {
            max_bytes: self.settings.max_droplet_mb << 20,
            max_files: 1_000_000,
        };
        let (from, to) = (droplet_path.clone(), home.clone());
        tokio::task::spawn_blocking(move || droplet::unpack_source(&from, &to, limits))
            .await
            .map_err(|e| setup(&e))??;
        std::fs::create_dir_all(home.join("app")).map_err(|e| setup(&e))?;
        std::fs::create_dir_all(home.join("tmp")).map_err(|e| setup(&e))?;
        let staged_command = std::fs::read_to_string(home.join("staging_info.yml"))
            .ok()
            .and_then(|text| serde_yaml::from_str::<serde_yaml::Value>(&text).ok())
            .and_then(|v| v["start_command"].as_str().map(str::to_string));
        let command = request
            .start_command
            .clone()
            .or(staged_command)
            .ok_or(InstanceError::MissingStartCommand)?;
        crate::buildpack::classic::chown_tree(&home, self.settings.uid, self.settings.gid)
            .map_err(|e| setup(&e))?;

        let namespace = NetNamespace::create().map_err(|e| setup(&e))?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", request.host_port))
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
        let stdout = std::fs::File::create(logs.join("stdout.log")).map_err(|e| setup(&e))?;
        let stderr = std::fs::File::create(logs.join("stderr.log")).map_err(|e| setup(&e))?;
        let container = self
            .runc
            .spawn(&spec, stdout, stderr)
            .await
            .map_err(|e| setup(&e))?;
        let forwarder = tokio::spawn(publish(listener, namespace.path()));
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
        let vcap_application = serde_json::json!({
            "application_id": request.application_id,
            "application_name": request.name,
            "instance_id": info.instance_id,
            "instance_index": request.index,
            "host": "0.0.0.0",
            "port": CONTAINER_PORT,
            "started_at_timestamp": started,
            "state_timestamp": started,
            "limits": {"mem": request.memory_mb},
        });
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
            ("VCAP_APPLICATION".into(), vcap_application.to_string()),
            ("VCAP_SERVICES".into(), "{}".into()),
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
            exit $status";
        ContainerSpec {
            id: format!("dea-app-{}", info.instance_id),
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
        mut container: RunningContainer,
        namespace: Arc<NetNamespace>,
        forwarder: tokio::task::JoinHandle<()>,
        mut stop_rx: tokio::sync::oneshot::Receiver<()>,
        health: Option<Duration>,
        ready: tokio::sync::oneshot::Sender<()>,
    ) {
        let mut ready = Some(ready);
        let healthy = match health {
            None => Health::Healthy,
            Some(limit) => {
                tokio::select! {
                    ok = wait_for_port(namespace.clone(), limit) => {
                        if ok { Health::Healthy } else { Health::Unhealthy }
                    }
                    code = container.wait() => Health::Exited(code),
                    _ = &mut stop_rx => Health::StopRequested,
                }
            }
        };
        let exit = match healthy {
            Health::Healthy => {
                lock(&handle.info).set_state(InstanceState::Running);
                if let Some(ready) = ready.take() {
                    let _ = ready.send(());
                }
                tokio::select! {
                    code = container.wait() => Some(code),
                    _ = &mut stop_rx => None,
                }
            }
            Health::Unhealthy => {
                let index = lock(&handle.info).instance_id.clone();
                lock(&handle.info).exit_description = Some(format!(
                    "Instance {index} failed to start accepting connections"
                ));
                container.signal("KILL").await;
                Some(container.wait().await)
            }
            Health::Exited(code) => Some(code),
            Health::StopRequested => None,
        };
        match exit {
            Some(code) => {
                {
                    let mut info = lock(&handle.info);
                    if info.exit_description.is_none() {
                        info.exit_description = Some(if code == 137 {
                            "app instance was killed (SIGKILL): out of memory or killed".into()
                        } else {
                            "app instance exited".into()
                        });
                    }
                    info.exit_status = Some(code);
                    info.set_state(InstanceState::Crashed);
                }
                self.keep_crash_logs(&handle);
            }
            None => {
                lock(&handle.info).set_state(InstanceState::Stopping);
                container.signal("TERM").await;
                let exited = tokio::time::timeout(self.settings.stop_grace, container.wait()).await;
                if exited.is_err() {
                    container.signal("KILL").await;
                    container.wait().await;
                }
                lock(&handle.info).set_state(InstanceState::Stopped);
            }
        }
        forwarder.abort();
        container.remove().await;
        drop(namespace);
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
    }

    fn keep_crash_logs(&self, handle: &Handle) {
        let info = lock(&handle.info).clone();
        let target = self
            .settings
            .base_dir
            .join("crashes")
            .join(&info.instance_id)
            .join("logs");
        if std::fs::create_dir_all(&target).is_ok() {
            for name in ["stdout.log", "stderr.log"] {
                let _ = std::fs::copy(info.dir.join("logs").join(name), target.join(name));
            }
        }
    }

    /// The host pid of an instance's main process, while it runs.
    pub async fn pid(&self, id: &str) -> Option<u32> {
        self.runc.pid_of(&format!("dea-app-{id}")).await
    }

    /// Stops an instance: TERM, then KILL after the grace period. Returns its final info.
    pub async fn stop(&self, id: &str) -> Result<InstanceInfo, InstanceError> {
        let handle = lock(&self.instances)
            .get(id)
            .cloned()
            .ok_or_else(|| InstanceError::Unknown(id.to_string()))?;
        if let Some(stop) = lock(&handle.stop).take() {
            let _ = stop.send(());
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
    let mut bytes = [0u8; 16];
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mixed = seed ^ (u128::from(std::process::id()) << 64) ^ u128::from(rand_u64());
    bytes.copy_from_slice(&mixed.to_le_bytes());
    hex::encode(bytes)
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0);
    hasher.finish()
}

/// How the start's health check ended.
enum Health {
    Healthy,
    Unhealthy,
    Exited(i32),
    StopRequested,
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
        tokio::time::sleep(Duration::from_millis(100)).await;
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
