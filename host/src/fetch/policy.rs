//! The fetch policy: which URL a request becomes, and whether it (and every redirect hop
//! after it) may be reached.
//!
//! Two sources of rules with different trust: the operator's (`fetch.mirrors`, `fetch.allow`,
//! `fetch.pins`; trusted, parsed once at start, a bad entry is an error) and a buildpack's
//! manifest (`[fetch] allow`; untrusted, parsed per request, an entry that does not parse or
//! is not http(s) grants nothing). Only the operator's rules may reach local files (a mirror
//! `to` of `file:`) or loopback, link-local and unspecified addresses.

use super::url_rules::{self, Mirror, Prefix, PrefixError, RewriteError, RuleError, UrlRefused};
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
    pub verdict: Result<Via, Refusal>,
}

const RESTRICTED: &str = "it is a loopback, link-local or unspecified address, which only an \
                          operator mirror rule or fetch.allow entry may reach";

/// Why the rules do not let a requested URL be reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The most specific mirror rule matched but could not rewrite it.
    #[error(transparent)]
    Rewrite(#[from] RewriteError),
    #[error("declared by the buildpack, but {RESTRICTED}")]
    DeclaredRestricted,
    /// Nothing covers it (buildpack declarations do not count under this config).
    #[error("no mirror rule matches and it is not on the allowlist")]
    NotAllowed,
    /// Nothing covers it, declarations included.
    #[error(
        "no mirror rule matches and it is neither on the allowlist nor declared by the buildpack"
    )]
    NotAllowedNorDeclared,
}

/// Why a redirect hop may not be followed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HopRefused {
    #[error(transparent)]
    Url(#[from] UrlRefused),
    #[error("declared by the buildpack, but {RESTRICTED}")]
    DeclaredRestricted,
    #[error("it is beneath no mirror target, fetch.allow entry or declared prefix")]
    NotBeneath,
}

/// Why an operator's fetch rule is refused at start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigReason {
    #[error(transparent)]
    Mirror(#[from] RuleError),
    #[error(transparent)]
    Allow(#[from] PrefixError),
    #[error(
        "only http(s) prefixes may be allowed; local files are reached through a mirror rule's to"
    )]
    AllowNotHttp,
    #[error(transparent)]
    Pin(#[from] UrlRefused),
}

fn config_error(entry: String, reason: impl Into<ConfigReason>) -> FetchError {
    FetchError::Config {
        entry,
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
                        ConfigReason::AllowNotHttp,
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
                    verdict: Err(reason.into()),
                },
            };
        }
        let verdict = if self.allow.iter().any(|p| p.matches(requested)) {
            Ok(Via::Allow)
        } else if self.allow_declared && Rules::declares(grant, requested) {
            if url_rules::targets_restricted_host(requested) {
                Err(Refusal::DeclaredRestricted)
            } else {
                Ok(Via::Declared)
            }
        } else if self.allow_declared {
            Err(Refusal::NotAllowedNorDeclared)
        } else {
            Err(Refusal::NotAllowed)
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
    pub fn check_hop(
        &self,
        hop: &Url,
        requested: &Url,
        grant: &FetchGrant,
    ) -> Result<(), HopRefused> {
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
                return Err(HopRefused::DeclaredRestricted);
            }
            return Ok(());
        }
        Err(HopRefused::NotBeneath)
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
            record: None,
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
        assert_eq!(loopback.verdict, Err(Refusal::DeclaredRestricted));
        assert!(
            Refusal::DeclaredRestricted.to_string().contains("loopback"),
            "the refusal says why"
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
        assert_eq!(error, HopRefused::DeclaredRestricted);
        assert!(error.to_string().contains("loopback"), "{error}");
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

    #[test]
    fn refusals_say_which_rule_is_missing() {
        let g = grant(&["https://declared.example/"]);
        let strict = Rules::new(&FetchConfig {
            allow_buildpack_declared: false,
            ..super::super::test_config(&[], &["https://allowed.example/"])
        })
        .expect("rules");
        let verdict = |r: &Rules, s: &str| r.resolve(&url(s), &g).verdict;
        assert_eq!(
            verdict(&strict, "https://allowed.example/x"),
            Ok(Via::Allow)
        );
        assert_eq!(
            verdict(&strict, "https://declared.example/x"),
            Err(Refusal::NotAllowed),
            "declarations do not count unless the operator says so"
        );
        let lenient = rules(&[], &[]);
        assert_eq!(
            verdict(&lenient, "https://declared.example/x"),
            Ok(Via::Declared)
        );
        assert_eq!(
            verdict(&lenient, "https://other.example/x"),
            Err(Refusal::NotAllowedNorDeclared)
        );
        // A matching rule whose rewrite leaves its `to` is refused by that rule.
        let r = rules(&[("up.example", "http://m/%2e{originalHost}/")], &[]);
        let resolved = r.resolve(&url("https://up.example/x"), &g);
        assert!(resolved.rule.is_some());
        assert!(
            matches!(
                resolved.verdict,
                Err(Refusal::Rewrite(RewriteError::Path { .. }))
            ),
            "{:?}",
            resolved.verdict
        );
    }

    #[test]
    fn bad_operator_entries_say_which_and_why() {
        let config_error = |config: FetchConfig| match Rules::new(&config) {
            Err(FetchError::Config { entry, reason }) => (entry, reason),
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("accepted"),
        };
        let (entry, reason) = config_error(FetchConfig {
            allow: vec!["file:///srv/".into()],
            ..FetchConfig::default()
        });
        assert_eq!(entry, "fetch.allow file:///srv/");
        assert_eq!(reason, ConfigReason::AllowNotHttp);
        let (entry, reason) = config_error(FetchConfig {
            pins: [("ftp://h/x".to_string(), "0".repeat(64))].into(),
            ..FetchConfig::default()
        });
        assert_eq!(entry, "fetch.pins ftp://h/x");
        assert_eq!(
            reason,
            ConfigReason::Pin(UrlRefused::Scheme {
                scheme: "ftp".into()
            })
        );
        let (entry, reason) = config_error(super::super::test_config(
            &[("https://up.example/", "gopher://m/")],
            &[],
        ));
        assert_eq!(entry, "mirror rule https://up.example/ -> gopher://m/");
        assert!(
            matches!(
                reason,
                ConfigReason::Mirror(RuleError::To(PrefixError::Scheme { .. }))
            ),
            "{reason:?}"
        );
        assert_eq!(
            reason.to_string(),
            "to: scheme gopher: is not http, https or file"
        );
    }
}
