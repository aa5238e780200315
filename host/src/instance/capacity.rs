//! What this host can still take: memory and disk offered to instances (overcommitted as
//! configured), less what instances and staging tasks hold (reference dea_ng.md §4.6).
//!
//! The arithmetic is in plain types ([`Resources`], [`Capacity`], [`StagingReservations`]) so
//! it can be tested without a registry; [`InstanceManager`] feeds them under its registry lock.

use super::{Handle, InstanceInfo, InstanceManager, InstanceSettings, InstanceState, StartRequest};
use std::collections::HashMap;
use std::sync::Arc;

/// An amount of memory and disk, in MiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Resources {
    pub memory_mb: u64,
    pub disk_mb: u64,
}

impl Resources {
    /// `self` and `other` together (saturating: sizes come from start and staging messages).
    fn plus(self, other: Resources) -> Resources {
        Resources {
            memory_mb: self.memory_mb.saturating_add(other.memory_mb),
            disk_mb: self.disk_mb.saturating_add(other.disk_mb),
        }
    }

    /// What is left of `self` once `used` is taken (none when `used` is more).
    fn less(self, used: Resources) -> Resources {
        Resources {
            memory_mb: self.memory_mb.saturating_sub(used.memory_mb),
            disk_mb: self.disk_mb.saturating_sub(used.disk_mb),
        }
    }

    /// What an instance holds: memory while it is live, disk also once it crashed (its files
    /// are still there; the DEA counts them too).
    fn held_by(info: &InstanceInfo) -> Resources {
        let live = info.holds_resources();
        Resources {
            memory_mb: if live { info.memory_mb } else { 0 },
            disk_mb: if live || info.state == InstanceState::Crashed {
                info.disk_mb
            } else {
                0
            },
        }
    }

    /// CF's refusal of an instance start asking for `asked` when `self` is what is free.
    /// (The start's wording differs from the staging one's, [`CapacityError`].)
    fn refuse_start(self, asked: Resources) -> Option<&'static str> {
        if asked.memory_mb > self.memory_mb {
            Some("Not enough memory resource available.")
        } else if asked.disk_mb > self.disk_mb {
            Some("Not enough disk resource available.")
        } else {
            None
        }
    }
}

/// Why a staging task's reservation was refused. The messages are CF's, word for word: the
/// controller shows them to the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapacityError {
    #[error("Not enough memory resources available")]
    NotEnoughMemory { asked_mb: u64, free_mb: u64 },
    #[error("Not enough disk resources available")]
    NotEnoughDisk { asked_mb: u64, free_mb: u64 },
}

/// What the host offers to instances and stagings: the configured capacity times its
/// overcommit factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Capacity(Resources);

impl Capacity {
    pub(super) fn of(settings: &InstanceSettings) -> Capacity {
        let memory = settings.memory_capacity_mb as f64 * settings.memory_overcommit_factor;
        let disk = settings.disk_capacity_mb as f64 * settings.disk_overcommit_factor;
        // Float to integer casts saturate (and a NaN factor gives 0): no panics here.
        Capacity(Resources {
            memory_mb: memory as u64,
            disk_mb: disk as u64,
        })
    }

    /// What is left once `held` is taken.
    fn remaining(self, held: impl IntoIterator<Item = Resources>) -> Resources {
        let used = held.into_iter().fold(Resources::default(), Resources::plus);
        self.0.less(used)
    }
}

/// Staging tasks' reservations, by task id (the DEA reserves them from the same pool as
/// instances).
#[derive(Debug, Default)]
pub(super) struct StagingReservations(HashMap<String, Resources>);

impl StagingReservations {
    fn total(&self) -> Resources {
        self.0
            .values()
            .copied()
            .fold(Resources::default(), Resources::plus)
    }

    /// Reserves `asked` for `task_id` if it fits in `free`, what instances leave (these
    /// reservations are taken from it here).
    fn reserve(
        &mut self,
        task_id: &str,
        asked: Resources,
        free: Resources,
    ) -> Result<(), CapacityError> {
        let free = free.less(self.total());
        if asked.memory_mb > free.memory_mb {
            return Err(CapacityError::NotEnoughMemory {
                asked_mb: asked.memory_mb,
                free_mb: free.memory_mb,
            });
        }
        if asked.disk_mb > free.disk_mb {
            return Err(CapacityError::NotEnoughDisk {
                asked_mb: asked.disk_mb,
                free_mb: free.disk_mb,
            });
        }
        self.0.insert(task_id.to_string(), asked);
        Ok(())
    }

    fn release(&mut self, task_id: &str) {
        self.0.remove(task_id);
    }
}

impl InstanceManager {
    /// CF's refusal when a start does not fit the host's (overcommitted) capacity.
    pub(super) fn refuse_for_resources(
        &self,
        instances: &HashMap<String, Arc<Handle>>,
        request: &StartRequest,
    ) -> Option<String> {
        let asked = Resources {
            memory_mb: request.memory_mb,
            disk_mb: request.disk_mb,
        };
        self.remaining_in(instances)
            .refuse_start(asked)
            .map(str::to_string)
    }

    /// What instances leave of the host's capacity, before staging reservations.
    fn left_by_instances(&self, instances: &HashMap<String, Arc<Handle>>) -> Resources {
        Capacity::of(&self.settings).remaining(
            instances
                .values()
                .map(|handle| Resources::held_by(&handle.info.lock())),
        )
    }

    /// Memory and disk not yet reserved by instances or staging tasks.
    fn remaining_in(&self, instances: &HashMap<String, Arc<Handle>>) -> Resources {
        self.left_by_instances(instances)
            .less(self.staging.lock().total())
    }

    /// Memory and disk (MiB) still free for new instances and stagings.
    pub fn remaining(&self) -> (u64, u64) {
        let instances = self.instances.read();
        let left = self.remaining_in(&instances);
        (left.memory_mb, left.disk_mb)
    }

    /// Reserves memory and disk for a staging task, or says which does not fit.
    pub fn reserve_staging(
        &self,
        task_id: &str,
        memory_mb: u64,
        disk_mb: u64,
    ) -> Result<(), CapacityError> {
        // Held for writing, so that a concurrent start or reservation cannot take the same room.
        let instances = self.instances.write();
        let free = self.left_by_instances(&instances);
        let asked = Resources { memory_mb, disk_mb };
        self.staging.lock().reserve(task_id, asked, free)
    }

    pub fn release_staging(&self, task_id: &str) {
        self.staging.lock().release(task_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::example_info;

    fn mb(memory_mb: u64, disk_mb: u64) -> Resources {
        Resources { memory_mb, disk_mb }
    }

    fn settings(
        memory_mb: u64,
        memory_factor: f64,
        disk_mb: u64,
        disk_factor: f64,
    ) -> InstanceSettings {
        let mut settings = InstanceSettings::from_config(&crate::config::Config::default());
        settings.memory_capacity_mb = memory_mb;
        settings.memory_overcommit_factor = memory_factor;
        settings.disk_capacity_mb = disk_mb;
        settings.disk_overcommit_factor = disk_factor;
        settings
    }

    fn instance(state: InstanceState, memory_mb: u64, disk_mb: u64) -> InstanceInfo {
        let mut info = example_info("i", state);
        info.memory_mb = memory_mb;
        info.disk_mb = disk_mb;
        info
    }

    #[test]
    fn capacity_is_the_configured_amount_times_its_overcommit_factor() {
        assert_eq!(
            Capacity::of(&settings(1000, 1.0, 5000, 1.0)).0,
            mb(1000, 5000)
        );
        assert_eq!(
            Capacity::of(&settings(1000, 1.5, 5000, 2.0)).0,
            mb(1500, 10_000)
        );
        // A factor below 1 holds some back; fractions of a MiB are dropped.
        assert_eq!(Capacity::of(&settings(1001, 0.5, 3, 0.5)).0, mb(500, 1));
        // Nonsense factors do not panic: negative and NaN offer nothing.
        assert_eq!(
            Capacity::of(&settings(1000, -1.0, 1000, f64::NAN)).0,
            mb(0, 0)
        );
    }

    #[test]
    fn live_instances_hold_memory_and_disk_crashed_ones_only_disk() {
        for live in [
            InstanceState::Born,
            InstanceState::Starting,
            InstanceState::Running,
            InstanceState::Resuming,
            InstanceState::Stopping,
            InstanceState::Evacuating,
        ] {
            assert_eq!(
                Resources::held_by(&instance(live, 256, 1024)),
                mb(256, 1024),
                "{live:?}"
            );
        }
        assert_eq!(
            Resources::held_by(&instance(InstanceState::Crashed, 256, 1024)),
            mb(0, 1024)
        );
        assert_eq!(
            Resources::held_by(&instance(InstanceState::Stopped, 256, 1024)),
            mb(0, 0)
        );
    }

    #[test]
    fn remaining_is_capacity_less_what_is_held_never_below_zero() {
        let capacity = Capacity::of(&settings(1024, 2.0, 4096, 1.0));
        assert_eq!(capacity.remaining([]), mb(2048, 4096));
        assert_eq!(
            capacity.remaining([mb(512, 1000), mb(1024, 1000)]),
            mb(512, 2096)
        );
        assert_eq!(capacity.remaining([mb(3000, 5000)]), mb(0, 0));
        // Absurd sizes from a message saturate instead of overflowing.
        assert_eq!(
            capacity.remaining([mb(u64::MAX, 1), mb(1, u64::MAX)]),
            mb(0, 0)
        );
    }

    #[test]
    fn a_start_is_refused_for_memory_first_then_disk_in_cf_words() {
        let free = mb(512, 1024);
        assert_eq!(free.refuse_start(mb(512, 1024)), None);
        assert_eq!(
            free.refuse_start(mb(513, 1)),
            Some("Not enough memory resource available.")
        );
        assert_eq!(
            free.refuse_start(mb(1, 1025)),
            Some("Not enough disk resource available.")
        );
        assert_eq!(
            free.refuse_start(mb(513, 1025)),
            Some("Not enough memory resource available.")
        );
    }

    #[test]
    fn staging_reservations_take_from_what_instances_leave() {
        let mut staging = StagingReservations::default();
        let free = mb(1024, 4096);
        staging.reserve("a", mb(512, 2048), free).expect("fits");
        staging
            .reserve("b", mb(512, 2048), free)
            .expect("fits exactly");
        assert_eq!(staging.total(), mb(1024, 4096));
        assert_eq!(
            staging.reserve("c", mb(1, 0), free),
            Err(CapacityError::NotEnoughMemory {
                asked_mb: 1,
                free_mb: 0
            })
        );
        // Released: the room is back.
        staging.release("a");
        assert_eq!(staging.total(), mb(512, 2048));
        staging
            .reserve("c", mb(512, 1024), free)
            .expect("fits again");
        // Releasing a task that holds nothing changes nothing.
        staging.release("unknown");
        assert_eq!(staging.total(), mb(1024, 3072));
    }

    #[test]
    fn a_refused_reservation_holds_nothing() {
        let mut staging = StagingReservations::default();
        let refused = staging.reserve("a", mb(100, 5000), mb(1024, 4096));
        assert_eq!(
            refused,
            Err(CapacityError::NotEnoughDisk {
                asked_mb: 5000,
                free_mb: 4096
            })
        );
        assert_eq!(staging.total(), mb(0, 0));
    }

    #[test]
    fn staging_refusals_read_as_cf_words() {
        let memory = CapacityError::NotEnoughMemory {
            asked_mb: 2,
            free_mb: 1,
        };
        let disk = CapacityError::NotEnoughDisk {
            asked_mb: 2,
            free_mb: 1,
        };
        assert_eq!(memory.to_string(), "Not enough memory resources available");
        assert_eq!(disk.to_string(), "Not enough disk resources available");
    }
}
