//! URL parsing, refusals (their types and their words), prefixes and mirror rewrites.

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
        assert!(
            matches!(error, UrlRefused::Path(PathError::Encoded { .. })),
            "{raw}: {error:?}"
        );
        assert!(error.to_string().contains("encoded"), "{raw}: {error}");
    }
    // A query is not a path: it is passed on as it is.
    assert!(parse_requested("https://up.example/x?a=..%2f..").is_ok());
}

#[test]
fn requested_urls_are_http_with_a_plain_host_and_no_credentials() {
    let not_dns = |host: &str| {
        UrlRefused::Host(HostError::NotDnsName {
            host: host.to_string(),
        })
    };
    for (raw, expected) in [
        ("file:///etc/passwd", UrlRefused::File),
        (
            "ftp://h/x",
            UrlRefused::Scheme {
                scheme: "ftp".into(),
            },
        ),
        ("https://user:pw@h/x", UrlRefused::Credentials),
        ("https://user@h/x", UrlRefused::Credentials),
        ("https://../x", not_dns("..")),
        ("https://a..b/x", not_dns("a..b")),
        (
            "not a url",
            UrlRefused::Invalid(url::ParseError::RelativeUrlWithoutBase),
        ),
    ] {
        assert_eq!(parse_requested(raw), Err(expected), "{raw}");
    }
    // IP literals are hosts like any other here; the policy decides which it may reach.
    for raw in ["http://127.0.0.1/x", "http://[::1]/x", "https://10.0.0.1/x"] {
        assert!(parse_requested(raw).is_ok(), "{raw}");
    }
    let parsed = parse_requested("HTTPS://Up.Example:443/A?q=1#frag").expect("url");
    assert_eq!(parsed.as_str(), "https://up.example/A?q=1");
}

/// The words of every refusal: they reach staging logs, the guest's fetch errors and
/// `dea fetch`, and operators and tests match them.
#[test]
fn refusals_read_as_before() {
    let refused = |raw: &str| parse_requested(raw).expect_err(raw).to_string();
    assert_eq!(
        refused("not a url"),
        "not a valid URL (relative URL without a base)"
    );
    assert_eq!(
        refused("file:///etc/passwd"),
        "file: URLs may not be requested (only an operator's mirror rule may point at \
         local files)"
    );
    assert_eq!(refused("ftp://h/x"), "scheme ftp: is not http or https");
    assert_eq!(
        refused("https://u:p@h/x"),
        "credentials (user:password@) are not allowed in a requested URL"
    );
    assert_eq!(
        refused("https://a..b/x"),
        "host a..b is not a valid DNS name"
    );
    assert_eq!(
        refused("https://h/a%2Fb"),
        "its path /a%2Fb contains an encoded slash (%2f)"
    );
    assert_eq!(
        refused("https://h/a%2eb"),
        "its path /a%2eb contains an encoded dot (%2e)"
    );
    assert_eq!(
        refused("https://h/a%5cb"),
        "its path /a%5cb contains an encoded backslash (%5c)"
    );
    assert_eq!(
        refused("https://h/a%00b"),
        "its path /a%00b contains an encoded NUL (%00)"
    );
    // WHATWG turns `\` into `/` in http(s) paths; a path from elsewhere may keep one.
    assert_eq!(
        check_path("/a\\b").expect_err("backslash").to_string(),
        "its path /a\\b contains a backslash"
    );
    let file_url = Url::parse("file:///x").expect("url");
    assert_eq!(check_host(&file_url), Err(HostError::Missing));
    assert_eq!(HostError::Missing.to_string(), "it has no host");

    let prefix = |raw: &str| Prefix::parse(raw).expect_err(raw).to_string();
    assert_eq!(
        prefix("gopher://a/"),
        "scheme gopher: is not http, https or file"
    );
    assert_eq!(
        prefix("file://other-host/x"),
        "a file: URL must name a local path (file:///...)"
    );
    assert_eq!(
        prefix("https://a.com/x?q"),
        "a URL prefix may not have a query or fragment"
    );
    assert_eq!(prefix("https://a..b/"), "host a..b is not a valid DNS name");

    let rule = |from: &str, to: &str| {
        Mirror::parse(&MirrorRule {
            from: from.into(),
            to: to.into(),
        })
        .expect_err(from)
    };
    assert_eq!(
        rule("file:///x/", "http://m/"),
        RuleError::FromNotHttp,
        "a file: from"
    );
    assert_eq!(
        rule("b.example/path", "http://m/").to_string(),
        "from: a host rule is a bare host[:port]"
    );
    assert_eq!(
        rule("https://up.example/", "ftp://m/").to_string(),
        "to: scheme ftp: is not http, https or file"
    );
    assert!(matches!(
        rule("https://../", "http://m/"),
        RuleError::From(PrefixError::Host(HostError::NotDnsName { .. }))
    ));
    assert!(matches!(
        rule("a..b", "http://m/"),
        RuleError::FromHost(HostError::NotDnsName { .. })
    ));
    assert!(matches!(
        rule("b.example:99999", "http://m/"),
        RuleError::FromInvalidHost(url::ParseError::InvalidPort)
    ));
}

#[test]
fn sources_are_kept() {
    use std::error::Error;
    let error = parse_requested("http://[::1/").expect_err("bad IPv6");
    let source = error.source().expect("the parse error is the source");
    assert_eq!(
        source.downcast_ref::<url::ParseError>(),
        Some(&url::ParseError::InvalidIpv6Address)
    );
    let error = Mirror::parse(&MirrorRule {
        from: "https://up.example/".into(),
        to: "http://[::1/".into(),
    })
    .expect_err("bad to");
    let prefix = error.source().expect("the prefix error is the source");
    assert!(prefix.source().is_some_and(|e| e.is::<url::ParseError>()));
}

#[test]
fn rewrites_with_an_encoded_separator_are_refused() {
    // The requested URL was checked when it was asked for; what `to` adds (an operator's
    // `%2e` before a substituted host, here) is checked again after the rewrite.
    let m = mirror("up.example", "http://m/%2e{originalHost}/");
    let error = m
        .rewrite(&url("https://up.example/x"))
        .expect_err("an encoded dot in to");
    assert!(
        matches!(
            &error,
            RewriteError::Path {
                source: PathError::Encoded {
                    encoded: Encoded::Dot,
                    ..
                },
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "the rewritten URL http://m/%2eup.example/x: its path /%2eup.example/x contains \
         an encoded dot (%2e)"
    );
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
