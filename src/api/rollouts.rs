//! Rollout endpoints: start, status, the verbs (promote, pause, resume, abort, retry, undo),
//! history and events.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Extension;
use axum::Json;
use serde::Deserialize;

use super::auth::Caller;
use super::{bad_request, Actor, Api, ApiError};
use crate::config::raw::RawStrategy;
use crate::config::Scope;
use crate::control::RolloutView;
use crate::rollout::Rollout;
use crate::store::{Event, EventQuery};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StartRequest {
    service: String,
    candidate: String,
    /// A strategy name (`canary-10pct-5m`, `all-at-once`, …) or a full strategy object.
    strategy: Option<serde_json::Value>,
    #[serde(default)]
    force: bool,
}

pub(super) async fn start(
    State(api): State<Api>,
    Actor(actor): Actor,
    caller: Option<Extension<Caller>>,
    body: Result<Json<StartRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<RolloutView>), ApiError> {
    let Json(req) = body.map_err(bad_request)?;
    let strategy = match req.strategy {
        None => None,
        Some(v) => {
            let raw: RawStrategy = match v {
                serde_json::Value::String(kind) => RawStrategy {
                    kind,
                    ..RawStrategy::default()
                },
                obj => serde_json::from_value(obj).map_err(|e| {
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "bad_strategy",
                        format!("strategy: {e}"),
                    )
                })?,
            };
            // `teardown` is a shell command the driver runs: with it, starting a rollout is
            // shell access, which only `config` grants (a `release` token must not gain it
            // through a request body). The other fields name steps and configured analyses.
            if raw.teardown.is_some() {
                let what = "a strategy with a `teardown` command";
                match caller {
                    Some(Extension(c)) => c.require(Scope::Config, what)?,
                    None => {
                        return Err(ApiError::new(
                            StatusCode::FORBIDDEN,
                            "insufficient_scope",
                            format!("{what} needs the \"config\" scope"),
                        ))
                    }
                }
            }
            let analyses = api.control.snapshot().config.analysis_names();
            Some(
                crate::config::strategy_from_request(&raw, &analyses).map_err(|e| {
                    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "bad_strategy", e)
                })?,
            )
        }
    };
    let view = api
        .control
        .start_rollout(&req.service, &req.candidate, strategy, req.force, &actor)
        .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WindowQuery {
    /// Milliseconds of traffic the observed split covers (default 5000).
    window: Option<u64>,
}

pub(super) async fn status(
    State(api): State<Api>,
    Path(service): Path<String>,
    q: Result<Query<WindowQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) = q?;
    let view = api.control.rollout(&service).await?;
    let mut json = serde_json::to_value(&view).expect("view serialises");
    let window = q.window.unwrap_or(5_000).clamp(250, 60_000);
    json["observed"] =
        serde_json::to_value(api.control.observed(&service, window)).expect("observed");
    if let Some(errors) = api.control.new_errors(&view.rollout) {
        json["new_errors"] = serde_json::to_value(errors).expect("new errors");
    }
    Ok(Json(json))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct VerbRequest {
    /// promote: straight to all traffic.
    #[serde(default)]
    full: bool,
    /// retry, undo: even without a healthy target.
    #[serde(default)]
    force: bool,
    /// abort: recorded with the event.
    reason: Option<String>,
    /// undo: straight back even past the service's `rollback_window`.
    #[serde(default)]
    immediate: bool,
}

pub(super) async fn command(
    State(api): State<Api>,
    Actor(actor): Actor,
    Path((service, verb)): Path<(String, String)>,
    body: Result<Option<Json<serde_json::Value>>, JsonRejection>,
) -> Result<Json<RolloutView>, ApiError> {
    let req: VerbRequest = optional_body(body)?;
    let c = &api.control;
    let view = match verb.as_str() {
        "promote" => c.promote(&service, req.full, &actor).await?,
        "pause" => c.pause(&service, &actor).await?,
        "resume" => c.resume(&service, &actor).await?,
        "abort" => {
            // The client's text goes into the audit history and logs: one line, bounded.
            let reason = req
                .reason
                .map(|r| crate::audit::clean(&r, crate::audit::MAX_REASON_CHARS))
                .filter(|r| !r.is_empty());
            c.abort(&service, &actor, reason.as_deref()).await?
        }
        "retry" => c.retry(&service, req.force, &actor).await?,
        "undo" => c.undo(&service, req.force, req.immediate, &actor).await?,
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_verb",
                format!(
                    "no rollout verb \"{other}\": use promote, pause, resume, abort, retry or undo"
                ),
            ))
        }
    };
    Ok(Json(view))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HistoryQuery {
    service: Option<String>,
    limit: Option<usize>,
}

pub(super) async fn history(
    State(api): State<Api>,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<Vec<Rollout>>, ApiError> {
    let Query(q) = q?;
    Ok(Json(
        api.control
            .rollout_history(q.service, q.limit.unwrap_or(50).min(1000))
            .await?,
    ))
}

pub(super) async fn events(
    State(api): State<Api>,
    q: Result<Query<EventQuery>, QueryRejection>,
) -> Result<Json<Vec<Event>>, ApiError> {
    let Query(q) = q?;
    Ok(Json(api.control.events(q).await?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DryRunRequest {
    /// Default: the analyses the service's strategy names.
    analysis: Option<String>,
    /// Default: the candidate of the rollout in progress.
    candidate: Option<String>,
}

/// One measurement of every check of the analyses, now, against live metrics.
///
/// It changes nothing, so it writes no event, but it runs the analyses' commands and
/// queries: who asked is logged (at info, with the token as actor).
pub(super) async fn dry_run(
    State(api): State<Api>,
    Actor(actor): Actor,
    Path(service): Path<String>,
    body: Result<Option<Json<serde_json::Value>>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let req: DryRunRequest = optional_body(body)?;
    let snap = api.control.snapshot();
    let svc = snap.config.service(&service).ok_or_else(|| {
        ApiError::from(crate::control::ControlError::UnknownService(
            service.clone(),
        ))
    })?;
    let current = api
        .control
        .rollout(&service)
        .await
        .ok()
        .map(|v| v.rollout)
        .filter(|r| r.status.is_active());
    let traffic = api.control.traffic().await;
    let candidate = req
        .candidate
        .or_else(|| current.as_ref().map(|r| r.candidate.clone()))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "no_candidate",
                "no rollout in progress: name a `candidate` group",
            )
        })?;
    // Stable: the rollout's, else the service's, else the heaviest other group of the split.
    let split = traffic.get(&service).map(|(s, _, _)| s.clone());
    let stable = current
        .as_ref()
        .map(|r| r.stable.clone())
        .or_else(|| traffic.get(&service).and_then(|(_, _, s)| s.clone()))
        .filter(|s| s != &candidate)
        .or_else(|| {
            split
                .iter()
                .flat_map(super::super::split::Split::iter)
                .filter(|(g, _)| *g != candidate)
                .max_by_key(|(_, w)| *w)
                .map(|(g, _)| g.to_string())
        })
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "no_stable",
                "the service has no other group to compare with",
            )
        })?;
    if svc.group(&candidate).is_none() {
        return Err(crate::control::ControlError::UnknownGroup {
            service,
            group: candidate,
        }
        .into());
    }
    let names: Vec<String> = match req.analysis {
        Some(a) => vec![a],
        None => {
            let mut v: Vec<String> = svc
                .strategy
                .steps
                .iter()
                .filter_map(|s| match s {
                    crate::rollout::Step::Analysis { name } => Some(name.clone()),
                    _ => None,
                })
                .chain(svc.strategy.background_analysis.clone())
                .collect();
            v.dedup();
            v
        }
    };
    if names.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "no_analysis",
            "the service's strategy names no analysis: give `analysis`",
        ));
    }
    let (by, on_behalf_of) = crate::audit::split(&actor);
    tracing::info!(
        %service, %stable, %candidate, analyses = ?names, actor = %by,
        on_behalf_of = on_behalf_of.as_deref().unwrap_or(""),
        "analysis dry run"
    );
    // A rollout with a baseline judges the candidate against it, as its steps do.
    let baseline = current.as_ref().and_then(|r| r.strategy.baseline.clone());
    let reference = baseline.clone().unwrap_or_else(|| stable.clone());
    let windows = api.control.windows(&service, &reference, &candidate);
    let (mut results, mut analyses) = (Vec::new(), Vec::new());
    for name in names {
        let analysis = snap.config.analysis(&name).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_analysis",
                format!("no analysis named \"{name}\""),
            )
        })?;
        let ctx = crate::analysis::external::Context {
            service: service.clone(),
            rollout: current.as_ref().map(|r| r.id),
            stable: stable.clone(),
            candidate: candidate.clone(),
            baseline: baseline.clone(),
            weight: current.as_ref().map_or(0, |r| r.weight),
            analysis: name.clone(),
            check: String::new(),
            since: 0,
            errors: Some(api.control.errors(&service, &reference, &candidate)),
        };
        let (measured, report) = crate::analysis::run::once(analysis, &windows, &ctx).await;
        results.extend(
            measured
                .into_iter()
                .map(|m| serde_json::json!({ "analysis": name, "measurement": m })),
        );
        analyses.push(serde_json::json!({ "analysis": name, "verdict": report.verdict, "score": report.score, "detail": report.detail }));
    }
    Ok(Json(
        serde_json::json!({ "stable": stable, "baseline": baseline, "candidate": candidate, "results": results, "analyses": analyses }),
    ))
}

/// A request body that may be left out (then every field takes its default); one that is
/// there but not JSON is refused like any other body (`bad_request`).
fn optional_body<T: serde::de::DeserializeOwned + Default>(
    body: Result<Option<Json<serde_json::Value>>, JsonRejection>,
) -> Result<T, ApiError> {
    match body.map_err(bad_request)? {
        None => Ok(T::default()),
        Some(Json(v)) => serde_json::from_value(v).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "bad_request",
                e.to_string(),
            )
        }),
    }
}
