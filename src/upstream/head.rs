//! A target's response head: parsed with httparse into a field map that shares the read
//! buffer, and checked for what makes it unusable or its connection unfit for reuse, before
//! its body's framing is decided (RFC 9112 §6).

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

use super::body::{Chunk, Framing};
use super::error::Error;

/// Response heads with more fields, or more bytes, than this are refused.
const MAX_HEADERS: usize = 128;
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// A parsed response head.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    /// The target lets the connection carry another request.
    pub(crate) keep_alive: bool,
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
pub(crate) fn checked_framing(
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
pub(crate) fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, Error> {
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
pub(crate) fn framing(req: &http::request::Parts, head: &Head) -> Result<Framing, Error> {
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
}
