//! What a running instance uses, for `dea.find.droplet` stats (reference dea_ng.md §2.6):
//! memory and CPU from its cgroup, disk from a capped walk of its home.

use super::{InstanceManager, disk};
use serde::Serialize;
use std::time::Duration;

/// Resource use of a running instance, for `dea.find.droplet` stats.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Usage {
    pub mem_bytes: u64,
    pub disk_bytes: u64,
    /// Fraction of one core used since the previous sample.
    pub cpu: f64,
}

impl InstanceManager {
    /// Memory, disk and CPU use of a running instance.
    pub async fn usage(&self, id: &str) -> Option<Usage> {
        let info = self.get(id)?;
        let cgroup = |file: &str| {
            std::fs::read_to_string(format!(
                "/sys/fs/cgroup/memory/dea/{}/{file}",
                info.container_id
            ))
            .or_else(|_| {
                std::fs::read_to_string(format!("/sys/fs/cgroup/dea/{}/{file}", info.container_id))
            })
            .ok()
        };
        let mem_bytes = cgroup("memory.usage_in_bytes")
            .or_else(|| cgroup("memory.current"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let cpu = self.cpu_fraction(&info.container_id).await;
        let home = info.dir.join("home");
        let (container_id, max_files) = (info.container_id.clone(), self.settings.max_files);
        let max_depth = self.settings.max_dir_depth;
        let disk_bytes = tokio::task::spawn_blocking(move || {
            disk::usage(&home, &container_id, max_files, max_depth).map_or(0, |u| u.bytes)
        })
        .await
        .unwrap_or(0);
        Some(Usage {
            mem_bytes,
            disk_bytes,
            cpu,
        })
    }

    /// CPU used over a short sample, as a fraction of one core (cgroup cpuacct).
    async fn cpu_fraction(&self, container_id: &str) -> f64 {
        let read = || {
            std::fs::read_to_string(format!(
                "/sys/fs/cgroup/cpuacct/dea/{container_id}/cpuacct.usage"
            ))
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let Some(before) = read() else {
            return 0.0;
        };
        let window = Duration::from_millis(100);
        tokio::time::sleep(window).await;
        let after = read().unwrap_or(before);
        after.saturating_sub(before) as f64 / window.as_nanos() as f64
    }
}
