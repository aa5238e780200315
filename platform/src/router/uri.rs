//! What a route is called: the `uris` of a registration (`app.example.com` or, as Cloud
//! Foundry allowed, `app.example.com/some/path`) checked and put in canonical form, and the
//! host of an incoming request reduced to the same form.
//!
//! Registrations arrive from anyone on the bus, so a uri is held to a strict shape: DNS
//! labels, an optional path of plain segments, nothing else (no port, scheme, query,
//! wildcard, whitespace or non-ASCII). Canonical form is lowercase with no trailing `/` or
//! `.`, as gorouter's route keys were, so `App.Example.COM/Api/` and `app.example.com/api`
//! are the same route.

use std::fmt;

/// Longest host name DNS allows.
const MAX_HOST_LEN: usize = 253;
/// Longest DNS label.
const MAX_LABEL_LEN: usize = 63;
/// A path prefix longer than this is not a route anyone typed.
const MAX_PATH_LEN: usize = 1024;

/// A registered route in canonical form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteKey {
    /// Lowercase host, no port, no trailing dot.
    pub host: String,
    /// `""` for the whole host, else `/seg[/seg...]`, lowercase, no trailing `/`.
    pub path: String,
}

impl fmt::Display for RouteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.host, self.path)
    }
}

/// Why a registered uri was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    #[error("empty uri")]
    Empty,
    #[error("host longer than {MAX_HOST_LEN} characters")]
    HostTooLong,
    #[error("path longer than {MAX_PATH_LEN} characters")]
    PathTooLong,
    #[error("empty label in host")]
    EmptyLabel,
    #[error("host label longer than {MAX_LABEL_LEN} characters")]
    LabelTooLong,
    #[error("character {0:?} not allowed in a host (ports, schemes and wildcards are not routes)")]
    HostCharacter(char),
    #[error("empty or dot segment in path")]
    BadSegment,
    #[error("character {0:?} not allowed in a route path")]
    PathCharacter(char),
}

impl RouteKey {
    /// Checks a registered uri and returns its canonical form.
    pub fn parse(uri: &str) -> Result<RouteKey, UriError> {
        let (host, path) = match uri.find('/') {
            Some(slash) => (&uri[..slash], &uri[slash..]),
            None => (uri, ""),
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        if host.is_empty() {
            return Err(UriError::Empty);
        }
        if host.len() > MAX_HOST_LEN {
            return Err(UriError::HostTooLong);
        }
        for label in host.split('.') {
            if label.is_empty() {
                return Err(UriError::EmptyLabel);
            }
            if label.len() > MAX_LABEL_LEN {
                return Err(UriError::LabelTooLong);
            }
            if let Some(bad) = label.chars().find(|c| !is_host_char(*c)) {
                return Err(UriError::HostCharacter(bad));
            }
        }
        let path = path.strip_suffix('/').unwrap_or(path);
        if path.len() > MAX_PATH_LEN {
            return Err(UriError::PathTooLong);
        }
        if !path.is_empty() {
            // `path` starts with '/', so the first piece of the split is always empty.
            for segment in path.split('/').skip(1) {
                if segment.is_empty() || segment == "." || segment == ".." {
                    return Err(UriError::BadSegment);
                }
                if let Some(bad) = segment.chars().find(|c| !is_path_char(*c)) {
                    return Err(UriError::PathCharacter(bad));
                }
            }
        }
        Ok(RouteKey {
            host: host.to_ascii_lowercase(),
            path: path.to_ascii_lowercase(),
        })
    }

    /// Whether this route serves a request for `path` (already lowercase): the whole host,
    /// or a path prefix that ends at a segment boundary (`/api` serves `/api` and `/api/x`,
    /// not `/apix`).
    pub fn serves(&self, path: &str) -> bool {
        match path.strip_prefix(self.path.as_str()) {
            Some(rest) => self.path.is_empty() || rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }
}

/// Letters, digits, `-` and `_` (the last is not DNS but appears in real internal names).
fn is_host_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// RFC 3986 `pchar` minus the few that only make trouble in a route: unreserved,
/// percent-escapes, and the sub-delimiters that URLs carry in paths.
fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            '-' | '.'
                | '_'
                | '~'
                | '%'
                | '!'
                | '$'
                | '&'
                | '\''
                | '('
                | ')'
                | '*'
                | '+'
                | ','
                | ';'
                | '='
                | ':'
                | '@'
        )
}

/// The host a request asked for, as routes are keyed: the `Host` value (or the authority of
/// an absolute-form target) without its port, lowercase, without a trailing dot. `None` when
/// nothing usable is left.
pub fn request_host(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let host = if let Some(rest) = raw.strip_prefix('[') {
        // An IPv6 literal keeps its brackets out: `[::1]:8080` → `::1`.
        rest.split_once(']').map(|(inside, _)| inside)?
    } else {
        raw.split_once(':').map_or(raw, |(host, _port)| host)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        None
    } else {
        Some(host.to_ascii_lowercase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(host: &str, path: &str) -> RouteKey {
        RouteKey {
            host: host.into(),
            path: path.into(),
        }
    }

    #[test]
    fn canonical_form_is_lowercase_without_trailing_separators() {
        assert_eq!(
            RouteKey::parse("App.Example.COM"),
            Ok(key("app.example.com", ""))
        );
        assert_eq!(
            RouteKey::parse("app.example.com./Api/V1/"),
            Ok(key("app.example.com", "/api/v1"))
        );
        assert_eq!(RouteKey::parse("10.0.0.1"), Ok(key("10.0.0.1", "")));
        assert_eq!(
            RouteKey::parse("a.b/x%20y;v=1"),
            Ok(key("a.b", "/x%20y;v=1"))
        );
    }

    #[test]
    fn odd_uris_are_refused() {
        for (uri, error) in [
            ("", UriError::Empty),
            ("/path", UriError::Empty),
            (".", UriError::Empty),
            ("app.example.com:8080", UriError::HostCharacter(':')),
            ("http://app.example.com", UriError::HostCharacter(':')),
            ("*.example.com", UriError::HostCharacter('*')),
            ("app..example.com", UriError::EmptyLabel),
            ("app example.com", UriError::HostCharacter(' ')),
            ("app.exämple.com", UriError::HostCharacter('ä')),
            ("a.b/x//y", UriError::BadSegment),
            ("a.b/../admin", UriError::BadSegment),
            ("a.b/x?q=1", UriError::PathCharacter('?')),
            ("a.b/x#frag", UriError::PathCharacter('#')),
            ("a.b/x\ny", UriError::PathCharacter('\n')),
        ] {
            assert_eq!(RouteKey::parse(uri), Err(error), "{uri:?}");
        }
        assert_eq!(
            RouteKey::parse(&format!("{}.com", "a".repeat(64))),
            Err(UriError::LabelTooLong)
        );
        assert_eq!(
            RouteKey::parse(&"a.".repeat(200)),
            Err(UriError::HostTooLong)
        );
        assert_eq!(
            RouteKey::parse(&format!("a.b/{}", "x".repeat(2000))),
            Err(UriError::PathTooLong)
        );
    }

    #[test]
    fn path_prefixes_match_whole_segments() {
        let api = key("a.b", "/api");
        assert!(api.serves("/api"));
        assert!(api.serves("/api/"));
        assert!(api.serves("/api/users/1"));
        assert!(!api.serves("/apix"));
        assert!(!api.serves("/"));
        let whole = key("a.b", "");
        assert!(whole.serves("/"));
        assert!(whole.serves("/anything"));
    }

    #[test]
    fn request_hosts_lose_port_case_and_trailing_dot() {
        assert_eq!(
            request_host("App.Example.com:8080").as_deref(),
            Some("app.example.com")
        );
        assert_eq!(
            request_host("app.example.com.").as_deref(),
            Some("app.example.com")
        );
        assert_eq!(request_host("[::1]:80").as_deref(), Some("::1"));
        assert_eq!(request_host(""), None);
        assert_eq!(request_host(":80"), None);
        assert_eq!(request_host("[::1"), None);
    }
}
