//! Cloud Foundry's DEA protocol over NATS (reference dea_ng.md §2–§4): `dea serve` makes this
//! host a DEA that a controller, router and health manager drive.
//!
//! [`messages`] has one serde struct per message in dea_ng's wire format; [`Agent`] holds
//! the connection, subscriptions and dispatch; `announce` what it publishes on its own,
//! `lifecycle` goodbye, evacuation and shutdown; `cmd` one file per instance command;
//! `staging_task` the staging request's protocol (admission, the two replies); and
//! `directory` ties the agent to the directory server (which files a URL may read, and the
//! signed links the agent hands out).

mod agent;
mod announce;
mod cmd;
mod directory;
mod lifecycle;
pub mod messages;
mod staging_task;

pub use crate::staging::remote::{STAGING_LOG_PATH, task_dir};
pub use agent::{Agent, AgentError, FileLinks};
pub use directory::{AgentFiles, DirectoryLinks, start_directory_server};
