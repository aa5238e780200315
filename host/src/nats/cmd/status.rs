//! The classic `dea.status` request (reference dea_ng.md §2.8): the hello, plus memory.

use crate::instance::InstanceState;
use crate::nats::agent::Agent;
use crate::nats::messages;
use async_nats::Subject;
use std::sync::Arc;

impl Agent {
    /// Classic `dea.status`.
    pub(in crate::nats) async fn handle_status(self: Arc<Self>, reply: Subject) {
        let settings = self.instances.settings();
        let max_memory =
            (settings.memory_capacity_mb as f64 * settings.memory_overcommit_factor) as u64;
        let (remaining, _) = self.instances.remaining();
        let used_memory = self
            .instances
            .list()
            .iter()
            .filter(|i| matches!(i.state, InstanceState::Running | InstanceState::Starting))
            .map(|i| i.memory_mb)
            .sum();
        let status = messages::DeaStatus {
            id: self.id.clone(),
            ip: self.local_ip.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            max_memory,
            reserved_memory: max_memory.saturating_sub(remaining),
            used_memory,
            num_clients: None,
        };
        self.publish(reply.to_string(), &status).await;
    }
}
