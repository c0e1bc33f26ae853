//! How an exchange with a target fails: the error every part of the HTTP/1 client (and the
//! HTTP/2 path's upload timer) returns. Its own leaf so that the client, the framing, the
//! head parser and the exchange clock can all return it without importing each other.

use std::io;
use std::time::Duration;

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
