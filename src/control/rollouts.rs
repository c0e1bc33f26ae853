//! Rollout commands on the control plane. Each runs the state machine on a copy of the
//! rollout, derives the service's traffic from it, persists both with an event in one
//! commit, and only then publishes the new weights.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;

use super::{event, ControlError, Controller, State};
use crate::config::{Split, FULL_WEIGHT};
use crate::rollout::machine::{self, Change, CommandError, Outcome, Verdict};
use crate::rollout::{unix_ms, Rollout, Status, Strategy};
use crate::store::Commit;

/// A rollout as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutView {
    #[serde(flatten)]
    pub rollout: Rollout,
    pub steps: Vec<String>,
    /// The split in force, in basis points by group.
    pub split: Split,
}

impl RolloutView {
    fn new(r: Rollout, split: Split) -> RolloutView {
        RolloutView {
            steps: r.strategy.steps.iter().map(|s| s.describe()).collect(),
            rollout: r,
            split,
        }
    }
}

/// The split while a rollout is active: the candidate's weight, the rest on stable.
fn rollout_split(r: &Rollout) -> Split {
    Split(BTreeMap::from([
        (r.stable.clone(), FULL_WEIGHT - r.weight),
        (r.candidate.clone(), r.weight),
    ]))
}

impl Controller {
    /// Starts a rollout of `service` to `candidate`, with the service's strategy unless one
    /// is given.
    pub async fn start_rollout(
        self: &Arc<Self>,
        service: &str,
        candidate: &str,
        strategy: Option<Strategy>,
        force: bool,
        actor: &str,
    ) -> Result<RolloutView, ControlError> {
        let mut state = self.state.lock().await;
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
        if !force {
            self.check_healthy(service, [candidate])?;
        }
        let strategy = crate::rollout::hooks::with_hooks(
            strategy.unwrap_or_else(|| svc.strategy.clone()),
            &svc.hooks,
        );
        let now = unix_ms();
        let r = Rollout {
            id: state.next_rollout_id,
            service: service.into(),
            stable,
            candidate: candidate.into(),
            strategy,
            step: 0,
            weight: 0,
            status: Status::Progressing,
            reason: None,
            pause_elapsed_ms: 0,
            held: false,
            created_by: actor.into(),
            created_at: now,
            updated_at: now,
            attempt: 0,
        };
        let change = Change {
            kind: "started",
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
        let view = self.record(&mut state, r, &change, actor).await?;
        state.next_rollout_id += 1;
        drop(state);
        self.ensure_driver(service).await;
        Ok(view)
    }

    pub async fn promote(
        self: &Arc<Self>,
        service: &str,
        full: bool,
        actor: &str,
    ) -> Result<RolloutView, ControlError> {
        self.command(service, actor, |r| machine::promote(r, full))
            .await
    }

    pub async fn pause(
        self: &Arc<Self>,
        service: &str,
        actor: &str,
    ) -> Result<RolloutView, ControlError> {
        let why = format!("paused by {actor}");
        self.command(service, actor, |r| machine::pause(r, &why))
            .await
    }

    pub async fn resume(
        self: &Arc<Self>,
        service: &str,
        actor: &str,
    ) -> Result<RolloutView, ControlError> {
        self.command(service, actor, machine::resume).await
    }

    pub async fn abort(
        self: &Arc<Self>,
        service: &str,
        actor: &str,
        why: Option<&str>,
    ) -> Result<RolloutView, ControlError> {
        let why = why.map_or_else(
            || format!("aborted by {actor}"),
            |w| format!("aborted by {actor}: {w}"),
        );
        self.command(service, actor, |r| machine::abort(r, &why))
            .await
    }

    pub async fn retry(
        self: &Arc<Self>,
        service: &str,
        force: bool,
        actor: &str,
    ) -> Result<RolloutView, ControlError> {
        if !force {
            let candidate = self.rollout(service).await?.rollout.candidate;
            self.check_healthy(service, [candidate.as_str()])?;
        }
        self.command(service, actor, machine::retry).await
    }

    /// Rolls back the last finished rollout: all traffic back to the group that was stable
    /// before it.
    pub async fn undo(
        self: &Arc<Self>,
        service: &str,
        force: bool,
        actor: &str,
    ) -> Result<RolloutView, ControlError> {
        let mut state = self.state.lock().await;
        let mut r = state
            .rollouts
            .get(service)
            .cloned()
            .ok_or_else(|| ControlError::NoRollout(service.into()))?;
        if r.status != Status::Completed {
            return Err(CommandError::NotAllowed {
                service: service.into(),
                status: status_name(r.status),
                what: "only a completed rollout can be undone (abort an active one)",
            }
            .into());
        }
        if !force {
            self.check_healthy(service, [r.stable.as_str()])?;
        }
        r.status = Status::RolledBack;
        r.reason = Some(format!("undone by {actor}"));
        let change = Change {
            kind: "rolled_back",
            reason: format!(
                "undo of rollout #{}: {} back to {}",
                r.id, r.candidate, r.stable
            ),
            weight_changed: true,
        };
        self.record(&mut state, r, &change, actor).await
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
        Ok(RolloutView::new(r, split))
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

    /// Runs a command, then wakes (or restarts) the service's driver.
    async fn command(
        self: &Arc<Self>,
        service: &str,
        actor: &str,
        f: impl FnOnce(&mut Rollout) -> Result<Outcome, CommandError>,
    ) -> Result<RolloutView, ControlError> {
        let (_, view) = self.transition(service, actor, f).await?;
        self.ensure_driver(service).await;
        Ok(view)
    }

    async fn transition(
        &self,
        service: &str,
        actor: &str,
        f: impl FnOnce(&mut Rollout) -> Result<Outcome, CommandError>,
    ) -> Result<(Outcome, RolloutView), ControlError> {
        let mut state = self.state.lock().await;
        if state.config.service(service).is_none() {
            return Err(ControlError::UnknownService(service.into()));
        }
        let mut r = state
            .rollouts
            .get(service)
            .cloned()
            .ok_or_else(|| ControlError::NoRollout(service.into()))?;
        let outcome = f(&mut r)?;
        let view = match &outcome {
            Outcome::Changed(change) => self.record(&mut state, r, change, actor).await?,
            _ => RolloutView::new(r, state.traffic[service].current.clone()),
        };
        Ok((outcome, view))
    }

    /// Persists a rollout's new state with the traffic it implies and an event; publishes
    /// when the traffic (or whether there is a candidate) changed.
    async fn record(
        &self,
        state: &mut State,
        mut r: Rollout,
        change: &Change,
        actor: &str,
    ) -> Result<RolloutView, ControlError> {
        r.updated_at = unix_ms();
        let service = r.service.clone();
        let before = state.traffic[&service].clone();
        let mut t = before.clone();
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
        if change.kind == "retired" && !t.retired.contains(&r.stable) {
            t.retired.push(r.stable.clone());
        }
        let ev = event(
            &service,
            Some(r.id),
            actor,
            change.kind,
            Some(&before.current),
            Some(&t.current),
            change.reason.clone(),
        );
        self.commit(Commit {
            traffic: vec![(service.clone(), t.record())],
            rollout: Some(r.clone()),
            events: vec![ev],
        })
        .await?;
        let was_active = state
            .rollouts
            .get(&service)
            .is_some_and(|o| o.id == r.id && o.status.is_active());
        let republish = t.current != before.current || was_active != r.status.is_active();
        tracing::info!(service, rollout = r.id, kind = change.kind, reason = %change.reason, split = %t.current, actor, "rollout");
        state.traffic.insert(service.clone(), t.clone());
        state.rollouts.insert(service.clone(), r.clone());
        if was_active && !r.status.is_active() || change.kind == "rolled_back" {
            let lane = state.end_hooks.entry(service.clone()).or_default().clone();
            self.after_end(&state.config, &r, change, lane);
        }
        if matches!(r.status, Status::Aborted | Status::RolledBack)
            && (was_active || change.kind == "rolled_back")
        {
            let cause = match (r.status, actor) {
                (Status::RolledBack, _) => "undo",
                (_, a @ ("guard" | "analysis" | "hook" | "deadline")) => a,
                _ => "manual",
            };
            let mut counts = self.counts.lock().expect("counts");
            *counts
                .rollbacks
                .entry((service.clone(), cause.to_string()))
                .or_default() += 1;
        }
        if republish {
            self.publish(state)?;
        }
        Ok(RolloutView::new(r, t.current))
    }

    /// Makes sure an active rollout has a driver, and wakes it.
    pub(super) async fn ensure_driver(self: &Arc<Self>, service: &str) {
        let mut state = self.state.lock().await;
        let active = state
            .rollouts
            .get(service)
            .is_some_and(|r| r.status.is_active());
        match state.drivers.get(service) {
            Some((wake, task)) if !task.is_finished() => wake.notify_one(),
            _ if active => {
                let wake = Arc::new(Notify::new());
                let lane = state.end_hooks.entry(service.into()).or_default().clone();
                let drive =
                    crate::rollout::driver::drive(self.clone(), service.into(), wake.clone());
                let task = tokio::spawn(async move {
                    // The previous attempt's end hook finishes first.
                    drop(lane.lock().await);
                    drive.await
                });
                state.drivers.insert(service.to_string(), (wake, task));
            }
            _ => {}
        }
    }

    /// The driver's side: one step of the state machine.
    pub(crate) async fn rollout_step(
        &self,
        service: &str,
    ) -> Result<(Outcome, RolloutView), ControlError> {
        self.transition(service, "schedule", |r| Ok(machine::step(r)))
            .await
    }

    /// Counts time spent in a timed pause (persisted, so a restart resumes with what was left).
    pub(crate) async fn rollout_pause_progress(
        &self,
        service: &str,
        step: usize,
        elapsed: Duration,
    ) -> Result<(), ControlError> {
        let mut state = self.state.lock().await;
        let Some(mut r) = state.rollouts.get(service).cloned() else {
            return Ok(());
        };
        if machine::pause_progress(&mut r, step, elapsed) {
            r.updated_at = unix_ms();
            self.commit(Commit {
                rollout: Some(r.clone()),
                ..Commit::default()
            })
            .await?;
            state.rollouts.insert(service.to_string(), r);
        }
        Ok(())
    }

    /// Counts an analysis verdict for /metrics.
    pub(crate) fn count_analysis(&self, service: &str, verdict: Verdict) {
        let v = serde_json::to_value(verdict)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
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
        self.transition(service, "analysis", |r| {
            Ok(machine::analysis_done(r, step, verdict, detail).unwrap_or(Outcome::Idle))
        })
        .await
        .map(|_| ())
    }

    pub(crate) async fn rollout_hook_done(
        &self,
        service: &str,
        step: usize,
        result: Result<String, String>,
    ) -> Result<(), ControlError> {
        self.transition(service, "hook", |r| {
            Ok(machine::hook_done(r, step, result).unwrap_or(Outcome::Idle))
        })
        .await
        .map(|_| ())
    }

    /// For the rollout's own side tasks (guard, background analysis): aborts and wakes the
    /// running driver, without ever starting one (which keeps their futures non-recursive).
    pub(crate) async fn abort_from(
        &self,
        service: &str,
        actor: &str,
        why: &str,
    ) -> Result<(), ControlError> {
        let why = format!("aborted by {actor}: {why}");
        self.transition(service, actor, |r| machine::abort(r, &why))
            .await?;
        self.wake_driver(service).await;
        Ok(())
    }

    /// Holds an active rollout for a person, saying why; see `abort_from`.
    pub(crate) async fn pause_from(
        &self,
        service: &str,
        actor: &str,
        why: &str,
    ) -> Result<(), ControlError> {
        self.transition(service, actor, |r| machine::pause(r, why))
            .await?;
        self.wake_driver(service).await;
        Ok(())
    }

    async fn wake_driver(&self, service: &str) {
        if let Some((wake, _)) = self.state.lock().await.drivers.get(service) {
            wake.notify_one();
        }
    }

    /// Looks up the live stable and candidate groups of a service (for analyses and the guard).
    pub fn groups_of(
        self: &Arc<Self>,
        service: &str,
        stable: &str,
        candidate: &str,
    ) -> crate::analysis::run::Groups {
        let (control, service, stable, candidate) = (
            self.clone(),
            service.to_string(),
            stable.to_string(),
            candidate.to_string(),
        );
        Arc::new(move || {
            let snap = control.snapshot();
            let s = snap.services.get(&service)?;
            Some((s.group(&stable)?.clone(), s.group(&candidate)?.clone()))
        })
    }

    pub(crate) async fn rollout_retired(
        &self,
        service: &str,
        step: usize,
        detail: &str,
    ) -> Result<(), ControlError> {
        self.transition(service, "schedule", |r| {
            Ok(machine::retired(r, step, detail).unwrap_or(Outcome::Idle))
        })
        .await
        .map(|_| ())
    }
}

impl Controller {
    /// When a rollout ends: the `after_rollout` or `on_rollback` hook, and for a rollback the
    /// notification webhook. Both run in the background; their results become events.
    fn after_end(
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
            "on_rollback"
        } else {
            "after_rollout"
        };
        if let Some(hook) = crate::rollout::hooks::by_point(&svc.hooks, point).cloned() {
            let (store, r) = (self.store.clone(), r.clone());
            // Taken now, while the state lock orders it before any later attempt's driver.
            let held = lane.clone().try_lock_owned();
            tokio::spawn(async move {
                let _held = match held {
                    Ok(g) => g,
                    Err(_) => lane.lock_owned().await,
                };
                let (kind, reason) = match crate::rollout::hooks::run(&hook, point, &r).await {
                    Ok(done) => ("hook", done),
                    Err(e) => ("hook_failed", e),
                };
                let ev = event(&r.service, Some(r.id), "hook", kind, None, None, reason);
                let _ = tokio::task::spawn_blocking(move || {
                    store.commit(&Commit {
                        events: vec![ev],
                        ..Commit::default()
                    })
                })
                .await;
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
            tokio::spawn(notify(url, text));
        }
    }
}

/// Posts a Slack-compatible message.
async fn notify(url: String, text: String) {
    use bytes::Bytes;
    use http_body_util::Full;
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let body = serde_json::json!({ "text": text }).to_string();
    let Ok(req) = http::Request::post(&url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
    else {
        return;
    };
    match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
        Ok(Ok(resp)) if resp.status().is_success() => {}
        Ok(Ok(resp)) => {
            tracing::warn!(%url, status = %resp.status(), "notification webhook refused the message")
        }
        Ok(Err(e)) => tracing::warn!(%url, error = %e, "notification webhook unreachable"),
        Err(_) => tracing::warn!(%url, "notification webhook timed out"),
    }
}

fn status_name(s: Status) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
