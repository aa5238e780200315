//! Cloud Foundry's DEA protocol over NATS (reference dea_ng.md §2–§4): `dea serve` makes this
//! host a DEA that a controller, router and health manager drive.
//!
//! [`messages`] has one serde struct per message in dea_ng's wire format; [`Agent`] holds
//! the connection, subscriptions, periodic messages and lifecycle; instance commands are in
//! `handlers`, staging requests in `staging_task`, and `directory` ties the agent to the
//! directory server (which files a URL may read, and the signed links the agent hands out).

mod agent;
mod directory;
mod handlers;
pub mod messages;
mod staging_task;

pub use agent::{Agent, AgentError, FileLinks};
pub use directory::{AgentFiles, DirectoryLinks, start_directory_server};
pub use staging_task::{STAGING_LOG_PATH, task_dir};
