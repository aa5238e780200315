//! The agents on the bus, as their advertisements describe them, and where a new instance
//! or staging should go.
//!
//! Placement follows Cloud Controller's DEA pool: only agents with the stack and room
//! qualify; among them, the zone and then the agent with the fewest instances of the app
//! (so one host or zone going away takes as few of them as possible), then the one with the
//! most free memory. Each placement is charged against the agent until its next
//! advertisement, so one pass does not fill an agent past what it offered.

use dea_protocol::{Advertise, StagingAdvertise};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// One agent as last advertised.
#[derive(Debug, Clone)]
pub struct AgentState {
    pub id: String,
    pub stacks: Vec<String>,
    pub available_memory_mb: u64,
    pub available_disk_mb: u64,
    pub zone: String,
    /// Instances per app guid.
    pub app_counts: BTreeMap<String, u64>,
    pub last_seen: Instant,
}

impl AgentState {
    pub fn new(id: &str, stacks: &[&str], memory_mb: u64, disk_mb: u64, zone: &str) -> Self {
        AgentState {
            id: id.to_string(),
            stacks: stacks.iter().map(|s| s.to_string()).collect(),
            available_memory_mb: memory_mb,
            available_disk_mb: disk_mb,
            zone: zone.to_string(),
            app_counts: BTreeMap::new(),
            last_seen: Instant::now(),
        }
    }

    pub fn from_advertise(message: &Advertise) -> AgentState {
        AgentState {
            id: message.id.clone(),
            stacks: message.stacks.clone(),
            available_memory_mb: message.available_memory,
            available_disk_mb: message.available_disk,
            zone: message
                .placement_properties
                .get("zone")
                .cloned()
                .unwrap_or_else(|| "default".into()),
            app_counts: message.app_id_to_count.clone(),
            last_seen: Instant::now(),
        }
    }

    fn fits(&self, want: &Placement) -> bool {
        want.stack
            .is_none_or(|stack| self.stacks.iter().any(|s| s == stack))
            && self.available_memory_mb >= want.memory_mb
            && self.available_disk_mb >= want.disk_mb
    }
}

/// What a new instance needs.
#[derive(Debug, Clone, Copy)]
pub struct Placement<'a> {
    pub app: &'a str,
    pub stack: Option<&'a str>,
    pub memory_mb: u64,
    pub disk_mb: u64,
}

/// The agents (from `dea.advertise`) and stagers (from `staging.advertise`) alive now.
#[derive(Debug, Default)]
pub struct Fleet {
    agents: HashMap<String, AgentState>,
    stagers: HashMap<String, (StagingAdvertise, Instant)>,
}

impl Fleet {
    /// Records an advertisement; it replaces what was charged against the agent.
    pub fn observe(&mut self, agent: AgentState) {
        self.agents.insert(agent.id.clone(), agent);
    }

    pub fn observe_stager(&mut self, message: StagingAdvertise) {
        self.stagers
            .insert(message.id.clone(), (message, Instant::now()));
    }

    /// Forgets agents and stagers not heard from within `ttl`; returns the agents gone.
    pub fn expire(&mut self, ttl: Duration) -> Vec<String> {
        let now = Instant::now();
        let mut gone: Vec<String> = self
            .agents
            .values()
            .filter(|a| now.duration_since(a.last_seen) > ttl)
            .map(|a| a.id.clone())
            .collect();
        gone.sort();
        for id in &gone {
            self.agents.remove(id);
        }
        self.stagers
            .retain(|_, (_, seen)| now.duration_since(*seen) <= ttl);
        gone
    }

    pub fn is_alive(&self, agent: &str) -> bool {
        self.agents.contains_key(agent)
    }

    pub fn agent_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.agents.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// The agent a new instance should go to, charged for it; `None` when none fits.
    pub fn place(&mut self, want: &Placement) -> Option<String> {
        let mut zone_counts: HashMap<&str, u64> = HashMap::new();
        for agent in self.agents.values() {
            *zone_counts.entry(&agent.zone).or_default() +=
                agent.app_counts.get(want.app).copied().unwrap_or(0);
        }
        let chosen = self
            .agents
            .values()
            .filter(|agent| agent.fits(want))
            .min_by_key(|agent| {
                (
                    zone_counts.get(agent.zone.as_str()).copied().unwrap_or(0),
                    agent.app_counts.get(want.app).copied().unwrap_or(0),
                    std::cmp::Reverse(agent.available_memory_mb),
                    agent.id.clone(),
                )
            })?
            .id
            .clone();
        let agent = self.agents.get_mut(&chosen)?;
        agent.available_memory_mb -= want.memory_mb;
        agent.available_disk_mb -= want.disk_mb;
        *agent.app_counts.entry(want.app.to_string()).or_default() += 1;
        Some(chosen)
    }

    /// The stager for a staging: with the stack and the memory, the most free memory first,
    /// none of those in `refused` (they said they had no room).
    pub fn pick_stager(
        &self,
        stack: Option<&str>,
        memory_mb: u64,
        refused: &[String],
    ) -> Option<String> {
        self.stagers
            .values()
            .map(|(s, _)| s)
            .filter(|s| !refused.contains(&s.id))
            .filter(|s| stack.is_none_or(|stack| s.stacks.iter().any(|x| x == stack)))
            .filter(|s| s.available_memory >= memory_mb)
            .max_by_key(|s| (s.available_memory, std::cmp::Reverse(s.id.clone())))
            .map(|s| s.id.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacks_room_and_zones_decide_placement() {
        let mut fleet = Fleet::default();
        fleet.observe(AgentState::new("a", &["cflinuxfs4"], 1024, 4096, "z1"));
        fleet.observe(AgentState::new("b", &["cflinuxfs4"], 512, 4096, "z1"));
        fleet.observe(AgentState::new("c", &["other"], 8192, 4096, "z2"));
        let want = Placement {
            app: "g",
            stack: Some("cflinuxfs4"),
            memory_mb: 512,
            disk_mb: 1024,
        };
        assert_eq!(fleet.place(&want).as_deref(), Some("a"), "most memory");
        assert_eq!(fleet.place(&want).as_deref(), Some("b"), "spread");
        assert_eq!(fleet.place(&want).as_deref(), Some("a"), "room left");
        assert_eq!(fleet.place(&want), None, "all full; c lacks the stack");

        let mut zoned = Fleet::default();
        zoned.observe(AgentState::new("a1", &["s"], 4096, 4096, "z1"));
        zoned.observe(AgentState::new("a2", &["s"], 4096, 4096, "z1"));
        zoned.observe(AgentState::new("b1", &["s"], 1024, 4096, "z2"));
        let want = Placement {
            app: "g",
            stack: None,
            memory_mb: 256,
            disk_mb: 0,
        };
        let first = zoned.place(&want).expect("placed");
        let second = zoned.place(&want).expect("placed");
        let zones: Vec<bool> = [&first, &second]
            .iter()
            .map(|id| id.starts_with('b'))
            .collect();
        assert!(
            zones.contains(&true) && zones.contains(&false),
            "{first} {second}"
        );
    }

    #[test]
    fn silent_agents_expire_and_stagers_are_picked_by_room() {
        let mut fleet = Fleet::default();
        let mut old = AgentState::new("old", &["s"], 1024, 1024, "z");
        old.last_seen = Instant::now() - Duration::from_secs(60);
        fleet.observe(old);
        fleet.observe(AgentState::new("new", &["s"], 1024, 1024, "z"));
        assert_eq!(fleet.expire(Duration::from_secs(15)), ["old"]);
        assert!(fleet.is_alive("new") && !fleet.is_alive("old"));

        for (id, memory) in [("s1", 512), ("s2", 2048)] {
            fleet.observe_stager(StagingAdvertise {
                id: id.into(),
                stacks: vec!["cflinuxfs4".into()],
                available_memory: memory,
                available_disk: 4096,
            });
        }
        assert_eq!(
            fleet.pick_stager(Some("cflinuxfs4"), 1024, &[]).as_deref(),
            Some("s2")
        );
        assert_eq!(
            fleet
                .pick_stager(Some("cflinuxfs4"), 0, &["s2".into()])
                .as_deref(),
            Some("s1"),
            "one that refused is not asked again"
        );
        assert_eq!(fleet.pick_stager(Some("nope"), 0, &[]), None);
    }
}
