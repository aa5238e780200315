//! One DEA node assembled from one [`Config`]: the instances a previous run left (re-attached),
//! the stager with its wasm runtime and fetch service, the directory server when enabled, and
//! the NATS agent on top. `dea serve`, the tests and the benchmarks all start a node this way,
//! so the wiring exists once.

use crate::buildpack::BuildpackSet;
use crate::config::Config;
use crate::container::Runc;
use crate::files::DirectoryServer;
use crate::instance::{InstanceManager, InstanceSettings};
use crate::nats::{Agent, DirectoryLinks, FileLinks};
use crate::staging::Stager;
use std::sync::Arc;
use std::time::Duration;

/// Why a node did not start; each part keeps its own error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("instance manager: {0}")]
    Instances(#[from] crate::instance::InstanceError),
    #[error("stager: {0}")]
    Stager(#[from] crate::staging::SetupError),
    #[error("directory server: {0}")]
    Directory(#[from] crate::files::FilesError),
    #[error("NATS agent: {0}")]
    Agent(#[from] crate::nats::AgentError),
}

/// A running node. Dropping it leaves the agent running; call [`Node::shutdown`].
pub struct Node {
    pub agent: Arc<Agent>,
    pub instances: Arc<InstanceManager>,
    pub stager: Arc<Stager>,
    /// The directory server and the links the agent signs, when `directory_server.enabled`.
    pub directory: Option<(DirectoryServer, Arc<DirectoryLinks>)>,
}

impl Node {
    /// Re-attaches to surviving instances, builds the stager over `buildpacks`, starts the
    /// directory server (if enabled) and then the agent, which connects in the background.
    pub async fn start(config: Config, buildpacks: BuildpackSet) -> Result<Node, NodeError> {
        let instances = InstanceManager::recover(
            InstanceSettings::from_config(&config),
            Runc::from_config(&config),
        )
        .await?;
        let stager = Arc::new(Stager::from_config(config.clone(), buildpacks)?);
        let directory = if config.directory_server.enabled {
            Some(crate::nats::start_directory_server(&config, instances.clone()).await?)
        } else {
            None
        };
        let links = directory
            .as_ref()
            .map(|(_, links)| links.clone() as Arc<dyn FileLinks>);
        let agent = Agent::start(config, instances.clone(), stager.clone(), links).await?;
        Ok(Node {
            agent,
            instances,
            stager,
            directory,
        })
    }

    /// The agent's bounded shutdown (see [`Agent::shutdown`]), then the directory server's.
    pub async fn shutdown(self) {
        self.agent.shutdown().await;
        if let Some((directory, _)) = self.directory {
            directory.shutdown(Duration::from_secs(2)).await;
        }
    }
}
