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
use std::task::{ready, Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::io::poll_read_buf;

use super::body::{Chunk, Decoded, Framing, Upload, UploadError};
use super::clock::Clock;
pub use super::clock::Limits;
use super::SetFields;

/// Response heads with more fields, or more bytes, than this are refused.
const MAX_HEADERS: usize = 128;
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Room made in the read buffer before each read: heads are small, bodies are streamed.
const HEAD_READ: usize = 8 * 1024;
const BODY_READ: usize = 32 * 1024;

/// An open connection to a target, idle between exchanges.
#[derive(Debug)]
pub struct Conn {
    io: TcpStream,
    /// Bytes read and not yet consumed; empty while the connection is idle.
    buf: BytesMut,
    /// The encoded request head, kept to reuse its allocation.
    out: Vec<u8>,
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("connection closed before the response was complete")]
    Closed,
    #[error("{0}")]
    Protocol(String),
    /// The client's doing, not the target's: never counted against the target.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The target kept the exchange waiting for longer than the request timeout.
    #[error("target sent no response within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
}

/// How a client failed its own request while it was being passed on.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The client went away or sent a broken body.
    #[error("reading the client's request body failed: {0}")]
    Body(hyper::Error),
    /// No byte of the body came for the client-body timeout.
    #[error("the client sent none of its request body for {}", humantime::format_duration(*.0))]
    Stalled(Duration),
    /// The body grew past `limits.max_body_bytes`.
    #[error("the request body is larger than {0} bytes")]
    TooLarge(u64),
}

impl ClientError {
    /// Its name in the access log.
    pub fn code(&self) -> &'static str {
        match self {
            ClientError::Body(_) => "aborted",
            ClientError::Stalled(_) => "stalled",
            ClientError::TooLarge(_) => "too_large",
        }
    }

    /// What the client is answered, if nothing has been answered yet.
    pub fn proxy_error(&self) -> crate::error::ProxyError {
        match self {
            ClientError::Body(_) => crate::error::ProxyError::ClientBody,
            ClientError::Stalled(_) => crate::error::ProxyError::ClientTimeout,
            ClientError::TooLarge(_) => crate::error::ProxyError::BodyTooLarge,
        }
    }
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

impl Conn {
    pub fn new(io: TcpStream) -> Conn {
        Conn {
            io,
            buf: BytesMut::with_capacity(HEAD_READ),
            out: Vec::with_capacity(512),
        }
    }

    /// Whether an idle connection still looks usable: the target has neither closed it nor
    /// sent anything unasked. Costs no system call unless the event loop has seen the socket
    /// become readable since the last response was read.
    pub fn is_alive(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Sends a request and reads the response head; the body follows through
    /// [`ResponseBody`], which owns the connection until it is done. A request with a body
    /// is timed here, by `limits` (see [`Limits`]); one without is left to the caller.
    pub async fn send(
        mut self,
        req: &http::request::Parts,
        set: &SetFields,
        body: Option<Incoming>,
        limits: &Limits,
    ) -> Result<(http::response::Parts, ResponseBody), SendError> {
        let body = body.filter(|b| !b.is_end_stream());
        let has_length = req.headers.contains_key(header::CONTENT_LENGTH);
        let resendable = body.is_none();
        let chunked = body.is_some() && !has_length && body_length(&body).is_none();
        encode_head(&mut self.out, req, set, &body, has_length, chunked);
        if let Err(e) = self.io.write_all(&self.out).await {
            // A head cut short is never acted on, so only a body would be lost.
            return Err(SendError {
                error: Error::Io(e),
                resendable,
                unsent: true,
            });
        }

        let mut upload = body.map(|b| Upload::new(b, chunked, limits.max_body));
        let mut clock = upload.as_ref().map(|up| Clock::new(*limits, up.since));
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
            match clock.as_mut() {
                Some(clock) => {
                    let waiting = upload.as_ref().map(|up| (up.since, up.waiting_on_client));
                    clock.poll(cx, waiting).map(Err)
                }
                None => Poll::Pending,
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

/// A parsed response head.
#[derive(Debug)]
pub(super) struct Head {
    pub(super) status: StatusCode,
    headers: HeaderMap,
    /// The target lets the connection carry another request.
    keep_alive: bool,
    http10: bool,
}

/// [`framing`], after the checks that make a head unusable (a 502) or its connection
/// unfit for reuse. RFC 9112 §6.1–6.3:
/// - a 101 is only an answer to a request that asked to upgrade: the target has switched
///   protocols on a connection that would otherwise go back to the pool;
/// - a Content-Length next to a Transfer-Encoding is ignored and never forwarded (it would
///   frame the decoded body wrongly), and such a connection is not reused (a sign of
///   request smuggling or response splitting);
/// - a transfer coding other than chunked cannot be decoded here nor passed on (transfer
///   codings are hop-by-hop, and the client would get coded bytes it was not told of);
/// - an HTTP/1.0 answer with a Transfer-Encoding has faulty framing: closed after it;
/// - a Content-Length that is not one number (conflicting values, `5x`, overflow) leaves
///   the body's end unknown.
pub(super) fn checked_framing(
    req: &http::request::Parts,
    head: &mut Head,
) -> Result<Framing, Error> {
    if head.status == StatusCode::SWITCHING_PROTOCOLS && !req.headers.contains_key(header::UPGRADE)
    {
        return Err(Error::Protocol(
            "101 Switching Protocols to a request that asked for no upgrade".into(),
        ));
    }
    let h = &mut head.headers;
    if h.contains_key(header::TRANSFER_ENCODING) {
        if h.remove(header::CONTENT_LENGTH).is_some() || head.http10 {
            head.keep_alive = false;
        }
        let mut codings = h
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii);
        match (codings.next(), codings.next()) {
            (Some(c), None) if c.eq_ignore_ascii_case(b"chunked") => {}
            _ => {
                let all = h.get_all(header::TRANSFER_ENCODING).iter();
                let all: Vec<_> = all.map(|v| String::from_utf8_lossy(v.as_bytes())).collect();
                return Err(Error::Protocol(format!(
                    "unsupported transfer coding {:?} (only a lone chunked is decoded)",
                    all.join(", ")
                )));
            }
        }
    }
    framing(req, head)
}

/// Parses a complete head off the front of `buf`; `None` while it is incomplete. Field
/// values share the buffer's memory.
pub(super) fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, Error> {
    // Uninitialised slots: zeroing 128 of them per answer shows up in profiles.
    let mut fields =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD_BYTES => n,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD_BYTES => return Ok(None),
        Ok(_) => {
            return Err(Error::Protocol(format!(
                "response head larger than {MAX_HEAD_BYTES} bytes"
            )))
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Error::Protocol(format!(
                "response has more than {MAX_HEADERS} header fields"
            )))
        }
        Err(e) => return Err(Error::Protocol(format!("invalid response head: {e}"))),
    };
    let code = resp.code.unwrap_or(0);
    let status = StatusCode::from_u16(code)
        .map_err(|_| Error::Protocol(format!("invalid status code {code}")))?;
    let http10 = resp.version == Some(0);
    let base = buf.as_ptr() as usize;
    let mut spans = Vec::with_capacity(resp.headers.len());
    for f in resp.headers.iter() {
        let name = HeaderName::from_bytes(f.name.as_bytes())
            .map_err(|_| Error::Protocol(format!("invalid header name {:?}", f.name)))?;
        let start = f.value.as_ptr() as usize - base;
        spans.push((name, start, start + f.value.len()));
    }
    let head = buf.split_to(len).freeze();
    // Room for the one field the proxy adds to every answer (its request id).
    let mut headers = HeaderMap::with_capacity(spans.len() + 1);
    for (name, start, end) in spans {
        let value = HeaderValue::from_maybe_shared(head.slice(start..end))
            .map_err(|_| Error::Protocol(format!("invalid value in header {name}")))?;
        headers.append(name, value);
    }
    let keep_alive = match connection_tokens(&headers) {
        Tokens { close: true, .. } => false,
        Tokens { keep_alive, .. } if http10 => keep_alive,
        _ => true,
    };
    Ok(Some(Head {
        status,
        headers,
        keep_alive,
        http10,
    }))
}

struct Tokens {
    close: bool,
    keep_alive: bool,
}

fn connection_tokens(headers: &HeaderMap) -> Tokens {
    let mut t = Tokens {
        close: false,
        keep_alive: false,
    };
    for v in headers.get_all(header::CONNECTION) {
        for token in v.as_bytes().split(|b| *b == b',') {
            let token = token.trim_ascii();
            t.close |= token.eq_ignore_ascii_case(b"close");
            t.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
        }
    }
    t
}

/// How this response's body is delimited (RFC 9112 §6.3); an error for a Content-Length
/// that is not one number.
pub(super) fn framing(req: &http::request::Parts, head: &Head) -> Result<Framing, Error> {
    let s = head.status;
    if req.method == Method::HEAD
        || s.is_informational()
        || s == StatusCode::NO_CONTENT
        || s == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Empty);
    }
    let h = &head.headers;
    if h.contains_key(header::TRANSFER_ENCODING) {
        // Only a final `chunked` delimits the body; anything else runs to the close.
        let last = h
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .next_back()
            .and_then(|v| v.as_bytes().rsplit(|b| *b == b',').next())
            .map(<[u8]>::trim_ascii);
        return Ok(match last {
            Some(c) if c.eq_ignore_ascii_case(b"chunked") => Framing::Chunked(Chunk::Size),
            _ => Framing::Close,
        });
    }
    match content_length(h) {
        Some(Ok(n)) => Ok(Framing::Length(n)),
        Some(Err(())) => Err(Error::Protocol("invalid Content-Length".into())),
        None => Ok(Framing::Close),
    }
}

/// The response's Content-Length: every value (comma lists included) must agree.
fn content_length(h: &HeaderMap) -> Option<Result<u64, ()>> {
    let mut found: Option<u64> = None;
    for v in h.get_all(header::CONTENT_LENGTH) {
        for part in v.as_bytes().split(|b| *b == b',') {
            let part = part.trim_ascii();
            let n = std::str::from_utf8(part)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok());
            match (n, found) {
                (None, _) => return Some(Err(())),
                (Some(n), Some(f)) if n != f => return Some(Err(())),
                (Some(n), _) => found = Some(n),
            }
        }
    }
    found.map(Ok)
}

/// A response body read straight off the target's connection. When it is complete and the
/// connection can carry another request, [`ResponseBody::take_reusable`] gives it back.
#[derive(Debug)]
pub struct ResponseBody {
    conn: Option<Conn>,
    framing: Framing,
    /// The rest of the request body, if the answer came before all of it was sent.
    upload: Option<Upload>,
    keep_alive: bool,
}

impl ResponseBody {
    /// The connection, once the body is complete and nothing else is owed on it.
    pub fn take_reusable(&mut self) -> Option<Conn> {
        let clean = self.conn.as_ref().is_some_and(|c| c.buf.is_empty());
        if self.framing.is_end() && self.keep_alive && self.upload.is_none() && clean {
            self.conn.take()
        } else {
            None
        }
    }

    /// After a 101, the raw connection and whatever the target sent past its head.
    pub fn into_upgraded(mut self) -> Option<(TcpStream, Bytes)> {
        self.conn.take().map(|c| (c.io, c.buf.freeze()))
    }
}

impl Body for ResponseBody {
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
                // Cut off: the target got part of a body and may wait for the rest.
                Poll::Ready(Err(UploadError::Client(e @ ClientError::TooLarge(_)))) => {
                    this.conn = None;
                    this.upload = None;
                    return Poll::Ready(Some(Err(Error::Client(e))));
                }
                Poll::Ready(Err(_)) => {
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
            match ready!(poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf)) {
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

    fn head(raw: &str) -> Head {
        parse_head(&mut BytesMut::from(raw.as_bytes()))
            .unwrap()
            .unwrap()
    }

    fn get() -> http::request::Parts {
        http::Request::get("/").body(()).unwrap().into_parts().0
    }

    #[test]
    fn response_heads_parse_and_say_whether_to_keep_the_connection() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello");
        assert_eq!(h.status, 200);
        assert_eq!(h.headers["x-a"], "b");
        assert!(h.keep_alive);
        assert_eq!(framing(&get(), &h).unwrap(), Framing::Length(5));
        assert!(!head("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!head("HTTP/1.0 200 OK\r\n\r\n").keep_alive);
        assert!(head("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert!(
            parse_head(&mut BytesMut::from(&b"HTTP/1.1 200 OK\r\nA: b\r\n"[..]))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let f = |raw: &str| framing(&get(), &head(raw)).unwrap_or(Framing::Empty);
        assert_eq!(
            f("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n"),
            Framing::Chunked(Chunk::Size)
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Framing::Close
        );
        assert_eq!(f("HTTP/1.1 200 OK\r\n\r\n"), Framing::Close);
        assert_eq!(
            f("HTTP/1.1 200 OK\r\nContent-Length: 4, 4\r\n\r\n"),
            Framing::Length(4)
        );
        assert!(framing(
            &get(),
            &head("HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n")
        )
        .is_err());
        assert_eq!(
            f("HTTP/1.1 204 No Content\r\nContent-Length: 4\r\n\r\n"),
            Framing::Empty
        );
        assert_eq!(f("HTTP/1.1 304 Not Modified\r\n\r\n"), Framing::Empty);
        let head_req = http::Request::head("/").body(()).unwrap().into_parts().0;
        assert_eq!(
            framing(
                &head_req,
                &head("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n")
            )
            .unwrap(),
            Framing::Empty
        );
    }

    #[test]
    fn heads_whose_framing_cannot_be_trusted_are_refused_or_not_reused() {
        let check = |raw: &str| checked_framing(&get(), &mut head(raw));
        for bad in [
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(matches!(check(bad), Err(Error::Protocol(_))), "{bad:?}");
        }
        let mut h =
            head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n");
        assert_eq!(
            checked_framing(&get(), &mut h).unwrap(),
            Framing::Chunked(Chunk::Size)
        );
        assert!(!h.headers.contains_key(header::CONTENT_LENGTH) && !h.keep_alive);
        let mut h =
            head("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(
            checked_framing(&get(), &mut h).unwrap(),
            Framing::Chunked(Chunk::Size)
        );
        assert!(!h.keep_alive);
    }

    #[test]
    fn bad_heads_are_protocol_errors() {
        for raw in [
            "HTTP/1.1 2000 OK\r\n\r\n",
            "SMTP ready\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        ] {
            let err = parse_head(&mut BytesMut::from(raw.as_bytes())).unwrap_err();
            assert!(matches!(err, Error::Protocol(_)), "{raw:?}: {err}");
        }
    }

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
