//! Entry points for fuzzing the HTTP/1 answer parser (the cargo-fuzz targets in `fuzz/` and
//! the seeded robustness test call them). Whatever bytes a target sends must never panic
//! us, and must mean the same however the network cut them into reads.

use bytes::BytesMut;
use http::header::HeaderMap;
use http::StatusCode;

use super::body::{Decoded, Framing};
use super::head::{checked_framing, parse_head};

/// What reading an answer came to; errors compare equal whatever their message.
#[derive(Debug, PartialEq)]
pub enum Answer {
    Complete {
        status: u16,
        body: Vec<u8>,
        trailers: Option<HeaderMap>,
    },
    Failed,
}

/// Reads `data` as a target's answer to a GET, first in one piece and then in pieces of a
/// size taken from the first byte, and checks that both readings agree.
pub fn answer(data: &[u8]) {
    let Some((first, data)) = data.split_first() else {
        return;
    };
    let head_request = first & 0x80 != 0;
    let step = (*first as usize & 0x0f) + 1;
    let whole = read(data, usize::MAX, head_request);
    let pieces = read(data, step, head_request);
    assert_eq!(whole, pieces, "read whole vs in pieces of {step} bytes");
}

/// Reads an answer fed `step` bytes at a time, as the client would.
pub fn read(data: &[u8], step: usize, head_request: bool) -> Answer {
    let method = if head_request {
        http::Method::HEAD
    } else {
        http::Method::GET
    };
    let req = http::Request::builder()
        .method(method)
        .body(())
        .expect("a plain request")
        .into_parts()
        .0;
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut feed = |buf: &mut BytesMut| {
        let n = step.min(data.len() - fed);
        buf.extend_from_slice(&data[fed..fed + n]);
        fed += n;
        n > 0
    };
    let head = loop {
        match parse_head(&mut buf) {
            Ok(Some(h))
                if h.status.is_informational() && h.status != StatusCode::SWITCHING_PROTOCOLS => {}
            Ok(Some(h)) => break h,
            Ok(None) if feed(&mut buf) => {}
            Ok(None) | Err(_) => return Answer::Failed,
        }
    };
    let mut head = head;
    let Ok(mut framing) = checked_framing(&req, &mut head) else {
        return Answer::Failed;
    };
    let (mut body, mut trailers) = (Vec::new(), None);
    loop {
        match framing.decode(&mut buf) {
            Ok(Decoded::Frame(f)) => match f.into_data() {
                Ok(d) => body.extend_from_slice(&d),
                Err(f) => trailers = f.into_trailers().ok(),
            },
            Ok(Decoded::End) => break,
            Ok(Decoded::NeedMore) if feed(&mut buf) => {}
            // The close ends a to-close body; any other body is cut short.
            Ok(Decoded::NeedMore) if framing == Framing::Close => break,
            Ok(Decoded::NeedMore) | Err(_) => return Answer::Failed,
        }
    }
    Answer::Complete {
        status: head.status.as_u16(),
        body,
        trailers,
    }
}
