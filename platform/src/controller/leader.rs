//! Acting, for the holder of the `controller` lease: stage what was pushed, start and stop
//! instances until what runs is what is wanted, every decision logged with its reason.

use super::converge::{self, Action, CrashRecord, DesiredApp, STABLE_RUN};
use super::{Shared, stage};
use crate::desired::{AppSpec, AppState, StagingState, StagingStatus};
use crate::events::{Event, RecordedEvent};
use crate::jetstream::StateError;
use dea_protocol::{BlobUri, Bucket, InstanceFilter, Limits, StartMessage};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

const LEASE: &str = "controller";

pub(super) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let ttl = Duration::from_secs(shared.config.lease_secs.max(1));
    let interval = Duration::from_millis(shared.config.converge_interval_ms.max(50));
    while !stop.is_cancelled() {
        let mut lease = match shared
            .platform
            .leases()
            .acquire(LEASE, &shared.id, ttl)
            .await
        {
            Ok(lease) => lease,
            Err(StateError::LeaseHeld { holder, .. }) => {
                tracing::debug!(holder, "another controller leads");
                if sleep_or_stop(&stop, interval).await {
                    break;
                }
                continue;
            }
            Err(e) => {
                tracing::warn!("acquiring the controller lease: {e}");
                if sleep_or_stop(&stop, interval).await {
                    break;
                }
                continue;
            }
        };
        tracing::info!(id = shared.id, "leading; listening before acting");
        let mut renew_at = Instant::now() + ttl / 3;
        let settle_until = Instant::now() + Duration::from_secs(shared.config.settle_secs);
        let mut lost = false;
        let mut held: HashMap<(String, u32), String> = HashMap::new();
        loop {
            if stop.is_cancelled() {
                break;
            }
            if Instant::now() >= renew_at {
                if let Err(e) = lease.renew().await {
                    tracing::warn!("lost the controller lease: {e}");
                    lost = true;
                    break;
                }
                renew_at = Instant::now() + ttl / 3;
            }
            if Instant::now() >= settle_until {
                if !shared.leading.swap(true, Ordering::Relaxed) {
                    reload_crashes(&shared).await;
                    tracing::info!(id = shared.id, "acting");
                }
                // Bounded, so a bus that does not answer cannot starve the lease's renewal.
                match tokio::time::timeout(ttl / 2, pass(&shared, &mut held)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!("convergence pass: {e}"),
                    Err(_) => tracing::warn!("convergence pass took over {:?}; cut short", ttl / 2),
                }
            }
            if sleep_or_stop(&stop, interval).await {
                break;
            }
        }
        shared.leading.store(false, Ordering::Relaxed);
        if !lost && let Err(e) = lease.release().await {
            tracing::warn!("releasing the controller lease: {e}");
        }
    }
}

/// Sleeps; true when the controller is stopping.
async fn sleep_or_stop(stop: &CancellationToken, time: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(time) => false,
    }
}

/// One convergence pass: stagings to start, then instances to start or stop.
async fn pass(
    shared: &Arc<Shared>,
    held: &mut HashMap<(String, u32), String>,
) -> Result<(), StateError> {
    let specs: Vec<AppSpec> = shared
        .platform
        .apps()
        .list()
        .await?
        .into_iter()
        .map(|(spec, _)| spec)
        .collect();
    let timeout = Duration::from_secs(shared.config.agent_timeout_secs);
    let gone = shared.view.lock().fleet.expire(timeout);
    for agent in gone {
        tracing::warn!(
            agent,
            "agent silent for {} s: its instances will be started elsewhere",
            timeout.as_secs()
        );
        shared.view.lock().actual.forget_agent(&agent);
    }
    for spec in &specs {
        shared
            .view
            .lock()
            .names
            .insert(spec.guid.clone(), spec.name.clone());
        if spec.state == AppState::Started {
            begin_staging(shared, spec).await;
        }
    }
    let by_guid: HashMap<&str, &AppSpec> = specs.iter().map(|s| (s.guid.as_str(), s)).collect();
    let actions = {
        let mut view = shared.view.lock();
        let desired: Vec<DesiredApp> = specs
            .iter()
            .map(|spec| DesiredApp {
                guid: spec.guid.clone(),
                name: spec.name.clone(),
                version: spec.version.clone(),
                instances: spec.instances,
                memory_mb: spec.memory_mb,
                disk_mb: spec.disk_mb,
                stack: spec.stack.clone(),
                runnable: spec.state == AppState::Started && spec.droplet.is_some(),
                crashes: view.crashes.get(&spec.guid).cloned().unwrap_or_default(),
            })
            .collect();
        let actual = view.actual.instances();
        converge::converge(&desired, &actual, &mut view.fleet, SystemTime::now())
    };
    let mut still_held = HashMap::new();
    for action in actions {
        match action {
            Action::Start {
                app,
                index,
                agent,
                reason,
            } => {
                if let Some(spec) = by_guid.get(app.as_str()) {
                    start(shared, spec, index, &agent, &reason.to_string()).await;
                }
            }
            Action::Stop {
                app,
                instance,
                agent,
                reason,
            } => {
                let name = by_guid.get(app.as_str()).map_or(app.as_str(), |s| &s.name);
                tracing::info!(app = name, instance, agent, "stopping: {reason}");
                stop_instance(shared, &app, &instance).await;
            }
            Action::Hold { app, index, why } => {
                let name = by_guid
                    .get(app.as_str())
                    .map_or(app.clone(), |s| s.name.clone());
                // Said when it changes, not every pass.
                if held.get(&(app.clone(), index)) != Some(&why) {
                    tracing::info!(app = name, index, "not starting: {why}");
                }
                still_held.insert((app, index), why);
            }
        }
    }
    *held = still_held;
    Ok(())
}

/// Starts the app's staging if it is waiting for one, or if the controller that ran it is
/// gone (its replies went to an inbox nobody reads: the task is run again, with a new id).
async fn begin_staging(shared: &Arc<Shared>, spec: &AppSpec) {
    let Some(staging) = &spec.staging else { return };
    let ours = shared.stagings.lock().contains(&spec.name);
    let task_id = match staging.state {
        StagingState::Pending if !ours => staging.task_id.clone(),
        StagingState::Running if !ours => {
            let task_id = uuid::Uuid::new_v4().simple().to_string();
            let taken = shared
                .platform
                .apps()
                .modify(&spec.name, |s| {
                    if s.staging.as_ref().map(|st| &st.task_id) == Some(&staging.task_id) {
                        s.staging = Some(StagingStatus {
                            task_id: task_id.clone(),
                            agent: None,
                            started_at: OffsetDateTime::now_utc(),
                            state: StagingState::Pending,
                            log_url: None,
                        });
                    }
                })
                .await;
            match taken {
                Ok((s, _)) if s.staging.as_ref().map(|st| &st.task_id) == Some(&task_id) => {
                    tracing::warn!(
                        app = spec.name,
                        old = staging.task_id,
                        "staging was left running by a controller that is gone; staging again"
                    );
                    task_id
                }
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(app = spec.name, "taking over a staging: {e}");
                    return;
                }
            }
        }
        _ => return,
    };
    shared.stagings.lock().insert(spec.name.clone());
    tokio::spawn(stage::stage(shared.clone(), spec.name.clone(), task_id));
}

/// The start message for index `index` of `spec` (reference dea_ng.md §4.1).
fn start_message(spec: &AppSpec, index: u32) -> Option<StartMessage> {
    let droplet = spec.droplet.as_ref()?;
    let vcap_application = serde_json::json!({
        "application_id": spec.guid,
        "application_name": spec.name,
        "application_uris": spec.routes,
        "application_version": spec.version,
        "name": spec.name,
        "uris": spec.routes,
        "version": spec.version,
        "limits": {"mem": spec.memory_mb, "disk": spec.disk_mb, "fds": 16384},
    });
    Some(StartMessage {
        droplet: spec.guid.clone(),
        name: spec.name.clone(),
        uris: spec.routes.clone(),
        version: spec.version.clone(),
        index,
        sha1: Some(droplet.sha1.clone()),
        executable_uri: Some(BlobUri::new(Bucket::Droplets, droplet.sha1.clone()).to_string()),
        env: spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        limits: Limits {
            mem: spec.memory_mb,
            disk: spec.disk_mb,
            fds: 16384,
        },
        services: Vec::new(),
        cc_partition: "default".into(),
        stack: spec.stack.clone(),
        start_command: None,
        health_check_timeout: None,
        vcap_application,
        egress_network_rules: Vec::new(),
    })
}

async fn start(shared: &Shared, spec: &AppSpec, index: u32, agent: &str, reason: &str) {
    let Some(message) = start_message(spec, index) else {
        return;
    };
    tracing::info!(app = spec.name, index, agent, "starting: {reason}");
    let payload = match serde_json::to_vec(&message) {
        Ok(payload) => payload,
        Err(e) => {
            tracing::warn!(app = spec.name, "encoding a start message: {e}");
            return;
        }
    };
    let wait = Duration::from_secs(shared.config.start_wait_secs);
    shared
        .view
        .lock()
        .actual
        .started(&spec.guid, index, &spec.version, agent, wait);
    if let Err(e) = shared
        .platform
        .client()
        .publish(format!("dea.{agent}.start"), payload.into())
        .await
    {
        tracing::warn!(app = spec.name, agent, "sending a start: {e}");
    }
}

async fn stop_instance(shared: &Shared, app: &str, instance: &str) {
    let filter = InstanceFilter {
        droplet: app.to_string(),
        version: None,
        instances: Some(vec![instance.to_string()]),
        instance_ids: None,
        indices: None,
        states: None,
        include_stats: None,
        path: None,
    };
    shared.view.lock().actual.stopped(instance);
    let payload = match serde_json::to_vec(&filter) {
        Ok(payload) => payload,
        Err(e) => {
            tracing::warn!(app, "encoding a stop: {e}");
            return;
        }
    };
    if let Err(e) = shared
        .platform
        .client()
        .publish("dea.stop", payload.into())
        .await
    {
        tracing::warn!(app, instance, "sending a stop: {e}");
    }
}

/// A new leader's crash counts, from the events its predecessors recorded.
async fn reload_crashes(shared: &Shared) {
    let specs = match shared.platform.apps().list().await {
        Ok(specs) => specs,
        Err(e) => {
            tracing::warn!("reading apps for crash history: {e}");
            return;
        }
    };
    for (spec, _) in specs {
        match shared.platform.events().list(&spec.name, 500).await {
            Ok(events) => {
                let records = crash_records(&events);
                let mut view = shared.view.lock();
                let known = view.crashes.entry(spec.guid.clone()).or_default();
                for (index, record) in records {
                    // What this process saw itself may be newer than the stream.
                    let keep = known
                        .get(&index)
                        .is_some_and(|k| k.last_at > record.last_at);
                    if !keep {
                        known.insert(index, record);
                    }
                }
            }
            Err(e) => tracing::warn!(app = spec.name, "reading events: {e}"),
        }
    }
}

/// Crash counts per index from an app's events: crashes in a row, a crash after a long run
/// starting the count again.
pub(super) fn crash_records(events: &[RecordedEvent]) -> BTreeMap<u32, CrashRecord> {
    let mut records: BTreeMap<u32, CrashRecord> = BTreeMap::new();
    let mut started: HashMap<u32, i64> = HashMap::new();
    for recorded in events {
        match &recorded.event {
            Event::Started { index, at, .. } => {
                started.insert(*index, at.unix_timestamp());
            }
            Event::Crashed { index, at, .. } => {
                let at = at.unix_timestamp();
                let record = records.entry(*index).or_insert(CrashRecord {
                    count: 0,
                    last_at: 0,
                });
                let long_run = started
                    .get(index)
                    .is_some_and(|s| at - s >= STABLE_RUN.as_secs() as i64);
                if long_run {
                    record.count = 0;
                }
                record.count += 1;
                record.last_at = at.max(0) as u64;
            }
            _ => {}
        }
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(secs).expect("valid time")
    }

    #[test]
    fn crash_history_counts_crashes_in_a_row_per_index() {
        let crash = |index, secs| Event::Crashed {
            instance: "i".into(),
            index,
            exit_status: Some(1),
            reason: "exited".into(),
            at: at(secs),
        };
        let events: Vec<RecordedEvent> = [
            crash(0, 100),
            crash(0, 110),
            crash(1, 120),
            Event::Started {
                instance: "j".into(),
                index: 0,
                version: "v".into(),
                at: at(200),
            },
            crash(0, 1000),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, event)| RecordedEvent {
            sequence: i as u64 + 1,
            event,
        })
        .collect();
        let records = crash_records(&events);
        assert_eq!(
            records[&0],
            CrashRecord {
                count: 1,
                last_at: 1000
            },
            "a long run resets"
        );
        assert_eq!(
            records[&1],
            CrashRecord {
                count: 1,
                last_at: 120
            }
        );
        let short: Vec<RecordedEvent> = events[..2].to_vec();
        assert_eq!(crash_records(&short)[&0].count, 2);
    }
}
