//! The web dashboard: one page built into the binary (no CDN), and the per-second series its
//! charts draw. The page asks for the admin token and polls the JSON API.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::Json;
use serde::Deserialize;

use super::{Api, ApiError};
use crate::metrics::now_second;

pub(super) const PAGE: &str = include_str!("dashboard/index.html");

pub(super) async fn page() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-store")], Html(PAGE))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SeriesQuery {
    /// Seconds of history (default 300, at most 600).
    seconds: Option<u64>,
}

/// Per service and group, one point per second: requests, success rate (%), p99 (ms).
pub(super) async fn series(
    State(api): State<Api>,
    q: Result<Query<SeriesQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) = q?;
    let seconds = q.seconds.unwrap_or(300).clamp(10, 600);
    let snap = api.control.snapshot();
    let now = now_second();
    let from = now.saturating_sub(seconds - 1);
    let mut services = serde_json::Map::new();
    for svc in snap.services.values() {
        let mut groups = serde_json::Map::new();
        for g in &svc.groups {
            let points: Vec<serde_json::Value> = (from..=now)
                .map(|sec| {
                    let s = g.stats.window.summary(sec, sec);
                    serde_json::json!([
                        now - sec,
                        s.requests,
                        s.success_rate(),
                        s.percentile(0.99)
                            .map(|d| (d.as_secs_f64() * 1e5).round() / 100.0),
                    ])
                })
                .collect();
            groups.insert(g.name.clone(), serde_json::Value::Array(points));
        }
        services.insert(svc.name.clone(), serde_json::Value::Object(groups));
    }
    Ok(Json(
        serde_json::json!({ "seconds": seconds, "columns": ["age_s", "requests", "success_rate", "p99_ms"], "services": services }),
    ))
}
