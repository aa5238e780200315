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
use std::path::PathBuf;
use std::sync::Arc;

impl InstanceManager {
    fn snapshot_path(&self) -> PathBuf {
        self.settings.base_dir.join("db").join("instances.json")
    }

    /// Writes the registry to `db/instances.json` (atomically) so a restarted agent can
    /// find its instances. STOPPED ones are gone from the registry, as in the DEA.
    pub(super) fn save_snapshot(&self) {
        let instances: Vec<InstanceInfo> = self
            .list()
            .into_iter()
            .filter(|info| info.state != InstanceState::Stopped)
            .collect();
        let snapshot = serde_json::json!({ "instances": instances });
        let path = self.snapshot_path();
        let written = crate::private_dir::ensure(path.parent().unwrap_or(&self.settings.base_dir))
            .and_then(|()| {
                let bytes = serde_json::to_vec_pretty(&snapshot).unwrap_or_default();
                crate::fetch::write_atomic(&path, &bytes)
            });
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
        let text = std::fs::read_to_string(manager.snapshot_path()).unwrap_or_default();
        let saved: Vec<InstanceInfo> = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| serde_json::from_value(v["instances"].clone()).ok())
            .unwrap_or_default();
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
