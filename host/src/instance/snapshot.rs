//! The registry on disk (`db/instances.json`, reference dea_ng.md §4.5), and recovery from it
//! when the agent restarts: instances whose containers still run are adopted without being
//! touched (their traffic never stopped: the kernel publishes their ports), the rest are
//! marked CRASHED and everything they held is freed.

use super::monitor::{Process, Running, Watch};
use super::{
    Handle, InstanceError, InstanceInfo, InstanceManager, InstanceSettings, InstanceState,
};
use crate::container::{Runc, Signal};
use crate::netns::NetNamespace;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

/// The file's shape: `{"instances": [...]}`, as the DEA's `instances.json`.
#[derive(Serialize, Deserialize)]
struct Snapshot {
    instances: Vec<InstanceInfo>,
}

/// [`Snapshot`] as it is written: borrowed, as every state change saves the whole registry
/// and a copy of each instance per save was only garbage for the allocator.
#[derive(Serialize)]
struct SnapshotRef<'a> {
    instances: Vec<&'a InstanceInfo>,
}

/// The registry as saved: STOPPED instances are gone from it, as in the DEA.
fn encode(instances: &[InstanceInfo]) -> Vec<u8> {
    let snapshot = SnapshotRef {
        instances: instances
            .iter()
            .filter(|info| info.state != InstanceState::Stopped)
            .collect(),
    };
    // Plain data (strings, numbers, maps with string keys) always serialises.
    serde_json::to_vec_pretty(&snapshot).unwrap_or_default()
}

fn decode(bytes: &[u8]) -> Result<Vec<InstanceInfo>, serde_json::Error> {
    serde_json::from_slice::<Snapshot>(bytes).map(|s| s.instances)
}

impl InstanceManager {
    fn snapshot_path(&self) -> PathBuf {
        self.settings.base_dir.join("db").join("instances.json")
    }

    /// Writes the registry to `db/instances.json` (atomically) so a restarted agent can
    /// find its instances. STOPPED ones are gone from the registry, as in the DEA.
    pub(super) fn save_snapshot(&self) {
        let bytes = encode(&self.list());
        let path = self.snapshot_path();
        let written = crate::private_dir::ensure(path.parent().unwrap_or(&self.settings.base_dir))
            .and_then(|()| crate::fetch::write_atomic(&path, &bytes));
        if let Err(e) = written {
            tracing::warn!("saving instance snapshot {}: {e}", path.display());
        }
    }

    /// A manager for a restarted agent: re-attaches to the containers of its snapshot that
    /// still run (RESUMING → RUNNING, the app untouched) and marks the rest CRASHED.
    pub async fn recover(
        settings: InstanceSettings,
        runc: Runc,
    ) -> Result<Arc<InstanceManager>, InstanceError> {
        let manager = InstanceManager::new(settings, runc)?;
        let path = manager.snapshot_path();
        let saved = match std::fs::read(&path) {
            Ok(bytes) => decode(&bytes).unwrap_or_else(|e| {
                // Nothing to adopt from it; the containers it named are left to the
                // operator (the file is replaced by the next save).
                tracing::error!("instance snapshot {} unreadable: {e}", path.display());
                Vec::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                tracing::error!("reading instance snapshot {}: {e}", path.display());
                Vec::new()
            }
        };
        for info in saved {
            manager.recover_one(info).await;
        }
        manager.save_snapshot();
        Ok(manager)
    }

    async fn recover_one(self: &Arc<Self>, mut info: InstanceInfo) {
        let alive = self.runc.pid_of(&info.container_id).await.is_some();
        let namespace = NetNamespace::existing(&info.netns);
        let resumable = alive
            && matches!(
                info.state,
                InstanceState::Running | InstanceState::Resuming | InstanceState::Evacuating
            );
        let port = match (&info.network, resumable) {
            (Some(network), true) => {
                let (manager, network) = (self.network.clone(), network.clone());
                match tokio::task::spawn_blocking(move || manager.reattach(&network)).await {
                    Ok(Ok(port)) => Some(port),
                    Ok(Err(e)) => {
                        tracing::warn!(instance = %info.instance_id, "not re-attached: {e}");
                        None
                    }
                    Err(_) => None,
                }
            }
            _ => None,
        };
        match (namespace, port, info.network.clone()) {
            (Some(namespace), Some(port), Some(network)) => {
                // RESUMING until the monitor has re-attached, then back to what it was.
                let was = info.state;
                info.set_state(InstanceState::Resuming);
                if was == InstanceState::Evacuating {
                    info.state = InstanceState::Evacuating;
                }
                let watch = Watch {
                    health: None,
                    reachability: !info.application_uris.is_empty(),
                };
                let (handle, lifeline) = Handle::new(info.clone());
                self.instances
                    .write()
                    .insert(info.instance_id.clone(), handle.clone());
                let running = Running {
                    process: Process::Adopted {
                        runc: self.runc.clone(),
                        id: info.container_id.clone(),
                        home: info.dir.join("home"),
                    },
                    namespace,
                    network,
                    port,
                };
                self.watch_over(handle, lifeline, running, watch).await;
            }
            (namespace, _, network) => {
                let was_live = info.holds_resources();
                if was_live {
                    info.exit_description =
                        Some("instance was gone when the agent restarted".into());
                    info.set_state(InstanceState::Crashed);
                }
                if alive {
                    self.runc
                        .signal_container(&info.container_id, Signal::Kill)
                        .await;
                    self.runc.remove_container(&info.container_id).await;
                }
                let handle = Handle::finished(info.clone());
                // What it held goes; a CRASHED one keeps its crash logs (copied at crash
                // time, or now if it died while the agent was away).
                if was_live {
                    self.keep_crash_logs(&handle).await;
                }
                self.release(&handle, network, namespace).await;
                self.instances
                    .write()
                    .insert(info.instance_id.clone(), handle);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::example_info;

    #[test]
    fn a_snapshot_round_trips_every_field_and_drops_stopped_instances() {
        let running = example_info("a1", InstanceState::Running);
        let crashed = example_info("c1", InstanceState::Crashed);
        let stopped = example_info("s1", InstanceState::Stopped);
        let bytes = encode(&[running.clone(), stopped, crashed.clone()]);
        let back = decode(&bytes).expect("decodes");
        assert_eq!(back.len(), 2);
        for (saved, original) in back.iter().zip([&running, &crashed]) {
            // Compare as JSON: every field, including the network and the timings.
            assert_eq!(
                serde_json::to_value(saved).expect("test data"),
                serde_json::to_value(original).expect("test data")
            );
        }
        let text = String::from_utf8(bytes).expect("test data");
        assert!(text.contains("\"state\": \"RUNNING\""), "{text}");
    }

    #[test]
    fn a_snapshot_from_an_older_agent_fills_new_fields_with_defaults() {
        let mut value =
            serde_json::to_value(example_info("o1", InstanceState::Running)).expect("test data");
        let object = value.as_object_mut().expect("test data");
        for field in [
            "network",
            "private_instance_id",
            "application_uris",
            "start_timings_ms",
        ] {
            object.remove(field);
        }
        let bytes =
            serde_json::to_vec(&serde_json::json!({ "instances": [value] })).expect("test data");
        let back = decode(&bytes).expect("decodes");
        assert_eq!(back[0].instance_id, "o1");
        assert!(back[0].network.is_none());
        assert!(back[0].application_uris.is_empty());
    }

    #[test]
    fn a_damaged_snapshot_is_an_error_not_an_empty_registry_in_silence() {
        assert!(decode(b"{\"instances\": [{\"instance_id\": 7}]}").is_err());
        assert!(decode(b"not json").is_err());
        assert!(decode(&[0xff; 16]).is_err());
        assert!(
            decode(b"{\"instances\": []}")
                .expect("test data")
                .is_empty()
        );
    }
}
