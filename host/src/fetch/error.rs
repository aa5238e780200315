//! What the fetch service says when it refuses or fails. Every message names the URL; the
//! refusal or failure underneath is a type of its own, kept as the error's source. The texts
//! reach staging logs, a guest's fetch error and the proxy's answers, and read as they
//! always have.

use super::policy::{ConfigReason, HopRefused, Refusal};
use super::transfer::{MAX_REDIRECTS, describe_error};
use super::url_rules::UrlRefused;
use crate::config::MirrorRule;
use std::path::PathBuf;
use url::Url;

/// Why a download was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url} may not be fetched: {reason}")]
    BadUrl {
        url: String,
        #[source]
        reason: UrlRefused,
    },
    #[error("buildpack {buildpack} may not download {url}: its manifest allows only {declared:?}")]
    NotDeclared {
        buildpack: String,
        url: String,
        declared: Vec<String>,
    },
    /// The denial is boxed: it holds URLs, and every `Result` carrying a `FetchError` would
    /// be its size otherwise.
    #[error("download of {url} (as {url_used}) denied: {reason}")]
    Denied {
        url: String,
        url_used: String,
        #[source]
        reason: Box<Denial>,
    },
    /// `fetch.require_pins` is on and nothing pins this URL's digest.
    #[error(
        "download of {url} refused: fetch.require_pins is on and no SHA-256 is pinned for it; \
         pin it in the buildpack's manifest, or add it under fetch.pins \
         (`dea fetch --pin {url}` prints the line)"
    )]
    Unpinned { url: String },
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
    /// Tried again (see `FetchService::download_with_retries`).
    #[error("downloading {url_used} failed: {cause}")]
    Network {
        url_used: String,
        #[source]
        cause: NetworkFailure,
    },
    #[error("{url_used} is larger than the download limit of {limit_mb} MiB")]
    TooLarge { url_used: String, limit_mb: u64 },
    /// An operator rule that does not parse or could never be safe (found at start).
    #[error("fetch configuration: {entry}: {reason}")]
    Config {
        entry: String,
        #[source]
        reason: ConfigReason,
    },
    #[error("building the fetch service's HTTP client")]
    Client(#[source] crate::download::DownloadError),
    #[error("download cache i/o error: {0}")]
    Cache(#[from] std::io::Error),
}

/// Why a request that parsed, or one of its redirect hops, may not be reached.
#[derive(Debug, thiserror::Error)]
pub enum Denial {
    /// The rules refuse it and no mirror rule matched it.
    #[error(transparent)]
    Refused(Refusal),
    /// The mirror rule that matched could not rewrite it.
    #[error("{refusal} (rule {} -> {})", rule.from, rule.to)]
    Rule {
        #[source]
        refusal: Refusal,
        rule: MirrorRule,
    },
    /// `location` is the header as sent, control characters escaped.
    #[error("redirect from {from} to {location} refused: not a valid URL ({source})")]
    BadRedirect {
        from: Url,
        location: String,
        source: url::ParseError,
    },
    #[error("more than {MAX_REDIRECTS} redirects (the last to {last})")]
    TooManyRedirects { last: Url },
    #[error("redirect from {from} to {to} refused: {source}")]
    Hop {
        from: Url,
        to: Url,
        source: HopRefused,
    },
    #[error("file: URLs are only read beneath a mirror rule's to")]
    FileWithoutMirror,
    #[error("not a local file URL")]
    NotLocalFile,
    #[error("not beneath {}", root.display())]
    NotBeneathMirror { root: PathBuf },
    #[error(
        "the path leads out of the mirror directory {} (through .. or a symbolic link)",
        root.display()
    )]
    OutsideMirror { root: PathBuf },
    #[error("it is not a regular file but {kind}")]
    NotRegular { kind: &'static str },
}

/// What broke between the agent and a server: worth another try.
#[derive(Debug, thiserror::Error)]
pub enum NetworkFailure {
    /// A 5xx from `url` (a redirect hop, perhaps, not the URL first asked for).
    #[error("{url} answered HTTP {status}")]
    ServerError {
        url: Url,
        status: reqwest::StatusCode,
    },
    /// The whole chain on one line, control characters escaped: reqwest's own top-level
    /// text hides the reason, and a server's words must not reach a terminal raw.
    #[error("{}", describe_error(.0))]
    Request(#[source] reqwest::Error),
    /// Reading an operator's `file:` mirror.
    #[error("{}", describe_error(.0))]
    Io(#[source] std::io::Error),
}

/// Why `dea fetch --explain` finds a URL out of reach.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unreachable {
    #[error("not a URL that may be fetched: {0}")]
    Url(#[source] UrlRefused),
    #[error(transparent)]
    Refused(#[from] Refusal),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error;

    fn url(s: &str) -> Url {
        Url::parse(s).expect("test URL")
    }

    fn denied(reason: Denial) -> FetchError {
        FetchError::Denied {
            url: "https://up.example/x".into(),
            url_used: "http://m/x".into(),
            reason: Box::new(reason),
        }
    }

    /// The words guests, staging logs and the proxy's answers carry (tests elsewhere match
    /// parts of them), with the refusal underneath kept as the source.
    #[test]
    fn denials_read_as_before_and_keep_their_refusal() {
        let rule = MirrorRule {
            from: "https://up.example/".into(),
            to: "http://m/".into(),
        };
        let error = denied(Denial::Rule {
            refusal: Refusal::NotAllowed,
            rule,
        });
        assert_eq!(
            error.to_string(),
            "download of https://up.example/x (as http://m/x) denied: no mirror rule matches \
             and it is not on the allowlist (rule https://up.example/ -> http://m/)"
        );
        let denial = error.source().expect("the denial");
        let refusal = denial.source().expect("the refusal");
        assert_eq!(
            refusal.downcast_ref::<Refusal>(),
            Some(&Refusal::NotAllowed)
        );

        let hop = Denial::Hop {
            from: url("http://m/x"),
            to: url("http://127.0.0.1/"),
            source: HopRefused::NotBeneath,
        };
        assert_eq!(
            hop.to_string(),
            "redirect from http://m/x to http://127.0.0.1/ refused: it is beneath no mirror \
             target, fetch.allow entry or declared prefix"
        );
        assert!(
            hop.source()
                .and_then(|e| e.downcast_ref::<HopRefused>())
                .is_some_and(|e| *e == HopRefused::NotBeneath)
        );

        let parse_error = url::Url::parse("http://[::1").expect_err("bad IPv6");
        let bad = Denial::BadRedirect {
            from: url("http://m/x"),
            location: "http://[::1".into(),
            source: parse_error,
        };
        assert_eq!(
            bad.to_string(),
            "redirect from http://m/x to http://[::1 refused: not a valid URL (invalid IPv6 \
             address)"
        );
        assert_eq!(
            Denial::TooManyRedirects {
                last: url("http://m/6")
            }
            .to_string(),
            "more than 5 redirects (the last to http://m/6)"
        );
        assert_eq!(
            Denial::OutsideMirror {
                root: "/srv/mirror".into()
            }
            .to_string(),
            "the path leads out of the mirror directory /srv/mirror (through .. or a symbolic \
             link)"
        );
        assert_eq!(
            Denial::NotRegular { kind: "a FIFO" }.to_string(),
            "it is not a regular file but a FIFO"
        );
    }

    #[test]
    fn network_failures_say_what_broke_and_keep_it() {
        let io = std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "denied \u{1b}[31mred\u{1b}[0m",
        );
        let error = FetchError::Network {
            url_used: "file:///srv/m/x".into(),
            cause: NetworkFailure::Io(io),
        };
        let text = error.to_string();
        assert!(
            text.starts_with("downloading file:///srv/m/x failed: denied "),
            "{text}"
        );
        assert!(
            !text.contains('\u{1b}'),
            "control characters are escaped: {text:?}"
        );
        let io = error
            .source()
            .and_then(Error::source)
            .and_then(|e| e.downcast_ref::<std::io::Error>())
            .expect("the i/o error is kept");
        assert_eq!(io.kind(), std::io::ErrorKind::PermissionDenied);

        let server = NetworkFailure::ServerError {
            url: url("http://m/x"),
            status: reqwest::StatusCode::SERVICE_UNAVAILABLE,
        };
        assert_eq!(
            server.to_string(),
            "http://m/x answered HTTP 503 Service Unavailable"
        );
    }

    #[test]
    fn unreachable_urls_say_whether_the_url_or_the_rules_refused() {
        let bad = Unreachable::Url(UrlRefused::Credentials);
        assert_eq!(
            bad.to_string(),
            "not a URL that may be fetched: credentials (user:password@) are not allowed in a \
             requested URL"
        );
        assert!(bad.source().is_some_and(|e| e.is::<UrlRefused>()));
        assert_eq!(
            Unreachable::from(Refusal::NotAllowedNorDeclared).to_string(),
            "no mirror rule matches and it is neither on the allowlist nor declared by the \
             buildpack"
        );
    }
}
