//! The directory server: instance and staging files behind HMAC-signed URLs (reference
//! dea_ng.md §5).
//!
//! The DEA split this in two processes: a Ruby file API on loopback that checked the signature,
//! the expiry, the instance or task and the path and answered with a host path, and a Go server
//! reached by the router that asked it on every request and then served the path (listing,
//! ranges, `tail`). Here both halves are one axum server: the Ruby checks run first, in the
//! same order and with the same JSON errors, then the Go serving, with the Go server's
//! client-visible behaviour. One process means no second hop per request and no window between
//! checking a path and opening it: the checked descriptor is the one served.
//!
//! Plain `GET`s of a file (the bulk of the traffic: logs, droplet files) are answered by a
//! fast path (`fast.rs`) that runs the same checks, then writes hyper's response head itself
//! and sends large bodies with `sendfile(2)` from that descriptor; every other request, and the
//! rest of its connection, goes to hyper and the axum routes (`conn.rs`).
//!
//! Routes (all `GET`, query `hmac`, `path`, `timestamp` signed; `tail` and `tail_offset` not):
//!
//! * `/instance_paths/<instance_id>`: `path` relative to the instance's home (`/home/vcap` in
//!   its container), or to `crashes/<id>` once it crashed;
//! * `/staging_tasks/<task_id>/file_path`: `path` absolute in the staging container.
//!
//! The agent provides [`FileRoots`] and hands out URLs from [`UrlSigner`]. Wiring it up:
//!
//! ```no_run
//! # async fn wire(config: dea::config::Config, roots: std::sync::Arc<dyn dea::files::FileRoots>)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! let signer = Arc::new(config.directory_server.signer());
//! let server = dea::files::serve(&config.directory_server, signer.clone(), roots).await?;
//! // Lets `dea files url` sign URLs this agent accepts.
//! dea::files::write_key_file(&config.base_dir, &signer)?;
//! let base = config.directory_server.external_base("<directory server uuid>");
//! let url = signer.instance_url(&base, "<instance id>", "logs/stdout.log");
//! # drop((server, url)); Ok(()) }
//! ```

mod check;
mod config;
mod conn;
mod content;
mod fast;
mod listing;
mod resolve;
mod server;
mod signing;
mod tail;

pub use check::ServerSettings;
pub use config::DirectoryServerConfig;
pub use server::{DirectoryServer, router, serve};
pub use signing::{
    UrlSigner, form_decode, form_encode, key_file_path, read_key_file, write_key_file,
};

/// Where the files of an instance or staging task live, as the agent knows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileRoot {
    /// No such instance or task: 404.
    Unknown,
    /// Known, but there is nothing to serve yet or any more (not RUNNING or CRASHED; staging
    /// container not created): 503.
    Unavailable,
    /// The directory that request paths are resolved under.
    Dir(std::path::PathBuf),
}

/// The agent's answer to "where are this instance's / this task's files?". Asked on the async
/// runtime for every request: answer from memory, without blocking.
pub trait FileRoots: Send + Sync + 'static {
    /// Instance: RUNNING → its home dir (the container's `/home/vcap`); CRASHED →
    /// `crashes/<id>`; [`FileRoot::Unknown`] / [`FileRoot::Unavailable`] otherwise.
    fn instance(&self, instance_id: &str) -> FileRoot;
    /// Staging task: the host dir that stands for the container's `/` (request paths are
    /// absolute container paths like `/tmp/staged/logs/staging_task.log`, resolved under it).
    fn staging_task(&self, task_id: &str) -> FileRoot;
}

/// Why the directory server could not start.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("directory server cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("directory server: {0}")]
    Io(#[from] std::io::Error),
}
