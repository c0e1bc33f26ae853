//! One request on a connection of its own, opened the way traffic's are (`Upstream::stream`:
//! TCP, then TLS with the group's settings) and closed after the answer: for health checks
//! and synthetic traffic, which must not take or leave connections in the pool traffic uses.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::{Pool, Upstream, UpstreamProtocol};

/// What to ask.
#[derive(Debug, Clone)]
pub struct Ask<'a> {
    pub method: Method,
    /// Path and query.
    pub path: &'a str,
    pub headers: &'a [(HeaderName, HeaderValue)],
    /// How much of the answer's body to read (and throw away) before the connection is
    /// dropped: 0 for a health check, which needs only the status.
    pub body_cap: usize,
}

/// Sends `ask` to the target at `addr` (its `pool` only for where to connect) and reads the
/// whole answer; its status, or why there was none. Unbounded in time: callers time it.
pub async fn ask(
    upstream: &Upstream,
    pool: &Pool,
    addr: &str,
    ask: &Ask<'_>,
) -> Result<StatusCode, String> {
    let stream = upstream.stream(pool).await.map_err(|e| e.to_string())?;
    let io = TokioIo::new(stream);
    let mut req = http::Request::builder().method(ask.method.clone());
    for (n, v) in ask.headers {
        req = req.header(n, v);
    }
    let resp = match upstream.protocol {
        UpstreamProtocol::Http1 => {
            let (mut tx, conn) = http1::handshake(io).await.map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            // The target closes first (its side keeps the TIME_WAIT), and one `Host`.
            let mut req = req.uri(ask.path).header(http::header::CONNECTION, "close");
            if !ask.headers.iter().any(|(n, _)| n == http::header::HOST) {
                req = req.header(http::header::HOST, addr);
            }
            let req = req.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
            tx.send_request(req).await.map_err(|e| e.to_string())?
        }
        UpstreamProtocol::Http2 => {
            let (mut tx, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let scheme = if upstream.tls.is_some() {
                "https"
            } else {
                "http"
            };
            let req = req
                .uri(format!("{scheme}://{addr}{}", ask.path))
                .body(Empty::<Bytes>::new())
                .map_err(|e| e.to_string())?;
            tx.send_request(req).await.map_err(|e| e.to_string())?
        }
    };
    let status = resp.status();
    // Read and dropped frame by frame, never held: up to `body_cap`, then the connection
    // goes with the rest.
    let mut body = resp.into_body();
    let mut read = 0;
    while read < ask.body_cap {
        match body.frame().await {
            None => break,
            Some(Ok(f)) => read += f.data_ref().map_or(0, Bytes::len),
            Some(Err(e)) => return Err(format!("the answer broke off: {e}")),
        }
    }
    Ok(status)
}
