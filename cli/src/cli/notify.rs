//! `sd_notify` for `dea serve` under systemd (`Type=notify`): one datagram to the socket
//! `$NOTIFY_SOCKET` names, a path or `@name` in the abstract namespace. That is all
//! libsystemd's `sd_notify` does for these messages, so std's `UnixDatagram` does it here.

use std::ffi::OsStr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;

/// Sends `state` (newline-separated `KEY=VALUE`s) to the service manager. `Ok(false)` when
/// there is none (no `NOTIFY_SOCKET`: not started by systemd, or not `Type=notify`).
pub fn notify(state: &str) -> std::io::Result<bool> {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET").filter(|t| !t.is_empty()) else {
        return Ok(false);
    };
    let socket = UnixDatagram::unbound()?;
    let bytes = target.as_bytes();
    let address = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None if bytes.starts_with(b"/") => {
            SocketAddr::from_pathname(Path::new(OsStr::from_bytes(bytes)))?
        }
        // systemd also knows `vsock:` addresses (for virtual machines); the agent does not.
        None => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("NOTIFY_SOCKET {target:?} is neither a path nor @name"),
            ));
        }
    };
    socket.send_to_addr(state.as_bytes(), &address)?;
    Ok(true)
}

/// Tells the service manager `state`, logging (not failing) when that does not work: the
/// agent serves either way, and systemd reports the missing readiness itself.
pub fn tell(state: &str) {
    if let Err(error) = notify(state) {
        tracing::warn!("sd_notify {state:?}: {error}");
    }
}
