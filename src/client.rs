//! The CLI's side of the admin API.

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
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
            http: Client::builder(TokioExecutor::new()).build_http(),
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
                reason: causes(&e),
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
