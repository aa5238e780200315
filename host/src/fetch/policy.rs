//! The fetch policy: which URL a request becomes, and whether it (and every redirect hop
//! after it) may be reached.
//!
//! Two sources of rules with different trust: the operator's (`fetch.mirrors`, `fetch.allow`,
//! `fetch.pins`; trusted, parsed once at start, a bad entry is an error) and a buildpack's
//! manifest (`[fetch] allow`; untrusted, parsed per request, an entry that does not parse or
//! is not http(s) grants nothing). Only the operator's rules may reach local files (a mirror
//! `to` of `file:`) or loopback, link-local and unspecified addresses.

use super::url_rules::{self, Mirror, Prefix};
use super::{FetchError, FetchGrant};
use crate::config::{FetchConfig, MirrorRule};
use std::collections::{HashMap, HashSet};
use url::Url;

/// The operator's rules, parsed.
pub(crate) struct Rules {
    mirrors: Vec<Mirror>,
    allow: Vec<Prefix>,
    /// Normalised URL (as asked for) → lowercase SHA-256.
    pins: HashMap<String, String>,
    allow_declared: bool,
}

/// Why a resolved URL may be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    Mirror,
    Allow,
    Declared,
}

impl Via {
    pub fn describe(self) -> &'static str {
        match self {
            Via::Mirror => "rewritten to a configured mirror",
            Via::Allow => "on the fetch allowlist",
            Via::Declared => "declared by the buildpack's manifest",
        }
    }
}

/// A request under the rules.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    pub url_used: Url,
    pub rule: Option<MirrorRule>,
    /// The mirror `to` the URL was rewritten beneath (a `file:` one is opened beneath it).
    pub to: Option<Prefix>,
    pub verdict: Result<Via, String>,
}

const RESTRICTED: &str = "it is a loopback, link-local or unspecified address, which only an \
                          operator mirror rule or fetch.allow entry may reach";

fn config_error(entry: impl Into<String>, reason: impl Into<String>) -> FetchError {
    FetchError::Config {
        entry: entry.into(),
        reason: reason.into(),
    }
}

impl Rules {
    pub fn new(config: &FetchConfig) -> Result<Rules, FetchError> {
        let mirrors = config
            .mirrors
            .iter()
            .map(|rule| {
                Mirror::parse(rule).map_err(|reason| {
                    config_error(format!("mirror rule {} -> {}", rule.from, rule.to), reason)
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let allow = config
            .allow
            .iter()
            .map(|raw| {
                let prefix = Prefix::parse(raw)
                    .map_err(|reason| config_error(format!("fetch.allow {raw}"), reason))?;
                if !prefix.is_http() {
                    return Err(config_error(
                        format!("fetch.allow {raw}"),
                        "only http(s) prefixes may be allowed; local files are reached through \
                         a mirror rule's to",
                    ));
                }
                Ok(prefix)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let pins = config
            .pins
            .iter()
            .map(|(raw, digest)| {
                let url = url_rules::parse_requested(raw)
                    .map_err(|reason| config_error(format!("fetch.pins {raw}"), reason))?;
                Ok((url.to_string(), digest.trim().to_ascii_lowercase()))
            })
            .collect::<Result<HashMap<_, _>, FetchError>>()?;
        Ok(Rules {
            mirrors,
            allow,
            pins,
            allow_declared: config.allow_buildpack_declared,
        })
    }

    /// The operator's pin for `requested`, if any.
    pub fn pin(&self, requested: &Url) -> Option<&str> {
        self.pins.get(requested.as_str()).map(String::as_str)
    }

    /// Hosts the operator named as targets (mirror `to`s without `{originalHost}`,
    /// `fetch.allow`): these may resolve to restricted addresses.
    pub fn operator_hosts(&self) -> HashSet<String> {
        self.mirrors
            .iter()
            .filter_map(Mirror::static_to_host)
            .chain(
                self.allow
                    .iter()
                    .filter_map(|p| p.url.host_str().map(str::to_ascii_lowercase)),
            )
            .collect()
    }

    /// Whether `grant`'s manifest declares `url` (the gate before any rule applies).
    pub fn declares(grant: &FetchGrant, url: &Url) -> bool {
        declared_prefixes(grant).any(|p| p.matches(url))
    }

    /// Rewrites `requested` by the most specific mirror rule and decides whether the result
    /// may be reached.
    pub fn resolve(&self, requested: &Url, grant: &FetchGrant) -> Resolved {
        let mirror = self
            .mirrors
            .iter()
            .filter(|m| m.matches(requested))
            .max_by_key(|m| m.specificity());
        if let Some(mirror) = mirror {
            let rule = Some(mirror.rule.clone());
            return match mirror.rewrite(requested) {
                Ok((url_used, to)) => Resolved {
                    url_used,
                    rule,
                    to: Some(to),
                    verdict: Ok(Via::Mirror),
                },
                Err(reason) => Resolved {
                    url_used: requested.clone(),
                    rule,
                    to: None,
                    verdict: Err(reason),
                },
            };
        }
        let verdict =
            if self.allow.iter().any(|p| p.matches(requested)) {
                Ok(Via::Allow)
            } else if self.allow_declared && Rules::declares(grant, requested) {
                if url_rules::targets_restricted_host(requested) {
                    Err(format!("declared by the buildpack, but {RESTRICTED}"))
                } else {
                    Ok(Via::Declared)
                }
            } else if self.allow_declared {
                Err("no mirror rule matches and it is neither on the allowlist nor declared by the \
                 buildpack"
                .to_string())
            } else {
                Err("no mirror rule matches and it is not on the allowlist".to_string())
            };
        Resolved {
            url_used: requested.clone(),
            rule: None,
            to: None,
            verdict,
        }
    }

    /// Whether a redirect to `hop` may be followed for a request of `requested`: it is held to
    /// the whole allowlist (every mirror's `to`, `fetch.allow`, and the manifest's declarations
    /// when those count), never to "the same host".
    pub fn check_hop(&self, hop: &Url, requested: &Url, grant: &FetchGrant) -> Result<(), String> {
        url_rules::check_http_url(hop)?;
        let operator = self
            .mirrors
            .iter()
            .filter_map(|m| m.to_prefix(requested).ok())
            .chain(self.allow.iter().cloned())
            .any(|p| p.matches(hop));
        if operator {
            return Ok(());
        }
        if self.allow_declared && Rules::declares(grant, hop) {
            if url_rules::targets_restricted_host(hop) {
                return Err(format!("declared by the buildpack, but {RESTRICTED}"));
            }
            return Ok(());
        }
        Err("it is beneath no mirror target, fetch.allow entry or declared prefix".into())
    }
}

/// A manifest's declarations that can grant anything: http(s) prefixes that parse. A `file:`
/// or other declaration is ignored.
fn declared_prefixes(grant: &FetchGrant) -> impl Iterator<Item = Prefix> + '_ {
    grant
        .declared
        .iter()
        .filter_map(|raw| Prefix::parse(raw).ok())
        .filter(Prefix::is_http)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(mirrors: &[(&str, &str)], allow: &[&str]) -> Rules {
        Rules::new(&super::super::test_config(mirrors, allow)).expect("rules")
    }

    fn grant(declared: &[&str]) -> FetchGrant {
        FetchGrant {
            buildpack: "bp".into(),
            declared: declared.iter().map(|s| s.to_string()).collect(),
            any_request: false,
        }
    }

    fn url(s: &str) -> Url {
        Url::parse(s).expect("url")
    }

    #[test]
    fn declared_file_and_loopback_prefixes_grant_nothing() {
        let r = rules(&[], &[]);
        let g = grant(&["file:///", "http://127.0.0.1:9/", "https://ok.example/"]);
        assert!(!Rules::declares(&g, &url("file:///etc/hostname")));
        let loopback = r.resolve(&url("http://127.0.0.1:9/x"), &g);
        assert!(
            loopback
                .verdict
                .as_ref()
                .is_err_and(|e| e.contains("loopback")),
            "{:?}",
            loopback.verdict
        );
        assert_eq!(
            r.resolve(&url("https://ok.example/x"), &g).verdict,
            Ok(Via::Declared)
        );
        // The operator may allow the same loopback URL.
        let r = rules(&[], &["http://127.0.0.1:9/"]);
        assert_eq!(
            r.resolve(&url("http://127.0.0.1:9/x"), &g).verdict,
            Ok(Via::Allow)
        );
    }

    #[test]
    fn redirect_hops_are_held_to_the_whole_allowlist() {
        let r = rules(
            &[("https://up.example/dl/", "http://127.0.0.1:8000/m/")],
            &["https://tools.example/t/"],
        );
        let requested = url("https://up.example/dl/x");
        let g = grant(&["https://up.example/dl/", "https://cdn.example/"]);
        for ok in [
            "http://127.0.0.1:8000/m/other",
            "https://tools.example/t/x",
            "https://cdn.example/blob",
        ] {
            assert!(r.check_hop(&url(ok), &requested, &g).is_ok(), "{ok}");
        }
        for bad in [
            "http://127.0.0.1:8001/m/x",
            "http://127.0.0.1:8000/secret",
            "http://127.0.0.1:8000/mx",
            "file:///etc/passwd",
            "https://tools.example/other",
            "https://user:pw@cdn.example/x",
            "https://cdn.example/..%2fx",
        ] {
            assert!(r.check_hop(&url(bad), &requested, &g).is_err(), "{bad}");
        }
        let g = grant(&["http://localhost:8000/"]);
        let error = r
            .check_hop(&url("http://localhost:8000/m/x"), &requested, &g)
            .expect_err("declared loopback");
        assert!(error.contains("loopback"), "{error}");
    }

    #[test]
    fn longest_rule_wins_and_bad_operator_entries_are_errors() {
        let r = rules(
            &[
                ("https://a.example/", "http://m1/"),
                ("https://a.example/deep/", "http://m2/{originalHost}/"),
                ("a.example", "http://m3/"),
            ],
            &[],
        );
        let g = grant(&[]);
        let used = |s: &str| r.resolve(&url(s), &g).url_used.to_string();
        assert_eq!(used("https://a.example/x"), "http://m1/x");
        assert_eq!(used("https://a.example/deep/x"), "http://m2/a.example/x");
        assert_eq!(used("http://a.example/x"), "http://m3/x");
        for config in [
            FetchConfig {
                allow: vec!["file:///".into()],
                ..FetchConfig::default()
            },
            FetchConfig {
                allow: vec!["https://a.example/?q".into()],
                ..FetchConfig::default()
            },
            FetchConfig {
                pins: [("file:///x".to_string(), "0".repeat(64))].into(),
                ..FetchConfig::default()
            },
        ] {
            assert!(matches!(
                Rules::new(&config),
                Err(FetchError::Config { .. })
            ));
        }
    }
}
