//! The admin API on its own listener (localhost by default). JSON in and out; every call
//! under /api needs the bearer token, and mutating calls are refused when none is set.
//! Errors are `{"error": {"code", "message"}}` with a status that says what kind.

mod dashboard;
mod metrics;
mod rollouts;
mod traffic;

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::control::{ControlError, Controller};

pub use traffic::{GroupStatus, ListenerStatus, ServiceStatus, Status, TargetStatus};

/// The OpenAPI document of this API, served at /openapi.json.
pub const OPENAPI: &str = include_str!("openapi.json");

#[derive(Clone)]
struct Api {
    control: Arc<Controller>,
    /// (name, token); empty: the API is read-only.
    tokens: Arc<[(String, String)]>,
}

/// Which named token a request used (set by `auth`).
#[derive(Clone)]
struct TokenName(String);

pub fn router(control: Arc<Controller>, tokens: Vec<(String, String)>) -> Router {
    let api = Api {
        control,
        tokens: tokens.into(),
    };
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
        .route("/services/{service}/analysis/run", post(rollouts::dry_run))
        .layer(middleware::from_fn_with_state(api.clone(), auth));
    Router::new()
        .route("/", get(dashboard::page))
        .route("/healthz", get(|| async { "ok\n" }))
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

pub async fn serve(
    listener: TcpListener,
    router: Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}

async fn auth(State(api): State<Api>, mut req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let configured = !api.tokens.is_empty();
    // Compare with every token (constant time each) so timing does not tell which one is near.
    let matched = given.as_ref().and_then(|g| {
        api.tokens.iter().fold(None, |found, (name, t)| {
            if constant_time_eq(t.as_bytes(), g.as_bytes()) {
                Some(name.clone())
            } else {
                found
            }
        })
    });
    match (configured, given.is_some(), matched) {
        (true, true, Some(name)) => {
            req.extensions_mut().insert(TokenName(name));
            next.run(req).await
        }
        (true, true, None) => ApiError::new(StatusCode::UNAUTHORIZED, "bad_token", "the bearer token is wrong").into_response(),
        (true, false, _) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "no_token",
            "send the admin token as `Authorization: Bearer TOKEN`",
        )
        .into_response(),
        (false, _, _) if req.method() == axum::http::Method::GET => next.run(req).await,
        (false, _, _) => ApiError::new(
            StatusCode::FORBIDDEN,
            "read_only",
            "no admin token is configured ([admin] token or SWITCHYARD_ADMIN_TOKEN), so the API is read-only",
        )
        .into_response(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Who is acting, for the audit history: the `x-switchyard-actor` header (the CLI sends
/// `cli:USER`), else `api`.
struct Actor(String);

impl<S: Send + Sync> FromRequestParts<S> for Actor {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let said = parts
            .headers
            .get("x-switchyard-actor")
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.chars()
                    .filter(|c| !c.is_control())
                    .take(64)
                    .collect::<String>()
            })
            .filter(|v| !v.is_empty());
        // A named token is who acted; the client's own word is kept beside it.
        let token = parts
            .extensions
            .get::<TokenName>()
            .map(|t| t.0.clone())
            .filter(|n| n != "admin");
        let actor = match (token, said) {
            (Some(t), Some(s)) => format!("{t}/{s}"),
            (Some(t), None) => t,
            (None, Some(s)) => s,
            (None, None) => "api".into(),
        };
        Ok(Actor(actor))
    }
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
            ControlError::BadWeights { .. } => (S::UNPROCESSABLE_ENTITY, "bad_weights"),
            ControlError::BadRequest(_) => (S::UNPROCESSABLE_ENTITY, "bad_request"),
            ControlError::Config(_) => (S::UNPROCESSABLE_ENTITY, "invalid_config"),
            ControlError::Snapshot(_) => (S::UNPROCESSABLE_ENTITY, "cannot_apply"),
            ControlError::Store(_) => (S::INTERNAL_SERVER_ERROR, "store_error"),
            ControlError::StoreUnavailable(_) => (S::SERVICE_UNAVAILABLE, "store_unavailable"),
        };
        ApiError::new(status, code, e.to_string())
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
