//! Staging an app through an agent, as Cloud Controller did (reference dea_ng.md §3): a
//! `staging.<agent>.start` request whose reply subject gets two answers — the setup reply
//! with the streaming log's URL, then the completion with the droplet's SHA-1.
//!
//! The package is read by the agent from the blobstore and the droplet written back there
//! under its SHA-1 (`dea-blob://`), so no bytes pass through the controller. Every step is
//! recorded in the app's spec with compare-and-set on the staging's task id: a controller
//! that took over from one that died mid-staging starts a new task, and the old task's late
//! answer changes nothing.

use super::Shared;
use crate::desired::{AppSpec, DropletRef, StagingState};
use crate::events::Event;
use dea_protocol::{StagingCompletionReply, StagingProperties, StagingRequest, StagingSetupReply};
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

/// Why a staging did not give a droplet.
#[derive(Debug, thiserror::Error)]
pub enum StageFailure {
    #[error("no agent with the stack and {0} MB free offers to stage")]
    NoStager(u64),
    #[error("the agent did not answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Agent(String),
    #[error("the agent's reply is malformed: {0}")]
    Reply(#[source] serde_json::Error),
    #[error("the staged droplet {0} is not in the blobstore")]
    DropletMissing(String),
    #[error("NATS: {0}")]
    Nats(String),
    #[error(transparent)]
    State(#[from] crate::jetstream::StateError),
}

/// The staging request for `spec`'s package.
fn request(spec: &AppSpec, task_id: &str, package_uri: String) -> StagingRequest {
    StagingRequest {
        app_id: spec.guid.clone(),
        task_id: task_id.to_string(),
        stack: spec.stack.clone(),
        download_uri: package_uri,
        // By content: the agent names the droplet by its SHA-1.
        upload_uri: dea_protocol::BlobUri {
            bucket: dea_protocol::Bucket::Droplets,
            name: None,
        }
        .to_string(),
        buildpack_cache_download_uri: None,
        buildpack_cache_upload_uri: None,
        admin_buildpacks: Vec::new(),
        properties: StagingProperties {
            environment: spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            buildpack: spec.buildpack.clone(),
            ..StagingProperties::default()
        },
        start_message: None,
        egress_network_rules: Vec::new(),
        memory_limit: Some(spec.memory_mb),
        disk_limit: Some(spec.disk_mb),
        accepts_http: None,
    }
}

/// Stages `app` (whose staging is Pending with `task_id`) and records the outcome.
pub(super) async fn stage(shared: Arc<Shared>, app: String, task_id: String) {
    let outcome = run(&shared, &app, &task_id).await;
    let (state, event) = match &outcome {
        Ok(droplet) => {
            tracing::info!(%app, task_id, droplet = droplet.sha1, "staged");
            (
                StagingState::Succeeded,
                Event::Staged {
                    task_id: task_id.clone(),
                    droplet_sha1: droplet.sha1.clone(),
                    detected_buildpack: droplet.detected_buildpack.clone(),
                    at: OffsetDateTime::now_utc(),
                },
            )
        }
        Err(failure) => {
            tracing::warn!(%app, task_id, "staging failed: {failure}");
            (
                StagingState::Failed(failure.to_string()),
                Event::StagingFailed {
                    task_id: task_id.clone(),
                    reason: failure.to_string(),
                    at: OffsetDateTime::now_utc(),
                },
            )
        }
    };
    let droplet = outcome.ok();
    let recorded = shared
        .platform
        .apps()
        .modify(&app, |spec| {
            // Only the task this controller ran; a newer push owns the spec now.
            if let Some(staging) = spec.staging.as_mut().filter(|s| s.task_id == task_id) {
                staging.state = state.clone();
                if let Some(droplet) = &droplet {
                    spec.droplet = Some(droplet.clone());
                }
            }
        })
        .await;
    if let Err(e) = recorded {
        tracing::warn!(%app, task_id, "recording the staging's outcome: {e}");
    }
    if let Err(e) = shared.platform.events().publish(&app, &event).await {
        tracing::warn!(%app, "publishing event: {e}");
    }
    shared.stagings.lock().remove(&app);
}

/// Sends the staging request to `stager`; its setup reply, and the subscription the
/// completion will come on.
async fn ask(
    shared: &Shared,
    spec: &AppSpec,
    task_id: &str,
    package: &crate::blobs::BlobRef,
    stager: &str,
) -> Result<(StagingSetupReply, async_nats::Subscriber), StageFailure> {
    let client = shared.platform.client();
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| StageFailure::Nats(e.to_string()))?;
    let message = request(spec, task_id, package.uri().to_string());
    let payload = serde_json::to_vec(&message).map_err(StageFailure::Reply)?;
    client
        .publish_with_reply(format!("staging.{stager}.start"), inbox, payload.into())
        .await
        .map_err(|e| StageFailure::Nats(e.to_string()))?;
    tracing::info!(app = spec.name, task_id, agent = stager, "staging");
    // The setup reply: the package is in (or could not be had, or there is no room).
    let setup_wait = Duration::from_secs(60);
    let first = tokio::time::timeout(setup_wait, replies.next())
        .await
        .map_err(|_| StageFailure::Timeout(setup_wait))?
        .ok_or_else(|| StageFailure::Nats("reply subscription closed".into()))?;
    let setup = serde_json::from_slice(&first.payload).map_err(StageFailure::Reply)?;
    Ok((setup, replies))
}

async fn run(shared: &Shared, app: &str, task_id: &str) -> Result<DropletRef, StageFailure> {
    let apps = shared.platform.apps();
    let Some((spec, _)) = apps.get(app).await? else {
        return Err(StageFailure::Agent("the app was deleted".into()));
    };
    let Some(package) = spec.package.clone() else {
        return Err(StageFailure::Agent("the app has no package".into()));
    };
    // An agent's advertisement may be a few seconds old: one that has no room after all
    // says so in its setup reply, and the next is asked (as Cloud Controller did).
    let mut refused = Vec::new();
    let (stager, setup, mut replies) = loop {
        let stager = shared
            .view
            .lock()
            .fleet
            .pick_stager(spec.stack.as_deref(), spec.memory_mb, &refused)
            .ok_or(StageFailure::NoStager(spec.memory_mb))?;
        let (setup, replies) = ask(shared, &spec, task_id, &package, &stager).await?;
        match setup.error {
            Some(error) if error.starts_with("Not enough") && refused.len() < 3 => {
                tracing::info!(app, task_id, agent = stager, "agent has no room: {error}");
                refused.push(stager);
            }
            Some(error) => return Err(StageFailure::Agent(error)),
            None => break (stager, setup, replies),
        }
    };
    let log_url = setup.task_streaming_log_url.clone();
    apps.modify(app, |spec| {
        if let Some(staging) = spec.staging.as_mut().filter(|s| s.task_id == task_id) {
            staging.state = StagingState::Running;
            staging.agent = Some(stager.clone());
            staging.log_url = log_url.clone();
        }
    })
    .await?;

    let limit = shared.config.staging_timeout();
    let second = tokio::time::timeout(limit, replies.next())
        .await
        .map_err(|_| StageFailure::Timeout(limit))?
        .ok_or_else(|| StageFailure::Nats("reply subscription closed".into()))?;
    let done: StagingCompletionReply =
        serde_json::from_slice(&second.payload).map_err(StageFailure::Reply)?;
    if let Some(error) = done.error {
        return Err(StageFailure::Agent(error));
    }
    let sha1 = done
        .droplet_sha1
        .ok_or_else(|| StageFailure::Agent("the completion reply names no droplet".into()))?;
    let blob = shared
        .platform
        .blobs()
        .droplet(&sha1)
        .await?
        .ok_or_else(|| StageFailure::DropletMissing(sha1.clone()))?;
    Ok(DropletRef {
        sha1,
        blob,
        detected_buildpack: done.detected_buildpack,
        start_command: done.detected_start_command.filter(|c| !c.is_empty()),
    })
}
