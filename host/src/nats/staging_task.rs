//! A staging request from the bus (reference dea_ng.md §3), as protocol: the request checked
//! whole (and answered even when refused), admission by reserved memory and disk, the setup
//! reply once the package is in (with the streaming log URL), the completion reply, the
//! droplet kept so a start right after needs no download, then the app started if the
//! request carried a start message. The staging itself is [`crate::staging::remote`].

use super::agent::{Agent, Mode, StagingHandle};
use super::messages::{self, ErrorInfo, StagingCompletionReply, StagingSetupReply};
use crate::staging::CfErrorType;
use crate::staging::remote::{
    AdminBuildpack, RemoteFailure, RemoteOutcome, RemoteRequest, STAGING_LOG_PATH, task_dir,
};
use async_nats::Subject;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

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

impl From<RemoteFailure> for Failure {
    fn from(failure: RemoteFailure) -> Failure {
        let info = failure.staging().and_then(|error| match error.cf_type() {
            CfErrorType::StagingError => None,
            kind => Some(ErrorInfo {
                kind: kind.as_str().to_string(),
                message: error.to_string(),
            }),
        });
        Failure {
            error: failure.to_string(),
            info,
        }
    }
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
            self.reject(subject, &reason.to_string());
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
            let mut stagings = self.stagings.lock();
            if stagings.contains_key(&task_id) {
                Err(None)
            } else {
                match self.instances.reserve_staging(&task_id, memory_mb, disk_mb) {
                    Err(refusal) => Err(Some(refusal.to_string())),
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
            result = self.stage_task(&request, &reply, memory_mb) => result,
            _ = cancel.cancelled() => Err(Failure::agent("Error staging: task stopped")),
        };
        let completion = match &result {
            Ok(outcome) => StagingCompletionReply {
                task_id: task_id.clone(),
                app_id: request.app_id.clone(),
                detected_buildpack: Some(outcome.detected_buildpack.clone()),
                buildpack_key: outcome.buildpack_key.clone(),
                droplet_sha1: Some(outcome.droplet_sha1.clone()),
                detected_start_command: outcome.start_command.clone(),
                procfile: Some(outcome.procfile.clone()),
                error: None,
                error_info: None,
                dea_bill_of_materials: Some(outcome.bill_of_materials.clone()),
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
                dea_bill_of_materials: None,
            },
        };
        self.publish(reply.to_string(), &completion).await;
        tracing::info!(
            task = %task_id,
            elapsed = ?started.elapsed(),
            error = completion.error.as_deref().unwrap_or("none"),
            "staging finished"
        );
        self.stagings.lock().remove(&task_id);
        self.instances.release_staging(&task_id);
        // The task directory holds the cache buildpacks wrote: removed as a tenant's tree,
        // after the log's retention (a follower of the log gets its end; the directory
        // server streams a tail until the file is gone).
        let retention = Duration::from_secs(self.config.staging.log_retention_secs);
        if retention.is_zero() {
            crate::tenant_fs::remove_tree_off_thread(dir.clone()).await;
        } else {
            let dir = dir.clone();
            tokio::spawn(async move {
                tokio::time::sleep(retention).await;
                crate::tenant_fs::remove_tree_off_thread(dir).await;
            });
        }
        if let (Ok(outcome), Some(start)) = (result, request.start_message) {
            if self.mode() != Mode::Serving {
                return;
            }
            let mut start = start;
            start.sha1 = Some(outcome.droplet_sha1);
            self.handle_start(start).await;
        }
    }

    /// Everything between admission and the completion reply: the staging, then the
    /// droplet kept in the store for a start.
    async fn stage_task(
        &self,
        request: &messages::StagingRequest,
        reply: &Subject,
        memory_mb: u64,
    ) -> Result<RemoteOutcome, Failure> {
        let remote = RemoteRequest {
            task_id: request.task_id.clone(),
            app_id: request.app_id.clone(),
            download_uri: request.download_uri.clone(),
            upload_uri: request.upload_uri.clone(),
            cache_download_uri: request.buildpack_cache_download_uri.clone(),
            cache_upload_uri: request.buildpack_cache_upload_uri.clone(),
            admin_buildpacks: request
                .admin_buildpacks
                .iter()
                .map(|admin| AdminBuildpack {
                    key: admin.key.clone(),
                    url: admin.url.clone(),
                })
                .collect(),
            buildpack_key: request.properties.buildpack_key.clone(),
            buildpack: request
                .properties
                .buildpack
                .clone()
                .or(request.properties.buildpack_git_url.clone()),
            env: staging_env(
                request,
                memory_mb,
                self.config.staging.max_staging_duration_secs,
            ),
            stack: request.stack.clone(),
            start_command: request.properties.custom_command(),
        };
        let log_url = self
            .links
            .as_ref()
            .map(|links| links.staging_file(&request.task_id, STAGING_LOG_PATH));
        let (setup_tx, setup_rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
        let setup_reply = async {
            if let Ok(setup) = setup_rx.await {
                let error = setup.err();
                self.reply_setup(
                    reply,
                    &request.task_id,
                    log_url.as_deref(),
                    error.as_deref(),
                )
                .await;
            }
        };
        let (outcome, ()) = tokio::join!(self.remote.stage(&remote, setup_tx), setup_reply);
        let outcome = outcome?;
        // Keep the droplet so a start right after staging needs no download.
        self.instances
            .droplets()
            .get(
                &outcome.droplet.display().to_string(),
                Some(&outcome.droplet_sha1),
            )
            .await
            .map_err(|e| Failure::agent(format!("Error staging: {e}")))?;
        Ok(outcome)
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
            dea_bill_of_materials: None,
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

    /// `staging.stop` (or a `dea.stop` naming only the app): stops its stagings, each of
    /// which then replies "task stopped".
    pub(super) fn stop_stagings(&self, app_id: &str) {
        for task in self.stagings.lock().values() {
            if task.app_id == app_id {
                task.cancel.cancel();
            }
        }
    }
}

/// Why a staging request is refused before any work (the reply says `Error staging: ...`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum Refusal {
    #[error("unusable task_id {0:?}")]
    TaskId(String),
    #[error("staging request without app_id")]
    NoAppId,
    #[error("{0} is neither an http(s) URL nor a dea-blob:// URI of the platform's blobstore")]
    NotHttp(&'static str),
    #[error("unusable admin buildpack key {0:?}")]
    AdminKey(String),
    #[error("admin buildpack {0} has no http(s) URL")]
    AdminUrl(String),
    #[error("staging request too large")]
    TooLarge,
}

/// Most admin buildpacks and environment variables one request may carry.
const MAX_ADMIN_BUILDPACKS: usize = 1000;
const MAX_ENV: usize = 10_000;

/// Checks what becomes a path or a URL the agent acts on: a task id or admin buildpack key
/// becomes a directory name and part of a URL (letters, digits, `-` and `_` only); every
/// URL must parse as http(s) or name a blob of the platform's (`dea-blob://`; admin
/// buildpacks are http(s) only).
fn check_request(request: &messages::StagingRequest) -> Result<(), Refusal> {
    let safe = |s: &str| {
        !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let http =
        |uri: &str| url::Url::parse(uri).is_ok_and(|url| matches!(url.scheme(), "http" | "https"));
    if !safe(&request.task_id) {
        return Err(Refusal::TaskId(request.task_id.clone()));
    }
    if request.app_id.trim().is_empty() {
        return Err(Refusal::NoAppId);
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
            && !http(uri)
            && messages::BlobUri::parse(uri).is_err()
        {
            return Err(Refusal::NotHttp(name));
        }
    }
    if request.admin_buildpacks.len() > MAX_ADMIN_BUILDPACKS
        || request.properties.environment.len() > MAX_ENV
    {
        return Err(Refusal::TooLarge);
    }
    for admin in &request.admin_buildpacks {
        if !safe(&admin.key) {
            return Err(Refusal::AdminKey(admin.key.clone()));
        }
        if !http(&admin.url) {
            return Err(Refusal::AdminUrl(admin.key.clone()));
        }
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
            super::cmd::start::vcap_services(&request.properties.services).to_string(),
        ),
        ("MEMORY_LIMIT".to_string(), format!("{memory_mb}m")),
        ("STAGING_TIMEOUT".to_string(), format!("{timeout_secs}.0")),
    ];
    env.extend(request.properties.env_pairs());
    env
}

#[cfg(test)]
mod tests {
    use super::{Refusal, check_request, staging_env};
    use crate::nats::messages::StagingRequest;
    use serde_json::json;

    /// A request as a controller sends it, with `change` applied to the JSON.
    fn request(change: impl FnOnce(&mut serde_json::Value)) -> StagingRequest {
        let mut value = json!({
            "app_id": "app-1", "task_id": "task-1",
            "download_uri": "http://cc.internal/app.zip",
            "upload_uri": "https://cc.internal/droplet",
            "properties": {"environment": ["A=1", "B=x=y", "NOEQUALS"]},
        });
        change(&mut value);
        serde_json::from_value(value).expect("a valid staging request")
    }

    #[test]
    fn a_plain_request_passes() {
        assert_eq!(check_request(&request(|_| {})), Ok(()));
    }

    #[test]
    fn ids_that_would_leave_the_tasks_directory_are_refused() {
        for bad in ["", "../x", "a/b", "a b", ".", "x\u{0}", &"a".repeat(129)] {
            let refused = check_request(&request(|v| v["task_id"] = json!(bad)));
            assert_eq!(refused, Err(Refusal::TaskId(bad.to_string())), "{bad:?}");
        }
        let refused = check_request(&request(|v| {
            v["admin_buildpacks"] = json!([{"key": "../../etc", "url": "http://x/bp.zip"}])
        }));
        assert_eq!(refused, Err(Refusal::AdminKey("../../etc".into())));
        let refused = check_request(&request(|v| v["app_id"] = json!("  ")));
        assert_eq!(refused, Err(Refusal::NoAppId));
    }

    #[test]
    fn every_url_must_parse_as_http_or_name_a_platform_blob() {
        for (field, bad) in [
            ("download_uri", "file:///etc/shadow"),
            ("download_uri", "dea-blob://dea-packages/../../etc/shadow"),
            ("upload_uri", "dea-blob://KV_dea-apps/x"),
            ("upload_uri", "ftp://cc/droplet"),
            ("buildpack_cache_download_uri", "http://"),
            ("buildpack_cache_upload_uri", "/relative/path"),
        ] {
            let refused = check_request(&request(|v| v[field] = json!(bad)));
            assert_eq!(refused, Err(Refusal::NotHttp(field)), "{field} = {bad}");
        }
        let refused = check_request(&request(|v| {
            v["admin_buildpacks"] = json!([{"key": "java", "url": "git@github.com:x/y"}])
        }));
        assert_eq!(refused, Err(Refusal::AdminUrl("java".into())));
        let blobs = check_request(&request(|v| {
            v["download_uri"] = json!("dea-blob://dea-packages/shop-1.zip");
            v["upload_uri"] = json!("dea-blob://dea-droplets/");
        }));
        assert_eq!(blobs, Ok(()));
        // Absent and null cache URIs mean "no cache", not an empty URL.
        assert_eq!(
            check_request(&request(|v| v["buildpack_cache_upload_uri"] = json!(null))),
            Ok(())
        );
    }

    #[test]
    fn oversized_requests_are_refused() {
        let env: Vec<String> = (0..10_001).map(|i| format!("V{i}=1")).collect();
        let refused = check_request(&request(|v| v["properties"]["environment"] = json!(env)));
        assert_eq!(refused, Err(Refusal::TooLarge));
    }

    #[test]
    fn staging_env_carries_the_limits_and_the_users_variables_last() {
        let with_start = request(|v| {
            v["start_message"] = json!({
                "droplet": "app-1", "index": 0, "cc_partition": "default",
                "limits": {"mem": 256, "disk": 1024, "fds": 16384},
                "vcap_application": {"space_id": "s"},
            });
            v["properties"]["services"] = json!([]);
        });
        let env = staging_env(&with_start, 1024, 900);
        let get = |key: &str| env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        assert_eq!(get("MEMORY_LIMIT"), Some("1024m"));
        assert_eq!(get("STAGING_TIMEOUT"), Some("900.0"));
        assert_eq!(get("VCAP_APPLICATION"), Some(r#"{"space_id":"s"}"#));
        assert_eq!(get("VCAP_SERVICES"), Some("{}"));
        assert_eq!(get("B"), Some("x=y"), "split on the first '='");
        assert_eq!(get("NOEQUALS"), None);
        // The user's variables come after the platform's, so a user's MEMORY_LIMIT wins
        // where the last value counts (as in a shell's environment).
        assert_eq!(env.last(), Some(&("B".to_string(), "x=y".to_string())));
        // Without a start message, VCAP_APPLICATION is an empty object, never "null".
        let env = staging_env(&request(|_| {}), 512, 60);
        assert!(env.contains(&("VCAP_APPLICATION".to_string(), "{}".to_string())));
    }
}
