//! The exchange with a target: the request sent on the connection the path checked out,
//! the response head read back; a pooled HTTP/1 connection found closed is retried once on
//! a fresh one when nothing can be lost by it.

use http::request::Parts;
use http::{Request, Uri, Version};
use hyper::body::Incoming;

use super::failure::{classify, Failure};
use super::{Head, UpstreamBody};
use crate::group::Target;
use crate::upstream::{h1, h2, BodySide, Sender, SetFields, Upstream};

/// Sends the request and reads the response head. A pooled HTTP/1 connection that turns
/// out to have been closed by the target before answering gets the request once more on a
/// fresh connection — when nothing is lost by it: the request has no body, and it is
/// idempotent unless it provably never reached the target. `reused`: the connection came
/// from the pool.
pub(super) async fn exchange(
    upstream: &Upstream,
    target: &Target,
    (sender, reused): (Sender, bool),
    mut parts: Head,
    set: &SetFields,
    (body, side): (Incoming, BodySide),
    limits: &h1::Limits,
) -> Result<(http::response::Parts, UpstreamBody), Failure> {
    let conn = match sender {
        Sender::Http2(mut s) => {
            set.insert_into(&mut parts.headers);
            let req = h2_request(*parts, body, target, upstream.tls.is_some());
            let resp = h2::send(&mut s, req, side, limits)
                .await
                .map_err(|e| match e {
                    h2::Error::Target(e) => classify(e),
                    h2::Error::Client(e) => Failure::Client(e),
                    h2::Error::Timeout(d) => Failure::Timeout(d),
                })?;
            let (head, body) = resp.into_parts();
            return Ok((head, UpstreamBody::H2(body)));
        }
        Sender::Http1(conn) => conn,
    };
    let e = match conn.send(&parts, set, Some(body), side, limits).await {
        Ok((head, body)) => return Ok((head, UpstreamBody::H1(body))),
        Err(e) => e,
    };
    if !(reused && e.resendable && (e.unsent || parts.method.is_idempotent())) {
        return Err(Failure::from(e.error));
    }
    tracing::debug!(target = %target.addr, error = %e.error, "pooled connection was closed; resending on a new one");
    let fresh = match upstream.connect(&target.pool).await {
        Ok(Sender::Http1(c)) => c,
        Ok(Sender::Http2(_)) => unreachable!("an HTTP/1 group connects with HTTP/1"),
        Err(e) => return Err(Failure::Connect(e.to_string())),
    };
    match fresh
        .send(&parts, set, None, BodySide::default(), limits)
        .await
    {
        Ok((head, body)) => Ok((head, UpstreamBody::H1(body))),
        Err(e) => Err(Failure::from(e.error)),
    }
}

/// The request as an HTTP/2 target gets it: the target's authority in the URI. Nothing is
/// copied but a few reference counts.
fn h2_request(mut parts: Parts, body: Incoming, target: &Target, tls: bool) -> Request<Incoming> {
    let pq = parts.uri.path_and_query().cloned();
    let mut uri = http::uri::Parts::default();
    uri.path_and_query = Some(pq.unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")));
    uri.scheme = Some(if tls {
        http::uri::Scheme::HTTPS
    } else {
        http::uri::Scheme::HTTP
    });
    uri.authority = Some(target.authority.clone());
    parts.version = Version::HTTP_2;
    parts.uri = Uri::from_parts(uri).expect("path with scheme and authority");
    Request::from_parts(parts, body)
}
