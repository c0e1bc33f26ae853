//! Side tasks of an active rollout: the fast rollback guard, which watches the candidate's
//! error rate (default every second) and aborts at once when it runs away from stable's,
//! and the background analysis of a strategy. Both end with the rollout.

use std::sync::Arc;

use crate::analysis::external::Context;
use crate::analysis::run;
use crate::control::Controller;
use crate::rollout::machine::Verdict;

/// Aborts rollout `id` of `service` when the candidate's 5xx rate over the guard window
/// exceeds stable's by more than the configured points.
pub async fn guard(control: Arc<Controller>, service: String, id: u64) {
    // Whole seconds from this attempt only: a retry must not be judged on the errors that
    // aborted the attempt before it.
    let since = crate::metrics::now_second() + 1;
    loop {
        let Some(g) = control
            .snapshot()
            .config
            .service(&service)
            .map(|s| s.guard.clone())
        else {
            return;
        };
        if !g.enabled {
            return;
        }
        tokio::time::sleep(g.interval).await;
        let Ok(view) = control.rollout(&service).await else {
            return;
        };
        let r = &view.rollout;
        if r.id != id || !r.status.is_active() {
            return;
        }
        let Some((stable, candidate)) = (control.groups_of(&service, &r.stable, &r.candidate))()
        else {
            continue;
        };
        let c = candidate.stats.window.last_since(g.window, since);
        if c.requests < g.min_requests {
            continue;
        }
        let s = stable.stats.window.last_since(g.window, since);
        let (ce, se) = (c.error_rate().unwrap_or(0.0), s.error_rate().unwrap_or(0.0));
        if ce - se > g.max_error_rate {
            let why = format!(
                "candidate {} error rate {ce:.1}% ({} of {} requests in {}) exceeds stable's {se:.1}% by more than {} points",
                r.candidate,
                c.classes[4],
                c.requests,
                humantime::format_duration(g.window),
                g.max_error_rate
            );
            tracing::info!(%service, rollout = id, %why, "guard rolls back");
            if let Err(e) = control.abort_from(&service, "guard", &why).await {
                tracing::debug!(%service, error = %e, "guard abort not applied");
            }
            return;
        }
    }
}

/// Runs the strategy's background analysis until the rollout ends or the analysis does not
/// pass: a failure aborts, an inconclusive result pauses for a person.
pub async fn background(control: Arc<Controller>, service: String, id: u64, name: String) {
    let Ok(view) = control.rollout(&service).await else {
        return;
    };
    let r = view.rollout;
    let Some(analysis) = control.snapshot().config.analysis(&name).cloned() else {
        tracing::warn!(%service, analysis = %name, "background analysis is not configured");
        return;
    };
    let ctx = Context {
        service: service.clone(),
        rollout: Some(id),
        stable: r.stable.clone(),
        candidate: r.candidate.clone(),
        weight: r.weight,
        analysis: name.clone(),
        check: String::new(),
        since: crate::metrics::now_second(),
    };
    let groups = control.groups_of(&service, &r.stable, &r.candidate);
    let report = run::run(&analysis, groups, ctx, true).await;
    control.count_analysis(&service, report.verdict);
    let still = control
        .rollout(&service)
        .await
        .is_ok_and(|v| v.rollout.id == id && v.rollout.status.is_active());
    if !still {
        return;
    }
    let result = match report.verdict {
        Verdict::Fail => {
            control
                .abort_from(
                    &service,
                    "analysis",
                    &format!("background analysis {}", report.detail),
                )
                .await
        }
        _ => {
            control
                .pause_from(
                    &service,
                    "analysis",
                    &format!("background analysis inconclusive: {}", report.detail),
                )
                .await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%service, error = %e, "background analysis result not applied");
    }
}
