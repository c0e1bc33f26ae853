//! The timing of an exchange whose request has a body, shared by the HTTP/1 client and the
//! HTTP/2 path: each side is timed only while the exchange waits for it.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use super::h1::{ClientError, Error};

/// How long each side may keep an exchange with a request body waiting, and how large the
/// body may be. The request timeout is the target's time — to take the upload's bytes, and
/// after the upload, to answer — and the client-body timeout the client's, to send its next
/// bytes; so a steadily flowing upload of any length runs out neither, and a client that
/// stalls its upload is answered 408 without the target being blamed.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub request: Duration,
    pub client_body: Duration,
    /// `limits.max_body_bytes`.
    pub max_body: Option<u64>,
}

/// The timer of an exchange with an upload: it fires at the earliest moment either limit
/// could run out, and then looks at whom the exchange is actually waiting for and since
/// when, rather than being reset on each chunk.
pub(crate) struct Clock {
    sleep: Pin<Box<tokio::time::Sleep>>,
    limits: Limits,
    /// Since when the exchange waits for the answer alone (the upload is over).
    pub(crate) answer_since: Option<Instant>,
}

impl Clock {
    pub(crate) fn new(limits: Limits, start: Instant) -> Clock {
        let first = start + limits.request.min(limits.client_body);
        Clock {
            sleep: Box::pin(tokio::time::sleep_until(first.into())),
            limits,
            answer_since: None,
        }
    }

    /// Ready with the timeout once the side being waited for has taken longer than its
    /// limit. `waiting`: while the upload goes on, since when its current wait began and
    /// whether it is for the client; `None` once it is over (then the answer is waited for).
    pub(crate) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        waiting: Option<(Instant, bool)>,
    ) -> Poll<Error> {
        loop {
            ready!(self.sleep.as_mut().poll(cx));
            let now = Instant::now();
            let (since, client) = match waiting {
                Some(w) => w,
                None => (*self.answer_since.get_or_insert(now), false),
            };
            let limit = if client {
                self.limits.client_body
            } else {
                self.limits.request
            };
            if now.saturating_duration_since(since) >= limit {
                return Poll::Ready(if client {
                    Error::Client(ClientError::Stalled(limit))
                } else {
                    Error::Timeout(limit)
                });
            }
            // No later than either limit could now run out: the side waited for may change.
            let shortest = self.limits.request.min(self.limits.client_body);
            let next = (since + limit).min(now + shortest);
            self.sleep.as_mut().reset(next.into());
        }
    }
}
