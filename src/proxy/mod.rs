//! The request path: route match, then for a forward action the group and target choice,
//! header rewriting, the upstream exchange with its timeout and one retry, and the response.
//! A request reads the routing snapshot once and finishes on it.

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
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::config::{FixedResponse, Redirect};
use crate::error::{ProxyError, ERROR_HEADER};
use crate::group::{ms_at, now_ms, Group, GroupStats, Target};
use crate::metrics::Failure as Seen;
use crate::route::{forced_group, matches, RequestFacts};
use crate::service::Service;
use crate::snapshot::{RouteAction, Snapshot};
use crate::upstream::{h1, h2, ConnectError, Sender, SetFields, Upstream};

mod body;
use body::Tally;
pub use body::{UpstreamBody, UpstreamResponseBody};

pub type ResponseBody = Either<UpstreamResponseBody, Full<Bytes>>;

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
        }
    }
}

pub async fn handle(
    req: Request<Incoming>,
    conn: Arc<ConnInfo>,
    snapshots: Arc<ArcSwap<Snapshot>>,
) -> Result<Response<ResponseBody>, Infallible> {
    let snapshot = snapshots.load_full();
    Ok(route(req, &conn, &snapshot).await)
}

/// What a request was served by, for the access log.
#[derive(Default)]
struct Served<'s> {
    route: Option<&'s str>,
    service: Option<&'s str>,
    group: Option<&'s str>,
    target: Option<&'s str>,
    upstream: Option<std::time::Duration>,
    stats: Option<&'s crate::snapshot::RouteStats>,
    /// The request failed through the client's fault (its code for the access log).
    client_error: Option<&'static str>,
}

/// A request's id (taken from or set on `x-request-id`, passed upstream and answered) and
/// its access log line around the routing.
async fn route(req: Request<Incoming>, conn: &ConnInfo, snap: &Snapshot) -> Response<ResponseBody> {
    // The request's one clock read until its answer arrives; the rest derive from it.
    let started = Instant::now();
    let rid = crate::access_log::request_id(req.headers().get(&X_REQUEST_ID));
    // Boxed so that a request without an access log carries a pointer, not the entry, in its
    // future.
    let entry = snap.access_log.as_ref().map(|_| {
        Box::new(crate::access_log::Entry {
            time: crate::access_log::now_rfc3339(),
            request_id: String::from_utf8_lossy(rid.as_bytes()).into_owned(),
            client: conn.client.to_string(),
            listener: conn.listener.to_string(),
            method: req.method().to_string(),
            host: request_host(&req).unwrap_or("").to_string(),
            path: req.uri().path().to_string(),
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
    let mut served = Served::default();
    let mut resp = dispatch(req, &rid, conn, snap, started, &mut served).await;
    resp.headers_mut().insert(X_REQUEST_ID.clone(), rid);
    let status = resp.status().as_u16();
    match served.stats {
        Some(s) => {
            s.record(status);
            if served.client_error.is_some() {
                s.client_errors.fetch_add(1, Relaxed);
            }
        }
        None => {
            if let Some(s) = snap.unmatched.get(&*conn.listener) {
                s.record(status);
            }
        }
    }
    if let (Some(log), Some(mut e)) = (&snap.access_log, entry) {
        let own = |s: Option<&str>| s.map(str::to_string);
        e.route = own(served.route);
        e.service = own(served.service);
        e.group = own(served.group);
        e.target = own(served.target);
        e.status = resp.status().as_u16();
        e.client_error = served.client_error;
        e.upstream_ms = served.upstream.map(crate::access_log::millis);
        match resp.body_mut() {
            // Written when the body ends, with its size.
            Either::Left(body) => body.log = Some(Box::new((log.clone(), *e, started))),
            Either::Right(full) => {
                e.bytes = full.size_hint().exact().unwrap_or(0);
                e.total_ms = crate::access_log::millis(started.elapsed());
                log.log(*e);
            }
        }
    }
    resp
}

async fn dispatch<'s>(
    req: Request<Incoming>,
    rid: &HeaderValue,
    conn: &ConnInfo,
    snap: &'s Snapshot,
    started: Instant,
    served: &mut Served<'s>,
) -> Response<ResponseBody> {
    let host = request_host(&req).unwrap_or("");
    let (host_name, _) = split_port(host);
    let facts = RequestFacts {
        host: host_name,
        path: req.uri().path(),
        query: req.uri().query(),
        method: req.method(),
        headers: req.headers(),
        client_ip: conn.client.ip(),
    };
    let Some(route) = snap
        .routes
        .get(&*conn.listener)
        .and_then(|routes| routes.iter().find(|r| matches(&r.conditions, &facts)))
    else {
        return error(ProxyError::NoRoute, "no route matches this request");
    };
    served.route = Some(&route.name);
    served.stats = Some(&route.stats);
    match &route.action {
        RouteAction::Fixed(f) => fixed(f),
        RouteAction::Redirect(r) => redirect(r, &req, conn),
        RouteAction::Forward(service) => {
            served.service = Some(&service.name);
            let forced = forced_group(&route.overrides, service, &facts);
            // Only a group the split chose may be swapped for another when unreachable.
            let may_fall_back = forced.is_none();
            let (group, set_cookie) = match forced {
                Some(g) => (g, None),
                None => service.choose_by_split(req.headers(), conn.client.ip(), ms_at(started)),
            };
            let to = Forward {
                svc: service,
                group,
                may_fall_back,
                limits: h1::Limits {
                    request: service.request_timeout,
                    client_body: snap.config.timeouts.client_body,
                    max_body: snap.config.limits.max_body_bytes,
                },
            };
            let mut resp = forward(req, rid, to, conn, started, served).await;
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
}

async fn forward<'s>(
    mut req: Request<Incoming>,
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
    } = to;
    served.group = Some(&group.name);
    if let (Some(max), Some(len)) = (limits.max_body, req.body().size_hint().exact()) {
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
    group.stats.requests.fetch_add(1, Relaxed);
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
    let client_upgrade = is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let set = prepare_request_headers(
        &mut parts.headers,
        &parts.uri,
        rid,
        conn,
        client_upgrade.is_some(),
    );

    // The connection first, so that a target that cannot be reached costs nothing but a
    // move to another one: the request is still untouched.
    let (target, sender, reused): (&Arc<Target>, Sender, bool) = match group
        .upstream
        .checkout(first, now)
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
                    group = g;
                    g.stats.requests.fetch_add(1, Relaxed);
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
            match group.upstream.checkout(second, now_ms()).await {
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

    served.group = Some(&group.name);
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
        body,
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
    if head.status.is_server_error() && svc.passive.eject_on_5xx {
        note_failure(svc, group, target);
    } else {
        target.record_success();
    }
    // Counted when the body ends: only then is it known whether the target delivered it.
    let tally = Tally {
        stats: group.stats.clone(),
        status: head.status.as_u16(),
        took,
        answered,
        passive: svc.passive,
    };

    let inner = match (client_upgrade, inner) {
        (Some(client), UpstreamBody::H1(b)) if head.status == StatusCode::SWITCHING_PROTOCOLS => {
            // The connection now belongs to the tunnel.
            if let Some(upstream) = b.into_upgraded() {
                tokio::spawn(tunnel(client, upstream, conn.idle));
            }
            UpstreamBody::Done
        }
        (_, inner) => {
            remove_hop_by_hop(&mut head.headers);
            inner
        }
    };
    let body = UpstreamResponseBody::new(inner, in_flight, now, tally);
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

/// The request as an HTTP/2 target gets it: the target's authority in the URI. Nothing is
/// copied but a few reference counts.
fn h2_request(
    mut parts: http::request::Parts,
    body: Incoming,
    target: &Target,
) -> Request<Incoming> {
    let pq = parts.uri.path_and_query().cloned();
    let mut uri = http::uri::Parts::default();
    uri.path_and_query = Some(pq.unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")));
    uri.scheme = Some(http::uri::Scheme::HTTP);
    uri.authority = Some(target.authority.clone());
    parts.version = Version::HTTP_2;
    parts.uri = Uri::from_parts(uri).expect("path with scheme and authority");
    Request::from_parts(parts, body)
}

/// Sends the request and reads the response head. A pooled HTTP/1 connection that turns
/// out to have been closed by the target before answering gets the request once more on a
/// fresh connection — when nothing is lost by it: the request has no body, and it is
/// idempotent unless it provably never reached the target. `reused`: the connection came
/// from the pool.
async fn exchange(
    upstream: &Upstream,
    target: &Target,
    (sender, reused): (Sender, bool),
    mut parts: http::request::Parts,
    set: &SetFields,
    body: Incoming,
    limits: &h1::Limits,
) -> Result<(http::response::Parts, UpstreamBody), Failure> {
    let conn = match sender {
        Sender::Http2(mut s) => {
            set.insert_into(&mut parts.headers);
            let req = h2_request(parts, body, target);
            let resp = h2::send(&mut s, req, limits).await.map_err(|e| match e {
                h2::Error::Target(e) => classify(e),
                h2::Error::Client(e) => Failure::Client(e),
                h2::Error::Timeout(d) => Failure::Timeout(d),
            })?;
            let (head, body) = resp.into_parts();
            return Ok((head, UpstreamBody::H2(body)));
        }
        Sender::Http1(conn) => conn,
    };
    let e = match conn.send(&parts, set, Some(body), limits).await {
        Ok((head, body)) => return Ok((head, UpstreamBody::H1(body))),
        Err(e) => e,
    };
    if !(reused && e.resendable && (e.unsent || parts.method.is_idempotent())) {
        return Err(Failure::from(e.error));
    }
    tracing::debug!(target = %target.addr, error = %e.error, "pooled connection was closed; resending on a new one");
    let fresh = match upstream.connect(target).await {
        Ok(Sender::Http1(c)) => c,
        Ok(Sender::Http2(_)) => unreachable!("an HTTP/1 group connects with HTTP/1"),
        Err(e) => return Err(Failure::Connect(e.to_string())),
    };
    match fresh.send(&parts, set, None, limits).await {
        Ok((head, body)) => Ok((head, UpstreamBody::H1(body))),
        Err(e) => Err(Failure::from(e.error)),
    }
}

/// Why an exchange with a target failed.
#[derive(Debug)]
enum Failure {
    Connect(String),
    Reset(String),
    Timeout(std::time::Duration),
    Protocol(String),
    /// The client failed its own request while it was being sent on.
    Client(h1::ClientError),
}

impl Failure {
    fn error(&self) -> ProxyError {
        match self {
            Failure::Connect(_) => ProxyError::UpstreamConnect,
            Failure::Reset(_) => ProxyError::UpstreamReset,
            Failure::Timeout(_) => ProxyError::UpstreamTimeout,
            Failure::Protocol(_) => ProxyError::UpstreamProtocol,
            Failure::Client(e) => e.proxy_error(),
        }
    }
}

impl From<h1::Error> for Failure {
    fn from(e: h1::Error) -> Failure {
        match e {
            h1::Error::Protocol(m) => Failure::Protocol(m),
            h1::Error::Client(e) => Failure::Client(e),
            h1::Error::Timeout(d) => Failure::Timeout(d),
            e @ (h1::Error::Io(_) | h1::Error::Closed) => Failure::Reset(error_chain(&e)),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Connect(e) => write!(f, "cannot connect to target: {e}"),
            Failure::Reset(e) => write!(f, "target closed the connection: {e}"),
            Failure::Timeout(d) => write!(
                f,
                "target sent no response within {}",
                humantime::format_duration(*d)
            ),
            Failure::Protocol(e) => write!(f, "bad response from target: {e}"),
            Failure::Client(e) => write!(f, "{}", error_chain(e)),
        }
    }
}

fn classify(e: hyper::Error) -> Failure {
    let detail = error_chain(&e);
    if e.is_parse() {
        Failure::Protocol(detail)
    } else {
        Failure::Reset(detail)
    }
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
    if target.record_failure(svc.passive.consecutive_failures, svc.passive.ejection_time) {
        tracing::warn!(
            service = %svc.name, group = %group.name, target = %target.addr,
            failures = svc.passive.consecutive_failures,
            "target ejected after consecutive failures"
        );
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Joins the client's upgraded connection to the target's (WebSocket and other Upgrades),
/// first passing on what the target sent right behind its 101. The tunnel closes when
/// nothing has moved either way for the listener's idle timeout, as ALB's does.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    (mut upstream, early): (tokio::net::TcpStream, Bytes),
    idle: std::time::Duration,
) {
    use tokio::io::AsyncWriteExt;
    let activity = Arc::new(crate::listener::Activity::default());
    let mut client = match client.await {
        Ok(c) => crate::listener::TrackedIo::new(hyper_util::rt::TokioIo::new(c), activity.clone()),
        Err(e) => return tracing::debug!(error = %e, "upgrade did not complete"),
    };
    if !early.is_empty() {
        if let Err(e) = client.write_all(&early).await {
            return tracing::debug!(error = %e, "upgraded connection ended with an error");
        }
    }
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "upgraded connection ended with an error");
            }
        }
        _ = crate::listener::quiet_for(activity, idle) => {
            tracing::debug!("closing idle upgraded connection");
        }
    }
}

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

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Usually there is none: one pass over a few names is cheaper than a lookup per name.
fn has_hop_by_hop(h: &HeaderMap) -> bool {
    h.keys().any(|k| HOP_BY_HOP.contains(k))
}

fn remove_hop_by_hop(h: &mut HeaderMap) {
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
fn prepare_request_headers(
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

fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

fn request_host<B>(req: &Request<B>) -> Option<&str> {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
}

/// Splits `host:port`, `[v6]:port` or a bare host.
fn split_port(host: &str) -> (&str, Option<&str>) {
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':')),
            None => (host, None),
        };
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p)),
        _ => (host, None),
    }
}

pub fn error(e: ProxyError, detail: impl std::fmt::Display) -> Response<ResponseBody> {
    let body = format!(
        "switchyard: {}: {detail}\n",
        e.status().canonical_reason().unwrap_or("")
    );
    Response::builder()
        .status(e.status())
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(ERROR_HEADER, e.code())
        .body(Either::Right(Full::new(Bytes::from(body))))
        .expect("valid error response")
}

fn fixed(f: &FixedResponse) -> Response<ResponseBody> {
    Response::builder()
        .status(f.status)
        .header(header::CONTENT_TYPE, f.content_type.as_str())
        .body(Either::Right(Full::new(Bytes::from(f.body.clone()))))
        .unwrap_or_else(|_| error(ProxyError::NoRoute, "bad fixed response"))
}

fn redirect<B>(r: &Redirect, req: &Request<B>, conn: &ConnInfo) -> Response<ResponseBody> {
    let (orig_host, orig_port) = split_port(request_host(req).unwrap_or(""));
    let orig_scheme = if conn.tls { "https" } else { "http" };
    let orig_path = req.uri().path();
    let orig_query = req.uri().query().unwrap_or("");
    // ALB's placeholders: #{host}, #{path}, #{port}, #{query}, #{protocol}.
    let fill = |s: &str| {
        s.replace("#{host}", orig_host)
            .replace("#{path}", orig_path)
            .replace("#{port}", orig_port.unwrap_or(""))
            .replace("#{query}", orig_query)
            .replace("#{protocol}", orig_scheme)
    };
    let scheme = r.scheme.as_deref().unwrap_or(orig_scheme);
    let host = r
        .host
        .as_deref()
        .map_or_else(|| orig_host.to_string(), fill);
    let port = match (r.port, &r.host, &r.scheme) {
        (Some(p), _, _) => Some(p.to_string()),
        // A new host or scheme drops the original port, as it would not fit.
        (None, None, None) => orig_port.map(str::to_string),
        _ => None,
    };
    let path = r
        .path
        .as_deref()
        .map_or_else(|| orig_path.to_string(), fill);
    let query = r
        .query
        .as_deref()
        .map_or_else(|| orig_query.to_string(), fill);
    let default_port = (scheme == "https" && port.as_deref() == Some("443"))
        || (scheme == "http" && port.as_deref() == Some("80"));
    let mut location = format!("{scheme}://{host}");
    if let Some(p) = port.filter(|_| !default_port) {
        location.push(':');
        location.push_str(&p);
    }
    location.push_str(&path);
    if !query.is_empty() {
        location.push('?');
        location.push_str(&query);
    }
    Response::builder()
        .status(r.status)
        .header(header::LOCATION, location)
        .body(Either::Right(Full::new(Bytes::new())))
        .unwrap_or_else(|_| error(ProxyError::NoRoute, "redirect target is not a valid URL"))
}

#[cfg(test)]
mod tests {
    use super::split_port;

    #[test]
    fn ports_split_off_hosts() {
        assert_eq!(split_port("a.com:8080"), ("a.com", Some("8080")));
        assert_eq!(split_port("a.com"), ("a.com", None));
        assert_eq!(split_port("[::1]:80"), ("::1", Some("80")));
        assert_eq!(split_port("::1"), ("::1", None));
    }
}
