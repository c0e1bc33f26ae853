//! The one rule that makes an analysis's verdict from its checks' results, explained in
//! plain sentences. Pure (no clock, no I/O): the live run, a dry run and a backtest all
//! call [`judge`].
//!
//! - The **score** is the weighted share of checks that passed, 0–100 (each check's
//!   `weight`, 1 by default).
//! - A **critical** check that failed fails the analysis, score 0, whatever the others did.
//! - A check still unknown (inconclusive, erroneous, not finished, or passed on less
//!   evidence than it needs) counts whichever way could change the verdict: the analysis
//!   **passes** only if its score reaches `pass_score` with every unknown check counted as
//!   failed, and **fails** only if it stays below `marginal_score` with every unknown check
//!   counted as passed; otherwise it is **inconclusive** (the rollout pauses for a person).
//! - A check short of evidence never lets the analysis pass (see `evidence`).
//!
//! Without `pass_score` / `marginal_score` both are 100, which is the rule from before
//! scores: any failed check fails, any unknown one makes it inconclusive, all passing pass.

use serde::Serialize;

use super::AnalysisConfig;
use crate::rollout::machine::Verdict;

/// What became of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tallied {
    Passed,
    Failed,
    /// Inconclusive or erroneous beyond its limit.
    Inconclusive,
    /// Still measuring (the verdict was decided without it).
    Unfinished,
}

/// One check's result with its sentence ("check p99 failed 2 of 3 times (limit 1): …").
#[derive(Debug, Clone, PartialEq)]
pub struct CheckTally {
    pub check: String,
    pub result: Tallied,
    pub sentence: String,
    /// Set when the check judged fewer requests than it needs: why, in one sentence.
    pub short_of: Option<String>,
}

/// What an analysis concluded, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub verdict: Verdict,
    /// 0–100, rounded down.
    pub score: u32,
    pub detail: String,
}

/// The verdict of `analysis` from its checks' tallies (a check without a tally counts as
/// unfinished).
pub fn judge(analysis: &AnalysisConfig, tallies: &[CheckTally]) -> Report {
    let scoring = analysis.scoring;
    let tally = |name: &str| tallies.iter().find(|t| t.check == name);
    let (mut total, mut passed, mut unknown) = (0.0, 0.0, 0.0);
    let (mut n_passed, mut n_unknown) = (0, 0);
    let mut critical = None;
    for check in &analysis.checks {
        let w = check.judging.weight;
        total += w;
        match tally(&check.name) {
            Some(t) if t.result == Tallied::Passed && t.short_of.is_none() => {
                passed += w;
                n_passed += 1;
            }
            Some(t) if t.result == Tallied::Failed => {
                if check.judging.critical && critical.is_none() {
                    critical = Some(t);
                }
            }
            _ => {
                unknown += w;
                n_unknown += 1;
            }
        }
    }
    let share = |w: f64| {
        if total > 0.0 {
            100.0 * w / total
        } else {
            100.0
        }
    };
    let (worst, best) = (share(passed), share(passed + unknown));
    let short: Vec<&str> = tallies
        .iter()
        .filter(|t| t.result == Tallied::Passed)
        .filter_map(|t| t.short_of.as_deref())
        .collect();
    let verdict = if critical.is_some() || best < scoring.marginal {
        Verdict::Fail
    } else if worst >= scoring.pass && short.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Inconclusive
    };
    let score = if critical.is_some() { 0 } else { worst as u32 };
    let thresholds = if scoring.scored {
        format!("pass ≥ {}, marginal ≥ {}", scoring.pass, scoring.marginal)
    } else {
        "every check must pass".to_string()
    };
    let mut counted = format!("{n_passed} of {} checks passed", analysis.checks.len());
    if n_unknown > 0 {
        counted.push_str(&format!(", {n_unknown} not known"));
    }
    let score_line = match critical {
        Some(t) => format!(
            "score 0 of 100 ({thresholds}): critical check {} failed",
            t.check
        ),
        None => format!("score {score} of 100 ({thresholds}): {counted}"),
    };
    let sentences = |pick: &dyn Fn(&CheckTally) -> bool| -> Vec<&str> {
        tallies
            .iter()
            .filter(|t| pick(t))
            .map(|t| t.sentence.as_str())
            .collect()
    };
    // The reason that decided first: the critical failure, the checks that made the
    // verdict (without scores), or the score; then the rest of what was seen.
    let unknown_or_failed = |t: &CheckTally| {
        matches!(t.result, Tallied::Failed | Tallied::Inconclusive)
            && critical.is_none_or(|c| c.check != t.check)
    };
    let mut parts: Vec<String> = Vec::new();
    let mut add = |v: Vec<&str>| parts.extend(v.into_iter().map(str::to_string));
    if let Some(t) = critical {
        add(vec![&format!("{} (critical)", t.sentence), &score_line]);
        add(sentences(&unknown_or_failed));
    } else if scoring.scored {
        add(vec![&score_line]);
        add(sentences(&unknown_or_failed));
        add(short);
    } else {
        add(match verdict {
            Verdict::Fail => sentences(&|t| t.result == Tallied::Failed),
            Verdict::Inconclusive => {
                let mut v = short;
                v.extend(sentences(&|t| t.result == Tallied::Inconclusive));
                v
            }
            Verdict::Pass => sentences(&|t| t.result == Tallied::Passed),
        });
        add(vec![&score_line]);
    }
    parts.dedup();
    Report {
        verdict,
        score,
        detail: format!("{}: {}", analysis.name, parts.join("; ")),
    }
}
