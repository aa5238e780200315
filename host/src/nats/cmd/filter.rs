//! The filter of `dea.stop` and `dea.find.droplet` (reference dea_ng.md §2.4, §2.6), checked
//! whole when parsed: an unknown state name makes the message malformed, as in the DEA.

use crate::instance::{InstanceInfo, InstanceState};
use crate::nats::messages::InstanceFilter;

/// A checked `dea.stop` / `dea.find.droplet` filter.
pub(in crate::nats) struct Matcher {
    pub(super) droplet: String,
    version: Option<String>,
    instance_ids: Option<Vec<String>>,
    indices: Option<Vec<u32>>,
    states: Option<Vec<InstanceState>>,
    pub(super) include_stats: bool,
    pub(super) path: Option<String>,
}

impl Matcher {
    /// Does `info` pass every filter the message had?
    pub(super) fn matches(&self, info: &InstanceInfo) -> bool {
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

impl From<InstanceFilter> for Matcher {
    /// `instances` and `instance_ids` are merged, as in the DEA (state names were checked
    /// when the message was parsed).
    fn from(filter: InstanceFilter) -> Matcher {
        let instance_ids = match (filter.instances, filter.instance_ids) {
            (None, None) => None,
            (a, b) => Some(a.into_iter().chain(b).flatten().collect()),
        };
        Matcher {
            droplet: filter.droplet,
            version: filter.version,
            instance_ids,
            indices: filter.indices,
            states: filter.states,
            include_stats: filter.include_stats.unwrap_or(false),
            path: filter.path,
        }
    }
}
