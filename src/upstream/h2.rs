//! Requests to HTTP/2 targets, on hyper's client. hyper polls the request body on its
//! connection task, out of the request's sight; so the body is wrapped to tell the request
//! what happened to the upload — whom it is waiting for and since when, and whether the
//! client failed it. A failed exchange is then blamed on the right side, and an upload is
//! timed as toward an HTTP/1 target (see [`Limits`]). A request without a body goes as is.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;

use super::body::{BodySide, Tee};
use super::clock::{ClientClock, Clock, Limits};
use super::error::{self, ClientError};
use crate::tls::client_auth::ClientCerts;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a request to an HTTP/2 target failed.
#[derive(Debug)]
pub enum Error {
    /// The target (or the connection to it) failed.
    Target(hyper::Error),
    /// The client failed its upload.
    Client(ClientError),
    /// The target kept the exchange waiting for longer than the request timeout.
    Timeout(Duration),
}

/// Sends `req` and waits for the answer's head; an upload is timed by `limits`, a request
/// without a body is left to the caller's timer.
pub async fn send(
    s: &mut SendRequest<RequestBody>,
    req: http::Request<Incoming>,
    side: BodySide,
    limits: &Limits,
) -> Result<http::Response<ResponseBody>, Error> {
    let (parts, body) = req.into_parts();
    if body.is_end_stream() {
        let req = http::Request::from_parts(
            parts,
            RequestBody {
                inner: body,
                upload: None,
                tee: None,
                client_certs: None,
            },
        );
        let resp = s.send_request(req).await.map_err(Error::Target)?;
        return Ok(resp.map(|inner| ResponseBody {
            inner,
            upload: None,
            client_body: limits.client_body,
            clock: ClientClock::default(),
        }));
    }
    let upload = Arc::new(Upload::new(limits.max_body));
    let mut clock = Clock::new(*limits);
    let mut sleep = std::pin::pin!(Clock::sleep(limits, upload.base));
    let req = http::Request::from_parts(
        parts,
        RequestBody {
            inner: body,
            upload: Some((upload.clone(), 0)),
            tee: side.tee.map(Box::new),
            client_certs: side.client_certs,
        },
    );
    let mut answer = std::pin::pin!(s.send_request(req));
    let timed = poll_fn(|cx| {
        if let Poll::Ready(r) = answer.as_mut().poll(cx) {
            return Poll::Ready(r.map_err(Error::Target));
        }
        // After the upload's end it waits for the answer, since that end.
        let (since, client, _) = upload.waiting();
        clock
            .poll(cx, sleep.as_mut(), Some((since, client)))
            .map(|e| {
                Err(match e {
                    error::Error::Client(c) => Error::Client(c),
                    _ => Error::Timeout(limits.request),
                })
            })
    })
    .await;
    match timed {
        Ok(resp) => Ok(resp.map(|inner| ResponseBody {
            inner,
            upload: Some(upload),
            client_body: limits.client_body,
            clock: ClientClock::default(),
        })),
        // hyper's error for a body that failed is the stream it reset: the cause is ours.
        Err(Error::Target(e)) => Err(upload.take_fault().map_or(Error::Target(e), Error::Client)),
        Err(e) => Err(e),
    }
}

/// An HTTP/2 target's answer, which may still be streaming while the upload goes on.
pub struct ResponseBody {
    inner: Incoming,
    upload: Option<Arc<Upload>>,
    /// How long the client may pause the rest of its upload (`timeouts.client_body`).
    client_body: Duration,
    /// Times those pauses while the upload goes on after the head.
    clock: ClientClock,
}

impl ResponseBody {
    /// Why the client failed the upload, if it did: then this body's end (an error of the
    /// stream hyper reset because of it, or whatever came after) is the client's doing,
    /// not the target's.
    pub fn client_fault(&self) -> Option<ClientError> {
        self.upload.as_ref().and_then(|up| up.take_fault())
    }

    /// Whether the client's upload is still unfinished.
    pub fn uploading(&self) -> bool {
        self.upload.as_ref().is_some_and(|up| !up.waiting().2)
    }

    /// Whether the rest of the upload is waiting for the client's bytes.
    pub fn waiting_on_client(&self) -> bool {
        self.upload
            .as_ref()
            .is_some_and(|up| matches!(up.waiting(), (_, true, false)))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        // The client broke its upload off: the answer ends here, as the client's failure
        // (the fault stays stored for `client_fault`).
        if this.upload.as_ref().is_some_and(|up| up.faulted()) {
            return Poll::Ready(Some(Err("the client's upload failed".into())));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {}
            other => return other.map_err(Into::into),
        }
        let Some(up) = this.upload.as_ref() else {
            return Poll::Pending;
        };
        match up.waiting() {
            (since, true, false) => match this.clock.poll(cx, since, this.client_body) {
                Poll::Ready(stall) => Poll::Ready(Some(Err(up.failed(stall)))),
                Poll::Pending => Poll::Pending,
            },
            _ => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What became of an upload, written by hyper's connection task and read by the request's.
/// Whom it waits for and since when are one word, so that a reader on another thread never
/// pairs one wait's start with another's side.
#[derive(Debug)]
struct Upload {
    base: Instant,
    /// Nanoseconds after `base` when the current wait began, shifted left by 3, with the
    /// `ON_CLIENT`, `DONE` and `FAULT` bits below.
    state: AtomicU64,
    max: Option<u64>,
    fault: Mutex<Option<ClientError>>,
}

/// The upload waits for the client's bytes (else for the target to take them or answer).
const ON_CLIENT: u64 = 1;
/// All of it was handed to hyper.
const DONE: u64 = 2;
/// The client failed it (the cause is in `fault`).
const FAULT: u64 = 4;

impl Upload {
    fn new(max: Option<u64>) -> Upload {
        Upload {
            base: Instant::now(),
            state: AtomicU64::new(0),
            max,
            fault: Mutex::new(None),
        }
    }

    /// Since when the upload waits, whether for the client, and whether it is over (then
    /// it waits for the target's answer) — read in one load.
    fn waiting(&self) -> (Instant, bool, bool) {
        let state = self.state.load(Relaxed);
        let since = self.base + Duration::from_nanos(state >> 3);
        (since, state & ON_CLIENT != 0, state & DONE != 0)
    }

    fn faulted(&self) -> bool {
        self.state.load(Relaxed) & FAULT != 0
    }

    /// A new wait begins now (`done`: the whole body was handed over).
    fn wait_on(&self, client: bool, done: bool) {
        let now = self.base.elapsed().as_nanos() as u64;
        let flags = if client { ON_CLIENT } else { 0 } | if done { DONE } else { 0 };
        self.state.store(now << 3 | flags, Relaxed);
    }

    fn failed(&self, e: ClientError) -> BoxError {
        let shown: BoxError = e.to_string().into();
        *self.fault.lock().expect("upload fault") = Some(e);
        self.state.fetch_or(FAULT, Relaxed);
        shown
    }

    fn take_fault(&self) -> Option<ClientError> {
        if !self.faulted() {
            return None;
        }
        self.fault.lock().expect("upload fault").take()
    }
}

/// A client's request body on its way to an HTTP/2 target.
pub struct RequestBody {
    inner: Incoming,
    /// For an upload: its account, and the bytes taken so far.
    upload: Option<(Arc<Upload>, u64)>,
    /// A mirrored copy's share of the bytes.
    tee: Option<Box<Tee>>,
    /// Whose fields the client's trailers must not carry (see [`BodySide`]).
    client_certs: Option<Arc<ClientCerts>>,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let Some((up, taken)) = &mut this.upload else {
            return polled.map_err(Into::into);
        };
        match polled {
            Poll::Pending => {
                if !up.waiting().1 {
                    up.wait_on(true, false);
                }
                Poll::Pending
            }
            Poll::Ready(Some(Ok(mut frame))) => {
                *taken += frame.data_ref().map_or(0, |d| d.len() as u64);
                if let (Some(certs), Some(trailers)) = (&this.client_certs, frame.trailers_mut()) {
                    certs.strip(trailers);
                }
                if let Some(max) = up.max.filter(|max| *taken > *max) {
                    return Poll::Ready(Some(Err(up.failed(ClientError::TooLarge(max)))));
                }
                if let Some(t) = &mut this.tee {
                    if let Some(d) = frame.data_ref() {
                        t.push(d);
                    }
                    // hyper stops polling a body that says it has ended.
                    if this.inner.is_end_stream() {
                        t.end();
                    }
                }
                up.wait_on(false, false);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(up.failed(ClientError::Body(e))))),
            Poll::Ready(None) => {
                if let Some(t) = &mut this.tee {
                    t.end();
                }
                // The answer is waited for from now on.
                up.wait_on(false, true);
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
