//! Message bodies on a connection to a target: how a response body is delimited and decoded
//! from the read buffer (by length, chunked, or up to the close), and the upload of a request
//! body, which goes on while the response is read so that a target answering early (a 413,
//! or a stream echoing its input) never deadlocks against us.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body as _, Frame};
use hyper::body::Incoming;
use tokio::io::AsyncWrite;

use super::error::{ClientError, Error};
use crate::tls::client_auth::ClientCerts;

/// A chunk-size line or a trailer section longer than this is refused.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILER_BYTES: usize = 16 * 1024;
const MAX_TRAILERS: usize = 64;

/// How the end of a response body is known (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body: HEAD, 1xx, 204, 304.
    Empty,
    /// This many bytes are still to come.
    Length(u64),
    Chunked(Chunk),
    /// Everything up to the target closing the connection.
    Close,
}

/// Where a chunked decoder is in its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

/// What the decoder made of the buffer.
#[derive(Debug)]
pub(super) enum Decoded {
    Frame(Frame<Bytes>),
    NeedMore,
    End,
}

impl Framing {
    pub(super) fn is_end(&self) -> bool {
        matches!(
            self,
            Framing::Empty | Framing::Length(0) | Framing::Chunked(Chunk::Done)
        )
    }

    /// Takes the next frame out of `buf`. Data frames share `buf`'s memory; nothing is copied.
    pub(super) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, Error> {
        match self {
            Framing::Empty | Framing::Length(0) => Ok(Decoded::End),
            Framing::Length(rest) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let n = (*rest).min(buf.len() as u64) as usize;
                *rest -= n as u64;
                Ok(Decoded::Frame(Frame::data(buf.split_to(n).freeze())))
            }
            Framing::Close if buf.is_empty() => Ok(Decoded::NeedMore),
            Framing::Close => Ok(Decoded::Frame(Frame::data(buf.split().freeze()))),
            Framing::Chunked(state) => decode_chunked(state, buf),
        }
    }
}

fn decode_chunked(state: &mut Chunk, buf: &mut BytesMut) -> Result<Decoded, Error> {
    loop {
        match state {
            Chunk::Size => match httparse::parse_chunk_size(buf) {
                // The same limit whether the line came in one read or several.
                Ok(httparse::Status::Complete((used, _))) if used > MAX_CHUNK_LINE => {
                    return Err(Error::Protocol("chunk size line too long".into()));
                }
                Ok(httparse::Status::Complete((used, size))) => {
                    buf.advance(used);
                    *state = if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    };
                }
                Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => {
                    return Err(Error::Protocol("chunk size line too long".into()));
                }
                Ok(httparse::Status::Partial) => return Ok(Decoded::NeedMore),
                Err(_) => return Err(Error::Protocol("invalid chunk size".into())),
            },
            Chunk::Data(rest) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let n = (*rest).min(buf.len() as u64) as usize;
                *rest -= n as u64;
                if *rest == 0 {
                    *state = Chunk::DataEnd;
                }
                return Ok(Decoded::Frame(Frame::data(buf.split_to(n).freeze())));
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Decoded::NeedMore);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(Error::Protocol("chunk data not followed by CRLF".into()));
                }
                buf.advance(2);
                *state = Chunk::Size;
            }
            Chunk::Trailers => {
                let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILERS];
                return match httparse::parse_headers(buf, &mut fields) {
                    Ok(httparse::Status::Complete((used, _))) if used > MAX_TRAILER_BYTES => {
                        Err(Error::Protocol("trailer section too large".into()))
                    }
                    Ok(httparse::Status::Complete((used, fields))) => {
                        let mut trailers = HeaderMap::with_capacity(fields.len());
                        for f in fields {
                            let name = HeaderName::from_bytes(f.name.as_bytes());
                            let value = HeaderValue::from_bytes(f.value);
                            if let (Ok(name), Ok(value)) = (name, value) {
                                trailers.append(name, value);
                            }
                        }
                        buf.advance(used);
                        *state = Chunk::Done;
                        Ok(if trailers.is_empty() {
                            Decoded::End
                        } else {
                            Decoded::Frame(Frame::trailers(trailers))
                        })
                    }
                    Ok(httparse::Status::Partial) if buf.len() > MAX_TRAILER_BYTES => {
                        Err(Error::Protocol("trailer section too large".into()))
                    }
                    Ok(httparse::Status::Partial) => Ok(Decoded::NeedMore),
                    Err(e) => Err(Error::Protocol(format!("invalid trailer section: {e}"))),
                };
            }
            Chunk::Done => return Ok(Decoded::End),
        }
    }
}

/// Why an upload stopped.
#[derive(Debug)]
pub(super) enum UploadError {
    /// The client failed its body (went away, sent a bad body, stalled, sent too much).
    Client(ClientError),
    /// Writing to the target failed.
    Target(io::Error),
}

/// What travels with a client's request body besides its bytes: a mirrored copy's share,
/// and the client-certificate fields (`tls::client_auth`) its trailers must not carry — the
/// head's are removed before routing, and a trailer is as much the client's word.
#[derive(Debug, Default)]
pub struct BodySide {
    pub tee: Option<Tee>,
    pub client_certs: Option<Arc<ClientCerts>>,
}

/// A copy of a request body's bytes as they go to the target, for a mirrored copy of the
/// request (`crate::mirror`): handed over whole when the body ends within `cap`; given up
/// (the receiver sees the sender dropped) when it grows past it or the upload fails.
#[derive(Debug)]
pub struct Tee {
    buf: bytes::BytesMut,
    cap: u64,
    tx: Option<tokio::sync::oneshot::Sender<Bytes>>,
}

impl Tee {
    pub fn new(cap: u64) -> (Tee, tokio::sync::oneshot::Receiver<Bytes>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tee = Tee {
            buf: bytes::BytesMut::new(),
            cap,
            tx: Some(tx),
        };
        (tee, rx)
    }

    pub(super) fn push(&mut self, data: &[u8]) {
        let Some(tx) = &self.tx else {
            return;
        };
        // Past the cap, or the copy gave up waiting for it: nothing more is kept.
        if tx.is_closed() || self.buf.len() as u64 + data.len() as u64 > self.cap {
            self.tx = None;
            self.buf = bytes::BytesMut::new();
        } else {
            self.buf.extend_from_slice(data);
        }
    }

    pub(super) fn end(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(self.buf.split().freeze());
        }
    }
}

/// A request body on its way to the target, framed by its length or chunked.
///
/// It keeps account of whom it is waiting for, so that a stalled upload is blamed on the
/// right side: waiting for the client's next bytes is the client's time
/// (`timeouts.client_body`), waiting for the target to take bytes is the target's
/// (`timeouts.request`). A steadily flowing upload waits for neither for long.
pub(super) struct Upload {
    body: Incoming,
    chunked: bool,
    /// Encoded bytes not yet written, in order.
    pending: VecDeque<Bytes>,
    /// The body has ended and its end (for chunked, the last chunk) is queued.
    finished: bool,
    /// Data bytes taken from the client so far, and the most allowed.
    taken: u64,
    max: Option<u64>,
    /// Whether the last poll stopped for want of client bytes (else: of target room).
    pub(super) waiting_on_client: bool,
    /// When the current wait began: the last bytes moved, or the last change of side.
    pub(super) since: Instant,
    /// A mirrored copy's share of the bytes and the trailers' filter (boxed: most uploads
    /// have neither, and this rides in every HTTP/1 answer's body).
    side: Option<Box<BodySide>>,
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload")
            .field("chunked", &self.chunked)
            .field("finished", &self.finished)
            .finish()
    }
}

impl Upload {
    pub(super) fn new(
        body: Incoming,
        chunked: bool,
        max: Option<u64>,
        mut side: BodySide,
    ) -> Upload {
        // Trailers travel only in a chunked body: a body with a length needs no filter, and
        // then most uploads need no box at all.
        if !chunked {
            side.client_certs = None;
        }
        Upload {
            side: (side.tee.is_some() || side.client_certs.is_some()).then(|| Box::new(side)),
            body,
            chunked,
            pending: VecDeque::new(),
            finished: false,
            taken: 0,
            max,
            waiting_on_client: false,
            since: Instant::now(),
        }
    }

    fn tee(&mut self) -> Option<&mut Tee> {
        self.side.as_mut().and_then(|s| s.tee.as_mut())
    }

    /// A chunk of the body queued for writing, framed as the upload is.
    fn queue(&mut self, data: Bytes) {
        if self.chunked {
            self.pending
                .push_back(Bytes::from(format!("{:x}\r\n", data.len())));
            self.pending.push_back(data);
            self.pending.push_back(Bytes::from_static(b"\r\n"));
        } else {
            self.pending.push_back(data);
        }
    }

    /// Notes whom the upload now waits for; a new wait starts its clock.
    fn wait_on(&mut self, client: bool) {
        if self.waiting_on_client != client {
            self.waiting_on_client = client;
            self.since = Instant::now();
        }
    }

    /// Moves the upload forward as far as the client's body and the socket allow; ready
    /// once all of it is written.
    pub(super) fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut (impl AsyncWrite + Unpin),
    ) -> Poll<Result<(), UploadError>> {
        loop {
            while !self.pending.is_empty() {
                let mut slices = [IoSlice::new(&[]); 8];
                let n = slices.len().min(self.pending.len());
                for (slice, bytes) in slices.iter_mut().zip(self.pending.iter()) {
                    *slice = IoSlice::new(bytes);
                }
                let written = match Pin::new(&mut *io).poll_write_vectored(cx, &slices[..n]) {
                    Poll::Pending => {
                        self.wait_on(false);
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(UploadError::Target(e))),
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(UploadError::Target(
                            io::ErrorKind::WriteZero.into(),
                        )))
                    }
                    Poll::Ready(Ok(n)) => n,
                };
                self.consume(written);
            }
            if self.finished {
                return Poll::Ready(Ok(()));
            }
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Pending => {
                    self.wait_on(true);
                    return Poll::Pending;
                }
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Err(UploadError::Client(ClientError::Body(e))))
                }
                Poll::Ready(None) => {
                    self.finished = true;
                    if let Some(t) = self.tee() {
                        t.end();
                    }
                    if self.chunked {
                        self.pending.push_back(Bytes::from_static(b"0\r\n\r\n"));
                    }
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) => {
                        if self.too_large(data.len()) {
                            let max = self.max.unwrap_or_default();
                            return Poll::Ready(Err(UploadError::Client(ClientError::TooLarge(
                                max,
                            ))));
                        }
                        if let Some(t) = self.tee() {
                            t.push(&data);
                        }
                        self.queue(data);
                    }
                    Err(frame) => {
                        // Trailers can only travel in a chunked body; with a length they
                        // are dropped, as HTTP/1 has no place for them.
                        if let (Ok(mut trailers), true) = (frame.into_trailers(), self.chunked) {
                            if let Some(certs) =
                                self.side.as_ref().and_then(|s| s.client_certs.as_ref())
                            {
                                certs.strip(&mut trailers);
                            }
                            let mut end = b"0\r\n".to_vec();
                            for (name, value) in &trailers {
                                end.extend_from_slice(name.as_str().as_bytes());
                                end.extend_from_slice(b": ");
                                end.extend_from_slice(value.as_bytes());
                                end.extend_from_slice(b"\r\n");
                            }
                            end.extend_from_slice(b"\r\n");
                            self.pending.push_back(Bytes::from(end));
                            self.finished = true;
                            if let Some(t) = self.tee() {
                                t.end();
                            }
                        }
                    }
                },
            }
        }
    }

    /// Counts `n` more bytes from the client (they moved: a new wait begins), and says
    /// whether they make the body larger than allowed.
    fn too_large(&mut self, n: usize) -> bool {
        self.taken += n as u64;
        self.since = Instant::now();
        self.max.is_some_and(|max| self.taken > max)
    }

    fn consume(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.pending.front_mut() else {
                return;
            };
            if n >= front.len() {
                n -= front.len();
                self.pending.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(framing: &mut Framing, input: &[u8]) -> Result<(Vec<u8>, Option<HeaderMap>), Error> {
        let mut buf = BytesMut::from(input);
        let (mut data, mut trailers) = (Vec::new(), None);
        loop {
            match framing.decode(&mut buf)? {
                Decoded::Frame(f) => match f.into_data() {
                    Ok(d) => data.extend_from_slice(&d),
                    Err(f) => trailers = f.into_trailers().ok(),
                },
                Decoded::NeedMore => return Err(Error::Closed),
                Decoded::End => return Ok((data, trailers)),
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_and_trailers() {
        let mut f = Framing::Chunked(Chunk::Size);
        let (data, trailers) = all(
            &mut f,
            b"4;ext=1\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\ngrpc-status: 0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(data, b"Wikipedia in\r\n\r\nchunks.");
        assert_eq!(trailers.unwrap()["grpc-status"], "0");
        assert!(f.is_end());
    }

    #[test]
    fn chunked_input_split_anywhere_decodes_the_same() {
        let input = b"3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n";
        for cut in 0..input.len() {
            let mut f = Framing::Chunked(Chunk::Size);
            let mut buf = BytesMut::from(&input[..cut]);
            let mut out = Vec::new();
            let mut fed = false;
            loop {
                match f.decode(&mut buf).unwrap() {
                    Decoded::Frame(fr) => out.extend_from_slice(&fr.into_data().unwrap()),
                    Decoded::NeedMore if !fed => {
                        buf.extend_from_slice(&input[cut..]);
                        fed = true;
                    }
                    Decoded::NeedMore => panic!("stuck at cut {cut}"),
                    Decoded::End => break,
                }
            }
            assert_eq!(out, b"abc0123456789abcdef", "cut at {cut}");
        }
    }

    #[test]
    fn bad_chunked_input_is_a_protocol_error() {
        for bad in [
            &b"zz\r\nabc\r\n"[..],
            b"3\r\nabcX\r\n",
            b"ffffffffffffffffff\r\n",
        ] {
            let err = all(&mut Framing::Chunked(Chunk::Size), bad).unwrap_err();
            assert!(matches!(err, Error::Protocol(_)), "{bad:?}: {err}");
        }
    }

    #[test]
    fn a_length_body_stops_at_its_length() {
        let mut f = Framing::Length(5);
        let mut buf = BytesMut::from(&b"helloEXTRA"[..]);
        match f.decode(&mut buf).unwrap() {
            Decoded::Frame(fr) => assert_eq!(fr.into_data().unwrap(), "hello"),
            other => panic!("{other:?}"),
        }
        assert!(f.is_end());
        assert_eq!(&buf[..], b"EXTRA");
    }
}
