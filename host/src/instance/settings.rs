//! What instances on this host may use and where they live: one typed copy of the `instances`
//! part of the configuration (plus the stacks and limits it borrows from elsewhere), with
//! the defaults the agent works out for itself (memory capacity: the machine's RAM).

use super::network::NetworkSettings;
use std::path::PathBuf;
use std::time::Duration;

/// Limits and places for instances.
#[derive(Debug, Clone)]
pub struct InstanceSettings {
    pub base_dir: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub pids_limit: i64,
    pub stop_grace: Duration,
    pub max_droplet_mb: u64,
    /// Homes are overlays over a droplet unpacked once ([`super::layers`]).
    pub layered_homes: bool,
    /// Memory this host offers to instances, in MiB, and how far it may be overcommitted.
    pub memory_capacity_mb: u64,
    pub memory_overcommit_factor: f64,
    /// Disk this host offers to instances, in MiB, and how far it may be overcommitted.
    pub disk_capacity_mb: u64,
    pub disk_overcommit_factor: f64,
    /// How long a crashed instance's logs are kept under `crashes/`.
    pub crash_lifetime: Duration,
    /// How often a running instance's disk use is measured against its limit.
    pub disk_check_interval: Duration,
    /// Addresses, published ports and egress of instances.
    pub network: NetworkSettings,
    /// How often a running instance with routes is checked to accept connections.
    pub health_check_interval: Duration,
    /// Most files and directories an instance's home may hold (an inode limit).
    pub max_files: u64,
    /// Deepest nesting of directories accepted in a droplet.
    pub max_dir_depth: usize,
    /// The stacks instances run on.
    pub stacks: crate::stack::Stacks,
}

impl InstanceSettings {
    /// The settings `config` describes (memory capacity defaults to the machine's RAM).
    pub fn from_config(config: &crate::config::Config) -> InstanceSettings {
        let instances = &config.instances;
        let machine_mb = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
            .map_or(4096, |kb| kb / 1024);
        InstanceSettings {
            base_dir: config.base_dir.clone(),
            uid: instances.uid,
            gid: instances.gid,
            pids_limit: instances.pids_limit,
            stop_grace: Duration::from_secs(instances.stop_grace_secs),
            max_droplet_mb: instances.max_droplet_mb,
            layered_homes: instances.layered_homes,
            memory_capacity_mb: instances.memory_capacity_mb.unwrap_or(machine_mb),
            memory_overcommit_factor: instances.memory_overcommit_factor,
            disk_capacity_mb: instances.disk_capacity_mb,
            disk_overcommit_factor: instances.disk_overcommit_factor,
            crash_lifetime: Duration::from_secs(instances.crash_lifetime_secs),
            disk_check_interval: Duration::from_secs(instances.disk_check_interval_secs.max(1)),
            network: NetworkSettings {
                subnet: instances.network.clone(),
                port_range: (instances.port_range[0], instances.port_range[1]),
                // An address that is not IPv4 (a name) publishes on every local address.
                publish_address: instances
                    .publish_address
                    .parse()
                    .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
                egress: instances.egress_rules.clone(),
                table: NetworkSettings::table_for(&config.base_dir),
            },
            health_check_interval: Duration::from_secs(instances.health_check_interval_secs.max(1)),
            max_files: instances.max_files,
            max_dir_depth: config.staging.max_dir_depth,
            stacks: config.stacks(),
        }
    }
}
