//! What a client connection's timeouts watch: bytes moving (the idle timeout) and where the
//! connection is between requests (the header-read timeout). Its own module, below both
//! `listener` (which serves connections with it) and `proxy` (whose upgraded tunnels idle
//! out by the same rule), so that neither imports the other for it.
//!
//! hyper's own header-read timer starts as soon as a connection waits for a request head,
//! so it also covers the quiet gap between requests on a kept-alive connection, and would
//! close an idle connection after `header_read` (10 s) rather than `idle` (60 s). So it is
//! off, and the timer here starts with a request's first byte instead: the stream wrapper
//! marks a head as started when bytes arrive while no request is open, the service marks
//! it complete, and the response body's end closes the request. Each is a relaxed atomic
//! on the connection's own task; `Serve` arms a timer only for a head that takes more than
//! one read to arrive.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// One connection's activity, shared by its stream, its requests and its `Serve`.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    /// Reads and writes that moved bytes, for the idle timeout.
    pub(crate) moved: AtomicU64,
    /// Requests whose head was read and whose answer is not done.
    open: AtomicU32,
    /// Bytes of a request head have arrived and the head is not complete yet.
    head_started: AtomicBool,
    /// Heads read so far: tells one head's timer from the next's.
    heads: AtomicU64,
    /// HTTP/2 (by preface or ALPN): its frames between requests are not request heads.
    h2: AtomicBool,
    /// The socket's last read found it empty (cleared as the listener polls hyper again):
    /// with the flags below, whether hyper's HTTP/1 connection waits for a request with
    /// nothing in hand, so that the listener can drop it until bytes come (`listener::conn`).
    read_blocked: AtomicBool,
    /// A write was begun since the last flush completed (or the stream is being shut down).
    unflushed: AtomicBool,
    /// The latest request came with a body: hyper may still be reading (or draining) it.
    body_left: AtomicBool,
}

impl Activity {
    /// The heads read so far, if a request head has begun and is not complete: the
    /// header-read timer's business.
    pub(crate) fn head_pending(&self) -> Option<u64> {
        (self.head_started.load(Relaxed) && !self.h2.load(Relaxed))
            .then(|| self.heads.load(Relaxed))
    }

    /// Whether the connection speaks HTTP/2 (by ALPN or the h2c preface).
    pub(crate) fn is_h2(&self) -> bool {
        self.h2.load(Relaxed)
    }

    /// Bytes that arrived before the HTTP exchange begins (a TLS handshake) start no head.
    pub(crate) fn handshake_done(&self, h2: bool) {
        self.head_started.store(false, Relaxed);
        if h2 {
            self.h2.store(true, Relaxed);
        }
    }

    /// A request's head is complete; the request is open until the returned guard (kept by
    /// its response body) is dropped. `body`: it came with a body (or may have one).
    pub(crate) fn request_begins(self: &Arc<Self>, body: bool) -> OpenRequest {
        self.head_started.store(false, Relaxed);
        self.body_left.store(body, Relaxed);
        self.heads
            .store(self.heads.load(Relaxed).wrapping_add(1), Relaxed);
        self.open.fetch_add(1, Relaxed);
        OpenRequest(self.clone())
    }
}

impl Activity {
    /// The listener is about to poll hyper's connection: a read in this poll will tell
    /// whether it ends waiting on an empty socket.
    pub(crate) fn poll_begins(&self) {
        self.read_blocked.store(false, Relaxed);
    }

    /// Whether an HTTP/1 connection just polled is between requests with nothing in hand:
    /// its last read found the socket empty, everything it wrote was flushed, no request is
    /// open, no byte of a next head came, and the last request had no body left to read.
    pub(crate) fn idle_between_requests(&self) -> bool {
        self.read_blocked.load(Relaxed)
            && !self.unflushed.load(Relaxed)
            && self.open.load(Relaxed) == 0
            && !self.head_started.load(Relaxed)
            && !self.body_left.load(Relaxed)
            && !self.h2.load(Relaxed)
    }
}

/// Keeps a request counted as open.
#[derive(Debug)]
pub(crate) struct OpenRequest(Arc<Activity>);

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
    }
}

/// A response body that keeps its request open until hyper is done with it.
pub(crate) struct Guarded<B> {
    inner: B,
    _open: OpenRequest,
}

impl<B> Guarded<B> {
    pub(crate) fn new(inner: B, open: OpenRequest) -> Self {
        Guarded { inner, _open: open }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Guarded<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A stream that counts the reads and writes that moved bytes, for the idle timeout, and
/// notes when a request head begins.
pub(crate) struct TrackedIo<S> {
    inner: S,
    activity: Arc<Activity>,
    /// No byte read yet (the first read tells an h2c preface).
    first: bool,
}

impl<S> TrackedIo<S> {
    pub(crate) fn new(inner: S, activity: Arc<Activity>) -> Self {
        TrackedIo {
            inner,
            activity,
            first: true,
        }
    }

    pub(crate) fn get_ref(&self) -> &S {
        &self.inner
    }

    fn touch(&self) {
        // Only this connection's task writes the count: no read-modify-write needed.
        let moved = &self.activity.moved;
        moved.store(moved.load(Relaxed).wrapping_add(1), Relaxed);
    }

    fn read_some(&mut self, got: &[u8]) {
        self.touch();
        let a = &self.activity;
        if self.first {
            self.first = false;
            if got.starts_with(b"PRI ") {
                a.h2.store(true, Relaxed);
            }
        }
        if a.open.load(Relaxed) == 0 && !a.head_started.load(Relaxed) {
            a.head_started.store(true, Relaxed);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TrackedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.read_some(&buf.filled()[before..]);
        }
        self.activity.read_blocked.store(res.is_pending(), Relaxed);
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TrackedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.activity.unflushed.store(true, Relaxed);
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.activity.unflushed.store(true, Relaxed);
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let res = Pin::new(&mut self.inner).poll_flush(cx);
        if matches!(res, Poll::Ready(Ok(()))) {
            self.activity.unflushed.store(false, Relaxed);
        }
        res
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.activity.unflushed.store(true, Relaxed);
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The idle rule of client connections and upgraded tunnels: the activity count (bumped
/// by every read or write that moved bytes) is looked at four times per `limit`, and a
/// connection quiet for all of `limit` is idle — it closes between `limit` and 1.25 ×
/// `limit` after its last byte, and reads and writes never read the clock.
pub(crate) struct IdleWatch {
    activity: Arc<Activity>,
    seen: u64,
    quiet: Duration,
    limit: Duration,
}

impl IdleWatch {
    pub(crate) fn new(activity: Arc<Activity>, limit: Duration) -> Self {
        IdleWatch {
            seen: activity.moved.load(Relaxed),
            activity,
            quiet: Duration::ZERO,
            limit,
        }
    }

    /// How long between looks.
    pub(crate) fn step(&self) -> Duration {
        self.limit / 4
    }

    /// One look, a step after the last: true once nothing has moved for the whole limit.
    pub(crate) fn look(&mut self) -> bool {
        let now = self.activity.moved.load(Relaxed);
        if now != self.seen {
            self.seen = now;
            self.quiet = Duration::ZERO;
            return false;
        }
        self.quiet += self.step();
        self.quiet >= self.limit
    }
}

/// Resolves once `activity` has not moved for `limit`, for connections that have left
/// hyper: upgraded tunnels.
pub(crate) async fn quiet_for(activity: Arc<Activity>, limit: Duration) {
    let mut watch = IdleWatch::new(activity, limit);
    loop {
        tokio::time::sleep(watch.step()).await;
        if watch.look() {
            return;
        }
    }
}
