//! Lifecycle hooks: where they go in a rollout's steps, and running one (an HTTP call or a
//! command, with a timeout and retries).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::{Rollout, Step, Strategy};
use crate::config::analysis::{Hook, Hooks};
use crate::split::FULL_WEIGHT;

/// The strategy's steps with the service's hooks in place: `before_traffic` first,
/// `before_promotion` (and a wait for confirmation if asked) before the step that gives the
/// candidate all traffic, `after_traffic` right after it.
pub fn with_hooks(mut s: Strategy, hooks: &Hooks) -> Strategy {
    let hook = |p: &str| Step::Hook {
        point: p.to_string(),
    };
    let mut steps = Vec::new();
    if hooks.before_traffic.is_some() {
        steps.push(hook("before_traffic"));
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
        steps.push(hook("before_promotion"));
        if h.confirm {
            steps.push(Step::Pause { duration_ms: None });
        }
    }
    match after.split_first() {
        Some((switch, rest)) => {
            steps.push(switch.clone());
            if hooks.after_traffic.is_some() {
                steps.push(hook("after_traffic"));
            }
            steps.extend_from_slice(rest);
        }
        None if hooks.after_traffic.is_some() => {
            steps.push(Step::SetWeight {
                weight: FULL_WEIGHT,
            });
            steps.push(hook("after_traffic"));
        }
        None => {}
    }
    s.steps = steps;
    s
}

pub fn by_point<'h>(hooks: &'h Hooks, point: &str) -> Option<&'h Hook> {
    match point {
        "before_traffic" => hooks.before_traffic.as_ref(),
        "after_traffic" => hooks.after_traffic.as_ref(),
        "before_promotion" => hooks.before_promotion.as_ref(),
        "after_rollout" => hooks.after_rollout.as_ref(),
        "on_rollback" => hooks.on_rollback.as_ref(),
        _ => None,
    }
}

/// Runs a hook, retrying; `Ok` says what happened, `Err` why it failed.
pub async fn run(hook: &Hook, point: &str, r: &Rollout) -> Result<String, String> {
    let timeout = Duration::from_millis(hook.timeout_ms);
    let mut last = String::new();
    for attempt in 0..=hook.retries {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200 * attempt as u64)).await;
        }
        // A command bounds itself (and kills its process group when it times out); a
        // second timeout of the same length around it would race that one and drop the run
        // mid-kill. An HTTP call is bounded here.
        let once = match (&hook.url, &hook.command) {
            (Some(url), _) => tokio::time::timeout(timeout, call(url, point, r))
                .await
                .unwrap_or_else(|_| {
                    Err(format!(
                        "timed out after {}",
                        humantime::format_duration(timeout)
                    ))
                }),
            (None, Some(cmd)) => command(cmd, point, r, timeout).await,
            (None, None) => Err("the hook has neither url nor command".into()),
        };
        last = match once {
            Ok(done) => return Ok(format!("hook {point} {done}")),
            Err(e) => e,
        };
        tracing::warn!(point, attempt, error = %last, "hook failed");
    }
    Err(format!(
        "hook {point} failed after {} attempts: {last}",
        hook.retries + 1
    ))
}

/// How much of what a failed hook said (a remote answer, a command's stderr) goes into its
/// failure event.
const SAID_CHARS: usize = 200;

async fn call(url: &str, point: &str, r: &Rollout) -> Result<String, String> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let body = serde_json::json!({
        "hook": point, "service": r.service, "rollout": r.id, "stable": r.stable,
        "candidate": r.candidate, "weight": r.weight, "step": r.step,
    });
    let req = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| format!("bad URL {url}: {e}"))?;
    let resp = client
        .request(req)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status();
    if status.is_success() {
        // The answer's body is not needed: dropping it closes the connection unread.
        return Ok(format!("answered {}", status.as_u16()));
    }
    // A failure's answer says why: read it, bounded, and show its start, cleaned (it goes
    // into the audit history).
    let said =
        match crate::bounded::read_body(resp.into_body(), crate::bounded::MAX_ANSWER_BYTES).await {
            Ok(b) => crate::audit::clean(String::from_utf8_lossy(&b).trim(), SAID_CHARS),
            Err(e) => e.to_string(),
        };
    Err(format!("{url} answered {}: {said}", status.as_u16()))
}

/// The command runs in its own process group, killed with it on timeout or when the rollout
/// stops waiting for it (see `bounded`).
async fn command(cmd: &str, point: &str, r: &Rollout, timeout: Duration) -> Result<String, String> {
    let env = [
        ("SWITCHYARD_HOOK", point.to_string()),
        ("SWITCHYARD_SERVICE", r.service.clone()),
        ("SWITCHYARD_ROLLOUT", r.id.to_string()),
        ("SWITCHYARD_STABLE", r.stable.clone()),
        ("SWITCHYARD_CANDIDATE", r.candidate.clone()),
    ];
    let out = crate::bounded::run_shell(cmd, &env, timeout)
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
