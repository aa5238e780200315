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

/// Parses a URL a buildpack asked for: http(s) only, a plain host, no credentials, and a path
/// that stays what it looks like. The fragment is dropped (it is never sent).
pub(crate) fn parse_requested(raw: &str) -> Result<Url, String> {
    let mut url = Url::parse(raw).map_err(|e| format!("not a valid URL ({e})"))?;
    check_http_url(&url)?;
    url.set_fragment(None);
    Ok(url)
}

/// The checks of [`parse_requested`] on a URL parsed elsewhere (a redirect's `Location`).
pub(crate) fn check_http_url(url: &Url) -> Result<(), String> {
    match url.scheme() {
        "http" | "https" => {}
        "file" => {
            return Err(
                "file: URLs may not be requested (only an operator's mirror rule may point at \
                 local files)"
                    .into(),
            );
        }
        other => return Err(format!("scheme {other}: is not http or https")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials (user:password@) are not allowed in a requested URL".into());
    }
    check_host(url)?;
    check_path(url.path())
}

/// Refuses a normalised path that still holds an encoded dot, slash, backslash or NUL: after
/// WHATWG parsing those can only be the parts a server might decode into `..` or `/` later.
pub(crate) fn check_path(path: &str) -> Result<(), String> {
    let lower = path.to_ascii_lowercase();
    for (encoded, what) in [
        ("%2e", "an encoded dot"),
        ("%2f", "an encoded slash"),
        ("%5c", "an encoded backslash"),
        ("%00", "an encoded NUL"),
    ] {
        if lower.contains(encoded) {
            return Err(format!("its path {path} contains {what} ({encoded})"));
        }
    }
    if path.contains('\\') {
        return Err(format!("its path {path} contains a backslash"));
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
fn check_host(url: &Url) -> Result<(), String> {
    match url.host() {
        Some(Host::Ipv4(_) | Host::Ipv6(_)) => Ok(()),
        Some(Host::Domain(name)) if valid_dns_name(name) => Ok(()),
        Some(Host::Domain(name)) => Err(format!("host {name} is not a valid DNS name")),
        None => Err("it has no host".into()),
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
    pub fn parse(raw: &str) -> Result<Prefix, String> {
        let url = Url::parse(raw.trim()).map_err(|e| format!("not a valid URL ({e})"))?;
        match url.scheme() {
            "http" | "https" => check_host(&url)?,
            "file" => {
                if url
                    .host_str()
                    .is_some_and(|h| !h.is_empty() && h != "localhost")
                {
                    return Err("a file: URL must name a local path (file:///...)".into());
                }
            }
            other => return Err(format!("scheme {other}: is not http, https or file")),
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err("a URL prefix may not have a query or fragment".into());
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
    pub fn parse(rule: &crate::config::MirrorRule) -> Result<Mirror, String> {
        let from = if rule.from.contains("://") {
            let prefix = Prefix::parse(&rule.from).map_err(|e| format!("from: {e}"))?;
            if !prefix.is_http() {
                return Err("from: only http(s) URLs are ever requested".into());
            }
            MatchOn::Prefix(prefix)
        } else {
            // Parse the bare authority the way a URL's would be, to normalise its case and
            // default port the same way.
            let url = Url::parse(&format!("http://{}/", rule.from.trim()))
                .map_err(|e| format!("from: not a valid host ({e})"))?;
            if url.path() != "/" || !url.username().is_empty() || url.query().is_some() {
                return Err("from: a host rule is a bare host[:port]".into());
            }
            check_host(&url).map_err(|e| format!("from: {e}"))?;
            MatchOn::Authority(authority(&url))
        };
        Prefix::parse(&rule.to.replace(ORIGINAL_HOST, "original.example"))
            .map_err(|e| format!("to: {e}"))?;
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
    pub fn to_prefix(&self, original: &Url) -> Result<Prefix, String> {
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
    pub fn rewrite(&self, url: &Url) -> Result<(Url, Prefix), String> {
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
        let used = Url::parse(&joined)
            .map_err(|e| format!("the rewritten URL {joined} is not valid ({e})"))?;
        check_path(used.path()).map_err(|e| format!("the rewritten URL {used}: {e}"))?;
        if !to.matches(&used) {
            return Err(format!(
                "the rewritten URL {used} is not beneath the mirror's {}",
                to.url
            ));
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
mod tests {
    use super::*;
    use crate::config::MirrorRule;

    fn url(s: &str) -> Url {
        Url::parse(s).expect("test URL")
    }

    fn mirror(from: &str, to: &str) -> Mirror {
        Mirror::parse(&MirrorRule {
            from: from.into(),
            to: to.into(),
        })
        .expect("rule")
    }

    #[test]
    fn dot_segments_are_resolved_before_anything_matches() {
        for raw in [
            "https://up.example/dl/../../secret",
            "https://up.example/dl/%2e%2e/%2E%2e/secret",
            "https://up.example/dl/.%2e/secret",
            "https://up.example/dl\\..\\..\\secret",
        ] {
            let parsed = parse_requested(raw).expect(raw);
            assert_eq!(parsed.as_str(), "https://up.example/secret", "{raw}");
        }
    }

    #[test]
    fn encoded_separators_left_after_parsing_are_refused() {
        for raw in [
            "https://up.example/dl/..%2fsecret",
            "https://up.example/dl/%2e%2E%2fsecret",
            "https://up.example/dl/..%2Fsecret",
            "https://up.example/dl/..%5csecret",
            "https://up.example/dl/..%5Csecret",
            "https://up.example/dl/a%2e",
            "https://up.example/dl/a%00b",
        ] {
            let error = parse_requested(raw).expect_err(raw);
            assert!(error.contains("encoded"), "{raw}: {error}");
        }
        // A query is not a path: it is passed on as it is.
        assert!(parse_requested("https://up.example/x?a=..%2f..").is_ok());
    }

    #[test]
    fn requested_urls_are_http_with_a_plain_host_and_no_credentials() {
        for (raw, why) in [
            ("file:///etc/passwd", "file:"),
            ("ftp://h/x", "scheme ftp"),
            ("https://user:pw@h/x", "credentials"),
            ("https://user@h/x", "credentials"),
            ("https://../x", "not a valid DNS name"),
            ("https://a..b/x", "not a valid DNS name"),
            ("not a url", "not a valid URL"),
        ] {
            let error = parse_requested(raw).expect_err(raw);
            assert!(error.contains(why), "{raw}: {error}");
        }
        let parsed = parse_requested("HTTPS://Up.Example:443/A?q=1#frag").expect("url");
        assert_eq!(parsed.as_str(), "https://up.example/A?q=1");
    }

    #[test]
    fn prefixes_match_structurally_on_segment_boundaries() {
        let dl = Prefix::parse("https://a.com/dl").expect("prefix");
        assert!(dl.matches(&url("https://a.com/dl")));
        assert!(dl.matches(&url("https://A.COM:443/dl/x")));
        assert!(dl.matches(&url("https://a.com/dl?x=1")));
        assert!(!dl.matches(&url("https://a.com/dlx")));
        assert!(!dl.matches(&url("http://a.com/dl/x")), "scheme");
        assert!(!dl.matches(&url("https://a.com:8443/dl/x")), "port");
        assert!(!dl.matches(&url("https://a.com.evil/dl/x")), "host");
        let dir = Prefix::parse("https://a.com/dl/").expect("prefix");
        assert!(dir.matches(&url("https://a.com/dl/x")));
        assert!(!dir.matches(&url("https://a.com/dl")));
        let host = Prefix::parse("https://a.com").expect("prefix");
        assert!(host.matches(&url("https://a.com/anything")));
        assert!(!host.matches(&url("https://a.com.evil/x")));
        let port = Prefix::parse("http://127.0.0.1:8080/m/").expect("prefix");
        assert!(port.matches(&url("http://127.0.0.1:8080/m/x")));
        assert!(!port.matches(&url("http://127.0.0.1:8081/m/x")));
        assert!(Prefix::parse("https://a.com/x?q").is_err());
        assert!(Prefix::parse("gopher://a.com/").is_err());
        assert!(Prefix::parse("file://other-host/x").is_err());
    }

    #[test]
    fn rewrites_keep_the_remainder_and_query_beneath_to() {
        let m = mirror("https://up.example/dl/", "http://m.example/mirror/");
        let (used, _) = m
            .rewrite(&url("https://up.example/dl/node/x.tgz?v=1"))
            .expect("rewrite");
        assert_eq!(used.as_str(), "http://m.example/mirror/node/x.tgz?v=1");

        let m = mirror("https://up.example/dl", "http://m.example/mirror");
        let (used, _) = m.rewrite(&url("https://up.example/dl/x")).expect("rewrite");
        assert_eq!(used.as_str(), "http://m.example/mirror/x");

        let m = mirror("b.example", "http://m3/b");
        assert!(m.matches(&url("http://b.example/p")));
        assert!(m.matches(&url("https://B.example/p")));
        assert!(!m.matches(&url("https://b.example:8443/p")));
        let (used, _) = m
            .rewrite(&url("https://b.example/p/x?y=1"))
            .expect("rewrite");
        assert_eq!(used.as_str(), "http://m3/b/p/x?y=1");

        let m = mirror("https://a.example/deep/", "http://m2/{originalHost}/");
        let (used, to) = m
            .rewrite(&url("https://a.example:8443/deep/x.tgz"))
            .expect("rewrite");
        assert_eq!(used.as_str(), "http://m2/a.example:8443/x.tgz");
        assert_eq!(to.url.as_str(), "http://m2/a.example:8443/");

        let m = mirror("https://up.example/dl/", "file:///srv/mirror/");
        let (used, _) = m
            .rewrite(&url("https://up.example/dl/a%20b.tgz"))
            .expect("rewrite");
        assert_eq!(used.as_str(), "file:///srv/mirror/a%20b.tgz");
    }

    #[test]
    fn bad_rules_are_refused() {
        for (from, to) in [
            ("file:///x/", "http://m/"),
            ("https://up.example/", "ftp://m/"),
            ("https://up.example/", "http://m/?q=1"),
            ("b.example/path", "http://m/"),
            ("https://../", "http://m/"),
            ("https://up.example/", "file://remote/x"),
        ] {
            let rule = MirrorRule {
                from: from.into(),
                to: to.into(),
            };
            assert!(Mirror::parse(&rule).is_err(), "{from} -> {to}");
        }
    }

    #[test]
    fn restricted_addresses() {
        for raw in [
            "http://127.0.0.1/",
            "http://127.8.9.10/",
            "http://0x7f.1/",
            "http://2130706433/",
            "http://0.0.0.0/",
            "http://169.254.169.254/",
            "http://[::1]/",
            "http://[::]/",
            "http://[fe80::1]/",
            "http://[febf::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:169.254.169.254]/",
            "http://localhost/",
            "http://LOCALHOST./",
            "http://api.localhost/",
        ] {
            assert!(targets_restricted_host(&url(raw)), "{raw}");
        }
        for raw in [
            "http://10.0.0.1/",
            "http://192.168.1.1/",
            "http://[2001:db8::1]/",
            "http://[fec0::1]/",
            "http://example.com/",
            "http://localhost.example.com/",
        ] {
            assert!(!targets_restricted_host(&url(raw)), "{raw}");
        }
    }

    #[test]
    fn host_names() {
        assert!(valid_host("example.com"));
        assert!(valid_host("a-b_c.example"));
        assert!(valid_host("127.0.0.1"));
        assert!(valid_host("[::1]"));
        assert!(valid_host("::1"));
        assert!(!valid_host(""));
        assert!(!valid_host("a..b"));
        assert!(!valid_host("-a.example"));
        assert!(!valid_host("a.example."));
        assert!(!valid_host("bad!host"));
        assert!(!valid_host("a b"));
        assert!(!valid_host(&format!("{}.example", "a".repeat(64))));
        let long = vec!["a".repeat(60); 5].join(".");
        assert!(long.len() > 253);
        assert!(!valid_host(&long));
    }

    #[test]
    fn path_boundaries() {
        assert!(path_under("/dl", "/dl"));
        assert!(path_under("/dl/x", "/dl"));
        assert!(!path_under("/dlx", "/dl"));
        assert!(path_under("/dl/x", "/dl/"));
        assert!(!path_under("/dl", "/dl/"));
        assert!(path_under("/anything", "/"));
    }
}
