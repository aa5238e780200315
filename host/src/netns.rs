//! Network namespaces the host prepares for containers.
//!
//! A classic buildpack's container must not reach the network, yet its downloads must reach
//! the host's fetch service. The host creates the container's network namespace itself
//! (loopback only), binds the fetch proxy's listening socket inside it, and hands the
//! namespace to runc. Inside, `127.0.0.1:3128` is the proxy; nothing else exists.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a namespace could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("`{command}` failed: {message}")]
    Command { command: String, message: String },
    #[error("entering network namespace {name}: {message}")]
    Enter { name: String, message: String },
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A named network namespace with only loopback up; deleted on drop.
#[derive(Debug)]
pub struct NetNamespace {
    name: String,
}

fn ip(args: &[&str]) -> Result<(), NetnsError> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| NetnsError::Command {
            command: format!("ip {}", args.join(" ")),
            message: e.to_string(),
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(NetnsError::Command {
            command: format!("ip {}", args.join(" ")),
            message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

impl NetNamespace {
    /// Creates a fresh namespace with loopback up (needs root and iproute2).
    pub fn create() -> Result<NetNamespace, NetnsError> {
        let name = format!(
            "dea-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name])?;
        let namespace = NetNamespace { name };
        ip(&["-n", &namespace.name, "link", "set", "lo", "up"])?;
        Ok(namespace)
    }

    /// Connects to `addr` from inside the namespace (how the host reaches a container's
    /// port without any virtual network devices).
    pub fn connect(&self, addr: &str) -> Result<std::net::TcpStream, NetnsError> {
        connect_in(&self.path(), addr)
    }

    /// The namespace file runc joins.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// Creates a namespace with a chosen name (for instances, which outlive an agent restart).
    pub fn create_named(name: &str) -> Result<NetNamespace, NetnsError> {
        ip(&["netns", "add", name])?;
        let namespace = NetNamespace {
            name: name.to_string(),
        };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(namespace)
    }

    /// Takes charge of a namespace that already exists (after an agent restart).
    pub fn existing(name: &str) -> Option<NetNamespace> {
        Path::new("/var/run/netns")
            .join(name)
            .exists()
            .then(|| NetNamespace {
                name: name.to_string(),
            })
    }

    /// Lets go of the namespace without deleting it: its container outlives this agent.
    pub fn leak(self) {
        std::mem::forget(self);
    }

    /// Binds a TCP listener on `addr` inside the namespace. The socket stays in the
    /// namespace; the host serves it from its own runtime.
    pub fn bind(&self, addr: &str) -> Result<TcpListener, NetnsError> {
        let enter = |message: String| NetnsError::Enter {
            name: self.name.clone(),
            message,
        };
        let file = std::fs::File::open(self.path()).map_err(|e| enter(e.to_string()))?;
        // setns changes only the calling thread, so do it on a thread that then ends.
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(|e| enter(e.to_string()))?;
                    let listener = TcpListener::bind(addr).map_err(|e| enter(e.to_string()))?;
                    listener
                        .set_nonblocking(true)
                        .map_err(|e| enter(e.to_string()))?;
                    Ok(listener)
                })
                .join()
                .unwrap_or_else(|_| Err(enter("namespace thread panicked".into())))
        })
    }
}

/// Connects to `addr` from inside the namespace at `path`.
pub fn connect_in(path: &Path, addr: &str) -> Result<std::net::TcpStream, NetnsError> {
    let enter = |message: String| NetnsError::Enter {
        name: path.display().to_string(),
        message,
    };
    let file = std::fs::File::open(path).map_err(|e| enter(e.to_string()))?;
    // setns changes only the calling thread, so do it on a thread that then ends.
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| enter(e.to_string()))?;
                std::net::TcpStream::connect(addr).map_err(|e| enter(e.to_string()))
            })
            .join()
            .unwrap_or_else(|_| Err(enter("namespace thread panicked".into())))
    })
}

/// Deletes namespaces left by agents that are gone (a crash skips `Drop`). Names carry the
/// creating process id, so a namespace whose process no longer exists is stale.
pub fn remove_stale() {
    let Ok(entries) = std::fs::read_dir("/var/run/netns") else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("dea-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id()
            && !Path::new(&format!("/proc/{pid}")).exists()
            && let Err(e) = ip(&["netns", "delete", &name])
        {
            tracing::warn!("removing stale network namespace {name}: {e}");
        }
    }
}

impl Drop for NetNamespace {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "delete", &self.name]) {
            tracing::warn!("removing network namespace: {e}");
        }
    }
}
