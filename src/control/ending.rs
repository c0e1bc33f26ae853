//! When an attempt of a rollout ends: its `after_rollout` / `on_rollback` hook and, for a
//! rollback, the notification webhook — the *end work*.
//!
//! The end's own record says the work is due (`Rollout::end_work`, set by `plan` through
//! [`end_work_due`]), and the service's driver does it before anything else ([`Controller::
//! end_work`]). So the work is neither waited for by the rollback itself nor lost with the
//! process or the leader that ended the rollout: whoever drives next finds it in the record.
//! A retry right after an abort finds the aborted attempt's work first, so the `on_rollback`
//! hook ends before the retry's first step.
//!
//! How often it runs: in a fleet at most once — recorded as begun before it runs, and a
//! leader that finds it begun by one it replaced says so in the history instead of running
//! it again. A single instance killed after running it and before recording it done runs it
//! again when it restarts (at least once): it has no one to leave the decision to.

use std::sync::Arc;
use std::time::Duration;

use super::persist::Kind;
use super::{event, Controller};
use crate::audit::{EventKind, System};
use crate::config::Config;
use crate::rollout::machine::Change;
use crate::rollout::{EndWork, Rollout};
use crate::store::Commit;

/// How long the driver waits before it tries again to record the end work's progress.
const RETRY: Duration = Duration::from_secs(1);

/// The end work `change` makes due for `r`, if it ends an attempt and the service has
/// anything to do then (an end hook for that point, or a notification of a rollback).
pub(super) fn end_work_due(config: &Config, r: &Rollout, change: &Change) -> Option<EndWork> {
    if !matches!(
        change.kind,
        EventKind::Completed | EventKind::Aborted | EventKind::RolledBack
    ) {
        return None;
    }
    let work = EndWork {
        attempt: r.attempt,
        status: r.status,
        reason: change.reason.clone(),
        begun: false,
    };
    let svc = config.service(&r.service)?;
    let hook = super::hooks::by_point(&svc.hooks, work.point()).is_some();
    let notify = work.rolled_back() && config.notify_webhook.is_some();
    (hook || notify).then_some(work)
}

impl Controller {
    /// Does the end work recorded on the service's rollout, if there is any; whether there
    /// was (the driver then looks again). `ours` is the work (rollout id, attempt) this
    /// driver recorded as begun: its own, not a lost leader's.
    pub(super) async fn end_work(
        self: &Arc<Self>,
        service: &str,
        ours: &mut Option<(u64, u32)>,
    ) -> bool {
        let pending = {
            let state = self.state.lock().await;
            state
                .rollouts
                .get(service)
                .and_then(|r| Some((r.clone(), r.end_work.clone()?)))
        };
        let Some((r, work)) = pending else {
            return false;
        };
        let key = (r.id, work.attempt);
        let point = work.point();
        if self.in_fleet() {
            if work.begun && *ours != Some(key) {
                let why = format!(
                    "the {point} hook of attempt {} was running on the last leader when it was lost and may or may not have run: it is not run again",
                    work.attempt + 1
                );
                tracing::warn!(%service, rollout = r.id, "{why}");
                self.end_event(&r, EventKind::HookFailed, why);
                self.finish_end_work(service, key).await;
                return true;
            }
            if !work.begun {
                *ours = Some(key);
                let begin = self
                    .record_rollout(service, |x| {
                        let due =
                            same_work(x, key) && x.end_work.as_ref().is_some_and(|w| !w.begun);
                        if let (true, Some(w)) = (due, x.end_work.as_mut()) {
                            w.begun = true;
                        }
                        due
                    })
                    .await;
                match begin {
                    Ok(true) => {}
                    // The rollout moved meanwhile: look again.
                    Ok(false) => return true,
                    Err(e) => {
                        tracing::error!(%service, hook = %point, error = %e, "cannot record that the end work begins; not running it yet");
                        tokio::time::sleep(RETRY).await;
                        return true;
                    }
                }
            }
        }
        // The attempt as it ended, for the hook's environment.
        let mut ended = r.clone();
        ended.status = work.status;
        ended.attempt = work.attempt;
        let config = self.snapshot().config.clone();
        let hook = config
            .service(service)
            .and_then(|s| super::hooks::by_point(&s.hooks, point).cloned());
        if let (true, Some(url)) = (work.rolled_back(), config.notify_webhook.clone()) {
            tokio::spawn(super::effects::notify(url, notification(&ended, &work)));
        }
        if let Some(hook) = hook {
            let (kind, reason) = match super::hooks::run(&hook, point, &ended).await {
                Ok(done) => (EventKind::Hook, done),
                Err(e) => (EventKind::HookFailed, e),
            };
            self.end_event(&ended, kind, reason);
        }
        self.finish_end_work(service, key).await;
        true
    }

    /// Records the end work of (rollout id, attempt) done: tried until the store has it or
    /// the rollout has moved on (its record then no longer names that work).
    async fn finish_end_work(&self, service: &str, key: (u64, u32)) {
        loop {
            let done = self
                .record_rollout(service, |x| {
                    let due = same_work(x, key);
                    if due {
                        x.end_work = None;
                    }
                    due
                })
                .await;
            match done {
                Ok(_) => return,
                Err(e) => {
                    tracing::error!(%service, error = %e, "cannot record the end work done; retrying");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }

    /// An end hook's result in the history: a durable event, written when the store lets it.
    fn end_event(&self, r: &Rollout, kind: EventKind, reason: String) {
        let by = System::Hook.into();
        let ev = event(
            self.clock.unix_ms(),
            &r.service,
            Some(r.id),
            &by,
            kind,
            (None, None),
            reason,
        );
        self.persist.durable(
            Kind::Event,
            vec![r.service.clone()],
            Commit {
                events: vec![ev],
                ..Commit::default()
            },
        );
    }
}

/// Whether `r` still has the end work of (rollout id, attempt) due.
fn same_work(r: &Rollout, (id, attempt): (u64, u32)) -> bool {
    r.id == id && r.end_work.as_ref().is_some_and(|w| w.attempt == attempt)
}

fn notification(r: &Rollout, work: &EndWork) -> String {
    format!(
        "switchyard: rollout #{} of {} ({} -> {}) {}: {}",
        r.id,
        r.service,
        r.stable,
        r.candidate,
        if work.status == crate::rollout::Status::RolledBack {
            "rolled back"
        } else {
            "aborted, all traffic back on the stable group"
        },
        work.reason
    )
}
