//! Containers: an OCI bundle written by the host and run with `runc`.
//!
//! Used for everything that must run as a real process: classic buildpack scripts during
//! staging ([`Runc::run`], to completion under a timeout) and app instances
//! ([`Runc::spawn`], watched by [`crate::instance`] and ended with a [`Signal`]). A container
//! gets the stack's root filesystem read-only (by default the host's own `/usr`, `/bin`,
//! `/lib*` and `/etc`, bind-mounted read-only), a small writable tmpfs at `/tmp` with the given
//! directories bind-mounted, a non-root user, its own PID, mount, IPC, UTS, cgroup and network
//! namespaces (a fresh network one has no interfaces, so no route out; an instance joins one
//! the host prepared), cgroup memory and pids limits, no capabilities, `no_new_privileges`, and
//! a seccomp profile that denies the kernel interfaces a tenant has no business with
//! (`seccomp.rs`). `oci.rs` builds the runtime configuration from a [`ContainerSpec`]; this
//! file writes bundles and drives runc.

mod oci;
mod seccomp;

use oci::HOST_STACK_DIRS;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Why a container could not be run to completion.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("runc is not installed or not runnable ({path}): {source}")]
    Runtime {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing the container bundle: {0}")]
    Bundle(#[source] std::io::Error),
    #[error("writing the container bundle: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
    #[error("container {id} did not finish within {limit:?} and was killed")]
    Timeout { id: String, limit: Duration },
    #[error("container {id} could not start: {message}")]
    Start { id: String, message: String },
}

/// A directory from the host, visible inside the container.
#[derive(Debug, Clone)]
pub struct BindMount {
    pub source: PathBuf,
    pub destination: String,
    pub read_only: bool,
}

/// One process to run in a fresh container.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// Unique among running containers (letters, digits, `-`, `_`).
    pub id: String,
    /// The program and its arguments (inside the container).
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: String,
    pub mounts: Vec<BindMount>,
    pub uid: u32,
    pub gid: u32,
    pub memory_limit_bytes: i64,
    pub pids_limit: i64,
    pub timeout: Duration,
    /// Size of the writable tmpfs at `/tmp`, in MiB.
    pub tmp_size_mb: u64,
    /// A network namespace the host prepared (see [`crate::netns`]); default: a new, empty one.
    pub network_namespace: Option<PathBuf>,
    /// Single files to bind over files of the stack (e.g. the CA bundle), read-only.
    pub file_mounts: Vec<BindMount>,
    /// The stack's root filesystem for this container; `None`: the runtime's default (its
    /// configured rootfs, else the host's own directories).
    pub rootfs: Option<PathBuf>,
    pub hostname: String,
}

/// The outcome of a container that ran to completion.
#[derive(Debug, Clone)]
pub struct ContainerExit {
    /// The process's exit code; `128 + signal` when killed by a signal.
    pub code: i32,
    /// True when the kernel's OOM killer ended it (exit by SIGKILL at the memory limit).
    pub oom_killed: bool,
    /// Everything written to stdout (capped; the live stream saw it all).
    pub stdout: Vec<u8>,
}

/// A signal for every process of a container (`runc kill --all`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Asks the processes to end (an instance's stop, before its grace period runs out).
    Term,
    /// Ends them at once (a stop past its grace, a failed health check, a timeout).
    Kill,
}

impl Signal {
    /// The name `runc kill` takes.
    pub fn runc_name(self) -> &'static str {
        match self {
            Signal::Term => "TERM",
            Signal::Kill => "KILL",
        }
    }
}

/// What a container's output is passed to, chunk by chunk, as it is written.
pub type OutputSink = std::sync::Arc<dyn Fn(&[u8]) + Send + Sync>;

/// Where a run's stdout and stderr go.
pub enum Output {
    /// Apart: stdout is kept (up to its cap) for the caller to parse, as a detect's name or a
    /// release's YAML; each stream is passed to its sink as it arrives.
    Apart {
        stdout: Option<OutputSink>,
        stderr: Option<OutputSink>,
    },
    /// One pipe for both, so the sink sees the lines in the order the process wrote them (a
    /// build's log, which ships in the droplet: read from two pipes, the order of lines
    /// written to both would change from run to run). Kept as `stdout`.
    Together(OutputSink),
}

/// Runs containers with `runc`.
#[derive(Debug, Clone)]
pub struct Runc {
    pub binary: PathBuf,
    /// runc's state directory (`--root`).
    pub state_dir: PathBuf,
    /// Where bundles are written.
    pub bundles_dir: PathBuf,
    /// Stack root filesystem; `None` means the host's own directories, read-only.
    pub rootfs: Option<PathBuf>,
}

/// Most stdout kept in [`ContainerExit::stdout`].
const STDOUT_KEEP: usize = 1 << 20;

/// A container started with [`Runc::spawn`]: its `runc run` process, which exits with the
/// container's main process.
pub struct RunningContainer {
    pub id: String,
    child: tokio::process::Child,
    runc: Runc,
    bundle: PathBuf,
}

impl RunningContainer {
    /// Waits for the main process to exit; its exit code (`128 + signal` when killed).
    pub async fn wait(&mut self) -> i32 {
        match self.child.wait().await {
            Ok(status) => status.code().unwrap_or(137),
            Err(_) => 137,
        }
    }

    /// Sends `signal` to every process in the container.
    pub async fn signal(&self, signal: Signal) {
        self.runc.signal(&self.id, signal).await;
    }

    /// The host pid of the container's main process, while it runs.
    pub async fn pid(&self) -> Option<u32> {
        self.runc.pid(&self.id).await
    }

    /// Removes the container and its bundle (after it exited).
    pub async fn remove(self) {
        self.runc.delete(&self.id).await;
        let _ = std::fs::remove_dir_all(&self.bundle);
    }
}

impl Runc {
    /// The runtime `config` describes: its binary, state and bundles under the base
    /// directory (made absolute: runc resolves bundle paths itself), the stack's rootfs.
    pub fn from_config(config: &crate::config::Config) -> Runc {
        let base =
            std::path::absolute(&config.base_dir).unwrap_or_else(|_| config.base_dir.clone());
        Runc {
            binary: config.classic.runc.clone(),
            state_dir: base.join("runc"),
            bundles_dir: base.join("bundles"),
            rootfs: config.classic.rootfs.clone(),
        }
    }

    /// Starts `spec` and returns at once; stdout and stderr go to the given files.
    ///
    /// `gate`, when given, becomes the standard input of the container's first process
    /// (runc passes its own standard streams through): the read end of a pipe it waits on,
    /// so the container's slow setup (tens of milliseconds in runc) overlaps the agent's
    /// own work before the app may run. Standard input rather than an extra descriptor:
    /// that would need a hook between fork and exec, and so a full `fork` of the agent
    /// (milliseconds for a process this size) instead of `posix_spawn`.
    pub async fn spawn(
        &self,
        spec: &ContainerSpec,
        stdout: std::fs::File,
        stderr: std::fs::File,
        gate: Option<std::os::fd::OwnedFd>,
    ) -> Result<RunningContainer, ContainerError> {
        let bundle =
            std::path::absolute(self.bundles_dir.join(&spec.id)).map_err(ContainerError::Bundle)?;
        let _ = std::fs::remove_dir_all(&bundle);
        std::fs::create_dir_all(bundle.join("rootfs")).map_err(ContainerError::Bundle)?;
        let rootfs = self.prepare_rootfs(&bundle, spec)?;
        let host_stack = self.stack_rootfs(spec).is_none();
        oci::runtime_spec(spec, &rootfs, host_stack)?.save(bundle.join("config.json"))?;
        let mut command = tokio::process::Command::new(&self.binary);
        // Under systemd (`Type=notify`) the agent has NOTIFY_SOCKET; runc given it proxies
        // the socket into the container and waits for the app's READY=1, so `runc run`
        // never returns after the app exits. Apps do not speak sd_notify.
        command
            .env_remove("NOTIFY_SOCKET")
            .arg("--root")
            .arg(&self.state_dir)
            .arg("run");
        let child = command
            .arg("--bundle")
            .arg(&bundle)
            .arg(&spec.id)
            .stdin(gate.map_or_else(Stdio::null, Stdio::from))
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .spawn()
            .map_err(|source| ContainerError::Runtime {
                path: self.binary.clone(),
                source,
            })?;
        // The command holds the gate's read end until dropped: the agent keeps only the
        // write end, so the container sees EOF if the agent goes away.
        drop(command);
        Ok(RunningContainer {
            id: spec.id.clone(),
            child,
            runc: self.clone(),
            bundle,
        })
    }

    async fn signal(&self, id: &str, signal: Signal) {
        let _ = tokio::process::Command::new(&self.binary)
            .arg("--root")
            .arg(&self.state_dir)
            .args(["kill", "--all", id, signal.runc_name()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }

    /// Sends `signal` to every process of container `id`.
    pub async fn signal_container(&self, id: &str, signal: Signal) {
        self.signal(id, signal).await;
    }

    /// Deletes container `id` and its bundle.
    pub async fn remove_container(&self, id: &str) {
        self.delete(id).await;
        let _ = std::fs::remove_dir_all(self.bundles_dir.join(id));
    }

    /// The host pid of container `id`'s main process, while it runs.
    pub async fn pid_of(&self, id: &str) -> Option<u32> {
        self.pid(id).await
    }

    async fn pid(&self, id: &str) -> Option<u32> {
        let output = tokio::process::Command::new(&self.binary)
            .arg("--root")
            .arg(&self.state_dir)
            .args(["state", id])
            .output()
            .await
            .ok()?;
        let state: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
        state["pid"].as_u64().map(|p| p as u32).filter(|p| *p > 0)
    }

    /// The stack a container runs on: the spec's, else the runtime's configured one.
    fn stack_rootfs<'a>(&'a self, spec: &'a ContainerSpec) -> Option<&'a PathBuf> {
        spec.rootfs.as_ref().or(self.rootfs.as_ref())
    }

    fn prepare_rootfs(
        &self,
        bundle: &Path,
        spec: &ContainerSpec,
    ) -> Result<PathBuf, ContainerError> {
        if let Some(rootfs) = self.stack_rootfs(spec) {
            return Ok(rootfs.clone());
        }
        let rootfs = bundle.join("rootfs");
        for dir in HOST_STACK_DIRS {
            if Path::new("/").join(dir).exists() {
                std::fs::create_dir_all(rootfs.join(dir)).map_err(ContainerError::Bundle)?;
            }
        }
        // runc gives the /tmp tmpfs the mode of the directory it covers.
        std::fs::create_dir_all(rootfs.join("tmp"))
            .and_then(|()| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(
                    rootfs.join("tmp"),
                    std::fs::Permissions::from_mode(0o1777),
                )
            })
            .map_err(ContainerError::Bundle)?;
        Ok(rootfs)
    }

    /// Runs `spec` to completion (or its timeout), passing its output as `output` says as it
    /// arrives. The container and its bundle are removed afterwards.
    pub async fn run(
        &self,
        spec: &ContainerSpec,
        output: Output,
    ) -> Result<ContainerExit, ContainerError> {
        let bundle =
            std::path::absolute(self.bundles_dir.join(&spec.id)).map_err(ContainerError::Bundle)?;
        let _ = std::fs::remove_dir_all(&bundle);
        std::fs::create_dir_all(bundle.join("rootfs")).map_err(ContainerError::Bundle)?;
        // If this future is dropped (a staging stopped or timed out), killing `runc run`
        // would leave the container running: the guard force-deletes it.
        let mut guard = DeleteOnDrop {
            runc: self.clone(),
            id: spec.id.clone(),
            bundle: bundle.clone(),
            armed: true,
        };
        let result = self.run_in_bundle(&bundle, spec, output).await;
        guard.armed = false;
        self.delete(&spec.id).await;
        let _ = std::fs::remove_dir_all(&bundle);
        result
    }

    async fn run_in_bundle(
        &self,
        bundle: &Path,
        spec: &ContainerSpec,
        output: Output,
    ) -> Result<ContainerExit, ContainerError> {
        let rootfs = self.prepare_rootfs(bundle, spec)?;
        let host_stack = self.stack_rootfs(spec).is_none();
        oci::runtime_spec(spec, &rootfs, host_stack)?.save(bundle.join("config.json"))?;

        let start_error = |e: std::io::Error| ContainerError::Start {
            id: spec.id.clone(),
            message: format!("output pipe: {e}"),
        };
        let (out, err, together, on_stdout, on_stderr) = match output {
            Output::Apart { stdout, stderr } => {
                (Stdio::piped(), Stdio::piped(), None, stdout, stderr)
            }
            Output::Together(sink) => {
                let (reader, writer) = std::io::pipe().map_err(start_error)?;
                let second = writer.try_clone().map_err(start_error)?;
                let reader = tokio::net::unix::pipe::Receiver::from_owned_fd(reader.into())
                    .map_err(start_error)?;
                (writer.into(), second.into(), Some(reader), Some(sink), None)
            }
        };
        // The command (and with it this process's copies of a shared pipe's write end) is
        // gone once spawned, so the reader sees the end when the container's copies close.
        let mut child = tokio::process::Command::new(&self.binary)
            .env_remove("NOTIFY_SOCKET") // as in `spawn`: runc would wait for READY=1
            .arg("--root")
            .arg(&self.state_dir)
            .arg("run")
            .arg("--bundle")
            .arg(bundle)
            .arg(&spec.id)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ContainerError::Runtime {
                path: self.binary.clone(),
                source,
            })?;
        let merged = together.is_some();
        let (out_task, err_task) = match together {
            Some(reader) => (
                tokio::spawn(pump(Some(reader), on_stdout, STDOUT_KEEP)),
                tokio::spawn(async { Vec::new() }),
            ),
            None => (
                tokio::spawn(pump(child.stdout.take(), on_stdout, STDOUT_KEEP)),
                tokio::spawn(pump(child.stderr.take(), on_stderr, 64 * 1024)),
            ),
        };
        let status = match tokio::time::timeout(spec.timeout, child.wait()).await {
            Ok(status) => status.map_err(|e| ContainerError::Start {
                id: spec.id.clone(),
                message: e.to_string(),
            })?,
            Err(_) => {
                self.kill(&spec.id).await;
                let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                let _ = child.kill().await;
                return Err(ContainerError::Timeout {
                    id: spec.id.clone(),
                    limit: spec.timeout,
                });
            }
        };
        let stdout = out_task.await.unwrap_or_default();
        let stderr = err_task.await.unwrap_or_default();
        let code = status.code().unwrap_or(137);
        // runc itself failing (bad bundle, no cgroup) prints to stderr and exits 1 before
        // the process starts; the container's own failures keep their exit codes.
        let stderr_text = String::from_utf8_lossy(if merged { &stdout } else { &stderr });
        if code != 0 && stderr_text.contains("runc run failed") {
            return Err(ContainerError::Start {
                id: spec.id.clone(),
                message: stderr_text.trim().to_string(),
            });
        }
        Ok(ContainerExit {
            code,
            oom_killed: code == 137 && self.oom_killed(&spec.id),
            stdout,
        })
    }

    /// Was the container's cgroup hit by the OOM killer? (cgroup v1 and v2.)
    fn oom_killed(&self, id: &str) -> bool {
        let v1 = format!("/sys/fs/cgroup/memory/dea/{id}/memory.oom_control");
        let v2 = format!("/sys/fs/cgroup/dea/{id}/memory.events");
        [v1, v2].iter().any(|path| {
            std::fs::read_to_string(path).is_ok_and(|text| {
                text.lines().any(|line| {
                    let mut parts = line.split_whitespace();
                    matches!(parts.next(), Some("oom_kill") | Some("oom"))
                        && parts.next().is_some_and(|n| n != "0")
                })
            })
        })
    }

    async fn kill(&self, id: &str) {
        self.signal(id, Signal::Kill).await;
    }

    async fn delete(&self, id: &str) {
        let _ = tokio::process::Command::new(&self.binary)
            .arg("--root")
            .arg(&self.state_dir)
            .args(["delete", "--force", id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }
}

/// Force-deletes a container whose `run` was abandoned midway.
struct DeleteOnDrop {
    runc: Runc,
    id: String,
    bundle: PathBuf,
    armed: bool,
}

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // Drop cannot await: a plain thread runs runc to completion.
        let (runc, id, bundle) = (self.runc.clone(), self.id.clone(), self.bundle.clone());
        std::thread::spawn(move || {
            let _ = std::process::Command::new(&runc.binary)
                .arg("--root")
                .arg(&runc.state_dir)
                .args(["delete", "--force", &id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = std::fs::remove_dir_all(&bundle);
        });
    }
}

/// Copies a stream to `sink` as it arrives, keeping the first `keep` bytes.
async fn pump<R: AsyncRead + Unpin>(
    stream: Option<R>,
    sink: Option<OutputSink>,
    keep: usize,
) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut stream) = stream else {
        return kept;
    };
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                if let Some(sink) = &sink {
                    sink(&buf[..n]);
                }
                let room = keep.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}
