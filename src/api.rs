//! The admin API on its own listener (localhost by default). JSON in and out; every call
//! under /api needs the bearer token, and mutating calls are refused when none is set.
//! Errors are `{"error": {"code", "message"}}` with a status that says what kind.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{format_percent, Split};
use crate::control::{ControlError, Controller};
use crate::group::{now_ms, GroupCounts, Health};

#[derive(Clone)]
struct Api {
    control: Arc<Controller>,
    token: Option<Arc<str>>,
}

pub fn router(control: Arc<Controller>, token: Option<String>) -> Router {
    let api = Api {
        control,
        token: token.map(Arc::from),
    };
    let v1 = Router::new()
        .route("/status", get(status))
        .route("/services/{service}/switch", post(switch))
        .route("/services/{service}/weights", put(weights))
        .route("/reload", post(reload))
        .layer(middleware::from_fn_with_state(api.clone(), auth));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
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

async fn auth(State(api): State<Api>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match (&api.token, given) {
        (Some(want), Some(given)) if constant_time_eq(want.as_bytes(), given.as_bytes()) => next.run(req).await,
        (Some(_), Some(_)) => ApiError::new(StatusCode::UNAUTHORIZED, "bad_token", "the bearer token is wrong").into_response(),
        (Some(_), None) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "no_token",
            "send the admin token as `Authorization: Bearer TOKEN`",
        )
        .into_response(),
        (None, _) if req.method() == axum::http::Method::GET => next.run(req).await,
        (None, _) => ApiError::new(
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
        let (status, code) = match &e {
            ControlError::UnknownService(_) => (StatusCode::NOT_FOUND, "unknown_service"),
            ControlError::UnknownGroup { .. } => (StatusCode::NOT_FOUND, "unknown_group"),
            ControlError::NoHealthyTarget { .. } => (StatusCode::CONFLICT, "no_healthy_target"),
            ControlError::NothingToRevert(_) => (StatusCode::CONFLICT, "nothing_to_revert"),
            ControlError::BadWeights { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "bad_weights"),
            ControlError::NoConfigFile => (StatusCode::CONFLICT, "no_config_file"),
            ControlError::Config(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_config"),
            ControlError::Bind { .. } => (StatusCode::CONFLICT, "bind_failed"),
            ControlError::Tls(_) => (StatusCode::UNPROCESSABLE_ENTITY, "bad_certificate"),
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SwitchRequest {
    group: Option<String>,
    #[serde(default)]
    back: bool,
    #[serde(default)]
    force: bool,
}

async fn switch(
    State(api): State<Api>,
    Path(service): Path<String>,
    body: Result<Json<SwitchRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<crate::control::TrafficChange>, ApiError> {
    let Json(req) = body.map_err(bad_request)?;
    let change = match (req.group, req.back) {
        (Some(g), false) => api.control.switch(&service, &g, req.force).await?,
        (None, true) => api.control.switch_back(&service, req.force).await?,
        _ => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "bad_request",
                "give either `group` or `back: true`",
            ))
        }
    };
    Ok(Json(change))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightsRequest {
    /// Percent by group, e.g. {"blue": 90, "green": 10}; 0.01 % resolution.
    weights: BTreeMap<String, f64>,
    #[serde(default)]
    force: bool,
}

async fn weights(
    State(api): State<Api>,
    Path(service): Path<String>,
    body: Result<Json<WeightsRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<crate::control::TrafficChange>, ApiError> {
    let Json(req) = body.map_err(bad_request)?;
    let mut split = BTreeMap::new();
    for (g, pct) in req.weights {
        if !pct.is_finite() || !(0.0..=100.0).contains(&pct) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "bad_weights",
                format!("weights.{g}: {pct} is not a percentage from 0 to 100"),
            ));
        }
        split.insert(g, (pct * 100.0).round() as u32);
    }
    Ok(Json(
        api.control
            .set_split(&service, Split(split), req.force)
            .await?,
    ))
}

async fn reload(State(api): State<Api>) -> Result<Json<serde_json::Value>, ApiError> {
    match api.control.reload().await {
        Ok(generation) => Ok(Json(serde_json::json!({ "generation": generation }))),
        Err(ControlError::Config(e)) => {
            let mut err = ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_config",
                e.to_string(),
            );
            if let crate::config::ConfigError::Read { .. } = e {
                err.code = "unreadable_config";
            }
            tracing::error!(error = %err.message, "reload rejected; the running configuration stays");
            Err(err)
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub generation: u64,
    pub listeners: Vec<ListenerStatus>,
    pub services: Vec<ServiceStatus>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ListenerStatus {
    pub name: String,
    pub addr: String,
    pub tls: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    /// Basis points by group.
    pub split: BTreeMap<String, u32>,
    pub split_text: String,
    pub previous: Option<BTreeMap<String, u32>>,
    pub groups: Vec<GroupStatus>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct GroupStatus {
    pub name: String,
    pub weight: u32,
    pub weight_text: String,
    pub healthy_targets: usize,
    pub targets: Vec<TargetStatus>,
    pub counts: serde_json::Value,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TargetStatus {
    pub addr: String,
    pub health: String,
    pub ejected: bool,
    pub in_flight: u32,
}

async fn status(State(api): State<Api>) -> Json<Status> {
    let snap = api.control.snapshot();
    let traffic = api.control.traffic().await;
    let now = now_ms();
    let mut listeners = Vec::new();
    for l in &snap.config.listeners {
        let addr = api.control.listener_addr(&l.name).await.unwrap_or(l.bind);
        listeners.push(ListenerStatus {
            name: l.name.clone(),
            addr: addr.to_string(),
            tls: l.is_tls(),
        });
    }
    let services = snap
        .services
        .values()
        .map(|s| {
            let previous = traffic
                .get(&s.name)
                .and_then(|(_, p)| p.clone())
                .map(|p| p.0);
            ServiceStatus {
                name: s.name.clone(),
                split: s.split().0,
                split_text: s.split().to_string(),
                previous,
                groups: s
                    .groups
                    .iter()
                    .zip(&s.weights)
                    .map(|(g, w)| GroupStatus {
                        name: g.name.clone(),
                        weight: *w,
                        weight_text: format_percent(*w),
                        healthy_targets: g.healthy_count(now),
                        targets: g
                            .targets
                            .iter()
                            .map(|t| TargetStatus {
                                addr: t.addr.to_string(),
                                health: match t.health() {
                                    Health::Unknown => "unknown",
                                    Health::Healthy => "healthy",
                                    Health::Unhealthy => "unhealthy",
                                }
                                .into(),
                                ejected: t.ejected(now),
                                in_flight: t.outstanding(),
                            })
                            .collect(),
                        counts: counts_json(g.stats.snapshot()),
                    })
                    .collect(),
            }
        })
        .collect();
    Json(Status {
        generation: snap.generation,
        listeners,
        services,
    })
}

fn counts_json(c: GroupCounts) -> serde_json::Value {
    serde_json::json!({
        "requests": c.requests,
        "1xx": c.responses[0], "2xx": c.responses[1], "3xx": c.responses[2],
        "4xx": c.responses[3], "5xx": c.responses[4],
        "connect_failures": c.connect_failures, "timeouts": c.timeouts, "resets": c.resets,
    })
}
