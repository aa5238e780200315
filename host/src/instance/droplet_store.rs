//! Droplets on this host: one copy per SHA-1 under `<base_dir>/droplets/<sha1>/droplet.tgz`,
//! fetched from a local path or over HTTP, verified, and shared by concurrent starts.

use sha1::{Digest, Sha1};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
    #[error("droplet store: {0}")]
    Io(#[from] std::io::Error),
}

pub struct DropletStore {
    dir: PathBuf,
    gates: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    client: reqwest::Client,
}

impl DropletStore {
    pub fn new(dir: PathBuf) -> DropletStore {
        DropletStore {
            dir,
            gates: Mutex::new(HashMap::new()),
            client: reqwest::Client::new(),
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
            gates.entry(key).or_default().clone()
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
