//! Route conditions, matched against each request in priority order. Patterns are validated
//! and lower-cased at load time so matching allocates nothing in the common case.

use std::borrow::Cow;
use std::net::IpAddr;

use http::{HeaderMap, Method};

use std::sync::Arc;

use crate::config::{Conditions, Glob, GroupRef, HostPattern, Override, OverrideWhen, PathPattern};
use crate::group::Group;
use crate::service::{cookie, Service};

/// What a route can look at.
pub struct RequestFacts<'a> {
    /// Without the port.
    pub host: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    pub client_ip: IpAddr,
}

pub fn matches(c: &Conditions, f: &RequestFacts<'_>) -> bool {
    (c.hosts.is_empty() || c.hosts.iter().any(|h| host_matches(h, f.host)))
        && (c.paths.is_empty() || c.paths.iter().any(|p| path_matches(p, f.path)))
        && (c.methods.is_empty() || c.methods.contains(f.method))
        && c.headers.iter().all(|(name, values)| {
            f.headers.get_all(name).iter().any(|v| {
                v.to_str()
                    .is_ok_and(|v| values.iter().any(|g| glob_match_ci(&g.0, v)))
            })
        })
        && c.query.iter().all(|(name, values)| {
            query_values(f.query, name).any(|v| values.iter().any(|g| glob_match(&g.0, &v)))
        })
        && (c.sources.is_empty() || c.sources.iter().any(|n| n.contains(&f.client_ip)))
}

/// The group the first applicable override forces, if any. An override naming the candidate
/// applies only while a rollout has one; a header naming an unknown group is ignored.
pub fn forced_group<'s>(
    overrides: &[Override],
    svc: &'s Service,
    f: &RequestFacts<'_>,
) -> Option<&'s Arc<Group>> {
    let resolve = |r: &GroupRef| match r {
        GroupRef::Candidate => svc.candidate.map(|i| &svc.groups[i]),
        GroupRef::Stable => svc.stable.map(|i| &svc.groups[i]),
        GroupRef::Named(n) => svc.group(n),
    };
    overrides.iter().find_map(|o| match &o.when {
        OverrideWhen::GroupFromHeader(h) => {
            let v = f.headers.get(h)?.to_str().ok()?.trim();
            resolve(&GroupRef::parse(v))
        }
        OverrideWhen::Header(h, values) => f
            .headers
            .get_all(h)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| values.iter().any(|g| glob_match_ci(&g.0, v)))
            .then(|| resolve(&o.to))
            .flatten(),
        OverrideWhen::Cookie(name, values) => cookie(f.headers, name)
            .filter(|v| values.iter().any(|g| glob_match(&g.0, v)))
            .and_then(|_| resolve(&o.to)),
        OverrideWhen::Source(nets) => nets
            .iter()
            .any(|n| n.contains(&f.client_ip))
            .then(|| resolve(&o.to))
            .flatten(),
        OverrideWhen::Country(h, codes) => f
            .headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .filter(|v| codes.iter().any(|c| c.eq_ignore_ascii_case(v.trim())))
            .and_then(|_| resolve(&o.to)),
    })
}

fn host_matches(p: &HostPattern, host: &str) -> bool {
    match p {
        HostPattern::Exact(h) => host.eq_ignore_ascii_case(h),
        HostPattern::Suffix(s) => {
            host.len() > s.len()
                && host.is_char_boundary(host.len() - s.len())
                && host[host.len() - s.len()..].eq_ignore_ascii_case(s)
        }
    }
}

fn path_matches(p: &PathPattern, path: &str) -> bool {
    match p {
        PathPattern::Exact(e) => path == e,
        PathPattern::Prefix(pre) => path.starts_with(pre.as_str()),
        PathPattern::Glob(Glob(g)) => glob_match(g, path),
    }
}

/// Values of `name` in a query string, percent-decoded (`+` as space).
fn query_values<'a>(query: Option<&'a str>, name: &'a str) -> impl Iterator<Item = Cow<'a, str>> {
    query.unwrap_or("").split('&').filter_map(move |pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k) == name).then(|| decode(v))
    })
}

fn decode(s: &str) -> Cow<'_, str> {
    if !s.contains(['%', '+']) {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(hi), Some(lo)) => {
                        out.push((hi * 16 + lo) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// `*` matches any run (including none), `?` one character; everything else literally.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    glob(pattern.as_bytes(), text.as_bytes(), |a, b| a == b)
}

fn glob_match_ci(pattern: &str, text: &str) -> bool {
    glob(pattern.as_bytes(), text.as_bytes(), |a, b| {
        a.eq_ignore_ascii_case(&b)
    })
}

/// Linear-time wildcard matching: on a mismatch, retry from just after the last `*`.
fn glob(p: &[u8], t: &[u8], eq: impl Fn(u8, u8) -> bool) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'?' {
            pi += 1;
            ti += char_len(t[ti]);
        } else if pi < p.len() && p[pi] != b'*' && eq(p[pi], t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + char_len(t[st]);
            star = Some((sp, ti));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

/// The length of the UTF-8 character `first` begins: `?` takes one character, not a byte.
fn char_len(first: u8) -> usize {
    match first {
        0xf0.. => 4,
        0xe0.. => 3,
        0xc0.. => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("/img/*.png", "/img/a/b.png"));
        assert!(glob_match("/a?c", "/abc"));
        assert!(!glob_match("/a?c", "/ac"));
        assert!(glob_match("/?", "/é") && !glob_match("/??", "/é"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("/api/*", "/ap"));
        assert!(glob_match_ci("BETA*", "beta-users"));
    }

    #[test]
    fn wildcard_hosts_need_a_label() {
        let p = HostPattern::Suffix(".example.com".into());
        assert!(host_matches(&p, "api.Example.com"));
        assert!(!host_matches(&p, "example.com"));
        assert!(!host_matches(&p, ".example.com"));
    }

    #[test]
    fn query_is_decoded() {
        let v: Vec<_> = query_values(Some("a=1&v=two+words&v=%32"), "v").collect();
        assert_eq!(v, vec!["two words", "2"]);
        assert_eq!(decode("100%"), "100%");
    }
}
