//! The bill of materials of a droplet: what went into it, verified by digest.
//!
//! A staging knows exactly what it used: the app source as received, the stack, each
//! buildpack that compiled (its component file or its tree), and every download, since all
//! of them passed through the fetch service ([`crate::fetch::FetchRecord`]). These facts
//! ([`Dependencies`]) go into the droplet twice: as CycloneDX 1.5 JSON (`sbom.cdx.json`,
//! [`cyclonedx`]) for supply-chain tools, and under `dependencies:` in `staging_info.yml`
//! for Cloud Foundry's.
//!
//! Droplets are reproducible, so nothing here may depend on the run: no clock (unless
//! `SOURCE_DATE_EPOCH` says which time), no random serial number, a stable order, and no
//! cache hit or miss (the same droplet comes out of a staging that downloaded everything and
//! of an offline replay served wholly from the cache). Those run facts travel with
//! [`crate::fetch::FetchRecord`] to the reports of the run instead.

pub mod cyclonedx;
pub mod digest;
pub mod read;

use crate::fetch::{FetchRecord, PinSource};
use serde::{Deserialize, Serialize};

/// A bill of materials that does not hold the facts this agent writes into one.
#[derive(Debug, thiserror::Error)]
pub enum DependencyError {
    #[error("the bill of materials lacks {0}")]
    Missing(String),
}

/// What a digest in the bill of materials was computed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DigestOf {
    /// The bytes of a file as received: an app's `.zip`/`.tgz`, a wasm buildpack's component.
    File,
    /// A directory, by [`digest::tree_sha256`] (`dea-tree-v1`).
    Tree,
}

impl DigestOf {
    pub fn as_str(self) -> &'static str {
        match self {
            DigestOf::File => "file",
            DigestOf::Tree => "tree",
        }
    }

    fn parse(text: &str) -> Option<DigestOf> {
        match text {
            "file" => Some(DigestOf::File),
            "tree" => Some(DigestOf::Tree),
            _ => None,
        }
    }
}

/// The facts of one staged droplet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependencies {
    pub app: AppSource,
    pub stack: String,
    /// The buildpacks that compiled, in order (the last released).
    pub buildpacks: Vec<BuildpackUsed>,
    /// Every distinct download, in a stable order.
    pub downloads: Vec<Download>,
    /// `fetch.require_pins` was on: no unpinned download could have happened.
    pub pins_required: bool,
    /// Every download was verified against a pinned SHA-256.
    pub fully_pinned: bool,
}

/// The app source as the staging received it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppSource {
    pub sha256: String,
    pub digest_of: DigestOf,
}

/// A buildpack that compiled the app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildpackUsed {
    pub id: String,
    pub version: String,
    /// `wasm` or `classic`.
    pub kind: String,
    /// Of the component file (wasm) or the buildpack's directory tree (classic).
    pub sha256: String,
    pub digest_of: DigestOf,
}

/// One download, as the droplet records it (whether the cache answered is not part of it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Download {
    pub buildpack: String,
    pub phase: String,
    pub url_asked: String,
    pub url_used: String,
    pub sha256: String,
    pub size: u64,
    pub pinned: bool,
    /// Where the pin came from: `buildpack` or `fetch.pins`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned_by: Option<String>,
}

impl Download {
    pub fn from_record(record: &FetchRecord) -> Download {
        Download {
            buildpack: record.buildpack.clone(),
            phase: record.phase.clone(),
            url_asked: record.url_asked.clone(),
            url_used: record.url_used.clone(),
            sha256: record.sha256.clone(),
            size: record.size,
            pinned: record.pinned.is_some(),
            pinned_by: record.pinned.map(PinSource::as_str).map(str::to_string),
        }
    }
}

impl Dependencies {
    /// The facts of a staging: `records` in any order, repeats (a second fetch of one URL,
    /// served from the cache) counted once.
    pub fn new(
        app: AppSource,
        stack: &str,
        buildpacks: Vec<BuildpackUsed>,
        records: &[FetchRecord],
        pins_required: bool,
    ) -> Dependencies {
        let mut downloads: Vec<Download> = records.iter().map(Download::from_record).collect();
        downloads.sort();
        downloads.dedup();
        let fully_pinned = downloads.iter().all(|d| d.pinned);
        Dependencies {
            app,
            stack: stack.to_string(),
            buildpacks,
            downloads,
            pins_required,
            fully_pinned,
        }
    }
}

impl Dependencies {
    /// The completion reply's extension: these facts, with this run's `fetches` (each one,
    /// with whether the cache answered) in place of the droplet's distinct downloads.
    pub fn to_wire(&self, fetches: &[FetchRecord]) -> dea_protocol::BillOfMaterials {
        use dea_protocol as wire;
        wire::BillOfMaterials {
            app_sha256: self.app.sha256.clone(),
            app_digest_of: self.app.digest_of.as_str().to_string(),
            stack: self.stack.clone(),
            buildpacks: self
                .buildpacks
                .iter()
                .map(|bp| wire::BuildpackUsed {
                    id: bp.id.clone(),
                    version: bp.version.clone(),
                    kind: bp.kind.clone(),
                    sha256: bp.sha256.clone(),
                    digest_of: bp.digest_of.as_str().to_string(),
                })
                .collect(),
            downloads: fetches
                .iter()
                .map(|f| wire::DownloadRecord {
                    url_asked: f.url_asked.clone(),
                    url_used: f.url_used.clone(),
                    sha256: f.sha256.clone(),
                    size: f.size,
                    buildpack: f.buildpack.clone(),
                    phase: f.phase.clone(),
                    cache_hit: f.cached,
                    pinned: f.pinned.is_some(),
                    pinned_by: f.pinned.map(|p| p.as_str().to_string()),
                })
                .collect(),
            pins_required: self.pins_required,
            fully_pinned: self.fully_pinned,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(url: &str, cached: bool, pinned: Option<PinSource>) -> FetchRecord {
        FetchRecord {
            url_asked: url.into(),
            url_used: url.replace("up.example", "mirror.example"),
            sha256: "ab".repeat(32),
            size: 7,
            buildpack: "node".into(),
            phase: "compile".into(),
            cached,
            pinned,
        }
    }

    #[test]
    fn repeats_count_once_and_order_and_cache_do_not_matter() {
        let app = AppSource {
            sha256: "00".repeat(32),
            digest_of: DigestOf::File,
        };
        let a = record("https://up.example/a", false, Some(PinSource::Buildpack));
        let b = record("https://up.example/b", false, None);
        let first = Dependencies::new(
            app.clone(),
            "s",
            vec![],
            &[b.clone(), a.clone(), a.clone()],
            false,
        );
        let hits = [a, b].map(|r| FetchRecord { cached: true, ..r });
        let replay = Dependencies::new(app, "s", vec![], &hits, false);
        assert_eq!(first, replay);
        assert_eq!(first.downloads.len(), 2);
        assert_eq!(first.downloads[0].url_asked, "https://up.example/a");
        assert_eq!(first.downloads[0].pinned_by.as_deref(), Some("buildpack"));
        assert!(!first.fully_pinned, "b is not pinned");
    }
}
