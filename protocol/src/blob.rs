//! Blobs in the platform's JetStream object stores, as DEA messages name them.
//!
//! The platform keeps app packages and droplets in NATS object stores rather than behind a
//! controller's HTTP endpoints, so no file is shared between hosts and no controller is in
//! the data path. Messages name them `dea-blob://<bucket>/<name>` wherever the DEA had an
//! http(s) URL (`download_uri`, `upload_uri`, `executableUri`). An upload URI may leave the
//! name out (`dea-blob://dea-droplets/`): the blob is then stored under its content's SHA-1,
//! which is how droplets are named.

use std::fmt;

/// The URI scheme, with its `://`.
pub const SCHEME: &str = "dea-blob://";

/// The platform's object stores; no other bucket may be named in a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bucket {
    /// App sources as pushed (`dea ctl push`).
    Packages,
    /// Staged droplets, each named by its SHA-1.
    Droplets,
}

impl Bucket {
    pub fn name(self) -> &'static str {
        match self {
            Bucket::Packages => "dea-packages",
            Bucket::Droplets => "dea-droplets",
        }
    }

    fn parse(name: &str) -> Option<Bucket> {
        [Bucket::Packages, Bucket::Droplets]
            .into_iter()
            .find(|bucket| bucket.name() == name)
    }
}

/// A blob named in a message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlobUri {
    pub bucket: Bucket,
    /// `None`: "name it by its content's SHA-1" (uploads only).
    pub name: Option<String>,
}

/// Why a `dea-blob://` URI was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobUriError {
    #[error("{0:?} is not a dea-blob:// URI")]
    Scheme(String),
    #[error("{0:?} names no platform bucket (dea-packages or dea-droplets)")]
    Bucket(String),
    #[error(
        "{0:?} has an invalid blob name (1-128 of [A-Za-z0-9._-], not starting with a dot; a droplet is named by its 40-hex SHA-1)"
    )]
    Name(String),
}

/// A blob name: what object stores accept and a shell or a path cannot misread.
pub fn valid_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn is_sha1(name: &str) -> bool {
    name.len() == 40 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

impl BlobUri {
    pub fn new(bucket: Bucket, name: impl Into<String>) -> BlobUri {
        BlobUri {
            bucket,
            name: Some(name.into()),
        }
    }

    /// Whether `uri` is meant as a blob (to choose it over http(s) before parsing).
    pub fn is_blob(uri: &str) -> bool {
        uri.starts_with(SCHEME)
    }

    pub fn parse(uri: &str) -> Result<BlobUri, BlobUriError> {
        let rest = uri
            .strip_prefix(SCHEME)
            .ok_or_else(|| BlobUriError::Scheme(uri.to_string()))?;
        let (bucket, name) = rest
            .split_once('/')
            .ok_or_else(|| BlobUriError::Bucket(uri.to_string()))?;
        let bucket = Bucket::parse(bucket).ok_or_else(|| BlobUriError::Bucket(uri.to_string()))?;
        let name = match name {
            "" => None,
            name if !valid_name(name) => return Err(BlobUriError::Name(uri.to_string())),
            name if bucket == Bucket::Droplets && !is_sha1(name) => {
                return Err(BlobUriError::Name(uri.to_string()));
            }
            name => Some(name.to_string()),
        };
        Ok(BlobUri { bucket, name })
    }
}

impl fmt::Display for BlobUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/{}",
            self.bucket.name(),
            self.name.as_deref().unwrap_or("")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_uris_name_only_the_platform_buckets_and_safe_names() {
        let sha1 = "0123456789abcdef0123456789abcdef01234567";
        let uri = BlobUri::parse(&format!("dea-blob://dea-droplets/{sha1}")).expect("parses");
        assert_eq!(uri, BlobUri::new(Bucket::Droplets, sha1));
        assert_eq!(uri.to_string(), format!("dea-blob://dea-droplets/{sha1}"));
        let by_content = BlobUri::parse("dea-blob://dea-droplets/").expect("parses");
        assert_eq!(by_content.name, None);
        assert_eq!(
            BlobUri::parse("dea-blob://dea-packages/shop-3f2a.zip")
                .expect("parses")
                .name
                .as_deref(),
            Some("shop-3f2a.zip")
        );
        for bad in [
            "http://x/y",
            "dea-blob://",
            "dea-blob://dea-packages",
            "dea-blob://KV_secrets/x",
            "dea-blob://dea-packages/../x",
            "dea-blob://dea-packages/a/b",
            "dea-blob://dea-packages/.hidden",
            "dea-blob://dea-packages/a%2fb",
            "dea-blob://dea-packages/a b",
            "dea-blob://dea-droplets/not-a-sha1",
        ] {
            assert!(BlobUri::parse(bad).is_err(), "{bad} accepted");
        }
        assert!(!valid_name(&"x".repeat(129)));
    }
}
