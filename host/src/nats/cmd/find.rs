//! `dea.find.droplet` (reference dea_ng.md §2.6): one reply per matching instance, with a
//! signed `file_uri_v2` when a path is asked for and `stats` when they are.

use super::filter::Matcher;
use crate::instance::{InstanceInfo, InstanceState};
use crate::nats::agent::Agent;
use crate::nats::messages::FindDropletResponse;
use async_nats::Subject;
use std::sync::Arc;

impl Agent {
    /// `dea.find.droplet`: one reply per matching instance.
    pub(in crate::nats) async fn handle_find(self: Arc<Self>, matcher: Matcher, reply: Subject) {
        let matching: Vec<InstanceInfo> = self
            .instances
            .list()
            .into_iter()
            .filter(|info| info.state != InstanceState::Stopped && matcher.matches(info))
            .collect();
        // Each stats sample waits a moment for a CPU reading: take them all at once.
        let replies = matching.iter().map(|info| self.find_reply(&matcher, info));
        for response in futures_util::future::join_all(replies).await {
            self.publish(reply.to_string(), &response).await;
        }
    }

    async fn find_reply(&self, matcher: &Matcher, info: &InstanceInfo) -> FindDropletResponse {
        let file_uri_v2 = match (&matcher.path, &self.links) {
            (Some(path), Some(links)) => Some(links.instance_file(&info.instance_id, path)),
            _ => None,
        };
        let stats = if matcher.include_stats && info.state == InstanceState::Running {
            Some(self.stats(info).await)
        } else {
            None
        };
        FindDropletResponse {
            dea: self.id.clone(),
            droplet: info.application_id.clone(),
            version: info.application_version.clone(),
            instance: info.instance_id.clone(),
            index: info.instance_index,
            state: info.state,
            state_timestamp: info.state_timestamp,
            staged: format!("/{}", info.instance_id),
            file_uri_v2,
            stats,
        }
    }

    /// `stats` of a find reply (§2.6).
    async fn stats(&self, info: &InstanceInfo) -> serde_json::Value {
        let usage = self
            .instances
            .usage(&info.instance_id)
            .await
            .unwrap_or_default();
        serde_json::json!({
            "name": info.application_name,
            "uris": info.application_uris,
            "host": self.local_ip,
            "port": info.host_port,
            "uptime": info.uptime_secs(),
            "mem_quota": info.memory_mb << 20,
            "disk_quota": info.disk_mb << 20,
            "fds_quota": 16384,
            "usage": {
                "time": now_text(),
                "cpu": usage.cpu,
                "mem": usage.mem_bytes,
                "disk": usage.disk_bytes,
            },
        })
    }
}

/// The time as Ruby's `Time#to_s` prints it in UTC (`2026-11-25 10:00:00 +0000`).
fn now_text() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%d %H:%M:%S +0000")
        .to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_read_like_rubys() {
        let text = super::now_text();
        assert_eq!(text.len(), "2026-11-25 10:00:00 +0000".len(), "{text}");
        assert!(text.ends_with(" +0000"), "{text}");
    }
}
