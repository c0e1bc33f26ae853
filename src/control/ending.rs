//! When a rollout ends: its `after_rollout` / `on_rollback` hook (whose result is recorded
//! as a durable *event* write) and, for a rollback, the notification webhook. Both run in the
//! background so that ending a rollout (a rollback above all) never waits for them.

use std::sync::Arc;

use super::persist::Kind;
use super::{event, Controller};
use crate::audit::{EventKind, System};
use crate::rollout::machine::Change;
use crate::rollout::{HookPoint, Rollout, Status};
use crate::store::Commit;

impl Controller {
    /// When a rollout ends: the `after_rollout` or `on_rollback` hook, and for a rollback the
    /// notification webhook. Both run in the background; their results become events.
    pub(super) fn after_end(
        &self,
        config: &crate::config::Config,
        r: &Rollout,
        change: &Change,
        lane: Arc<tokio::sync::Mutex<()>>,
    ) {
        let Some(svc) = config.service(&r.service) else {
            return;
        };
        let rolled_back = matches!(r.status, Status::Aborted | Status::RolledBack);
        let point = if rolled_back {
            HookPoint::OnRollback
        } else {
            HookPoint::AfterRollout
        };
        if let Some(hook) = super::hooks::by_point(&svc.hooks, point).cloned() {
            let (persist, r, clock) = (self.persist.clone(), r.clone(), self.clock.clone());
            // Taken now, while the state lock orders it before any later attempt's driver.
            let held = lane.clone().try_lock_owned();
            tokio::spawn(async move {
                let _held = match held {
                    Ok(g) => g,
                    Err(_) => lane.lock_owned().await,
                };
                let (kind, reason) = match super::hooks::run(&hook, point, &r).await {
                    Ok(done) => (EventKind::Hook, done),
                    Err(e) => (EventKind::HookFailed, e),
                };
                let by = System::Hook.into();
                let at = clock.unix_ms();
                let ev = event(at, &r.service, Some(r.id), &by, kind, (None, None), reason);
                persist.durable(
                    Kind::Event,
                    vec![r.service.clone()],
                    Commit {
                        events: vec![ev],
                        ..Commit::default()
                    },
                );
            });
        }
        if let (true, Some(url)) = (rolled_back, config.notify_webhook.clone()) {
            let text = format!(
                "switchyard: rollout #{} of {} ({} -> {}) {}: {}",
                r.id,
                r.service,
                r.stable,
                r.candidate,
                if r.status == Status::RolledBack {
                    "rolled back"
                } else {
                    "aborted, all traffic back on the stable group"
                },
                change.reason
            );
            tokio::spawn(super::effects::notify(url, text));
        }
    }
}
