//! A staging a controller asks for (reference dea_ng.md §3.3): the app package and buildpack
//! cache downloaded from its URLs, admin buildpacks fetched once per key, the staging run in
//! the task's directory with its log where the directory server finds it, the droplet and
//! the cache uploaded back. What the NATS layer does around it — admission, the two replies,
//! keeping the droplet for a start — is protocol; this is staging.

use super::{LogWatcher, Stager, StagingError, StagingLog, StagingRequest};
use crate::buildpack::{Buildpack, BuildpackError};
use crate::config::Config;
use crate::droplet::{PackLimits, UnpackLimits, pack_tree_limited, unpack_source};
use crate::tenant_fs::WalkLimits;
use crate::transfer::{TransferError, Transfers};
use crate::units::human_size;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The staging log inside a task's directory, as the container path the DEA signs URLs for.
pub const STAGING_LOG_PATH: &str = "/tmp/staged/logs/staging_task.log";

/// The directory of a staging task.
pub fn task_dir(base_dir: &Path, task_id: &str) -> PathBuf {
    base_dir.join("tasks").join(task_id)
}

/// An admin buildpack as a controller names it.
#[derive(Debug, Clone)]
pub struct AdminBuildpack {
    pub key: String,
    pub url: String,
}

/// What a controller asked to stage, checked by the caller.
#[derive(Debug, Clone)]
pub struct RemoteRequest {
    pub task_id: String,
    pub app_id: String,
    pub download_uri: String,
    pub upload_uri: String,
    pub cache_download_uri: Option<String>,
    pub cache_upload_uri: Option<String>,
    pub admin_buildpacks: Vec<AdminBuildpack>,
    /// `buildpack_key`: an admin (or installed) buildpack by key.
    pub buildpack_key: Option<String>,
    /// `buildpack` / `buildpack_git_url`: an installed buildpack by name (URLs are refused).
    pub buildpack: Option<String>,
    pub env: Vec<(String, String)>,
    pub stack: Option<String>,
    pub start_command: Option<String>,
}

/// A finished remote staging.
#[derive(Debug, Clone)]
pub struct RemoteOutcome {
    pub detected_buildpack: String,
    /// The admin buildpack's key, when one built the app.
    pub buildpack_key: Option<String>,
    pub droplet_sha1: String,
    /// The droplet, in the task's directory (until the task is cleaned up).
    pub droplet: PathBuf,
    pub start_command: Option<String>,
    pub procfile: BTreeMap<String, String>,
    /// For the completion reply's `dea_bill_of_materials`.
    pub bill_of_materials: dea_protocol::BillOfMaterials,
}

/// Why a remote staging failed. The `Display` text is the reply's `error` as the DEA words
/// it (`Error downloading: ...`, `Error staging: ...`, `Error uploading: (...)`).
#[derive(Debug, thiserror::Error)]
pub enum RemoteFailure {
    /// The app package did not download.
    #[error("Error downloading: {0}")]
    Download(#[source] TransferError),
    /// The droplet did not upload.
    #[error("Error uploading: ({0})")]
    Upload(#[source] TransferError),
    #[error("Error staging: downloading admin buildpack {key}: {source}")]
    AdminDownload { key: String, source: TransferError },
    #[error("Error staging: admin buildpack {key}: {source}")]
    AdminBuildpack { key: String, source: BuildpackError },
    #[error("Error staging: no buildpack with key {0}")]
    UnknownKey(String),
    #[error("Error staging: no buildpack named {0}")]
    UnknownName(String),
    /// Git URLs are not fetched: this agent has no route out but its mirrors.
    #[error(
        "Error staging: custom buildpack {0} cannot be fetched by this DEA; \
         install it as an admin buildpack"
    )]
    CustomUrl(String),
    /// The task's own files (workspace, log) could not be made.
    #[error("Error staging: {0}")]
    Workspace(#[from] std::io::Error),
    /// A blocking step panicked or was cancelled.
    #[error("Error staging: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The buildpacks (or the stager around them) failed.
    #[error("Error staging: {0}")]
    Staging(#[from] StagingError),
}

impl RemoteFailure {
    /// The staging's own error, when the buildpacks (not the transfers) failed.
    pub fn staging(&self) -> Option<&StagingError> {
        match self {
            RemoteFailure::Staging(error) => Some(error),
            _ => None,
        }
    }
}

/// How the first reply goes: `Ok` once the package is in, else the download's error.
pub type SetupSignal = tokio::sync::oneshot::Sender<Result<(), String>>;

/// Stages for controllers: one per agent.
pub struct RemoteStager {
    stager: Arc<Stager>,
    transfers: Transfers,
    /// Admin buildpacks are fetched one at a time (the DEA's global mutex).
    admin_lock: tokio::sync::Mutex<()>,
    base_dir: PathBuf,
    unpack_root: PathBuf,
    max_download: u64,
    max_dir_depth: usize,
    max_duration: Duration,
}

impl RemoteStager {
    pub fn new(config: &Config, stager: Arc<Stager>) -> RemoteStager {
        RemoteStager {
            stager,
            transfers: Transfers::new(),
            admin_lock: tokio::sync::Mutex::new(()),
            base_dir: config.base_dir.clone(),
            unpack_root: config.buildpack_unpack_dir(),
            max_download: config.agent.max_download_mb << 20,
            max_dir_depth: config.staging.max_dir_depth,
            max_duration: Duration::from_secs(config.staging.max_staging_duration_secs),
        }
    }

    /// A stager that also moves `dea-blob://` packages, caches and droplets.
    pub fn with_blobs(mut self, blobs: crate::blobstore::BlobStore) -> RemoteStager {
        self.transfers = self.transfers.with_blobs(blobs);
        self
    }

    pub fn stager(&self) -> &Arc<Stager> {
        &self.stager
    }

    /// Runs `request` in its task directory; `setup` learns when the package is in (or
    /// could not be had), which is when the controller gets its first reply.
    pub async fn stage(
        &self,
        request: &RemoteRequest,
        setup: SetupSignal,
    ) -> Result<RemoteOutcome, RemoteFailure> {
        let dir = task_dir(&self.base_dir, &request.task_id);
        crate::tenant_fs::remove_tree_off_thread(dir.clone()).await;
        let log_path = dir.join(STAGING_LOG_PATH.trim_start_matches('/'));
        let log = Arc::new(StagingLog::create(&log_path, None).map_err(RemoteFailure::Workspace)?);
        log.step(&format!(
            "Got staging request for app with id {}",
            request.app_id
        ));
        let package = dir.join("app.zip");
        let cache_archive = dir.join("buildpack_cache.tgz");
        let (downloaded, cache) = tokio::join!(
            self.transfers
                .download(&request.download_uri, &package, self.max_download),
            async {
                match &request.cache_download_uri {
                    Some(uri) => Some(
                        self.transfers
                            .download(uri, &cache_archive, self.max_download)
                            .await,
                    ),
                    None => None,
                }
            }
        );
        if let Err(e) = downloaded {
            let failure = RemoteFailure::Download(e);
            let error = failure.to_string();
            log.warning(&error);
            let _ = setup.send(Err(error));
            return Err(failure);
        }
        let _ = setup.send(Ok(()));

        // A broken cache never fails a staging (the DEA learned that the hard way, #143).
        let cache_dir = dir.join("cache");
        tokio::fs::create_dir_all(&cache_dir)
            .await
            .map_err(RemoteFailure::Workspace)?;
        match cache {
            Some(Ok((bytes, _))) => {
                let (from, to) = (cache_archive.clone(), cache_dir.clone());
                let limits = UnpackLimits {
                    max_bytes: self.max_download,
                    max_files: 1_000_000,
                    max_depth: self.max_dir_depth,
                };
                let unpacked =
                    tokio::task::spawn_blocking(move || unpack_source(&from, &to, limits)).await;
                match unpacked {
                    Ok(Ok(_)) => log.step(&format!(
                        "Downloaded app buildpack cache ({})",
                        human_size(bytes)
                    )),
                    Ok(Err(e)) => log.warning(&format!("Ignoring the buildpack cache: {e}")),
                    Err(e) => log.warning(&format!("Ignoring the buildpack cache: {e}")),
                }
            }
            Some(Err(e)) => log.warning(&format!("No buildpack cache: {e}")),
            None => {}
        }

        let admin = self.admin_buildpacks(&request.admin_buildpacks).await?;
        let named = self.named_buildpacks(request, &admin)?;
        let task_log = log.clone();
        let watcher: LogWatcher = Arc::new(move |bytes: &[u8]| task_log.write_raw(bytes));
        let droplet = dir.join("droplet.tgz");
        let staging = StagingRequest {
            source: package,
            output: droplet.clone(),
            buildpacks: named,
            env: request.env.clone(),
            stack: request.stack.clone(),
            cache_dir: Some(cache_dir.clone()),
            start_command: request.start_command.clone(),
            watcher: Some(watcher),
            candidates: (!admin.is_empty()).then(|| admin.clone()),
        };
        let staged = self.stager.stage(staging).await?;
        self.transfers
            .upload(&request.upload_uri, &droplet)
            .await
            .map_err(RemoteFailure::Upload)?;
        if let Some(uri) = &request.cache_upload_uri {
            self.upload_cache(uri, &cache_dir, &dir, &log).await;
        }
        let buildpack_key = request.buildpack_key.clone().or_else(|| {
            admin
                .iter()
                .any(|bp| bp.id == staged.info.buildpack_key)
                .then(|| staged.info.buildpack_key.clone())
        });
        Ok(RemoteOutcome {
            detected_buildpack: staged.info.detected_buildpack.clone(),
            buildpack_key,
            droplet_sha1: staged.droplet.sha1.clone(),
            droplet,
            start_command: staged.info.start_command.clone(),
            procfile: staged.info.effective_procfile.clone(),
            bill_of_materials: staged.dependencies.to_wire(&staged.fetches),
        })
    }

    /// The admin buildpacks of a request, in its order: each downloaded once per key into
    /// `admin_buildpacks/` and unpacked (safely) like any buildpack archive.
    async fn admin_buildpacks(
        &self,
        wanted: &[AdminBuildpack],
    ) -> Result<Vec<Buildpack>, RemoteFailure> {
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let _one_at_a_time = self.admin_lock.lock().await;
        let root = self.base_dir.join("admin_buildpacks");
        tokio::fs::create_dir_all(&root).await?;
        let mut buildpacks = Vec::new();
        for admin in wanted {
            let archive = root.join(format!("{}.zip", admin.key));
            if !archive.is_file() {
                let partial = root.join(format!(".{}.zip.part", admin.key));
                // Three attempts, as the DEA (with back-off between them).
                self.transfers
                    .download_with_retries(&admin.url, &partial, self.max_download, 3)
                    .await
                    .map_err(|source| RemoteFailure::AdminDownload {
                        key: admin.key.clone(),
                        source,
                    })?;
                tokio::fs::rename(&partial, &archive).await?;
            }
            let unpack_root = self.unpack_root.clone();
            let key = admin.key.clone();
            let loaded = tokio::task::spawn_blocking(move || {
                Buildpack::load_archive(&archive, &unpack_root)
            })
            .await?;
            let mut buildpack = loaded.map_err(|source| RemoteFailure::AdminBuildpack {
                key: key.clone(),
                source,
            })?;
            // The controller names admin buildpacks by key (`buildpack_key`).
            buildpack.id = key;
            buildpacks.push(buildpack);
        }
        Ok(buildpacks)
    }

    /// The buildpacks a request names (skipping detection): `buildpack_key`, or
    /// `buildpack` when it names an installed buildpack. Git URLs are not fetched: this
    /// agent has no route out but its mirrors.
    fn named_buildpacks(
        &self,
        request: &RemoteRequest,
        admin: &[Buildpack],
    ) -> Result<Vec<String>, RemoteFailure> {
        let known = |id: &str| {
            admin.iter().any(|bp| bp.id == id)
                || self.stager.buildpacks().iter().any(|bp| bp.id == id)
        };
        if let Some(key) = request.buildpack_key.as_ref().filter(|key| !key.is_empty()) {
            return if known(key) {
                Ok(vec![key.clone()])
            } else {
                Err(RemoteFailure::UnknownKey(key.clone()))
            };
        }
        match request.buildpack.as_ref().filter(|b| !b.is_empty()) {
            None => Ok(Vec::new()),
            Some(url) if url.contains("://") || url.starts_with("git@") => {
                Err(RemoteFailure::CustomUrl(url.clone()))
            }
            Some(name) if known(name) => Ok(vec![name.clone()]),
            Some(name) => Err(RemoteFailure::UnknownName(name.clone())),
        }
    }

    /// Packs and uploads the buildpack cache; a failure is only a warning.
    async fn upload_cache(&self, uri: &str, cache_dir: &Path, dir: &Path, log: &StagingLog) {
        let archive = dir.join("buildpack_cache.tgz");
        let (tree, output) = (cache_dir.to_path_buf(), archive.clone());
        // The cache is what the buildpacks left: packed within the download limit and the
        // depth and entry caps, so an upload can never be larger than a download may be.
        let limits = PackLimits {
            max_bytes: self.max_download,
            walk: WalkLimits {
                max_depth: self.max_dir_depth,
                max_entries: 1_000_000,
                deadline: Some(Instant::now() + self.max_duration),
            },
        };
        let packed =
            tokio::task::spawn_blocking(move || pack_tree_limited(&tree, &output, 1, 1, limits))
                .await;
        match packed {
            Ok(Ok(_)) => {
                if let Err(e) = self.transfers.upload(uri, &archive).await {
                    log.warning(&format!("Uploading the buildpack cache: {e}"));
                }
            }
            Ok(Err(e)) => log.warning(&format!("Packing the buildpack cache: {e}")),
            Err(e) => log.warning(&format!("Packing the buildpack cache: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RemoteFailure;
    use crate::staging::StagingError;

    /// The reply's `error` is the DEA's text (dea_ng.md §3.2), said once.
    #[test]
    fn failures_read_as_the_dea_words_them() {
        let stack = RemoteFailure::from(StagingError::UnknownStack("cflinuxfs9".into()));
        assert_eq!(
            stack.to_string(),
            "Error staging: Stack cflinuxfs9 does not exist"
        );
        assert!(stack.staging().is_some());
        let key = RemoteFailure::UnknownKey("java".into());
        assert_eq!(key.to_string(), "Error staging: no buildpack with key java");
        assert!(key.staging().is_none());
    }
}
