//! The request path: route match, then for a forward action the group and target choice,
//! header rewriting, the upstream exchange with its timeout and one retry, and the response.
//! A request reads the routing snapshot once and finishes on it.
//!
//! `dispatch` and `forward` are one request's walk, top-down, sharing the `Forward` plan and
//! the `Failure` it may end in; the pieces that stand alone live in `account`, `answers`,
//! `body`, `exchange`, `failure`, `headers`, `mirror` and `tunnel`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{ready, Poll};
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Response, StatusCode};
use http_body::Body;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;

use crate::activity::{Guarded, OpenRequest};
use crate::error::ProxyError;
use crate::group::{Group, GroupStats, Target};
use crate::metrics::Failure as Seen;
use crate::metrics::{ms_at, now_ms};
use crate::route::{forced_group, matches, RequestFacts};
use crate::service::Service;
use crate::snapshot::{Route, RouteAction, Snapshot};
use crate::upstream::{h1, BodySide, ConnectError, Sender};

mod account;
mod answers;
mod body;
mod exchange;
mod failure;
mod headers;
mod mirror;
mod tunnel;
pub use answers::error;
use answers::{fixed, redirect};
pub(crate) use body::in_place;
pub use body::{UpstreamBody, UpstreamResponseBody};
use exchange::exchange;
use failure::Failure;
use headers::{
    is_upgrade, prepare_request_headers, remove_hop_by_hop, request_host, split_port, X_REQUEST_ID,
};
use tunnel::tunnel;

/// A proxied answer's body is boxed: unboxed it made the answer ~560 bytes, copied whole
/// at each of the dozen moves from `forward` to hyper (bench/icount.sh); boxed it is ~120
/// bytes, for one small allocation.
pub type ResponseBody = Either<Box<UpstreamResponseBody>, Full<Bytes>>;

/// What a request needs to know about the connection it came on.
#[derive(Debug)]
pub struct ConnInfo {
    pub listener: Arc<str>,
    pub client: SocketAddr,
    pub local: SocketAddr,
    pub tls: bool,
    /// The idle timeout when the connection was accepted; an upgraded tunnel keeps it.
    pub idle: std::time::Duration,
    /// Header values made once per connection rather than once per request.
    client_ip: HeaderValue,
    local_port: HeaderValue,
    /// On a listener with `client_auth`: what the client's certificate tells the target,
    /// and the prefix under which anything the client sent is removed.
    pub(crate) client_cert: Option<crate::tls::client_auth::PeerFields>,
}

impl ConnInfo {
    pub fn new(
        listener: Arc<str>,
        client: SocketAddr,
        local: SocketAddr,
        tls: bool,
        idle: std::time::Duration,
    ) -> ConnInfo {
        ConnInfo {
            listener,
            client,
            local,
            tls,
            idle,
            client_ip: HeaderValue::from_str(&client.ip().to_string())
                .expect("an IP is a header value"),
            local_port: HeaderValue::from(local.port()),
            client_cert: None,
        }
    }
}

/// A request's head, boxed: it is moved from `handle` down to the exchange, into each
/// step's future and out again, and unboxed (~220 bytes) each move was a copy — a dozen a
/// request (bench/icount.sh). Boxed, a move is a pointer's; the body is small and walks
/// beside it.
pub(crate) type Head = Box<Parts>;

/// One request, from its head to its answer, on the snapshot in force when it arrived.
/// `open` marks the request open on its connection until its answer's body is done; it is
/// wrapped here rather than by the caller so that the request's future is not moved into a
/// second future (measured: four large copies per request).
pub(crate) async fn handle(
    (head, body): (Head, Incoming),
    conn: Arc<ConnInfo>,
    snapshots: Arc<ArcSwap<Snapshot>>,
    open: OpenRequest,
) -> Result<Response<Guarded<ResponseBody>>, Infallible> {
    let snapshot = snapshots.load_full();
    let resp = route(head, body, conn, snapshot).await;
    Ok(resp.map(|body| Guarded::new(body, open)))
}

/// What a request was served by, for its count and the access log.
#[derive(Default)]
struct Served<'s> {
    /// The route matched, and its index among the listener's routes.
    route: Option<(usize, &'s Route)>,
    service: Option<&'s Service>,
    group: Option<&'s Group>,
    target: Option<&'s str>,
    upstream: Option<std::time::Duration>,
    /// The request failed through the client's fault (its code for the access log).
    client_error: Option<&'static str>,
}

/// A request's id (taken from or set on `x-request-id`, passed upstream and answered) and
/// its count (see `account`) and access log line around the routing.
async fn route(
    req: Head,
    body: Incoming,
    conn: Arc<ConnInfo>,
    snap: Arc<Snapshot>,
) -> Response<ResponseBody> {
    // The request's one clock read until its answer arrives; the rest derive from it.
    let started = Instant::now();
    let rid = crate::access_log::request_id(req.headers.get(&X_REQUEST_ID));
    // Boxed so that a request without an access log carries a pointer, not the entry, in its
    // future.
    let entry = snap.access_log.as_ref().map(|_| {
        Box::new(crate::access_log::Entry {
            time: crate::access_log::now_rfc3339(),
            request_id: String::from_utf8_lossy(rid.as_bytes()).into_owned(),
            client: conn.client.to_string(),
            listener: conn.listener.to_string(),
            method: req.method.to_string(),
            host: request_host(&req).unwrap_or("").to_string(),
            path: req.uri.path().to_string(),
            route: None,
            service: None,
            group: None,
            target: None,
            status: 0,
            upstream_ms: None,
            total_ms: 0.0,
            bytes: 0,
            client_error: None,
            upstream_error: None,
        })
    });
    let mut open = account::Open {
        snap: &snap,
        served: Served::default(),
        entry,
        started,
        done: false,
    };
    let mut resp = dispatch(req, body, &rid, &conn, &snap, started, &mut open.served).await;
    open.done = true;
    resp.headers_mut().insert(X_REQUEST_ID.clone(), rid);
    if let Some(t) = open.served.route.and_then(|(_, r)| r.transform.as_deref()) {
        t.response(resp.headers_mut());
    }
    let status = resp.status().as_u16();
    let mut entry = open.entry.take();
    if let Some(e) = entry.as_mut() {
        account::fill(e, &open.served);
        e.status = status;
    }
    let served = std::mem::take(&mut open.served);
    drop(open);
    account::own_answer(&served, &resp);
    match resp.body_mut() {
        // Counted when the body ends, with the outcome it had.
        Either::Left(body) => {
            let place = served.route.map(|(i, _)| i).zip(served.group.and_then(|g| {
                let groups = &served.service?.groups;
                groups.iter().position(|x| std::ptr::eq(x.as_ref(), g))
            }));
            let took = served.upstream.unwrap_or_default();
            if let Some(place) = place {
                let account = account::Account::new(
                    snap.clone(),
                    conn,
                    place,
                    (status, took),
                    entry,
                    started,
                );
                body.open(account);
            }
        }
        Either::Right(full) => {
            let stats = match served.route {
                Some((_, r)) => Some(&*r.stats),
                None => snap.unmatched.get(&*conn.listener).map(|s| &**s),
            };
            if let Some(s) = stats {
                // A client error is counted apart, as in its group: not as an answer.
                if served.client_error.is_some() {
                    s.client_errors.fetch_add(1, Relaxed);
                } else {
                    s.record(status);
                }
            }
            if let (Some(log), Some(mut e)) = (&snap.access_log, entry) {
                e.bytes = full.size_hint().exact().unwrap_or(0);
                e.total_ms = crate::access_log::millis(started.elapsed());
                log.log(*e);
            }
        }
    }
    resp
}

async fn dispatch<'s>(
    mut req: Head,
    body: Incoming,
    rid: &HeaderValue,
    conn: &ConnInfo,
    snap: &'s Snapshot,
    started: Instant,
    served: &mut Served<'s>,
) -> Response<ResponseBody> {
    // Before anything reads the request: no client can pose as a verified certificate.
    if let Some(certs) = &snap.client_certs {
        let conn_fields = conn.client_cert.as_ref();
        if certs
            .apply(&conn.listener, conn_fields, &mut req.headers)
            .is_err()
        {
            let mut resp = error(
                ProxyError::ClientCertificateSettingsChanged,
                "this listener's client certificate settings changed since the connection was made: connect again",
            );
            if req.version <= http::Version::HTTP_11 {
                resp.headers_mut()
                    .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            }
            return resp;
        }
    }
    let host = request_host(&req).unwrap_or("");
    let (host_name, _) = split_port(host);
    let facts = RequestFacts {
        host: host_name,
        path: req.uri.path(),
        query: req.uri.query(),
        method: &req.method,
        headers: &req.headers,
        client_ip: conn.client.ip(),
    };
    let Some((at, route)) = snap.routes.get(&*conn.listener).and_then(|routes| {
        routes
            .iter()
            .enumerate()
            .find(|(_, r)| matches(&r.conditions, &facts))
    }) else {
        return error(ProxyError::NoRoute, "no route matches this request");
    };
    served.route = Some((at, route));
    match &route.action {
        RouteAction::Fixed(f) => fixed(f),
        RouteAction::Redirect(r) => redirect(r, &req, conn),
        RouteAction::Forward(service) => {
            served.service = Some(service);
            let forced = forced_group(&route.overrides, service, &facts)
                .or_else(|| forced_group(&service.ab, service, &facts));
            // Only a group the split chose may be swapped for another when unreachable.
            let may_fall_back = forced.is_none();
            let (group, set_cookie) = match forced {
                Some(g) => (g, None),
                None => service.choose_by_split(&req.headers, conn.client.ip(), ms_at(started)),
            };
            if let Some(t) = &route.transform {
                if let Err(e) = t.request(&mut req.headers, &mut req.uri) {
                    return error(ProxyError::BadRewrite, e);
                }
            }
            let to = Forward {
                svc: service,
                group,
                may_fall_back,
                limits: h1::Limits {
                    request: service.request_timeout,
                    client_body: snap.config.timeouts.client_body,
                    max_body: snap.config.limits.max_body_bytes,
                },
                client_certs: snap.client_certs.as_ref(),
            };
            let mut resp = forward((req, body), rid, to, conn, started, served).await;
            if let Some(c) = set_cookie {
                resp.headers_mut().append(header::SET_COOKIE, c);
            }
            resp
        }
    }
}

/// Where a forwarded request goes.
struct Forward<'s> {
    svc: &'s Service,
    group: &'s Group,
    /// The group came from the split (not an override), so if none of its targets can be
    /// reached the request may go to the split's other group.
    may_fall_back: bool,
    limits: h1::Limits,
    /// The snapshot's client-certificate prefixes, for the trailers (see `BodySide`).
    client_certs: Option<&'s Arc<crate::tls::client_auth::ClientCerts>>,
}

async fn forward<'s>(
    (mut parts, body): (Head, Incoming),
    rid: &HeaderValue,
    to: Forward<'s>,
    conn: &ConnInfo,
    started: Instant,
    served: &mut Served<'s>,
) -> Response<ResponseBody> {
    let Forward {
        svc,
        mut group,
        may_fall_back,
        limits,
        client_certs,
    } = to;
    served.group = Some(group);
    // Counted first, like every request of the group, whatever its fate.
    group.stats.count_request();
    if let (Some(max), Some(len)) = (limits.max_body, body.size_hint().exact()) {
        if len > max {
            group.stats.record_client_error(started);
            served.client_error = Some("too_large");
            return error(
                ProxyError::BodyTooLarge,
                format_args!("the request body of {len} bytes is larger than {max}"),
            );
        }
    }
    let now = ms_at(started);
    let Some(first) = group.pick(svc.balance, None, now) else {
        record(&group.stats, 503, started, None);
        return error(
            ProxyError::NoHealthyTarget,
            format_args!(
                "no healthy target in group {} of service {}",
                group.name, svc.name
            ),
        );
    };
    // The client's side of an upgrade, when it asks for one (hyper leaves it among the
    // extensions of an HTTP/1.1 request that asks; without it the upgrade cannot complete).
    let client_upgrade = is_upgrade(&parts).then(|| parts.extensions.remove::<OnUpgrade>());
    let set = prepare_request_headers(
        &mut parts.headers,
        &parts.uri,
        rid,
        conn,
        client_upgrade.is_some(),
    );
    // A copy for the mirror, when this is a request it wants (never a tunnel).
    let (mut witness, tee) = match &svc.mirror {
        Some(m) if client_upgrade.is_none() && m.wants(group, &parts.method) => {
            mirror::offer(m, &parts, &set, &body, svc.request_timeout)
        }
        _ => (None, None),
    };

    // The connection first, so that a target that cannot be reached costs nothing but a
    // move to another one: the request is still untouched.
    let (target, sender, reused): (&Arc<Target>, Sender, bool) = match group
        .upstream
        .checkout(&first.pool, now)
        .await
    {
        Ok((s, reused)) => (first, s, reused),
        Err(e) => {
            connect_failed(svc, group, first, &e);
            // Another target of the group; failing that, the split's other group.
            let now = now_ms();
            let retry = match group.pick(svc.balance, Some(first), now) {
                Some(t) => Some(t),
                None if may_fall_back => svc.fallback(group, now).and_then(|g| {
                    record(&group.stats, 502, started, Some(Seen::Connect));
                    account::fell_back(served, group);
                    group = g;
                    served.group = Some(g);
                    g.stats.count_request();
                    g.pick(svc.balance, None, now)
                }),
                None => None,
            };
            let Some(second) = retry else {
                record(&group.stats, 502, started, Some(Seen::Connect));
                return error(
                    ProxyError::UpstreamConnect,
                    format_args!("cannot connect to target: {e}"),
                );
            };
            tracing::debug!(target = %first.addr, retry = %second.addr, group = %group.name, "connect failed; trying another target");
            match group.upstream.checkout(&second.pool, now_ms()).await {
                Ok((s, reused)) => (second, s, reused),
                Err(e) => {
                    connect_failed(svc, group, second, &e);
                    record(&group.stats, 502, started, Some(Seen::Connect));
                    return error(
                        ProxyError::UpstreamConnect,
                        format_args!("cannot connect to target: {e}"),
                    );
                }
            }
        }
    };

    served.group = Some(group);
    served.target = Some(&target.addr.0);
    let in_flight = target.begin();
    // Pinned in place rather than moved into a `Timeout`: the exchange's state is the
    // request's largest, and each move of it is a copy.
    // An upload is timed by the exchange, which knows whether it is waiting for the client
    // or for the target (see `h1::Limits`); without one the whole exchange is the target's.
    let timed_by_exchange = !body.is_end_stream();
    let exchange = pin!(exchange(
        &group.upstream,
        target,
        (sender, reused),
        parts,
        &set,
        (
            body,
            BodySide {
                tee,
                client_certs: client_certs.cloned(),
            },
        ),
        &limits,
    ));
    let outcome = if timed_by_exchange {
        exchange.await
    } else {
        within(svc.request_timeout, exchange)
            .await
            .unwrap_or(Err(Failure::Timeout(svc.request_timeout)))
    };
    let answered = Instant::now();
    let took = answered.saturating_duration_since(started);
    served.upstream = Some(took);
    let (mut head, inner) = match outcome {
        Ok(r) => r,
        Err(Failure::Client(e)) => {
            // Nothing the target did wrong: counted apart, the target's record untouched.
            group.stats.record_client_error(answered);
            served.client_error = Some(e.code());
            return error(e.proxy_error(), e);
        }
        Err(f @ Failure::Timeout(_)) => {
            note_failure(svc, group, target);
            group.stats.timeouts.fetch_add(1, Relaxed);
            record(&group.stats, 504, started, Some(Seen::Timeout));
            return error(ProxyError::UpstreamTimeout, f);
        }
        Err(f) => {
            note_failure(svc, group, target);
            let e = f.error();
            match e {
                ProxyError::UpstreamConnect => &group.stats.connect_failures,
                _ => &group.stats.resets,
            }
            .fetch_add(1, Relaxed);
            let kind = match e {
                ProxyError::UpstreamConnect => Seen::Connect,
                _ => Seen::Reset,
            };
            record(&group.stats, e.status().as_u16(), started, Some(kind));
            return error(e, f);
        }
    };
    // Counted when the body ends (`account`): only then is it known whether the target
    // delivered it — and the target's passive health with it, once.

    let inner = match (client_upgrade, inner) {
        (Some(client), UpstreamBody::H1(b)) if head.status == StatusCode::SWITCHING_PROTOCOLS => {
            // The connection now belongs to the tunnel.
            match (client, b.into_upgraded()) {
                (Some(client), Some(upstream)) => {
                    let ticket = group.stats.tunnels.join();
                    tokio::spawn(tunnel(client, upstream, conn.idle, ticket));
                }
                (None, _) => tracing::debug!("upgrade did not complete: no client side"),
                (_, None) => {}
            }
            UpstreamBody::Done
        }
        (_, inner) => {
            remove_hop_by_hop(&mut head.headers);
            inner
        }
    };
    if let Some(w) = &mut witness {
        w.head(head.status.as_u16(), &head.headers, took);
    }
    let body = in_place(Box::new_uninit(), || {
        let timing = (answered, svc.request_timeout);
        UpstreamResponseBody::new(inner, in_flight, now, timing, witness)
    });
    Response::from_parts(head, Either::Left(body))
}

/// `fut`'s output, or `Err` once `limit` has passed.
async fn within<F: Future>(
    limit: std::time::Duration,
    mut fut: Pin<&mut F>,
) -> Result<F::Output, ()> {
    let mut deadline = pin!(tokio::time::sleep(limit));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        ready!(deadline.as_mut().poll(cx));
        Poll::Ready(Err(()))
    })
    .await
}

/// Records an answer of the group now and returns how long it took.
fn record(
    stats: &GroupStats,
    status: u16,
    started: Instant,
    failure: Option<Seen>,
) -> std::time::Duration {
    let at = Instant::now();
    let took = at.saturating_duration_since(started);
    stats.record(status, took, at, failure);
    took
}

fn connect_failed(svc: &Service, group: &Group, target: &Target, e: &ConnectError) {
    group.stats.connect_failures.fetch_add(1, Relaxed);
    tracing::debug!(service = %svc.name, group = %group.name, target = %target.addr, error = %e, "connect failed");
    note_failure(svc, group, target);
}

fn note_failure(svc: &Service, group: &Group, target: &Target) {
    account::strike(svc, group, target);
}
