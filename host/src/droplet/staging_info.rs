//! `staging_info.yml`: what the DEA reads back from a droplet to start it (reference:
//! dea_ng.md §3.4 step 6, §3.8).

use crate::sbom::Dependencies;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The keys Cloud Foundry's buildpack runner writes, plus the buildpack's key and version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StagingInfo {
    /// What detect reported, e.g. `staticfile`.
    pub detected_buildpack: String,
    /// The command the `web` process runs.
    pub start_command: Option<String>,
    /// Where the buildpack was in the staging container, `/tmp/buildpacks/<id>` as in the
    /// DEA (not its directory on this host, which would make droplets differ by host).
    pub buildpack_path: String,
    /// The buildpack's id, for `buildpack_key` in the staging reply.
    pub buildpack_key: String,
    /// Process types after the Procfile overrode the buildpack's defaults.
    pub effective_procfile: BTreeMap<String, String>,
    /// Run-time variables the buildpack asked for.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config_vars: BTreeMap<String, String>,
    /// What went into the droplet (the facts of `sbom.cdx.json`), for Cloud Foundry's
    /// tools; absent in droplets staged before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dependencies: Option<Dependencies>,
}
