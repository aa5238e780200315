//! The platform's section of `dea.yml` (`platform:`), beside the agent's: one file for a
//! host that runs an agent, a controller and a router. Every field has a default.

use crate::controller::ControllerConfig;
use crate::router::RouterConfig;
use serde::Deserialize;
use std::net::SocketAddr;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlatformConfig {
    /// The NATS servers; empty: the agent's `agent.nats_servers` (one bus for everything).
    pub nats_servers: Vec<String>,
    /// Copies of every bucket: 1 on one server, 3 on a three-node JetStream cluster.
    pub replicas: usize,
    pub controller: ControllerConfig,
    pub router: RouterConfig,
    pub ctl: CtlConfig,
}

impl Default for PlatformConfig {
    fn default() -> Self {
        PlatformConfig {
            nats_servers: Vec::new(),
            replicas: 1,
            controller: ControllerConfig::default(),
            router: RouterConfig::default(),
            ctl: CtlConfig::default(),
        }
    }
}

/// `dea ctl`'s settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CtlConfig {
    /// The router, through which files, logs and staging logs are reached.
    pub router: SocketAddr,
    /// How long `push` waits for staging, and then for the instances to run.
    pub timeout_secs: u64,
}

impl Default for CtlConfig {
    fn default() -> Self {
        CtlConfig {
            router: SocketAddr::from(([127, 0, 0, 1], 8080)),
            timeout_secs: 600,
        }
    }
}

/// The file as the platform reads it: only `platform:` (the agent's keys are the agent's).
#[derive(Debug, Default, Deserialize)]
struct File {
    #[serde(default)]
    platform: PlatformConfig,
}

impl PlatformConfig {
    /// The `platform:` section of a `dea.yml`'s text; an empty document gives the defaults.
    pub fn from_yaml(text: &str) -> Result<PlatformConfig, serde_yaml_ng::Error> {
        if text.trim().is_empty() {
            return Ok(PlatformConfig::default());
        }
        serde_yaml_ng::from_str::<File>(text).map(|file| file.platform)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_platform_section_is_read_beside_the_agents() {
        let config = PlatformConfig::from_yaml(
            "base_dir: /var/vcap\nagent:\n  nats_servers: [nats://a:4222]\nplatform:\n  replicas: 3\n  ctl:\n    router: 10.0.0.5:80\n",
        )
        .expect("parses");
        assert_eq!(config.replicas, 3);
        assert_eq!(config.ctl.router.port(), 80);
        assert_eq!(config.controller.agent_timeout_secs, 12);
        assert!(
            PlatformConfig::from_yaml("platform:\n  replica: 3\n").is_err(),
            "typos are errors"
        );
        assert_eq!(PlatformConfig::from_yaml("").expect("empty").replicas, 1);
    }
}
