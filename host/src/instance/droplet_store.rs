//! Droplets on this host: one copy per SHA-1 under `<base_dir>/droplets/<sha1>/droplet.tgz`,
//! fetched from a local path or over HTTP, verified, and shared by concurrent starts.

use sha1::{Digest, Sha1};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

/// Why a droplet could not be had.
#[derive(Debug, thiserror::Error)]
pub enum DropletError {
    #[error("droplet {0} does not exist")]
    Missing(String),
    #[error("downloading droplet {uri}: {message}")]
    Download { uri: String, message: String },
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
    client: reqwest::Client,
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
            client: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(30))
                .read_timeout(std::time::Duration::from_secs(30))
                .build()
                .unwrap_or_default(),
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
            let mut gates = match self.gates.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
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
        let mut hasher = Sha1::new();
        let mut total = 0u64;
        let too_large = || DropletError::TooLarge {
            uri: source.to_string(),
            limit_mb: self.max_bytes >> 20,
        };
        if source.starts_with("http://") || source.starts_with("https://") {
            let download = |message: String| DropletError::Download {
                uri: source.to_string(),
                message,
            };
            let mut response = self
                .client
                .get(source)
                .send()
                .await
                .map_err(|e| download(e.to_string()))?;
            if response.status() != reqwest::StatusCode::OK {
                return Err(download(format!("HTTP {}", response.status())));
            }
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| download(e.to_string()))?
            {
                total += chunk.len() as u64;
                if total > self.max_bytes {
                    return Err(too_large());
                }
                hasher.update(&chunk);
                temp.write_all(&chunk)?;
            }
        } else {
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
                    return Err(too_large());
                }
                hasher.update(&buf[..n]);
                temp.write_all(&buf[..n])?;
            }
        }
        let actual = hex::encode(hasher.finalize());
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
