//! The fetch service: the one road from a buildpack to the network.
//!
//! Every download a buildpack asks for comes here. The URL is rewritten by the operator's
//! mirror rules (longest prefix wins), checked against the allowlist, served from a
//! content-addressed cache shared by all stagings when possible, otherwise downloaded with a
//! size cap, timeouts and retries, and verified against its pinned SHA-256 before anyone sees
//! it. Concurrent requests for one URL share one transfer.

use crate::config::{FetchConfig, MirrorRule};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// Why a download was refused or failed. Every message names the URL.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url} is not a valid http(s) or file URL")]
    BadUrl { url: String },
    #[error("buildpack {buildpack} may not download {url}: its manifest allows only {declared:?}")]
    NotDeclared {
        buildpack: String,
        url: String,
        declared: Vec<String>,
    },
    #[error("download of {url} (as {url_used}) denied: {reason}")]
    Denied {
        url: String,
        url_used: String,
        reason: String,
    },
    #[error("{url} is not in the download cache and the fetch service is offline")]
    Offline { url: String },
    #[error(
        "checksum mismatch for {url} (from {url_used}): expected sha256 {expected}, got {actual}"
    )]
    ChecksumMismatch {
        url: String,
        url_used: String,
        expected: String,
        actual: String,
    },
    #[error("{url_used} answered HTTP {status}")]
    Status { url_used: String, status: u16 },
    #[error("downloading {url_used} failed: {message}")]
    Network { url_used: String, message: String },
    #[error("{url_used} is larger than the download limit of {limit_mb} MiB")]
    TooLarge { url_used: String, limit_mb: u64 },
    #[error("download cache i/o error: {0}")]
    Cache(#[from] std::io::Error),
}

/// How a URL resolves under the current rules (what `dea fetch --explain` prints).
#[derive(Debug, Clone)]
pub struct Resolution {
    pub url: String,
    pub url_used: String,
    /// The mirror rule that rewrote it, if any.
    pub rule: Option<MirrorRule>,
    /// Why the rewritten URL may be reached, or why not.
    pub verdict: Result<&'static str, String>,
}

/// Who is asking: the buildpack's id and the URL prefixes its manifest declares.
#[derive(Debug, Clone, Default)]
pub struct FetchGrant {
    pub buildpack: String,
    pub declared: Vec<String>,
    /// Classic buildpacks declare nothing and may ask for any URL; what they get is still
    /// decided by the mirror rules and the allowlist alone.
    pub any_request: bool,
}

/// A completed fetch: the verified content in the cache.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub url_used: String,
    pub blob: PathBuf,
    pub sha256: String,
    pub size: u64,
    pub cached: bool,
}

impl Fetched {
    /// The staging-log line for this fetch of `asked`: URL asked for, URL used, cache hit or
    /// miss, bytes.
    pub fn log_line(&self, asked: &str) -> String {
        format!(
            "fetch {asked} -> {} ({}, {} bytes)",
            self.url_used,
            if self.cached {
                "cache hit"
            } else {
                "cache miss"
            },
            self.size
        )
    }
}

/// The fetch service. One per agent; cheap to share behind an `Arc`.
pub struct FetchService {
    config: FetchConfig,
    cache_dir: PathBuf,
    client: reqwest::Client,
    inflight: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

/// True if `url` is `prefix` or lies under it (so `https://a.com` does not match
/// `https://a.com.evil/`).
pub fn url_has_prefix(url: &str, prefix: &str) -> bool {
    url.starts_with(prefix)
        && (prefix.ends_with('/')
            || url.len() == prefix.len()
            || url[prefix.len()..].starts_with(['/', '?', '#']))
}

fn host_of(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some(&rest[..end])
}

impl FetchService {
    pub fn new(config: FetchConfig, cache_dir: PathBuf) -> Result<FetchService, FetchError> {
        std::fs::create_dir_all(cache_dir.join("blobs"))?;
        std::fs::create_dir_all(cache_dir.join("urls"))?;
        std::fs::create_dir_all(cache_dir.join("partial"))?;
        let allowed: Vec<String> = config
            .mirrors
            .iter()
            .map(|m| m.to.clone())
            .chain(config.allow.iter().cloned())
            .collect();
        // A redirect may stay on the same host or go to an allowed prefix, never elsewhere.
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            let target = attempt.url().as_str().to_string();
            let same_host = attempt
                .previous()
                .last()
                .is_some_and(|prev| prev.host_str() == attempt.url().host_str());
            if attempt.previous().len() > 5 {
                attempt.error("too many redirects")
            } else if same_host || allowed.iter().any(|p| url_has_prefix(&target, p)) {
                attempt.follow()
            } else {
                attempt.error(format!("redirect to {target} is not on the allowlist"))
            }
        });
        let client = reqwest::Client::builder()
            .redirect(policy)
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(config.timeout_secs.max(1)))
            .no_proxy()
            .build()
            .map_err(|e| FetchError::Network {
                url_used: String::new(),
                message: e.to_string(),
            })?;
        Ok(FetchService {
            config,
            cache_dir,
            client,
            inflight: Mutex::new(HashMap::new()),
        })
    }

    /// Applies the mirror rules and the allowlist to `url`, without fetching.
    pub fn resolve(&self, url: &str, grant: &FetchGrant) -> Resolution {
        let rule = self
            .config
            .mirrors
            .iter()
            .filter(|rule| rule_matches(rule, url))
            .max_by_key(|rule| rule.from.len())
            .cloned();
        let url_used = match &rule {
            Some(rule) => rewrite(rule, url),
            None => url.to_string(),
        };
        let verdict = if rule.is_some() {
            Ok("rewritten to a configured mirror")
        } else if self
            .config
            .allow
            .iter()
            .any(|p| url_has_prefix(&url_used, p))
        {
            Ok("on the fetch allowlist")
        } else if self.config.allow_buildpack_declared
            && grant.declared.iter().any(|p| url_has_prefix(&url_used, p))
        {
            Ok("declared by the buildpack's manifest")
        } else {
            Err(if self.config.allow_buildpack_declared {
                "no mirror rule matches and it is neither on the allowlist nor declared by the buildpack".to_string()
            } else {
                "no mirror rule matches and it is not on the allowlist".to_string()
            })
        };
        Resolution {
            url: url.to_string(),
            url_used,
            rule,
            verdict,
        }
    }

    /// Fetches `url` for `grant`, verifying `expected_sha256` when given.
    pub async fn fetch(
        &self,
        url: &str,
        expected_sha256: Option<&str>,
        grant: &FetchGrant,
    ) -> Result<Fetched, FetchError> {
        if host_of(url).is_none() && !url.starts_with("file:///") {
            return Err(FetchError::BadUrl {
                url: url.to_string(),
            });
        }
        if !grant.any_request && !grant.declared.iter().any(|p| url_has_prefix(url, p)) {
            return Err(FetchError::NotDeclared {
                buildpack: grant.buildpack.clone(),
                url: url.to_string(),
                declared: grant.declared.clone(),
            });
        }
        let resolution = self.resolve(url, grant);
        let url_used = resolution.url_used.clone();
        if let Err(reason) = resolution.verdict {
            let reason = match &resolution.rule {
                Some(rule) => format!("{reason} (rule {} -> {})", rule.from, rule.to),
                None => reason,
            };
            return Err(FetchError::Denied {
                url: url.to_string(),
                url_used,
                reason,
            });
        }
        let expected = expected_sha256
            .or_else(|| self.config.pins.get(url).map(String::as_str))
            .map(|s| s.trim().to_ascii_lowercase());

        // One transfer per URL at a time; later callers find it in the cache.
        let gate = self.gate(&url_used);
        let _guard = gate.lock().await;
        if let Some(hit) = self.cache_lookup(&url_used, expected.as_deref())? {
            return Ok(hit);
        }
        if self.config.offline {
            return Err(FetchError::Offline {
                url: url.to_string(),
            });
        }
        let (partial, sha256, size) = self.download_with_retries(&url_used).await?;
        if let Some(expected) = &expected
            && *expected != sha256
        {
            let _ = std::fs::remove_file(&partial);
            return Err(FetchError::ChecksumMismatch {
                url: url.to_string(),
                url_used,
                expected: expected.clone(),
                actual: sha256,
            });
        }
        let blob = self.blob_path(&sha256);
        std::fs::rename(&partial, &blob)?;
        write_atomic(&self.url_index(&url_used), sha256.as_bytes())?;
        Ok(Fetched {
            url_used,
            blob,
            sha256,
            size,
            cached: false,
        })
    }

    fn gate(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = match self.inflight.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.retain(|_, weak| weak.strong_count() > 0);
        if let Some(gate) = map.get(key).and_then(Weak::upgrade) {
            return gate;
        }
        let gate = Arc::new(tokio::sync::Mutex::new(()));
        map.insert(key.to_string(), Arc::downgrade(&gate));
        gate
    }

    fn blob_path(&self, sha256: &str) -> PathBuf {
        self.cache_dir.join("blobs").join(sha256)
    }

    fn url_index(&self, url: &str) -> PathBuf {
        self.cache_dir
            .join("urls")
            .join(hex::encode(Sha256::digest(url.as_bytes())))
    }

    /// A cache hit: by pinned digest if one is given (any URL with that content will do),
    /// else by the URL's last download.
    fn cache_lookup(
        &self,
        url_used: &str,
        expected: Option<&str>,
    ) -> Result<Option<Fetched>, FetchError> {
        let digest = match expected {
            Some(expected) => Some(expected.to_string()),
            None => std::fs::read_to_string(self.url_index(url_used))
                .ok()
                .map(|s| s.trim().to_string()),
        };
        let Some(digest) =
            digest.filter(|d| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()))
        else {
            return Ok(None);
        };
        let blob = self.blob_path(&digest);
        match std::fs::metadata(&blob) {
            Ok(meta) => Ok(Some(Fetched {
                url_used: url_used.to_string(),
                blob,
                sha256: digest,
                size: meta.len(),
                cached: true,
            })),
            Err(_) => Ok(None),
        }
    }

    async fn download_with_retries(
        &self,
        url_used: &str,
    ) -> Result<(PathBuf, String, u64), FetchError> {
        let attempts = self.config.attempts.max(1);
        let mut delay = Duration::from_millis(250);
        let mut attempt = 1;
        loop {
            match self.download_once(url_used).await {
                Err(FetchError::Network { .. }) if attempt < attempts => {
                    tracing::warn!(url = url_used, attempt, "download failed, retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn download_once(&self, url_used: &str) -> Result<(PathBuf, String, u64), FetchError> {
        let limit = self.config.max_download_mb << 20;
        let too_large = || FetchError::TooLarge {
            url_used: url_used.to_string(),
            limit_mb: self.config.max_download_mb,
        };
        let network = |message: String| FetchError::Network {
            url_used: url_used.to_string(),
            message,
        };
        let mut partial = tempfile::NamedTempFile::new_in(self.cache_dir.join("partial"))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        if let Some(path) = url_used.strip_prefix("file://") {
            let mut file = std::fs::File::open(path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => FetchError::Status {
                    url_used: url_used.to_string(),
                    status: 404,
                },
                _ => network(e.to_string()),
            })?;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n =
                    std::io::Read::read(&mut file, &mut buf).map_err(|e| network(e.to_string()))?;
                if n == 0 {
                    break;
                }
                size += n as u64;
                if size > limit {
                    return Err(too_large());
                }
                hasher.update(&buf[..n]);
                partial.write_all(&buf[..n])?;
            }
        } else {
            let overall = Duration::from_secs(self.config.timeout_secs.max(1));
            let response = self
                .client
                .get(url_used)
                .timeout(overall)
                .send()
                .await
                .map_err(|e| network(format!("{e:#}")))?;
            let status = response.status();
            if !status.is_success() {
                return Err(if status.is_server_error() {
                    network(format!("HTTP {status}"))
                } else {
                    FetchError::Status {
                        url_used: url_used.to_string(),
                        status: status.as_u16(),
                    }
                });
            }
            if response.content_length().is_some_and(|len| len > limit) {
                return Err(too_large());
            }
            let mut body = response.bytes_stream();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| network(format!("{e:#}")))?;
                size += chunk.len() as u64;
                if size > limit {
                    return Err(too_large());
                }
                hasher.update(&chunk);
                partial.write_all(&chunk)?;
            }
        }
        partial.as_file().sync_all()?;
        let (_, path) = partial.keep().map_err(|e| FetchError::Cache(e.error))?;
        Ok((path, hex::encode(hasher.finalize()), size))
    }
}

fn rule_matches(rule: &MirrorRule, url: &str) -> bool {
    if rule.from.contains("://") {
        url_has_prefix(url, &rule.from)
    } else {
        host_of(url).is_some_and(|host| host.eq_ignore_ascii_case(&rule.from))
    }
}

/// `to` + the part of `url` after `from` (or after the host, for host rules).
fn rewrite(rule: &MirrorRule, url: &str) -> String {
    let host = host_of(url).unwrap_or_default();
    let rest = if rule.from.contains("://") {
        &url[rule.from.len()..]
    } else {
        let after_scheme = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
        &after_scheme[host.len()..]
    };
    let base = rule.to.replace("{originalHost}", host);
    match (base.ends_with('/'), rest.starts_with('/')) {
        (true, true) => format!("{base}{}", &rest[1..]),
        (false, false) if !rest.is_empty() => format!("{base}/{rest}"),
        _ => format!("{base}{rest}"),
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temp = tempfile::NamedTempFile::new_in(dir)?;
    temp.write_all(bytes)?;
    temp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(mirrors: &[(&str, &str)], allow: &[&str]) -> FetchService {
        let config = FetchConfig {
            mirrors: mirrors
                .iter()
                .map(|(from, to)| MirrorRule {
                    from: from.to_string(),
                    to: to.to_string(),
                })
                .collect(),
            allow: allow.iter().map(|s| s.to_string()).collect(),
            ..FetchConfig::default()
        };
        let dir = tempfile::tempdir().expect("tempdir").keep();
        FetchService::new(config, dir).expect("service")
    }

    #[test]
    fn longest_rule_wins_and_host_rules_keep_the_path() {
        let s = service(
            &[
                ("https://a.example/", "http://m1/"),
                ("https://a.example/deep/", "http://m2/{originalHost}/"),
                ("b.example", "http://m3/b"),
            ],
            &[],
        );
        let grant = FetchGrant::default();
        assert_eq!(
            s.resolve("https://a.example/x.tgz", &grant).url_used,
            "http://m1/x.tgz"
        );
        assert_eq!(
            s.resolve("https://a.example/deep/x.tgz", &grant).url_used,
            "http://m2/a.example/x.tgz"
        );
        assert_eq!(
            s.resolve("https://b.example/p/x?y=1", &grant).url_used,
            "http://m3/b/p/x?y=1"
        );
        let miss = s.resolve("https://c.example/x", &grant);
        assert_eq!(miss.url_used, "https://c.example/x");
        assert!(miss.verdict.is_err());
    }

    #[test]
    fn prefixes_respect_boundaries() {
        assert!(url_has_prefix("https://a.com/x", "https://a.com"));
        assert!(!url_has_prefix("https://a.com.evil/x", "https://a.com"));
        assert!(url_has_prefix("https://a.com/dl/x", "https://a.com/dl/"));
    }
}
