//! The blobstore: app packages and droplets in JetStream object stores, streamed in and out
//! in chunks (a blob is never held whole in memory), verified by digest on the way out.
//!
//! Agents are pointed at blobs with `dea-blob://<bucket>/<name>` URIs ([`BlobUri`]) in
//! `download_uri`, `upload_uri` and `executableUri`, instead of an HTTP blobstore.

use std::fmt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll, ready};

use async_nats::jetstream::object_store::{self, InfoErrorKind, ObjectInfo, ObjectStore};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE;
use serde::{Deserialize, Serialize};
use sha1::Digest as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

use crate::error::{BlobUriError, StateError, validate_label};
pub use crate::names::BlobBucket;
use crate::names::NameKind;

/// Where a blob is and what it holds. Recorded in the app spec, so a controller that did not
/// upload it can still verify it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    pub bucket: BlobBucket,
    pub name: String,
    /// Lowercase hex.
    pub sha1: String,
    /// Lowercase hex.
    pub sha256: String,
    pub size: u64,
}

impl BlobRef {
    pub fn uri(&self) -> BlobUri {
        BlobUri {
            bucket: self.bucket,
            name: self.name.clone(),
        }
    }

    pub fn sha1_digest(&self) -> Digest {
        Digest::Sha1(self.sha1.clone())
    }

    pub fn sha256_digest(&self) -> Digest {
        Digest::Sha256(self.sha256.clone())
    }
}

/// An expected content digest, lowercase hex.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Digest {
    Sha1(String),
    Sha256(String),
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Digest::Sha1(hex) => write!(f, "sha1:{hex}"),
            Digest::Sha256(hex) => write!(f, "sha256:{hex}"),
        }
    }
}

/// `dea-blob://<bucket>/<name>`: how DEA messages name a blob in the platform's object stores.
/// Only the two known buckets and valid names parse. The agents read the same URIs with
/// `dea_protocol::BlobUri`; the platform's rules are as strict or stricter (lowercase SHA-1s,
/// no `..`), so every URI it writes is one they accept — a test holds the two together.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BlobUri {
    bucket: BlobBucket,
    name: String,
}

impl BlobUri {
    pub const SCHEME: &'static str = "dea-blob";

    pub fn new(bucket: BlobBucket, name: &str) -> Result<BlobUri, StateError> {
        bucket.validate_name(name)?;
        Ok(BlobUri {
            bucket,
            name: name.to_string(),
        })
    }

    pub fn bucket(&self) -> BlobBucket {
        self.bucket
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn parse(uri: &str) -> Result<BlobUri, BlobUriError> {
        let rest = uri
            .strip_prefix(Self::SCHEME)
            .and_then(|rest| rest.strip_prefix("://"))
            .ok_or(BlobUriError::Scheme)?;
        let (bucket, name) = rest.split_once('/').ok_or(BlobUriError::NoName)?;
        let bucket = BlobBucket::from_name(bucket)
            .ok_or_else(|| BlobUriError::UnknownBucket(bucket.to_string()))?;
        // A second `/`, a query or a fragment all land in `name` and fail its character rules.
        bucket.check_name(name).map_err(BlobUriError::Name)?;
        Ok(BlobUri {
            bucket,
            name: name.to_string(),
        })
    }
}

impl FromStr for BlobUri {
    type Err = StateError;

    fn from_str(uri: &str) -> Result<Self, Self::Err> {
        BlobUri::parse(uri).map_err(|reason| StateError::InvalidBlobUri {
            uri: uri.to_string(),
            reason,
        })
    }
}

impl TryFrom<String> for BlobUri {
    type Error = StateError;

    fn try_from(uri: String) -> Result<Self, Self::Error> {
        uri.parse()
    }
}

impl From<BlobUri> for String {
    fn from(uri: BlobUri) -> String {
        uri.to_string()
    }
}

impl fmt::Display for BlobUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}/{}", Self::SCHEME, self.bucket, self.name)
    }
}

/// SHA-1 and SHA-256 of a stream, computed as it is read.
#[derive(Default)]
struct Hashes {
    sha1: sha1::Sha1,
    sha256: sha2::Sha256,
    size: u64,
}

impl Hashes {
    fn update(&mut self, bytes: &[u8]) {
        self.sha1.update(bytes);
        self.sha256.update(bytes);
        self.size += bytes.len() as u64;
    }

    fn finish(self) -> (String, String, u64) {
        (
            hex::encode(self.sha1.finalize()),
            hex::encode(self.sha256.finalize()),
            self.size,
        )
    }
}

/// Hashes what the object store reads from the inner reader, so an upload is one pass.
struct HashingReader<R> {
    inner: R,
    hashes: Hashes,
}

impl<R: AsyncRead + Unpin> AsyncRead for HashingReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        this.hashes.update(&buf.filled()[before..]);
        Poll::Ready(Ok(()))
    }
}

/// A temporary file next to the destination, removed unless it was renamed into place, so a
/// failed or refused download leaves nothing behind.
struct PartFile {
    path: PathBuf,
    keep: bool,
}

impl Drop for PartFile {
    fn drop(&mut self) {
        if !self.keep
            && let Err(err) = std::fs::remove_file(&self.path)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), error = %err, "removing a partial download");
        }
    }
}

const READ_BUFFER: usize = 64 * 1024;

/// The platform's blobstore. Cheap to clone.
#[derive(Clone)]
pub struct Blobs {
    packages: ObjectStore,
    droplets: ObjectStore,
}

impl fmt::Debug for Blobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Blobs").finish_non_exhaustive()
    }
}

impl Blobs {
    pub(crate) fn new(packages: ObjectStore, droplets: ObjectStore) -> Blobs {
        Blobs { packages, droplets }
    }

    fn store(&self, bucket: BlobBucket) -> &ObjectStore {
        match bucket {
            BlobBucket::Packages => &self.packages,
            BlobBucket::Droplets => &self.droplets,
        }
    }

    /// Uploads an app's source package under a fresh name `<app>-<uuid>`: packages are never
    /// overwritten, so an app spec pointing at one stays valid while a new one uploads.
    pub async fn put_package<R>(&self, app: &str, reader: R) -> Result<BlobRef, StateError>
    where
        R: AsyncRead + Unpin,
    {
        validate_label(NameKind::App, app)?;
        let name = format!("{app}-{}", uuid::Uuid::new_v4().simple());
        self.upload(BlobBucket::Packages, &name, reader).await
    }

    pub async fn put_package_file(&self, app: &str, path: &Path) -> Result<BlobRef, StateError> {
        let file = open(path).await?;
        self.put_package(app, file).await
    }

    /// Uploads a droplet named by its SHA-1, which the file must match. Idempotent: a droplet
    /// already stored (with the same content) is not uploaded again.
    pub async fn put_droplet(&self, sha1: &str, path: &Path) -> Result<BlobRef, StateError> {
        let bucket = BlobBucket::Droplets;
        bucket.validate_name(sha1)?;
        // Hash first, so a wrong file is refused before anything is sent.
        let mut hashes = Hashes::default();
        let mut file = open(path).await?;
        let mut buf = vec![0; READ_BUFFER];
        loop {
            let n = file.read(&mut buf).await.map_err(|source| StateError::Io {
                path: path.to_path_buf(),
                source,
            })?;
            if n == 0 {
                break;
            }
            hashes.update(&buf[..n]);
        }
        let (file_sha1, file_sha256, size) = hashes.finish();
        if file_sha1 != sha1 {
            return Err(mismatch(
                bucket,
                sha1,
                &Digest::Sha1(sha1.into()),
                file_sha1,
            ));
        }
        if let Some(info) = self.info(bucket, sha1).await? {
            let stored = stored_sha256(&info);
            if stored.as_deref() == Some(file_sha256.as_str()) && info.size as u64 == size {
                tracing::debug!(sha1, "droplet already stored");
                return Ok(BlobRef {
                    bucket,
                    name: sha1.to_string(),
                    sha1: file_sha1,
                    sha256: file_sha256,
                    size,
                });
            }
            // Same SHA-1, other content: a damaged store or a collision. Never overwrite.
            return Err(mismatch(
                bucket,
                sha1,
                &Digest::Sha256(file_sha256),
                stored.unwrap_or_default(),
            ));
        }
        let blob = self.upload(bucket, sha1, open(path).await?).await?;
        if blob.sha1 != sha1 {
            // The file changed between the two reads; what we stored is not this droplet.
            self.delete(bucket, sha1).await?;
            return Err(mismatch(
                bucket,
                sha1,
                &Digest::Sha1(sha1.into()),
                blob.sha1,
            ));
        }
        Ok(blob)
    }

    async fn upload<R>(
        &self,
        bucket: BlobBucket,
        name: &str,
        reader: R,
    ) -> Result<BlobRef, StateError>
    where
        R: AsyncRead + Unpin,
    {
        let mut reader = HashingReader {
            inner: reader,
            hashes: Hashes::default(),
        };
        self.store(bucket)
            .put(name, &mut reader)
            .await
            .map_err(|err| transfer(bucket, name, err))?;
        let (sha1, sha256, size) = reader.hashes.finish();
        tracing::info!(%bucket, name, size, "stored blob");
        Ok(BlobRef {
            bucket,
            name: name.to_string(),
            sha1,
            sha256,
            size,
        })
    }

    /// Downloads a blob to `dest`, refusing more than `max_size` bytes and content that does
    /// not match `expected`. Streams into a temporary file in `dest`'s directory and renames
    /// it into place, so `dest` only ever appears complete and verified. Returns the size.
    pub async fn get_to_file(
        &self,
        bucket: BlobBucket,
        name: &str,
        dest: &Path,
        max_size: u64,
        expected: Option<&Digest>,
    ) -> Result<u64, StateError> {
        bucket.validate_name(name)?;
        let store = self.store(bucket);
        let mut object = store.get(name).await.map_err(|err| match err.kind() {
            object_store::GetErrorKind::NotFound => StateError::BlobNotFound {
                bucket,
                name: name.to_string(),
            },
            _ => transfer(bucket, name, err),
        })?;
        let too_large = || StateError::BlobTooLarge {
            bucket,
            name: name.to_string(),
            max_size,
        };
        // The stored size is checked before a byte is written, the streamed one as it comes.
        if object.info().size as u64 > max_size {
            return Err(too_large());
        }

        let dir = match dest.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let file_name = dest.file_name().map(|n| n.to_string_lossy().into_owned());
        let part_path = dir.join(format!(
            ".{}.{}.part",
            file_name.as_deref().unwrap_or("blob"),
            uuid::Uuid::new_v4().simple()
        ));
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StateError::Io { path, source }
        };
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&part_path)
            .await
            .map_err(io_err(&part_path))?;
        let mut part = PartFile {
            path: part_path,
            keep: false,
        };

        let mut hashes = Hashes::default();
        let mut buf = vec![0; READ_BUFFER];
        loop {
            // The object store's reader checks its own SHA-256 at the end, as an io error.
            let n = object
                .read(&mut buf)
                .await
                .map_err(|err| transfer(bucket, name, err))?;
            if n == 0 {
                break;
            }
            if hashes.size + n as u64 > max_size {
                return Err(too_large());
            }
            hashes.update(&buf[..n]);
            file.write_all(&buf[..n])
                .await
                .map_err(io_err(&part.path))?;
        }
        file.sync_all().await.map_err(io_err(&part.path))?;
        drop(file);

        let (sha1, sha256, size) = hashes.finish();
        if let Some(expected) = expected {
            let actual = match expected {
                Digest::Sha1(want) if !want.eq_ignore_ascii_case(&sha1) => {
                    Some(format!("sha1:{sha1}"))
                }
                Digest::Sha256(want) if !want.eq_ignore_ascii_case(&sha256) => {
                    Some(format!("sha256:{sha256}"))
                }
                _ => None,
            };
            if let Some(actual) = actual {
                return Err(StateError::DigestMismatch {
                    bucket,
                    name: name.to_string(),
                    expected: expected.to_string(),
                    actual,
                });
            }
        }
        tokio::fs::rename(&part.path, dest)
            .await
            .map_err(io_err(dest))?;
        part.keep = true;
        tracing::debug!(%bucket, name, size, dest = %dest.display(), "downloaded blob");
        Ok(size)
    }

    /// [`Blobs::get_to_file`] for a `dea-blob://` URI.
    pub async fn get_uri_to_file(
        &self,
        uri: &BlobUri,
        dest: &Path,
        max_size: u64,
        expected: Option<&Digest>,
    ) -> Result<u64, StateError> {
        self.get_to_file(uri.bucket, &uri.name, dest, max_size, expected)
            .await
    }

    /// The droplet stored under `sha1` (by an agent that staged it), as the app spec records
    /// it: its name is its SHA-1, and the object store keeps its SHA-256 and size.
    pub async fn droplet(&self, sha1: &str) -> Result<Option<BlobRef>, StateError> {
        let bucket = BlobBucket::Droplets;
        bucket.validate_name(sha1)?;
        Ok(self.info(bucket, sha1).await?.map(|info| BlobRef {
            bucket,
            name: sha1.to_string(),
            sha1: sha1.to_string(),
            sha256: stored_sha256(&info).unwrap_or_default(),
            size: info.size as u64,
        }))
    }

    pub async fn exists(&self, bucket: BlobBucket, name: &str) -> Result<bool, StateError> {
        bucket.validate_name(name)?;
        Ok(self.info(bucket, name).await?.is_some())
    }

    /// Deletes a blob; `false` if there was none.
    pub async fn delete(&self, bucket: BlobBucket, name: &str) -> Result<bool, StateError> {
        bucket.validate_name(name)?;
        if self.info(bucket, name).await?.is_none() {
            return Ok(false);
        }
        match self.store(bucket).delete(name).await {
            Ok(()) => {
                tracing::info!(%bucket, name, "deleted blob");
                Ok(true)
            }
            // Deleted by someone else between the two calls.
            Err(err) if err.kind() == object_store::DeleteErrorKind::NotFound => Ok(false),
            Err(err) => Err(StateError::nats("delete", bucket.name(), name, err)),
        }
    }

    async fn info(&self, bucket: BlobBucket, name: &str) -> Result<Option<ObjectInfo>, StateError> {
        match self.store(bucket).info(name).await {
            Ok(info) if info.deleted => Ok(None),
            Ok(info) => Ok(Some(info)),
            Err(err) if err.kind() == InfoErrorKind::NotFound => Ok(None),
            Err(err) => Err(StateError::nats("info", bucket.name(), name, err)),
        }
    }
}

/// The object store's own digest, `SHA-256=<base64url>`, as lowercase hex.
fn stored_sha256(info: &ObjectInfo) -> Option<String> {
    let encoded = info.digest.as_deref()?.strip_prefix("SHA-256=")?;
    URL_SAFE.decode(encoded).ok().map(hex::encode)
}

async fn open(path: &Path) -> Result<tokio::fs::File, StateError> {
    tokio::fs::File::open(path)
        .await
        .map_err(|source| StateError::Io {
            path: path.to_path_buf(),
            source,
        })
}

fn transfer<E>(bucket: BlobBucket, name: &str, err: E) -> StateError
where
    E: std::error::Error + Send + Sync + 'static,
{
    StateError::BlobTransfer {
        bucket,
        name: name.to_string(),
        source: Box::new(err),
    }
}

fn mismatch(bucket: BlobBucket, name: &str, expected: &Digest, actual: String) -> StateError {
    StateError::DigestMismatch {
        bucket,
        name: name.to_string(),
        expected: expected.to_string(),
        actual,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::check_package_name;

    /// Whatever the platform accepts, an agent accepts: the two parsers of the wire's
    /// `dea-blob://` URIs never disagree in that direction.
    #[test]
    fn every_uri_the_platform_accepts_the_agents_accept() {
        let sha1 = "0123456789abcdef0123456789abcdef01234567";
        let long = "p".repeat(128);
        let too_long = "p".repeat(129);
        let candidates = [
            format!("dea-blob://dea-droplets/{sha1}"),
            format!("dea-blob://dea-droplets/{}", sha1.to_uppercase()),
            "dea-blob://dea-packages/shop-0123abcd".to_string(),
            format!("dea-blob://dea-packages/{long}"),
            format!("dea-blob://dea-packages/{too_long}"),
            "dea-blob://dea-packages/a..b".to_string(),
            "dea-blob://dea-packages/.x".to_string(),
            "dea-blob://dea-packages/a/b".to_string(),
            "dea-blob://KV_dea-apps/x".to_string(),
            "dea-blob://dea-droplets/".to_string(),
        ];
        for uri in candidates {
            if uri.parse::<BlobUri>().is_ok() {
                assert!(
                    dea_protocol::BlobUri::parse(&uri).is_ok(),
                    "agents refuse {uri}"
                );
            }
        }
        let ours: BlobUri = format!("dea-blob://dea-packages/{long}")
            .parse()
            .expect("parses");
        assert_eq!(
            dea_protocol::BlobUri::parse(&ours.to_string()).map(|u| u.name),
            Ok(Some(long))
        );
    }

    #[test]
    fn package_names() {
        assert!(check_package_name("my-app-0123abcd").is_ok());
        assert!(check_package_name("v1.2_x").is_ok());
        for bad in [
            "", "a/b", "..", "a..b", ".hidden", "a\nb", "a\0b", "a b", "a%2f",
        ] {
            assert!(check_package_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn uri_round_trip() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let uri: BlobUri = format!("dea-blob://dea-droplets/{sha}")
            .parse()
            .expect("parses");
        assert_eq!(uri.bucket(), BlobBucket::Droplets);
        assert_eq!(uri.to_string(), format!("dea-blob://dea-droplets/{sha}"));
    }
}
