//! Runs a rollout over time: asks the control plane for one state-machine step at a time,
//! sleeps through timed pauses (checkpointing the time spent), runs analyses, hooks and
//! teardowns, and waits for a command when the rollout is paused. Beside it run the rollback
//! guard and the background analysis. One driver per active rollout; it ends with it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::machine::{Outcome, Verdict};
use crate::analysis::external::Context;
use crate::analysis::run;
use crate::control::Controller;

/// How often a running pause records its progress.
const CHECKPOINT: Duration = Duration::from_secs(1);

pub async fn drive(control: Arc<Controller>, service: String, wake: Arc<Notify>) {
    let mut side = tokio::task::JoinSet::new();
    if let Ok(view) = control.rollout(&service).await {
        let r = &view.rollout;
        side.spawn(super::guard::guard(control.clone(), service.clone(), r.id));
        if let Some(name) = r.strategy.background_analysis.clone() {
            side.spawn(super::guard::background(
                control.clone(),
                service.clone(),
                r.id,
                name,
            ));
        }
    }
    loop {
        let (outcome, view) = match control.rollout_step(&service).await {
            Ok(x) => x,
            Err(e) => {
                // The store is the usual cause; nothing was published. Try again shortly.
                tracing::error!(%service, error = %e, "rollout step failed; retrying");
                tokio::time::sleep(CHECKPOINT).await;
                continue;
            }
        };
        let r = &view.rollout;
        let deadline = control
            .snapshot()
            .config
            .service(&service)
            .map_or(Duration::from_secs(600), |s| s.progress_deadline);
        let stuck = |what: &str| {
            format!(
                "step {}: {what} made no progress for {}",
                r.step + 1,
                humantime::format_duration(deadline)
            )
        };
        match outcome {
            Outcome::Changed(_) => {}
            Outcome::Idle => {
                if !r.status.is_active() {
                    side.abort_all();
                    return;
                }
                wake.notified().await;
            }
            Outcome::Sleep(left) => {
                let started = tokio::time::Instant::now();
                tokio::select! {
                    _ = tokio::time::sleep(left.min(CHECKPOINT)) => {}
                    _ = wake.notified() => {}
                }
                if let Err(e) = control
                    .rollout_pause_progress(&service, r.step, started.elapsed())
                    .await
                {
                    tracing::error!(%service, error = %e, "cannot record pause progress");
                }
            }
            Outcome::Analysis(name) => {
                let Some(analysis) = control.snapshot().config.analysis(&name).cloned() else {
                    let detail =
                        format!("no analysis named \"{name}\" in the running configuration");
                    log(control
                        .rollout_analysis_done(&service, r.step, Verdict::Inconclusive, &detail)
                        .await);
                    continue;
                };
                let ctx = Context {
                    service: service.clone(),
                    rollout: Some(r.id),
                    stable: r.stable.clone(),
                    candidate: r.candidate.clone(),
                    weight: r.weight,
                    analysis: name.clone(),
                    check: String::new(),
                    since: crate::metrics::now_second(),
                };
                let groups = control.groups_of(&service, &r.stable, &r.candidate);
                // A command (promote, abort, …) interrupts the analysis; the loop looks again.
                tokio::select! {
                    report = tokio::time::timeout(deadline, run::run(&analysis, groups, ctx, false)) => match report {
                        Ok(rep) => log(control.rollout_analysis_done(&service, r.step, rep.verdict, &rep.detail).await),
                        Err(_) => log(control.abort_from(&service, "deadline", &stuck(&format!("analysis {name}"))).await),
                    },
                    _ = wake.notified() => {}
                }
            }
            Outcome::Hook(point) => {
                let hook = control
                    .snapshot()
                    .config
                    .service(&service)
                    .and_then(|s| super::hooks::by_point(&s.hooks, &point).cloned());
                let result = match hook {
                    None => Ok(format!("hook {point} is no longer configured")),
                    Some(h) => {
                        match tokio::time::timeout(deadline, super::hooks::run(&h, &point, r)).await
                        {
                            Ok(res) => res,
                            Err(_) => Err(stuck(&format!("hook {point}"))),
                        }
                    }
                };
                log(control.rollout_hook_done(&service, r.step, result).await);
            }
            Outcome::Retire(teardown) => {
                let detail = match teardown {
                    None => String::new(),
                    Some(cmd) => run_teardown(&cmd, &service, &r.stable).await,
                };
                log(control.rollout_retired(&service, r.step, &detail).await);
            }
        }
    }
}

fn log<T>(r: Result<T, crate::control::ControlError>) {
    if let Err(e) = r {
        tracing::error!(error = %e, "rollout transition not recorded");
    }
}

/// Runs the teardown command with `sh -c` (bounded: see `bounded::run_shell`); its result is
/// recorded, never fatal: the release has already happened.
async fn run_teardown(cmd: &str, service: &str, group: &str) -> String {
    let env = [
        ("SWITCHYARD_SERVICE", service.to_string()),
        ("SWITCHYARD_GROUP", group.to_string()),
    ];
    match crate::bounded::run_shell(cmd, &env, Duration::from_secs(300)).await {
        Err(e) => format!("; teardown {e}"),
        Ok(out) if out.status.success() => format!("; teardown `{cmd}` succeeded"),
        Ok(out) => format!(
            "; teardown `{cmd}` failed ({}): {}",
            out.status,
            out.said(200)
        ),
    }
}
