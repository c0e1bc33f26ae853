//! `Controller::backtest`: a past rollout's recorded seconds (`history`) read back from the
//! store and an analysis of the running configuration replayed over them
//! (`analysis::backtest`), beside what the rollout really did.

use std::sync::Arc;

use serde::Serialize;

use super::Controller;
use crate::analysis::backtest::{self, Replay};
use crate::analysis::external::Context;
use crate::rollout::{Rollout, Step};
use crate::store::{Event, EventQuery, StoreError};

/// Why a backtest cannot run.
#[derive(Debug, thiserror::Error)]
pub enum BacktestError {
    #[error("no service named \"{0}\"")]
    UnknownService(String),
    #[error("service \"{service}\" has no rollout #{rollout}")]
    UnknownRollout { service: String, rollout: u64 },
    #[error("rollout #{rollout} of {service} has no recorded seconds{which} (recorded while a rollout runs; the {keep} latest rollouts of a service are kept)", keep = crate::store::seconds::KEEP_ROLLOUTS)]
    NotRecorded {
        service: String,
        rollout: u64,
        /// `" for attempt N"` when one was asked for.
        which: String,
    },
    #[error("analysis: no analysis named \"{0}\" in the running configuration")]
    UnknownAnalysis(String),
    #[error("analysis: rollout #{0}'s strategy ran no analysis: name one")]
    NoAnalysis(u64),
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// What a backtest answers.
#[derive(Debug, Clone, Serialize)]
pub struct Backtest {
    pub service: String,
    pub rollout: u64,
    pub attempt: u32,
    pub stable: String,
    pub candidate: String,
    /// When the attempt began and its recording ended (unix ms).
    pub began_ms: i64,
    pub ended_ms: i64,
    /// Seconds recorded (those with traffic), and those the store could not take.
    pub seconds: usize,
    pub missing_seconds: u64,
    /// What the rollout really did.
    pub outcome: Outcome,
    pub replays: Vec<Replay>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// Its status as recorded now (`aborted`, `completed`, …; `progressing` while it runs).
    pub status: String,
    pub reason: Option<String>,
    /// When it ended (unix ms), once it did.
    pub at_ms: Option<i64>,
    /// Its latest attempt: an earlier one replayed ended in a retry.
    pub attempt: u32,
}

impl Controller {
    /// Replays `analysis` (default: those the rollout's strategy ran) over attempt `attempt`
    /// (default: the latest recorded) of rollout `rollout` of `service`.
    pub async fn backtest(
        &self,
        service: &str,
        rollout: u64,
        attempt: Option<u32>,
        analysis: Option<String>,
    ) -> Result<Backtest, BacktestError> {
        let config = self.snapshot().config.clone();
        if config.service(service).is_none() {
            return Err(BacktestError::UnknownService(service.to_string()));
        }
        let store = self.store.clone();
        let owned = service.to_string();
        let (record, mut recorded, ended) = tokio::task::spawn_blocking(move || {
            let record = store
                .rollouts(Some(&owned), usize::MAX >> 1)?
                .into_iter()
                .find(|r| r.id == rollout);
            let Some(r) = record else {
                return Ok((None, Default::default(), None));
            };
            // Its last end, as the history has it (the record's `updated_at` moves on with
            // the end work done after it).
            let q = EventQuery {
                service: Some(owned.clone()),
                rollout: Some(rollout),
                limit: Some(20),
                ..EventQuery::default()
            };
            let ends = ["aborted", "completed", "rolled_back"];
            let ended = (store.events(&q)?.into_iter()).find(|e| ends.contains(&e.kind.as_str()));
            let recorded = store.recorded_seconds(&owned, rollout)?;
            Ok::<_, StoreError>((Some(r), recorded, ended))
        })
        .await
        .expect("store task")?;
        let r = record.ok_or_else(|| BacktestError::UnknownRollout {
            service: service.to_string(),
            rollout,
        })?;
        let attempt = attempt.or_else(|| recorded.keys().next_back().copied());
        let rec = attempt.and_then(|a| recorded.remove(&a));
        let (Some(attempt), Some(rec)) = (attempt, rec) else {
            return Err(BacktestError::NotRecorded {
                service: service.to_string(),
                rollout,
                which: attempt.map_or(String::new(), |a| format!(" for attempt {a}")),
            });
        };
        let runs = runs(&r, analysis)?;
        let rec = Arc::new(rec);
        let began = rec.began().unwrap_or(r.created_at);
        let ctx = Context {
            service: service.to_string(),
            rollout: Some(r.id),
            stable: r.stable.clone(),
            candidate: r.candidate.clone(),
            baseline: r.strategy.baseline.clone(),
            weight: r.weight,
            analysis: String::new(),
            check: String::new(),
            since: 0,
            // Fingerprints are not recorded: a new_errors check is not replayable.
            errors: None,
        };
        let mut replays = Vec::new();
        for run in runs {
            let a = config
                .analysis(&run.name)
                .ok_or_else(|| BacktestError::UnknownAnalysis(run.name.clone()))?;
            let start = match run.step {
                Some(i) => rec.step_began(i),
                None => Some(began),
            };
            let Some(start) = start else {
                replays.push(not_reached(&run.name, run.step.unwrap_or(0)));
                continue;
            };
            let mut replay =
                backtest::replay(a, rec.clone(), start, began, run.background, &ctx).await;
            replay.step = run.step.map(|i| i + 1);
            replays.push(replay);
        }
        Ok(Backtest {
            service: service.to_string(),
            rollout,
            attempt,
            stable: r.stable.clone(),
            candidate: r.candidate.clone(),
            began_ms: began,
            ended_ms: rec.ended().unwrap_or(began),
            seconds: rec.seconds.len(),
            missing_seconds: rec.dropped,
            outcome: outcome(&r, ended),
            replays,
        })
    }
}

/// One replay to make: an analysis, from the beginning of its step (`None`: the attempt's).
struct Run {
    name: String,
    step: Option<usize>,
    background: bool,
}

/// The analyses the rollout's strategy ran, each from where it ran; or the one asked for,
/// from where the strategy ran it, else from the attempt's beginning.
fn runs(r: &Rollout, asked: Option<String>) -> Result<Vec<Run>, BacktestError> {
    let strategy = &r.strategy;
    let mut runs: Vec<Run> = (strategy.steps.iter().enumerate())
        .filter_map(|(i, s)| match s {
            Step::Analysis { name } => Some(Run {
                name: name.clone(),
                step: Some(i),
                background: false,
            }),
            _ => None,
        })
        .chain(strategy.background_analysis.iter().map(|name| Run {
            name: name.clone(),
            step: None,
            background: true,
        }))
        .collect();
    if let Some(name) = asked {
        runs.retain(|run| run.name == name);
        if runs.is_empty() {
            runs.push(Run {
                name,
                step: None,
                background: false,
            });
        }
    }
    if runs.is_empty() {
        return Err(BacktestError::NoAnalysis(r.id));
    }
    Ok(runs)
}

fn not_reached(name: &str, step: usize) -> Replay {
    Replay {
        analysis: name.to_string(),
        step: Some(step + 1),
        start_ms: 0,
        verdict: None,
        decided_at_ms: None,
        detail: format!(
            "{name}: step {} was not reached while recording: nothing to replay",
            step + 1
        ),
        checks: Vec::new(),
    }
}

/// What the rollout did: its status now, and when and why it ended (its end event, else
/// its record).
fn outcome(r: &Rollout, ended: Option<Event>) -> Outcome {
    let over = !r.status.is_active();
    let ended = ended.filter(|_| over);
    Outcome {
        status: r.status.as_str().to_string(),
        reason: r
            .reason
            .clone()
            .or_else(|| ended.as_ref().map(|e| e.reason.clone())),
        at_ms: over.then(|| ended.map_or(r.completed_at.unwrap_or(r.updated_at), |e| e.at)),
        attempt: r.attempt,
    }
}
