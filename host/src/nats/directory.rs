//! The agent's side of the directory server (reference dea_ng.md §5): which directory an
//! instance's or staging task's URL reads from, and the signed links the agent hands out in
//! `file_uri_v2` and `task_streaming_log_url`, under the server's routed name
//! `<uuid>.<domain>`.

use super::agent::FileLinks;
use crate::files::{DirectoryServer, DirectoryServerConfig, FileRoot, FileRoots, UrlSigner};
use crate::instance::{InstanceManager, InstanceState};
use crate::staging::remote::task_dir;
use std::path::PathBuf;
use std::sync::Arc;

/// Instance and staging-task files, as the instance manager and the task directories say.
pub struct AgentFiles {
    instances: Arc<InstanceManager>,
    base_dir: PathBuf,
}

impl AgentFiles {
    pub fn new(instances: Arc<InstanceManager>, base_dir: PathBuf) -> AgentFiles {
        AgentFiles {
            instances,
            base_dir,
        }
    }
}

/// Ids come from URLs: only what the agent itself generates (no `..`, no separators).
fn plain_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl FileRoots for AgentFiles {
    fn instance(&self, instance_id: &str) -> FileRoot {
        if !plain_id(instance_id) {
            return FileRoot::Unknown;
        }
        let Some(info) = self.instances.get(instance_id) else {
            return FileRoot::Unknown;
        };
        match info.state {
            InstanceState::Running | InstanceState::Evacuating => {
                FileRoot::Dir(info.dir.join("home"))
            }
            // Only the logs were kept (as in the DEA).
            InstanceState::Crashed => {
                let kept = self.base_dir.join("crashes").join(instance_id);
                if kept.is_dir() {
                    FileRoot::Dir(kept)
                } else {
                    FileRoot::Unavailable
                }
            }
            _ => FileRoot::Unavailable,
        }
    }

    fn staging_task(&self, task_id: &str) -> FileRoot {
        if !plain_id(task_id) {
            return FileRoot::Unknown;
        }
        // The directory exists exactly while the task runs; when it is gone the log is
        // complete, and the DEA answers 404 then too.
        let dir = task_dir(&self.base_dir, task_id);
        if dir.is_dir() {
            FileRoot::Dir(dir)
        } else {
            FileRoot::Unknown
        }
    }
}

/// Signed links to a running directory server.
pub struct DirectoryLinks {
    signer: Arc<UrlSigner>,
    /// `<protocol>://<uuid>.<domain>`.
    base: String,
    /// `<uuid>.<domain>`, the name the router maps to the server.
    host: String,
    port: u16,
}

impl DirectoryLinks {
    /// Links for a server listening on `port`, named with a fresh uuid (as the DEA's).
    pub fn new(
        config: &DirectoryServerConfig,
        signer: Arc<UrlSigner>,
        port: u16,
    ) -> DirectoryLinks {
        let uuid = uuid::Uuid::new_v4().simple().to_string();
        DirectoryLinks {
            signer,
            base: config.external_base(&uuid),
            host: format!("{uuid}.{}", config.domain),
            port,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }
}

impl FileLinks for DirectoryLinks {
    fn instance_file(&self, instance_id: &str, path: &str) -> String {
        self.signer.instance_url(&self.base, instance_id, path)
    }

    fn staging_file(&self, task_id: &str, path: &str) -> String {
        self.signer.staging_url(&self.base, task_id, path)
    }

    fn route(&self) -> Option<(String, u16)> {
        Some((self.host.clone(), self.port))
    }
}

/// Starts the directory server for an agent: its key (configured, else random), the key file
/// the operator CLI signs with, and the links the agent needs.
pub async fn start_directory_server(
    config: &crate::config::Config,
    instances: Arc<InstanceManager>,
) -> Result<(DirectoryServer, Arc<DirectoryLinks>), crate::files::FilesError> {
    let settings = &config.directory_server;
    let signer = Arc::new(settings.signer());
    let roots = Arc::new(AgentFiles::new(instances, config.base_dir.clone()));
    let server = crate::files::serve(settings, signer.clone(), roots).await?;
    crate::files::write_key_file(&config.base_dir, &signer)?;
    let links = Arc::new(DirectoryLinks::new(
        settings,
        signer,
        server.local_addr.port(),
    ));
    tracing::info!(addr = %server.local_addr, base = %links.base(), "directory server listening");
    Ok((server, links))
}
