//! Moving files to and from a Cloud Controller the way the DEA did (reference dea_ng.md §3.6):
//! downloads must answer 200 and are streamed to disk with a size cap and their SHA-1 (by
//! [`crate::download`]); uploads are `multipart/form-data` with one part named
//! `upload[droplet]`, and a reply that names a job (`metadata.url`) is polled until the job
//! finishes. A `dea-blob://` URI names a blob in the platform's JetStream object stores
//! instead, moved by [`crate::blobstore`] when the agent has one.

use crate::blobstore::{BlobError, BlobStore};
use crate::download::{Accept, DownloadError, Downloader, Options, Timeouts};
use backon::Retryable;
use dea_protocol::blob::{BlobUri, BlobUriError};
use std::path::Path;
use std::time::Duration;

/// Why a transfer failed. The text is what a controller shows its user.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("invalid URL {0}")]
    Url(String),
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    /// A download failed; the error names the URL and keeps its cause.
    #[error(transparent)]
    Download(#[from] DownloadError),
    #[error("{url}: the upload job failed: {message}")]
    JobFailed { url: String, message: String },
    #[error("{url}: the upload job did not finish within {0:?}", limit)]
    JobTimeout { url: String, limit: Duration },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    BlobUri(#[from] BlobUriError),
    #[error("{0}: this agent has no blobstore (it is not connected to NATS)")]
    NoBlobStore(String),
    #[error(transparent)]
    Blob(#[from] BlobError),
}

/// An HTTP client for controller transfers; cheap to clone.
#[derive(Clone)]
pub struct Transfers {
    /// Downloads, and the client that uploads and job polls share.
    downloader: Downloader,
    /// How long an upload job is polled before giving up.
    pub job_timeout: Duration,
    /// Time between polls of an upload job.
    pub job_poll_interval: Duration,
    /// For `dea-blob://` URIs.
    blobs: Option<BlobStore>,
}

impl Default for Transfers {
    fn default() -> Self {
        Transfers::new()
    }
}

impl Transfers {
    pub fn new() -> Transfers {
        // The DEA's inactivity timeout: a stalled transfer fails, a slow one goes on.
        let downloader = Downloader::new(Timeouts::DEA).unwrap_or_else(|error| {
            // Building fails only when the TLS backend cannot start; reqwest's default
            // client is what this always fell back to.
            tracing::error!("{error}; using reqwest's default client");
            Downloader::with_client(reqwest::Client::default(), None)
        });
        Transfers {
            downloader,
            job_timeout: Duration::from_secs(300),
            job_poll_interval: Duration::from_secs(1),
            blobs: None,
        }
    }

    /// Transfers that also reach the platform's blobstore (`dea-blob://`).
    pub fn with_blobs(mut self, blobs: BlobStore) -> Transfers {
        self.blobs = Some(blobs);
        self
    }

    fn blob(&self, url: &str) -> Result<(BlobUri, &BlobStore), TransferError> {
        let uri = BlobUri::parse(url)?;
        let blobs = self
            .blobs
            .as_ref()
            .ok_or_else(|| TransferError::NoBlobStore(url.to_string()))?;
        Ok((uri, blobs))
    }

    /// Streams `url` into `dest`; returns the byte count and the SHA-1 (hex). Anything but
    /// 200 is an error, and so is a body over `max_bytes`; after an error `dest` is gone.
    pub async fn download(
        &self,
        url: &str,
        dest: &Path,
        max_bytes: u64,
    ) -> Result<(u64, String), TransferError> {
        if BlobUri::is_blob(url) {
            let (uri, blobs) = self.blob(url)?;
            let fetched = blobs.download_to(&uri, dest, max_bytes).await?;
            return Ok((fetched.size, fetched.sha1));
        }
        let parsed = reqwest::Url::parse(url).map_err(|_| TransferError::Url(url.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(TransferError::Url(url.to_string()));
        }
        let options = Options {
            max_bytes,
            digests: crate::download::Digests::SHA1,
            accept: Accept::Ok,
        };
        let mut file = tokio::fs::File::create(dest).await?;
        let outcome = self.downloader.download(&parsed, &options, &mut file).await;
        drop(file);
        match outcome {
            // Asked for above; a missing one would be a bug in the helper, not a transfer.
            Ok(done) => match done.sha1 {
                Some(sha1) => Ok((done.size, sha1)),
                None => Err(std::io::Error::other("the download computed no SHA-1").into()),
            },
            Err(error) => {
                // Part of a body is nobody's file.
                let _ = tokio::fs::remove_file(dest).await;
                Err(error.into())
            }
        }
    }

    /// [`Transfers::download`] with up to `attempts` tries, the first retry after 250 ms and
    /// each later one after twice the wait before (the DEA retried admin buildpack downloads
    /// three times at once). A URL that is not http(s) and a body over the size cap are not
    /// tried again: another try could only end the same way.
    pub async fn download_with_retries(
        &self,
        url: &str,
        dest: &Path,
        max_bytes: u64,
        attempts: usize,
    ) -> Result<(u64, String), TransferError> {
        let backoff = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(250))
            .with_max_times(attempts.saturating_sub(1));
        (|| self.download(url, dest, max_bytes))
            .retry(backoff)
            .when(|error| {
                !matches!(
                    error,
                    TransferError::Url(_)
                        | TransferError::BlobUri(_)
                        | TransferError::NoBlobStore(_)
                        | TransferError::Blob(BlobError::TooLarge { .. })
                        | TransferError::Download(DownloadError::TooLarge { .. })
                )
            })
            .notify(|error, delay| {
                tracing::warn!("download failed, retrying in {delay:?}: {error}");
            })
            .await
    }

    /// POSTs `file` to `url?async=true` as the multipart part `upload[droplet]`; when the reply
    /// names a job, waits for it to finish.
    /// A `dea-blob://` URI stores the file in the blobstore instead.
    pub async fn upload(&self, url: &str, file: &Path) -> Result<(), TransferError> {
        if BlobUri::is_blob(url) {
            let (uri, blobs) = self.blob(url)?;
            blobs.upload(&uri, file).await?;
            return Ok(());
        }
        let http = |message: String| TransferError::Http {
            url: url.to_string(),
            message,
        };
        let mut target =
            reqwest::Url::parse(url).map_err(|_| TransferError::Url(url.to_string()))?;
        if !matches!(target.scheme(), "http" | "https") {
            return Err(TransferError::Url(url.to_string()));
        }
        target.query_pairs_mut().append_pair("async", "true");
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "droplet.tgz".into());
        let length = tokio::fs::metadata(file).await?.len();
        let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::open(file).await?);
        let part = reqwest::multipart::Part::stream_with_length(
            reqwest::Body::wrap_stream(stream),
            length,
        )
        .file_name(name)
        .mime_str("application/octet-stream")
        .map_err(|e| http(e.to_string()))?;
        let form = reqwest::multipart::Form::new().part("upload[droplet]", part);
        let response = self
            .downloader
            .client()
            .post(target.clone())
            .multipart(form)
            .send()
            .await
            .map_err(|e| http(crate::download::error_chain(&e)))?;
        let status = response.status();
        let body = response.bytes().await.unwrap_or_default();
        if status.as_u16() >= 300 {
            return Err(http(format!("HTTP {status}")));
        }
        let job: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        match job["metadata"]["url"].as_str() {
            Some(job_url) => {
                let job_url = target
                    .join(job_url)
                    .map_err(|_| TransferError::Url(job_url.to_string()))?;
                self.wait_for_job(url, job_url).await
            }
            None => Ok(()),
        }
    }

    /// Polls a controller job until its `entity.status` is `finished` or `failed`.
    async fn wait_for_job(&self, url: &str, job_url: reqwest::Url) -> Result<(), TransferError> {
        let deadline = tokio::time::Instant::now() + self.job_timeout;
        loop {
            let job: serde_json::Value = match self
                .downloader
                .client()
                .get(job_url.clone())
                .send()
                .await
            {
                Ok(response) => response.json().await.unwrap_or_default(),
                Err(e) => {
                    tracing::warn!(%job_url, "polling upload job: {}", crate::download::error_chain(&e));
                    serde_json::Value::Null
                }
            };
            match job["entity"]["status"].as_str() {
                Some("finished") => return Ok(()),
                Some("failed") => {
                    return Err(TransferError::JobFailed {
                        url: url.to_string(),
                        message: job["entity"]["error"]
                            .as_str()
                            .unwrap_or("no reason given")
                            .to_string(),
                    });
                }
                _ => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(TransferError::JobTimeout {
                    url: url.to_string(),
                    limit: self.job_timeout,
                });
            }
            tokio::time::sleep(self.job_poll_interval).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::download::test_server::{ok, serve, status};

    #[tokio::test]
    async fn downloads_are_retried_with_back_off_until_one_succeeds() {
        let server = serve(|_, n| match n {
            0 | 1 => status("503 Service Unavailable", ""),
            _ => ok(b"buildpack"),
        })
        .await;
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("bp.zip");
        let started = std::time::Instant::now();
        let (size, sha1) = Transfers::new()
            .download_with_retries(&server.url("/bp.zip"), &dest, 1 << 20, 3)
            .await
            .expect("the third attempt succeeds");
        assert_eq!(server.hits(), 3);
        // 250 ms, then 500 ms.
        assert!(started.elapsed() >= Duration::from_millis(750));
        assert_eq!(size, 9);
        assert_eq!(sha1.len(), 40);
        assert_eq!(std::fs::read(&dest).expect("dest"), b"buildpack");
    }

    #[tokio::test]
    async fn failures_leave_no_file_and_a_too_large_body_is_not_retried() {
        let server = serve(|_, _| ok(b"0123456789")).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("bp.zip");
        let error = Transfers::new()
            .download_with_retries(&server.url("/bp.zip"), &dest, 5, 3)
            .await
            .expect_err("over the cap");
        assert!(
            matches!(
                error,
                TransferError::Download(DownloadError::TooLarge { .. })
            ),
            "{error:?}"
        );
        assert_eq!(server.hits(), 1);
        assert!(!dest.exists());

        let server = serve(|_, _| status("404 Not Found", "")).await;
        let error = Transfers::new()
            .download_with_retries(&server.url("/missing"), &dest, 5, 2)
            .await
            .expect_err("missing");
        assert!(
            matches!(
                &error,
                TransferError::Download(DownloadError::Status { status, .. })
                    if *status == reqwest::StatusCode::NOT_FOUND
            ),
            "{error:?}"
        );
        assert_eq!(server.hits(), 2);
        assert!(!dest.exists());

        let error = Transfers::new()
            .download("file:///etc/passwd", &dest, 5)
            .await
            .expect_err("not http");
        assert!(matches!(error, TransferError::Url(_)), "{error:?}");
    }
}
