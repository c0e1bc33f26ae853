//! Switchyard's own HTTP/1.1 client for targets. The task serving the client's request
//! writes the request to the target and reads the answer itself: no connection task and no
//! channel between the two, which is most of what an exchange costs a proxy besides the
//! kernel. It does what a reverse proxy needs and no more: one request at a time per
//! connection, bodies streamed both ways at once, 1xx interim answers skipped, a 101 handed
//! over as a tunnel, and a clear account of how far an exchange got when it fails, so that
//! the caller knows when sending the request again is safe.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header;
use http::{Method, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::io::poll_read_buf;

use super::body::{BodySide, Decoded, Framing, Upload, UploadError};
pub use super::clock::Limits;
use super::clock::{ClientClock, Clock};
use super::error::Error;
use super::head::{checked_framing, parse_head, Head};
use super::stream::Stream;
use super::SetFields;

/// Room made in the read buffer before each read: heads are small, bodies are streamed.
const HEAD_READ: usize = 8 * 1024;
const BODY_READ: usize = 32 * 1024;

/// An open connection to a target, idle between exchanges. Generic over the stream only so
/// that the fuzz harness (`crate::fuzz`) can drive this very read loop over memory.
#[derive(Debug)]
pub struct Conn<IO = Stream> {
    io: IO,
    /// Bytes read and not yet consumed; empty while the connection is idle.
    buf: BytesMut,
    /// The encoded request head, kept to reuse its allocation.
    out: Vec<u8>,
}

/// A failed exchange, and how far it got, for deciding whether the request may go again.
#[derive(Debug)]
pub struct SendError {
    pub error: Error,
    /// No byte of an answer came back, the connection was closed or reset, and the request
    /// had no body to lose.
    pub resendable: bool,
    /// Not even the request head was written in full, so the target cannot have acted on it.
    pub unsent: bool,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Conn<IO> {
    pub fn new(io: IO) -> Self {
        Conn {
            io,
            buf: BytesMut::with_capacity(HEAD_READ),
            out: Vec::with_capacity(512),
        }
    }
}

impl Conn {
    /// Whether an idle connection still looks usable (see `Stream::is_alive`).
    pub fn is_alive(&mut self) -> bool {
        self.io.is_alive()
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Conn<IO> {
    /// Sends a request and reads the response head; the body follows through
    /// [`ResponseBody`], which owns the connection until it is done. A request with a body
    /// is timed here, by `limits` (see [`Limits`]); one without is left to the caller.
    pub async fn send(
        mut self,
        req: &http::request::Parts,
        set: &SetFields,
        body: Option<Incoming>,
        side: BodySide,
        limits: &Limits,
    ) -> Result<(http::response::Parts, ResponseBody<IO>), SendError> {
        let body = body.filter(|b| !b.is_end_stream());
        let has_length = req.headers.contains_key(header::CONTENT_LENGTH);
        let resendable = body.is_none();
        let chunked = body.is_some() && !has_length && body_length(&body).is_none();
        encode_head(&mut self.out, req, set, &body, has_length, chunked);
        // With an upload no timer of the caller's runs (the exchange times itself), so the
        // head's write, which a target that reads nothing can block, is timed here.
        let written = match body {
            None => self.io.write_all(&self.out).await,
            Some(_) => tokio::time::timeout(limits.request, self.io.write_all(&self.out))
                .await
                .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into())),
        };
        if let Err(e) = written {
            let error = match e.kind() {
                io::ErrorKind::TimedOut => Error::Timeout(limits.request),
                _ => Error::Io(e),
            };
            // A head cut short is never acted on, so only a body would be lost.
            return Err(SendError {
                error,
                resendable,
                unsent: true,
            });
        }

        let mut upload = body.map(|b| Upload::new(b, chunked, limits.max_body, side));
        let mut clock = upload.as_ref().map(|_| Clock::new(*limits));
        let mut sleep = std::pin::pin!(upload.as_ref().map(|up| Clock::sleep(limits, up.since)));
        let mut target_stopped_reading = false;
        let head = poll_fn(|cx| {
            if let Some(up) = upload.as_mut() {
                match up.poll_send(cx, &mut self.io) {
                    Poll::Ready(Ok(())) => upload = None,
                    Poll::Ready(Err(UploadError::Client(e))) => {
                        return Poll::Ready(Err(Error::Client(e)));
                    }
                    // The target may have answered before reading all of it (a 413, say):
                    // the answer is still to be read.
                    Poll::Ready(Err(UploadError::Target(e))) => {
                        tracing::debug!(error = %e, "target stopped reading the request body");
                        upload = None;
                        target_stopped_reading = true;
                    }
                    Poll::Pending => {}
                }
                if upload.is_none() {
                    if let Some(clock) = clock.as_mut() {
                        clock.answer_since = Some(Instant::now());
                    }
                }
            }
            if let Poll::Ready(head) = self.poll_head(cx) {
                return Poll::Ready(head);
            }
            match (clock.as_mut(), sleep.as_mut().as_pin_mut()) {
                (Some(clock), Some(sleep)) => {
                    let waiting = upload.as_ref().map(|up| (up.since, up.waiting_on_client));
                    clock.poll(cx, sleep, waiting).map(Err)
                }
                _ => Poll::Pending,
            }
        })
        .await;
        let head = match head {
            Ok(head) => head,
            Err(error) => {
                let resendable = resendable && self.buf.is_empty() && stale_error(&error);
                return Err(SendError {
                    error,
                    resendable,
                    unsent: false,
                });
            }
        };

        let mut head = head;
        let framing = match checked_framing(req, &mut head) {
            Ok(f) => f,
            // The connection goes with `self`: after a broken head nothing on it is trusted.
            Err(error) => {
                return Err(SendError {
                    error,
                    resendable: false,
                    unsent: false,
                })
            }
        };
        let keep_alive = head.keep_alive && framing != Framing::Close && !target_stopped_reading;
        let mut parts = http::Response::new(()).into_parts().0;
        parts.status = head.status;
        parts.version = Version::HTTP_11;
        parts.headers = head.headers;
        let body = ResponseBody {
            conn: Some(self),
            framing,
            upload,
            keep_alive,
            client_body: limits.client_body,
            clock: ClientClock::default(),
        };
        Ok((parts, body))
    }

    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Result<Head, Error>> {
        loop {
            if !self.buf.is_empty() {
                match parse_head(&mut self.buf)? {
                    // 100 Continue and other interim answers: the final one follows.
                    Some(head)
                        if head.status.is_informational()
                            && head.status != StatusCode::SWITCHING_PROTOCOLS =>
                    {
                        continue
                    }
                    Some(head) => return Poll::Ready(Ok(head)),
                    None => {}
                }
            }
            make_room(&mut self.buf, HEAD_READ);
            let n = ready!(poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf))?;
            if n == 0 {
                return Poll::Ready(Err(Error::Closed));
            }
        }
    }
}

/// Makes room for the next read (reusing the allocation once earlier frames are dropped).
fn make_room(buf: &mut BytesMut, room: usize) {
    if buf.capacity() - buf.len() < room / 4 {
        buf.reserve(room);
    }
}

/// A closed or reset connection: what a pooled connection the target dropped looks like.
fn stale_error(e: &Error) -> bool {
    match e {
        Error::Closed => true,
        Error::Io(e) => matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
        ),
        _ => false,
    }
}

fn body_length(body: &Option<Incoming>) -> Option<u64> {
    body.as_ref().and_then(|b| b.size_hint().exact())
}

/// The request line and fields, as the target gets them: the client's (names already lower
/// case) but those the proxy sets, then the proxy's, then framing fields for a body whose
/// length the client did not state.
fn encode_head(
    out: &mut Vec<u8>,
    req: &http::request::Parts,
    set: &SetFields,
    body: &Option<Incoming>,
    has_length: bool,
    chunked: bool,
) {
    out.clear();
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    let target = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // `te` is hop-by-hop (RFC 9110 §10.1.4): the proxy keeps `te: trailers` for HTTP/2
    // targets (gRPC, RFC 9113 §8.2.2) but never sends it to an HTTP/1 one, which would need
    // `Connection: TE` beside it.
    let client = req
        .headers
        .iter()
        .filter(|(name, _)| *name != header::TE && !set.replaces(name));
    for (name, value) in client.chain(set.iter()) {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    } else if !has_length {
        match body_length(body) {
            Some(n) => {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(n.to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            // Servers may answer 411 to a POST without a length, even an empty one.
            None if matches!(req.method, Method::POST | Method::PUT | Method::PATCH) => {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
            None => {}
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// A response body read straight off the target's connection. When it is complete and the
/// connection can carry another request, [`ResponseBody::take_reusable`] gives it back.
#[derive(Debug)]
pub struct ResponseBody<IO = Stream> {
    conn: Option<Conn<IO>>,
    framing: Framing,
    /// The rest of the request body, if the answer came before all of it was sent.
    upload: Option<Upload>,
    keep_alive: bool,
    /// How long the client may pause the rest of its upload (`timeouts.client_body`).
    client_body: Duration,
    /// Times those pauses while the upload goes on after the head.
    clock: ClientClock,
}

impl<IO> ResponseBody<IO> {
    /// The connection, once the body is complete and nothing else is owed on it.
    pub fn take_reusable(&mut self) -> Option<Conn<IO>> {
        let clean = self.conn.as_ref().is_some_and(|c| c.buf.is_empty());
        if self.framing.is_end() && self.keep_alive && self.upload.is_none() && clean {
            self.conn.take()
        } else {
            None
        }
    }

    /// Whether the client's upload is still unfinished.
    pub fn uploading(&self) -> bool {
        self.upload.is_some()
    }

    /// Whether the rest of the upload is waiting for the client's bytes: the exchange is
    /// then held up by the client, not by the target.
    pub fn waiting_on_client(&self) -> bool {
        self.upload.as_ref().is_some_and(|up| up.waiting_on_client)
    }

    /// The client's failure, if the rest of its upload has stalled for `client_body`
    /// while nothing is to be read from the target; registers the wake-up otherwise.
    fn client_stalled(&mut self, cx: &mut Context<'_>) -> Option<Error> {
        let up = self.upload.as_ref().filter(|up| up.waiting_on_client)?;
        match self.clock.poll(cx, up.since, self.client_body) {
            Poll::Ready(e) => Some(Error::Client(e)),
            Poll::Pending => None,
        }
    }

    /// After a 101, the raw connection and whatever the target sent past its head.
    pub fn into_upgraded(mut self) -> Option<(IO, Bytes)> {
        self.conn.take().map(|c| (c.io, c.buf.freeze()))
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Body for ResponseBody<IO> {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        // No connection: the body ended, failed (which closed it) or was handed over.
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(up) = this.upload.as_mut() {
            match up.poll_send(cx, &mut conn.io) {
                Poll::Ready(Ok(())) => this.upload = None,
                // The client broke its upload off (aborted, broken body, too large): the
                // target got part of a body and may wait for the rest, so the connection
                // goes, and the answer ends as the client's failure — not the target's.
                Poll::Ready(Err(UploadError::Client(e))) => {
                    this.conn = None;
                    this.upload = None;
                    return Poll::Ready(Some(Err(Error::Client(e))));
                }
                // The target stopped reading: its answer may still be whole.
                Poll::Ready(Err(UploadError::Target(_))) => {
                    this.upload = None;
                    this.keep_alive = false;
                }
                Poll::Pending => {}
            }
        }
        loop {
            match this.framing.decode(&mut conn.buf) {
                Ok(Decoded::Frame(frame)) => {
                    if this.framing.is_end() && this.upload.is_some() {
                        // Answered in full before the upload finished: stop uploading.
                        this.upload = None;
                        this.keep_alive = false;
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(Decoded::End) => {
                    if this.upload.take().is_some() {
                        this.keep_alive = false;
                    }
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            make_room(&mut conn.buf, BODY_READ);
            let read = match poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf) {
                Poll::Ready(read) => read,
                Poll::Pending => {
                    return match this.client_stalled(cx) {
                        Some(e) => {
                            this.conn = None;
                            this.upload = None;
                            Poll::Ready(Some(Err(e)))
                        }
                        None => Poll::Pending,
                    };
                }
            };
            match read {
                Ok(0) if this.framing == Framing::Close => {
                    this.framing = Framing::Empty;
                    this.keep_alive = false;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(Error::Closed)));
                }
                Ok(_) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(Error::Io(e))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || self.framing.is_end()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Empty => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{HeaderName, HeaderValue};

    #[test]
    fn request_heads_add_framing_only_when_the_client_gave_none() {
        let mut out = Vec::new();
        let req = http::Request::post("/a?b=1")
            .header("host", "x")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let set = SetFields::default();
        encode_head(&mut out, &req, &set, &None, false, false);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "POST /a?b=1 HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n"
        );
        encode_head(&mut out, &req, &set, &None, false, true);
        assert!(String::from_utf8(out)
            .unwrap()
            .ends_with("transfer-encoding: chunked\r\n\r\n"));
    }

    #[test]
    fn the_proxys_fields_replace_the_clients_of_the_same_name() {
        static XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
        static RID: HeaderName = HeaderName::from_static("x-request-id");
        let req = http::Request::get("/")
            .header("host", "x")
            .header("x-forwarded-for", "10.0.0.1")
            .header("accept", "*/*")
            .header("x-forwarded-for", "10.0.0.2")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let mut set = SetFields::default();
        set.set(
            &XFF,
            HeaderValue::from_static("10.0.0.1, 10.0.0.2, 127.0.0.1"),
        );
        set.set(&RID, HeaderValue::from_static("r1"));
        let mut out = Vec::new();
        encode_head(&mut out, &req, &set, &None, false, false);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET / HTTP/1.1\r\nhost: x\r\naccept: */*\r\n\
             x-forwarded-for: 10.0.0.1, 10.0.0.2, 127.0.0.1\r\nx-request-id: r1\r\n\r\n"
        );
    }
}
