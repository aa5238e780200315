//! Instance commands: `dea.<uuid>.start`, `dea.stop`, `dea.update`, `dea.find.droplet` and
//! the classic `dea.status` (reference dea_ng.md §2.4–§2.8, §4.1–§4.2). Every message is
//! checked whole before anything happens, so a bad one changes nothing.

use super::agent::{Agent, Mode};
use super::messages::{self, FindDropletResponse, InstanceFilter, StartMessage};
use crate::instance::{InstanceInfo, InstanceState, StartRequest};
use async_nats::Subject;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// A checked `dea.stop` / `dea.find.droplet` filter.
pub(super) struct Matcher {
    droplet: String,
    version: Option<String>,
    instance_ids: Option<Vec<String>>,
    indices: Option<Vec<u32>>,
    states: Option<Vec<InstanceState>>,
    include_stats: bool,
    path: Option<String>,
}

impl Matcher {
    /// Does `info` pass every filter the message had?
    fn matches(&self, info: &InstanceInfo) -> bool {
        info.application_id == self.droplet
            && self
                .version
                .as_ref()
                .is_none_or(|v| *v == info.application_version)
            && self
                .instance_ids
                .as_ref()
                .is_none_or(|ids| ids.contains(&info.instance_id))
            && self
                .indices
                .as_ref()
                .is_none_or(|indices| indices.contains(&info.instance_index))
            && self
                .states
                .as_ref()
                .is_none_or(|states| states.contains(&info.state))
    }
}

/// Longest start command, environment or URI list accepted from the bus: far above any
/// real app, far below what would hurt.
const MAX_ENTRIES: usize = 10_000;

impl Agent {
    /// Checks a filter; an unknown state name rejects the whole message (as in the DEA).
    pub(super) fn matcher(&self, subject: &str, filter: InstanceFilter) -> Option<Matcher> {
        let states = match filter.states {
            Some(names) => {
                let mut states = Vec::new();
                for name in &names {
                    match InstanceState::from_name(name) {
                        Some(state) => states.push(state),
                        None => {
                            self.reject(subject, &format!("unknown instance state {name:?}"));
                            return None;
                        }
                    }
                }
                Some(states)
            }
            None => None,
        };
        let instance_ids = match (filter.instances, filter.instance_ids) {
            (None, None) => None,
            (a, b) => Some(a.into_iter().chain(b).flatten().collect()),
        };
        Some(Matcher {
            droplet: filter.droplet,
            version: filter.version,
            instance_ids,
            indices: filter.indices,
            states,
            include_stats: filter.include_stats.unwrap_or(false),
            path: filter.path,
        })
    }

    /// `dea.<uuid>.start`: checks the message, then starts the instance. A start the agent
    /// knows will fail (unknown stack) is registered CRASHED so the controller hears of it.
    pub(super) async fn handle_start(self: Arc<Self>, start: StartMessage) {
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
    pub(super) fn start_request(&self, subject: &str, start: StartMessage) -> Option<StartRequest> {
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
            (None, Some(uri)) if uri.starts_with("http://") || uri.starts_with("https://") => {
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

    /// `dea.stop`: stops the matching instances (not RESUMING, STOPPED or CRASHED ones); a
    /// message naming only the app also stops its stagings.
    pub(super) async fn handle_stop(self: Arc<Self>, matcher: Matcher, only_droplet: bool) {
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

    /// `dea.update`: new routes (registered and unregistered by difference) and, for a new
    /// version, a new instance id.
    pub(super) async fn handle_update(self: Arc<Self>, update: messages::Update) {
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

    /// `dea.find.droplet`: one reply per matching instance.
    pub(super) async fn handle_find(self: Arc<Self>, matcher: Matcher, reply: Subject) {
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
            state: info.state.name().to_string(),
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

    /// Classic `dea.status`.
    pub(super) async fn handle_status(self: Arc<Self>, reply: Subject) {
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

/// `VCAP_SERVICES`: bindings grouped by label, with the keys the DEA passes on (§4.3).
pub(super) fn vcap_services(services: &[messages::Service]) -> serde_json::Value {
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

pub(super) fn is_sha1(text: &str) -> bool {
    text.len() == 40 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The time as Ruby's `Time#to_s` prints it in UTC (`2026-11-25 10:00:00 +0000`).
fn now_text() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} +0000",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Days since 1970-01-01 to a (year, month, day) date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_782), (2026, 11, 25));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

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
