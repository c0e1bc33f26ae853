//! The request path's side of mirroring (`crate::mirror`): a copy of the request as it goes
//! to its target — the head with the proxy's own fields, and the body through the upload's
//! tee unless it is known to be too long — offered to the mirror's queue without waiting.

use std::time::Duration;

use bytes::Bytes;
use http::header;
use http_body::Body;
use hyper::body::Incoming;

use crate::mirror::{self, Copy, Mirror, Witness};
use crate::upstream::{SetFields, Tee};

/// The real answer's witness and the upload's tee, or nothing when the copy was not made
/// (the body too long, the queue full: each counted).
pub(super) fn offer(
    m: &Mirror,
    parts: &http::request::Parts,
    set: &SetFields,
    body: &Incoming,
    timeout: Duration,
) -> (Option<Witness>, Option<Tee>) {
    if !m.room() {
        return (None, None);
    }
    let cap = m.settings.max_body_bytes;
    let (copy_body, tee) = if body.is_end_stream() {
        (mirror::Body::Ready(Bytes::new()), None)
    } else if body.size_hint().exact().is_some_and(|n| n > cap) {
        m.too_large();
        return (None, None);
    } else {
        let (tee, rx) = Tee::new(cap);
        (mirror::Body::Tee(rx), Some(tee))
    };
    let mut headers = parts.headers.clone();
    set.insert_into(&mut headers);
    // The copy's framing is its own (a whole body of known length).
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(header::CONTENT_LENGTH);
    if !headers.contains_key(header::HOST) {
        if let Some(a) = parts.uri.authority() {
            if let Ok(v) = header::HeaderValue::from_str(a.as_str()) {
                headers.insert(header::HOST, v);
            }
        }
    }
    let copy = Copy {
        method: parts.method.clone(),
        path: parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_string(),
        headers,
        body: Bytes::new(),
    };
    match m.offer(copy, copy_body, timeout) {
        Some(w) => (Some(w), tee),
        None => (None, None),
    }
}
