//! The request path: route match, then for a forward action the group and target choice,
//! header rewriting, the upstream exchange with its timeout and one retry, and the response.
//! A request reads the routing snapshot once and finishes on it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Empty, Full};
use hyper::body::Incoming;

use crate::config::{FixedResponse, Redirect, UpstreamProtocol};
use crate::error::{ProxyError, ERROR_HEADER};
use crate::group::{now_ms, Group, InFlight, Target};
use crate::route::{matches, RequestFacts};
use crate::service::Service;
use crate::snapshot::{RouteAction, Snapshot};

pub type ResponseBody = Either<UpstreamResponseBody, Full<Bytes>>;

/// What a request needs to know about the connection it came on.
#[derive(Debug)]
pub struct ConnInfo {
    pub listener: Arc<str>,
    pub client: SocketAddr,
    pub local: SocketAddr,
    pub tls: bool,
}

pub async fn handle(
    req: Request<Incoming>,
    conn: Arc<ConnInfo>,
    snapshots: Arc<ArcSwap<Snapshot>>,
) -> Result<Response<ResponseBody>, Infallible> {
    let snapshot = snapshots.load_full();
    Ok(route(req, &conn, &snapshot).await)
}

async fn route(req: Request<Incoming>, conn: &ConnInfo, snap: &Snapshot) -> Response<ResponseBody> {
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
    match &route.action {
        RouteAction::Fixed(f) => fixed(f),
        RouteAction::Redirect(r) => redirect(r, &req, conn),
        RouteAction::Forward(service) => forward(req, service, conn).await,
    }
}

async fn forward(
    mut req: Request<Incoming>,
    svc: &Service,
    conn: &ConnInfo,
) -> Response<ResponseBody> {
    let now = now_ms();
    let Some(group) = svc.choose_group(now) else {
        return error(ProxyError::NoHealthyTarget, "service has no groups");
    };
    group
        .stats
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let Some(target) = group.pick(svc.balance, None, now) else {
        group.stats.record_status(503);
        return error(
            ProxyError::NoHealthyTarget,
            format_args!(
                "no healthy target in group {} of service {}",
                group.name, svc.name
            ),
        );
    };

    let upgrade = is_upgrade(&req);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let empty_body = body.is_end_stream();
    let retryable = empty_body && !upgrade && is_idempotent(&parts.method);
    let mut headers = parts.headers;
    prepare_request_headers(&mut headers, &parts.uri, conn, upgrade);
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    let retry_headers = retryable.then(|| headers.clone());
    let body = if empty_body {
        Either::Right(Empty::new())
    } else {
        Either::Left(body)
    };

    let mut result = exchange(svc, group, target, &parts.method, &path, headers, body).await;
    if let (Err(f), Some(headers)) = (&result, retry_headers) {
        if f.retryable() {
            if let Some(other) = group.pick(svc.balance, Some(target), now_ms()) {
                tracing::debug!(target = %target.addr, retry = %other.addr, "retrying on another target");
                result = exchange(
                    svc,
                    group,
                    other,
                    &parts.method,
                    &path,
                    headers,
                    Either::Right(Empty::new()),
                )
                .await;
            }
        }
    }

    match result {
        Ok((mut resp, in_flight)) => {
            group.stats.record_status(resp.status().as_u16());
            match client_upgrade {
                Some(client) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
                    let upstream = hyper::upgrade::on(&mut resp);
                    tokio::spawn(tunnel(client, upstream));
                }
                _ => remove_hop_by_hop(resp.headers_mut()),
            }
            let (parts, body) = resp.into_parts();
            Response::from_parts(
                parts,
                Either::Left(UpstreamResponseBody {
                    inner: body,
                    _in_flight: in_flight,
                }),
            )
        }
        Err(f) => {
            let e = f.error();
            group.stats.record_status(e.status().as_u16());
            error(e, f)
        }
    }
}

/// Why an exchange with a target failed.
#[derive(Debug)]
enum Failure {
    Connect(String),
    /// The connection closed before any response: the request may be sent again.
    ClosedEarly(String),
    Reset(String),
    Timeout(std::time::Duration),
    Protocol(String),
}

impl Failure {
    fn retryable(&self) -> bool {
        matches!(self, Failure::Connect(_) | Failure::ClosedEarly(_))
    }

    fn error(&self) -> ProxyError {
        match self {
            Failure::Connect(_) => ProxyError::UpstreamConnect,
            Failure::ClosedEarly(_) | Failure::Reset(_) => ProxyError::UpstreamReset,
            Failure::Timeout(_) => ProxyError::UpstreamTimeout,
            Failure::Protocol(_) => ProxyError::UpstreamProtocol,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Connect(e) => write!(f, "cannot connect to target: {e}"),
            Failure::ClosedEarly(e) | Failure::Reset(e) => {
                write!(f, "target closed the connection: {e}")
            }
            Failure::Timeout(d) => write!(
                f,
                "target sent no response within {}",
                humantime::format_duration(*d)
            ),
            Failure::Protocol(e) => write!(f, "bad response from target: {e}"),
        }
    }
}

async fn exchange(
    svc: &Service,
    group: &Group,
    target: &Arc<Target>,
    method: &Method,
    path: &str,
    headers: HeaderMap,
    body: crate::upstream::UpstreamBody,
) -> Result<(Response<Incoming>, InFlight), Failure> {
    let uri = Uri::builder()
        .scheme("http")
        .authority(target.authority.clone())
        .path_and_query(path)
        .build()
        .map_err(|e| Failure::Protocol(e.to_string()))?;
    let mut up = Request::new(body);
    *up.method_mut() = method.clone();
    *up.uri_mut() = uri;
    *up.headers_mut() = headers;
    *up.version_mut() = match group.upstream.protocol {
        UpstreamProtocol::Http1 => Version::HTTP_11,
        UpstreamProtocol::Http2 => Version::HTTP_2,
    };
    let in_flight = target.begin();
    let outcome =
        tokio::time::timeout(svc.request_timeout, group.upstream.client.request(up)).await;
    let failure = match outcome {
        Ok(Ok(resp)) => {
            if resp.status().is_server_error() && svc.passive.eject_on_5xx {
                note_failure(svc, group, target);
            } else {
                target.record_success();
            }
            return Ok((resp, in_flight));
        }
        Err(_) => {
            group
                .stats
                .timeouts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Failure::Timeout(svc.request_timeout)
        }
        Ok(Err(e)) => classify(&e, group),
    };
    note_failure(svc, group, target);
    Err(failure)
}

fn classify(e: &hyper_util::client::legacy::Error, group: &Group) -> Failure {
    use std::sync::atomic::Ordering::Relaxed;
    let detail = error_chain(e);
    if e.is_connect() {
        group.stats.connect_failures.fetch_add(1, Relaxed);
        return Failure::Connect(detail);
    }
    group.stats.resets.fetch_add(1, Relaxed);
    let hyper_err = std::error::Error::source(e).and_then(|s| s.downcast_ref::<hyper::Error>());
    match hyper_err {
        Some(h) if h.is_incomplete_message() || h.is_canceled() => Failure::ClosedEarly(detail),
        Some(h) if h.is_parse() => Failure::Protocol(detail),
        _ => Failure::Reset(detail),
    }
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

/// Joins the client's and the target's upgraded connections (WebSocket and other Upgrades).
async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    match tokio::try_join!(client, upstream) {
        Ok((client, upstream)) => {
            let mut client = hyper_util::rt::TokioIo::new(client);
            let mut upstream = hyper_util::rt::TokioIo::new(upstream);
            if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                tracing::debug!(error = %e, "upgraded connection ended with an error");
            }
        }
        Err(e) => tracing::debug!(error = %e, "upgrade did not complete"),
    }
}

/// The response body from a target; keeps the request counted as in flight until the body
/// is done, so least-outstanding sees long downloads.
pub struct UpstreamResponseBody {
    inner: Incoming,
    _in_flight: InFlight,
}

impl Body for UpstreamResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn remove_hop_by_hop(h: &mut HeaderMap) {
    // Headers named in Connection are hop-by-hop too.
    if let Some(conn) = h.get(header::CONNECTION).cloned() {
        if let Ok(list) = conn.to_str() {
            for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                h.remove(name);
            }
        }
    }
    for name in &HOP_BY_HOP {
        h.remove(name);
    }
}

fn prepare_request_headers(h: &mut HeaderMap, uri: &Uri, conn: &ConnInfo, upgrade: bool) {
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
    let ip = conn.client.ip().to_string();
    let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert("x-forwarded-for", v);
    }
    h.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
    );
    h.insert("x-forwarded-port", HeaderValue::from(conn.local.port()));
    if let Some(host) = host {
        h.insert("x-forwarded-host", host);
    }
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

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
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
