//! The admin API on its own listener (localhost by default). JSON in and out; every call
//! under /api needs a bearer token with the route's scope (`auth`), and mutating calls are
//! refused when none is set. Connections are bounded (`serve`). Errors are
//! `{"error": {"code", "message"}}` with a status that says what kind.

mod auth;
mod backtest;
mod dashboard;
mod errors;
mod fleet;
mod metrics;
mod rollouts;
mod serve;
mod traffic;

use std::sync::Arc;

use axum::http::{header, Method, StatusCode};
use axum::middleware;
use axum::routing::{get, post, put, MethodRouter};
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

/// Where the token-checked endpoints live.
const V1: &str = "/api/v1";

/// Every endpoint, one line each: (prefix, path, method, handler). The router is made from
/// this table and `routes` lists it, so the OpenAPI document is checked against exactly
/// what is served (`tests/admin_api.rs`).
fn endpoints() -> Vec<(&'static str, &'static str, Method, MethodRouter<Api>)> {
    use Method as M;
    let openapi = || async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) };
    vec![
        ("", "/", M::GET, get(dashboard::page)),
        ("", "/healthz", M::GET, get(healthz)),
        ("", "/metrics", M::GET, get(metrics::metrics)),
        ("", "/openapi.json", M::GET, get(openapi)),
        (V1, "/status", M::GET, get(traffic::status)),
        (
            V1,
            "/services/{service}/switch",
            M::POST,
            post(traffic::switch),
        ),
        (
            V1,
            "/services/{service}/weights",
            M::PUT,
            put(traffic::weights),
        ),
        (V1, "/reload", M::POST, post(traffic::reload)),
        (V1, "/config/plan", M::POST, post(traffic::plan)),
        (V1, "/config/apply", M::POST, post(traffic::apply)),
        (V1, "/rollouts", M::POST, post(rollouts::start)),
        (V1, "/rollouts", M::GET, get(rollouts::history)),
        (
            V1,
            "/services/{service}/rollout",
            M::GET,
            get(rollouts::status),
        ),
        (
            V1,
            "/services/{service}/rollout/{verb}",
            M::POST,
            post(rollouts::command),
        ),
        (V1, "/events", M::GET, get(rollouts::events)),
        (V1, "/series", M::GET, get(dashboard::series)),
        (V1, "/fleet/seconds", M::GET, get(fleet::seconds)),
        (
            V1,
            "/services/{service}/analysis/run",
            M::POST,
            post(rollouts::dry_run),
        ),
        (
            V1,
            "/services/{service}/analysis/backtest",
            M::POST,
            post(backtest::backtest),
        ),
    ]
}

/// Every (method, path) the router serves, from the table it is made from.
pub fn routes() -> Vec<(Method, String)> {
    endpoints()
        .into_iter()
        .map(|(prefix, path, method, _)| (method, format!("{prefix}{path}")))
        .collect()
}

/// The API's routes. Tokens and limits are read from the configuration in force at each
/// request or connection, so reloads change them.
pub fn router(control: Arc<Controller>) -> Router {
    let api = Api { control };
    let (mut outer, mut v1) = (Router::new(), Router::new());
    for (prefix, path, _, handler) in endpoints() {
        // A path given twice (GET and POST /rollouts) has its methods merged by axum.
        if prefix == V1 {
            v1 = v1.route(path, handler);
        } else {
            outer = outer.route(path, handler);
        }
    }
    // The token is checked (headers only) before any body is read: an unauthenticated
    // client gets its 401 at once and never has 2 MiB buffered for it. (The last layer
    // added runs first.)
    let v1 = v1
        .layer(middleware::from_fn_with_state(
            api.clone(),
            serve::body_in_time,
        ))
        .layer(middleware::from_fn_with_state(api.clone(), auth));
    outer
        .nest(V1, v1)
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
