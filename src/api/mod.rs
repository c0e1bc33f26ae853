//! The admin API on its own listener (localhost by default). JSON in and out; every call
//! under /api needs a bearer token with the route's scope (`auth`), and mutating calls are
//! refused when none is set. Connections are bounded (`serve`). Errors are
//! `{"error": {"code", "message"}}` with a status that says what kind.

mod auth;
mod dashboard;
mod errors;
mod fleet;
mod metrics;
mod rollouts;
mod serve;
mod traffic;

use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::middleware;
use axum::routing::{get, post, put};
use axum::Router;

use crate::control::Controller;

use auth::{auth, Actor};
use errors::bad_request;
pub use errors::ApiError;
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
        // Over everything, the fallback and 405s included: every error in one shape.
        .layer(middleware::from_fn(errors::json_errors))
        .with_state(api)
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
