//! `POST /api/v1/services/{service}/analysis/backtest`: an analysis replayed over a past
//! rollout's recorded seconds (see `control::backtest`). It reads and changes nothing else,
//! and calls nothing outside (checks that would are "not replayable"): scope `read`.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use super::{bad_request, Api, ApiError};
use crate::control::{Backtest, BacktestError};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BacktestRequest {
    /// The rollout's id.
    rollout: u64,
    /// Default: the analyses the rollout's strategy ran.
    analysis: Option<String>,
    /// Default: the latest attempt recorded.
    attempt: Option<u32>,
}

pub(super) async fn backtest(
    State(api): State<Api>,
    Path(service): Path<String>,
    body: Result<Json<BacktestRequest>, JsonRejection>,
) -> Result<Json<Backtest>, ApiError> {
    let Json(req) = body.map_err(bad_request)?;
    let done = api
        .control
        .backtest(&service, req.rollout, req.attempt, req.analysis)
        .await;
    done.map(Json).map_err(|e| {
        use StatusCode as S;
        let (status, code) = match &e {
            BacktestError::UnknownService(_) => (S::NOT_FOUND, "unknown_service"),
            BacktestError::UnknownRollout { .. } => (S::NOT_FOUND, "unknown_rollout"),
            BacktestError::NotRecorded { .. } => (S::NOT_FOUND, "not_recorded"),
            BacktestError::UnknownAnalysis(_) => (S::UNPROCESSABLE_ENTITY, "unknown_analysis"),
            BacktestError::NoAnalysis(_) => (S::UNPROCESSABLE_ENTITY, "no_analysis"),
            BacktestError::Store(_) => (S::INTERNAL_SERVER_ERROR, "store_error"),
        };
        ApiError::new(status, code, e.to_string())
    })
}
