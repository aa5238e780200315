//! What runs, as the agents say: rebuilt from `dea.heartbeat` and `droplet.exited`, plus the
//! starts this controller has asked for and not yet seen.
//!
//! This is the one part of the controller's view kept only in memory, and on purpose: it
//! describes the agents, who repeat it every heartbeat, so a restarted controller learns it
//! again within one interval (and acts only after that, see `controller::Controller`).

use super::converge::ActualInstance;
use dea_protocol::{DropletExited, Heartbeat, InstanceState};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A start asked for: counted as STARTING until the agent's heartbeat shows the instance
/// (or the deadline passes: the start was lost, and the index will be started again).
#[derive(Debug, Clone)]
struct Pending {
    instance: ActualInstance,
    deadline: Instant,
}

#[derive(Debug, Default)]
pub struct Actual {
    /// By agent, the instances of its last heartbeat.
    reported: HashMap<String, Vec<ActualInstance>>,
    /// Starts asked for, by a key of our own (app, index, version, agent).
    pending: HashMap<(String, u32, String, String), Pending>,
}

impl Actual {
    /// An agent's heartbeat replaces everything it said before. CRASHED instances are kept
    /// out: they hold nothing and their index needs a new instance.
    pub fn heartbeat(&mut self, message: &Heartbeat) {
        let instances: Vec<ActualInstance> = message
            .droplets
            .iter()
            .filter(|i| i.state != InstanceState::Crashed)
            .map(|i| ActualInstance {
                instance_id: i.instance.clone(),
                app_guid: i.droplet.clone(),
                version: i.version.clone(),
                index: i.index,
                state: i.state,
                agent: message.dea.clone(),
            })
            .collect();
        for instance in &instances {
            self.pending.remove(&key(instance));
        }
        self.reported.insert(message.dea.clone(), instances);
    }

    /// An instance is gone (crashed or stopped); its agent's next heartbeat agrees.
    pub fn exited(&mut self, message: &DropletExited) {
        for instances in self.reported.values_mut() {
            instances.retain(|i| i.instance_id != message.instance);
        }
        self.pending.retain(|_, p| {
            !(p.instance.app_guid == message.droplet
                && p.instance.index == message.index
                && p.instance.version == message.version)
        });
    }

    /// A start this controller sent.
    pub fn started(&mut self, app: &str, index: u32, version: &str, agent: &str, wait: Duration) {
        let instance = ActualInstance {
            instance_id: format!("pending-{app}-{index}-{agent}"),
            app_guid: app.to_string(),
            version: version.to_string(),
            index,
            state: InstanceState::Starting,
            agent: agent.to_string(),
        };
        self.pending.insert(
            key(&instance),
            Pending {
                instance,
                deadline: Instant::now() + wait,
            },
        );
    }

    /// A stop this controller sent: the instance no longer counts.
    pub fn stopped(&mut self, instance: &str) {
        for instances in self.reported.values_mut() {
            instances.retain(|i| i.instance_id != instance);
        }
    }

    /// Forgets an agent that went silent, with everything it ran.
    pub fn forget_agent(&mut self, agent: &str) {
        self.reported.remove(agent);
        self.pending.retain(|_, p| p.instance.agent != agent);
    }

    /// Everything counted now; overdue pending starts are dropped first.
    pub fn instances(&mut self) -> Vec<ActualInstance> {
        let now = Instant::now();
        self.pending.retain(|_, p| p.deadline > now);
        let mut all: Vec<ActualInstance> = self.reported.values().flatten().cloned().collect();
        let seen: std::collections::HashSet<_> = all.iter().map(key).collect();
        all.extend(
            self.pending
                .values()
                .filter(|p| !seen.contains(&key(&p.instance)))
                .map(|p| p.instance.clone()),
        );
        all.sort_by(|a, b| {
            (&a.app_guid, a.index, &a.instance_id).cmp(&(&b.app_guid, b.index, &b.instance_id))
        });
        all
    }

    /// The instances of one app, for `dea ctl app`.
    pub fn of_app(&mut self, app: &str) -> Vec<ActualInstance> {
        self.instances()
            .into_iter()
            .filter(|i| i.app_guid == app)
            .collect()
    }
}

fn key(instance: &ActualInstance) -> (String, u32, String, String) {
    (
        instance.app_guid.clone(),
        instance.index,
        instance.version.clone(),
        instance.agent.clone(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use dea_protocol::HeartbeatInstance;

    fn beat(agent: &str, instances: &[(&str, u32, InstanceState)]) -> Heartbeat {
        Heartbeat {
            dea: agent.into(),
            droplets: instances
                .iter()
                .map(|(id, index, state)| HeartbeatInstance {
                    cc_partition: "default".into(),
                    droplet: "g".into(),
                    version: "v".into(),
                    instance: id.to_string(),
                    index: *index,
                    state: *state,
                    state_timestamp: 0.0,
                })
                .collect(),
        }
    }

    #[test]
    fn heartbeats_replace_pending_starts_and_crashed_instances_do_not_count() {
        let mut actual = Actual::default();
        actual.started("g", 0, "v", "a", Duration::from_secs(60));
        actual.started("g", 1, "v", "b", Duration::from_secs(60));
        assert_eq!(actual.instances().len(), 2, "pending starts count");
        actual.heartbeat(&beat("a", &[("i0", 0, InstanceState::Running)]));
        let now = actual.instances();
        assert_eq!(now.len(), 2);
        assert!(now.iter().any(|i| i.instance_id == "i0"));
        actual.heartbeat(&beat("b", &[("i1", 1, InstanceState::Crashed)]));
        // b's start is still pending (its crashed instance is not the pending one's proof).
        assert_eq!(actual.instances().len(), 2, "{:?}", actual.instances());
        actual.forget_agent("a");
        assert_eq!(actual.instances().len(), 1);
        actual.exited(&DropletExited {
            cc_partition: "default".into(),
            droplet: "g".into(),
            version: "v".into(),
            instance: "i1".into(),
            index: 1,
            reason: "CRASHED".into(),
            exit_status: 1,
            exit_description: "exited".into(),
            crash_timestamp: None,
        });
        assert!(actual.instances().is_empty());
    }

    #[test]
    fn lost_starts_expire() {
        let mut actual = Actual::default();
        actual.started("g", 0, "v", "a", Duration::ZERO);
        assert!(actual.instances().is_empty());
    }
}
