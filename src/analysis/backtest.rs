//! Backtest: an analysis replayed over a past rollout's recorded seconds, on a virtual clock.
//!
//! While a rollout runs, the control plane records each second of what the guard and the
//! analyses judge — the candidate's and stable's fleet-wide sums — and when each step began
//! (`control::history`, kept in the state store). A replay measures each built-in check at
//! the times the live run would have: every `interval` from the beginning of the step where
//! the analysis ran (or from the attempt's beginning for one that was not a step's), through
//! the same `run::measure` as the live run, with a `Windows` that reads the recorded seconds
//! at the virtual time instead of the live window. The analysis may have changed since: that
//! is the point (tune thresholds on past data). Prometheus, webhook and command checks asked
//! something outside that was not recorded: they are "not replayable".
//!
//! One difference with the live run: a live measurement sees the current second only up to
//! the moment it is taken, a replay only its recorded whole — scaled to the part gone by, as
//! if its answers came evenly (a second is recorded once complete).
//!
//! The tally (failures and inconclusive results against their limits, the first failure
//! deciding) mirrors `run::run`; it is meant to fold into one pure scoring function.

use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::external::Context;
use super::run::{self, Judged, Windows};
use super::score::{judge, CheckTally, Tallied};
use super::{AnalysisConfig, Check, Measurement, Provider};
use crate::metrics::{Second, Summary};
use crate::rollout::machine::Verdict;

/// One recorded second: when it began (unix ms) and what the fleet saw in it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedSecond {
    pub start_ms: i64,
    /// Instances that contributed (1 without a fleet).
    pub instances: u32,
    pub candidate: Second,
    pub stable: Second,
}

/// Step `step` (0-based) of the attempt began at `at_ms` (unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepMark {
    pub step: u32,
    pub at_ms: i64,
}

/// What was recorded of one attempt of a rollout, its seconds in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recording {
    pub seconds: Vec<RecordedSecond>,
    pub marks: Vec<StepMark>,
    /// Seconds that could not be stored (the store was unavailable): gaps in `seconds`.
    pub dropped: u64,
}

impl Recording {
    /// Adds another stored part of the same attempt, keeping the seconds in order (a second
    /// stored twice keeps its later copy) and the marks of each step once. Parts come in
    /// order from the stores, which costs an append; any other order a sort.
    pub fn merge(&mut self, part: Recording) {
        self.dropped += part.dropped;
        let in_order = match (self.seconds.last(), part.seconds.first()) {
            (Some(last), Some(next)) => last.start_ms < next.start_ms,
            _ => true,
        };
        self.seconds.extend(part.seconds);
        if !in_order {
            // Stable: of two copies of a second, the later part's stays after.
            self.seconds.sort_by_key(|s| s.start_ms);
            let mut kept: Vec<RecordedSecond> = Vec::with_capacity(self.seconds.len());
            for s in self.seconds.drain(..) {
                match kept.last_mut() {
                    Some(last) if last.start_ms == s.start_ms => *last = s,
                    _ => kept.push(s),
                }
            }
            self.seconds = kept;
        }
        for m in part.marks {
            if !self.marks.iter().any(|k| k.step == m.step) {
                self.marks.push(m);
            }
        }
        self.marks.sort_by_key(|m| m.at_ms);
    }

    /// When the attempt began as recorded: its first step mark, else its first second.
    pub fn began(&self) -> Option<i64> {
        let first = self.seconds.first().map(|s| s.start_ms);
        self.marks.first().map(|m| m.at_ms).or(first)
    }

    /// The end of the last recorded second.
    pub fn ended(&self) -> Option<i64> {
        self.seconds.last().map(|s| s.start_ms + 1000)
    }

    /// When step `step` (0-based) began, if it was reached while recording.
    pub fn step_began(&self, step: usize) -> Option<i64> {
        self.marks
            .iter()
            .find(|m| m.step as usize == step)
            .map(|m| m.at_ms)
    }

    /// What a live measurement at `now_ms` would have judged: the second containing it and
    /// the `window` of whole seconds before it (`metrics::last_range`'s rule), none that
    /// began before the second containing `since_ms`. Live, the current second is counted
    /// only up to the moment of the measurement: its recorded whole is scaled to the part
    /// gone by, so that a replay does not see up to a second ahead.
    fn judged(&self, now_ms: i64, window: Duration, since_ms: i64) -> Judged {
        let secs = window.as_secs().max(1) as i64;
        let lowest = (now_ms - (secs + 1) * 1000).max(since_ms - 1000);
        let mut candidate = Summary::default();
        let mut stable = Summary::default();
        let mut instances = 1;
        for s in self
            .seconds
            .iter()
            .filter(|s| s.start_ms > lowest && s.start_ms <= now_ms)
        {
            let gone = (now_ms - s.start_ms) as f64 / 1000.0;
            candidate.add(&part(&s.candidate, gone));
            stable.add(&part(&s.stable, gone));
            instances = instances.max(s.instances as usize);
        }
        let seconds = ((now_ms - lowest) / 1000).max(1) as u64;
        candidate.seconds = seconds;
        stable.seconds = seconds;
        Judged {
            candidate,
            stable,
            instances,
        }
    }
}

/// The share `gone` (below 1: the second was still running) of a second's counts, rounded.
fn part(s: &Second, gone: f64) -> Second {
    if gone >= 1.0 {
        return s.clone();
    }
    let of = |n: u64| (n as f64 * gone).round() as u64;
    Second {
        second: s.second,
        requests: of(s.requests),
        classes: s.classes.map(of),
        failures: s.failures.map(of),
        client_errors: of(s.client_errors),
        mirror: s.mirror.map(of),
        latency: (s.latency.iter())
            .map(|&(b, n)| (b, of(n as u64) as u32))
            .collect(),
    }
}

/// One replayed measurement and when it would have been taken.
#[derive(Debug, Clone, Serialize)]
pub struct Timed {
    /// Unix ms.
    pub at_ms: i64,
    /// Since the attempt began.
    pub offset_ms: i64,
    #[serde(flatten)]
    pub measurement: Measurement,
}

/// How one check fared in the replay.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReplay {
    pub check: String,
    /// False for a Prometheus, webhook or command check: nothing of it was recorded.
    pub replayable: bool,
    /// `None`: not replayable, or the recording ended before the check was done.
    pub verdict: Option<Verdict>,
    /// When it was decided (unix ms).
    pub decided_at_ms: Option<i64>,
    pub detail: String,
    pub measurements: Vec<Timed>,
}

/// One analysis replayed from one beginning.
#[derive(Debug, Clone, Serialize)]
pub struct Replay {
    pub analysis: String,
    /// The analysis step (1-based) whose beginning the replay starts from; `None` for an
    /// analysis replayed from the attempt's beginning (the background one, or one named
    /// that the strategy did not run).
    pub step: Option<usize>,
    /// Unix ms of the virtual clock's start.
    pub start_ms: i64,
    /// What the analysis would have decided (`None`: nothing decided within the recording,
    /// or only checks that cannot be replayed would have).
    pub verdict: Option<Verdict>,
    pub decided_at_ms: Option<i64>,
    pub detail: String,
    pub checks: Vec<CheckReplay>,
}

/// Replays `analysis` over `rec` from `start_ms`: each built-in check measured every
/// `interval` (a step's analysis `count` times; the background one until a result that is
/// not a pass, as it runs live) while the recording lasts.
pub async fn replay(
    analysis: &AnalysisConfig,
    rec: Arc<Recording>,
    start_ms: i64,
    began_ms: i64,
    background: bool,
    ctx: &Context,
) -> Replay {
    let now = Arc::new(AtomicI64::new(start_ms));
    // `since` is the replay's own: unix ms (the live run's is a window second).
    let windows: Windows = {
        let (rec, now) = (rec.clone(), now.clone());
        Arc::new(move |window, since| Some(rec.judged(now.load(Relaxed), window, since as i64)))
    };
    let ctx = Context {
        analysis: analysis.name.clone(),
        since: start_ms.max(0) as u64,
        ..ctx.clone()
    };
    let end = rec.ended().unwrap_or(start_ms);
    let mut checks = Vec::new();
    for check in &analysis.checks {
        let ctx = Context {
            check: check.name.clone(),
            ..ctx.clone()
        };
        let timing = Timing {
            start_ms,
            began_ms,
            end_ms: end,
        };
        checks.push(replay_check(check, &windows, &now, &ctx, timing, background).await);
    }
    let (verdict, decided_at_ms, detail) = decide(analysis, &checks, background);
    Replay {
        analysis: analysis.name.clone(),
        step: None,
        start_ms,
        verdict,
        decided_at_ms,
        detail,
        checks,
    }
}

#[derive(Debug, Clone, Copy)]
struct Timing {
    start_ms: i64,
    began_ms: i64,
    end_ms: i64,
}

async fn replay_check(
    check: &Check,
    windows: &Windows,
    now: &AtomicI64,
    ctx: &Context,
    t: Timing,
    background: bool,
) -> CheckReplay {
    let mut out = CheckReplay {
        check: check.name.clone(),
        replayable: !matches!(
            check.provider,
            Provider::Prometheus { .. } | Provider::Webhook { .. } | Provider::Command { .. }
        ),
        verdict: None,
        decided_at_ms: None,
        detail: String::new(),
        measurements: Vec::new(),
    };
    if !out.replayable {
        out.detail = format!(
            "check {}: not replayable (its provider is outside switchyard; nothing of it was recorded)",
            check.name
        );
        return out;
    }
    let step = (check.interval.as_millis() as i64).max(1);
    let mut tally = run::Tally::new(check);
    for k in 1.. {
        let at = t.start_ms + k * step;
        if !background && tally.taken >= check.count.max(1) {
            let (result, sentence) = tally.end();
            out.verdict = Some(verdict(result));
            out.detail = sentence;
            out.decided_at_ms = out.measurements.last().map(|m| m.at_ms);
            break;
        }
        if at > t.end_ms {
            out.detail = format!(
                "check {}: the recording ended after {} measurement{}{}",
                check.name,
                tally.taken,
                if tally.taken == 1 { "" } else { "s" },
                if background {
                    " without a result that is not a pass"
                } else {
                    ""
                }
            );
            break;
        }
        now.store(at, Relaxed);
        let m = run::measure(check, windows, ctx).await;
        let decided = tally.add(&m);
        out.measurements.push(Timed {
            at_ms: at,
            offset_ms: at - t.began_ms,
            measurement: m,
        });
        if let Some((result, detail)) = decided {
            out.verdict = Some(verdict(result));
            out.detail = detail;
            out.decided_at_ms = Some(at);
            break;
        }
    }
    out
}

/// The analysis' verdict from its checks', by the one rule the live run uses
/// (`score::judge`), asked as the live run asks it: each time a check finishes, in the
/// order they finished; a failure decides at once, and in the background any result that
/// is not a pass. A check not replayable or cut short by the recording's end is unknown:
/// the verdict stands only if it would whatever that check gave, else it is undecided.
fn decide(
    analysis: &AnalysisConfig,
    checks: &[CheckReplay],
    background: bool,
) -> (Option<Verdict>, Option<i64>, String) {
    let tally = |c: &CheckReplay| CheckTally {
        check: c.check.clone(),
        result: match c.verdict {
            Some(Verdict::Pass) => Tallied::Passed,
            Some(Verdict::Fail) => Tallied::Failed,
            Some(Verdict::Inconclusive) => Tallied::Inconclusive,
            None => Tallied::Unfinished,
        },
        sentence: c.detail.clone(),
        short_of: None,
    };
    let mut done: Vec<&CheckReplay> = checks.iter().filter(|c| c.verdict.is_some()).collect();
    done.sort_by_key(|c| c.decided_at_ms);
    let mut tallies = Vec::new();
    for c in &done {
        tallies.push(tally(c));
        let report = judge(analysis, &tallies);
        let unsure = c.verdict != Some(Verdict::Pass);
        if report.verdict == Verdict::Fail || (background && unsure) {
            return (Some(report.verdict), c.decided_at_ms, report.detail);
        }
    }
    let open: Vec<&CheckReplay> = checks.iter().filter(|c| c.verdict.is_none()).collect();
    tallies.extend(open.iter().map(|c| tally(c)));
    let report = judge(analysis, &tallies);
    let last = done.iter().filter_map(|c| c.decided_at_ms).max();
    if !open.is_empty() && report.verdict == Verdict::Inconclusive {
        let why: Vec<&str> = open.iter().map(|c| c.detail.as_str()).collect();
        let name = &analysis.name;
        return (None, None, format!("{name}: undecided: {}", why.join("; ")));
    }
    (Some(report.verdict), last, report.detail)
}

#[cfg(test)]
#[path = "backtest_tests.rs"]
mod tests;

/// A check's result as the verdict a backtest reports.
fn verdict(result: Tallied) -> Verdict {
    match result {
        Tallied::Passed => Verdict::Pass,
        Tallied::Failed => Verdict::Fail,
        Tallied::Inconclusive | Tallied::Unfinished => Verdict::Inconclusive,
    }
}
