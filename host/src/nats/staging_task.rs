//! A staging request from the bus (reference dea_ng.md §3): admission by reserved memory and
//! disk, the app package and buildpack cache downloaded, admin buildpacks fetched once per
//! key, the setup reply (with the streaming log URL), staging, droplet and cache uploads,
//! the completion reply, then the app started if the request carried a start message.
//!
//! The task's directory stands for the DEA's staging container root: its log is at
//! `tmp/staged/logs/staging_task.log`, where the directory server finds it while it grows.

use super::agent::{Agent, Mode, StagingHandle, lock};
use super::messages::{self, ErrorInfo, StagingCompletionReply, StagingSetupReply};
use crate::buildpack::Buildpack;
use crate::staging::{LogWatcher, StagingError, StagingLog, StagingRequest};
use async_nats::Subject;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The staging log inside a task's directory, as the container path the DEA signs URLs for.
pub const STAGING_LOG_PATH: &str = "/tmp/staged/logs/staging_task.log";

/// How a staging task ended badly: the reply's `error`, and `error_info` when the
/// buildpacks (not the agent) failed.
struct Failure {
    error: String,
    info: Option<ErrorInfo>,
}

impl Failure {
    fn agent(error: impl Into<String>) -> Failure {
        Failure {
            error: error.into(),
            info: None,
        }
    }
}

impl From<StagingError> for Failure {
    fn from(error: StagingError) -> Failure {
        let message = error.to_string();
        let info = match error.cf_type() {
            "StagingError" => None,
            kind => Some(ErrorInfo {
                kind: kind.to_string(),
                message: message.clone(),
            }),
        };
        Failure {
            error: format!("Error staging: {message}"),
            info,
        }
    }
}

/// What a finished staging tells the controller.
struct Outcome {
    detected_buildpack: Option<String>,
    buildpack_key: Option<String>,
    droplet_sha1: String,
    start_command: Option<String>,
    procfile: std::collections::BTreeMap<String, String>,
}

impl Agent {
    /// `staging.<uuid>.start` / `staging`.
    pub(super) async fn handle_staging(
        self: Arc<Self>,
        request: messages::StagingRequest,
        reply: Subject,
    ) {
        let subject = "staging.start";
        if let Err(reason) = check_request(&request) {
            self.reject(subject, &reason);
            // The controller waits for two replies: tell it now rather than let it time out.
            self.refuse_staging(
                &reply,
                &request.task_id,
                &request.app_id,
                &format!("Error staging: {reason}"),
            )
            .await;
            return;
        }
        let task_id = request.task_id.clone();
        if self.mode() != Mode::Serving {
            self.reply_setup(
                &reply,
                &task_id,
                None,
                Some("Error staging: DEA is shutting down"),
            )
            .await;
            return;
        }
        // Admission: the larger of the configured minimum and what the request asks for.
        let asked = |explicit: Option<u64>, from_start: Option<u64>| explicit.or(from_start);
        let limits = request.start_message.as_ref().map(|s| &s.limits);
        let memory_mb = asked(request.memory_limit, limits.map(|l| l.mem))
            .unwrap_or(0)
            .max(self.config.agent.staging_memory_mb);
        let disk_mb = asked(request.disk_limit, limits.map(|l| l.disk))
            .unwrap_or(0)
            .max(self.config.agent.staging_disk_mb);
        let dir = task_dir(&self.config.base_dir, &task_id);
        let cancel = CancellationToken::new();
        let admitted = {
            let mut stagings = lock(&self.stagings);
            if stagings.contains_key(&task_id) {
                Err(None)
            } else {
                match self.instances.reserve_staging(&task_id, memory_mb, disk_mb) {
                    Err(refusal) => Err(Some(refusal)),
                    Ok(()) => {
                        stagings.insert(
                            task_id.clone(),
                            StagingHandle {
                                app_id: request.app_id.clone(),
                                cancel: cancel.clone(),
                                dir: dir.clone(),
                            },
                        );
                        Ok(())
                    }
                }
            }
        };
        match admitted {
            Ok(()) => {}
            Err(None) => {
                self.reject(
                    subject,
                    &format!("staging task {task_id} is already running"),
                );
                return;
            }
            Err(Some(refusal)) => {
                self.reply_setup(&reply, &task_id, None, Some(&refusal))
                    .await;
                return;
            }
        }
        tracing::info!(task = %task_id, app = %request.app_id, "staging");
        let started = std::time::Instant::now();
        let result = tokio::select! {
            result = self.stage_task(&request, &dir, &reply, memory_mb) => result,
            _ = cancel.cancelled() => Err(Failure::agent("Error staging: task stopped")),
        };
        let completion = match &result {
            Ok(outcome) => StagingCompletionReply {
                task_id: task_id.clone(),
                app_id: request.app_id.clone(),
                detected_buildpack: outcome.detected_buildpack.clone(),
                buildpack_key: outcome.buildpack_key.clone(),
                droplet_sha1: Some(outcome.droplet_sha1.clone()),
                detected_start_command: outcome.start_command.clone(),
                procfile: Some(outcome.procfile.clone()),
                error: None,
                error_info: None,
            },
            Err(failure) => StagingCompletionReply {
                task_id: task_id.clone(),
                app_id: request.app_id.clone(),
                detected_buildpack: None,
                buildpack_key: None,
                droplet_sha1: None,
                detected_start_command: None,
                procfile: None,
                error: Some(failure.error.clone()),
                error_info: failure.info.clone(),
            },
        };
        self.publish(reply.to_string(), &completion).await;
        tracing::info!(
            task = %task_id,
            elapsed = ?started.elapsed(),
            error = completion.error.as_deref().unwrap_or("none"),
            "staging finished"
        );
        lock(&self.stagings).remove(&task_id);
        self.instances.release_staging(&task_id);
        // The task directory holds the cache buildpacks wrote: removed as a tenant's tree.
        crate::tenant_fs::remove_tree_off_thread(dir.clone()).await;
        if let (Ok(outcome), Some(start)) = (result, request.start_message) {
            if self.mode() != Mode::Serving {
                return;
            }
            let mut start = start;
            start.sha1 = Some(outcome.droplet_sha1);
            self.handle_start(start).await;
        }
    }

    /// Everything between admission and the completion reply.
    async fn stage_task(
        &self,
        request: &messages::StagingRequest,
        dir: &Path,
        reply: &Subject,
        memory_mb: u64,
    ) -> Result<Outcome, Failure> {
        let io = |e: std::io::Error| Failure::agent(format!("Error staging: {e}"));
        crate::tenant_fs::remove_tree_off_thread(dir.to_path_buf()).await;
        let log_path = dir.join(STAGING_LOG_PATH.trim_start_matches('/'));
        let log = Arc::new(StagingLog::create(&log_path, None).map_err(io)?);
        log.step(&format!(
            "Got staging request for app with id {}",
            request.app_id
        ));
        let max_bytes = self.config.agent.max_download_mb << 20;
        let package = dir.join("app.zip");
        let cache_archive = dir.join("buildpack_cache.tgz");
        let (downloaded, cache) = tokio::join!(
            self.transfers
                .download(&request.download_uri, &package, max_bytes),
            async {
                match &request.buildpack_cache_download_uri {
                    Some(uri) => Some(
                        self.transfers
                            .download(uri, &cache_archive, max_bytes)
                            .await,
                    ),
                    None => None,
                }
            }
        );
        let log_url = self
            .links
            .as_ref()
            .map(|links| links.staging_file(&request.task_id, STAGING_LOG_PATH));
        if let Err(e) = downloaded {
            let error = format!("Error downloading: {e}");
            log.warning(&error);
            self.reply_setup(reply, &request.task_id, log_url.as_deref(), Some(&error))
                .await;
            return Err(Failure::agent(error));
        }
        self.reply_setup(reply, &request.task_id, log_url.as_deref(), None)
            .await;

        // A broken cache never fails a staging (the DEA learned that the hard way, #143).
        let cache_dir = dir.join("cache");
        tokio::fs::create_dir_all(&cache_dir).await.map_err(io)?;
        match cache {
            Some(Ok((bytes, _))) => {
                let (from, to) = (cache_archive.clone(), cache_dir.clone());
                let limits = crate::droplet::UnpackLimits {
                    max_bytes,
                    max_files: 1_000_000,
                    max_depth: self.config.staging.max_dir_depth,
                };
                let unpacked = tokio::task::spawn_blocking(move || {
                    crate::droplet::unpack_source(&from, &to, limits)
                })
                .await;
                match unpacked {
                    Ok(Ok(_)) => log.step(&format!(
                        "Downloaded app buildpack cache ({})",
                        crate::staging::human_size(bytes)
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
        let env = staging_env(
            request,
            memory_mb,
            self.config.staging.max_staging_duration_secs,
        );
        let task_log = log.clone();
        let watcher: LogWatcher = Arc::new(move |bytes: &[u8]| task_log.write_raw(bytes));
        let droplet_path = dir.join("droplet.tgz");
        let staging = StagingRequest {
            source: package,
            output: droplet_path.clone(),
            buildpacks: named,
            env,
            stack: request.stack.clone(),
            cache_dir: Some(cache_dir.clone()),
            start_command: request.properties.custom_command(),
            watcher: Some(watcher),
            candidates: (!admin.is_empty()).then(|| admin.clone()),
        };
        let staged = self.stager.stage(staging).await?;

        // Keep the droplet so a start right after staging needs no download.
        let sha1 = staged.droplet.sha1.clone();
        self.instances
            .droplets()
            .get(&droplet_path.display().to_string(), Some(&sha1))
            .await
            .map_err(|e| Failure::agent(format!("Error staging: {e}")))?;
        self.transfers
            .upload(&request.upload_uri, &droplet_path)
            .await
            .map_err(|e| Failure::agent(format!("Error uploading: ({e})")))?;
        if let Some(uri) = &request.buildpack_cache_upload_uri {
            self.upload_cache(uri, &cache_dir, dir, &log).await;
        }
        let buildpack_key = request.properties.buildpack_key.clone().or_else(|| {
            admin
                .iter()
                .any(|bp| bp.id == staged.info.buildpack_key)
                .then(|| staged.info.buildpack_key.clone())
        });
        Ok(Outcome {
            detected_buildpack: Some(staged.info.detected_buildpack.clone()),
            buildpack_key,
            droplet_sha1: sha1,
            start_command: staged.info.start_command.clone(),
            procfile: staged.info.effective_procfile.clone(),
        })
    }

    /// Answers a staging request that will not be staged at all (malformed, or failing its
    /// checks) with both replies the controller waits for, each carrying the error.
    pub(super) async fn refuse_staging(
        &self,
        reply: &Subject,
        task_id: &str,
        app_id: &str,
        error: &str,
    ) {
        self.reply_setup(reply, task_id, None, Some(error)).await;
        let completion = StagingCompletionReply {
            task_id: task_id.to_string(),
            app_id: app_id.to_string(),
            detected_buildpack: None,
            buildpack_key: None,
            droplet_sha1: None,
            detected_start_command: None,
            procfile: None,
            error: Some(error.to_string()),
            error_info: None,
        };
        self.publish(reply.to_string(), &completion).await;
    }

    async fn reply_setup(
        &self,
        reply: &Subject,
        task_id: &str,
        log_url: Option<&str>,
        error: Option<&str>,
    ) {
        let message = StagingSetupReply {
            task_id: task_id.to_string(),
            task_streaming_log_url: log_url.map(str::to_string),
            error: error.map(str::to_string),
        };
        self.publish(reply.to_string(), &message).await;
    }

    /// The admin buildpacks of a request, in its order: each downloaded once per key into
    /// `admin_buildpacks/` and unpacked (safely) like any buildpack archive.
    async fn admin_buildpacks(
        &self,
        wanted: &[messages::AdminBuildpack],
    ) -> Result<Vec<Buildpack>, Failure> {
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let _one_at_a_time = self.admin_buildpacks.lock().await;
        let root = self.config.base_dir.join("admin_buildpacks");
        tokio::fs::create_dir_all(&root)
            .await
            .map_err(|e| Failure::agent(format!("Error staging: {e}")))?;
        let mut buildpacks = Vec::new();
        for admin in wanted {
            let archive = root.join(format!("{}.zip", admin.key));
            if !archive.is_file() {
                let partial = root.join(format!(".{}.zip.part", admin.key));
                // Three attempts, as the DEA (with back-off between them).
                let max_bytes = self.config.agent.max_download_mb << 20;
                if let Err(e) = self
                    .transfers
                    .download_with_retries(&admin.url, &partial, max_bytes, 3)
                    .await
                {
                    return Err(Failure::agent(format!(
                        "Error staging: downloading admin buildpack {}: {e}",
                        admin.key
                    )));
                }
                tokio::fs::rename(&partial, &archive)
                    .await
                    .map_err(|e| Failure::agent(format!("Error staging: {e}")))?;
            }
            let unpack_root = self.config.buildpack_unpack_dir();
            let key = admin.key.clone();
            let loaded = tokio::task::spawn_blocking(move || {
                Buildpack::load_archive(&archive, &unpack_root)
            })
            .await
            .map_err(|e| Failure::agent(format!("Error staging: {e}")))?;
            let mut buildpack = loaded.map_err(|e| {
                Failure::agent(format!("Error staging: admin buildpack {key}: {e}"))
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
        request: &messages::StagingRequest,
        admin: &[Buildpack],
    ) -> Result<Vec<String>, Failure> {
        if let Some(key) = request
            .properties
            .buildpack_key
            .as_ref()
            .filter(|key| !key.is_empty())
        {
            return if admin.iter().any(|bp| bp.id == *key)
                || self.stager.buildpacks().iter().any(|bp| bp.id == *key)
            {
                Ok(vec![key.clone()])
            } else {
                Err(Failure::agent(format!(
                    "Error staging: no buildpack with key {key}"
                )))
            };
        }
        let custom = request
            .properties
            .buildpack
            .as_ref()
            .or(request.properties.buildpack_git_url.as_ref())
            .filter(|b| !b.is_empty());
        match custom {
            None => Ok(Vec::new()),
            Some(url) if url.contains("://") || url.starts_with("git@") => {
                Err(Failure::agent(format!(
                    "Error staging: custom buildpack {url} cannot be fetched by this DEA; \
                     install it as an admin buildpack"
                )))
            }
            Some(name) => {
                let known = admin.iter().any(|bp| bp.id == *name)
                    || self.stager.buildpacks().iter().any(|bp| bp.id == *name);
                if known {
                    Ok(vec![name.clone()])
                } else {
                    Err(Failure::agent(format!(
                        "Error staging: no buildpack named {name}"
                    )))
                }
            }
        }
    }

    /// Packs and uploads the buildpack cache; a failure is only a warning.
    async fn upload_cache(&self, uri: &str, cache_dir: &Path, dir: &Path, log: &StagingLog) {
        let archive = dir.join("buildpack_cache.tgz");
        let (tree, output) = (cache_dir.to_path_buf(), archive.clone());
        // The cache is what the buildpacks left: packed within the download limit and the
        // depth and entry caps, so an upload can never be larger than a download may be.
        let limits = crate::droplet::PackLimits {
            max_bytes: self.config.agent.max_download_mb << 20,
            walk: crate::tenant_fs::WalkLimits {
                max_depth: self.config.staging.max_dir_depth,
                max_entries: 1_000_000,
                deadline: Some(
                    std::time::Instant::now()
                        + std::time::Duration::from_secs(
                            self.config.staging.max_staging_duration_secs,
                        ),
                ),
            },
        };
        let packed = tokio::task::spawn_blocking(move || {
            crate::droplet::pack_tree_limited(&tree, &output, 1, 1, limits)
        })
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

    /// `staging.stop` (or a `dea.stop` naming only the app): stops its stagings, each of
    /// which then replies "task stopped".
    pub(super) fn stop_stagings(&self, app_id: &str) {
        for task in lock(&self.stagings).values() {
            if task.app_id == app_id {
                task.cancel.cancel();
            }
        }
    }
}

/// A task id becomes a directory name and part of a URL: letters, digits, `-` and `_` only.
fn check_request(request: &messages::StagingRequest) -> Result<(), String> {
    let safe = |s: &str| {
        !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !safe(&request.task_id) {
        return Err(format!("unusable task_id {:?}", request.task_id));
    }
    if request.app_id.trim().is_empty() {
        return Err("staging request without app_id".into());
    }
    for (name, uri) in [
        ("download_uri", Some(&request.download_uri)),
        ("upload_uri", Some(&request.upload_uri)),
        (
            "buildpack_cache_download_uri",
            request.buildpack_cache_download_uri.as_ref(),
        ),
        (
            "buildpack_cache_upload_uri",
            request.buildpack_cache_upload_uri.as_ref(),
        ),
    ] {
        if let Some(uri) = uri
            && !(uri.starts_with("http://") || uri.starts_with("https://"))
        {
            return Err(format!("{name} is not an http(s) URL"));
        }
    }
    for admin in &request.admin_buildpacks {
        if !safe(&admin.key) {
            return Err(format!("unusable admin buildpack key {:?}", admin.key));
        }
        if !(admin.url.starts_with("http://") || admin.url.starts_with("https://")) {
            return Err(format!("admin buildpack {} has no http(s) URL", admin.key));
        }
    }
    if request.admin_buildpacks.len() > 1000 || request.properties.environment.len() > 10_000 {
        return Err("staging request too large".into());
    }
    Ok(())
}

/// The staging environment (§3.4): the user's variables, `VCAP_APPLICATION`,
/// `VCAP_SERVICES`, `MEMORY_LIMIT` and `STAGING_TIMEOUT`.
fn staging_env(
    request: &messages::StagingRequest,
    memory_mb: u64,
    timeout_secs: u64,
) -> Vec<(String, String)> {
    let vcap_application = request
        .start_message
        .as_ref()
        .map(|s| s.vcap_application.to_string())
        .filter(|v| v != "null")
        .unwrap_or_else(|| "{}".into());
    let mut env = vec![
        ("VCAP_APPLICATION".to_string(), vcap_application),
        (
            "VCAP_SERVICES".to_string(),
            super::handlers::vcap_services(&request.properties.services).to_string(),
        ),
        ("MEMORY_LIMIT".to_string(), format!("{memory_mb}m")),
        ("STAGING_TIMEOUT".to_string(), format!("{timeout_secs}.0")),
    ];
    env.extend(request.properties.env_pairs());
    env
}

/// The directory of a staging task, for tests and the directory server.
pub fn task_dir(base_dir: &Path, task_id: &str) -> PathBuf {
    base_dir.join("tasks").join(task_id)
}
