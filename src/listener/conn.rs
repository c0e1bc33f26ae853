//! A client connection's HTTP state, built when bytes arrive and dropped while an HTTP/1.1
//! connection waits for its next request.
//!
//! Why: hyper's HTTP/1 connection holds an 8 KiB read buffer and an 8 KiB write buffer from
//! its creation to its end, besides its dispatcher and the slot for a request's future, so
//! 10,000 idle keep-alive clients cost about 40 KB each (nginx 1.7 KB, HAProxy 1.3 KB, which
//! release their buffers between requests). Here a new connection starts with no HTTP state:
//! the first bytes are read into 24 bytes on the connection itself to tell an HTTP/2 preface
//! from HTTP/1.1 (ALPN decides over TLS), and hyper's connection is built only then. An
//! HTTP/1.1 connection found idle by `Serve`'s park timer (`serve::PARK_AFTER`) — no request
//! open, the answer flushed, hyper waiting on an empty socket — has hyper's connection taken
//! apart again (`into_parts`: the socket, any bytes it had read ahead, the service) and is
//! *parked*: only the socket (and its TLS session), the service's `Arc`s and the timers stay,
//! until the socket is readable. Not after every answer: building hyper's connection again
//! per request cost 22 % more instructions per request (bench/icount.sh). HTTP/2 keeps its
//! connection (its state — HPACK tables, settings, streams — lives as long as it does).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::Requests;
use crate::activity::{Activity, TrackedIo};

/// hyper's connection builders for a listener's limits, shared by its connections.
pub(super) struct Protocols {
    pub(super) h1: http1::Builder,
    pub(super) h2: http2::Builder<TokioExecutor>,
}

/// Why a connection ended other than by the client's or our own close.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnError {
    #[error("reading the first bytes: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// A stream whose readiness can be awaited without reading: what a parked connection waits on.
pub(super) trait Readable {
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl Readable for TrackedIo<TcpStream> {
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_ref().poll_read_ready(cx)
    }
}

impl Readable for tokio_rustls::server::TlsStream<TrackedIo<TcpStream>> {
    /// Readable at once when the session holds plaintext (a request that came with the
    /// handshake's last flight) or has seen the client's close; else when the socket is (any
    /// part of a record rustls holds waits for more bytes anyway).
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (io, session) = self.get_ref();
        if !session.wants_read() {
            return Poll::Ready(Ok(()));
        }
        io.poll_readable(cx)
    }
}

/// What the client speaks, as far as the TLS handshake told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Alpn {
    /// Plain TCP, or TLS without ALPN: the first bytes tell.
    Unknown,
    H1,
    H2,
}

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

type H1<I> = http1::UpgradeableConnection<TokioIo<Rewind<I>>, Requests>;
type H2<I> = http2::Connection<TokioIo<Rewind<I>>, Requests, TokioExecutor>;

enum Stage<I> {
    /// No byte yet: reading up to the preface's length to tell h2c from HTTP/1.1.
    Sniff {
        io: I,
        service: Requests,
        got: [u8; 24],
        len: u8,
    },
    /// HTTP/1.1 between requests: no hyper state, waiting for the socket to be readable.
    /// `ahead` holds bytes hyper had read but not parsed (part of the next head; rare).
    Parked {
        io: I,
        service: Requests,
        ahead: Bytes,
    },
    // Boxed: a parked connection does not carry their size.
    H1(Box<H1<I>>),
    H2(Pin<Box<H2<I>>>),
    Done,
}

/// One client connection's HTTP, from its first byte to its end (see the module's comment).
pub(super) struct Http<I> {
    stage: Stage<I>,
    protocols: Arc<Protocols>,
    activity: Arc<Activity>,
    /// A graceful shutdown was asked for: no more parking, hyper finishes and closes.
    closing: bool,
}

impl<I> Http<I>
where
    I: AsyncRead + AsyncWrite + Readable + Unpin + Send + 'static,
{
    pub(super) fn new(
        io: I,
        service: Requests,
        alpn: Alpn,
        protocols: Arc<Protocols>,
        activity: Arc<Activity>,
    ) -> Self {
        let mut http = Http {
            stage: Stage::Done,
            protocols,
            activity,
            closing: false,
        };
        http.stage = match alpn {
            Alpn::Unknown => Stage::Sniff {
                io,
                service,
                got: [0; 24],
                len: 0,
            },
            Alpn::H1 => Stage::Parked {
                io,
                service,
                ahead: Bytes::new(),
            },
            Alpn::H2 => http.h2(io, service, Bytes::new()),
        };
        http
    }

    fn h1(&self, io: I, service: Requests, ahead: Bytes) -> Stage<I> {
        let io = TokioIo::new(Rewind { ahead, io });
        Stage::H1(Box::new(
            self.protocols
                .h1
                .serve_connection(io, service)
                .with_upgrades(),
        ))
    }

    fn h2(&self, io: I, service: Requests, ahead: Bytes) -> Stage<I> {
        let io = TokioIo::new(Rewind { ahead, io });
        Stage::H2(Box::pin(self.protocols.h2.serve_connection(io, service)))
    }

    /// Lets the request in flight finish, then closes; a connection with no HTTP state yet
    /// (or parked) closes now.
    pub(super) fn graceful_shutdown(&mut self) {
        self.closing = true;
        match &mut self.stage {
            Stage::H1(conn) => Pin::new(&mut **conn).graceful_shutdown(),
            Stage::H2(conn) => conn.as_mut().graceful_shutdown(),
            Stage::Sniff { .. } | Stage::Parked { .. } => self.stage = Stage::Done,
            Stage::Done => {}
        }
    }

    pub(super) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnError>> {
        loop {
            match &mut self.stage {
                Stage::Done => return Poll::Ready(Ok(())),
                Stage::Sniff { io, got, len, .. } => {
                    let mut buf = ReadBuf::new(&mut got[usize::from(*len)..]);
                    if let Err(e) = ready!(Pin::new(io).poll_read(cx, &mut buf)) {
                        self.stage = Stage::Done;
                        return Poll::Ready(Err(e.into()));
                    }
                    let n = buf.filled().len();
                    if n == 0 {
                        // Closed before a byte: nothing to answer.
                        self.stage = Stage::Done;
                        return Poll::Ready(Ok(()));
                    }
                    *len += n as u8;
                    let seen = &got[..usize::from(*len)];
                    let h2 = if seen != &PREFACE[..seen.len()] {
                        false
                    } else if seen.len() == PREFACE.len() {
                        true
                    } else {
                        continue;
                    };
                    let Stage::Sniff {
                        io,
                        service,
                        got,
                        len,
                    } = std::mem::replace(&mut self.stage, Stage::Done)
                    else {
                        unreachable!("matched above")
                    };
                    let ahead = Bytes::copy_from_slice(&got[..usize::from(len)]);
                    if h2 {
                        // Its frames are no request heads (also when the preface came in
                        // pieces the stream's first-read check missed).
                        self.activity.handshake_done(true);
                    }
                    self.stage = if h2 {
                        self.h2(io, service, ahead)
                    } else {
                        self.h1(io, service, ahead)
                    };
                }
                Stage::Parked { io, ahead, .. } => {
                    // An error is hyper's to meet on its first read.
                    if ahead.is_empty() {
                        let _ = ready!(io.poll_readable(cx));
                    }
                    let Stage::Parked { io, service, ahead } =
                        std::mem::replace(&mut self.stage, Stage::Done)
                    else {
                        unreachable!("matched above")
                    };
                    self.stage = self.h1(io, service, ahead);
                }
                Stage::H1(conn) => {
                    self.activity.poll_begins();
                    let res = ready!(Pin::new(&mut **conn).poll(cx));
                    self.stage = Stage::Done;
                    return Poll::Ready(res.map_err(ConnError::from));
                }
                Stage::H2(conn) => {
                    let res = ready!(conn.as_mut().poll(cx));
                    self.stage = Stage::Done;
                    return Poll::Ready(res.map_err(ConnError::from));
                }
            }
        }
    }

    /// Whether hyper's HTTP/1 connection is there (serving, or waiting between requests).
    pub(super) fn is_h1(&self) -> bool {
        matches!(self.stage, Stage::H1(_))
    }

    /// Takes hyper's HTTP/1 connection apart if it waits for a request on an empty socket,
    /// by the flags its last poll left (hyper's state changes only when it is polled, so they
    /// still hold). Its buffers are freed; bytes it read ahead are kept, copied out of them.
    /// The socket's readiness was cleared by that last read, so the parked stage's wait
    /// starts from there. Whether it parked.
    pub(super) fn park_if_idle(&mut self) -> bool {
        if self.closing || !self.is_h1() || !self.activity.idle_between_requests() {
            return false;
        }
        let Stage::H1(conn) = std::mem::replace(&mut self.stage, Stage::Done) else {
            return false;
        };
        let Some(parts) = conn.into_parts() else {
            // Upgraded: hyper has handed the socket over (not idle; never gets here).
            return false;
        };
        let Rewind { ahead, io } = parts.io.into_inner();
        let ahead = if ahead.is_empty() && parts.read_buf.is_empty() {
            Bytes::new()
        } else {
            let mut all = BytesMut::with_capacity(ahead.len() + parts.read_buf.len());
            all.extend_from_slice(&ahead);
            all.extend_from_slice(&parts.read_buf);
            all.freeze()
        };
        self.stage = Stage::Parked {
            io,
            service: parts.service,
            ahead,
        };
        true
    }
}

/// A stream with bytes already read from it put back in front.
pub(super) struct Rewind<I> {
    ahead: Bytes,
    io: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.ahead.is_empty() {
            let n = self.ahead.len().min(buf.remaining());
            buf.put_slice(&self.ahead[..n]);
            self.ahead.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
