//! One streaming HTTP download, shared by everything that pulls bytes over HTTP: the fetch
//! service (buildpack downloads), controller transfers (app packages, caches, admin
//! buildpacks) and the droplet store.
//!
//! Every one of them needs the same four guarantees, so they live here once:
//! - time limits: a connect timeout, a read timeout (a stalled transfer fails, a slow one goes
//!   on, as in the DEA) and optionally one for the whole transfer;
//! - a size cap, checked against `Content-Length` before a byte is read and against the bytes
//!   actually read (a server may send no length, or lie);
//! - a running digest (SHA-1, SHA-256 or both), computed while the bytes stream to the
//!   caller's file, so nothing is read twice;
//! - one error type that names the URL and keeps the underlying error as its source.
//!
//! Redirects are the caller's choice: [`Downloader::new`] follows them as reqwest does (what
//! transfers and the droplet store have always done), while the fetch service builds its client
//! with redirects off and uses [`Downloader::download_or_redirect`] to be handed each 3xx, so
//! every hop can be checked against its policy before it is followed.

use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use url::Url;

/// Time limits for downloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Establishing the connection (TCP and TLS).
    pub connect: Duration,
    /// Longest wait for the next bytes from the server.
    pub read: Duration,
    /// The whole transfer, from connecting to the last byte of the body; `None` for no limit
    /// beyond the other two (a large droplet on a slow link may take long, but never stalls).
    pub overall: Option<Duration>,
}

impl Timeouts {
    /// The DEA's: 30 seconds to connect, 30 seconds of silence fails a transfer, and a slow
    /// transfer that keeps moving goes on.
    pub const DEA: Timeouts = Timeouts {
        connect: Duration::from_secs(30),
        read: Duration::from_secs(30),
        overall: None,
    };
}

/// Which statuses carry the content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// Exactly 200, as the DEA demands of a Cloud Controller.
    Ok,
    /// Any 2xx.
    Success,
}

/// Which digests to compute while streaming.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digests {
    pub sha1: bool,
    pub sha256: bool,
}

impl Digests {
    pub const SHA1: Digests = Digests {
        sha1: true,
        sha256: false,
    };
    pub const SHA256: Digests = Digests {
        sha1: false,
        sha256: true,
    };
}

/// What one download must satisfy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// The largest body accepted, in bytes.
    pub max_bytes: u64,
    pub digests: Digests,
    pub accept: Accept,
}

/// A finished download: what was written, and its digests (lowercase hex, present exactly
/// when [`Options::digests`] asked for them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    pub size: u64,
    pub sha1: Option<String>,
    pub sha256: Option<String>,
}

/// The outcome of [`Downloader::download_or_redirect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Done(Downloaded),
    /// A 301, 302, 303, 307 or 308, not followed; nothing was written. `location` is the raw
    /// `Location` header, when there is one that is text.
    Redirect {
        status: u16,
        location: Option<String>,
    },
}

/// Why a download failed. Every message names the URL, and the reason is spelled out in it
/// (the callers show these to people as single lines).
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("building the HTTP client for downloads: {}", error_chain(.source))]
    Client {
        #[source]
        source: reqwest::Error,
    },
    /// Connecting, sending, or reading the body failed, timeouts included.
    #[error("{url}: {}", error_chain(.source))]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered HTTP {status}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
    },
    #[error("{url}: larger than {}", limit_text(*.max_bytes))]
    TooLarge { url: String, max_bytes: u64 },
    #[error("writing the download of {url}: {source}")]
    Write {
        url: String,
        #[source]
        source: std::io::Error,
    },
}

impl DownloadError {
    /// Whether a time limit ended the download (connect, read or overall).
    pub fn is_timeout(&self) -> bool {
        matches!(self, DownloadError::Request { source, .. } if source.is_timeout())
    }
}

/// An HTTP client with the time limits applied; cheap to clone.
#[derive(Debug, Clone)]
pub struct Downloader {
    client: reqwest::Client,
    overall: Option<Duration>,
}

impl Downloader {
    /// A downloader that follows redirects as reqwest does by default (at most 10).
    pub fn new(timeouts: Timeouts) -> Result<Downloader, DownloadError> {
        Downloader::from_builder(reqwest::Client::builder(), timeouts)
    }

    /// `builder` with these time limits; the caller's other settings (DNS resolver, redirect
    /// policy, proxies) stay as they are.
    pub fn from_builder(
        builder: reqwest::ClientBuilder,
        timeouts: Timeouts,
    ) -> Result<Downloader, DownloadError> {
        let client = builder
            .connect_timeout(timeouts.connect)
            .read_timeout(timeouts.read)
            .build()
            .map_err(|source| DownloadError::Client { source })?;
        Ok(Downloader::with_client(client, timeouts.overall))
    }

    /// A downloader over an already built client, whose own settings are all it gets, and an
    /// overall limit per download.
    pub fn with_client(client: reqwest::Client, overall: Option<Duration>) -> Downloader {
        Downloader { client, overall }
    }

    /// The client, for the requests that are not downloads (uploads, polling) to share its
    /// connections and limits.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// GETs `url` and streams its body into `out`, then flushes `out`. Anything `options`
    /// does not accept is an error, redirects the client did not follow included. On error,
    /// `out` may hold part of the body: the caller discards it.
    pub async fn download(
        &self,
        url: &Url,
        options: &Options,
        out: &mut (impl AsyncWrite + Unpin + ?Sized),
    ) -> Result<Downloaded, DownloadError> {
        let response = self.send(url).await?;
        stream(url, response, options, out).await
    }

    /// [`Downloader::download`], except that a redirect the client did not follow (it never
    /// does when built with `redirect::Policy::none()`) comes back as [`Step::Redirect`] for
    /// the caller to check and follow.
    pub async fn download_or_redirect(
        &self,
        url: &Url,
        options: &Options,
        out: &mut (impl AsyncWrite + Unpin + ?Sized),
    ) -> Result<Step, DownloadError> {
        let response = self.send(url).await?;
        let status = response.status().as_u16();
        if matches!(status, 301 | 302 | 303 | 307 | 308) {
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            return Ok(Step::Redirect { status, location });
        }
        stream(url, response, options, out).await.map(Step::Done)
    }

    async fn send(&self, url: &Url) -> Result<reqwest::Response, DownloadError> {
        let mut request = self.client.get(url.clone());
        // reqwest's request timeout runs until the body has been read, not just the headers.
        if let Some(overall) = self.overall {
            request = request.timeout(overall);
        }
        request.send().await.map_err(|e| request_error(url, e))
    }
}

/// Checks the status and the announced length, then copies the body to `out` while counting
/// and hashing it.
async fn stream(
    url: &Url,
    mut response: reqwest::Response,
    options: &Options,
    out: &mut (impl AsyncWrite + Unpin + ?Sized),
) -> Result<Downloaded, DownloadError> {
    let status = response.status();
    let accepted = match options.accept {
        Accept::Ok => status == reqwest::StatusCode::OK,
        Accept::Success => status.is_success(),
    };
    if !accepted {
        return Err(DownloadError::Status {
            url: url.to_string(),
            status,
        });
    }
    let too_large = || DownloadError::TooLarge {
        url: url.to_string(),
        max_bytes: options.max_bytes,
    };
    // Refused before a byte is read; the count below still holds a server to it.
    if response
        .content_length()
        .is_some_and(|length| length > options.max_bytes)
    {
        return Err(too_large());
    }
    let write_error = |source| DownloadError::Write {
        url: url.to_string(),
        source,
    };
    let mut sha1 = options.digests.sha1.then(Sha1::new);
    let mut sha256 = options.digests.sha256.then(Sha256::new);
    let mut size = 0u64;
    while let Some(chunk) = response.chunk().await.map_err(|e| request_error(url, e))? {
        size = size.saturating_add(chunk.len() as u64);
        if size > options.max_bytes {
            return Err(too_large());
        }
        if let Some(hasher) = &mut sha1 {
            hasher.update(&chunk);
        }
        if let Some(hasher) = &mut sha256 {
            hasher.update(&chunk);
        }
        out.write_all(&chunk).await.map_err(write_error)?;
    }
    out.flush().await.map_err(write_error)?;
    Ok(Downloaded {
        size,
        sha1: sha1.map(|h| hex::encode(h.finalize())),
        sha256: sha256.map(|h| hex::encode(h.finalize())),
    })
}

/// The error for `url`, without reqwest's own copy of the URL (ours is in the message).
fn request_error(url: &Url, error: reqwest::Error) -> DownloadError {
    DownloadError::Request {
        url: url.to_string(),
        source: error.without_url(),
    }
}

/// An error and its causes on one line, each said once (reqwest's top-level message alone
/// hides the reason, and some errors repeat their source in their own text).
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// `1 MiB` for whole mebibytes (how limits are configured), else bytes.
fn limit_text(max_bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    if max_bytes >= MIB && max_bytes.is_multiple_of(MIB) {
        format!("{} MiB", max_bytes / MIB)
    } else {
        format!("{max_bytes} bytes")
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
pub(crate) mod test_server;
