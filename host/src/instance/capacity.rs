//! What this host can still take: memory and disk offered to instances (overcommitted as
//! configured), less what instances and staging tasks hold (reference dea_ng.md §4.6).

use super::{Handle, InstanceManager, InstanceState, StartRequest};
use std::collections::HashMap;
use std::sync::Arc;

/// Memory and disk held by a staging task (the DEA reserves both from the same pool as
/// instances).
#[derive(Debug, Clone, Copy)]
pub(super) struct Reservation {
    pub memory_mb: u64,
    pub disk_mb: u64,
}

impl InstanceManager {
    /// CF's refusal when a start does not fit the host's (overcommitted) capacity.
    pub(super) fn refuse_for_resources(
        &self,
        instances: &HashMap<String, Arc<Handle>>,
        request: &StartRequest,
    ) -> Option<String> {
        let (memory, disk) = self.remaining_in(instances);
        if request.memory_mb > memory {
            Some("Not enough memory resource available.".into())
        } else if request.disk_mb > disk {
            Some("Not enough disk resource available.".into())
        } else {
            None
        }
    }

    /// Memory and disk (MiB) not yet reserved by instances or staging tasks.
    fn remaining_in(&self, instances: &HashMap<String, Arc<Handle>>) -> (u64, u64) {
        let (mut memory, mut disk) = (0u64, 0u64);
        for handle in instances.values() {
            let info = handle.info.lock();
            if info.holds_resources() {
                memory += info.memory_mb;
            }
            // A crashed instance's files are still on disk (the DEA counts them too).
            if info.holds_resources() || info.state == InstanceState::Crashed {
                disk += info.disk_mb;
            }
        }
        for reservation in self.staging.lock().values() {
            memory += reservation.memory_mb;
            disk += reservation.disk_mb;
        }
        let settings = &self.settings;
        let memory_cap = settings.memory_capacity_mb as f64 * settings.memory_overcommit_factor;
        let disk_cap = settings.disk_capacity_mb as f64 * settings.disk_overcommit_factor;
        (
            (memory_cap as u64).saturating_sub(memory),
            (disk_cap as u64).saturating_sub(disk),
        )
    }

    /// Memory and disk (MiB) still free for new instances and stagings.
    pub fn remaining(&self) -> (u64, u64) {
        let instances = self.instances.read();
        self.remaining_in(&instances)
    }

    /// Reserves memory and disk for a staging task; CF's refusal message when they do not fit.
    pub fn reserve_staging(
        &self,
        task_id: &str,
        memory_mb: u64,
        disk_mb: u64,
    ) -> Result<(), String> {
        let instances = self.instances.write();
        let (memory, disk) = self.remaining_in(&instances);
        if memory_mb > memory {
            return Err("Not enough memory resources available".into());
        }
        if disk_mb > disk {
            return Err("Not enough disk resources available".into());
        }
        self.staging
            .lock()
            .insert(task_id.to_string(), Reservation { memory_mb, disk_mb });
        Ok(())
    }

    pub fn release_staging(&self, task_id: &str) {
        self.staging.lock().remove(task_id);
    }
}
