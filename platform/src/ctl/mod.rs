//! `dea ctl`, the operator's command line over NATS: it writes what is wanted into the
//! platform's JetStream buckets, reads back what happened, and asks the agents directly
//! (`dea.find.droplet`) what runs. The controller does the rest; `ctl` never talks to it.
//!
//! Files and logs come from the agents' directory servers through their signed URLs, which
//! name routed hosts (`<uuid>.<domain>`): `ctl` reaches them through the router.

mod files;
mod manage;
mod package;
mod push;
mod show;

pub use files::{files, logs};
pub use manage::{delete, restart, scale, set_state};
pub use push::{PushOptions, push};
pub use show::{app, apps, events};

use crate::jetstream::{Platform, StateError};
use dea_protocol::{FindDropletResponse, InstanceFilter};
use futures_util::StreamExt;
use std::net::SocketAddr;
use std::time::Duration;

/// Why a `dea ctl` command failed; the text is what the operator reads.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("app {0} not found")]
    NoApp(String),
    #[error("{0}")]
    Usage(String),
    #[error("packaging {path}: {source}")]
    Package {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("NATS: {0}")]
    Nats(String),
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    #[error("staging failed: {0}")]
    StagingFailed(String),
    #[error("{what} did not happen within {limit:?}")]
    Timeout { what: String, limit: Duration },
    #[error(
        "start unsuccessful: instance {index} of {app} crashed (exit status {exit_status}: {reason}); see `dea ctl events {app}`"
    )]
    Crashed {
        app: String,
        index: u32,
        exit_status: String,
        reason: String,
    },
    #[error("no instance {index} of {app} answers")]
    NoInstance { app: String, index: u32 },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Where `ctl` works: the platform's state, and the router for files and logs.
pub struct Ctl {
    pub platform: Platform,
    /// The router's address; signed file URLs name routed hosts, reached through it.
    pub router: SocketAddr,
    /// How long to wait for agents' answers to `dea.find.droplet`.
    pub find_wait: Duration,
}

impl Ctl {
    pub fn new(platform: Platform, router: SocketAddr) -> Ctl {
        Ctl {
            platform,
            router,
            find_wait: Duration::from_millis(700),
        }
    }

    /// The app's spec, or [`CtlError::NoApp`].
    async fn spec(&self, name: &str) -> Result<crate::desired::AppSpec, CtlError> {
        self.platform
            .apps()
            .get(name)
            .await?
            .map(|(spec, _)| spec)
            .ok_or_else(|| CtlError::NoApp(name.to_string()))
    }

    /// Every agent's answer to `dea.find.droplet` for `filter`, gathered for
    /// [`Ctl::find_wait`] (agents answer once per matching instance).
    async fn find(&self, filter: &InstanceFilter) -> Result<Vec<FindDropletResponse>, CtlError> {
        self.find_until(filter, self.find_wait, |_| false).await
    }

    /// [`Ctl::find`] for at most `wait`, done as soon as the answers so far are `enough`.
    async fn find_until(
        &self,
        filter: &InstanceFilter,
        wait: Duration,
        enough: impl Fn(&[FindDropletResponse]) -> bool,
    ) -> Result<Vec<FindDropletResponse>, CtlError> {
        let client = self.platform.client();
        let inbox = client.new_inbox();
        let mut replies = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| CtlError::Nats(e.to_string()))?;
        let payload = serde_json::to_vec(filter).map_err(|e| CtlError::Usage(e.to_string()))?;
        client
            .publish_with_reply("dea.find.droplet", inbox, payload.into())
            .await
            .map_err(|e| CtlError::Nats(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + wait;
        let mut found = Vec::new();
        while let Ok(Some(message)) = tokio::time::timeout_at(deadline, replies.next()).await {
            match serde_json::from_slice::<FindDropletResponse>(&message.payload) {
                Ok(reply) => found.push(reply),
                Err(e) => tracing::warn!("ignored a malformed find reply: {e}"),
            }
            if enough(&found) {
                break;
            }
        }
        found.sort_by(|a, b| (a.index, &a.instance).cmp(&(b.index, &b.instance)));
        Ok(found)
    }

    /// An HTTP client that sends every request to the router, whatever host the URL names.
    fn http(&self, url: &str) -> Result<reqwest::Client, CtlError> {
        let host = reqwest::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
            .ok_or_else(|| CtlError::Usage(format!("unusable URL {url}")))?;
        Ok(reqwest::Client::builder()
            .resolve(&host, self.router)
            .connect_timeout(Duration::from_secs(5))
            .build()?)
    }
}

/// A filter for an app's instances.
fn filter(guid: &str) -> InstanceFilter {
    InstanceFilter {
        droplet: guid.to_string(),
        version: None,
        instances: None,
        instance_ids: None,
        indices: None,
        states: None,
        include_stats: None,
        path: None,
    }
}

/// Sizes as `cf` prints them: `256M`, `1G`, `12.3M`.
fn megabytes(bytes: u64) -> String {
    let mb = bytes as f64 / (1024.0 * 1024.0);
    if mb >= 1024.0 {
        format!("{:.1}G", mb / 1024.0)
    } else {
        format!("{mb:.1}M")
    }
}
