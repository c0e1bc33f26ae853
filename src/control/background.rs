//! A strategy's background analysis (`background_analysis`): run beside a rollout's driver
//! for the whole attempt, judged like a step's (`analysis::run`), acting on its verdict.

use std::sync::Arc;
use std::time::Duration;

use crate::analysis::external::Context;
use crate::analysis::run;
use crate::audit::System;
use crate::rollout::machine::Verdict;
use crate::rollout::{RollbackCause, Status};

use super::Controller;

/// Runs the strategy's background analysis for attempt `of` until the rollout ends: a
/// failure aborts; an inconclusive result pauses for a person, and once the person resumes
/// the analysis starts again from then (a paused rollout is still active, and a resumed one
/// must not go on unwatched). A failure to act is logged at error level and tried again.
pub(super) async fn background(
    control: Arc<Controller>,
    service: String,
    of: (u64, u32),
    name: String,
) {
    let id = of.0;
    loop {
        let Ok(view) = control.rollout(&service).await else {
            return;
        };
        let r = view.rollout;
        let Some(analysis) = control.snapshot().config.analysis(&name).cloned() else {
            tracing::warn!(%service, analysis = %name, "background analysis is not configured");
            return;
        };
        let errors = control.errors(&service, r.reference(), &r.candidate);
        let ctx = Context::of_rollout(&r, &name).with_errors(errors);
        let windows = control.windows(&service, r.reference(), &r.candidate);
        let report = run::run(&analysis, windows, ctx, true).await;
        control.count_analysis(&service, report.verdict);
        loop {
            if attempt_status(&control, &service, of).await.is_none() {
                return;
            }
            let result = match report.verdict {
                Verdict::Fail => {
                    control
                        .abort_from(
                            &service,
                            System::Analysis,
                            RollbackCause::Analysis,
                            &format!("background analysis {}", report.detail),
                        )
                        .await
                }
                _ => {
                    control
                        .pause_from(
                            &service,
                            System::Analysis,
                            &format!("background analysis inconclusive: {}", report.detail),
                        )
                        .await
                }
            };
            match result {
                Ok(()) => break,
                Err(e) => {
                    tracing::error!(%service, rollout = id, error = %e, "background analysis result not applied; trying again");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
        if report.verdict == Verdict::Fail {
            return;
        }
        // Paused for a person: watch again once resumed, end with the attempt.
        loop {
            match attempt_status(&control, &service, of).await {
                None => return,
                Some(Status::Paused) => tokio::time::sleep(RETRY).await,
                Some(_) => break,
            }
        }
        tracing::info!(%service, rollout = id, analysis = %name, "rollout resumed: background analysis starts again");
    }
}

/// The status of attempt `of` while it is active; `None` once it ended or was replaced.
async fn attempt_status(control: &Controller, service: &str, of: (u64, u32)) -> Option<Status> {
    let v = control.rollout(service).await.ok()?;
    let r = v.rollout;
    ((r.id, r.attempt) == of && r.status.is_active()).then_some(r.status)
}

/// How soon the background analysis tries again to act on its result.
const RETRY: Duration = Duration::from_secs(1);
