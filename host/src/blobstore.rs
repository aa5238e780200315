//! The platform's blobstore, seen from an agent: app packages and droplets in NATS JetStream
//! object stores, named `dea-blob://<bucket>/<name>` in messages (see [`dea_protocol::blob`]).
//!
//! An agent downloads a package to stage and a droplet to start from the same bus it takes
//! orders from, and uploads the droplets it stages there, so no file is shared between hosts
//! and no controller is in the data path. Downloads keep the guarantees of
//! [`crate::download`]: a size cap checked as bytes arrive, the SHA-1 computed on the way (the
//! object store itself checks the SHA-256 it recorded), and a stalled transfer fails.

use async_nats::jetstream::{self, object_store::ObjectStore};
use backon::Retryable;
use dea_protocol::blob::{BlobUri, Bucket};
use sha1::{Digest, Sha1};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// No bytes for this long and a transfer is stalled (the DEA's inactivity timeout).
const STALL: Duration = Duration::from_secs(30);

/// Why a blob could not be moved.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("{uri}: the blobstore bucket is not available: {source}")]
    Bucket {
        uri: String,
        #[source]
        source: jetstream::context::ObjectStoreError,
    },
    #[error("{uri}: {source}")]
    Get {
        uri: String,
        #[source]
        source: jetstream::object_store::GetError,
    },
    #[error("{uri}: {source}")]
    Put {
        uri: String,
        #[source]
        source: jetstream::object_store::PutError,
    },
    #[error("{uri}: larger than the limit of {limit} bytes")]
    TooLarge { uri: String, limit: u64 },
    #[error("{uri}: no bytes for {0:?}", STALL)]
    Stalled { uri: String },
    #[error("{uri}: the file's SHA-1 is {actual}; a droplet is stored under its own")]
    NotItsSha1 { uri: String, actual: String },
    #[error("{uri}: a download must name its blob")]
    Unnamed { uri: String },
    #[error("{uri}: {source}")]
    Io {
        uri: String,
        #[source]
        source: std::io::Error,
    },
}

/// What a download brought.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub size: u64,
    /// Hex SHA-1 of the bytes, what DEA messages name droplets by.
    pub sha1: String,
}

/// The object stores over one NATS connection; cheap to clone.
#[derive(Clone)]
pub struct BlobStore {
    jetstream: jetstream::Context,
}

impl BlobStore {
    pub fn new(client: async_nats::Client) -> BlobStore {
        BlobStore {
            jetstream: jetstream::new(client),
        }
    }

    async fn bucket(&self, uri: &BlobUri) -> Result<ObjectStore, BlobError> {
        self.jetstream
            .get_object_store(uri.bucket.name())
            .await
            .map_err(|source| BlobError::Bucket {
                uri: uri.to_string(),
                source,
            })
    }

    /// Streams the blob into `out`, refusing more than `max_bytes`.
    pub async fn download(
        &self,
        uri: &BlobUri,
        out: &mut (impl AsyncWrite + Unpin),
        max_bytes: u64,
    ) -> Result<Fetched, BlobError> {
        let text = uri.to_string();
        let name = uri
            .name
            .as_deref()
            .ok_or_else(|| BlobError::Unnamed { uri: text.clone() })?;
        let io = |source| BlobError::Io {
            uri: text.clone(),
            source,
        };
        let store = self.bucket(uri).await?;
        let mut object = store.get(name).await.map_err(|source| BlobError::Get {
            uri: text.clone(),
            source,
        })?;
        // The recorded size is the first check; the count below is the one that holds.
        if object.info.size as u64 > max_bytes {
            return Err(BlobError::TooLarge {
                uri: text,
                limit: max_bytes,
            });
        }
        let mut hasher = Sha1::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = match tokio::time::timeout(STALL, object.read(&mut buf)).await {
                Ok(read) => read.map_err(io)?,
                Err(_) => return Err(BlobError::Stalled { uri: text }),
            };
            if n == 0 {
                break;
            }
            size += n as u64;
            if size > max_bytes {
                return Err(BlobError::TooLarge {
                    uri: text,
                    limit: max_bytes,
                });
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).await.map_err(io)?;
        }
        out.flush().await.map_err(io)?;
        Ok(Fetched {
            size,
            sha1: hex::encode(hasher.finalize()),
        })
    }

    /// Downloads into the file `dest`; after an error `dest` is gone. A bucket or object
    /// the bus could not answer for is asked again (a clustered stream elects a new leader
    /// within seconds when a node goes away); a blob over the cap is not.
    pub async fn download_to(
        &self,
        uri: &BlobUri,
        dest: &Path,
        max_bytes: u64,
    ) -> Result<Fetched, BlobError> {
        let attempt = || async {
            let io = |source| BlobError::Io {
                uri: uri.to_string(),
                source,
            };
            let mut file = tokio::fs::File::create(dest).await.map_err(io)?;
            let outcome = self.download(uri, &mut file, max_bytes).await;
            drop(file);
            if outcome.is_err() {
                // Part of a blob is nobody's file.
                let _ = tokio::fs::remove_file(dest).await;
            }
            outcome
        };
        // Up to about half a minute: a lost JetStream leader is replaced in ~10 s on a quiet
        // cluster, and reads that need a consumer wait for it.
        let backoff = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(Duration::from_secs(8))
            .with_max_times(6);
        attempt
            .retry(backoff)
            .when(|error| match error {
                BlobError::Get { source, .. } => {
                    source.kind() != jetstream::object_store::GetErrorKind::NotFound
                }
                BlobError::Bucket { .. } | BlobError::Stalled { .. } => true,
                _ => false,
            })
            .notify(|error, delay| {
                tracing::warn!("blob download failed, retrying in {delay:?}: {error}")
            })
            .await
    }

    /// Stores `file` under the URI's name, or under its SHA-1 when the URI names none
    /// (droplets); returns the URI it is stored under. A droplet already there is not sent
    /// again: its name is its content.
    pub async fn upload(&self, uri: &BlobUri, file: &Path) -> Result<BlobUri, BlobError> {
        let text = uri.to_string();
        let io = |source| BlobError::Io {
            uri: text.clone(),
            source,
        };
        let name = match (&uri.name, uri.bucket) {
            (Some(name), Bucket::Packages) => name.clone(),
            (name, _) => {
                let actual = sha1_of(file).await.map_err(io)?;
                if name.as_ref().is_some_and(|name| *name != actual) {
                    return Err(BlobError::NotItsSha1 { uri: text, actual });
                }
                actual
            }
        };
        let stored = BlobUri::new(uri.bucket, name.clone());
        let store = self.bucket(uri).await?;
        if uri.bucket == Bucket::Droplets
            && let Ok(info) = store.info(&name).await
            && !info.deleted
            && info.size as u64 == tokio::fs::metadata(file).await.map_err(io)?.len()
        {
            return Ok(stored);
        }
        let mut reader = tokio::fs::File::open(file).await.map_err(io)?;
        store
            .put(name.as_str(), &mut reader)
            .await
            .map_err(|source| BlobError::Put {
                uri: stored.to_string(),
                source,
            })?;
        Ok(stored)
    }
}

async fn sha1_of(file: &Path) -> std::io::Result<String> {
    let mut reader = tokio::fs::File::open(file).await?;
    let mut hasher = Sha1::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}
