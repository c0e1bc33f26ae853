//! Runs a rollout over time: asks the control plane for one state-machine step at a time,
//! sleeps through timed pauses (checkpointing the time spent), runs analyses, hooks and
//! teardowns, and waits for a command when the rollout is paused. Beside it run the rollback
//! guard and the background analysis. One driver per active rollout; it ends with it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::analysis::external::Context;
use crate::analysis::run;
use crate::audit::System;
use crate::rollout::machine::{Outcome, Verdict};
use crate::rollout::{RollbackCause, Rollout};
use tokio_util::sync::CancellationToken;

use super::{ControlError, Controller};

/// How often a running pause records its progress.
const CHECKPOINT: Duration = Duration::from_secs(1);

pub(super) async fn drive(control: Arc<Controller>, service: String, wake: Arc<Notify>) {
    let mut side = Side::default();
    // The hook this driver ran and has not yet recorded as done: (rollout id, step, result,
    // cause). Recorded (again, until the store has it) instead of run again — and not
    // mistaken for one a lost leader began.
    let mut ran: Option<(u64, usize, Result<String, String>, RollbackCause)> = None;
    // The hook this driver recorded as begun (rollout id, step): its own record, not a lost
    // leader's, even when the write came back refused after it landed.
    let mut begun: Option<(u64, usize)> = None;
    // The end work this driver recorded as begun (rollout id, attempt); see `ending`.
    let mut end_begun: Option<(u64, u32)> = None;
    // After a restart the last instance may have decided a rollback it could not record:
    // nothing moves before the guard has judged what the rollout resumed at.
    let gated = control.resume_gated(&service).await;
    let (judged, judged_rx) = tokio::sync::oneshot::channel();
    if let Ok(view) = control.rollout(&service).await {
        if view.rollout.status.is_active() {
            side.ensure(&control, &service, &view.rollout, gated.then_some(judged));
        }
    }
    if gated {
        tracing::warn!(%service, "rollout resumed (after a restart, or by a new leader of the fleet): held until the guard has judged one full window");
        // Sent after a clean full window; dropped when the guard ends (the rollout ended).
        let _ = judged_rx.await;
        // Going back to a recorded weight is a forward write: tried until the store has it.
        while let Err(e) = control.open_resume_gate(&service).await {
            tracing::error!(%service, error = %e, "cannot resume the rollout's recorded weight; retrying");
            tokio::time::sleep(CHECKPOINT).await;
        }
    }
    loop {
        // An ended attempt's hook and notification come first: before a retry's first step.
        if control.end_work(&service, &mut end_begun).await {
            continue;
        }
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
        if r.status.is_active() {
            side.ensure(&control, &service, r, None);
        }
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
                    // Only if no retry made it active again meanwhile (it would have found
                    // this driver still running and only woken it).
                    if control.driver_done(&service).await {
                        return;
                    }
                    continue;
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
                let errors = control.errors(&service, r.reference(), &r.candidate);
                let ctx = Context::of_rollout(r, &name).with_errors(errors);
                let groups = control.windows(&service, r.reference(), &r.candidate);
                // Its evidence planned first: a check lengthened to gather the requests it
                // needs has the progress deadline lengthened as much.
                let prepared = run::prepare(&analysis, &groups, &ctx);
                let limit = deadline + prepared.added();
                // Synthetic traffic for a quiet service, for as long as the step measures.
                let synthetic = CancellationToken::new();
                tokio::spawn(super::synthetic::generate(
                    control.clone(),
                    service.clone(),
                    r.candidate.clone(),
                    synthetic.clone(),
                ));
                let _stop = synthetic.drop_guard();
                // A command (promote, abort, …) interrupts the analysis; the loop looks again.
                tokio::select! {
                    report = tokio::time::timeout(limit, run::execute(prepared, groups, ctx, false)) => match report {
                        Ok(rep) => log(control.rollout_analysis_done(&service, r.step, rep.verdict, &rep.detail).await),
                        Err(_) => {
                            let added = prepared_added(limit, deadline);
                            log(control.abort_from(&service, System::Deadline, RollbackCause::Deadline, &format!("{}{added}", stuck(&format!("analysis {name}")))).await);
                        }
                    },
                    _ = wake.notified() => {}
                }
            }
            Outcome::Hook(point) => {
                // In a fleet a hook runs at most once: recorded as begun before it runs, and
                // a leader finding it begun by the last one holds instead of running it again.
                if let Some((_, _, result, cause)) = ran
                    .take()
                    .filter(|(id, step, ..)| (*id, *step) == (r.id, r.step))
                {
                    if let Err(e) = control
                        .rollout_hook_done(&service, r.step, result.clone(), cause)
                        .await
                    {
                        tracing::error!(%service, hook = %point, error = %e, "cannot record the hook's result; retrying");
                        ran = Some((r.id, r.step, result, cause));
                        tokio::time::sleep(CHECKPOINT).await;
                    }
                    continue;
                }
                if control.in_fleet() {
                    let ours = begun == Some((r.id, r.step));
                    if r.hook_started == Some(r.step) && !ours {
                        log(control.hold_unknown_hook(&service, point).await);
                        continue;
                    }
                    begun = Some((r.id, r.step));
                    match control.rollout_hook_started(&service, r.step).await {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(e) => {
                            tracing::error!(%service, hook = %point, error = %e, "cannot record that the hook begins; not running it yet");
                            tokio::time::sleep(CHECKPOINT).await;
                            continue;
                        }
                    }
                }
                let hook = control
                    .snapshot()
                    .config
                    .service(&service)
                    .and_then(|s| super::hooks::by_point(&s.hooks, point).cloned());
                let mut cause = RollbackCause::Hook;
                let result = match hook {
                    None => Ok(format!("hook {point} is no longer configured")),
                    Some(h) => {
                        match tokio::time::timeout(deadline, super::hooks::run(&h, point, r)).await
                        {
                            Ok(res) => res,
                            Err(_) => {
                                cause = RollbackCause::Deadline;
                                Err(stuck(&format!("hook {point}")))
                            }
                        }
                    }
                };
                // Recorded at the top of the next turn (and again there until it is).
                ran = Some((r.id, r.step, result, cause));
            }
            Outcome::Retire(teardown) => {
                let detail = match teardown {
                    None => String::new(),
                    Some(cmd) => super::effects::teardown(&cmd, &service, &r.stable).await,
                };
                log(control.rollout_retired(&service, r.step, &detail).await);
            }
        }
    }
}

/// The guard and background analysis of one attempt of a rollout. Keyed on (id, attempt):
/// both end with their attempt (an abort), so a retry that this driver goes on with (the
/// retry came before it saw the abort) gets its own instead of running unwatched.
#[derive(Default)]
struct Side {
    tasks: tokio::task::JoinSet<()>,
    of: Option<(u64, u32)>,
    /// The attempt's recorded seconds (`history`), ended with a last batch when replaced.
    recorder: Option<super::history::Recorder>,
}

impl Side {
    fn ensure(
        &mut self,
        control: &Arc<Controller>,
        service: &str,
        r: &Rollout,
        judged: Option<tokio::sync::oneshot::Sender<()>>,
    ) {
        if self.of == Some((r.id, r.attempt)) {
            return;
        }
        self.tasks.abort_all();
        self.of = Some((r.id, r.attempt));
        self.recorder = Some(super::history::start(control, service, r));
        self.tasks.spawn(super::guard::guard(
            control.clone(),
            service.to_string(),
            (r.id, r.attempt),
            judged,
        ));
        if let Some(name) = r.strategy.background_analysis.clone() {
            self.tasks.spawn(super::background::background(
                control.clone(),
                service.to_string(),
                (r.id, r.attempt),
                name,
            ));
        }
    }
}

/// What a deadline's reason adds when the analysis was lengthened: `" (+2m for evidence)"`.
fn prepared_added(limit: Duration, deadline: Duration) -> String {
    match limit.saturating_sub(deadline) {
        d if d.is_zero() => String::new(),
        d => format!(" (+{} for evidence)", humantime::format_duration(d)),
    }
}

fn log<T>(r: Result<T, ControlError>) {
    if let Err(e) = r {
        tracing::error!(error = %e, "rollout transition not recorded");
    }
}
