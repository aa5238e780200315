//! What a staging downloaded: one record per completed fetch, written down by the fetch
//! service itself (the one place every download passes), so that neither the wasm sandbox
//! nor the classic proxy can forget one. The staging turns the records into the droplet's
//! bill of materials; whether each was a cache hit is a fact of that run only and goes to
//! the run's reports, never into the droplet.

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Where the SHA-256 a download was verified against came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PinSource {
    /// The buildpack asked with a digest (a wasm buildpack's manifest `[[dependencies]]`).
    #[serde(rename = "buildpack")]
    Buildpack,
    /// The operator's `fetch.pins`.
    #[serde(rename = "fetch.pins")]
    Operator,
}

impl PinSource {
    pub fn as_str(self) -> &'static str {
        match self {
            PinSource::Buildpack => "buildpack",
            PinSource::Operator => "fetch.pins",
        }
    }
}

/// One completed download of a staging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRecord {
    /// The URL as asked for, normalised (what pins and mirror rules match).
    pub url_asked: String,
    /// The URL the bytes came from, after mirror rewriting.
    pub url_used: String,
    pub sha256: String,
    pub size: u64,
    /// The buildpack that asked.
    pub buildpack: String,
    /// The phase it asked in (`compile`, or a classic `supply`/`finalize`).
    pub phase: String,
    /// Served from the download cache.
    pub cached: bool,
    /// What the digest was verified against, if anything.
    pub pinned: Option<PinSource>,
}

/// A staging's list of downloads; clones share it.
#[derive(Debug, Clone, Default)]
pub struct FetchRecorder(Arc<Mutex<Vec<FetchRecord>>>);

impl FetchRecorder {
    pub fn push(&self, record: FetchRecord) {
        self.0.lock().push(record);
    }

    /// Everything recorded so far, in a stable order (downloads of one phase may run
    /// concurrently, so arrival order means nothing).
    pub fn records(&self) -> Vec<FetchRecord> {
        let mut records = self.0.lock().clone();
        records.sort_by(|a, b| {
            (&a.buildpack, &a.phase, &a.url_asked, &a.url_used, &a.sha256)
                .cmp(&(&b.buildpack, &b.phase, &b.url_asked, &b.url_used, &b.sha256))
                .then(a.cached.cmp(&b.cached))
        });
        records
    }
}

/// Which recorder a grant's fetches go to, and in which phase.
#[derive(Debug, Clone)]
pub struct Recording {
    pub to: FetchRecorder,
    pub phase: &'static str,
}
