//! Sending a copy to one of the mirror group's targets and reading its answer into a
//! [`Seen`]. Copies go through hyper's client on connections of the mirror's own (opened
//! the way traffic's are: `Upstream::stream`, TLS included), kept idle per target between
//! copies: they never take a connection from, or leave one in, the pool real requests use,
//! so a slow mirror target cannot hold up a real request on a shared connection.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, Method};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::compare::{Recorder, Seen};
use crate::config::MirrorCompare;
use crate::group::{Group, Target};
use crate::metrics::now_ms;
use crate::upstream::UpstreamProtocol;

/// A copied request: the head as the real one went out (the proxy's own fields included)
/// and its body, whole.
#[derive(Debug)]
pub struct Copy {
    pub method: Method,
    /// Path and query.
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Idle connections kept per target at most: the rest are closed after their copy.
const IDLE_PER_TARGET: usize = 64;

type H1 = http1::SendRequest<Full<Bytes>>;
type H2 = http2::SendRequest<Full<Bytes>>;

/// The mirror's connections, by target address.
#[derive(Default)]
pub(super) struct Conns {
    h1: Mutex<HashMap<String, Vec<H1>>>,
    h2: Mutex<HashMap<String, H2>>,
}

/// Why a copy got no answer.
#[derive(Debug, thiserror::Error)]
pub(super) enum CopyError {
    #[error("no routable target in group {0}")]
    NoTarget(String),
    #[error("{0}")]
    Failed(String),
}

/// Sends `copy` to a routable target of `group` (at random) and reads the whole answer,
/// recording what the comparison needs. Unbounded in time: the caller times it.
pub(super) async fn send(
    conns: &Conns,
    group: &Group,
    copy: Copy,
    compare: &MirrorCompare,
) -> Result<Seen, CopyError> {
    let now = now_ms();
    let routable: Vec<&std::sync::Arc<Target>> =
        group.targets.iter().filter(|t| t.routable(now)).collect();
    if routable.is_empty() {
        return Err(CopyError::NoTarget(group.name.clone()));
    }
    let target = routable[fastrand::usize(..routable.len())];
    let failed = |e: &dyn std::fmt::Display| CopyError::Failed(e.to_string());
    let mut req = http::Request::builder().method(copy.method);
    let resp = match group.upstream.protocol {
        UpstreamProtocol::Http1 => {
            let mut tx = match conns.idle_h1(&target.addr.0) {
                Some(tx) => tx,
                None => {
                    let (tx, conn) = http1::handshake(open(group, target).await?)
                        .await
                        .map_err(|e| failed(&e))?;
                    tokio::spawn(conn);
                    tx
                }
            };
            req = req.uri(copy.path);
            *req.headers_mut().expect("a fresh builder") = copy.headers;
            let req = req.body(Full::new(copy.body)).map_err(|e| failed(&e))?;
            // Timed from the request's send, as the real one is on a warm connection: a
            // fresh connection's handshake is not the version's latency.
            let started = Instant::now();
            let resp = tx.send_request(req).await.map_err(|e| failed(&e))?;
            let (parts, body) = resp.into_parts();
            let seen = read(&parts, body, started, compare).await?;
            // Ready again once hyper has seen the answer's end (a moment after the last
            // frame); a connection the target closes is not kept.
            let ready = tokio::time::timeout(std::time::Duration::from_millis(100), tx.ready());
            if let Ok(Ok(())) = ready.await {
                conns.keep_h1(&target.addr.0, tx);
            }
            return Ok(seen);
        }
        UpstreamProtocol::Http2 => {
            let mut tx = match conns.shared_h2(&target.addr.0) {
                Some(tx) => tx,
                None => {
                    let (tx, conn) = http2::Builder::new(TokioExecutor::new())
                        .timer(TokioTimer::new())
                        .handshake(open(group, target).await?)
                        .await
                        .map_err(|e| failed(&e))?;
                    tokio::spawn(conn);
                    conns.keep_h2(&target.addr.0, tx.clone());
                    tx
                }
            };
            let scheme = if group.upstream.tls.is_some() {
                "https"
            } else {
                "http"
            };
            let mut headers = copy.headers;
            headers.remove(http::header::HOST);
            req = req.uri(format!("{scheme}://{}{}", target.authority, copy.path));
            *req.headers_mut().expect("a fresh builder") = headers;
            let req = req.body(Full::new(copy.body)).map_err(|e| failed(&e))?;
            let started = Instant::now();
            let resp = tx.send_request(req).await.map_err(|e| failed(&e))?;
            (resp, started)
        }
    };
    let (resp, started) = resp;
    let (parts, body) = resp.into_parts();
    read(&parts, body, started, compare).await
}

/// A fresh connection to `target`, opened as traffic's are (TCP, then the group's TLS).
async fn open(
    group: &Group,
    target: &Target,
) -> Result<TokioIo<crate::upstream::Stream>, CopyError> {
    let stream = group.upstream.stream(&target.pool).await;
    stream
        .map(TokioIo::new)
        .map_err(|e| CopyError::Failed(e.to_string()))
}

/// The answer's head and whole body, frame by frame into the recorder (nothing held beyond
/// what a JSON comparison keeps).
async fn read(
    parts: &http::response::Parts,
    mut body: hyper::body::Incoming,
    started: Instant,
    compare: &MirrorCompare,
) -> Result<Seen, CopyError> {
    let mut rec = Recorder::new(compare);
    rec.head(
        compare,
        parts.status.as_u16(),
        &parts.headers,
        started.elapsed(),
    );
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| CopyError::Failed(format!("the answer broke off: {e}")))?;
        if let Some(d) = frame.data_ref() {
            rec.data(d);
        }
    }
    Ok(rec.finish().expect("a head was recorded"))
}

impl Conns {
    fn idle_h1(&self, addr: &str) -> Option<H1> {
        let mut idle = self.h1.lock().expect("mirror connections");
        let stack = idle.get_mut(addr)?;
        while let Some(tx) = stack.pop() {
            if tx.is_ready() {
                return Some(tx);
            }
        }
        None
    }

    fn keep_h1(&self, addr: &str, tx: H1) {
        if !tx.is_ready() {
            return;
        }
        let mut idle = self.h1.lock().expect("mirror connections");
        let stack = idle.entry(addr.to_string()).or_default();
        if stack.len() < IDLE_PER_TARGET {
            stack.push(tx);
        }
    }

    fn shared_h2(&self, addr: &str) -> Option<H2> {
        let mut shared = self.h2.lock().expect("mirror connections");
        match shared.get(addr) {
            Some(tx) if !tx.is_closed() => Some(tx.clone()),
            Some(_) => {
                shared.remove(addr);
                None
            }
            None => None,
        }
    }

    fn keep_h2(&self, addr: &str, tx: H2) {
        self.h2
            .lock()
            .expect("mirror connections")
            .insert(addr.to_string(), tx);
    }
}
