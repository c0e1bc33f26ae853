//! Side tasks of an active rollout: the fast rollback guard, which watches the candidate's
//! error rate (default every second) and aborts at once when it runs away from stable's,
//! and the background analysis of a strategy. Both end with the rollout. Both judge the
//! fleet's traffic through `Controller::windows` (this instance's alone without peers).

use std::sync::Arc;
use std::time::Duration;

use crate::analysis::external::Context;
use crate::analysis::run;
use crate::audit::System;
use crate::rollout::machine::Verdict;
use crate::rollout::{RollbackCause, Status};

use super::Controller;

/// What the guard saw at its last look at an attempt, for `GET …/rollout` (the dashboard and
/// `rollout status` show it): an operator deciding whether to promote wants to know that the
/// guard is watching and what it measures, not only that it has not fired.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GuardReading {
    /// The rollout and attempt it judged.
    pub rollout: u64,
    pub attempt: u32,
    /// Wall-clock time of the look (unix ms).
    pub at_unix_ms: i64,
    /// `watching` (judged, within bounds), `too_few_requests`, `rolled_back`, `disabled`.
    pub state: &'static str,
    /// The window judged, and both groups' requests and 5xx rate (%) in it.
    pub window_ms: u64,
    pub candidate_requests: u64,
    pub candidate_error_rate: f64,
    pub stable_requests: u64,
    pub stable_error_rate: f64,
    /// One sentence with the numbers and the bound.
    pub detail: String,
}

/// Aborts attempt `of` (rollout id, attempt) of `service` when the candidate's 5xx rate over the guard window
/// exceeds stable's by more than the configured points. It lives as long as the rollout is
/// active: a failure to act is logged and tried again on the next tick, never a reason to
/// stop watching. With `judged`, it says when it has judged one full window without rolling
/// back (a rollout resumed after a restart waits for that).
pub(super) async fn guard(
    control: Arc<Controller>,
    service: String,
    of: (u64, u32),
    mut judged: Option<tokio::sync::oneshot::Sender<()>>,
) {
    let id = of.0;
    // Whole seconds from this attempt only: a retry must not be judged on the errors that
    // aborted the attempt before it.
    let since = crate::metrics::now_second() + 1;
    // The window's seconds are the request counters' (the data plane's clock); how long the
    // guard has watched is measured on tokio's, like every other control-plane duration, so
    // that a paused clock drives it: from the start of second `since` on.
    let watching_from = tokio::time::Instant::now()
        + Duration::from_millis((since * 1000).saturating_sub(crate::metrics::now_ms()));
    loop {
        let Some(g) = control
            .snapshot()
            .config
            .service(&service)
            .map(|s| s.guard.clone())
        else {
            // The service is gone, which a reload refuses while a rollout is active.
            return;
        };
        if !g.enabled {
            // Nothing to wait for; a reload may turn it on again.
            if let Some(tx) = judged.take() {
                let _ = tx.send(());
            }
        }
        tokio::time::sleep(g.interval).await;
        let view = match control.rollout(&service).await {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(%service, rollout = id, error = %e, "guard cannot read the rollout; trying again");
                continue;
            }
        };
        let r = &view.rollout;
        if (r.id, r.attempt) != of || !r.status.is_active() {
            // The attempt ended; a retry gets a guard of its own from the driver.
            return;
        }
        if !g.enabled {
            control.set_guard_reading(
                &service,
                GuardReading::disabled(of, control.clock.unix_ms()),
            );
            continue;
        }
        let Some(seen) = (control.windows(&service, &r.stable, &r.candidate))(g.window, since)
        else {
            continue;
        };
        let (c, s) = (&seen.candidate, &seen.stable);
        let (ce, se) = (c.error_rate().unwrap_or(0.0), s.error_rate().unwrap_or(0.0));
        let breach = c.requests >= g.min_requests && ce - se > g.max_error_rate;
        let reading = GuardReading {
            rollout: of.0,
            attempt: of.1,
            at_unix_ms: control.clock.unix_ms(),
            state: if breach {
                "rolled_back"
            } else if c.requests < g.min_requests {
                "too_few_requests"
            } else {
                "watching"
            },
            window_ms: g.window.as_millis() as u64,
            candidate_requests: c.requests,
            candidate_error_rate: ce,
            stable_requests: s.requests,
            stable_error_rate: se,
            detail: if c.requests < g.min_requests {
                format!(
                    "{} of at least {} candidate requests in {}{}: nothing to judge yet",
                    c.requests,
                    g.min_requests,
                    humantime::format_duration(g.window),
                    seen.across()
                )
            } else {
                format!(
                    "candidate {ce:.1}% 5xx ({} requests) vs stable {se:.1}% ({} requests) in {}{}: rolls back above +{} points",
                    c.requests,
                    s.requests,
                    humantime::format_duration(g.window),
                    seen.across(),
                    g.max_error_rate
                )
            },
        };
        control.set_guard_reading(&service, reading);
        if breach {
            let why = format!(
                "candidate {} error rate {ce:.1}% ({} of {} requests in {}{}) exceeds stable's {se:.1}% by more than {} points",
                r.candidate,
                c.classes[4],
                c.requests,
                humantime::format_duration(g.window),
                seen.across(),
                g.max_error_rate
            );
            tracing::info!(%service, rollout = id, %why, "guard rolls back");
            if let Err(e) = control
                .abort_from(&service, System::Guard, RollbackCause::Guard, &why)
                .await
            {
                tracing::error!(%service, rollout = id, error = %e, "guard rollback not applied; trying again next tick");
            }
            continue;
        }
        // A full window of whole seconds since the guard started, seen without a breach
        // (with fewer than `min_requests` there is nothing to hold against the candidate,
        // as in any other window).
        if watching_from.elapsed() >= full_window(g.window) {
            if let Some(tx) = judged.take() {
                let _ = tx.send(());
            }
        }
    }
}

impl GuardReading {
    fn disabled(of: (u64, u32), at_unix_ms: i64) -> GuardReading {
        GuardReading {
            rollout: of.0,
            attempt: of.1,
            at_unix_ms,
            state: "disabled",
            window_ms: 0,
            candidate_requests: 0,
            candidate_error_rate: 0.0,
            stable_requests: 0,
            stable_error_rate: 0.0,
            detail: "the guard is off for this service ([service.guard] enabled = false)".into(),
        }
    }
}

impl Controller {
    fn set_guard_reading(&self, service: &str, reading: GuardReading) {
        self.guard_readings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(service.to_string(), reading);
    }

    /// The guard's last look at attempt `of` of `service`, if it has looked at that attempt.
    pub(super) fn guard_reading(&self, service: &str, of: (u64, u32)) -> Option<GuardReading> {
        self.guard_readings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(service)
            .filter(|r| (r.rollout, r.attempt) == of)
            .cloned()
    }
}

/// A full window of whole seconds (at least one).
fn full_window(window: Duration) -> Duration {
    Duration::from_secs(window.as_secs().max(1))
}

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
        let ctx = Context::of_rollout(&r, &name);
        let windows = control.windows(&service, &r.stable, &r.candidate);
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
