//! Watching one instance from its start to its end: the start's health check, then, while it
//! runs, its exit, its disk, its reachability, and the agent's orders (stop, or let go); at
//! the end, crash logs and a clean-up that leaves nothing behind but those logs.

use super::network::{Attached, PortReservation};
use super::{Handle, InstanceManager, InstanceState, Lifeline, disk};
use crate::container::{Runc, RunningContainer, Signal};
use crate::netns::NetNamespace;
use crate::tenant_fs::{Links, TenantDir};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

mod disk_checks;

/// Consecutive failed reachability checks after which a running instance is crashed.
const UNREACHABLE_CHECKS: u32 = 3;

/// What the monitor of an instance is told.
pub(super) enum Control {
    /// TERM, grace period, KILL, STOPPED.
    Stop,
    /// Let go without touching the container (an agent going away; tests use it to
    /// simulate a crash of the agent).
    Abandon,
}

/// The container's main process, as this agent knows it.
pub(super) enum Process {
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

    async fn signal(&self, signal: Signal) {
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

/// Everything a started instance holds on the host.
pub(super) struct Running {
    pub process: Process,
    pub namespace: NetNamespace,
    pub network: Attached,
    pub port: PortReservation,
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

/// What the monitor is to check.
pub(super) struct Watch {
    /// The start's health check, with its time limit (`None`: none, or already passed).
    pub health: Option<Duration>,
    /// Keep checking that the app accepts connections while it runs (apps with routes).
    pub reachability: bool,
}

/// One instance's monitor: the instance, the agent's orders to it, and the start waiting for
/// it to settle. Lives on a task of its own from the start (or adoption) to the end.
struct Monitor {
    manager: Arc<InstanceManager>,
    handle: Arc<Handle>,
    control: oneshot::Receiver<Control>,
    /// Told once the start has settled (RUNNING, or finished); `None` once told.
    ready: Option<oneshot::Sender<()>>,
}

impl InstanceManager {
    /// Watches a started (or adopted) instance on a task of its own until it ends, then marks
    /// its handle finished. Returns once the start has settled: the instance RUNNING (or
    /// EVACUATING), or already finished.
    pub(super) async fn watch_over(
        self: &Arc<Self>,
        handle: Arc<Handle>,
        lifeline: Lifeline,
        running: Running,
        watch: Watch,
    ) {
        let (ready, settled) = oneshot::channel();
        let monitor = Monitor {
            manager: self.clone(),
            handle,
            control: lifeline.control,
            ready: Some(ready),
        };
        let done = lifeline.done;
        tokio::spawn(async move {
            monitor.run(running, watch).await;
            let _ = done.send(true);
        });
        let _ = settled.await;
    }

    /// Why the instance must be stopped for its disk, if it must.
    async fn disk_problem(&self, home: &Path, container_id: &str, limit_mb: u64) -> Option<String> {
        let (dir, container_id) = (home.to_path_buf(), container_id.to_string());
        let (max_files, max_depth) = (self.settings.max_files, self.settings.max_dir_depth);
        let used =
            disk_checks::run(move || disk::usage(&dir, &container_id, max_files, max_depth)).await;
        match used {
            Some(Ok(usage)) if usage.bytes > limit_mb << 20 => Some(format!(
                "app instance exceeded its disk limit of {limit_mb} MiB"
            )),
            Some(Err(disk::DiskError::TooManyFiles { limit })) => Some(format!(
                "app instance exceeded its limit of {limit} files and directories"
            )),
            Some(Err(disk::DiskError::TooDeep { limit })) => Some(format!(
                "app instance nests directories deeper than its limit of {limit}"
            )),
            Some(Err(e)) => {
                tracing::warn!("measuring an instance's disk: {e}");
                None
            }
            _ => None,
        }
    }

    /// Frees what a finished instance held on the host: its DNAT element and interface, its
    /// network namespace, and its directory (crash logs were copied out before).
    pub(super) async fn release(
        self: &Arc<Self>,
        handle: &Handle,
        network: Option<Attached>,
        namespace: Option<NetNamespace>,
    ) {
        if let Some(network) = network {
            let manager = self.network.clone();
            let _ = tokio::task::spawn_blocking(move || manager.detach(&network)).await;
        }
        drop(namespace);
        let dir = handle.info.lock().dir.clone();
        let layered = dir.clone();
        let _ = tokio::task::spawn_blocking(move || super::layers::unmount_home(&layered)).await;
        crate::tenant_fs::remove_tree_off_thread(dir).await;
        self.evict_unused_layers().await;
    }

    /// Removes the unpacked droplets that no instance holding resources uses (past the few
    /// kept for later starts). The instances are counted once eviction has its lock, so a
    /// start that has named its droplet is always counted.
    async fn evict_unused_layers(self: &Arc<Self>) {
        let manager = self.clone();
        let _ = tokio::task::spawn_blocking(move || {
            manager.layers.evict(|| {
                manager
                    .instances
                    .read()
                    .values()
                    .filter_map(|handle| {
                        let info = handle.info.lock();
                        info.holds_resources().then(|| info.droplet_sha1.clone())
                    })
                    .collect()
            })
        })
        .await;
    }
}

impl Monitor {
    /// Lets the start that waits for this instance go on (once).
    fn settled(&mut self) {
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(());
        }
    }

    /// Health check, then waits for the process to exit or a stop; records the outcome and
    /// cleans up.
    async fn run(mut self, running: Running, watch: Watch) {
        let Running {
            process: mut container,
            namespace,
            network,
            port,
        } = running;
        let health_started = std::time::Instant::now();
        let healthy = match watch.health {
            None => Health::Healthy,
            Some(limit) => {
                tokio::select! {
                    ok = wait_for_app(&network, limit) => {
                        if ok { Health::Healthy } else { Health::Unhealthy }
                    }
                    code = container.wait() => Health::Exited(code),
                    order = &mut self.control => Health::Ordered(order.unwrap_or(Control::Abandon)),
                }
            }
        };
        let exit = match healthy {
            Health::Healthy => {
                let resumed_state = {
                    let mut info = self.handle.info.lock();
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
                self.manager.enter(&self.handle, resumed_state);
                self.settled();
                self.while_running(&mut container, &network, watch.reachability)
                    .await
            }
            Health::Unhealthy => {
                let index = self.handle.info.lock().instance_id.clone();
                self.handle.info.lock().exit_description = Some(format!(
                    "Instance {index} failed to start accepting connections"
                ));
                container.signal(Signal::Kill).await;
                Ending::Exited(container.wait().await)
            }
            Health::Exited(code) => Ending::Exited(code),
            Health::Ordered(order) => Ending::Ordered(order),
        };
        match exit {
            Ending::Ordered(Control::Abandon) => {
                // The agent goes; the container, its network and its files stay, and traffic
                // keeps reaching it (the kernel publishes its port, not this process).
                namespace.leak();
                drop(port);
                self.settled();
                if let Process::Child(child) = container {
                    std::mem::forget(child);
                }
                return;
            }
            Ending::Exited(code) => {
                {
                    let mut info = self.handle.info.lock();
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
                self.manager.keep_crash_logs(&self.handle).await;
                self.manager.enter(&self.handle, InstanceState::Crashed);
            }
            Ending::Ordered(Control::Stop) => {
                self.manager.enter(&self.handle, InstanceState::Stopping);
                container.signal(Signal::Term).await;
                let exited =
                    tokio::time::timeout(self.manager.settings.stop_grace, container.wait()).await;
                if exited.is_err() {
                    container.signal(Signal::Kill).await;
                    container.wait().await;
                }
                self.manager.enter(&self.handle, InstanceState::Stopped);
                // Stopped instances leave the registry, as in the DEA.
                let id = self.handle.info.lock().instance_id.clone();
                self.manager.instances.write().remove(&id);
            }
        }
        container.remove().await;
        self.manager
            .release(&self.handle, Some(network), Some(namespace))
            .await;
        drop(port);
        self.settled();
    }

    /// Waits out a running instance: its exit, an order, its disk limit, its reachability.
    async fn while_running(
        &mut self,
        container: &mut Process,
        network: &Attached,
        reachability: bool,
    ) -> Ending {
        let (home, limit_mb, container_id) = {
            let info = self.handle.info.lock();
            (
                info.dir.join("home"),
                info.disk_mb,
                info.container_id.clone(),
            )
        };
        let mut disk_check = tokio::time::interval(self.manager.settings.disk_check_interval);
        // Checks queue on one thread (see `disk_checks`): one that waited long is not
        // followed by a burst of catch-up checks.
        disk_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reach_check = tokio::time::interval(self.manager.settings.health_check_interval);
        reach_check.tick().await;
        let mut failures = 0u32;
        loop {
            let problem = tokio::select! {
                code = container.wait() => return Ending::Exited(code),
                order = &mut self.control => return Ending::Ordered(order.unwrap_or(Control::Abandon)),
                _ = disk_check.tick() => self.manager.disk_problem(&home, &container_id, limit_mb).await,
                _ = reach_check.tick(), if reachability => {
                    match reach(network).await {
                        Reach::Answered => {
                            failures = 0;
                            None
                        }
                        Reach::NoInterface => Some(format!(
                            "the instance's network interface {} is gone",
                            network.host_if
                        )),
                        Reach::Refused(error) => {
                            failures += 1;
                            (failures >= UNREACHABLE_CHECKS).then(|| format!(
                                "app instance stopped accepting connections on port {} ({failures} checks in a row: {error})",
                                super::network::CONTAINER_PORT
                            ))
                        }
                    }
                }
            };
            if let Some(reason) = problem {
                self.handle.info.lock().exit_description = Some(reason);
                container.signal(Signal::Kill).await;
                return Ending::Exited(container.wait().await);
            }
        }
    }
}

/// How one reachability check went.
enum Reach {
    Answered,
    NoInterface,
    Refused(String),
}

async fn reach(network: &Attached) -> Reach {
    if !Path::new("/sys/class/net").join(&network.host_if).exists() {
        return Reach::NoInterface;
    }
    let connect = tokio::net::TcpStream::connect(network.app_address());
    match tokio::time::timeout(Duration::from_secs(2), connect).await {
        Ok(Ok(_)) => Reach::Answered,
        Ok(Err(e)) => Reach::Refused(e.to_string()),
        Err(_) => Reach::Refused("no answer within 2s".into()),
    }
}

/// Polls the app's port (its own address, straight from the host) until it accepts a
/// connection; false when `limit` passes first. Most apps listen within tens of
/// milliseconds, and a refused connect over the instance's veth costs microseconds: the
/// first [`FAST_POLL_FOR`] polls every [`FAST_POLL`], so RUNNING is reported within
/// two milliseconds of the app listening; slower apps are then polled less often.
async fn wait_for_app(network: &Attached, limit: Duration) -> bool {
    let started = tokio::time::Instant::now();
    let deadline = started + limit;
    let mut pause = FAST_POLL;
    loop {
        if matches!(reach(network).await, Reach::Answered) {
            return true;
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return false;
        }
        if now - started >= FAST_POLL_FOR {
            pause = (pause * 2).min(Duration::from_millis(100));
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
    }
}

/// The health check's first polls: this often, for this long.
const FAST_POLL: Duration = Duration::from_millis(2);
const FAST_POLL_FOR: Duration = Duration::from_millis(200);
