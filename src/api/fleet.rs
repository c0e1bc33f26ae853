//! What a fleet's leader pulls from this instance to judge the fleet's traffic: every
//! group's one-second slots from a given second to now (`control::peers` is the puller).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use serde::Deserialize;

use super::{Api, ApiError};
use crate::control::FleetSeconds;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SecondsQuery {
    /// The first second wanted, on this instance's window clock (default: the oldest kept).
    from: Option<u64>,
    /// At most this many seconds from `from` (default: up to now).
    seconds: Option<u64>,
}

/// `GET /api/v1/fleet/seconds?from=S&seconds=N`: per service and group, the seconds from
/// `S` to now (or the first `N` of them, or fewer when they weigh too much: `to` says where
/// the answer ends) that saw anything, and this instance's clock.
pub(super) async fn seconds(
    State(api): State<Api>,
    q: Result<Query<SecondsQuery>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(q) = q?;
    let json = FleetSeconds::answer(&api.control.snapshot(), q.from.unwrap_or(0), q.seconds);
    Ok(([(header::CONTENT_TYPE, "application/json")], json))
}
