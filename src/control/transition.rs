//! How a rollout change is applied. A change toward stable (abort, hold, undo, a failed
//! check) is published at once under the state lock alone and its record queued to the
//! persister, so no store trouble can delay or block it; a forward change (a step, a
//! promotion) is recorded first, waiting for its write without the state lock, and gives
//! way if a rollback came in meanwhile.

use std::collections::BTreeMap;

use serde::Serialize;

use super::persist::Kind;
use super::record::{superseded, Landed};
use super::{event, ControlError, Controller, State, Traffic};
use crate::audit::{Actor, EventKind};
use crate::config::Config;
use crate::rollout::machine::{Change, CommandError, Outcome};
use crate::rollout::{RollbackCause, Rollout, Status};
use crate::split::{Split, FULL_WEIGHT};
use crate::store::Commit;

/// A rollout as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutView {
    #[serde(flatten)]
    pub rollout: Rollout,
    pub steps: Vec<String>,
    /// The split in force, in basis points by group.
    pub split: Split,
    /// What holds the rollout besides its steps: the guard's first window after a restart,
    /// or the state database (a rollback applied but not yet recorded, or writes refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// The guard's last look at this attempt (on the instance that runs it: alone, or the
    /// fleet's leader).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guard: Option<super::guard::GuardReading>,
    /// When the current step runs out of time, for a step that can (see `StepDeadline`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline: Option<StepDeadline>,
}

/// The progress deadline of the step in progress: the driver aborts an analysis or hook step
/// that runs `progress_deadline` (the service's configuration) after it began. Reckoned from
/// `step_began`; a process restarted (or a new leader) times the step again from its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StepDeadline {
    /// Unix milliseconds.
    pub at: i64,
    /// The configured `progress_deadline`.
    pub after_ms: u64,
}

impl RolloutView {
    pub(super) fn new(r: Rollout, split: Split) -> RolloutView {
        RolloutView {
            steps: r
                .strategy
                .steps
                .iter()
                .map(super::super::rollout::Step::describe)
                .collect(),
            rollout: r,
            split,
            waiting_for: None,
            guard: None,
            deadline: None,
        }
    }

    /// With the current step's deadline, when it has one: an analysis or hook step of a
    /// progressing rollout whose start is known.
    pub(super) fn with_deadline(mut self, config: &Config) -> RolloutView {
        let r = &self.rollout;
        let timed = matches!(
            r.current_step(),
            Some(crate::rollout::Step::Analysis { .. } | crate::rollout::Step::Hook { .. })
        );
        let began = r
            .step_began
            .filter(|b| (b.step, b.attempt) == (r.step, r.attempt));
        if let (true, Status::Progressing, Some(began), Some(svc)) =
            (timed, r.status, began, config.service(&r.service))
        {
            let after_ms = svc.progress_deadline.as_millis() as u64;
            self.deadline = Some(StepDeadline {
                at: began.at.saturating_add(after_ms as i64),
                after_ms,
            });
        }
        self
    }
}

/// A rollout change worked out but not yet applied: the rollout, the traffic it implies,
/// and the commit that records both.
pub(super) struct Planned {
    r: Rollout,
    t: Traffic,
    before: Split,
    change: Change,
    pub(super) commit: Commit,
}

impl Planned {
    /// The service as it is once this is applied (what `record::landed` compares).
    pub(super) fn seen(&self) -> super::record::Seen {
        super::record::Seen {
            rollout: Some(self.r.clone()),
            traffic: Some(self.t.clone()),
        }
    }
}

/// `now`: the record's and the event's timestamp (the controller's `clock`).
pub(super) fn plan(
    config: &Config,
    before: &Traffic,
    mut r: Rollout,
    change: &Change,
    actor: &Actor,
    now: i64,
) -> Planned {
    r.updated_at = now;
    r.mark_step_began(now);
    // Recorded with the end itself; an earlier attempt's work not yet done stays (a retry
    // right after an abort: the driver does it first).
    if let Some(work) = super::ending::end_work_due(config, &r, change) {
        r.end_work = Some(work);
    }
    let service = r.service.clone();
    let mut t = before.clone();
    if r.status == Status::Completed && r.completed_at.is_none() {
        r.completed_at = Some(now);
    }
    match r.status {
        Status::Completed => {
            t.previous = Some(Split::all_to(&r.stable));
            t.current = Split::all_to(&r.candidate);
            t.stable = Some(r.candidate.clone());
            t.retired.retain(|g| g != &r.candidate);
        }
        Status::Aborted => t.current = Split::all_to(&r.stable),
        Status::RolledBack => {
            t.previous = Some(t.current.clone());
            t.current = Split::all_to(&r.stable);
            t.stable = Some(r.stable.clone());
            t.retired.retain(|g| g != &r.stable);
        }
        Status::Progressing | Status::Paused => t.current = rollout_split(&r),
    }
    if change.kind == EventKind::Retired && !t.retired.contains(&r.stable) {
        t.retired.push(r.stable.clone());
    }
    let ev = event(
        now,
        &service,
        Some(r.id),
        actor,
        change.kind,
        (Some(&before.current), Some(&t.current)),
        change.reason.clone(),
    );
    let commit = Commit {
        traffic: vec![(service, t.record())],
        rollout: Some(r.clone()),
        events: vec![ev],
        ..Commit::default()
    };
    Planned {
        r,
        t,
        before: before.current.clone(),
        change: change.clone(),
        commit,
    }
}

/// A change that only takes traffic away from the candidate or stops the rollout moving
/// (abort, undo, a hold, a pause step): applied without waiting for the store.
fn toward_stable(before: &Rollout, after: &Rollout) -> bool {
    after.weight <= before.weight
        && matches!(
            after.status,
            Status::Aborted | Status::RolledBack | Status::Paused
        )
}

/// The split while a rollout is active: the candidate's weight, as much to the baseline if
/// there is one (`Rollout::baseline_weight`), the rest on stable.
pub(super) fn rollout_split(r: &Rollout) -> Split {
    let baseline = r.baseline_weight(r.weight);
    let mut parts = vec![
        (r.stable.clone(), FULL_WEIGHT - r.weight - baseline),
        (r.candidate.clone(), r.weight),
    ];
    if let Some(b) = &r.strategy.baseline {
        parts.push((b.clone(), baseline));
    }
    Split::from_basis_points(parts).expect("a rollout's weights sum to FULL_WEIGHT")
}

impl Controller {
    /// Runs `f` on a copy of the rollout. A change toward stable is applied on the spot,
    /// under the state lock alone; a forward change takes the writer lock and waits for its
    /// record. `cause` is what a rollback by this path counts as.
    pub(super) async fn transition(
        &self,
        service: &str,
        actor: &Actor,
        cause: Option<RollbackCause>,
        f: impl Fn(&mut Rollout) -> Result<Outcome, CommandError>,
    ) -> Result<(Outcome, RolloutView), ControlError> {
        {
            let mut state = self.state.lock().await;
            let (r, outcome) = try_on_copy(&state, service, &f)?;
            match &outcome {
                Outcome::Changed(change) if toward_stable(&state.rollouts[service], &r) => {
                    let view = self.record_now(&mut state, r, change, actor, cause)?;
                    return Ok((outcome, view));
                }
                Outcome::Changed(_) => {}
                _ => {
                    let split = state.traffic[service].current.clone();
                    return Ok((outcome, RolloutView::new(r, split)));
                }
            }
        }
        // Forward: the writer lock first, then a fresh look (the rollout may have moved).
        let _writer = self.writer.lock().await;
        let mut state = self.state.lock().await;
        let (r, outcome) = try_on_copy(&state, service, &f)?;
        let change = match &outcome {
            Outcome::Changed(change) => change.clone(),
            _ => {
                let split = state.traffic[service].current.clone();
                return Ok((outcome, RolloutView::new(r, split)));
            }
        };
        if toward_stable(&state.rollouts[service], &r) {
            let view = self.record_now(&mut state, r, &change, actor, cause)?;
            return Ok((outcome, view));
        }
        let mut planned = plan(
            &state.config,
            &state.traffic[service],
            r,
            &change,
            actor,
            self.clock.unix_ms(),
        );
        if planned.t.current != planned.before {
            // Recorded before it is applied: a rollback decided while this write runs is
            // published first and recorded after it. Until a later write of the service
            // clears it, a restart holds the rollout at the split before this step.
            planned.commit.traffic[0].1.step_from = Some(planned.before.clone());
        }
        let (mut state, landed) = self
            .write_service(state, service, planned.commit.clone())
            .await?;
        let view = match landed {
            Landed::Kept => self.apply_planned(&mut state, planned, cause)?,
            Landed::RolledBack => return Err(superseded(service)),
            Landed::Overtaken => Self::view_now(&state, service)?,
        };
        Ok((outcome, view))
    }

    /// The service's rollout as this instance has it now (after a write the fleet moved on
    /// from).
    pub(super) fn view_now(state: &State, service: &str) -> Result<RolloutView, ControlError> {
        let r = state
            .rollouts
            .get(service)
            .cloned()
            .ok_or_else(|| ControlError::NoRollout(service.into()))?;
        Ok(RolloutView::new(r, state.traffic[service].current.clone()))
    }

    /// Applies a change toward stable now: the data plane gets it at once, then the record
    /// goes to the persister, which retries until the store takes it. In that order, so
    /// that a change the data plane never got is never recorded.
    pub(super) fn record_now(
        &self,
        state: &mut State,
        r: Rollout,
        change: &Change,
        actor: &Actor,
        cause: Option<RollbackCause>,
    ) -> Result<RolloutView, ControlError> {
        let service = r.service.clone();
        let kind = if matches!(r.status, Status::Aborted | Status::RolledBack) {
            Kind::Rollback
        } else {
            Kind::Hold
        };
        let planned = plan(
            &state.config,
            &state.traffic[&service],
            r,
            change,
            actor,
            self.clock.unix_ms(),
        );
        let commit = planned.commit.clone();
        let view = self.apply_planned(state, planned, cause)?;
        self.persist.durable(kind, vec![service.clone()], commit);
        *state.epochs.entry(service).or_default() += 1;
        Ok(view)
    }

    /// Takes a recorded (or to be queued) change into the state and publishes it when the
    /// traffic (or whether there is a candidate) changed. The state is only kept, and the
    /// change's consequences (end hooks, counters) only happen, once the data plane has it:
    /// if the snapshot cannot be built the old state is put back and nothing happened.
    pub(super) fn apply_planned(
        &self,
        state: &mut State,
        p: Planned,
        cause: Option<RollbackCause>,
    ) -> Result<RolloutView, ControlError> {
        let Planned {
            r,
            t,
            before,
            change,
            ..
        } = p;
        let service = r.service.clone();
        let was_active = state
            .rollouts
            .get(&service)
            .is_some_and(|o| o.id == r.id && o.status.is_active());
        // A mirror step changes no split, but what the data plane copies.
        let mirror_before = state
            .rollouts
            .get(&service)
            .filter(|o| o.id == r.id)
            .map_or(0, Rollout::mirror_share);
        let republish = t.current != before
            || was_active != r.status.is_active()
            || mirror_before != r.mirror_share();
        let old_t = state.traffic.insert(service.clone(), t.clone());
        let old_r = state.rollouts.insert(service.clone(), r.clone());
        if republish {
            if let Err(e) = self.publish(state) {
                put_back(&mut state.traffic, &service, old_t);
                put_back(&mut state.rollouts, &service, old_r);
                tracing::error!(service, rollout = r.id, kind = %change.kind, error = %e, "rollout change not applied: cannot build the snapshot");
                return Err(e);
            }
        }
        tracing::info!(service, rollout = r.id, kind = %change.kind, reason = %change.reason, split = %t.current, "rollout");
        if !r.status.is_active() {
            state.resume_gate.remove(&service);
            state.restore.remove(&service);
        }
        if matches!(r.status, Status::Aborted | Status::RolledBack)
            && (was_active || change.kind == EventKind::RolledBack)
        {
            let cause = cause.unwrap_or_else(|| {
                debug_assert!(false, "a rollback without a cause: {}", change.kind);
                RollbackCause::Manual
            });
            let mut counts = self.counts.lock().expect("counts");
            *counts
                .rollbacks
                .entry((service.clone(), cause.as_str().to_string()))
                .or_default() += 1;
        }
        Ok(RolloutView::new(r, t.current))
    }
}

fn put_back<V>(map: &mut BTreeMap<String, V>, key: &str, old: Option<V>) {
    match old {
        Some(v) => {
            map.insert(key.to_string(), v);
        }
        None => {
            map.remove(key);
        }
    }
}

/// Runs `f` on a copy of the service's rollout.
fn try_on_copy(
    state: &State,
    service: &str,
    f: &impl Fn(&mut Rollout) -> Result<Outcome, CommandError>,
) -> Result<(Rollout, Outcome), ControlError> {
    if state.config.service(service).is_none() {
        return Err(ControlError::UnknownService(service.into()));
    }
    let mut r = state
        .rollouts
        .get(service)
        .cloned()
        .ok_or_else(|| ControlError::NoRollout(service.into()))?;
    let outcome = f(&mut r)?;
    Ok((r, outcome))
}
