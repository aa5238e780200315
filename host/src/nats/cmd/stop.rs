//! `dea.stop` (reference dea_ng.md §2.4): stops the matching instances; a message naming
//! only the app also stops its stagings.

use super::filter::Matcher;
use crate::instance::InstanceState;
use crate::nats::agent::Agent;
use std::sync::Arc;

impl Agent {
    /// `dea.stop`: stops the matching instances (not RESUMING, STOPPED or CRASHED ones); a
    /// message naming only the app also stops its stagings.
    pub(in crate::nats) async fn handle_stop(
        self: Arc<Self>,
        matcher: Matcher,
        only_droplet: bool,
    ) {
        if only_droplet {
            self.stop_stagings(&matcher.droplet);
        }
        let mut stops = tokio::task::JoinSet::new();
        for info in self.instances.list() {
            let stoppable = !matches!(
                info.state,
                InstanceState::Resuming | InstanceState::Stopped | InstanceState::Crashed
            );
            if stoppable && matcher.matches(&info) {
                tracing::info!(instance = %info.instance_id, app = %info.application_id, "stopping");
                let instances = self.instances.clone();
                stops.spawn(async move { instances.stop(&info.instance_id).await });
            }
        }
        while stops.join_next().await.is_some() {}
    }
}
