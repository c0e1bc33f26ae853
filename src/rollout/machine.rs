//! The rollout state machine, free of time and I/O: `step` makes one transition or says what
//! to wait for; commands (promote, pause, …) are plain functions on the state. The driver
//! persists each change before it publishes weights.

use std::time::Duration;

use super::{HookPoint, Rollout, Status, Step};
use crate::audit::EventKind;
use crate::split::{format_percent, FULL_WEIGHT};

/// What `step` did, or what the rollout waits for.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// State changed: persist it, and publish when the weight changed.
    Changed(Change),
    /// A timed pause with this much left.
    Sleep(Duration),
    /// Nothing to do until a command (paused, waiting for promotion, or finished).
    Idle,
    /// The current step is an analysis: run it, then report with `analysis_done`.
    Analysis(String),
    /// The current step retires the old group: run the teardown, then `retired`.
    Retire(Option<String>),
    /// The current step is a hook: run it, then report with `hook_done`.
    Hook(HookPoint),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub kind: EventKind,
    pub reason: String,
    pub weight_changed: bool,
}

impl Change {
    fn outcome(kind: EventKind, reason: impl Into<String>, weight_changed: bool) -> Outcome {
        Outcome::Changed(Change {
            kind,
            reason: reason.into(),
            weight_changed,
        })
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommandError {
    #[error("the rollout of {service} is {status}: {what}")]
    NotAllowed {
        service: String,
        status: String,
        what: &'static str,
    },
}

fn not_allowed(r: &Rollout, what: &'static str) -> CommandError {
    CommandError::NotAllowed {
        service: r.service.clone(),
        status: r.status.as_str().to_string(),
        what,
    }
}

/// Everything back to stable: no weight and no copies. Whether that changed the traffic.
fn back_to_stable(r: &mut Rollout) -> bool {
    let changed = r.weight != 0 || r.mirror != 0;
    r.weight = 0;
    r.mirror = 0;
    changed
}

/// Advances by at most one transition.
pub fn step(r: &mut Rollout) -> Outcome {
    if r.status != Status::Progressing {
        return Outcome::Idle;
    }
    let n = r.step + 1;
    match r.current_step().cloned() {
        None => {
            let changed = r.weight != FULL_WEIGHT;
            r.weight = FULL_WEIGHT;
            r.mirror = 0;
            r.status = Status::Completed;
            r.reason = None;
            Change::outcome(
                EventKind::Completed,
                format!("{} now takes all traffic", r.candidate),
                changed,
            )
        }
        Some(Step::SetWeight { weight }) => {
            let changed = r.weight != weight;
            r.weight = weight;
            r.step += 1;
            Change::outcome(
                EventKind::Weight,
                format!("step {n}: {} at {}", r.candidate, format_percent(weight)),
                changed,
            )
        }
        Some(Step::Pause { duration_ms: None }) => {
            r.status = Status::Paused;
            r.reason = Some(format!("step {n}: waiting for promotion"));
            Change::outcome(
                EventKind::Paused,
                format!("step {n}: waiting for promotion"),
                false,
            )
        }
        Some(Step::Pause {
            duration_ms: Some(ms),
        }) => {
            if r.pause_elapsed_ms >= ms {
                r.step += 1;
                r.pause_elapsed_ms = 0;
                Change::outcome(
                    EventKind::Step,
                    format!(
                        "step {n}: pause of {} over",
                        humantime::format_duration(Duration::from_millis(ms))
                    ),
                    false,
                )
            } else {
                Outcome::Sleep(Duration::from_millis(ms - r.pause_elapsed_ms))
            }
        }
        Some(Step::Mirror { share, duration_ms }) => {
            let what = format!(
                "{} of requests copied to {}",
                format_percent(share),
                r.candidate
            );
            if r.mirror != share {
                r.mirror = share;
                return Change::outcome(EventKind::Mirror, format!("step {n}: {what}"), true);
            }
            match duration_ms {
                Some(ms) if r.pause_elapsed_ms < ms => {
                    Outcome::Sleep(Duration::from_millis(ms - r.pause_elapsed_ms))
                }
                _ => {
                    r.step += 1;
                    r.pause_elapsed_ms = 0;
                    Change::outcome(EventKind::Step, format!("step {n}: {what}: over"), false)
                }
            }
        }
        Some(Step::Analysis { name }) => Outcome::Analysis(name),
        Some(Step::Retire { teardown }) => Outcome::Retire(teardown),
        Some(Step::Hook { point }) => Outcome::Hook(point),
    }
}

/// The hook of the current step finished: success moves on, failure aborts.
pub fn hook_done(r: &mut Rollout, step: usize, result: Result<String, String>) -> Option<Outcome> {
    if r.step != step || r.status != Status::Progressing {
        return None;
    }
    let n = step + 1;
    r.hook_started = None;
    Some(match result {
        Ok(detail) => {
            r.step += 1;
            Change::outcome(EventKind::Hook, format!("step {n}: {detail}"), false)
        }
        Err(detail) => {
            let changed = back_to_stable(r);
            r.status = Status::Aborted;
            r.reason = Some(format!("step {n}: {detail}"));
            Change::outcome(EventKind::Aborted, format!("step {n}: {detail}"), changed)
        }
    })
}

/// Time spent in the current timed pause, if it is still the same step.
pub fn pause_progress(r: &mut Rollout, step: usize, elapsed: Duration) -> bool {
    let same = r.status == Status::Progressing
        && r.step == step
        && matches!(
            r.current_step(),
            Some(
                Step::Pause {
                    duration_ms: Some(_)
                } | Step::Mirror {
                    duration_ms: Some(_),
                    ..
                }
            )
        );
    if same {
        r.pause_elapsed_ms += elapsed.as_millis() as u64;
    }
    same
}

/// Moves past the current pause or analysis step (resuming if held). With `full`, goes
/// straight to all traffic on the candidate (keeping a blue-green retire step).
pub fn promote(r: &mut Rollout, full: bool) -> Result<Outcome, CommandError> {
    if !r.status.is_active() {
        return Err(not_allowed(r, "only an active rollout can be promoted"));
    }
    r.status = Status::Progressing;
    r.held = false;
    r.reason = None;
    r.pause_elapsed_ms = 0;
    if full {
        let retire = r
            .strategy
            .steps
            .iter()
            .position(|s| matches!(s, Step::Retire { .. }));
        r.step = retire.unwrap_or(r.strategy.steps.len());
        let changed = r.weight != FULL_WEIGHT;
        r.weight = FULL_WEIGHT;
        return Ok(Change::outcome(
            EventKind::Promoted,
            format!("promoted fully: {} takes all traffic", r.candidate),
            changed,
        ));
    }
    let n = r.step + 1;
    if matches!(
        r.current_step(),
        Some(Step::Pause { .. } | Step::Analysis { .. } | Step::Hook { .. } | Step::Mirror { .. })
    ) {
        r.step += 1;
        return Ok(Change::outcome(
            EventKind::Promoted,
            format!("step {n} promoted"),
            false,
        ));
    }
    Ok(Change::outcome(
        EventKind::Promoted,
        "resumed by promotion",
        false,
    ))
}

/// A person holds the rollout where it is; timed pauses stop counting.
pub fn pause(r: &mut Rollout, why: &str) -> Result<Outcome, CommandError> {
    if !r.status.is_active() {
        return Err(not_allowed(r, "only an active rollout can be paused"));
    }
    r.status = Status::Paused;
    r.held = true;
    r.reason = Some(why.to_string());
    Ok(Change::outcome(EventKind::Paused, why.to_string(), false))
}

pub fn resume(r: &mut Rollout) -> Result<Outcome, CommandError> {
    if r.status != Status::Paused {
        return Err(not_allowed(r, "only a paused rollout can be resumed"));
    }
    if !r.held {
        return Err(not_allowed(
            r,
            "it waits for promotion, not for resume: use promote",
        ));
    }
    r.status = Status::Progressing;
    r.held = false;
    r.reason = None;
    Ok(Change::outcome(EventKind::Resumed, "resumed", false))
}

/// All traffic back to the stable group at once.
pub fn abort(r: &mut Rollout, why: &str) -> Result<Outcome, CommandError> {
    if !r.status.is_active() {
        return Err(not_allowed(r, "only an active rollout can be aborted"));
    }
    let changed = back_to_stable(r);
    r.status = Status::Aborted;
    r.held = false;
    r.reason = Some(why.to_string());
    Ok(Change::outcome(
        EventKind::Aborted,
        why.to_string(),
        changed,
    ))
}

/// Starts an aborted rollout again from its first step.
pub fn retry(r: &mut Rollout) -> Result<Outcome, CommandError> {
    if r.status != Status::Aborted {
        return Err(not_allowed(r, "only an aborted rollout can be retried"));
    }
    r.status = Status::Progressing;
    r.step = 0;
    r.mirror = 0;
    r.pause_elapsed_ms = 0;
    r.reason = None;
    r.attempt += 1;
    Ok(Change::outcome(
        EventKind::Retried,
        format!("attempt {}", r.attempt + 1),
        false,
    ))
}

/// The analysis of the current step finished: pass moves on, fail aborts, inconclusive
/// holds the rollout for a person.
pub fn analysis_done(
    r: &mut Rollout,
    step: usize,
    verdict: Verdict,
    detail: &str,
) -> Option<Outcome> {
    if r.step != step || r.status != Status::Progressing {
        return None;
    }
    let n = step + 1;
    Some(match verdict {
        Verdict::Pass => {
            r.step += 1;
            Change::outcome(
                EventKind::Analysis,
                format!("step {n}: analysis passed: {detail}"),
                false,
            )
        }
        Verdict::Fail => {
            let changed = back_to_stable(r);
            r.status = Status::Aborted;
            r.reason = Some(format!("step {n}: analysis failed: {detail}"));
            Change::outcome(
                EventKind::Aborted,
                format!("step {n}: analysis failed: {detail}"),
                changed,
            )
        }
        Verdict::Inconclusive => {
            r.status = Status::Paused;
            r.held = true;
            r.reason = Some(format!("step {n}: analysis inconclusive: {detail}"));
            Change::outcome(
                EventKind::Paused,
                format!("step {n}: analysis inconclusive: {detail}"),
                false,
            )
        }
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail,
    Inconclusive,
}

impl Verdict {
    /// The name the API, the store and /metrics use (serde's).
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Inconclusive => "inconclusive",
        }
    }
}

/// The old group was retired (teardown ran, or there was none).
pub fn retired(r: &mut Rollout, step: usize, detail: &str) -> Option<Outcome> {
    if r.step != step || r.status != Status::Progressing {
        return None;
    }
    r.step += 1;
    Some(Change::outcome(
        EventKind::Retired,
        format!("{} retired{detail}", r.stable),
        false,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::Strategy;

    fn rollout(steps: Vec<Step>) -> Rollout {
        Rollout {
            id: 1,
            ..Rollout::new(
                "shop",
                "blue",
                "green",
                Strategy::canary(steps),
                "test".into(),
                0,
            )
        }
    }

    fn kind(o: Outcome) -> &'static str {
        match o {
            Outcome::Changed(c) => c.kind.as_str(),
            other => panic!("expected a change, got {other:?}"),
        }
    }

    #[test]
    fn a_canary_walks_its_steps_and_completes() {
        let mut r = rollout(vec![
            Step::SetWeight { weight: 500 },
            Step::Pause {
                duration_ms: Some(1000),
            },
            Step::SetWeight { weight: 5000 },
            Step::Pause { duration_ms: None },
        ]);
        assert_eq!(kind(step(&mut r)), "weight");
        assert_eq!(r.weight, 500);
        assert_eq!(step(&mut r), Outcome::Sleep(Duration::from_millis(1000)));
        assert!(pause_progress(&mut r, 1, Duration::from_millis(400)));
        assert_eq!(step(&mut r), Outcome::Sleep(Duration::from_millis(600)));
        assert!(pause_progress(&mut r, 1, Duration::from_millis(600)));
        assert_eq!(kind(step(&mut r)), "step");
        assert_eq!(kind(step(&mut r)), "weight");
        assert_eq!(kind(step(&mut r)), "paused");
        assert_eq!(step(&mut r), Outcome::Idle);
        assert_eq!(kind(promote(&mut r, false).unwrap()), "promoted");
        assert_eq!(kind(step(&mut r)), "completed");
        assert_eq!((r.status, r.weight), (Status::Completed, FULL_WEIGHT));
        assert!(
            promote(&mut r, false).is_err(),
            "a completed rollout cannot be promoted"
        );
    }

    #[test]
    fn a_held_pause_stops_counting_and_abort_returns_all_traffic() {
        let mut r = rollout(vec![
            Step::SetWeight { weight: 2500 },
            Step::Pause {
                duration_ms: Some(1000),
            },
        ]);
        step(&mut r);
        pause(&mut r, "looking at graphs").unwrap();
        assert_eq!(step(&mut r), Outcome::Idle);
        assert!(!pause_progress(&mut r, 1, Duration::from_millis(5000)));
        resume(&mut r).unwrap();
        assert_eq!(step(&mut r), Outcome::Sleep(Duration::from_millis(1000)));
        match abort(&mut r, "bad").unwrap() {
            Outcome::Changed(c) => assert!(c.weight_changed),
            o => panic!("{o:?}"),
        }
        assert_eq!((r.status, r.weight), (Status::Aborted, 0));
        assert!(abort(&mut r, "again").is_err());
        retry(&mut r).unwrap();
        assert_eq!((r.status, r.step, r.attempt), (Status::Progressing, 0, 1));
    }

    #[test]
    fn full_promotion_keeps_the_blue_green_retire_step() {
        let mut r = rollout(vec![]);
        r.strategy = Strategy::blue_green(&crate::rollout::BlueGreen {
            auto_promote_after: None,
            scale_down_delay: Duration::from_secs(60),
            teardown: Some("true".into()),
            pre_promotion_analysis: None,
            post_promotion_analysis: None,
        });
        assert_eq!(kind(step(&mut r)), "weight");
        assert_eq!(kind(step(&mut r)), "paused");
        promote(&mut r, true).unwrap();
        assert_eq!(r.weight, FULL_WEIGHT);
        assert_eq!(step(&mut r), Outcome::Retire(Some("true".into())));
        let at = r.step;
        retired(&mut r, at, "").unwrap();
        assert_eq!(kind(step(&mut r)), "completed");
    }

    #[test]
    fn a_mirror_step_sets_the_share_waits_and_the_share_ends_with_the_rollout() {
        let mut r = rollout(vec![
            Step::Mirror {
                share: FULL_WEIGHT,
                duration_ms: Some(1000),
            },
            Step::Mirror {
                share: 5000,
                duration_ms: None,
            },
        ]);
        match step(&mut r) {
            Outcome::Changed(c) => {
                assert_eq!(c.kind.as_str(), "mirror");
                assert!(c.weight_changed, "the data plane must be told");
            }
            o => panic!("{o:?}"),
        }
        assert_eq!((r.mirror, r.weight, r.step), (FULL_WEIGHT, 0, 0));
        assert_eq!(step(&mut r), Outcome::Sleep(Duration::from_millis(1000)));
        assert!(pause_progress(&mut r, 0, Duration::from_millis(1000)));
        assert_eq!(kind(step(&mut r)), "step");
        assert_eq!(kind(step(&mut r)), "mirror");
        assert_eq!(kind(step(&mut r)), "step", "no duration: on at once");
        assert_eq!(r.mirror_share(), 5000);
        // An abort at weight 0 still changes what the data plane does: the copies stop.
        match abort(&mut r, "no").unwrap() {
            Outcome::Changed(c) => assert!(c.weight_changed),
            o => panic!("{o:?}"),
        }
        assert_eq!((r.mirror, r.mirror_share()), (0, 0));
        // A held mirror step can be promoted past, like a pause.
        let mut r = rollout(vec![Step::Mirror {
            share: 100,
            duration_ms: Some(60_000),
        }]);
        step(&mut r);
        promote(&mut r, false).unwrap();
        assert_eq!((r.step, r.mirror), (1, 100));
        r.status = Status::Completed;
        assert_eq!(r.mirror_share(), 0, "a finished rollout copies nothing");
    }

    #[test]
    fn analysis_verdicts() {
        let mut r = rollout(vec![Step::Analysis { name: "a".into() }]);
        assert_eq!(step(&mut r), Outcome::Analysis("a".into()));
        analysis_done(&mut r, 0, Verdict::Inconclusive, "too few requests").unwrap();
        assert_eq!((r.status, r.held), (Status::Paused, true));
        resume(&mut r).unwrap();
        analysis_done(&mut r, 0, Verdict::Fail, "error rate 30%").unwrap();
        assert_eq!(r.status, Status::Aborted);
        assert!(
            analysis_done(&mut r, 0, Verdict::Pass, "late").is_none(),
            "a stale verdict is ignored"
        );
    }
}
