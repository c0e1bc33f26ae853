//! The web dashboard: one page and its script built into the binary (no CDN), and the
//! per-second series its charts draw with the figures beside them. The page asks for the
//! admin token and polls the JSON API.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Api, ApiError};
use crate::metrics::{now_second, Summary};

/// The page (layout and style) and its script (what it shows and does): two files so that
/// each reads top-down, served as one document (the script in place of `SCRIPT_MARK`), so
/// the page needs no second request and the API no route of its own for it.
const PAGE: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const SCRIPT_MARK: &str = "/* app.js */";

/// Seconds the figures beside the charts cover: the last complete ones, not the one running
/// (a second half counted would read as a drop in req/s).
const RECENT_SECONDS: u64 = 10;

pub(super) async fn page() -> impl IntoResponse {
    static WHOLE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let whole = WHOLE.get_or_init(|| {
        debug_assert!(
            PAGE.contains(SCRIPT_MARK),
            "the page has no place for its script"
        );
        PAGE.replacen(SCRIPT_MARK, SCRIPT, 1)
    });
    ([(header::CACHE_CONTROL, "no-store")], Html(whole.as_str()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SeriesQuery {
    /// Seconds of history (default 300, at most 600).
    seconds: Option<u64>,
}

/// A latency in milliseconds with two decimals.
fn ms(s: &Summary, q: f64) -> Option<f64> {
    s.percentile(q)
        .map(|d| (d.as_secs_f64() * 1e5).round() / 100.0)
}

/// Per service and group, one point per second: requests, success rate (%), p99 (ms); and
/// `recent`: per group over the last `RECENT_SECONDS` complete seconds, the figures a
/// release engineer reads beside the charts (req/s, 5xx %, p50 and p99 of that window as a
/// whole — percentiles of seconds cannot be combined afterwards).
pub(super) async fn series(
    State(api): State<Api>,
    q: Result<Query<SeriesQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q?;
    let seconds = q.seconds.unwrap_or(300).clamp(10, 600);
    let snap = api.control.snapshot();
    let now = now_second();
    let from = now.saturating_sub(seconds - 1);
    // None in the process's first second: no second is complete yet.
    let recent = now
        .checked_sub(1)
        .map(|to| (to.saturating_sub(RECENT_SECONDS - 1), to));
    let mut services = serde_json::Map::new();
    let mut figures_by_service = serde_json::Map::new();
    for svc in snap.services.values() {
        let mut groups = serde_json::Map::new();
        let mut figures = serde_json::Map::new();
        for g in &svc.groups {
            let points: Vec<Value> = (from..=now)
                .map(|sec| {
                    let s = g.stats.window.summary(sec, sec);
                    json!([now - sec, s.requests, s.success_rate(), ms(&s, 0.99)])
                })
                .collect();
            groups.insert(g.name.clone(), Value::Array(points));
            let s = recent.map_or_else(Summary::default, |(from, to)| {
                g.stats.window.summary(from, to)
            });
            figures.insert(
                g.name.clone(),
                json!({
                    "requests": s.requests,
                    "requests_per_s": s.requests as f64 / RECENT_SECONDS as f64,
                    "error_pct": s.error_rate(),
                    "p50_ms": ms(&s, 0.5),
                    "p99_ms": ms(&s, 0.99),
                }),
            );
        }
        services.insert(svc.name.clone(), Value::Object(groups));
        figures_by_service.insert(svc.name.clone(), Value::Object(figures));
    }
    Ok(Json(json!({
        "seconds": seconds,
        "columns": ["age_s", "requests", "success_rate", "p99_ms"],
        "services": services,
        "recent": { "seconds": RECENT_SECONDS, "services": figures_by_service },
    })))
}
