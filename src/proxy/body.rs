//! The response body passed from a target to the client, and the exchange's count in its
//! group's stats. The count is made when the body ends rather than when the head arrives:
//! a target that resets or sends a bad chunk after a `200` head has failed the exchange,
//! and the guard and analyses must see that as the failure it is (a 502 with `Reset`), not
//! as a success. The client's connection (HTTP/1) or stream (h2) is then reset, since the
//! body ends in an error rather than cleanly.

use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::config::PassiveHealth;
use crate::group::{GroupStats, InFlight};
use crate::metrics::Failure as Seen;
use crate::upstream::{h1, h2};

/// A target's response body: read by our HTTP/1 client or by hyper's HTTP/2 one.
pub enum UpstreamBody {
    H1(h1::ResponseBody),
    H2(h2::ResponseBody),
    /// Nothing (the connection went to a tunnel).
    Done,
}

impl UpstreamBody {
    pub(super) fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::H1(b) => b.is_end_stream(),
            UpstreamBody::H2(b) => b.is_end_stream(),
            UpstreamBody::Done => true,
        }
    }
}

/// An answer's count in its group, made once the body has ended (or been dropped).
pub(super) struct Tally {
    pub(super) stats: Arc<GroupStats>,
    pub(super) status: u16,
    /// Until the response head.
    pub(super) took: Duration,
    pub(super) answered: Instant,
    pub(super) passive: PassiveHealth,
}

type PendingLog = Box<(
    crate::access_log::AccessLog,
    crate::access_log::Entry,
    Instant,
)>;

/// The response body from a target. Keeps the request counted as in flight until the body
/// is done (so least-outstanding sees long downloads), then returns the HTTP/1 connection
/// to the target's pool. A body dropped half-read closes its connection instead.
pub struct UpstreamResponseBody {
    inner: UpstreamBody,
    in_flight: InFlight,
    /// When the connection was taken for this request, for the pool's idle limit.
    used_ms: u64,
    bytes: u64,
    /// `None` once counted.
    tally: Option<Tally>,
    /// The access log line, written when the body is done (or dropped).
    pub(super) log: Option<PendingLog>,
}

impl UpstreamResponseBody {
    pub(super) fn new(
        inner: UpstreamBody,
        in_flight: InFlight,
        used_ms: u64,
        tally: Tally,
    ) -> UpstreamResponseBody {
        let mut body = UpstreamResponseBody {
            inner,
            in_flight,
            used_ms,
            bytes: 0,
            tally: Some(tally),
            log: None,
        };
        if body.inner.is_end_stream() {
            body.release();
            body.delivered();
        }
        body
    }

    /// Back to the pool with the connection, if the body is complete and it may be reused.
    fn release(&mut self) {
        if let UpstreamBody::H1(b) = &mut self.inner {
            if let Some(conn) = b.take_reusable() {
                self.in_flight.target().pool.put(conn, self.used_ms);
            }
        }
    }

    /// The answer as the target gave it: counted with its status.
    fn delivered(&mut self) {
        if let Some(t) = self.tally.take() {
            t.stats.record(t.status, t.took, t.answered, None);
        }
    }

    /// The target broke its answer off: a failed exchange (502, reset) for the group, the
    /// target's passive ejection and the access log, counted now (the current second).
    fn upstream_failed(&mut self, code: &'static str, error: &dyn std::fmt::Display) {
        if let Some(t) = self.tally.take() {
            t.stats.resets.fetch_add(1, Relaxed);
            t.stats
                .record(502, t.took, Instant::now(), Some(Seen::Reset));
            let target = self.in_flight.target();
            tracing::debug!(target = %target.addr, %error, "target's answer broke off");
            let p = t.passive;
            if target.record_failure(p.consecutive_failures, p.ejection_time) {
                tracing::warn!(
                    target = %target.addr, failures = p.consecutive_failures,
                    "target ejected after consecutive failures"
                );
            }
        }
        if let Some(log) = &mut self.log {
            log.1.status = 502;
            log.1.upstream_error = Some(code);
        }
    }

    /// The client's upload failed the exchange after the answer began: not the target's
    /// doing, counted apart.
    fn client_failed(&mut self, code: &'static str) {
        if let Some(t) = self.tally.take() {
            t.stats.record_client_error(Instant::now());
        }
        if let Some(log) = &mut self.log {
            log.1.client_error = Some(code);
        }
    }
}

impl Drop for UpstreamResponseBody {
    fn drop(&mut self) {
        // Dropped before its end: the client went away, or the body was not wanted. The
        // target did its part.
        self.delivered();
        if let Some(pending) = self.log.take() {
            let (log, mut e, started) = *pending;
            e.bytes = self.bytes;
            e.total_ms = crate::access_log::millis(started.elapsed());
            log.log(e);
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Body for UpstreamResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled: Poll<Option<Result<Frame<Bytes>, BoxError>>> = match &mut this.inner {
            UpstreamBody::H1(b) => match Pin::new(b).poll_frame(cx) {
                Poll::Ready(Some(Err(e))) => {
                    match &e {
                        h1::Error::Client(c) => this.client_failed(c.code()),
                        h1::Error::Protocol(_) => {
                            this.upstream_failed("upstream_protocol_error", &e)
                        }
                        _ => this.upstream_failed("upstream_reset", &e),
                    }
                    Poll::Ready(Some(Err(e.into())))
                }
                other => other.map_err(Into::into),
            },
            UpstreamBody::H2(b) => match Pin::new(&mut *b).poll_frame(cx) {
                Poll::Ready(Some(Err(e))) => {
                    match b.client_fault() {
                        Some(c) => this.client_failed(c.code()),
                        None => this.upstream_failed("upstream_reset", &e),
                    }
                    Poll::Ready(Some(Err(e.into())))
                }
                other => other.map_err(Into::into),
            },
            UpstreamBody::Done => Poll::Ready(None),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.release();
                    this.delivered();
                }
            }
            Poll::Ready(None) => {
                this.release();
                this.delivered();
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            UpstreamBody::H1(b) => b.size_hint(),
            UpstreamBody::H2(b) => b.size_hint(),
            UpstreamBody::Done => SizeHint::with_exact(0),
        }
    }
}
