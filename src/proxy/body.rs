//! The response body passed from a target to the client, and the exchange's count in its
//! group's stats. The count is made when the body ends rather than when the head arrives:
//! a target that resets or sends a bad chunk after a `200` head has failed the exchange,
//! and the guard and analyses must see that as the failure it is (a 502 with `Reset`), not
//! as a success. The client's connection (HTTP/1) or stream (h2) is then reset, since the
//! body ends in an error rather than cleanly.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::account::{Account, End};
use crate::fingerprint::PREFIX_BYTES;
use crate::group::InFlight;
use crate::metrics::Failure as Seen;
use crate::upstream::error;
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

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response body from a target. Keeps the request counted as in flight until the body
/// is done (so least-outstanding sees long downloads), then returns the HTTP/1 connection
/// to the target's pool. A body dropped half-read closes its connection instead.
///
/// Between reads the target may keep it waiting no longer than the request timeout: a
/// target that stalls mid-body has failed the exchange (504, a timeout for the group and
/// the guard), rather than being counted a success once the client gives up. The timer is
/// made only when the body first has to wait, so a body that comes with its head costs none.
pub struct UpstreamResponseBody {
    inner: UpstreamBody,
    in_flight: InFlight,
    /// When the connection was taken for this request, for the pool's idle limit.
    used_ms: u64,
    bytes: u64,
    /// `None` once counted (or before `open`).
    account: Option<Account>,
    /// The request timeout, here the longest the target may keep the body waiting.
    limit: Duration,
    /// When the body last got bytes from the target (or stopped waiting for the client).
    last: Instant,
    /// The last poll found nothing to read.
    waited: bool,
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The first bytes of a 5xx answer's body, for its fingerprint (`crate::fingerprint`):
    /// copied as they pass, never waited for; `None` for any other answer.
    prefix: Option<Vec<u8>>,
    /// A mirrored request's real answer, watched for the comparison (`crate::mirror`);
    /// handed over only when the body ended whole.
    witness: Option<Box<crate::mirror::Witness>>,
}

impl UpstreamResponseBody {
    /// `answered`: when the head arrived; `limit`: the request timeout; `witness`: a
    /// mirrored request's real answer's witness, if it has one.
    pub(super) fn new(
        inner: UpstreamBody,
        in_flight: InFlight,
        used_ms: u64,
        (answered, limit): (Instant, Duration),
        witness: Option<crate::mirror::Witness>,
    ) -> UpstreamResponseBody {
        UpstreamResponseBody {
            inner,
            in_flight,
            used_ms,
            bytes: 0,
            account: None,
            limit,
            last: answered,
            waited: false,
            stall: None,
            prefix: None,
            witness: witness.map(Box::new),
        }
    }

    /// The body ended whole: the mirror's witness has all of it.
    fn ended_whole(&mut self) {
        if let Some(w) = self.witness.take() {
            w.done();
        }
    }

    /// Gives the body the account it settles when it ends (at once if it has no more).
    pub(super) fn open(&mut self, account: Account) {
        if account.status >= 500 {
            self.prefix = Some(Vec::with_capacity(PREFIX_BYTES));
        }
        self.account = Some(account);
        if self.inner.is_end_stream() {
            self.ended_whole();
            self.release();
            self.finish(End::Delivered);
        }
    }

    /// Back to the pool with the connection, if the body is complete and it may be reused.
    fn release(&mut self) {
        if let UpstreamBody::H1(b) = &mut self.inner {
            if let Some(conn) = b.take_reusable() {
                self.in_flight.target().pool.put(conn, self.used_ms);
            }
        }
    }

    /// Counts the answer, once. A client that failed its upload to an HTTP/2 target is
    /// the cause of whatever end the answer had.
    fn finish(&mut self, end: End) {
        let Some(account) = self.account.take() else {
            return;
        };
        let end = match &self.inner {
            UpstreamBody::H2(b) => b.client_fault().map_or(end, |c| End::Client(c.code())),
            _ => end,
        };
        if let End::Upstream { code, .. } = &end {
            tracing::debug!(target = %self.in_flight.target().addr, code, "target's answer broke off");
        }
        let prefix = self.prefix.as_deref().unwrap_or_default();
        account.finish(end, self.in_flight.target(), self.bytes, prefix);
    }

    /// The target broke its answer off: a failed exchange (502, reset) for the group, the
    /// target's passive ejection and the access log.
    fn upstream_failed(&mut self, code: &'static str) {
        self.finish(End::Upstream {
            status: 502,
            failure: Seen::Reset,
            code,
        });
    }

    /// Whether the target has kept the body waiting for longer than the request timeout.
    /// A wait for the client's upload is not the target's: the clock starts after it.
    fn target_stalled(&mut self, cx: &mut Context<'_>) -> bool {
        let waiting_on_client = match &self.inner {
            UpstreamBody::H1(b) => b.waiting_on_client(),
            UpstreamBody::H2(b) => b.waiting_on_client(),
            UpstreamBody::Done => false,
        };
        if waiting_on_client {
            self.last = Instant::now();
            return false;
        }
        let deadline = tokio::time::Instant::from(self.last + self.limit);
        let sleep = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        sleep.as_mut().poll(cx).is_ready()
    }
}

impl Drop for UpstreamResponseBody {
    fn drop(&mut self) {
        // Dropped before its end: the client went away, or the body was not wanted. The
        // target did its part — unless the client went away in the middle of its own
        // upload, which is the client's abort (hyper may drop the body on the broken
        // connection before the upload's error reaches it).
        let uploading = match &self.inner {
            UpstreamBody::H1(b) => b.uploading(),
            UpstreamBody::H2(b) => b.uploading(),
            UpstreamBody::Done => false,
        };
        self.finish(if uploading {
            End::Client("aborted")
        } else {
            End::Delivered
        });
    }
}

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
                        error::Error::Client(c) => this.finish(End::Client(c.code())),
                        error::Error::Protocol(_) => {
                            this.upstream_failed("upstream_protocol_error");
                        }
                        _ => this.upstream_failed("upstream_reset"),
                    }
                    Poll::Ready(Some(Err(e.into())))
                }
                other => other.map_err(Into::into),
            },
            UpstreamBody::H2(b) => match Pin::new(&mut *b).poll_frame(cx) {
                Poll::Ready(Some(Err(e))) => {
                    // `finish` asks whether the client's upload caused it.
                    this.upstream_failed("upstream_reset");
                    Poll::Ready(Some(Err(e)))
                }
                other => other.map_err(Into::into),
            },
            UpstreamBody::Done => Poll::Ready(None),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if std::mem::take(&mut this.waited) {
                    this.last = Instant::now();
                }
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                    if let Some(p) = &mut this.prefix {
                        let room = PREFIX_BYTES - p.len();
                        p.extend_from_slice(&data[..data.len().min(room)]);
                    }
                    if let Some(w) = &mut this.witness {
                        w.data(data);
                    }
                }
                if this.inner.is_end_stream() {
                    this.ended_whole();
                    this.release();
                    this.finish(End::Delivered);
                }
            }
            Poll::Ready(None) => {
                this.ended_whole();
                this.release();
                this.finish(End::Delivered);
            }
            Poll::Pending if this.account.is_some() && this.target_stalled(cx) => {
                // The connection goes with the body it failed to finish.
                this.inner = UpstreamBody::Done;
                this.finish(End::Upstream {
                    status: 504,
                    failure: Seen::Timeout,
                    code: "upstream_timeout",
                });
                let e = format!(
                    "target sent nothing of its response body for {}",
                    humantime::format_duration(this.limit)
                );
                return Poll::Ready(Some(Err(e.into())));
            }
            Poll::Pending => this.waited = true,
            Poll::Ready(Some(Err(_))) => {}
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

/// `make()`'s value written straight into `slot`, allocated before it is made: the
/// optimiser then builds it there. `Box::new(make())` builds it on the stack and copies it
/// into the box — for a request's future (several KB) ~600 instructions a request
/// (bench/icount.sh; for an answer's body no gain was measurable, its parts are moved in
/// either way). `Box::write` is why the crate needs Rust 1.87.
#[inline(always)]
pub(crate) fn in_place<T>(slot: Box<std::mem::MaybeUninit<T>>, make: impl FnOnce() -> T) -> Box<T> {
    Box::write(slot, make())
}
