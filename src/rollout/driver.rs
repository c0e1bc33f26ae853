//! Runs a rollout over time: asks the control plane for one state-machine step at a time,
//! sleeps through timed pauses (checkpointing the time spent), runs analyses and teardowns,
//! and waits for a command when the rollout is paused. One task per active rollout; it ends
//! when the rollout does.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::machine::{Outcome, Verdict};
use crate::control::Controller;

/// How often a running pause records its progress.
const CHECKPOINT: Duration = Duration::from_secs(1);

pub async fn drive(control: Arc<Controller>, service: String, wake: Arc<Notify>) {
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
        match outcome {
            Outcome::Changed(_) => {}
            Outcome::Idle => {
                if !r.status.is_active() {
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
                // Analyses are not wired in yet: hold the rollout for a person.
                let detail = format!("analysis \"{name}\" has no runner yet; promote to go on");
                if let Err(e) = control
                    .rollout_analysis_done(&service, r.step, Verdict::Inconclusive, &detail)
                    .await
                {
                    tracing::error!(%service, error = %e, "cannot record analysis result");
                }
            }
            Outcome::Retire(teardown) => {
                let detail = match teardown {
                    None => String::new(),
                    Some(cmd) => run_teardown(&cmd, &service, &r.stable).await,
                };
                if let Err(e) = control.rollout_retired(&service, r.step, &detail).await {
                    tracing::error!(%service, error = %e, "cannot record retirement");
                }
            }
        }
    }
}

/// Runs the teardown command with `sh -c`; its result is recorded, never fatal: the release
/// has already happened.
async fn run_teardown(cmd: &str, service: &str, group: &str) -> String {
    let run = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("SWITCHYARD_SERVICE", service)
        .env("SWITCHYARD_GROUP", group)
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(300), run).await {
        Err(_) => format!("; teardown `{cmd}` timed out after 5m"),
        Ok(Err(e)) => format!("; teardown `{cmd}` could not run: {e}"),
        Ok(Ok(out)) if out.status.success() => format!("; teardown `{cmd}` succeeded"),
        Ok(Ok(out)) => {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: String = err
                .trim()
                .chars()
                .rev()
                .take(200)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            format!("; teardown `{cmd}` failed ({}): {tail}", out.status)
        }
    }
}
