//! Rollout commands on the control plane. Each runs the state machine on a copy of the
//! rollout and derives the service's traffic from it. A change forward (a step, a promotion)
//! is persisted with its event in one commit and only then published; a change toward
//! stable (abort, hold, undo, a failed check) is published at once and its record queued to
//! the persister, so that no store trouble can delay or block a rollback.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::persist::{Kind, Write};
use super::record::{superseded, Landed, Seen};
use super::transition::{plan, RolloutView};
use super::{ControlError, Controller};
use crate::audit::{Actor, EventKind, System};
use crate::rollout::machine::{self, Change, CommandError, Outcome, Verdict};
use crate::rollout::{RollbackCause, Rollout, Status, Strategy};
use crate::store::Commit;

impl Controller {
    /// Starts a rollout of `service` to `candidate`, with the service's strategy unless one
    /// is given.
    pub async fn start_rollout(
        self: &Arc<Self>,
        service: &str,
        candidate: &str,
        strategy: Option<Strategy>,
        force: bool,
        actor: impl Into<Actor>,
    ) -> Result<RolloutView, ControlError> {
        let actor = &actor.into();
        let _writer = self.writer.lock().await;
        let state = self.state.lock().await;
        let svc = state
            .config
            .service(service)
            .ok_or_else(|| ControlError::UnknownService(service.into()))?
            .clone();
        if let Some(r) = state.rollouts.get(service).filter(|r| r.status.is_active()) {
            return Err(ControlError::RolloutInProgress {
                service: service.into(),
                id: r.id,
                candidate: r.candidate.clone(),
                what: "one rollout at a time",
            });
        }
        if svc.group(candidate).is_none() {
            return Err(ControlError::UnknownGroup {
                service: service.into(),
                group: candidate.into(),
            });
        }
        let t = &state.traffic[service];
        let stable = t
            .stable
            .clone()
            .or_else(|| t.current.active().map(str::to_string))
            .ok_or_else(|| {
                ControlError::Conflict(format!(
                    "service \"{service}\" splits traffic over several groups ({}); switch it to one stable group first",
                    t.current
                ))
            })?;
        if stable == candidate {
            return Err(ControlError::BadRequest(format!(
                "\"{candidate}\" is already the stable group of service \"{service}\""
            )));
        }
        let strategy =
            super::hooks::with_hooks(strategy.unwrap_or_else(|| svc.strategy.clone()), &svc.hooks);
        if let Some(b) = &strategy.baseline {
            if !strategy.ab_match.is_empty() || strategy.blue_green {
                return Err(ControlError::BadRequest(format!(
                    "a baseline gets the candidate's weight, and strategy \"{}\" gives it none until the end: no baseline",
                    strategy.name
                )));
            }
            if svc.group(b).is_none() {
                return Err(ControlError::UnknownGroup {
                    service: service.into(),
                    group: b.clone(),
                });
            }
            if b == &stable || b == candidate {
                return Err(ControlError::BadRequest(format!(
                    "the baseline \"{b}\" must be a third group running a fresh copy of the stable version, not the {}",
                    if b == &stable { "stable group" } else { "candidate" }
                )));
            }
        }
        if !force {
            self.check_healthy(
                service,
                std::iter::once(candidate).chain(strategy.baseline.as_deref()),
            )?;
        }
        // One moment for every try of the write and what is applied after: the same record.
        let now = self.clock.unix_ms();
        let r = Rollout::new(
            service,
            &stable,
            candidate,
            strategy,
            actor.to_string(),
            now,
        );
        let before = state.traffic[service].clone();
        let seen_before = Seen::of(&state, service);
        let actor_name = actor.clone();
        let config = state.config.clone();
        let make = move |id: u64| {
            let mut r = r.clone();
            r.id = id;
            let change = Change {
                kind: EventKind::Started,
                reason: format!(
                    "rollout #{} from {} to {} ({}, {} steps)",
                    r.id,
                    r.stable,
                    r.candidate,
                    r.strategy.name,
                    r.strategy.steps.len()
                ),
                weight_changed: false,
            };
            plan(&config, &before, r, &change, &actor_name, now)
        };
        let make = Arc::new(make);
        let for_store = make.clone();
        let epoch = state.epoch(service);
        let (mut state, id) = self
            .write_forward(
                state,
                vec![service.to_string()],
                Write::NewRollout(Arc::new(move |id| for_store(id).commit)),
            )
            .await?;
        let id = id.expect("a new rollout has an id");
        let planned = make(id);
        let landed = Self::landed(&state, service, epoch, &seen_before, &planned.seen());
        if landed == Landed::RolledBack {
            // An undo came in while the new rollout's row was being written, and its own
            // record (queued after) does not name this rollout: without a record that ends
            // it, a restart would find it the latest and active, and resume it.
            let mut orphan = make(id).commit.rollout.expect("a new rollout");
            orphan.status = Status::Aborted;
            orphan.reason = Some("superseded by an undo decided while it was being started".into());
            orphan.updated_at = self.clock.unix_ms();
            tracing::warn!(
                service,
                rollout = id,
                "rollout start superseded by an undo; recording it as aborted"
            );
            self.persist.durable(
                Kind::Rollback,
                vec![service.to_string()],
                Commit {
                    rollout: Some(orphan),
                    ..Commit::default()
                },
            );
            return Err(superseded(service));
        }
        let view = if landed == Landed::Overtaken {
            // The watch brought this start and the leader's next step before the answer came:
            // applied now, step 0 would stay here for good (nothing after it is to come).
            tracing::info!(
                service,
                rollout = id,
                "rollout started; the fleet moved it on before the start was answered"
            );
            Self::view_now(&state, service)?
        } else {
            self.apply_planned(&mut state, planned, None)?
        };
        drop(state);
        self.ensure_driver(service).await;
        Ok(view)
    }

    pub async fn promote(
        self: &Arc<Self>,
        service: &str,
        full: bool,
        actor: impl Into<Actor>,
    ) -> Result<RolloutView, ControlError> {
        if self.state.lock().await.resume_gate.contains(service) {
            return Err(ControlError::Conflict(format!(
                "the rollout of {service} resumed after a restart and waits for the guard to judge one full window first"
            )));
        }
        self.command(service, actor, None, |r, _| machine::promote(r, full))
            .await
    }

    pub async fn pause(
        self: &Arc<Self>,
        service: &str,
        actor: impl Into<Actor>,
    ) -> Result<RolloutView, ControlError> {
        self.command(service, actor, None, |r, by| {
            machine::pause(r, &format!("paused by {by}"))
        })
        .await
    }

    pub async fn resume(
        self: &Arc<Self>,
        service: &str,
        actor: impl Into<Actor>,
    ) -> Result<RolloutView, ControlError> {
        self.command(service, actor, None, |r, _| machine::resume(r))
            .await
    }

    pub async fn abort(
        self: &Arc<Self>,
        service: &str,
        actor: impl Into<Actor>,
        why: Option<&str>,
    ) -> Result<RolloutView, ControlError> {
        self.command(service, actor, Some(RollbackCause::Manual), |r, by| {
            let why = why.map_or_else(
                || format!("aborted by {by}"),
                |w| format!("aborted by {by}: {w}"),
            );
            machine::abort(r, &why)
        })
        .await
    }

    pub async fn retry(
        self: &Arc<Self>,
        service: &str,
        force: bool,
        actor: impl Into<Actor>,
    ) -> Result<RolloutView, ControlError> {
        if !force {
            let candidate = self.rollout(service).await?.rollout.candidate;
            self.check_healthy(service, [candidate.as_str()])?;
        }
        self.command(service, actor, None, |r, _| machine::retry(r))
            .await
    }

    /// Rolls back the last finished rollout: within the service's `rollback_window` after it
    /// completed (or when `immediate`), all traffic straight back to the group that was
    /// stable before it; later, a new rollout back to that group through the strategy's
    /// steps and analyses (see `ServiceConfig::rollback_window`).
    pub async fn undo(
        self: &Arc<Self>,
        service: &str,
        force: bool,
        immediate: bool,
        actor: impl Into<Actor>,
    ) -> Result<RolloutView, ControlError> {
        let actor = &actor.into();
        let mut state = self.state.lock().await;
        let mut r = state
            .rollouts
            .get(service)
            .cloned()
            .ok_or_else(|| ControlError::NoRollout(service.into()))?;
        if r.status != Status::Completed {
            return Err(CommandError::NotAllowed {
                service: service.into(),
                status: r.status.as_str().to_string(),
                what: "only a completed rollout can be undone (abort an active one)",
            }
            .into());
        }
        let window = state
            .config
            .service(service)
            .map_or(Duration::MAX, |s| s.rollback_window);
        // A record from before `completed_at` was kept: its last update is when it ended.
        let completed = r.completed_at.unwrap_or(r.updated_at);
        let since =
            Duration::from_millis(self.clock.unix_ms().saturating_sub(completed).max(0) as u64);
        if !immediate && since > window {
            drop(state);
            tracing::info!(%service, rollout = r.id, since = ?since, window = ?window,
                "undo past the rollback window: a rollout back to {} through the steps", r.stable);
            return self
                .start_rollout(service, &r.stable, None, force, actor.clone())
                .await;
        }
        if !force {
            self.check_healthy(service, [r.stable.as_str()])?;
        }
        r.status = Status::RolledBack;
        r.reason = Some(format!("undone by {actor}"));
        let change = Change {
            kind: EventKind::RolledBack,
            reason: format!(
                "undo of rollout #{}: {} back to {}",
                r.id, r.candidate, r.stable
            ),
            weight_changed: true,
        };
        let view = self.record_now(&mut state, r, &change, actor, Some(RollbackCause::Undo))?;
        drop(state);
        // Its `on_rollback` hook and notification: the driver's end work.
        self.ensure_driver(service).await;
        Ok(view)
    }

    /// The latest rollout of a service.
    pub async fn rollout(&self, service: &str) -> Result<RolloutView, ControlError> {
        let state = self.state.lock().await;
        let r = state
            .rollouts
            .get(service)
            .cloned()
            .ok_or_else(|| ControlError::NoRollout(service.into()))?;
        let split = state.traffic[service].current.clone();
        let of = (r.id, r.attempt);
        let mut view = RolloutView::new(r, split).with_deadline(&state.config);
        view.guard = self.guard_reading(service, of);
        view.waiting_for = Controller::resume_wait(&state, service).or_else(|| {
            match self.persist.pending_kind(service) {
                Some(Kind::Rollback) => Some(
                    "the state database to record a rollback already applied to traffic".into(),
                ),
                Some(Kind::Hold) => {
                    Some("the state database to record a hold already applied".into())
                }
                Some(Kind::Event) => Some("the state database to record an event".into()),
                None if self.persist.health().pending_writes > 0 => {
                    Some("the state database to accept writes".into())
                }
                None => None,
            }
        });
        Ok(view)
    }

    pub async fn rollout_history(
        &self,
        service: Option<String>,
        limit: usize,
    ) -> Result<Vec<Rollout>, ControlError> {
        if let Some(s) = &service {
            if self.state.lock().await.config.service(s).is_none() {
                return Err(ControlError::UnknownService(s.clone()));
            }
        }
        let store = self.store.clone();
        Ok(
            tokio::task::spawn_blocking(move || store.rollouts(service.as_deref(), limit))
                .await
                .expect("store task")?,
        )
    }

    /// Runs a command by `actor` (which `f` may name in its reason), then wakes (or
    /// restarts) the service's driver.
    async fn command(
        self: &Arc<Self>,
        service: &str,
        actor: impl Into<Actor>,
        cause: Option<RollbackCause>,
        f: impl Fn(&mut Rollout, &Actor) -> Result<Outcome, CommandError>,
    ) -> Result<RolloutView, ControlError> {
        let actor = actor.into();
        let (_, view) = self
            .transition(service, &actor, cause, |r| f(r, &actor))
            .await?;
        self.ensure_driver(service).await;
        Ok(view)
    }

    /// Makes sure an active rollout has a driver, and wakes it.
    pub(super) async fn ensure_driver(self: &Arc<Self>, service: &str) {
        let mut state = self.state.lock().await;
        if !self.leads() {
            // In a fleet only the leader drives; it learns of the change from the watch.
            // (Looked at under the state lock, under which leadership changes.)
            return;
        }
        let due = state
            .rollouts
            .get(service)
            .is_some_and(|r| r.status.is_active() || r.end_work.is_some());
        match state.drivers.get(service) {
            Some((wake, task)) if !task.is_finished() => wake.notify_one(),
            _ if due => {
                let wake = Arc::new(Notify::new());
                let drive = super::driver::drive(self.clone(), service.into(), wake.clone());
                state
                    .drivers
                    .insert(service.to_string(), (wake, tokio::spawn(drive)));
            }
            _ => {}
        }
    }

    /// A driver found its rollout inactive and its end work done: it ends, unless a retry
    /// made the rollout active again (or a new end brought work). Decided under the state
    /// lock, which `ensure_driver` also holds: either the retry's `ensure_driver` finds no
    /// driver and starts one, or this one goes on.
    pub(crate) async fn driver_done(&self, service: &str) -> bool {
        let mut state = self.state.lock().await;
        let active = state
            .rollouts
            .get(service)
            .is_some_and(|r| r.status.is_active() || r.end_work.is_some());
        if !active {
            state.drivers.remove(service);
        }
        !active
    }

    /// The driver's side: one step of the state machine.
    pub(crate) async fn rollout_step(
        &self,
        service: &str,
    ) -> Result<(Outcome, RolloutView), ControlError> {
        self.transition(service, &System::Schedule.into(), None, |r| {
            Ok(machine::step(r))
        })
        .await
    }

    /// Counts time spent in a timed pause (persisted, so a restart resumes with what was left).
    pub(crate) async fn rollout_pause_progress(
        &self,
        service: &str,
        step: usize,
        elapsed: Duration,
    ) -> Result<(), ControlError> {
        self.record_rollout(service, |r| machine::pause_progress(r, step, elapsed))
            .await
            .map(drop)
    }

    /// In a fleet, records that the hook of step `step` begins, before it runs: a leader
    /// that takes over then knows it may have run (`hook_started`). False when the rollout
    /// moved meanwhile (the driver looks again); an error when it could not be recorded (the
    /// hook does not run).
    pub(crate) async fn rollout_hook_started(
        &self,
        service: &str,
        step: usize,
    ) -> Result<bool, ControlError> {
        self.record_rollout(service, |r| {
            let due = r.step == step && r.status == crate::rollout::Status::Progressing;
            if due {
                r.hook_started = Some(step);
            }
            due
        })
        .await
    }

    /// Records bookkeeping of the service's rollout that is no transition (pause progress, a
    /// hook begun) when `f` changes it: with the traffic row (this write is only made once the
    /// step before it was applied, so it clears that step's `step_from`, see `lifecycle`).
    /// Whether it was recorded and kept (the rollout did not move meanwhile: when it did, the
    /// driver looks again).
    pub(super) async fn record_rollout(
        &self,
        service: &str,
        f: impl FnOnce(&mut crate::rollout::Rollout) -> bool,
    ) -> Result<bool, ControlError> {
        let _writer = self.writer.lock().await;
        let state = self.state.lock().await;
        let Some(mut r) = state.rollouts.get(service).cloned() else {
            return Ok(false);
        };
        if !f(&mut r) {
            return Ok(false);
        }
        r.updated_at = self.clock.unix_ms();
        let commit = Commit {
            traffic: vec![(service.to_string(), state.traffic[service].record())],
            rollout: Some(r.clone()),
            ..Commit::default()
        };
        let (mut state, landed) = self.write_service(state, service, commit).await?;
        let kept = landed == Landed::Kept;
        if kept {
            state.rollouts.insert(service.to_string(), r);
        }
        Ok(kept)
    }

    /// A new leader found a hook begun by the last one and not recorded as done: held for a
    /// person, who resumes (the hook runs again) or promotes past it.
    pub(crate) async fn hold_unknown_hook(
        &self,
        service: &str,
        point: crate::rollout::HookPoint,
    ) -> Result<(), ControlError> {
        let why = format!(
            "the {point} hook was running on the last leader when it was lost and may or may not have run: check, then resume to run it again or promote to go past it"
        );
        self.transition(service, &System::Hook.into(), None, |r| {
            r.hook_started = None;
            machine::pause(r, &why)
        })
        .await?;
        Ok(())
    }

    /// Counts an analysis verdict for /metrics.
    pub(crate) fn count_analysis(&self, service: &str, verdict: Verdict) {
        let v = verdict.as_str().to_string();
        *self
            .counts
            .lock()
            .expect("counts")
            .analyses
            .entry((service.to_string(), v))
            .or_default() += 1;
    }

    pub(crate) async fn rollout_analysis_done(
        &self,
        service: &str,
        step: usize,
        verdict: Verdict,
        detail: &str,
    ) -> Result<(), ControlError> {
        self.count_analysis(service, verdict);
        self.transition(
            service,
            &System::Analysis.into(),
            Some(RollbackCause::Analysis),
            |r| Ok(machine::analysis_done(r, step, verdict, detail).unwrap_or(Outcome::Idle)),
        )
        .await
        .map(|_| ())
    }

    pub(crate) async fn rollout_hook_done(
        &self,
        service: &str,
        step: usize,
        result: Result<String, String>,
        cause: RollbackCause,
    ) -> Result<(), ControlError> {
        self.transition(service, &System::Hook.into(), Some(cause), |r| {
            Ok(machine::hook_done(r, step, result.clone()).unwrap_or(Outcome::Idle))
        })
        .await
        .map(|_| ())
    }

    /// For the rollout's own side tasks (guard, background analysis): aborts and wakes the
    /// running driver, without ever starting one (which keeps their futures non-recursive).
    /// The cause is the code path's own, as is the part of switchyard named as the actor.
    pub(crate) async fn abort_from(
        &self,
        service: &str,
        by: System,
        cause: RollbackCause,
        why: &str,
    ) -> Result<(), ControlError> {
        let actor = Actor::from(by);
        let why = format!("aborted by {actor}: {why}");
        self.transition(service, &actor, Some(cause), |r| machine::abort(r, &why))
            .await?;
        self.wake_driver(service).await;
        Ok(())
    }

    /// Holds an active rollout for a person, saying why; see `abort_from`.
    pub(crate) async fn pause_from(
        &self,
        service: &str,
        by: System,
        why: &str,
    ) -> Result<(), ControlError> {
        self.transition(service, &by.into(), None, |r| machine::pause(r, why))
            .await?;
        self.wake_driver(service).await;
        Ok(())
    }

    async fn wake_driver(&self, service: &str) {
        if let Some((wake, _)) = self.state.lock().await.drivers.get(service) {
            wake.notify_one();
        }
    }

    pub(crate) async fn rollout_retired(
        &self,
        service: &str,
        step: usize,
        detail: &str,
    ) -> Result<(), ControlError> {
        self.transition(service, &System::Schedule.into(), None, |r| {
            Ok(machine::retired(r, step, detail).unwrap_or(Outcome::Idle))
        })
        .await
        .map(|_| ())
    }
}
