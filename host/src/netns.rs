//! Network namespaces the host prepares for containers.
//!
//! A classic buildpack's container must not reach the network, yet its downloads must reach
//! the host's fetch service. The host creates the container's network namespace itself
//! (loopback only), binds the fetch proxy's listening socket inside it, and hands the
//! namespace to runc. Inside, `127.0.0.1:3128` is the proxy; nothing else exists.

use std::net::TcpListener;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a namespace could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("`{command}` failed: {message}")]
    Command { command: String, message: String },
    #[error("entering network namespace {name}: {message}")]
    Enter { name: String, message: String },
    #[error("creating network namespace {name}: {step}: {source}")]
    Create {
        name: String,
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Where named namespaces live, as iproute2 keeps them (`ip netns` sees ours).
const NETNS_DIR: &str = "/var/run/netns";

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A named network namespace with only loopback up; deleted on drop.
#[derive(Debug)]
pub struct NetNamespace {
    name: String,
}

impl NetNamespace {
    /// Creates a fresh namespace with loopback up (needs root and iproute2).
    pub fn create() -> Result<NetNamespace, NetnsError> {
        let name = format!(
            "dea-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        add(&name)?;
        Ok(NetNamespace { name })
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
        add(name)?;
        Ok(NetNamespace {
            name: name.to_string(),
        })
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
            && let Err(e) = delete(&name)
        {
            tracing::warn!("removing stale network namespace {name}: {e}");
        }
    }
}

impl Drop for NetNamespace {
    fn drop(&mut self) {
        if let Err(e) = delete(&self.name) {
            tracing::warn!("removing network namespace {}: {e}", self.name);
        }
    }
}

/// Creates the namespace `name` with loopback up, as `ip netns add` and `ip link set lo up`
/// would, without their two processes (milliseconds each, on every instance start): a
/// thread unshares its network namespace, which is then bind-mounted onto a file named
/// after it. The name is the agent's own (never a tenant's).
fn add(name: &str) -> Result<(), NetnsError> {
    use nix::mount::{MntFlags, MsFlags};
    let failed = |step: &'static str| {
        move |source: std::io::Error| NetnsError::Create {
            name: name.to_string(),
            step,
            source,
        }
    };
    let errno = |step: &'static str| move |e: nix::Error| failed(step)(std::io::Error::from(e));
    let dir = Path::new(NETNS_DIR);
    std::fs::create_dir_all(dir).map_err(failed("making /var/run/netns"))?;
    // A shared mount point, as iproute2 makes it: a namespace mounted later then shows in
    // every mount namespace that was copied from this one (runc's among them).
    let shared = || {
        nix::mount::mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    if shared() == Err(nix::Error::EINVAL) {
        nix::mount::mount(
            Some(dir),
            dir,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(errno("binding /var/run/netns"))?;
        shared().map_err(errno("sharing /var/run/netns"))?;
    }
    let path = dir.join(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(&path)
        .map_err(failed("creating its file"))?;
    let made = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // Only this thread moves, and it ends right after.
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(errno("unshare"))?;
                nix::mount::mount(
                    Some("/proc/thread-self/ns/net"),
                    &path,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(errno("binding it"))?;
                loopback_up().map_err(failed("loopback up"))
            })
            .join()
            .unwrap_or_else(|_| Err(failed("thread")(std::io::Error::other("panicked"))))
    });
    if made.is_err() {
        let _ = nix::mount::umount2(&path, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&path);
    }
    made
}

/// Brings up `lo` in the calling thread's network namespace: one `RTM_NEWLINK` request over
/// rtnetlink, setting `IFF_UP` on interface 1 (a new namespace's loopback is always 1).
fn loopback_up() -> std::io::Result<()> {
    use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType, netlink};
    const RTM_NEWLINK: u16 = 16;
    const NLM_F_REQUEST_ACK: u16 = 1 | 4;
    const NLMSG_ERROR: u16 = 2;
    const IFF_UP: u32 = 1;
    let socket = rustix::net::socket(AddressFamily::NETLINK, SocketType::RAW, None)?;
    // nlmsghdr (length, type, flags, sequence, port) then ifinfomsg (family, type, index,
    // flags, change mask), native-endian as netlink is.
    let mut request = Vec::with_capacity(32);
    request.extend_from_slice(&32u32.to_ne_bytes());
    request.extend_from_slice(&RTM_NEWLINK.to_ne_bytes());
    request.extend_from_slice(&NLM_F_REQUEST_ACK.to_ne_bytes());
    request.extend_from_slice(&1u32.to_ne_bytes());
    request.extend_from_slice(&0u32.to_ne_bytes());
    request.extend_from_slice(&[0, 0, 0, 0]); // AF_UNSPEC, padding, type 0
    request.extend_from_slice(&1i32.to_ne_bytes());
    request.extend_from_slice(&IFF_UP.to_ne_bytes());
    request.extend_from_slice(&IFF_UP.to_ne_bytes());
    rustix::net::sendto(
        &socket,
        &request,
        SendFlags::empty(),
        &netlink::SocketAddrNetlink::new(0, 0),
    )?;
    // The kernel's answer: an NLMSG_ERROR whose code is 0 on success, else -errno.
    let mut answer = [0u8; 256];
    let (received, _) = rustix::net::recv(&socket, &mut answer, RecvFlags::empty())?;
    let field = |at: usize, len: usize| answer.get(at..at + len).filter(|_| at + len <= received);
    let kind = field(4, 2).map(|b| u16::from_ne_bytes([b[0], b[1]]));
    let code = field(16, 4).map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    match (kind, code) {
        (Some(NLMSG_ERROR), Some(0)) => Ok(()),
        (Some(NLMSG_ERROR), Some(code)) => Err(std::io::Error::from_raw_os_error(-code)),
        _ => Err(std::io::Error::other("unexpected rtnetlink answer")),
    }
}

/// Deletes the namespace `name` as `ip netns delete` does: its mount goes (the namespace
/// lives on while a process is in it), then its file.
fn delete(name: &str) -> std::io::Result<()> {
    let path = Path::new(NETNS_DIR).join(name);
    match nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL | nix::Error::ENOENT) => {}
        Err(e) => return Err(e.into()),
    }
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Needs root, as the agent does.
    #[test]
    fn a_namespace_has_loopback_up_and_nothing_else_and_goes_without_a_trace() {
        let namespace = NetNamespace::create().expect("create (as root)");
        let path = namespace.path();
        let listener = namespace.bind("127.0.0.1:0").expect("bind on loopback");
        let port = listener.local_addr().expect("address").port();
        // Reachable from inside through loopback, so `lo` is up.
        namespace
            .connect(&format!("127.0.0.1:{port}"))
            .expect("connect over the namespace's loopback");
        // Only loopback: the host's own interfaces are not there.
        let links = Command::new("ip")
            .args(["-n", &namespace.name, "-o", "link", "show"])
            .output()
            .expect("ip");
        let links = String::from_utf8_lossy(&links.stdout).into_owned();
        assert_eq!(links.lines().count(), 1, "{links}");
        assert!(links.contains("lo:") && links.contains("UP"), "{links}");
        drop(listener);
        drop(namespace);
        assert!(!path.exists(), "{} left", path.display());
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        assert!(!mounts.contains(&path.display().to_string()), "{mounts}");
    }
}
