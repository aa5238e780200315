//! The platform's names: its buckets and streams, and what an app, host, route, lease or
//! blob may be called. Checked before a name becomes a key, a subject or a file name.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Object store of app source packages (zips), named `<app>-<uuid>`.
pub const PACKAGES_BUCKET: &str = "dea-packages";
/// Object store of droplets, named by their SHA-1.
pub const DROPLETS_BUCKET: &str = "dea-droplets";
/// KV bucket of desired app state, keyed by app name.
pub const APPS_BUCKET: &str = "dea-apps";
/// KV bucket of route ownership, keyed by host name.
pub const ROUTES_BUCKET: &str = "dea-routes";
/// KV bucket of leases; its `max_age` is the lease TTL.
pub const LEASES_BUCKET: &str = "dea-leases";
/// Stream of app events.
pub const EVENTS_STREAM: &str = "DEA_EVENTS";
/// Events of app `a` are published on `dea.events.a`.
pub const EVENTS_SUBJECT_PREFIX: &str = "dea.events";

/// What kind of name a [`NameError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    App,
    Host,
    Lease,
    LeaseHolder,
    Package,
    Droplet,
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameKind::App => "app name",
            NameKind::Host => "host name",
            NameKind::Lease => "lease name",
            NameKind::LeaseHolder => "lease holder",
            NameKind::Package => "package blob name",
            NameKind::Droplet => "droplet blob name",
        })
    }
}

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("is empty")]
    Empty,
    #[error("is longer than {max} bytes")]
    TooLong { max: usize },
    #[error("contains {0:?}")]
    Forbidden(char),
    #[error("contains `..`")]
    DotDot,
    #[error("starts or ends with {0:?}")]
    Edge(char),
    #[error("is not a lowercase hex SHA-1 (40 characters)")]
    NotSha1,
    #[error("has an empty or over-long DNS label")]
    BadLabel,
}

/// The two object stores. Nothing else can be named in a [`BlobUri`], so a URI from a
/// message can never point an agent at another bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BlobBucket {
    #[serde(rename = "dea-packages")]
    Packages,
    #[serde(rename = "dea-droplets")]
    Droplets,
}

impl BlobBucket {
    pub fn name(self) -> &'static str {
        match self {
            BlobBucket::Packages => PACKAGES_BUCKET,
            BlobBucket::Droplets => DROPLETS_BUCKET,
        }
    }

    pub fn from_name(name: &str) -> Option<BlobBucket> {
        match name {
            PACKAGES_BUCKET => Some(BlobBucket::Packages),
            DROPLETS_BUCKET => Some(BlobBucket::Droplets),
            _ => None,
        }
    }

    /// Droplets are named by their SHA-1; packages by a short safe name. Both rules keep
    /// `/`, `..` and control characters out, so a name is also safe as a file name.
    pub fn check_name(self, name: &str) -> Result<(), NameError> {
        match self {
            BlobBucket::Droplets => {
                if name.len() == 40
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                {
                    Ok(())
                } else {
                    Err(NameError::NotSha1)
                }
            }
            BlobBucket::Packages => check_package_name(name),
        }
    }
}

impl fmt::Display for BlobBucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

pub(crate) fn check_package_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    // The agents' own rule (dea_protocol::blob::valid_name): a name the platform stores
    // must be one an agent will fetch.
    if name.len() > 128 {
        return Err(NameError::TooLong { max: 128 });
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(NameError::Forbidden(c));
    }
    if name.contains("..") {
        return Err(NameError::DotDot);
    }
    if name.starts_with('.') {
        return Err(NameError::Edge('.'));
    }
    Ok(())
}

/// A DNS label: `[a-z0-9-]`, at most 63 bytes, no leading or trailing `-` (so a name is also
/// a valid subject token and host label).
pub(crate) fn check_label(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > 63 {
        return Err(NameError::TooLong { max: 63 });
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(NameError::Forbidden(c));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(NameError::Edge('-'));
    }
    Ok(())
}
