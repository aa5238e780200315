//! Droplets on this host: one copy per SHA-1 under `<base_dir>/droplets/<sha1>/droplet.tgz`,
//! fetched from a local path or over HTTP (by [`crate::download`]), verified, and shared by
//! concurrent starts.

use crate::download::{Accept, DownloadError, Downloader, Options, Timeouts};
use parking_lot::Mutex;
use sha1::{Digest, Sha1};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

/// Why a droplet could not be had.
#[derive(Debug, thiserror::Error)]
pub enum DropletError {
    #[error("droplet {0} does not exist")]
    Missing(String),
    #[error("droplet URI {0} is not a valid URL")]
    BadUri(String),
    /// The HTTP download failed; the error names the URL and keeps its cause.
    #[error("downloading droplet: {0}")]
    Download(#[source] DownloadError),
    #[error("SHA1 mismatch for droplet {uri}: expected {expected}, got {actual}")]
    Sha1Mismatch {
        uri: String,
        expected: String,
        actual: String,
    },
    #[error("droplet {uri} is larger than the limit of {limit_mb} MiB")]
    TooLarge { uri: String, limit_mb: u64 },
    #[error("droplet store: {0}")]
    Io(#[from] std::io::Error),
}

pub struct DropletStore {
    dir: PathBuf,
    /// One gate per droplet being fetched; entries go when nobody holds them, so a stream of
    /// distinct URIs cannot grow the map.
    gates: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
    downloader: Downloader,
    /// Largest droplet fetched, in bytes.
    max_bytes: u64,
}

impl DropletStore {
    pub fn new(dir: PathBuf) -> DropletStore {
        Self::with_limit(dir, u64::MAX)
    }

    /// A store that refuses droplets larger than `max_bytes`.
    pub fn with_limit(dir: PathBuf, max_bytes: u64) -> DropletStore {
        DropletStore {
            dir,
            gates: Mutex::new(HashMap::new()),
            // A stalled transfer fails (the DEA's inactivity timeout); a slow one goes on.
            downloader: Downloader::new(Timeouts::DEA).unwrap_or_else(|error| {
                // Building fails only when the TLS backend cannot start; reqwest's default
                // client is what this always fell back to.
                tracing::error!("{error}; using reqwest's default client");
                Downloader::with_client(reqwest::Client::default(), None)
            }),
            max_bytes,
        }
    }

    /// Where the droplet with this SHA-1 is (or would be) stored.
    pub fn path_for(&self, sha1: &str) -> PathBuf {
        self.dir.join(sha1).join("droplet.tgz")
    }

    /// The stored droplet for `source` (a path or an http(s) URL), verified against
    /// `expected_sha1` when given. Returns its path and SHA-1.
    pub async fn get(
        &self,
        source: &str,
        expected_sha1: Option<&str>,
    ) -> Result<(PathBuf, String), DropletError> {
        if let Some(sha1) = expected_sha1 {
            let path = self.path_for(sha1);
            if path.is_file() {
                return Ok((path, sha1.to_string()));
            }
        }
        let key = expected_sha1.unwrap_or(source).to_string();
        let gate = {
            let mut gates = self.gates.lock();
            gates.retain(|_, gate| gate.strong_count() > 0);
            match gates.get(&key).and_then(Weak::upgrade) {
                Some(gate) => gate,
                None => {
                    let gate = Arc::new(tokio::sync::Mutex::new(()));
                    gates.insert(key, Arc::downgrade(&gate));
                    gate
                }
            }
        };
        let _guard = gate.lock().await;
        if let Some(sha1) = expected_sha1 {
            let path = self.path_for(sha1);
            if path.is_file() {
                return Ok((path, sha1.to_string()));
            }
        }
        std::fs::create_dir_all(&self.dir)?;
        let mut temp = tempfile::NamedTempFile::new_in(&self.dir)?;
        let actual = if source.starts_with("http://") || source.starts_with("https://") {
            let url = url::Url::parse(source).map_err(|_| DropletError::BadUri(source.into()))?;
            let options = Options {
                max_bytes: self.max_bytes,
                digests: crate::download::Digests::SHA1,
                accept: Accept::Ok,
            };
            let mut out = tokio::fs::File::from_std(temp.as_file().try_clone()?);
            let done = self
                .downloader
                .download(&url, &options, &mut out)
                .await
                .map_err(DropletError::Download)?;
            // Asked for above; a missing one would be a bug in the helper, not a droplet.
            done.sha1
                .ok_or_else(|| std::io::Error::other("the download computed no SHA-1"))?
        } else {
            let mut hasher = Sha1::new();
            let mut total = 0u64;
            let path = Path::new(source);
            let mut file =
                std::fs::File::open(path).map_err(|_| DropletError::Missing(source.into()))?;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = std::io::Read::read(&mut file, &mut buf)?;
                if n == 0 {
                    break;
                }
                total += n as u64;
                if total > self.max_bytes {
                    return Err(DropletError::TooLarge {
                        uri: source.to_string(),
                        limit_mb: self.max_bytes >> 20,
                    });
                }
                hasher.update(&buf[..n]);
                temp.write_all(&buf[..n])?;
            }
            hex::encode(hasher.finalize())
        };
        if let Some(expected) = expected_sha1
            && expected != actual
        {
            return Err(DropletError::Sha1Mismatch {
                uri: source.to_string(),
                expected: expected.to_string(),
                actual,
            });
        }
        let path = self.path_for(&actual);
        std::fs::create_dir_all(path.parent().unwrap_or(&self.dir))?;
        temp.persist(&path).map_err(|e| e.error)?;
        Ok((path, actual))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::download::test_server::{chunked, ok, serve, status};

    const DROPLET: &[u8] = b"not really a tgz";
    /// Well formed, and not the droplet's.
    const WRONG_SHA1: &str = "1a2c5bb7c6d6e0a2a49a2f7bd4c6e27ba1e0b8e5";

    fn sha1_of(bytes: &[u8]) -> String {
        hex::encode(Sha1::digest(bytes))
    }

    #[tokio::test]
    async fn http_droplets_are_stored_by_sha1_and_verified() {
        let server = serve(|path, _| match path {
            "/droplet" => ok(DROPLET),
            _ => status("404 Not Found", ""),
        })
        .await;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DropletStore::new(dir.path().join("droplets"));
        let sha1 = sha1_of(DROPLET);
        let (path, got) = store
            .get(&server.url("/droplet"), Some(&sha1))
            .await
            .expect("stored");
        assert_eq!(got, sha1);
        assert_eq!(path, store.path_for(&sha1));
        assert_eq!(std::fs::read(&path).expect("read"), DROPLET);
        // Stored: asked again, the server is not.
        store
            .get(&server.url("/droplet"), Some(&sha1))
            .await
            .expect("from the store");
        assert_eq!(server.hits(), 1);

        let error = store
            .get(&server.url("/droplet"), Some(WRONG_SHA1))
            .await
            .expect_err("wrong digest");
        assert!(
            matches!(error, DropletError::Sha1Mismatch { .. }),
            "{error}"
        );
        assert!(!store.path_for(WRONG_SHA1).exists());

        let error = store
            .get(&server.url("/missing"), None)
            .await
            .expect_err("404");
        let text = error.to_string();
        assert!(
            text.contains(&server.url("/missing")) && text.contains("HTTP 404"),
            "{text}"
        );
        // Nothing but the one stored droplet is left behind.
        let left: Vec<_> = std::fs::read_dir(dir.path().join("droplets"))
            .expect("dir")
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, [std::ffi::OsString::from(&sha1)]);
    }

    #[tokio::test]
    async fn droplets_over_the_limit_are_refused() {
        let server = serve(|path, _| match path {
            "/announced" => ok(&[0u8; 2048]),
            _ => chunked(&[0u8; 2048]),
        })
        .await;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DropletStore::with_limit(dir.path().to_path_buf(), 1024);
        for path in ["/announced", "/chunked"] {
            let error = store
                .get(&server.url(path), None)
                .await
                .expect_err("too large");
            assert!(
                matches!(
                    error,
                    DropletError::Download(DownloadError::TooLarge {
                        max_bytes: 1024,
                        ..
                    })
                ),
                "{error:?}"
            );
        }
        let local = dir.path().join("local.tgz");
        std::fs::write(&local, [0u8; 2048]).expect("write");
        let error = store
            .get(&local.display().to_string(), None)
            .await
            .expect_err("too large");
        assert!(matches!(error, DropletError::TooLarge { .. }), "{error:?}");
        let error = store
            .get("http://[not a host/x", None)
            .await
            .expect_err("bad URL");
        assert!(matches!(error, DropletError::BadUri(_)), "{error:?}");
    }
}
