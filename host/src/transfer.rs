//! Moving files to and from a Cloud Controller the way the DEA did (reference dea_ng.md §3.6):
//! downloads must answer 200 and are streamed to disk with a size cap and their SHA-1;
//! uploads are `multipart/form-data` with one part named `upload[droplet]`, and a reply that
//! names a job (`metadata.url`) is polled until the job finishes.

use sha1::{Digest, Sha1};
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Why a transfer failed. The text is what a controller shows its user.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("invalid URL {0}")]
    Url(String),
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    #[error("{url}: larger than {limit_mb} MiB")]
    TooLarge { url: String, limit_mb: u64 },
    #[error("{url}: the upload job failed: {message}")]
    JobFailed { url: String, message: String },
    #[error("{url}: the upload job did not finish within {0:?}", limit)]
    JobTimeout { url: String, limit: Duration },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// An HTTP client for controller transfers; cheap to clone.
#[derive(Clone)]
pub struct Transfers {
    client: reqwest::Client,
    /// How long an upload job is polled before giving up.
    pub job_timeout: Duration,
    /// Time between polls of an upload job.
    pub job_poll_interval: Duration,
}

impl Default for Transfers {
    fn default() -> Self {
        Transfers::new()
    }
}

impl Transfers {
    pub fn new() -> Transfers {
        let client = reqwest::Client::builder()
            // The DEA's inactivity timeout: a stalled transfer fails, a slow one goes on.
            .read_timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        Transfers {
            client,
            job_timeout: Duration::from_secs(300),
            job_poll_interval: Duration::from_secs(1),
        }
    }

    /// Streams `url` into `dest`; returns the byte count and the SHA-1 (hex). Anything but
    /// 200 is an error, and so is a body over `max_bytes`.
    pub async fn download(
        &self,
        url: &str,
        dest: &Path,
        max_bytes: u64,
    ) -> Result<(u64, String), TransferError> {
        let http = |message: String| TransferError::Http {
            url: url.to_string(),
            message,
        };
        let parsed = reqwest::Url::parse(url).map_err(|_| TransferError::Url(url.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(TransferError::Url(url.to_string()));
        }
        let mut response = self
            .client
            .get(parsed)
            .send()
            .await
            .map_err(|e| http(error_chain(&e)))?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(http(format!("HTTP {}", response.status())));
        }
        let too_large = || TransferError::TooLarge {
            url: url.to_string(),
            limit_mb: max_bytes >> 20,
        };
        if response.content_length().is_some_and(|n| n > max_bytes) {
            return Err(too_large());
        }
        let mut file = tokio::fs::File::create(dest).await?;
        let mut hasher = Sha1::new();
        let mut total = 0u64;
        while let Some(chunk) = response.chunk().await.map_err(|e| http(error_chain(&e)))? {
            total += chunk.len() as u64;
            if total > max_bytes {
                drop(file);
                let _ = tokio::fs::remove_file(dest).await;
                return Err(too_large());
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await?;
        }
        file.flush().await?;
        Ok((total, hex::encode(hasher.finalize())))
    }

    /// POSTs `file` to `url?async=true` as the multipart part `upload[droplet]`; when the reply
    /// names a job, waits for it to finish.
    pub async fn upload(&self, url: &str, file: &Path) -> Result<(), TransferError> {
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
            .client
            .post(target.clone())
            .multipart(form)
            .send()
            .await
            .map_err(|e| http(error_chain(&e)))?;
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
            let job: serde_json::Value = match self.client.get(job_url.clone()).send().await {
                Ok(response) => response.json().await.unwrap_or_default(),
                Err(e) => {
                    tracing::warn!(%job_url, "polling upload job: {}", error_chain(&e));
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

/// An error and its causes on one line (reqwest's top-level message alone hides the reason).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
