//! Why an exchange with a target failed, as the proxy classifies it: the error answered to
//! the client (`ProxyError`), and the text logged and shown in `x-switchyard-error` details.

use crate::error::ProxyError;
use crate::upstream::error::{ClientError, Error};

/// Why an exchange with a target failed.
#[derive(Debug)]
pub(super) enum Failure {
    Connect(String),
    Reset(String),
    Timeout(std::time::Duration),
    Protocol(String),
    /// The client failed its own request while it was being sent on.
    Client(ClientError),
}

impl Failure {
    pub(super) fn error(&self) -> ProxyError {
        match self {
            Failure::Connect(_) => ProxyError::UpstreamConnect,
            Failure::Reset(_) => ProxyError::UpstreamReset,
            Failure::Timeout(_) => ProxyError::UpstreamTimeout,
            Failure::Protocol(_) => ProxyError::UpstreamProtocol,
            Failure::Client(e) => e.proxy_error(),
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        match e {
            Error::Protocol(m) => Failure::Protocol(m),
            Error::Client(e) => Failure::Client(e),
            Error::Timeout(d) => Failure::Timeout(d),
            e @ (Error::Io(_) | Error::Closed) => Failure::Reset(error_chain(&e)),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Connect(e) => write!(f, "cannot connect to target: {e}"),
            Failure::Reset(e) => write!(f, "target closed the connection: {e}"),
            Failure::Timeout(d) => write!(
                f,
                "target sent no response within {}",
                humantime::format_duration(*d)
            ),
            Failure::Protocol(e) => write!(f, "bad response from target: {e}"),
            Failure::Client(e) => write!(f, "{}", error_chain(e)),
        }
    }
}

pub(super) fn classify(e: hyper::Error) -> Failure {
    let detail = error_chain(&e);
    if e.is_parse() {
        Failure::Protocol(detail)
    } else {
        Failure::Reset(detail)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
