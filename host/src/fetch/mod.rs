//! The fetch service: the one road from a buildpack to the network.
//!
//! Every download a buildpack asks for comes here. The URL is parsed and normalised first
//! ([`url_rules`]): nothing is ever matched as a string. It is then rewritten by the
//! operator's mirror rules (most specific wins), checked against the allowlist ([`policy`]),
//! served from a content-addressed cache shared by all stagings when the cache may answer,
//! otherwise downloaded with a size cap, timeouts and retries ([`transfer`]; every redirect
//! hop is checked against the same allowlist), and verified against its pinned SHA-256 before
//! anyone sees it. Concurrent requests for one URL share one transfer.
//!
//! The agent runs as root and buildpacks are untrusted, so: a buildpack may only ask for
//! http(s) URLs; only the operator's rules reach local files (a `file:` mirror target, read
//! beneath its directory) or loopback and link-local addresses; names a buildpack chose never
//! resolve to those either.

mod error;
mod policy;
mod record;
mod transfer;
pub(crate) mod url_rules;

pub use error::{Denial, FetchError, NetworkFailure, Unreachable};
pub use policy::{ConfigReason, HopRefused, Refusal};
pub use record::{FetchRecord, FetchRecorder, PinSource, Recording};
pub use url_rules::{
    Encoded, HostError, PathError, PrefixError, RewriteError, RuleError, UrlRefused,
};

use crate::config::{FetchConfig, MirrorRule};
use crate::download::{Downloader, Timeouts};
use backon::{ExponentialBuilder, Retryable};
use parking_lot::Mutex;
use policy::{Rules, Via};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;
use transfer::{Downloaded, GuardedResolver, Limits, Target};
use url_rules::sanitize;

/// How a URL resolves under the current rules (what `dea fetch --explain` prints).
#[derive(Debug, Clone)]
pub struct Resolution {
    pub url: String,
    pub url_used: String,
    /// The mirror rule that rewrote it, if any.
    pub rule: Option<MirrorRule>,
    /// Why the rewritten URL may be reached, or why not.
    pub verdict: Result<&'static str, Unreachable>,
}

/// Who is asking: the buildpack's id and the URL prefixes its manifest declares.
#[derive(Debug, Clone, Default)]
pub struct FetchGrant {
    pub buildpack: String,
    pub declared: Vec<String>,
    /// Classic buildpacks declare nothing and may ask for any URL; what they get is still
    /// decided by the mirror rules and the allowlist alone.
    pub any_request: bool,
    /// Where a staging writes down what this grant fetched (`None`: nowhere, as for
    /// `dea fetch`).
    pub record: Option<Recording>,
}

/// A completed fetch: the verified content in the cache.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub url_used: String,
    pub blob: PathBuf,
    pub sha256: String,
    pub size: u64,
    pub cached: bool,
    /// What `sha256` was verified against, if anything.
    pub pinned: Option<PinSource>,
}

impl Fetched {
    /// The staging-log line for this fetch of `asked`: URL asked for, URL used, bytes and
    /// digest. Not whether the cache answered: the log ships inside the droplet, which must
    /// come out the same whether the bytes were downloaded or already here (the run's
    /// reports say that instead).
    pub fn log_line(&self, asked: &str) -> String {
        format!(
            "fetch {} -> {} ({} bytes, sha256 {})",
            sanitize(asked),
            self.url_used,
            self.size,
            self.sha256
        )
    }
}

/// The fetch service. One per agent; cheap to share behind an `Arc`.
pub struct FetchService {
    config: FetchConfig,
    rules: Rules,
    cache_dir: PathBuf,
    downloader: Downloader,
    inflight: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl FetchService {
    /// A service over `config`'s rules; a rule that does not parse is an error here, not a
    /// surprise at the first download.
    pub fn new(config: FetchConfig, cache_dir: PathBuf) -> Result<FetchService, FetchError> {
        let rules = Rules::new(&config)?;
        std::fs::create_dir_all(cache_dir.join("blobs"))?;
        std::fs::create_dir_all(cache_dir.join("urls"))?;
        std::fs::create_dir_all(cache_dir.join("partial"))?;
        let resolver = Arc::new(GuardedResolver {
            trusted: rules.operator_hosts(),
        });
        // Redirects are followed by hand in `transfer`, each hop checked against the rules;
        // reqwest's own policy could only see the hop, not who asked.
        let builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(resolver)
            .no_proxy();
        let timeout = Duration::from_secs(config.timeout_secs.max(1));
        let timeouts = Timeouts {
            connect: Duration::from_secs(30),
            read: timeout,
            // Each request (one redirect hop), from connecting to its last byte.
            overall: Some(timeout),
        };
        let downloader = Downloader::from_builder(builder, timeouts).map_err(FetchError::Client)?;
        Ok(FetchService {
            config,
            rules,
            cache_dir,
            downloader,
            inflight: Mutex::new(HashMap::new()),
        })
    }

    /// Applies the mirror rules and the allowlist to `url`, without fetching.
    pub fn resolve(&self, url: &str, grant: &FetchGrant) -> Resolution {
        match url_rules::parse_requested(url) {
            Ok(requested) => {
                let resolved = self.rules.resolve(&requested, grant);
                Resolution {
                    url: url.to_string(),
                    url_used: resolved.url_used.to_string(),
                    rule: resolved.rule,
                    verdict: resolved
                        .verdict
                        .map(Via::describe)
                        .map_err(Unreachable::from),
                }
            }
            Err(reason) => Resolution {
                url: url.to_string(),
                url_used: url.to_string(),
                rule: None,
                verdict: Err(Unreachable::Url(reason)),
            },
        }
    }

    /// Fetches `url` for `grant`, verifying `expected_sha256` when given (else the
    /// operator's pin, if any), and writes it down where the grant says.
    pub async fn fetch(
        &self,
        url: &str,
        expected_sha256: Option<&str>,
        grant: &FetchGrant,
    ) -> Result<Fetched, FetchError> {
        let (asked, fetched) = self.fetch_unrecorded(url, expected_sha256, grant).await?;
        // The agent's log carries what the droplet may not: whether the cache answered.
        tracing::info!(
            buildpack = %grant.buildpack,
            url = %asked,
            url_used = %fetched.url_used,
            sha256 = %fetched.sha256,
            size = fetched.size,
            cache_hit = fetched.cached,
            pinned = fetched.pinned.map_or("no", PinSource::as_str),
            "fetched"
        );
        if let Some(recording) = &grant.record {
            recording.to.push(FetchRecord {
                url_asked: asked,
                url_used: fetched.url_used.clone(),
                sha256: fetched.sha256.clone(),
                size: fetched.size,
                buildpack: grant.buildpack.clone(),
                phase: recording.phase.to_string(),
                cached: fetched.cached,
                pinned: fetched.pinned,
            });
        }
        Ok(fetched)
    }

    /// The fetch itself; with the URL as asked for, normalised.
    async fn fetch_unrecorded(
        &self,
        url: &str,
        expected_sha256: Option<&str>,
        grant: &FetchGrant,
    ) -> Result<(String, Fetched), FetchError> {
        let shown = sanitize(url);
        let requested = url_rules::parse_requested(url).map_err(|reason| FetchError::BadUrl {
            url: shown.clone(),
            reason,
        })?;
        if !grant.any_request && !Rules::declares(grant, &requested) {
            return Err(FetchError::NotDeclared {
                buildpack: grant.buildpack.clone(),
                url: shown,
                declared: grant.declared.clone(),
            });
        }
        let resolved = self.rules.resolve(&requested, grant);
        let url_used = resolved.url_used.to_string();
        if let Err(refusal) = resolved.verdict {
            let reason = match resolved.rule {
                Some(rule) => Denial::Rule { refusal, rule },
                None => Denial::Refused(refusal),
            };
            return Err(FetchError::Denied {
                url: shown,
                url_used,
                reason: Box::new(reason),
            });
        }
        let (expected, pinned) = match (expected_sha256, self.rules.pin(&requested)) {
            (Some(digest), _) => (Some(digest), Some(PinSource::Buildpack)),
            (None, Some(digest)) => (Some(digest), Some(PinSource::Operator)),
            (None, None) => (None, None),
        };
        let expected = expected.map(|s| s.trim().to_ascii_lowercase());
        if self.config.require_pins && expected.is_none() {
            return Err(FetchError::Unpinned {
                url: requested.to_string(),
            });
        }
        let asked = requested.to_string();

        // One transfer per URL at a time; later callers find it in the cache.
        let gate = self.gate(&url_used);
        let _guard = gate.lock().await;
        if let Some(hit) = self.cache_lookup(&url_used, expected.as_deref())? {
            return Ok((asked, Fetched { pinned, ..hit }));
        }
        if self.config.offline {
            return Err(FetchError::Offline { url: shown });
        }
        let target = Target {
            requested: &requested,
            url_used: &resolved.url_used,
            to: resolved.to.as_ref(),
            grant,
            rules: &self.rules,
        };
        let (partial, sha256, size) = self.download_with_retries(&target).await?;
        if let Some(expected) = &expected
            && *expected != sha256
        {
            // `partial` is deleted when dropped: nothing unverified stays.
            return Err(FetchError::ChecksumMismatch {
                url: shown,
                url_used,
                expected: expected.clone(),
                actual: sha256,
            });
        }
        partial.as_file().sync_all()?;
        let blob = self.blob_path(&sha256);
        partial
            .persist(&blob)
            .map_err(|e| FetchError::Cache(e.error))?;
        write_atomic(&self.url_index(&url_used), sha256.as_bytes())?;
        // Stay within the cache's size: what buildpacks download is theirs to choose.
        let (blobs, max_bytes) = (self.cache_dir.join("blobs"), self.config.max_cache_mb << 20);
        let keep = blob.clone();
        tokio::task::spawn_blocking(move || evict_oldest(&blobs, max_bytes, &keep));
        Ok((
            asked,
            Fetched {
                url_used,
                blob,
                sha256,
                size,
                cached: false,
                pinned,
            },
        ))
    }

    fn gate(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.inflight.lock();
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

    /// A cache hit for `url_used`: the digest its last download produced, which must equal
    /// the pinned one when there is a pin.
    fn cache_lookup(
        &self,
        url_used: &str,
        expected: Option<&str>,
    ) -> Result<Option<Fetched>, FetchError> {
        let indexed = std::fs::read_to_string(self.url_index(url_used))
            .ok()
            .map(|s| s.trim().to_string());
        let digest = match expected {
            // A pin alone does not make a hit: whoever knows a digest would otherwise get
            // that blob under any URL they may ask for, without the server ever being asked
            // whether the URL exists (and across tenants). The URL must have produced it.
            Some(expected) if indexed.as_deref() == Some(expected) => Some(expected.to_string()),
            // Offline (air-gapped) sites seed the cache by digest and have no server to ask:
            // the digest alone answers there. The pin still guarantees the bytes are exactly
            // the ones pinned, and the operator chose to serve from the cache only.
            Some(expected) if self.config.offline => Some(expected.to_string()),
            Some(_) => None,
            None => indexed,
        };
        // A digest is a file name under blobs/: never anything but 64 hex digits.
        let Some(digest) =
            digest.filter(|d| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()))
        else {
            return Ok(None);
        };
        let blob = self.blob_path(&digest);
        match std::fs::metadata(&blob) {
            Ok(meta) if meta.is_file() => {
                // A hit is a use: eviction takes the least recently used first.
                let _ = std::fs::File::open(&blob)
                    .and_then(|f| f.set_modified(std::time::SystemTime::now()));
                Ok(Some(Fetched {
                    url_used: url_used.to_string(),
                    blob,
                    sha256: digest,
                    size: meta.len(),
                    cached: true,
                    pinned: None,
                }))
            }
            _ => Ok(None),
        }
    }

    /// Up to `fetch.attempts` tries, 250 ms apart and then doubling; only network errors
    /// (a broken connection, a timeout, a 5xx) are tried again.
    async fn download_with_retries(&self, target: &Target<'_>) -> Result<Downloaded, FetchError> {
        let attempts = self.config.attempts.max(1);
        let limits = Limits {
            max_bytes: self.config.max_download_mb << 20,
            limit_mb: self.config.max_download_mb,
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(250))
            .with_factor(2.0)
            .without_max_delay()
            .with_max_times(usize::try_from(attempts - 1).unwrap_or(usize::MAX));
        let mut attempt = 0;
        (|| self.attempt(target, limits))
            .retry(backoff)
            .when(|error| matches!(error, FetchError::Network { .. }))
            .notify(|error, delay| {
                attempt += 1;
                // Plain text, no structured fields: the line reads the same in a terminal, a
                // journal or a log file, and the cause (already escaped) is in it.
                tracing::warn!(
                    "download attempt {attempt} of {attempts} failed, retrying in {delay:?}: \
                     {error}"
                );
            })
            .await
    }

    /// One try, into a fresh partial file (dropped, and so deleted, if the try fails).
    async fn attempt(&self, target: &Target<'_>, limits: Limits) -> Result<Downloaded, FetchError> {
        let partial = tempfile::NamedTempFile::new_in(self.cache_dir.join("partial"))?;
        if target.url_used.scheme() == "file" {
            transfer::download_file(target, limits, partial).await
        } else {
            transfer::download_http(&self.downloader, target, limits, partial).await
        }
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

/// Removes the least recently used blobs until the cache holds at most `max_bytes`. Blobs used
/// in the last ten minutes stay (a staging may be about to read one), and so does `keep`, the
/// one just stored; the cache may then stay over its size until they cool.
fn evict_oldest(blobs: &Path, max_bytes: u64, keep: &Path) {
    const HOT: Duration = Duration::from_secs(600);
    let Ok(entries) = std::fs::read_dir(blobs) else {
        return;
    };
    let mut found: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let meta = entry.metadata().ok()?;
            meta.is_file()
                .then(|| Some((meta.modified().ok()?, meta.len(), entry.path())))?
        })
        .collect();
    let mut total: u64 = found.iter().map(|(_, len, _)| len).sum();
    if total <= max_bytes {
        return;
    }
    found.sort();
    for (used, len, path) in found {
        if total <= max_bytes {
            break;
        }
        let hot = used.elapsed().is_ok_and(|age| age < HOT);
        if hot || path == keep {
            continue;
        }
        if std::fs::remove_file(&path).is_ok() {
            total = total.saturating_sub(len);
        }
    }
}

/// A fetch config with these mirror rules and allowlist, for the unit tests here.
#[cfg(test)]
pub(crate) fn test_config(mirrors: &[(&str, &str)], allow: &[&str]) -> FetchConfig {
    FetchConfig {
        mirrors: mirrors
            .iter()
            .map(|(from, to)| MirrorRule {
                from: from.to_string(),
                to: to.to_string(),
            })
            .collect(),
        allow: allow.iter().map(|s| s.to_string()).collect(),
        ..FetchConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(mirrors: &[(&str, &str)], allow: &[&str]) -> FetchService {
        let config = test_config(mirrors, allow);
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
    fn resolution_is_of_the_normalised_url() {
        let s = service(&[("https://a.example/dl/", "http://m1/m/")], &[]);
        let grant = FetchGrant::default();
        let climbed = s.resolve("https://a.example/dl/../../secret", &grant);
        assert_eq!(climbed.url_used, "https://a.example/secret");
        assert!(climbed.rule.is_none());
        assert!(climbed.verdict.is_err());
        let encoded = s.resolve("https://a.example/dl/..%2fsecret", &grant);
        assert!(
            matches!(
                &encoded.verdict,
                Err(Unreachable::Url(UrlRefused::Path(PathError::Encoded {
                    encoded: Encoded::Slash,
                    ..
                })))
            ),
            "{:?}",
            encoded.verdict
        );
    }

    #[test]
    fn the_cache_evicts_the_least_recently_used_cold_blobs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let day = Duration::from_secs(86_400);
        let now = std::time::SystemTime::now();
        let blob = |name: &str, age: Duration| {
            let path = dir.path().join(name);
            std::fs::write(&path, vec![0u8; 1000]).expect("blob");
            let file = std::fs::File::options()
                .append(true)
                .open(&path)
                .expect("open");
            file.set_modified(now - age).expect("mtime");
            path
        };
        let oldest = blob("oldest", 3 * day);
        let old = blob("old", 2 * day);
        let kept = blob("kept", 4 * day);
        let hot = blob("hot", Duration::from_secs(1));
        evict_oldest(dir.path(), 2_500, &kept);
        assert!(!oldest.exists(), "the least recently used goes first");
        assert!(!old.exists(), "then the next, until under the size");
        assert!(kept.exists() && hot.exists());
    }

    #[tokio::test]
    async fn network_errors_are_retried_with_back_off_and_refusals_are_not() {
        use crate::download::test_server::{ok, serve, status};
        let server = serve(|path, n| match (path, n) {
            ("/flaky.tgz", 0 | 1) => status("503 Service Unavailable", ""),
            ("/flaky.tgz", _) => ok(b"content"),
            _ => status("404 Not Found", ""),
        })
        .await;
        let base = server.url("/");
        let config = FetchConfig {
            attempts: 3,
            ..test_config(&[], &[&base])
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let service = FetchService::new(config, dir.path().to_path_buf()).expect("service");
        let grant = FetchGrant {
            any_request: true,
            ..FetchGrant::default()
        };
        let started = std::time::Instant::now();
        let fetched = service
            .fetch(&server.url("/flaky.tgz"), None, &grant)
            .await
            .expect("the third attempt succeeds");
        assert_eq!(server.hits(), 3);
        // 250 ms, then 500 ms.
        assert!(started.elapsed() >= Duration::from_millis(750));
        assert_eq!(fetched.size, 7);
        assert_eq!(fetched.sha256, hex::encode(Sha256::digest(b"content")));

        let error = service
            .fetch(&server.url("/missing.tgz"), None, &grant)
            .await
            .expect_err("404");
        assert!(
            matches!(error, FetchError::Status { status: 404, .. }),
            "{error:?}"
        );
        assert_eq!(server.hits(), 4, "a 404 is not asked again");
    }

    #[test]
    fn bad_operator_rules_fail_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = FetchConfig {
            allow: vec!["file:///etc/".into()],
            ..FetchConfig::default()
        };
        let error = FetchService::new(config, dir.path().to_path_buf())
            .err()
            .expect("a file: allow entry is refused");
        assert!(
            matches!(
                &error,
                FetchError::Config { entry, reason: ConfigReason::AllowNotHttp }
                    if entry == "fetch.allow file:///etc/"
            ),
            "{error:?}"
        );
    }
}
