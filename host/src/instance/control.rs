//! Orders to instances from outside their monitors: stop one (TERM, grace, KILL: the
//! monitor does it), let all go when the agent leaves, mark all EVACUATING when it drains,
//! wait for one to finish; and, once no instance holds a network, the agent's nftables table.

use super::monitor::Control;
use super::{Handle, InstanceError, InstanceInfo, InstanceManager, InstanceState};
use std::sync::Arc;
use std::time::Duration;

impl InstanceManager {
    /// Marks every live instance EVACUATING (they keep running and keep their routes).
    pub fn evacuate(&self) {
        let handles: Vec<Arc<Handle>> = self.instances.read().values().cloned().collect();
        for handle in handles {
            let live = matches!(
                handle.info.lock().state,
                InstanceState::Born
                    | InstanceState::Starting
                    | InstanceState::Resuming
                    | InstanceState::Running
            );
            if live {
                self.enter(&handle, InstanceState::Evacuating);
            }
        }
    }

    /// Lets go of every instance without stopping it, as an agent that exits (or dies)
    /// does; a later [`InstanceManager::recover`] picks them up.
    pub async fn abandon(&self) {
        let handles: Vec<Arc<Handle>> = self.instances.read().values().cloned().collect();
        for handle in handles {
            if let Some(control) = handle.control.lock().take() {
                let _ = control.send(Control::Abandon);
            }
        }
        // Give the monitors a moment to release their listeners.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    /// When no instance holds a network any more (after a shutdown that stopped them all),
    /// removes this agent's nftables table: a host the agent has left keeps nothing of it.
    pub async fn release_network_if_idle(&self) {
        let idle = self
            .list()
            .iter()
            .all(|info| info.network.is_none() || !info.holds_resources());
        if idle {
            let network = self.network.clone();
            match tokio::task::spawn_blocking(move || network.uninstall()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("removing the instance network table: {e}"),
                Err(e) => tracing::warn!("removing the instance network table: {e}"),
            }
        }
    }

    /// Stops an instance: TERM, then KILL after the grace period. Returns its final info.
    pub async fn stop(&self, id: &str) -> Result<InstanceInfo, InstanceError> {
        let handle = self
            .instances
            .read()
            .get(id)
            .cloned()
            .ok_or_else(|| InstanceError::Unknown(id.to_string()))?;
        if let Some(control) = handle.control.lock().take() {
            let _ = control.send(Control::Stop);
        }
        let mut done = handle.done.clone();
        while !*done.borrow() {
            if done.changed().await.is_err() {
                break;
            }
        }
        Ok(handle.info.lock().clone())
    }

    /// Waits until the instance leaves STARTING/RUNNING (crash or stop), up to `limit`.
    pub async fn wait_until_finished(&self, id: &str, limit: Duration) -> Option<InstanceInfo> {
        let handle = self.instances.read().get(id).cloned()?;
        let mut done = handle.done.clone();
        let _ = tokio::time::timeout(limit, async {
            while !*done.borrow() {
                if done.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
        Some(handle.info.lock().clone())
    }
}
