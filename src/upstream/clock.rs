//! The timing of an exchange whose request has a body, shared by the HTTP/1 client and the
//! HTTP/2 path: each side is timed only while the exchange waits for it.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use super::error::{ClientError, Error};

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
/// when, rather than being reset on each chunk. Its `Sleep` is the caller's, pinned in the
/// caller's future (no allocation per upload).
pub(crate) struct Clock {
    limits: Limits,
    /// Since when the exchange waits for the answer alone (the upload is over).
    pub(crate) answer_since: Option<Instant>,
}

impl Clock {
    pub(crate) fn new(limits: Limits) -> Clock {
        Clock {
            limits,
            answer_since: None,
        }
    }

    /// The sleep to give [`Clock::poll`]: its first deadline, for an upload that began at
    /// `start`.
    pub(crate) fn sleep(limits: &Limits, start: Instant) -> tokio::time::Sleep {
        tokio::time::sleep_until((start + limits.request.min(limits.client_body)).into())
    }

    /// Ready with the timeout once the side being waited for has taken longer than its
    /// limit. `waiting`: while the upload goes on, since when its current wait began and
    /// whether it is for the client; `None` once it is over (then the answer is waited for).
    pub(crate) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        mut sleep: Pin<&mut tokio::time::Sleep>,
        waiting: Option<(Instant, bool)>,
    ) -> Poll<Error> {
        loop {
            ready!(sleep.as_mut().poll(cx));
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
            sleep.as_mut().reset(next.into());
        }
    }
}

/// The client-body timer of an answer that streams while the upload still goes on: only
/// the client's pauses are timed here (the target's pace is the response body's business,
/// see `proxy::body`). Its `Sleep` is made only once the upload first waits for the client
/// with nothing to read from the target — never for an upload that arrives whole.
#[derive(Debug, Default)]
pub(crate) struct ClientClock {
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl ClientClock {
    /// Ready with the stall once the client has sent nothing for `limit` since `since`
    /// (when the upload began waiting for it); otherwise registers the wake-up.
    pub(crate) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        since: Instant,
        limit: Duration,
    ) -> Poll<ClientError> {
        let deadline = tokio::time::Instant::from(since + limit);
        if tokio::time::Instant::now() >= deadline {
            return Poll::Ready(ClientError::Stalled(limit));
        }
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(ClientError::Stalled(limit)),
            Poll::Pending => Poll::Pending,
        }
    }
}
