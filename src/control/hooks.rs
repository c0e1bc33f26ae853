//! Lifecycle hooks: where they go in a rollout's steps, and running one (an HTTP call or a
//! command, with a timeout and retries).

use std::time::Duration;

use super::effects;
use crate::bounded::{CallError, ReadBody};
use crate::config::hooks::{Hook, Hooks};
use crate::rollout::{HookPoint, Rollout, Step, Strategy};
use crate::split::FULL_WEIGHT;

/// The strategy's steps with the service's hooks in place: `before_traffic` first,
/// `before_promotion` (and a wait for confirmation if asked) before the step that gives the
/// candidate all traffic, `after_traffic` right after it.
pub(super) fn with_hooks(mut s: Strategy, hooks: &Hooks) -> Strategy {
    let hook = |point| Step::Hook { point };
    let mut steps = Vec::new();
    if hooks.before_traffic.is_some() {
        steps.push(hook(HookPoint::BeforeTraffic));
    }
    let full = s
        .steps
        .iter()
        .position(|st| matches!(st, Step::SetWeight { weight } if *weight == FULL_WEIGHT));
    let (before, after) = match full {
        Some(i) => s.steps.split_at(i),
        None => (&s.steps[..], &[][..]),
    };
    steps.extend_from_slice(before);
    if let Some(h) = &hooks.before_promotion {
        steps.push(hook(HookPoint::BeforePromotion));
        if h.confirm {
            steps.push(Step::Pause { duration_ms: None });
        }
    }
    match after.split_first() {
        Some((switch, rest)) => {
            steps.push(switch.clone());
            if hooks.after_traffic.is_some() {
                steps.push(hook(HookPoint::AfterTraffic));
            }
            steps.extend_from_slice(rest);
        }
        None if hooks.after_traffic.is_some() => {
            steps.push(Step::SetWeight {
                weight: FULL_WEIGHT,
            });
            steps.push(hook(HookPoint::AfterTraffic));
        }
        None => {}
    }
    s.steps = steps;
    s
}

pub(super) fn by_point(hooks: &Hooks, point: HookPoint) -> Option<&Hook> {
    match point {
        HookPoint::BeforeTraffic => hooks.before_traffic.as_ref(),
        HookPoint::AfterTraffic => hooks.after_traffic.as_ref(),
        HookPoint::BeforePromotion => hooks.before_promotion.as_ref(),
        HookPoint::AfterRollout => hooks.after_rollout.as_ref(),
        HookPoint::OnRollback => hooks.on_rollback.as_ref(),
    }
}

/// Runs a hook, retrying; `Ok` says what happened, `Err` why it failed.
pub(super) async fn run(hook: &Hook, point: HookPoint, r: &Rollout) -> Result<String, String> {
    let timeout = Duration::from_millis(hook.timeout_ms);
    let mut last = String::new();
    for attempt in 0..=hook.retries {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200 * attempt as u64)).await;
        }
        // Both bound themselves: a command kills its process group when it times out (a
        // second timeout around it would race that one and drop the run mid-kill).
        let once = match (&hook.url, &hook.command) {
            (Some(url), _) => call(url, point, r, timeout).await,
            (None, Some(cmd)) => command(cmd, point, r, timeout).await,
            (None, None) => Err("the hook has neither url nor command".into()),
        };
        last = match once {
            Ok(done) => return Ok(format!("hook {point} {done}")),
            Err(e) => e,
        };
        tracing::warn!(%point, attempt, error = %last, "hook failed");
    }
    Err(format!(
        "hook {point} failed after {} attempts: {last}",
        hook.retries + 1
    ))
}

/// How much of what a failed hook said (a remote answer, a command's stderr) goes into its
/// failure event.
const SAID_CHARS: usize = 200;

async fn call(
    url: &str,
    point: HookPoint,
    r: &Rollout,
    timeout: Duration,
) -> Result<String, String> {
    let body = serde_json::json!({
        "hook": point, "service": r.service, "rollout": r.id, "stable": r.stable,
        "candidate": r.candidate, "weight": r.weight, "step": r.step,
    });
    let answer = effects::post_json(url, &body, timeout, ReadBody::OnFailure)
        .await
        .map_err(|e| match e {
            CallError::TimedOut { timeout, .. } => {
                format!("timed out after {}", humantime::format_duration(timeout))
            }
            e => e.to_string(),
        })?;
    let status = answer.status;
    if status.is_success() {
        // The answer's body is not needed: dropping it closes the connection unread.
        return Ok(format!("answered {}", status.as_u16()));
    }
    // A failure's answer says why: its start, cleaned (it goes into the audit history).
    let said = match answer.body {
        Some(Ok(b)) => crate::audit::clean(String::from_utf8_lossy(&b).trim(), SAID_CHARS),
        Some(Err(e)) => e.to_string(),
        None => String::new(),
    };
    Err(format!("{url} answered {}: {said}", status.as_u16()))
}

/// The command runs in its own process group, killed with it on timeout or when the rollout
/// stops waiting for it (see `bounded`).
async fn command(
    cmd: &str,
    point: HookPoint,
    r: &Rollout,
    timeout: Duration,
) -> Result<String, String> {
    let env = [
        ("SWITCHYARD_HOOK", point.to_string()),
        ("SWITCHYARD_SERVICE", r.service.clone()),
        ("SWITCHYARD_ROLLOUT", r.id.to_string()),
        ("SWITCHYARD_STABLE", r.stable.clone()),
        ("SWITCHYARD_CANDIDATE", r.candidate.clone()),
    ];
    let out = effects::run_command(cmd, &env, timeout)
        .await
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(format!("`{cmd}` succeeded"))
    } else {
        // stderr only: a hook's stdout is its data, not a reason, and may hold what should
        // not be in the audit history.
        Err(format!(
            "`{cmd}` {}: {}",
            out.status,
            out.said_on_stderr(SAID_CHARS)
        ))
    }
}
