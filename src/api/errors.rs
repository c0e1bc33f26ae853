//! The admin API's one error shape, `{"error": {"code", "message"}}`, and the one place that
//! puts every error in it: the control plane's errors (`From<ControlError>`), axum's
//! extractor rejections (`From<JsonRejection>`, `From<QueryRejection>`), and, as a layer over
//! the whole router (`json_errors`), whatever else answers an error in another shape — axum's
//! own 400/413/415 from an extractor a handler does not inspect, a 405 with its empty body.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::control::ControlError;

#[derive(Debug, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    status: StatusCode,
    pub(super) code: &'static str,
    pub(super) message: String,
}

impl ApiError {
    pub(super) fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(serde_json::json!({ "error": self }))).into_response()
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> ApiError {
        use StatusCode as S;
        let (status, code) = match &e {
            ControlError::UnknownService(_) => (S::NOT_FOUND, "unknown_service"),
            ControlError::UnknownGroup { .. } => (S::NOT_FOUND, "unknown_group"),
            ControlError::NoRollout(_) => (S::NOT_FOUND, "no_rollout"),
            ControlError::NoHealthyTarget { .. } => (S::CONFLICT, "no_healthy_target"),
            ControlError::NothingToRevert(_) => (S::CONFLICT, "nothing_to_revert"),
            ControlError::RolloutInProgress { .. } => (S::CONFLICT, "rollout_in_progress"),
            ControlError::Rollout(_) => (S::CONFLICT, "rollout_state"),
            ControlError::Conflict(_) => (S::CONFLICT, "conflict"),
            ControlError::NoConfigFile => (S::CONFLICT, "no_config_file"),
            ControlError::ReloadWouldUndo { .. } => (S::CONFLICT, "reload_would_undo_apply"),
            ControlError::Bind { .. } => (S::CONFLICT, "bind_failed"),
            ControlError::BadRequest(_) => (S::UNPROCESSABLE_ENTITY, "bad_request"),
            ControlError::Config(_) => (S::UNPROCESSABLE_ENTITY, "invalid_config"),
            ControlError::Snapshot(_) => (S::UNPROCESSABLE_ENTITY, "cannot_apply"),
            ControlError::Store(_) => (S::INTERNAL_SERVER_ERROR, "store_error"),
            ControlError::StoreUnavailable(_) => (S::SERVICE_UNAVAILABLE, "store_unavailable"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// A query string axum could not read (unknown key, wrong type), in our error shape: a
/// handler takes `Result<Query<_>, QueryRejection>` and writes `q?`.
impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> ApiError {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_request",
            e.body_text(),
        )
    }
}

/// A JSON body axum could not read: too large is 413 on every endpoint; anything else
/// (not JSON, wrong fields, no JSON content type) is 422, the status every body endpoint
/// has always given a body it cannot use.
pub(super) fn bad_request(e: JsonRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            e.body_text(),
        );
    }
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "bad_request",
        e.body_text(),
    )
}

/// Answers no larger than this are read to be rewritten; axum's own error bodies are a line.
const REWRITE_LIMIT: usize = 64 << 10;

/// The layer over the whole router: an error answer that is not JSON already becomes one, its
/// status kept, its text (or, for an empty body, what the status means here) the message.
/// Headers that say how to go on (`Allow` on a 405, `WWW-Authenticate`) are kept.
pub(super) async fn json_errors(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let res = next.run(req).await;
    let status = res.status();
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return res;
    }
    let (parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, REWRITE_LIMIT)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let (code, said) = meaning(status, &method, &path);
    let message = if text.is_empty() { said } else { text };
    let mut out = ApiError::new(status, code, message).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    out
}

/// The code for an error status, and what to say when the answer had no text.
fn meaning(status: StatusCode, method: &Method, path: &str) -> (&'static str, String) {
    use StatusCode as S;
    match status {
        S::NOT_FOUND => ("not_found", "no such endpoint".into()),
        S::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            format!("{method} is not allowed on {path} (see the Allow header)"),
        ),
        S::PAYLOAD_TOO_LARGE => ("body_too_large", "the request body is too large".into()),
        S::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported_media_type",
            "send the body as Content-Type: application/json".into(),
        ),
        S::REQUEST_TIMEOUT => ("slow_body", "the request did not arrive in time".into()),
        s if s.is_server_error() => ("internal", format!("{s}")),
        s => ("bad_request", format!("{s}")),
    }
}
