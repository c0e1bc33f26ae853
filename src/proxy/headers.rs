//! The request's and the answer's fields: hop-by-hop ones removed, the proxy's own set, and
//! what the routing reads (host, port, upgrade).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Uri, Version};

use super::ConnInfo;
use crate::upstream::SetFields;

/// RFC 9110 §7.6.1's connection-specific fields. `Trailer` is not one of them: it announces
/// the trailer fields end to end (and hyper only sends announced trailers on HTTP/1).
static HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

pub(super) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Usually there is none: one pass over a few names is cheaper than a lookup per name, and
/// a name's length rules out most before any comparison (six comparisons per field cost
/// ~250 instructions a request for the request's and the answer's few fields).
fn has_hop_by_hop(h: &HeaderMap) -> bool {
    h.keys()
        .any(|k| hop_by_hop_length(k.as_str().len()) && HOP_BY_HOP.contains(k))
}

/// Whether a name this long may be one of `HOP_BY_HOP`.
fn hop_by_hop_length(len: usize) -> bool {
    matches!(len, 2 | 7 | 10 | 16 | 17)
}

pub(super) fn remove_hop_by_hop(h: &mut HeaderMap) {
    if !has_hop_by_hop(h) {
        return;
    }
    // Headers named in Connection are hop-by-hop too.
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|list| list.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(&HOP_BY_HOP) {
        h.remove(name);
    }
}

/// Strips the client's hop-by-hop fields (and gives the target a Host if the request
/// carried it in its URI), and returns the fields the proxy sets.
pub(super) fn prepare_request_headers(
    h: &mut HeaderMap,
    uri: &Uri,
    rid: &HeaderValue,
    conn: &ConnInfo,
    upgrade: bool,
) -> SetFields {
    if has_hop_by_hop(h) {
        // gRPC needs `te: trailers` end to end; it is the one TE value a proxy may pass on.
        let te_trailers = h
            .get(header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
        let upgrade_proto = if upgrade {
            h.get(header::UPGRADE).cloned()
        } else {
            None
        };
        remove_hop_by_hop(h);
        if te_trailers {
            h.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        if let Some(proto) = upgrade_proto {
            h.insert(header::UPGRADE, proto);
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
    }
    // An HTTP/2 request carries its host in the URI; an HTTP/1 target wants a Host header.
    let host = match h.get(header::HOST) {
        Some(v) => Some(v.clone()),
        None => uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .inspect(|v| {
                h.insert(header::HOST, v.clone());
            }),
    };
    let mut set = SetFields::default();
    set.set(&X_REQUEST_ID, rid.clone());
    // Every X-Forwarded-For line the client sent, then its address.
    let mut earlier = h.get_all(&X_FORWARDED_FOR).iter().peekable();
    let xff = if earlier.peek().is_none() {
        Some(conn.client_ip.clone())
    } else {
        let mut list = Vec::new();
        for v in earlier {
            list.extend_from_slice(v.as_bytes());
            list.extend_from_slice(b", ");
        }
        list.extend_from_slice(conn.client_ip.as_bytes());
        HeaderValue::from_bytes(&list).ok()
    };
    if let Some(v) = xff {
        set.set(&X_FORWARDED_FOR, v);
    }
    set.set(
        &X_FORWARDED_PROTO,
        HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
    );
    set.set(&X_FORWARDED_PORT, conn.local_port.clone());
    if let Some(host) = host {
        set.set(&X_FORWARDED_HOST, host);
    }
    set
}

pub(super) fn is_upgrade(req: &Parts) -> bool {
    req.version == Version::HTTP_11
        && req.headers.contains_key(header::UPGRADE)
        && req
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

pub(super) fn request_host(req: &Parts) -> Option<&str> {
    req.headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(http::uri::Authority::as_str))
}

/// Splits `host:port`, `[v6]:port` or a bare host.
pub(super) fn split_port(host: &str) -> (&str, Option<&str>) {
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':')),
            None => (host, None),
        };
    }
    // One pass over the bytes: a host is short, and `rsplit_once` with `contains` cost
    // ~160 instructions a request in their searchers' setup.
    let mut colon = None;
    for (i, b) in host.bytes().enumerate() {
        if b == b':' {
            if colon.is_some() {
                // A bare IPv6 address.
                return (host, None);
            }
            colon = Some(i);
        }
    }
    match colon {
        Some(i) => (&host[..i], Some(&host[i + 1..])),
        None => (host, None),
    }
}

#[cfg(test)]
mod tests {
    use super::{hop_by_hop_length, split_port, HOP_BY_HOP};

    #[test]
    fn every_hop_by_hop_name_passes_the_length_filter() {
        for name in &HOP_BY_HOP {
            assert!(hop_by_hop_length(name.as_str().len()), "{name}");
        }
    }

    #[test]
    fn ports_split_off_hosts() {
        assert_eq!(split_port("a.com:8080"), ("a.com", Some("8080")));
        assert_eq!(split_port("a.com"), ("a.com", None));
        assert_eq!(split_port("[::1]:80"), ("::1", Some("80")));
        assert_eq!(split_port("::1"), ("::1", None));
        assert_eq!(split_port("a.com:"), ("a.com", Some("")));
    }
}
