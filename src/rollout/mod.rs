//! Rollouts: one release of a service from its stable group to a candidate group. Every
//! strategy compiles to a list of steps, so one state machine (`machine`) drives canaries,
//! blue-green and all-at-once alike, and the control plane's driver runs it over time. Pure types only:
//! nothing here does I/O or reaches the control plane.

pub mod machine;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::split::FULL_WEIGHT;

/// What a rollout does, step by step. Weights are the candidate's share in basis points.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    SetWeight {
        weight: u32,
    },
    /// `None`: until promoted.
    Pause {
        duration_ms: Option<u64>,
    },
    Analysis {
        name: String,
    },
    /// From this step on, `share` (basis points) of the service's requests are copied to the
    /// candidate and the copies' answers compared with the real ones (`crate::mirror`);
    /// then the step waits `duration_ms`, if any, like a timed pause. The share holds until
    /// a later mirror step changes it or the rollout ends.
    Mirror {
        share: u32,
        duration_ms: Option<u64>,
    },
    /// Blue-green's end: the old stable group is marked retired and the teardown command, if
    /// any, runs (its failure is recorded, the release stands).
    Retire {
        teardown: Option<String>,
    },
    /// A lifecycle hook (`before_traffic`, `before_promotion`, `after_traffic`); its failure
    /// aborts the rollout.
    Hook {
        point: HookPoint,
    },
}

/// Where in a rollout a lifecycle hook runs; its name is the configuration's key and what
/// the hook is told (`SWITCHYARD_HOOK`, `"hook"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookPoint {
    BeforeTraffic,
    BeforePromotion,
    AfterTraffic,
    AfterRollout,
    OnRollback,
}

impl HookPoint {
    pub fn as_str(self) -> &'static str {
        match self {
            HookPoint::BeforeTraffic => "before_traffic",
            HookPoint::BeforePromotion => "before_promotion",
            HookPoint::AfterTraffic => "after_traffic",
            HookPoint::AfterRollout => "after_rollout",
            HookPoint::OnRollback => "on_rollback",
        }
    }
}

impl std::fmt::Display for HookPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Step {
    pub fn describe(&self) -> String {
        match self {
            Step::SetWeight { weight } => {
                format!("set weight {}", crate::split::format_percent(*weight))
            }
            Step::Pause { duration_ms: None } => "pause until promoted".into(),
            Step::Pause {
                duration_ms: Some(ms),
            } => {
                format!(
                    "pause {}",
                    humantime::format_duration(Duration::from_millis(*ms))
                )
            }
            Step::Analysis { name } => format!("analysis {name}"),
            Step::Mirror { share, duration_ms } => {
                let share = crate::split::format_percent(*share);
                match duration_ms {
                    Some(ms) => format!(
                        "mirror {share} for {}",
                        humantime::format_duration(Duration::from_millis(*ms))
                    ),
                    None => format!("mirror {share}"),
                }
            }
            Step::Retire { teardown: None } => "retire the old group".into(),
            Step::Retire { teardown: Some(_) } => "retire the old group and tear it down".into(),
            Step::Hook { point } => format!("hook {point}"),
        }
    }
}

/// A strategy as configured: a name (for people) and its steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Strategy {
    pub name: String,
    pub steps: Vec<Step>,
    /// Blue-green: the candidate is reachable through preview overrides before the switch.
    #[serde(default)]
    pub blue_green: bool,
    /// An analysis that runs for the whole rollout; its failure rolls back.
    #[serde(default)]
    pub background_analysis: Option<String>,
    /// A group running a fresh copy of the stable version, given the candidate's weight
    /// (taken from stable) while the rollout runs, and the one the judge compares the
    /// candidate with: a long-running stable group differs from a just-started candidate in
    /// more than its version (warm caches, leaks, uptime), so comparing like with like is
    /// the fair test (Kayenta's and Argo Experiments' advice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    /// An A/B test (`Strategy::ab`): requests matching any of these go to the candidate
    /// while the rollout runs, whatever its weight (0 until it is promoted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ab_match: Vec<AbMatch>,
}

/// A rule of an A/B test: requests with this header, or this cookie, with one of the
/// values (globs), go to the candidate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbMatch {
    Header { name: String, values: Vec<String> },
    Cookie { name: String, values: Vec<String> },
}

/// Options of the blue-green strategy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlueGreen {
    /// `None`: wait for a manual promotion.
    pub auto_promote_after: Option<Duration>,
    /// After the switch: the window in which the old group stays ready for a one-command
    /// rollback, before it is retired.
    pub scale_down_delay: Duration,
    pub teardown: Option<String>,
    pub pre_promotion_analysis: Option<String>,
    pub post_promotion_analysis: Option<String>,
}

impl Strategy {
    pub fn canary(steps: Vec<Step>) -> Strategy {
        Strategy {
            name: "canary".into(),
            steps,
            blue_green: false,
            background_analysis: None,
            baseline: None,
            ab_match: Vec::new(),
        }
    }

    pub fn all_at_once() -> Strategy {
        Strategy {
            name: "all-at-once".into(),
            steps: vec![Step::SetWeight {
                weight: FULL_WEIGHT,
            }],
            blue_green: false,
            background_analysis: None,
            baseline: None,
            ab_match: Vec::new(),
        }
    }

    pub fn blue_green(o: &BlueGreen) -> Strategy {
        let ms = |d: Duration| d.as_millis() as u64;
        let mut steps = vec![Step::SetWeight { weight: 0 }];
        // The pre-promotion analysis judges the candidate on preview traffic.
        if let Some(a) = &o.pre_promotion_analysis {
            steps.push(Step::Analysis { name: a.clone() });
        }
        steps.push(Step::Pause {
            duration_ms: o.auto_promote_after.map(ms),
        });
        steps.push(Step::SetWeight {
            weight: FULL_WEIGHT,
        });
        if let Some(a) = &o.post_promotion_analysis {
            steps.push(Step::Analysis { name: a.clone() });
        }
        if !o.scale_down_delay.is_zero() {
            steps.push(Step::Pause {
                duration_ms: Some(ms(o.scale_down_delay)),
            });
        }
        steps.push(Step::Retire {
            teardown: o.teardown.clone(),
        });
        Strategy {
            name: "blue-green".into(),
            steps,
            blue_green: true,
            background_analysis: None,
            baseline: None,
            ab_match: Vec::new(),
        }
    }

    /// An A/B test (Flagger's): the candidate gets only the requests that match `rules`
    /// (weight 0), for `iterations` rounds of waiting `interval` and running `analysis`
    /// (a failure rolls back, an inconclusive one pauses), then all the traffic.
    pub fn ab(
        rules: Vec<AbMatch>,
        iterations: u32,
        interval: Duration,
        analysis: &str,
    ) -> Strategy {
        let mut steps = vec![Step::SetWeight { weight: 0 }];
        for _ in 0..iterations {
            steps.push(Step::Pause {
                duration_ms: Some(interval.as_millis() as u64),
            });
            steps.push(Step::Analysis {
                name: analysis.to_string(),
            });
        }
        steps.push(Step::SetWeight {
            weight: FULL_WEIGHT,
        });
        Strategy {
            name: "ab".into(),
            steps,
            blue_green: false,
            background_analysis: None,
            baseline: None,
            ab_match: rules,
        }
    }

    /// CodeDeploy-style presets: `canary-10pct-5m`, `canary-10pct-15m`,
    /// `linear-10pct-every-1m`, `linear-10pct-every-3m`, and any `canary-Npct-D` or
    /// `linear-Npct-every-D` of the same shape.
    pub fn preset(name: &str) -> Option<Strategy> {
        let pct = |s: &str| -> Option<u32> {
            let n: f64 = s.strip_suffix("pct")?.parse().ok()?;
            let bp = (n * 100.0).round();
            (bp > 0.0 && bp < FULL_WEIGHT as f64).then_some(bp as u32)
        };
        let dur = |s: &str| humantime::parse_duration(s).ok().filter(|d| !d.is_zero());
        let steps = if let Some(rest) = name.strip_prefix("canary-") {
            let (p, d) = rest.split_once('-')?;
            vec![
                Step::SetWeight { weight: pct(p)? },
                Step::Pause {
                    duration_ms: Some(dur(d)?.as_millis() as u64),
                },
            ]
        } else if let Some(rest) = name.strip_prefix("linear-") {
            let (p, d) = rest.split_once("-every-")?;
            let (inc, d) = (pct(p)?, dur(d)?.as_millis() as u64);
            let mut steps = Vec::new();
            let mut w = inc;
            while w < FULL_WEIGHT {
                steps.push(Step::SetWeight { weight: w });
                steps.push(Step::Pause {
                    duration_ms: Some(d),
                });
                w += inc;
            }
            steps
        } else {
            return None;
        };
        Some(Strategy {
            name: name.to_string(),
            steps,
            blue_green: false,
            background_analysis: None,
            baseline: None,
            ab_match: Vec::new(),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Progressing,
    Paused,
    /// The candidate took all traffic and became the stable group.
    Completed,
    /// Stopped with all traffic back on the stable group.
    Aborted,
    /// Completed, then undone: traffic went back to the group that was stable before.
    RolledBack,
}

impl Status {
    /// The name the API and the store use (serde's).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Progressing => "progressing",
            Status::Paused => "paused",
            Status::Completed => "completed",
            Status::Aborted => "aborted",
            Status::RolledBack => "rolled_back",
        }
    }

    pub fn is_active(self) -> bool {
        matches!(self, Status::Progressing | Status::Paused)
    }
}

/// Why a rollout went back to its stable group, for the rollbacks-by-cause counter. Each code
/// path names its own cause: it is never read from the actor string, which an API caller
/// can set to anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RollbackCause {
    /// The fast guard saw the candidate's error rate run away.
    Guard,
    /// A failed analysis (a step or the background analysis).
    Analysis,
    /// A failed lifecycle hook.
    Hook,
    /// An analysis or hook step ran past the progress deadline.
    Deadline,
    /// A person's (or a script's) abort.
    Manual,
    /// A completed rollout undone.
    Undo,
}

impl RollbackCause {
    pub fn as_str(self) -> &'static str {
        match self {
            RollbackCause::Guard => "guard",
            RollbackCause::Analysis => "analysis",
            RollbackCause::Hook => "hook",
            RollbackCause::Deadline => "deadline",
            RollbackCause::Manual => "manual",
            RollbackCause::Undo => "undo",
        }
    }
}

/// The persisted state of one rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub id: u64,
    pub service: String,
    pub stable: String,
    pub candidate: String,
    pub strategy: Strategy,
    /// Index of the current step; `steps.len()` once all ran.
    pub step: usize,
    /// The candidate's weight in basis points, as published.
    pub weight: u32,
    /// The share of requests copied to the candidate (basis points), set by mirror steps;
    /// copies go only while the rollout is active.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mirror: u32,
    pub status: Status,
    /// Why it is paused, aborted or what it waits for.
    pub reason: Option<String>,
    /// Time already spent in the current timed pause (checkpointed while it runs, so a
    /// restarted process resumes with the time it had left).
    pub pause_elapsed_ms: u64,
    /// Paused by a person (as opposed to a pause step waiting for promotion).
    pub held: bool,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// How many times it was retried after an abort.
    pub attempt: u32,
    /// In a fleet: the hook step the leader recorded as begun and not yet done. A new leader
    /// that finds it set does not run that hook again (it may have run): it holds the
    /// rollout for a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook_started: Option<usize>,
    /// The work due because an attempt ended — its `after_rollout` / `on_rollback` hook and,
    /// for a rollback, the notification — until the instance that drives has done it.
    /// Recorded with the end itself, so that a process killed or a leader lost before it ran
    /// leaves it to the next one (see `control::ending`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_work: Option<EndWork>,
    /// When it completed (unix ms): `undo` goes straight back only within the service's
    /// `rollback_window` after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<i64>,
    /// When the current step of the current attempt began: set by the control plane with the
    /// transition that entered it, and persisted, so that every view (and every instance of
    /// a fleet) says how long the step has run. Absent in a record written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_began: Option<StepBegan>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// When a step of an attempt began (see `Rollout::step_began`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepBegan {
    pub step: usize,
    pub attempt: u32,
    /// Unix milliseconds.
    pub at: i64,
}

/// The work due at the end of one attempt of a rollout (see `Rollout::end_work`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndWork {
    /// The attempt that ended, and how (`completed`, `aborted`, `rolled_back`).
    pub attempt: u32,
    pub status: Status,
    /// Why it ended, for the notification.
    pub reason: String,
    /// In a fleet: the leader recorded that it began. A new leader finding it begun does not
    /// run it again (it may have run) and says so in the history.
    #[serde(default)]
    pub begun: bool,
}

impl EndWork {
    /// The hook point due: `on_rollback` after a rollback, `after_rollout` after completion.
    pub fn point(&self) -> HookPoint {
        if self.rolled_back() {
            HookPoint::OnRollback
        } else {
            HookPoint::AfterRollout
        }
    }

    pub fn rolled_back(&self) -> bool {
        matches!(self.status, Status::Aborted | Status::RolledBack)
    }
}

impl Rollout {
    /// The group the judge (guard, analyses, the split check) compares the candidate with:
    /// the strategy's baseline when it has one, else stable.
    pub fn reference(&self) -> &str {
        self.strategy.baseline.as_deref().unwrap_or(&self.stable)
    }

    /// Every group the rollout sends traffic to: stable, the candidate and the baseline.
    pub fn groups(&self) -> impl Iterator<Item = &str> {
        [self.stable.as_str(), self.candidate.as_str()]
            .into_iter()
            .chain(self.strategy.baseline.as_deref())
    }

    /// The baseline's weight beside the candidate's `weight`: the same, taken from stable,
    /// as long as stable has it to give (past 50 % stable is at 0 and the baseline has the
    /// rest; at 100 % it has nothing). 0 without a baseline.
    pub fn baseline_weight(&self, weight: u32) -> u32 {
        match self.strategy.baseline {
            Some(_) => weight.min(FULL_WEIGHT.saturating_sub(weight)),
            None => 0,
        }
    }

    /// A rollout not yet started: step 0, the candidate at weight 0, no id (the store
    /// allocates it when the start is recorded), created and updated at `now` (Unix ms).
    pub fn new(
        service: &str,
        stable: &str,
        candidate: &str,
        strategy: Strategy,
        created_by: String,
        now: i64,
    ) -> Rollout {
        Rollout {
            id: 0,
            service: service.into(),
            stable: stable.into(),
            candidate: candidate.into(),
            strategy,
            step: 0,
            weight: 0,
            mirror: 0,
            status: Status::Progressing,
            reason: None,
            pause_elapsed_ms: 0,
            held: false,
            created_by,
            created_at: now,
            updated_at: now,
            attempt: 0,
            hook_started: None,
            end_work: None,
            completed_at: None,
            step_began: None,
        }
    }

    /// The share of requests copied to the candidate now: the mirror steps' while the
    /// rollout is active, none once it ended.
    pub fn mirror_share(&self) -> u32 {
        if self.status.is_active() {
            self.mirror
        } else {
            0
        }
    }

    pub fn current_step(&self) -> Option<&Step> {
        self.strategy.steps.get(self.step)
    }

    /// Records that the current step began at `now` unless it is the step (of the same
    /// attempt) already recorded: a hold, a resume or a checkpoint keep the time it began.
    pub fn mark_step_began(&mut self, now: i64) {
        let same = self
            .step_began
            .is_some_and(|b| (b.step, b.attempt) == (self.step, self.attempt));
        if !same {
            self.step_began = Some(StepBegan {
                step: self.step,
                attempt: self.attempt,
                at: now,
            });
        }
    }
}

#[cfg(test)]
#[path = "mod_tests.rs"]
mod tests;
