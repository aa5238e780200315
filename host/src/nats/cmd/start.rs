//! `dea.<uuid>.start` (reference dea_ng.md §4.1–§4.2): the message checked whole, then the
//! instance started; a start the agent knows will fail (unknown stack, bad egress rules) is
//! registered CRASHED so the controller hears of it.

use crate::instance::StartRequest;
use crate::nats::agent::{Agent, Mode};
use crate::nats::messages::{self, StartMessage};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Longest start command, environment or URI list accepted from the bus: far above any
/// real app, far below what would hurt.
pub(super) const MAX_ENTRIES: usize = 10_000;

impl Agent {
    /// `dea.<uuid>.start`: checks the message, then starts the instance. A start the agent
    /// knows will fail (unknown stack) is registered CRASHED so the controller hears of it.
    pub(in crate::nats) async fn handle_start(self: Arc<Self>, start: StartMessage) {
        let subject = "dea.start";
        if self.mode() != Mode::Serving {
            tracing::info!(app = %start.droplet, "ignoring a start while {:?}", self.mode());
            return;
        }
        let Some(request) = self.start_request(subject, start) else {
            return;
        };
        let app = request.application_id.clone();
        match self.instances.start(request).await {
            Ok(info) => {
                tracing::info!(%app, instance = %info.instance_id, state = info.state.name(), "start finished");
            }
            Err(error) => tracing::warn!(%app, "start failed: {error}"),
        }
    }

    /// The instance manager's request for a start message, or `None` (logged) if the message
    /// is unacceptable.
    pub(in crate::nats) fn start_request(
        &self,
        subject: &str,
        start: StartMessage,
    ) -> Option<StartRequest> {
        if start.droplet.trim().is_empty() {
            self.reject(subject, "start message without a droplet (app guid)");
            return None;
        }
        if start.limits.mem == 0 {
            self.reject(subject, "start message with limits.mem = 0");
            return None;
        }
        if start.uris.len() > MAX_ENTRIES
            || start.env.len() > MAX_ENTRIES
            || start
                .uris
                .iter()
                .any(|u| u.is_empty() || u.contains(char::is_whitespace))
        {
            self.reject(subject, "start message with unusable uris or env");
            return None;
        }
        let sha1 = match &start.sha1 {
            Some(sha1) if !is_sha1(sha1) => {
                self.reject(
                    subject,
                    &format!("start message with a malformed sha1 {sha1:?}"),
                );
                return None;
            }
            sha1 => sha1.clone(),
        };
        // The droplet: the local copy when this agent has it (it just staged it), else the
        // controller's URL.
        let stored = sha1
            .as_ref()
            .map(|sha1| self.instances.droplets().path_for(sha1))
            .filter(|path| path.is_file());
        let droplet = match (stored, &start.executable_uri) {
            (Some(path), _) => path.display().to_string(),
            (None, Some(uri))
                if uri.starts_with("http://")
                    || uri.starts_with("https://")
                    || crate::nats::messages::BlobUri::parse(uri).is_ok() =>
            {
                uri.clone()
            }
            _ => {
                self.reject(subject, "start message without a usable executableUri");
                return None;
            }
        };
        // The app's security groups, as the controller sends them (§4.3): each must parse
        // (the instance network checks every value again before nftables sees it).
        let egress: Result<Vec<crate::config::EgressRule>, _> = start
            .egress_network_rules
            .iter()
            .map(|rule| serde_json::from_value(rule.clone()))
            .collect();
        let (egress, bad_egress) = match egress {
            Ok(rules) => (rules, None),
            Err(e) => (
                Vec::new(),
                Some(format!("invalid egress_network_rules: {e}")),
            ),
        };
        let refusal = start
            .stack
            .as_ref()
            .filter(|stack| !self.config.stacks.contains(stack))
            .map(|stack| format!("Stack {stack} does not exist"))
            .or(bad_egress);
        let health_check_timeout = start
            .health_check_timeout
            .filter(|secs| *secs > 0)
            .unwrap_or(self.config.instances.health_check_timeout_secs);
        Some(StartRequest {
            droplet,
            sha1,
            application_id: start.droplet.clone(),
            name: start.name.clone(),
            index: start.index,
            env: start.env_pairs(),
            host_port: 0,
            memory_mb: start.limits.mem,
            disk_mb: start.limits.disk,
            start_command: start.start_command.clone().filter(|c| !c.trim().is_empty()),
            // As in the DEA: only an app with routes must accept connections to be RUNNING.
            health_check: !start.uris.is_empty(),
            health_check_timeout: Duration::from_secs(health_check_timeout.min(3600)),
            egress,
            stack: start.stack.clone(),
            version: start.version.clone(),
            uris: start.uris.clone(),
            cc_partition: start.cc_partition.clone(),
            vcap_application: start.vcap_application.clone(),
            services: vcap_services(&start.services),
            fds: start.limits.fds,
            refusal,
        })
    }
}

/// `VCAP_SERVICES`: bindings grouped by label, with the keys the DEA passes on (§4.3).
pub(in crate::nats) fn vcap_services(services: &[messages::Service]) -> serde_json::Value {
    let mut by_label: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for service in services {
        by_label
            .entry(service.label.clone())
            .or_default()
            .push(serde_json::json!({
                "name": service.name,
                "label": service.label,
                "tags": service.tags,
                "plan": service.plan,
                "plan_option": service.plan_option,
                "credentials": service.credentials,
                "syslog_drain_url": service.syslog_drain_url,
            }));
    }
    serde_json::to_value(by_label).unwrap_or_default()
}

fn is_sha1(text: &str) -> bool {
    text.len() == 40 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_group_by_label() {
        let services = vec![messages::Service {
            name: "db".into(),
            label: "postgres".into(),
            ..Default::default()
        }];
        let value = vcap_services(&services);
        assert_eq!(value["postgres"][0]["name"], "db");
    }
}
