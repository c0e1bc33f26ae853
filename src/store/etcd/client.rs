//! etcd's v3 API over its JSON gateway (HTTP/1.1 POSTs of JSON), so that the build needs no
//! protobuf compiler. One pooled hyper client; every call bounded by a timeout; the
//! endpoints tried in turn when one cannot be reached (the one that answered is tried first
//! next time). Every exchange updates what `Connection` reports: reached or not, the last
//! error, the last contact.
//!
//! Not `bounded::call`: that is for third-party servers (answers capped, one shot); etcd is
//! our own store, whose watch answers are an endless stream.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::Connection;

/// The least time an answer is given (see `Client::timeout`).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a call to etcd failed; each names the endpoint.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EtcdError {
    #[error("{endpoint}: cannot connect: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("{endpoint}: no answer within {after:?}")]
    Timeout { endpoint: String, after: Duration },
    /// etcd answered with an error (its message, e.g. `etcdserver: requested lease not found`).
    #[error("{endpoint}: HTTP {status}: {message}")]
    Status {
        endpoint: String,
        status: u16,
        message: String,
    },
    #[error("{endpoint}: unreadable answer: {reason}")]
    Decode { endpoint: String, reason: String },
    /// No endpoint could be reached: each one's reason.
    #[error("no endpoint reached: {0}")]
    NoneReached(String),
}

impl EtcdError {
    /// etcd was not reached (as opposed to: it answered, with an error).
    pub fn unreachable(&self) -> bool {
        matches!(
            self,
            EtcdError::Connect { .. } | EtcdError::Timeout { .. } | EtcdError::NoneReached(_)
        )
    }

    /// etcd answered that the watched or read revision was compacted away.
    pub fn compacted(&self) -> bool {
        matches!(self, EtcdError::Status { message, .. } if message.contains("compacted"))
    }

    fn bad_token(&self) -> bool {
        matches!(self, EtcdError::Status { message, .. }
            if message.contains("invalid auth token") || message.contains("user name is empty"))
    }
}

pub struct Client {
    endpoints: Vec<String>,
    http: HyperClient<HttpConnector, Full<Bytes>>,
    /// How long an answer may take once connected: longer than a connection, as etcd
    /// syncs each write to disk before it answers (seconds on a loaded machine). Callers
    /// that must not wait that long bound their own waits.
    timeout: Duration,
    /// The endpoint that answered last: tried first.
    preferred: AtomicUsize,
    auth: Option<(String, String)>,
    token: Mutex<Option<String>>,
    seen: Mutex<Connection>,
    revision: AtomicI64,
}

/// A streamed answer: one JSON object per line.
pub struct Lines {
    endpoint: String,
    body: Incoming,
    buf: Vec<u8>,
}

impl Lines {
    /// The next object; `Ok(None)` when etcd closed the stream. Cancel-safe: a partial line
    /// stays in the buffer.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, EtcdError> {
        loop {
            if let Some(at) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=at).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return serde_json::from_slice(&line)
                    .map(Some)
                    .map_err(|e| EtcdError::Decode {
                        endpoint: self.endpoint.clone(),
                        reason: e.to_string(),
                    });
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(EtcdError::Connect {
                        endpoint: self.endpoint.clone(),
                        reason: format!("stream broken: {e}"),
                    })
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

impl Client {
    /// `connect_timeout` bounds each connection; answers get at least `ANSWER_TIMEOUT`.
    pub fn new(
        endpoints: Vec<String>,
        auth: Option<(String, String)>,
        connect_timeout: Duration,
    ) -> Client {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        let timeout = connect_timeout.max(ANSWER_TIMEOUT);
        Client {
            endpoints: endpoints
                .into_iter()
                .map(|e| e.trim_end_matches('/').to_string())
                .collect(),
            http: HyperClient::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
            timeout,
            preferred: AtomicUsize::new(0),
            auth,
            token: Mutex::new(None),
            seen: Mutex::new(Connection::default()),
            revision: AtomicI64::new(0),
        }
    }

    pub fn endpoints(&self) -> String {
        self.endpoints.join(", ")
    }

    pub fn connection(&self) -> Connection {
        let mut c = self.seen.lock().expect("etcd status").clone();
        c.revision = self.revision.load(Ordering::SeqCst);
        c
    }

    /// A state revision this instance has seen (a read, a write, a watch event).
    pub fn saw_revision(&self, revision: i64) {
        self.revision.fetch_max(revision, Ordering::SeqCst);
    }

    /// The fleet's watch was found stuck and is reopened (counted for `/metrics`).
    pub fn note_stuck_watch(&self) {
        self.seen.lock().expect("etcd status").watch_reopened += 1;
    }

    /// Records the outcome of an exchange: reached (whatever etcd answered) or not.
    pub fn note<T>(&self, r: &Result<T, EtcdError>) {
        let mut seen = self.seen.lock().expect("etcd status");
        match r {
            Err(e) if e.unreachable() => {
                seen.connected = false;
                seen.last_error = Some(e.to_string());
            }
            _ => {
                seen.connected = true;
                seen.last_error = None;
                seen.last_contact = Some(crate::sys::unix_ms());
            }
        }
    }

    /// One call: `path` (e.g. `/v3/kv/range`) with a JSON body, on the first endpoint that
    /// can be reached.
    pub async fn call<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<T, EtcdError> {
        let r = self
            .each_endpoint(|client, at| async move {
                let (endpoint, answer) = client.post(at, path, body).await?;
                client.read(&endpoint, answer).await
            })
            .await;
        self.note(&r);
        serde_json::from_value(r?).map_err(|e| EtcdError::Decode {
            endpoint: self.endpoints(),
            reason: e.to_string(),
        })
    }

    /// A streamed call (`/v3/watch`): bounded until etcd answers; the stream itself is not.
    pub async fn stream(&self, path: &str, body: &Value) -> Result<Lines, EtcdError> {
        let r = self
            .each_endpoint(|client, at| async move {
                let (endpoint, answer) = client.post(at, path, body).await?;
                let status = answer.status();
                if !status.is_success() {
                    let read = client.read(&endpoint, answer).await;
                    return Err(read
                        .err()
                        .unwrap_or_else(|| failure(&endpoint, status, b"")));
                }
                Ok(Lines {
                    endpoint,
                    body: answer.into_body(),
                    buf: Vec::new(),
                })
            })
            .await;
        self.note(&r);
        r
    }

    /// Runs `f` on each endpoint in turn (the preferred one first) until one is reached;
    /// authenticates first when a user is configured, and again once if the token expired.
    async fn each_endpoint<'a, T, F, Fut>(&'a self, f: F) -> Result<T, EtcdError>
    where
        F: Fn(&'a Client, usize) -> Fut,
        Fut: std::future::Future<Output = Result<T, EtcdError>>,
    {
        let n = self.endpoints.len().max(1);
        let first = self.preferred.load(Ordering::Relaxed);
        let mut failed: Vec<EtcdError> = Vec::new();
        for i in 0..n {
            let at = (first + i) % n;
            let mut r = f(self, at).await;
            if matches!(&r, Err(e) if e.bad_token()) {
                *self.token.lock().expect("etcd token") = None;
                r = f(self, at).await;
            }
            match r {
                Err(e) if e.unreachable() => failed.push(e),
                other => {
                    self.preferred.store(at, Ordering::Relaxed);
                    return other;
                }
            }
        }
        if failed.len() == 1 {
            return Err(failed.remove(0));
        }
        let each: Vec<String> = failed.iter().map(ToString::to_string).collect();
        Err(EtcdError::NoneReached(if each.is_empty() {
            "no endpoint configured".into()
        } else {
            each.join("; ")
        }))
    }

    /// POSTs to one endpoint with the auth token; the endpoint and the answer's head.
    async fn post(
        &self,
        at: usize,
        path: &str,
        body: &Value,
    ) -> Result<(String, hyper::Response<Incoming>), EtcdError> {
        let endpoint = self.endpoints.get(at).cloned().unwrap_or_default();
        let token = self.token(&endpoint).await?;
        let answer = self.send(&endpoint, path, body, token).await?;
        Ok((endpoint, answer))
    }

    /// One POST, bounded until the answer's head.
    async fn send(
        &self,
        endpoint: &str,
        path: &str,
        body: &Value,
        token: Option<String>,
    ) -> Result<hyper::Response<Incoming>, EtcdError> {
        let mut req = hyper::Request::post(format!("{endpoint}{path}"))
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(t) = token {
            req = req.header(http::header::AUTHORIZATION, t);
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| EtcdError::Connect {
                endpoint: endpoint.into(),
                reason: e.to_string(),
            })?;
        match tokio::time::timeout(self.timeout, self.http.request(req)).await {
            Err(_) => Err(EtcdError::Timeout {
                endpoint: endpoint.into(),
                after: self.timeout,
            }),
            Ok(Err(e)) => Err(EtcdError::Connect {
                endpoint: endpoint.into(),
                reason: connect_reason(&e),
            }),
            Ok(Ok(answer)) => Ok(answer),
        }
    }

    /// A whole answer, bounded: its JSON, or etcd's error.
    async fn read(
        &self,
        endpoint: &str,
        answer: hyper::Response<Incoming>,
    ) -> Result<Value, EtcdError> {
        let status = answer.status();
        let bytes = tokio::time::timeout(self.timeout, answer.into_body().collect())
            .await
            .map_err(|_| EtcdError::Timeout {
                endpoint: endpoint.into(),
                after: self.timeout,
            })?
            .map_err(|e| EtcdError::Connect {
                endpoint: endpoint.into(),
                reason: format!("answer cut: {e}"),
            })?
            .to_bytes();
        decode(endpoint, status, &bytes)
    }

    /// The auth token for calls, fetched once (`/v3/auth/authenticate`) when a user is set.
    async fn token(&self, endpoint: &str) -> Result<Option<String>, EtcdError> {
        let Some((name, password)) = &self.auth else {
            return Ok(None);
        };
        if let Some(t) = self.token.lock().expect("etcd token").clone() {
            return Ok(Some(t));
        }
        let body = json!({ "name": name, "password": password });
        let answer = self
            .send(endpoint, "/v3/auth/authenticate", &body, None)
            .await?;
        let v = self.read(endpoint, answer).await?;
        let token = v.get("token").and_then(Value::as_str).map(str::to_string);
        *self.token.lock().expect("etcd token") = token.clone();
        Ok(token)
    }
}

/// An answer's JSON, or etcd's error message as an `EtcdError::Status`.
fn decode(endpoint: &str, status: http::StatusCode, bytes: &[u8]) -> Result<Value, EtcdError> {
    if !status.is_success() {
        return Err(failure(endpoint, status, bytes));
    }
    serde_json::from_slice(bytes).map_err(|e| EtcdError::Decode {
        endpoint: endpoint.into(),
        reason: e.to_string(),
    })
}

/// An error answer, with etcd's message when it sent one.
fn failure(endpoint: &str, status: http::StatusCode, bytes: &[u8]) -> EtcdError {
    let message = serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| {
            v.get("message")
                .or_else(|| v.get("error"))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(bytes).chars().take(200).collect());
    EtcdError::Status {
        endpoint: endpoint.into(),
        status: status.as_u16(),
        message,
    }
}

/// The root cause of a failed connection (`Connection refused (os error 111)`), not hyper's
/// generic wrapper text.
fn connect_reason(e: &hyper_util::client::legacy::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}
