//! The admin listener's own accept loop, so that its connections are bounded: it shares the
//! process's file descriptors with the proxy, and 300 idle admin connections under a
//! 256-descriptor limit once left the proxy unable to accept ("Too many open files").
//!
//! - at most `[admin] max_connections` are open; one more is answered 503 and closed
//!   (never queued, never served; drained for at most half a second so that the client
//!   reads the 503 rather than a reset);
//! - a request's head must arrive within `header_read_timeout` (one byte a second does not
//!   keep a connection); hyper starts this clock as soon as it waits for a head, so it also
//!   bounds how long a kept-alive connection waits for its next request;
//! - a request's body must then arrive within the same bound, and be at most
//!   [`MAX_BODY_BYTES`] (a body sent a byte a second does not hold a handler);
//! - a connection with no request in flight and no bytes moving for `idle_timeout` is
//!   closed (a handler that takes long, e.g. an analysis dry run, is not cut off).
//!
//! The limits are read from the configuration in force when a connection is accepted, so a
//! reload changes them for new connections.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::activity::{Activity, TrackedIo};
use crate::config::AdminLimits;
use crate::control::Controller;

/// Serves `router` on `listener` until `stop`, then waits (at most the shutdown timeout) for
/// open connections to finish their requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    control: Arc<Controller>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let open = Arc::new(AtomicUsize::new(0));
    let refusing = Arc::new(AtomicUsize::new(0));
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors or similar: back off instead of spinning.
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let limits = control.snapshot().config.admin.limits;
        match Slot::take(&open, limits.max_connections) {
            Some(slot) => {
                tokio::spawn(connection(
                    stream,
                    router.clone(),
                    limits,
                    stop.clone(),
                    slot,
                ));
            }
            None => refuse(stream, limits.max_connections, &refusing),
        }
    }
    drop(listener);
    let bound = control.snapshot().config.timeouts.shutdown;
    let deadline = tokio::time::Instant::now() + bound;
    while open.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// The largest request body read: axum's own limit for JSON bodies, which a configuration
/// sent to `plan` / `apply` travels in.
pub(super) const MAX_BODY_BYTES: usize = 2 << 20;

/// Reads a request's whole body within `header_read_timeout` before any handler runs, so
/// that a handler never waits on a slow client (its connection counts as busy meanwhile,
/// which the idle rule spares). Runs under /api/v1 after the token check (see `router`):
/// no body is read for a caller without a valid token. The other routes read no body.
pub(super) async fn body_in_time(
    State(api): State<super::Api>,
    req: Request,
    next: Next,
) -> Response {
    let limit = api
        .control
        .snapshot()
        .config
        .admin
        .limits
        .header_read_timeout;
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(limit, axum::body::to_bytes(body, MAX_BODY_BYTES)).await {
        Ok(Ok(bytes)) => next.run(Request::from_parts(parts, bytes.into())).await,
        Ok(Err(e)) if is_too_large(&e) => super::ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is larger than the {MAX_BODY_BYTES} bytes read at most"),
        )
        .into_response(),
        Ok(Err(e)) => super::ApiError::new(
            StatusCode::BAD_REQUEST,
            "body_unreadable",
            format!("cannot read the request body: {e}"),
        )
        .into_response(),
        Err(_) => super::ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "slow_body",
            format!(
                "the request body did not arrive within {}",
                humantime::format_duration(limit)
            ),
        )
        .into_response(),
    }
}

/// Whether reading a body failed on its size (not on a broken connection).
fn is_too_large(e: &axum::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// One of the `max_connections` places; given back when the connection ends.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(open: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        open.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()
        .map(|_| Slot(open.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How many refused connections may be lingering (answer written, request drained) at
/// once; beyond that one is closed at once, since each lingering one holds a descriptor.
const MAX_REFUSING: usize = 16;

/// How long a refused connection is kept to drain the client's request, and how much of it
/// is read: closing a socket with unread input sends a reset, which can make the client
/// lose the 503 it was sent.
const REFUSE_LINGER: Duration = Duration::from_millis(500);
const REFUSE_DRAIN_BYTES: usize = 64 * 1024;

/// A connection over the cap: answered 503, its write side shut (the client reads the
/// answer, then end of stream), what the client sent drained briefly, then closed. Never
/// served, and never held longer than [`REFUSE_LINGER`].
fn refuse(stream: TcpStream, max: usize, refusing: &Arc<AtomicUsize>) {
    let body = format!(
        "{{\"error\":{{\"code\":\"too_many_connections\",\"message\":\"the admin API has {max} connections open, its [admin] max_connections\"}}}}"
    );
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    tracing::debug!(max, "admin connection refused: too many open");
    let Some(slot) = Slot::take(refusing, MAX_REFUSING) else {
        let _ = stream.try_write(answer.as_bytes());
        return;
    };
    tokio::spawn(async move {
        let _slot = slot;
        let mut stream = stream;
        let _ = tokio::time::timeout(REFUSE_LINGER, async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            stream.write_all(answer.as_bytes()).await?;
            stream.shutdown().await?;
            let (mut buf, mut drained) = ([0u8; 4096], 0);
            while drained < REFUSE_DRAIN_BYTES {
                match stream.read(&mut buf).await? {
                    0 => break,
                    n => drained += n,
                }
            }
            std::io::Result::Ok(())
        })
        .await;
    });
}

async fn connection(
    stream: TcpStream,
    router: Router,
    limits: AdminLimits,
    stop: CancellationToken,
    _slot: Slot,
) {
    let activity = Arc::new(Activity::default());
    let busy = Arc::new(AtomicUsize::new(0));
    let service = Counted {
        inner: TowerToHyperService::new(router),
        busy: busy.clone(),
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        .serve_connection(
            TokioIo::new(TrackedIo::new(stream, activity.clone())),
            service,
        );
    tokio::pin!(conn);
    let step = (limits.idle_timeout / 4).max(Duration::from_millis(1));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + step, step);
    // Missed ticks (a busy runtime) are not made up in a burst; the idle time is measured
    // from the last activity seen, not added up from ticks.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = activity.moved.load(Ordering::Relaxed);
    let mut last_active = tokio::time::Instant::now();
    let mut draining = false;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "admin connection ended with an error");
                }
                return;
            }
            _ = stop.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tick.tick() => {
                let now = activity.moved.load(Ordering::Relaxed);
                if now != seen || busy.load(Ordering::SeqCst) > 0 {
                    seen = now;
                    last_active = tokio::time::Instant::now();
                } else if last_active.elapsed() >= limits.idle_timeout {
                    tracing::debug!("closing idle admin connection");
                    return;
                }
            }
        }
    }
}

/// The router as hyper's service, counting requests in flight (for the idle rule).
#[derive(Clone)]
struct Counted {
    inner: TowerToHyperService<Router>,
    busy: Arc<AtomicUsize>,
}

impl hyper::service::Service<http::Request<Incoming>> for Counted {
    type Response =
        <TowerToHyperService<Router> as hyper::service::Service<http::Request<Incoming>>>::Response;
    type Error =
        <TowerToHyperService<Router> as hyper::service::Service<http::Request<Incoming>>>::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn call(&self, req: http::Request<Incoming>) -> Self::Future {
        let busy = Busy::enter(&self.busy);
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            drop(busy);
            res
        })
    }
}

struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn enter(n: &Arc<AtomicUsize>) -> Busy {
        n.fetch_add(1, Ordering::SeqCst);
        Busy(n.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
