//! Why a platform state operation failed, keeping what failed underneath.

use crate::names::{BlobBucket, NameError, NameKind, check_label};
use std::time::Duration;

/// Why a `dea-blob://` URI was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobUriError {
    #[error("does not start with dea-blob://")]
    Scheme,
    #[error("has no /<name> after the bucket")]
    NoName,
    #[error("names bucket {0:?}, not dea-packages or dea-droplets")]
    UnknownBucket(String),
    #[error("has an invalid blob name")]
    Name(#[source] NameError),
}

/// Every failure of the state layer. JetStream failures keep the client's error as `source`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    #[error("invalid platform options: {reason}")]
    InvalidOptions { reason: &'static str },
    #[error("setting up {what} on JetStream")]
    Setup {
        what: &'static str,
        #[source]
        source: async_nats::Error,
    },
    #[error("JetStream {op} on {bucket}/{key}")]
    Nats {
        op: &'static str,
        bucket: &'static str,
        key: String,
        #[source]
        source: async_nats::Error,
    },
    #[error("invalid {kind} {name:?}")]
    InvalidName {
        kind: NameKind,
        name: String,
        #[source]
        reason: NameError,
    },
    #[error("invalid blob URI {uri:?}")]
    InvalidBlobUri {
        uri: String,
        #[source]
        reason: BlobUriError,
    },
    #[error("app spec key {key:?} does not match its name {name:?}")]
    NameMismatch { key: String, name: String },
    #[error("app {name} already exists")]
    AlreadyExists { name: String },
    #[error("app {name} does not exist")]
    NotFound { name: String },
    #[error("app {name} changed since revision {revision}")]
    Conflict { name: String, revision: u64 },
    #[error("{name} kept changing under us; gave up after {attempts} attempts")]
    Contended { name: String, attempts: u32 },
    #[error("route {host} belongs to app {owner}")]
    RouteTaken { host: String, owner: String },
    #[error("route {host} belongs to app {owner}, not {app}")]
    NotRouteOwner {
        host: String,
        owner: String,
        app: String,
    },
    #[error("lease {name} is held by {holder}")]
    LeaseHeld { name: String, holder: String },
    #[error("lease {name} was lost by {holder} (expired or taken over)")]
    LeaseLost { name: String, holder: String },
    #[error("lease TTL {requested:?} must be positive and at most the bucket's {bucket:?}")]
    LeaseTtl {
        requested: Duration,
        bucket: Duration,
    },
    #[error("blob {bucket}/{name} does not exist")]
    BlobNotFound { bucket: BlobBucket, name: String },
    #[error("blob {bucket}/{name} is larger than the {max_size}-byte limit")]
    BlobTooLarge {
        bucket: BlobBucket,
        name: String,
        max_size: u64,
    },
    #[error("blob {bucket}/{name}: expected {expected}, content has {actual}")]
    DigestMismatch {
        bucket: BlobBucket,
        name: String,
        expected: String,
        actual: String,
    },
    #[error("streaming blob {bucket}/{name}")]
    BlobTransfer {
        bucket: BlobBucket,
        name: String,
        #[source]
        source: async_nats::Error,
    },
    #[error("file {path}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("decoding {what} {key:?}")]
    Decode {
        what: &'static str,
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("encoding {what} {key:?}")]
    Encode {
        what: &'static str,
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

impl StateError {
    pub(crate) fn nats<E>(op: &'static str, bucket: &'static str, key: &str, source: E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        StateError::Nats {
            op,
            bucket,
            key: key.to_string(),
            source: Box::new(source),
        }
    }

    pub(crate) fn invalid_name(kind: NameKind, name: &str, reason: NameError) -> Self {
        StateError::InvalidName {
            kind,
            name: name.to_string(),
            reason,
        }
    }
}

impl BlobBucket {
    pub fn validate_name(self, name: &str) -> Result<(), StateError> {
        self.check_name(name).map_err(|reason| {
            let kind = match self {
                BlobBucket::Packages => NameKind::Package,
                BlobBucket::Droplets => NameKind::Droplet,
            };
            StateError::invalid_name(kind, name, reason)
        })
    }
}

/// App names: `[a-z0-9-]`, at most 63 bytes, no leading or trailing `-` (a DNS label, so an
/// app name is also a valid subject token and host label).
pub(crate) fn validate_label(kind: NameKind, name: &str) -> Result<(), StateError> {
    check_label(name).map_err(|reason| StateError::invalid_name(kind, name, reason))
}

/// Host names: lowercase DNS names (labels as for apps, dot-separated, at most 253 bytes).
pub(crate) fn validate_host(host: &str) -> Result<(), StateError> {
    let check = || {
        if host.is_empty() {
            return Err(NameError::Empty);
        }
        if host.len() > 253 {
            return Err(NameError::TooLong { max: 253 });
        }
        for label in host.split('.') {
            check_label(label).map_err(|err| match err {
                NameError::Empty | NameError::TooLong { .. } => NameError::BadLabel,
                other => other,
            })?;
        }
        Ok(())
    };
    check().map_err(|reason| StateError::invalid_name(NameKind::Host, host, reason))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::check_label;

    #[test]
    fn labels() {
        assert!(check_label("my-app-2").is_ok());
        assert_eq!(check_label(""), Err(NameError::Empty));
        assert_eq!(check_label("A"), Err(NameError::Forbidden('A')));
        assert_eq!(check_label("a.b"), Err(NameError::Forbidden('.')));
        assert_eq!(check_label("-a"), Err(NameError::Edge('-')));
        assert_eq!(
            check_label(&"a".repeat(64)),
            Err(NameError::TooLong { max: 63 })
        );
    }

    #[test]
    fn hosts() {
        assert!(validate_host("app.example.com").is_ok());
        assert!(validate_host("localhost").is_ok());
        for bad in [
            "", "a..b", ".a", "a.", "App.com", "a_b.com", "*.a.com", "a/b", "a b",
        ] {
            assert!(validate_host(bad).is_err(), "{bad:?} accepted");
        }
    }
}
