//! Convergence: from what is wanted and what runs, the actions that close the gap — a pure
//! function, so every decision can be tested and logged with its reason.
//!
//! The rules are Cloud Foundry's health manager's: each index of a started app should have
//! one instance of the current version; a missing one is started (after a back-off when it
//! keeps crashing), extra ones and those of stopped or deleted apps are stopped, and a new
//! droplet rolls out index by index (an old instance is stopped only once the new one at
//! its index is RUNNING).

use super::fleet::{Fleet, Placement};
use dea_protocol::InstanceState;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, SystemTime};

/// An app as the controller wants it (from the desired-state bucket).
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredApp {
    pub guid: String,
    pub name: String,
    /// The DEA's `version`: changes with every new droplet or environment.
    pub version: String,
    pub instances: u32,
    pub memory_mb: u64,
    pub disk_mb: u64,
    pub stack: Option<String>,
    /// Started with a droplet to run; otherwise nothing of it should run.
    pub runnable: bool,
    /// Crashes per index, for the back-off.
    pub crashes: BTreeMap<u32, CrashRecord>,
}

/// An instance that ran this long before crashing was not crash-looping: the count restarts.
pub const STABLE_RUN: Duration = Duration::from_secs(300);

/// How often an index crashed in a row, and when last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CrashRecord {
    pub count: u32,
    /// Seconds since the Unix epoch.
    pub last_at: u64,
}

impl CrashRecord {
    /// When the index may be started again: at once for the first three crashes, then after
    /// 30 s doubling up to 16 minutes (the health manager's schedule).
    pub fn restart_at(&self) -> u64 {
        if self.count <= 3 {
            return self.last_at;
        }
        let exponent = (self.count - 4).min(5);
        self.last_at + (30u64 << exponent).min(960)
    }
}

/// An instance as the agents report it.
#[derive(Debug, Clone, PartialEq)]
pub struct ActualInstance {
    pub instance_id: String,
    pub app_guid: String,
    pub version: String,
    pub index: u32,
    pub state: InstanceState,
    pub agent: String,
}

impl ActualInstance {
    /// Counts toward its index (the DEA's states that hold or will hold a running app).
    fn alive(&self) -> bool {
        matches!(
            self.state,
            InstanceState::Born
                | InstanceState::Starting
                | InstanceState::Running
                | InstanceState::Resuming
        )
    }
}

/// Why an action is taken, in words an operator reads in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    Missing,
    CrashedBefore { crashes: u32 },
    Extra,
    Duplicate,
    AppStopped,
    AppUnknown,
    Replaced,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Missing => write!(f, "no instance runs at this index"),
            Reason::CrashedBefore { crashes } => {
                write!(
                    f,
                    "the index crashed {crashes} time(s) and its back-off is over"
                )
            }
            Reason::Extra => write!(f, "the index is beyond the app's instance count"),
            Reason::Duplicate => write!(f, "another instance runs at this index"),
            Reason::AppStopped => write!(f, "the app is stopped"),
            Reason::AppUnknown => write!(f, "no such app is wanted"),
            Reason::Replaced => write!(f, "the new version is RUNNING at this index"),
        }
    }
}

/// What the controller should do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Start {
        app: String,
        index: u32,
        agent: String,
        reason: Reason,
    },
    Stop {
        app: String,
        instance: String,
        agent: String,
        reason: Reason,
    },
    /// An index should run but cannot now; said once per pass so the log shows why.
    Hold {
        app: String,
        index: u32,
        why: String,
    },
}

/// The actions that bring `actual` to `desired` at time `now`. `fleet` places new
/// instances (and is charged for them, so one pass does not overfill an agent).
pub fn converge(
    desired: &[DesiredApp],
    actual: &[ActualInstance],
    fleet: &mut Fleet,
    now: SystemTime,
) -> Vec<Action> {
    let now_secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let mut by_app: HashMap<&str, Vec<&ActualInstance>> = HashMap::new();
    for instance in actual.iter().filter(|i| i.alive()) {
        by_app.entry(&instance.app_guid).or_default().push(instance);
    }
    let mut actions = Vec::new();
    for app in desired {
        let instances = by_app.remove(app.guid.as_str()).unwrap_or_default();
        if !app.runnable {
            actions.extend(instances.iter().map(|i| stop(i, Reason::AppStopped)));
            continue;
        }
        converge_app(app, &instances, fleet, now_secs, &mut actions);
    }
    // Whatever is left belongs to no wanted app.
    let mut orphans: Vec<&ActualInstance> = by_app.into_values().flatten().collect();
    orphans.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    actions.extend(orphans.into_iter().map(|i| stop(i, Reason::AppUnknown)));
    actions
}

fn stop(instance: &ActualInstance, reason: Reason) -> Action {
    Action::Stop {
        app: instance.app_guid.clone(),
        instance: instance.instance_id.clone(),
        agent: instance.agent.clone(),
        reason,
    }
}

fn converge_app(
    app: &DesiredApp,
    instances: &[&ActualInstance],
    fleet: &mut Fleet,
    now_secs: u64,
    actions: &mut Vec<Action>,
) {
    let mut by_index: BTreeMap<u32, Vec<&ActualInstance>> = BTreeMap::new();
    for instance in instances {
        by_index.entry(instance.index).or_default().push(instance);
    }
    for (index, at_index) in &by_index {
        if *index >= app.instances {
            actions.extend(at_index.iter().map(|i| stop(i, Reason::Extra)));
            continue;
        }
        let (current, old): (Vec<&&ActualInstance>, Vec<&&ActualInstance>) =
            at_index.iter().partition(|i| i.version == app.version);
        // Keep one current instance, the furthest along (RUNNING first), then by id so two
        // controllers would pick the same one.
        let mut current = current;
        current.sort_by_key(|i| (i.state != InstanceState::Running, i.instance_id.clone()));
        actions.extend(current.iter().skip(1).map(|i| stop(i, Reason::Duplicate)));
        let replaced = current
            .first()
            .is_some_and(|i| i.state == InstanceState::Running);
        if replaced {
            actions.extend(old.iter().map(|i| stop(i, Reason::Replaced)));
        }
    }
    for index in 0..app.instances {
        let has_current = by_index
            .get(&index)
            .is_some_and(|at| at.iter().any(|i| i.version == app.version));
        if has_current {
            continue;
        }
        let reason = match app.crashes.get(&index) {
            Some(record) if record.restart_at() > now_secs => {
                actions.push(Action::Hold {
                    app: app.guid.clone(),
                    index,
                    why: format!(
                        "crashed {} times; next start in {} s",
                        record.count,
                        record.restart_at() - now_secs
                    ),
                });
                continue;
            }
            Some(record) => Reason::CrashedBefore {
                crashes: record.count,
            },
            None => Reason::Missing,
        };
        let placement = Placement {
            app: &app.guid,
            stack: app.stack.as_deref(),
            memory_mb: app.memory_mb,
            disk_mb: app.disk_mb,
        };
        match fleet.place(&placement) {
            Some(agent) => actions.push(Action::Start {
                app: app.guid.clone(),
                index,
                agent,
                reason,
            }),
            None => actions.push(Action::Hold {
                app: app.guid.clone(),
                index,
                why: "no agent has the stack and room for it".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fleet::AgentState;

    fn app(instances: u32) -> DesiredApp {
        DesiredApp {
            guid: "g1".into(),
            name: "shop".into(),
            version: "v2".into(),
            instances,
            memory_mb: 256,
            disk_mb: 1024,
            stack: None,
            runnable: true,
            crashes: BTreeMap::new(),
        }
    }

    fn running(id: &str, index: u32, version: &str, agent: &str) -> ActualInstance {
        ActualInstance {
            instance_id: id.into(),
            app_guid: "g1".into(),
            version: version.into(),
            index,
            state: InstanceState::Running,
            agent: agent.into(),
        }
    }

    fn fleet(agents: &[(&str, u64)]) -> Fleet {
        let mut fleet = Fleet::default();
        for (id, memory) in agents {
            fleet.observe(AgentState::new(id, &["cflinuxfs4"], *memory, 100_000, "z1"));
        }
        fleet
    }

    fn starts(actions: &[Action]) -> Vec<(u32, String)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Start { index, agent, .. } => Some((*index, agent.clone())),
                _ => None,
            })
            .collect()
    }

    fn stops(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Stop { instance, .. } => Some(instance.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn missing_indices_are_started_spread_across_agents() {
        let mut fleet = fleet(&[("a", 4096), ("b", 4096), ("c", 4096)]);
        let actions = converge(&[app(3)], &[], &mut fleet, SystemTime::now());
        let placed = starts(&actions);
        assert_eq!(placed.len(), 3);
        let mut agents: Vec<&str> = placed.iter().map(|(_, a)| a.as_str()).collect();
        agents.sort();
        assert_eq!(agents, ["a", "b", "c"], "one per agent");
    }

    #[test]
    fn a_full_agent_gets_nothing_and_an_unplaceable_index_is_held_with_a_reason() {
        let mut fleet = fleet(&[("small", 300), ("big", 600)]);
        let actions = converge(&[app(3)], &[], &mut fleet, SystemTime::now());
        let placed = starts(&actions);
        assert_eq!(placed.len(), 3, "{actions:?}");
        assert_eq!(placed.iter().filter(|(_, a)| a == "big").count(), 2);
        let mut fleet = self::fleet(&[("small", 300)]);
        let actions = converge(&[app(2)], &[], &mut fleet, SystemTime::now());
        assert_eq!(starts(&actions).len(), 1);
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::Hold { index: 1, why, .. } if why.contains("room")))
        );
    }

    #[test]
    fn extra_duplicate_stopped_and_unknown_instances_are_stopped() {
        let mut fleet = fleet(&[("a", 4096)]);
        let actual = [
            running("i0", 0, "v2", "a"),
            running("i0b", 0, "v2", "a"),
            running("i1", 1, "v2", "a"),
            running("i5", 5, "v2", "a"),
            ActualInstance {
                app_guid: "gone".into(),
                ..running("x", 0, "v1", "a")
            },
        ];
        let actions = converge(&[app(2)], &actual, &mut fleet, SystemTime::now());
        assert!(starts(&actions).is_empty(), "{actions:?}");
        assert_eq!(stops(&actions), ["i0b", "i5", "x"]);

        let mut stopped = app(2);
        stopped.runnable = false;
        let actions = converge(&[stopped], &actual[..3], &mut fleet, SystemTime::now());
        assert_eq!(stops(&actions).len(), 3);
    }

    #[test]
    fn a_new_version_rolls_out_index_by_index() {
        let mut fleet = fleet(&[("a", 4096), ("b", 4096)]);
        let old = [running("o0", 0, "v1", "a"), running("o1", 1, "v1", "b")];
        let actions = converge(&[app(2)], &old, &mut fleet, SystemTime::now());
        assert_eq!(starts(&actions).len(), 2, "new ones start beside the old");
        assert!(stops(&actions).is_empty(), "old ones stay until replaced");

        let mut starting = running("n0", 0, "v2", "a");
        starting.state = InstanceState::Starting;
        let mixed = [
            old[0].clone(),
            old[1].clone(),
            running("n1", 1, "v2", "b"),
            starting,
        ];
        let actions = converge(&[app(2)], &mixed, &mut fleet, SystemTime::now());
        assert!(starts(&actions).is_empty());
        assert_eq!(stops(&actions), ["o1"], "only where the new one RUNS");
    }

    #[test]
    fn crashing_indices_back_off_as_the_health_manager_did() {
        let record = |count| CrashRecord {
            count,
            last_at: 1000,
        };
        assert_eq!(record(1).restart_at(), 1000);
        assert_eq!(record(3).restart_at(), 1000);
        assert_eq!(record(4).restart_at(), 1030);
        assert_eq!(record(5).restart_at(), 1060);
        assert_eq!(record(9).restart_at(), 1960);
        assert_eq!(record(40).restart_at(), 1960);

        let mut fleet = fleet(&[("a", 4096)]);
        let mut crashing = app(1);
        crashing.crashes.insert(0, record(5));
        let at = |secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        let actions = converge(&[crashing.clone()], &[], &mut fleet, at(1010));
        assert!(starts(&actions).is_empty());
        assert!(matches!(&actions[0], Action::Hold { why, .. } if why.contains("50 s")));
        let actions = converge(&[crashing], &[], &mut fleet, at(1060));
        assert!(matches!(
            &actions[0],
            Action::Start {
                reason: Reason::CrashedBefore { crashes: 5 },
                ..
            }
        ));
    }
}
