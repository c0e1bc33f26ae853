//! Reading an HTTP answer from a server switchyard does not control (Prometheus, an analysis
//! webhook, a hook endpoint) with a size cap: a 300 MB answer once raised the resident set
//! from 23 MB to 373 MB for good. Past the cap reading stops and the connection is dropped.
//! [`call`] is the one client that makes such calls.

use std::time::Duration;

use bytes::Bytes;
use http_body::Body;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The most of an answer that is read: far above any instant query or verdict.
pub const MAX_ANSWER_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the answer is larger than {limit} bytes, the most switchyard reads")]
    TooLarge { limit: usize },
    #[error("reading the answer failed: {0}")]
    Read(String),
}

/// The whole body, or `TooLarge` as soon as it passes `limit` bytes (also when its
/// declared length already does, before anything is read).
pub async fn read_body<B>(body: B, limit: usize) -> Result<Bytes, BodyError>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(BodyError::TooLarge { limit }),
        Err(e) => Err(BodyError::Read(e.to_string())),
    }
}

/// An outbound call's failure, worded for a check's detail or a hook's event.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("bad URL {url}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("{url}: {reason}")]
    Failed { url: String, reason: String },
    #[error("{url}: no answer within {}", humantime::format_duration(*.timeout))]
    TimedOut { url: String, timeout: Duration },
}

/// A server's answer: its status, and its body (bounded by [`MAX_ANSWER_BYTES`]) when the
/// caller asked for it.
#[derive(Debug)]
pub struct Answer {
    pub status: http::StatusCode,
    /// The body, or why it could not be read; `None` when not read (dropping it unread
    /// closes the connection).
    pub body: Option<Result<Bytes, BodyError>>,
}

/// When an answer's body is worth reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadBody {
    Always,
    /// Only a failure's (a non-2xx status): it says why.
    OnFailure,
    Never,
}

/// The one outbound HTTP client of the control plane and the analyses (Prometheus queries,
/// analysis webhooks, HTTP hooks, notifications): `method url`, with `json` as an
/// `application/json` body, the whole exchange (answer body included) bounded by `timeout`.
pub async fn call(
    method: http::Method,
    url: &str,
    json: Option<String>,
    timeout: Duration,
    read: ReadBody,
) -> Result<Answer, CallError> {
    call_as(method, url, None, json, timeout, read).await
}

/// [`call`] with `Authorization: Bearer {bearer}` (a fleet's leader reading a peer's admin API).
pub async fn call_as(
    method: http::Method,
    url: &str,
    bearer: Option<&str>,
    json: Option<String>,
    timeout: Duration,
    read: ReadBody,
) -> Result<Answer, CallError> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = http::Request::builder().method(method).uri(url);
    if let Some(token) = bearer {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if json.is_some() {
        req = req.header(http::header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(json.unwrap_or_default())))
        .map_err(|e| CallError::BadUrl {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| CallError::Failed {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        let status = resp.status();
        let wanted = match read {
            ReadBody::Always => true,
            ReadBody::OnFailure => !status.is_success(),
            ReadBody::Never => false,
        };
        let body = match wanted {
            true => Some(read_body(resp.into_body(), MAX_ANSWER_BYTES).await),
            false => None,
        };
        Ok(Answer { status, body })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| CallError::TimedOut {
            url: url.to_string(),
            timeout,
        })?
}
