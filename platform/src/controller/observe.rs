//! Listening to the bus: advertisements place work, heartbeats and exits say what runs.
//! Every controller process listens (so a new leader has a warm view); only the leader
//! records events.

use super::converge::CrashRecord;
use super::fleet::AgentState;
use super::{ControllerError, Shared};
use crate::events::Event;
use dea_protocol::{Advertise, DropletExited, Heartbeat, InstanceState, StagingAdvertise};
use futures_util::StreamExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy)]
enum Kind {
    Advertise,
    StagingAdvertise,
    Heartbeat,
    Exited,
}

const SUBJECTS: [(&str, Kind); 4] = [
    ("dea.advertise", Kind::Advertise),
    ("staging.advertise", Kind::StagingAdvertise),
    ("dea.heartbeat", Kind::Heartbeat),
    ("droplet.exited", Kind::Exited),
];

pub(super) async fn start(
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> Result<Vec<tokio::task::JoinHandle<()>>, ControllerError> {
    let client = shared.platform.client().clone();
    let mut tasks = Vec::new();
    for (subject, kind) in SUBJECTS {
        let mut messages = client
            .subscribe(subject)
            .await
            .map_err(|source| ControllerError::Subscribe { subject, source })?;
        let (shared, stop) = (shared.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    _ = stop.cancelled() => return,
                    message = messages.next() => match message {
                        Some(message) => message,
                        None => return,
                    },
                };
                handle(&shared, kind, &message.payload).await;
            }
        }));
    }
    // Agents advertise at once when asked, so a fresh controller need not wait for the
    // next interval to know where it may place work.
    if let Err(e) = client.publish("dea.locate", "{}".into()).await {
        tracing::warn!("asking agents to advertise: {e}");
    }
    Ok(tasks)
}

async fn handle(shared: &Shared, kind: Kind, payload: &[u8]) {
    let result = match kind {
        Kind::Advertise => dea_protocol::parse::<Advertise>("dea.advertise", payload).map(|m| {
            shared
                .view
                .lock()
                .fleet
                .observe(AgentState::from_advertise(&m))
        }),
        Kind::StagingAdvertise => {
            dea_protocol::parse::<StagingAdvertise>("staging.advertise", payload)
                .map(|m| shared.view.lock().fleet.observe_stager(m))
        }
        Kind::Heartbeat => match dea_protocol::parse::<Heartbeat>("dea.heartbeat", payload) {
            Ok(message) => {
                heartbeat(shared, &message).await;
                Ok(())
            }
            Err(e) => Err(e),
        },
        Kind::Exited => match dea_protocol::parse::<DropletExited>("droplet.exited", payload) {
            Ok(message) => {
                exited(shared, &message).await;
                Ok(())
            }
            Err(e) => Err(e),
        },
    };
    if let Err(e) = result {
        // A malformed message from the bus is someone else's bug; it changes nothing here.
        tracing::warn!("ignored: {e}");
    }
}

async fn heartbeat(shared: &Shared, message: &Heartbeat) {
    let newly_running: Vec<(String, u32, String, String)> = {
        let mut view = shared.view.lock();
        view.actual.heartbeat(message);
        let mut fresh = Vec::new();
        for instance in &message.droplets {
            if instance.state == InstanceState::Running
                && view
                    .running
                    .insert(instance.instance.clone(), std::time::Instant::now())
                    .is_none()
                && let Some(name) = view.names.get(&instance.droplet)
            {
                fresh.push((
                    name.clone(),
                    instance.index,
                    instance.instance.clone(),
                    instance.version.clone(),
                ));
            }
        }
        fresh
    };
    if !shared.leading.load(Ordering::Relaxed) {
        return;
    }
    for (app, index, instance, version) in newly_running {
        let event = Event::Started {
            instance,
            index,
            version,
            at: OffsetDateTime::now_utc(),
        };
        if let Err(e) = shared.platform.events().publish(&app, &event).await {
            tracing::warn!(app, "publishing event: {e}");
        }
    }
}

async fn exited(shared: &Shared, message: &DropletExited) {
    let crashed = message.reason == "CRASHED";
    let name = {
        let mut view = shared.view.lock();
        view.actual.exited(message);
        let ran_for = view
            .running
            .remove(&message.instance)
            .map(|since| since.elapsed());
        if crashed {
            let now = OffsetDateTime::now_utc().unix_timestamp().max(0) as u64;
            let record = view
                .crashes
                .entry(message.droplet.clone())
                .or_default()
                .entry(message.index)
                .or_insert(CrashRecord {
                    count: 0,
                    last_at: now,
                });
            // A crash after a long run is not part of a crash loop.
            if ran_for.is_some_and(|ran| ran >= super::converge::STABLE_RUN) {
                record.count = 0;
            }
            record.count += 1;
            record.last_at = now;
        }
        view.names.get(&message.droplet).cloned()
    };
    tracing::info!(
        app = message.droplet,
        index = message.index,
        instance = message.instance,
        reason = message.reason,
        "instance exited: {}",
        message.exit_description
    );
    if !crashed || !shared.leading.load(Ordering::Relaxed) {
        return;
    }
    let Some(app) = name else { return };
    let event = Event::Crashed {
        instance: message.instance.clone(),
        index: message.index,
        exit_status: Some(message.exit_status),
        reason: message.exit_description.clone(),
        at: OffsetDateTime::now_utc(),
    };
    if let Err(e) = shared.platform.events().publish(&app, &event).await {
        tracing::warn!(app, "publishing event: {e}");
    }
}
