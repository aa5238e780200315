//! URLs as structures, not strings: parsing, normalisation, prefix matching and mirror
//! rewriting.
//!
//! Every rule of the fetch service (mirror `from`/`to`, `fetch.allow`, what a manifest
//! declares, `fetch.pins`) and every URL it is asked for goes through [`url::Url`] (WHATWG
//! parsing) before anything is compared. Matching a raw string and letting the HTTP client
//! normalise afterwards is how `https://mirror/dl/../../secret` used to pass a `/dl/` prefix
//! and then reach `/secret`: here `..`, `%2e%2e` and `\` are resolved first, and what WHATWG
//! leaves encoded (`%2e`, `%2f`, `%5c` inside a segment, which servers may decode and resolve
//! themselves) is refused outright. Everything in this file is a pure function.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use url::{Host, Url};

/// The placeholder a mirror rule's `to` may contain.
pub(crate) const ORIGINAL_HOST: &str = "{originalHost}";

/// Why a URL's host is not one a rule or a request may name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("host {host} is not a valid DNS name")]
    NotDnsName { host: String },
    #[error("it has no host")]
    Missing,
}

/// A character that WHATWG parsing leaves percent-encoded in a path segment, and that a
/// server decoding it could turn into a `..` segment or a separator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoded {
    Dot,
    Slash,
    Backslash,
    Nul,
}

impl Encoded {
    const ALL: [Encoded; 4] = [
        Encoded::Dot,
        Encoded::Slash,
        Encoded::Backslash,
        Encoded::Nul,
    ];

    /// The escape, lowercase (paths are compared lowercased).
    pub fn escape(self) -> &'static str {
        match self {
            Encoded::Dot => "%2e",
            Encoded::Slash => "%2f",
            Encoded::Backslash => "%5c",
            Encoded::Nul => "%00",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Encoded::Dot => "an encoded dot",
            Encoded::Slash => "an encoded slash",
            Encoded::Backslash => "an encoded backslash",
            Encoded::Nul => "an encoded NUL",
        }
    }
}

/// Why a normalised URL path is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("its path {path} contains {} ({})", .encoded.describe(), .encoded.escape())]
    Encoded { path: String, encoded: Encoded },
    #[error("its path {path} contains a backslash")]
    Backslash { path: String },
}

/// Why a URL may not be requested (by a buildpack, or as a redirect hop).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefused {
    #[error("not a valid URL ({0})")]
    Invalid(#[source] url::ParseError),
    #[error(
        "file: URLs may not be requested (only an operator's mirror rule may point at local files)"
    )]
    File,
    #[error("scheme {scheme}: is not http or https")]
    Scheme { scheme: String },
    #[error("credentials (user:password@) are not allowed in a requested URL")]
    Credentials,
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Path(#[from] PathError),
}

/// Why a URL prefix (of a mirror rule, `fetch.allow` or a manifest) does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    #[error("not a valid URL ({0})")]
    Invalid(#[source] url::ParseError),
    #[error("scheme {scheme}: is not http, https or file")]
    Scheme { scheme: String },
    #[error("a file: URL must name a local path (file:///...)")]
    RemoteFile,
    #[error("a URL prefix may not have a query or fragment")]
    QueryOrFragment,
    #[error(transparent)]
    Host(#[from] HostError),
}

/// Why an operator's mirror rule is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("from: {0}")]
    From(#[source] PrefixError),
    #[error("from: only http(s) URLs are ever requested")]
    FromNotHttp,
    #[error("from: not a valid host ({0})")]
    FromInvalidHost(#[source] url::ParseError),
    #[error("from: a host rule is a bare host[:port]")]
    FromNotBareHost,
    #[error("from: {0}")]
    FromHost(#[source] HostError),
    #[error("to: {0}")]
    To(#[source] PrefixError),
}

/// Why a mirror rule could not rewrite a URL it matched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    /// `to` with the request's host in place of `{originalHost}` is not a prefix.
    #[error(transparent)]
    To(#[from] PrefixError),
    #[error("the rewritten URL {joined} is not valid ({source})")]
    Invalid {
        joined: String,
        source: url::ParseError,
    },
    // The URLs as text: an error the size of two `Url`s would burden every `Result` that
    // carries it, and these are only ever shown.
    #[error("the rewritten URL {used}: {source}")]
    Path { used: String, source: PathError },
    #[error("the rewritten URL {used} is not beneath the mirror's {to}")]
    NotBeneath { used: String, to: String },
}

/// Parses a URL a buildpack asked for: http(s) only, a plain host, no credentials, and a path
/// that stays what it looks like. The fragment is dropped (it is never sent).
pub(crate) fn parse_requested(raw: &str) -> Result<Url, UrlRefused> {
    let mut url = Url::parse(raw).map_err(UrlRefused::Invalid)?;
    check_http_url(&url)?;
    url.set_fragment(None);
    Ok(url)
}

/// The checks of [`parse_requested`] on a URL parsed elsewhere (a redirect's `Location`).
pub(crate) fn check_http_url(url: &Url) -> Result<(), UrlRefused> {
    match url.scheme() {
        "http" | "https" => {}
        "file" => return Err(UrlRefused::File),
        other => {
            return Err(UrlRefused::Scheme {
                scheme: other.to_string(),
            });
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlRefused::Credentials);
    }
    check_host(url)?;
    Ok(check_path(url.path())?)
}

/// Refuses a normalised path that still holds an encoded dot, slash, backslash or NUL: after
/// WHATWG parsing those can only be the parts a server might decode into `..` or `/` later.
pub(crate) fn check_path(path: &str) -> Result<(), PathError> {
    let lower = path.to_ascii_lowercase();
    if let Some(encoded) = Encoded::ALL
        .into_iter()
        .find(|e| lower.contains(e.escape()))
    {
        return Err(PathError::Encoded {
            path: path.to_string(),
            encoded,
        });
    }
    if path.contains('\\') {
        return Err(PathError::Backslash {
            path: path.to_string(),
        });
    }
    Ok(())
}

/// `text` with control characters (terminal escapes among them) spelled out, for messages
/// that quote what a server or a buildpack sent.
pub(crate) fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The host of an http(s) URL must be an IP address or a DNS name of valid labels (WHATWG
/// accepts `..` or `a..b` as domains; they are never a real host, and `..` substituted for
/// `{originalHost}` would climb a mirror path).
fn check_host(url: &Url) -> Result<(), HostError> {
    match url.host() {
        Some(Host::Ipv4(_) | Host::Ipv6(_)) => Ok(()),
        Some(Host::Domain(name)) if valid_dns_name(name) => Ok(()),
        Some(Host::Domain(name)) => Err(HostError::NotDnsName {
            host: name.to_string(),
        }),
        None => Err(HostError::Missing),
    }
}

/// A DNS name of at most 253 bytes whose labels are 1–63 letters, digits, `-` or `_`, not
/// starting or ending with `-`. No trailing dot.
pub fn valid_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// A host as it may appear in a CONNECT request or a URL: a DNS name ([`valid_dns_name`]) or
/// an IP literal (IPv6 with or without brackets).
pub fn valid_host(host: &str) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<IpAddr>().is_ok() || valid_dns_name(host)
}

/// Addresses no buildpack may reach on its own: loopback, link-local and unspecified (the
/// agent's own services, cloud metadata endpoints). IPv4-mapped IPv6 forms count too.
pub fn restricted_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => restricted_v4(v4),
        IpAddr::V6(v6) => restricted_v6(v6),
    }
}

fn restricted_v4(ip: Ipv4Addr) -> bool {
    // 0.0.0.0/8 as a whole: Linux connects 0.0.0.0 to the local host.
    ip.is_loopback() || ip.is_link_local() || ip.octets()[0] == 0
}

fn restricted_v6(ip: Ipv6Addr) -> bool {
    ip.is_loopback()
        || ip.is_unspecified()
        || (ip.segments()[0] & 0xffc0) == 0xfe80
        || ip.to_ipv4_mapped().is_some_and(restricted_v4)
}

/// Whether `url` targets a restricted address by its literal host (`localhost` included;
/// names are guarded again at resolution time).
pub(crate) fn targets_restricted_host(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => restricted_v4(ip),
        Some(Host::Ipv6(ip)) => restricted_v6(ip),
        Some(Host::Domain(name)) => {
            let name = name.trim_end_matches('.');
            name == "localhost" || name.ends_with(".localhost")
        }
        None => false,
    }
}

/// `host[:port]` of `url` as written after normalisation (the port only when not the
/// scheme's default): what `{originalHost}` stands for and what a host-only rule compares.
pub(crate) fn authority(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    }
}

/// A URL prefix from configuration or a manifest, parsed and normalised once.
#[derive(Debug, Clone)]
pub(crate) struct Prefix {
    pub url: Url,
}

impl Prefix {
    /// Parses `raw`: http(s) with a valid host, or `file:` with an absolute local path. No
    /// query or fragment (a prefix names a place, not a request).
    pub fn parse(raw: &str) -> Result<Prefix, PrefixError> {
        let url = Url::parse(raw.trim()).map_err(PrefixError::Invalid)?;
        match url.scheme() {
            "http" | "https" => check_host(&url)?,
            "file" => {
                if url
                    .host_str()
                    .is_some_and(|h| !h.is_empty() && h != "localhost")
                {
                    return Err(PrefixError::RemoteFile);
                }
            }
            other => {
                return Err(PrefixError::Scheme {
                    scheme: other.to_string(),
                });
            }
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(PrefixError::QueryOrFragment);
        }
        Ok(Prefix { url })
    }

    pub fn is_http(&self) -> bool {
        matches!(self.url.scheme(), "http" | "https")
    }

    /// Same scheme, host (case-insensitive: parsing lowercases names) and port (with the
    /// scheme's default), and a path at or beneath the prefix's on a segment boundary:
    /// `/dl` covers `/dl` and `/dl/x` but not `/dlx`; `/dl/` covers what is beneath it.
    pub fn matches(&self, url: &Url) -> bool {
        self.url.scheme() == url.scheme()
            && same_host(&self.url, url)
            && self.url.port_or_known_default() == url.port_or_known_default()
            && path_under(url.path(), self.url.path())
    }

    /// The part of `url`'s path after this prefix's path (call only when it
    /// [`matches`](Self::matches)).
    pub fn remainder<'a>(&self, url: &'a Url) -> &'a str {
        url.path().get(self.url.path().len()..).unwrap_or_default()
    }

    pub fn path_len(&self) -> usize {
        self.url.path().len()
    }
}

fn same_host(a: &Url, b: &Url) -> bool {
    match (a.host(), b.host()) {
        (Some(Host::Domain(x)), Some(Host::Domain(y))) => x.eq_ignore_ascii_case(y),
        // `file:///x` has no host and `file://localhost/x` names the same place.
        (None | Some(Host::Domain("localhost")), None | Some(Host::Domain("localhost")))
            if a.scheme() == "file" =>
        {
            true
        }
        (x, y) => x == y,
    }
}

/// `path` is `prefix` or beneath it, on a segment boundary.
pub(crate) fn path_under(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// What a mirror rule's `from` matches.
#[derive(Debug, Clone)]
pub(crate) enum MatchOn {
    /// A URL prefix.
    Prefix(Prefix),
    /// A bare `host[:port]`: every http(s) URL with that authority; path and query are kept.
    Authority(String),
}

/// An operator mirror rule, parsed.
#[derive(Debug, Clone)]
pub(crate) struct Mirror {
    pub rule: crate::config::MirrorRule,
    pub from: MatchOn,
}

impl Mirror {
    /// Parses and checks a rule: `from` is an http(s) prefix or a `host[:port]`; `to` (with a
    /// sample host in place of `{originalHost}`) is an http(s) or `file:` prefix.
    pub fn parse(rule: &crate::config::MirrorRule) -> Result<Mirror, RuleError> {
        let from = if rule.from.contains("://") {
            let prefix = Prefix::parse(&rule.from).map_err(RuleError::From)?;
            if !prefix.is_http() {
                return Err(RuleError::FromNotHttp);
            }
            MatchOn::Prefix(prefix)
        } else {
            // Parse the bare authority the way a URL's would be, to normalise its case and
            // default port the same way.
            let url = Url::parse(&format!("http://{}/", rule.from.trim()))
                .map_err(RuleError::FromInvalidHost)?;
            if url.path() != "/" || !url.username().is_empty() || url.query().is_some() {
                return Err(RuleError::FromNotBareHost);
            }
            check_host(&url).map_err(RuleError::FromHost)?;
            MatchOn::Authority(authority(&url))
        };
        Prefix::parse(&rule.to.replace(ORIGINAL_HOST, "original.example"))
            .map_err(RuleError::To)?;
        Ok(Mirror {
            rule: rule.clone(),
            from,
        })
    }

    pub fn matches(&self, url: &Url) -> bool {
        match &self.from {
            MatchOn::Prefix(prefix) => prefix.matches(url),
            MatchOn::Authority(auth) => {
                matches!(url.scheme(), "http" | "https") && authority(url) == *auth
            }
        }
    }

    /// Which of several matching rules wins: a URL prefix over a bare host, then the longer
    /// path.
    pub fn specificity(&self) -> (bool, usize) {
        match &self.from {
            MatchOn::Prefix(prefix) => (true, prefix.path_len()),
            MatchOn::Authority(_) => (false, 0),
        }
    }

    /// This rule's `to` for a request of `original`, `{originalHost}` filled in.
    pub fn to_prefix(&self, original: &Url) -> Result<Prefix, PrefixError> {
        Prefix::parse(&self.rule.to.replace(ORIGINAL_HOST, &authority(original)))
    }

    /// The host of `to`, when it does not depend on the request.
    pub fn static_to_host(&self) -> Option<String> {
        if self.rule.to.contains(ORIGINAL_HOST) {
            return None;
        }
        let prefix = Prefix::parse(&self.rule.to).ok()?;
        prefix.url.host_str().map(str::to_ascii_lowercase)
    }

    /// `url` rewritten under this rule: `to` + what follows `from` + the query, parsed again
    /// and checked to be beneath `to`. Returns the URL and the `to` it must stay under.
    pub fn rewrite(&self, url: &Url) -> Result<(Url, Prefix), RewriteError> {
        let to = self.to_prefix(url)?;
        let rest = match &self.from {
            MatchOn::Prefix(prefix) => prefix.remainder(url),
            MatchOn::Authority(_) => url.path(),
        };
        let mut joined = join(to.url.as_str(), rest);
        if let Some(query) = url.query() {
            joined.push('?');
            joined.push_str(query);
        }
        let used = match Url::parse(&joined) {
            Ok(used) => used,
            Err(source) => return Err(RewriteError::Invalid { joined, source }),
        };
        if let Err(source) = check_path(used.path()) {
            return Err(RewriteError::Path {
                used: used.into(),
                source,
            });
        }
        if !to.matches(&used) {
            return Err(RewriteError::NotBeneath {
                used: used.into(),
                to: to.url.into(),
            });
        }
        Ok((used, to))
    }
}

/// `base` + `rest` with exactly one `/` between them when both have or lack one.
fn join(base: &str, rest: &str) -> String {
    match (base.ends_with('/'), rest.strip_prefix('/')) {
        (true, Some(stripped)) => format!("{base}{stripped}"),
        (false, None) if !rest.is_empty() => format!("{base}/{rest}"),
        _ => format!("{base}{rest}"),
    }
}

#[cfg(test)]
#[path = "url_rules_tests.rs"]
mod tests;
