//! What a route looks at in a request, matched by the real `route::matches`: path globs,
//! header globs (ASCII case-insensitive), query parameters (percent-decoded, `+` as a space)
//! against globs, and cookies (`service::cookie`). Each is checked against the rule the
//! README states, written here the plain way: `*` any run of characters, `?` exactly one.

use std::net::{IpAddr, Ipv4Addr};

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::config::{Conditions, Glob, PathPattern};
use crate::route::{glob_match, matches, RequestFacts};
use crate::service::cookie;

/// Longest pattern and text, in characters, so that the plain matcher stays cheap.
const MAX_CHARS: usize = 64;

/// The input is `pattern 0xff text 0xff name` (missing parts empty). The text is tried as
/// the path, as the value of a header, as a query string and as a Cookie field.
pub fn route(data: &[u8]) {
    let mut parts = data.splitn(3, |b| *b == 0xff);
    let mut next = || {
        let s = String::from_utf8_lossy(parts.next().unwrap_or_default());
        s.chars().take(MAX_CHARS).collect::<String>()
    };
    let (pattern, text, name) = (next(), next(), next());
    let globbed = |t: &str| plain_glob(&pattern, t, |a, b| a == b);

    assert_eq!(
        glob_match(&pattern, &text),
        globbed(&text),
        "{pattern:?} {text:?}"
    );
    let path = Conditions {
        paths: vec![PathPattern::Glob(Glob(pattern.clone()))],
        ..Conditions::default()
    };
    assert_eq!(check(&path, &text, None, &HeaderMap::new()), globbed(&text));

    let header = HeaderName::from_static("x-fuzz");
    if let Ok(v) = HeaderValue::from_str(&text) {
        let wanted = Conditions {
            headers: vec![(header.clone(), vec![Glob(pattern.clone())])],
            ..Conditions::default()
        };
        let mut h = HeaderMap::new();
        h.insert(header, v);
        let expected = h["x-fuzz"]
            .to_str()
            .is_ok_and(|v| plain_glob(&pattern, v, |a, b| a.eq_ignore_ascii_case(&b)));
        assert_eq!(
            check(&wanted, "/", None, &h),
            expected,
            "{pattern:?} {text:?}"
        );
    }

    let query = Conditions {
        query: vec![(name.clone(), vec![Glob(pattern.clone())])],
        ..Conditions::default()
    };
    let expected = text.split('&').any(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        plain_decode(k) == name && globbed(&plain_decode(v))
    });
    let got = check(&query, "/", Some(&text), &HeaderMap::new());
    assert_eq!(got, expected, "{pattern:?} {name:?} in {text:?}");

    cookies(&name, &text);
}

/// `service::cookie` finds `name`'s value in a Cookie field: a `name=value` pair between
/// semicolons, or nothing when no pair has that name. Only visible ASCII is read (RFC 6265's
/// cookie-octets): a field with other bytes is skipped whole, so it is not tried here.
fn cookies(name: &str, text: &str) {
    let Some(v) = HeaderValue::from_str(text)
        .ok()
        .filter(|v| v.to_str().is_ok())
    else {
        return;
    };
    let mut h = HeaderMap::new();
    h.insert(http::header::COOKIE, v);
    let pairs: Vec<&str> = text.split(';').map(str::trim).collect();
    match cookie(&h, name) {
        Some(value) => {
            assert!(!value.contains(';'), "{value:?} from {text:?}");
            assert!(
                pairs.contains(&format!("{name}={value}").as_str()),
                "{name:?} in {text:?}"
            );
        }
        None => assert!(
            !pairs
                .iter()
                .any(|p| p.split_once('=').is_some_and(|(k, _)| k == name)),
            "{name:?} not found in {text:?}"
        ),
    }
}

fn check(c: &Conditions, path: &str, query: Option<&str>, headers: &HeaderMap) -> bool {
    let facts = RequestFacts {
        host: "fuzz.example",
        path,
        query,
        method: &Method::GET,
        headers,
        client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    matches(c, &facts)
}

/// Whether `text` matches `pattern`, by characters, over every split of the text (the
/// textbook table): slow and plain, to compare with.
fn plain_glob(pattern: &str, text: &str, eq: impl Fn(char, char) -> bool) -> bool {
    let t: Vec<char> = text.chars().collect();
    // ok[j]: the pattern so far matches the first j characters.
    let mut ok = vec![false; t.len() + 1];
    ok[0] = true;
    for p in pattern.chars() {
        if p == '*' {
            for j in 1..=t.len() {
                ok[j] = ok[j] || ok[j - 1];
            }
        } else {
            for j in (1..=t.len()).rev() {
                ok[j] = ok[j - 1] && (p == '?' || eq(p, t[j - 1]));
            }
            ok[0] = false;
        }
    }
    ok[t.len()]
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%` and two hex digits a
/// byte, anything else itself; bytes that are not UTF-8 become U+FFFD.
fn plain_decode(s: &str) -> String {
    let mut out = Vec::new();
    let mut rest = s.as_bytes();
    while let Some((&c, tail)) = rest.split_first() {
        let hex = |i: usize| tail.get(i).and_then(|c| (*c as char).to_digit(16));
        match (c, hex(0), hex(1)) {
            (b'+', _, _) => out.push(b' '),
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                rest = &tail[2..];
                continue;
            }
            _ => out.push(c),
        }
        rest = tail;
    }
    String::from_utf8_lossy(&out).into_owned()
}
