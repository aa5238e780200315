//! `dea.update` (reference dea_ng.md §2.5): routes registered and unregistered by
//! difference, and for a new version a new instance id.

use super::start::MAX_ENTRIES;
use crate::instance::InstanceState;
use crate::nats::agent::Agent;
use crate::nats::messages;
use std::sync::Arc;

impl Agent {
    /// `dea.update`: new routes (registered and unregistered by difference) and, for a new
    /// version, a new instance id.
    pub(in crate::nats) async fn handle_update(self: Arc<Self>, update: messages::Update) {
        if update.uris.len() > MAX_ENTRIES {
            self.reject("dea.update", "too many uris");
            return;
        }
        let mut changed = false;
        for info in self.instances.list() {
            let live = matches!(
                info.state,
                InstanceState::Running | InstanceState::Evacuating
            );
            if !live || info.application_id != update.droplet {
                continue;
            }
            let added: Vec<String> = update
                .uris
                .iter()
                .filter(|u| !info.application_uris.contains(u))
                .cloned()
                .collect();
            let removed: Vec<String> = info
                .application_uris
                .iter()
                .filter(|u| !update.uris.contains(u))
                .cloned()
                .collect();
            if !added.is_empty() {
                let message = self.registration(&info, added);
                self.publish("router.register", &message).await;
            }
            if !removed.is_empty() {
                let message = self.registration(&info, removed);
                self.publish("router.unregister", &message).await;
            }
            let version = update.version.as_deref().filter(|v| !v.is_empty());
            if self
                .instances
                .update(&info.instance_id, &update.uris, version)
                .is_some()
            {
                changed = true;
            }
        }
        if changed {
            self.heartbeat().await;
        }
    }
}
