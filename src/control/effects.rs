//! The control plane's side effects, in one place: JSON posted to a URL (HTTP hooks, the
//! rollback notification), commands run on the host (command hooks, blue-green teardowns),
//! and the notification itself. The bounds (time, answer and output size, the command's
//! process group) are `bounded`'s; this module is the one door through which the control
//! plane reaches them, so that each effect is made, bounded and worded one way.

use std::time::Duration;

use crate::bounded::{self, Answer, CallError, CommandError, CommandOutput, ReadBody};

/// How long the rollback notification may take.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a blue-green teardown may run.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(300);

/// Posts `body` as JSON to `url`; the answer's body is read only when `read` says so.
pub(super) async fn post_json(
    url: &str,
    body: &serde_json::Value,
    timeout: Duration,
    read: ReadBody,
) -> Result<Answer, CallError> {
    bounded::call(
        http::Method::POST,
        url,
        Some(body.to_string()),
        timeout,
        read,
    )
    .await
}

/// Runs `sh -c cmd` with `env` added, in its own process group, killed with it on timeout
/// or when the caller stops waiting (see `bounded::command`).
pub(super) async fn run_command(
    cmd: &str,
    env: &[(&str, String)],
    timeout: Duration,
) -> Result<CommandOutput, CommandError> {
    bounded::run_shell(cmd, env, timeout).await
}

/// Posts a Slack-compatible message (`{"text": …}`); a failure is logged, never retried:
/// the rollback it tells of has already happened.
pub(super) async fn notify(url: String, text: String) {
    let body = serde_json::json!({ "text": text });
    match post_json(&url, &body, NOTIFY_TIMEOUT, ReadBody::Never).await {
        Ok(answer) if answer.status.is_success() => {}
        Ok(answer) => {
            tracing::warn!(%url, status = %answer.status, "notification webhook refused the message");
        }
        Err(CallError::TimedOut { .. }) => {
            tracing::warn!(%url, "notification webhook timed out");
        }
        Err(e) => tracing::warn!(%url, error = %e, "notification webhook unreachable"),
    }
}

/// Runs a blue-green teardown command; what it did is returned for the rollout's record,
/// never fatal: the release has already happened.
pub(super) async fn teardown(cmd: &str, service: &str, group: &str) -> String {
    let env = [
        ("SWITCHYARD_SERVICE", service.to_string()),
        ("SWITCHYARD_GROUP", group.to_string()),
    ];
    match run_command(cmd, &env, TEARDOWN_TIMEOUT).await {
        Err(e) => format!("; teardown {e}"),
        Ok(out) if out.status.success() => format!("; teardown `{cmd}` succeeded"),
        Ok(out) => format!(
            "; teardown `{cmd}` failed ({}): {}",
            out.status,
            out.said(200)
        ),
    }
}
