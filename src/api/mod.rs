//! The admin API on its own listener (localhost by default). JSON in and out; every call
//! under /api needs a bearer token with the route's scope (`auth`), and mutating calls are
//! refused when none is set. Connections are bounded (`serve`). Errors are
//! `{"error": {"code", "message"}}` with a status that says what kind.

mod auth;
mod dashboard;
mod fleet;
mod metrics;
mod rollouts;
mod serve;
mod traffic;

use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Serialize;

use crate::control::{ControlError, Controller};

use auth::{auth, Actor};
pub use serve::serve;
pub use traffic::{GroupStatus, ListenerStatus, ServiceStatus, Status, TargetStatus};

/// The OpenAPI document of this API, served at /openapi.json.
pub const OPENAPI: &str = include_str!("openapi.json");

#[derive(Clone)]
struct Api {
    control: Arc<Controller>,
}

/// The API's routes. Tokens and limits are read from the configuration in force at each
/// request or connection, so reloads change them.
pub fn router(control: Arc<Controller>) -> Router {
    let api = Api { control };
    let v1 = Router::new()
        .route("/status", get(traffic::status))
        .route("/services/{service}/switch", post(traffic::switch))
        .route("/services/{service}/weights", put(traffic::weights))
        .route("/reload", post(traffic::reload))
        .route("/config/plan", post(traffic::plan))
        .route("/config/apply", post(traffic::apply))
        .route("/rollouts", post(rollouts::start).get(rollouts::history))
        .route("/services/{service}/rollout", get(rollouts::status))
        .route(
            "/services/{service}/rollout/{verb}",
            post(rollouts::command),
        )
        .route("/events", get(rollouts::events))
        .route("/series", get(dashboard::series))
        .route("/fleet/seconds", get(fleet::seconds))
        .route("/services/{service}/analysis/run", post(rollouts::dry_run))
        // The token is checked (headers only) before any body is read: an unauthenticated
        // client gets its 401 at once and never has 2 MiB buffered for it. (The last layer
        // added runs first.)
        .layer(middleware::from_fn_with_state(
            api.clone(),
            serve::body_in_time,
        ))
        .layer(middleware::from_fn_with_state(api.clone(), auth));
    Router::new()
        .route("/", get(dashboard::page))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::metrics))
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .nest("/api/v1", v1)
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .with_state(api)
}

#[derive(Debug, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
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
impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(e: axum::extract::rejection::QueryRejection) -> ApiError {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_request",
            e.body_text(),
        )
    }
}

/// Rejections from axum's extractors (bad JSON, wrong field types) in our error shape.
fn bad_request(e: axum::extract::rejection::JsonRejection) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "bad_request",
        e.body_text(),
    )
}

/// 200 while the instance serves. In a fleet that cannot reach etcd it still serves its last
/// state (fail static), so it stays 200, and says why it is degraded.
async fn healthz(axum::extract::State(api): axum::extract::State<Api>) -> String {
    match api.control.fleet_status() {
        Some(f) if !f.store.connected => format!(
            "degraded: the fleet's state store is unreachable ({}); serving the last state, no rollout moves\n",
            f.store.last_error.as_deref().unwrap_or("no answer")
        ),
        _ => "ok\n".into(),
    }
}
