//! The CLI's side of the admin API.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `reason` begins with the cause in a person's words (connection refused, timed out,
    /// the name does not resolve, …), then the chain of errors it was read from.
    #[error("cannot reach the admin API at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{status}: {message}")]
    Api {
        status: StatusCode,
        code: String,
        message: String,
    },
    #[error("the admin API answered with something that is not JSON: {0}")]
    BadAnswer(String),
}

pub struct AdminClient {
    base: String,
    token: Option<String>,
    actor: Option<String>,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl AdminClient {
    pub fn new(base: &str, token: Option<String>) -> AdminClient {
        let base = if base.starts_with("http://") {
            base.trim_end_matches('/').to_string()
        } else {
            format!("http://{}", base.trim_end_matches('/'))
        };
        AdminClient {
            base,
            token,
            actor: None,
            http: Client::builder(TokioExecutor::new()).build(connector()),
        }
    }

    /// Names who acts in the audit history (`x-switchyard-actor`).
    pub fn with_actor(mut self, actor: impl Into<String>) -> AdminClient {
        self.actor = Some(actor.into());
        self
    }

    /// A GET whose connection broke is asked once more: a kept-alive connection the server
    /// closed just as the request went out fails without an answer, and reading is safe to
    /// repeat (a change is not: POST and PUT are never sent twice).
    pub async fn get(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        match self.call(Method::GET, path, None).await {
            Err(ClientError::Unreachable { .. }) => self.call(Method::GET, path, None).await,
            other => other,
        }
    }

    pub async fn post(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn put(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        self.call(Method::PUT, path, Some(body)).await
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = Request::builder().method(method).uri(&url);
        if let Some(t) = &self.token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if let Some(a) = &self.actor {
            req = req.header("x-switchyard-actor", a.as_str());
        }
        let body = match body {
            Some(b) => {
                req = req.header(http::header::CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(b.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let req = req.body(body).map_err(|e| ClientError::Unreachable {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| ClientError::Unreachable {
                url: url.clone(),
                reason: format!("{}: {}", cause(&e), causes(&e)),
            })?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::BadAnswer(e.to_string()))?
            .to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|_| ClientError::BadAnswer(String::from_utf8_lossy(&bytes).into_owned()))?;
        if status.is_success() {
            return Ok(json);
        }
        let field = |k: &str| json["error"][k].as_str().unwrap_or("").to_string();
        Err(ClientError::Api {
            status,
            code: field("code"),
            message: field("message"),
        })
    }
}

/// How long connecting may take: an address that drops packets is said to time out rather
/// than leave the command waiting for the system's minutes-long limit.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn connector() -> HttpConnector {
    let mut c = HttpConnector::new();
    c.set_connect_timeout(Some(CONNECT_TIMEOUT));
    c
}

/// Why a request got no answer, in a person's words, from the error's chain.
fn cause(e: &(dyn std::error::Error + 'static)) -> &'static str {
    let mut source = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return "connection refused",
                std::io::ErrorKind::TimedOut => return "timed out",
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted => {
                    return "the connection was closed"
                }
                _ => {}
            }
        }
        let text = s.to_string();
        if text.contains("dns error") || text.contains("failed to lookup address") {
            return "the name does not resolve (DNS)";
        }
        if text.contains("scheme is not http") {
            return "the CLI speaks plain HTTP to the admin API (TLS is not supported): give HOST:PORT";
        }
        if text.contains("timed out") {
            return "timed out";
        }
        source = s.source();
    }
    "no answer"
}

/// An error with the chain of its causes ("client error (SendRequest): connection closed
/// before message completed"): the outer words alone do not say what went wrong.
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}
