//! The `new_errors` check: a failed answer only the candidate gives is a finding, even when
//! the candidate's overall error rate is within bounds (a new bug on one route, at a low
//! rate, hides in a rate).
//!
//! The rule: over the check's seconds — since the analysis began, within its `window`
//! (11 minutes by default: all the window keeps), the same seconds for both groups and
//! summed over the fleet — a fingerprint (`crate::fingerprint`) the candidate gave
//! `min_count` times or more and stable gave not once is new. Any new fingerprint fails the
//! measurement with one sentence per finding ("green answered 503 'db pool exhausted <n>'
//! 12 times on route api since 10:04:31; blue never did"). Failures beyond the fingerprints
//! a group keeps count as that group's overflow: the candidate's overflow, `min_count` or
//! more, is a finding too; stable's overflow means stable may have given what looks new,
//! so a would-be finding is then inconclusive, never a failure or a pass. With no finding,
//! too few candidate requests (`min_requests`) is inconclusive, as for every built-in check.

use super::external::Context;
use super::{Check, Measurement, Outcome};
use crate::fingerprint::{sentence, Compared, Row, CAP};
use crate::metrics;

/// Findings named in one measurement's detail; more are counted.
const NAMED: usize = 3;

/// One measurement: the fingerprints of the check's seconds, compared; `requests`: the
/// candidate's over the same seconds.
pub fn measure(check: &Check, min_count: u64, requests: u64, ctx: &Context) -> Measurement {
    let (outcome, value, detail) = match &ctx.errors {
        None => (
            Outcome::Error,
            None,
            "the groups' fingerprints are not available here".to_string(),
        ),
        Some(source) => {
            let (from, to) = metrics::last_range(check.window, ctx.since);
            match source.over(from, to) {
                None => (
                    Outcome::Error,
                    None,
                    format!(
                        "groups {} / {} are not in the running configuration",
                        ctx.reference(),
                        ctx.candidate
                    ),
                ),
                Some(c) => judge(check, min_count, requests, ctx, &c),
            }
        }
    };
    Measurement {
        check: check.name.clone(),
        outcome,
        value,
        detail,
        requests: None,
    }
}

fn judge(
    check: &Check,
    min_count: u64,
    requests: u64,
    ctx: &Context,
    c: &Compared,
) -> (Outcome, Option<f64>, String) {
    let (cand, stable) = (&ctx.candidate, ctx.reference());
    let findings: Vec<Row> = c.rows(min_count).into_iter().filter(|r| r.new).collect();
    let overflowed = c.candidate.overflow >= min_count;
    let found = findings.len() + usize::from(overflowed);
    if found > 0 && c.stable.overflow > 0 {
        return (
            Outcome::Inconclusive,
            None,
            format!(
                "{stable} failed in more ways than the {CAP} fingerprints kept ({} answers not kept): cannot say {cand}'s are new",
                c.stable.overflow
            ),
        );
    }
    if found > 0 {
        let mut said: Vec<String> = findings
            .iter()
            .take(NAMED)
            .map(|r| sentence(r, cand, stable))
            .collect();
        if findings.len() > NAMED {
            said.push(format!("and {} more new", findings.len() - NAMED));
        }
        if overflowed {
            said.push(format!(
                "{cand} gave {} failed answers beyond the {CAP} fingerprints kept; {stable} none",
                c.candidate.overflow
            ));
        }
        return (Outcome::Fail, Some(found as f64), said.join("; "));
    }
    if requests < check.min_requests {
        return (
            Outcome::Inconclusive,
            None,
            format!(
                "too little traffic: {requests} candidate requests (need {})",
                check.min_requests
            ),
        );
    }
    let answers: u64 = c.candidate.seen.values().map(|x| x.count).sum();
    (
        Outcome::Pass,
        Some(0.0),
        format!(
            "no new errors: {cand}'s {} fingerprints ({answers} failed answers of {} requests) seen in {stable} too, or fewer than {min_count} times",
            c.candidate.seen.len(),
            requests
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::{Provider, Threshold};
    use crate::fingerprint::{Failed, Source, Table, Tally};
    use std::time::Duration;

    fn check() -> Check {
        Check {
            name: "new-errors".into(),
            provider: Provider::NewErrors { min_count: 5 },
            threshold: Threshold::default(),
            interval: Duration::from_secs(1),
            count: 1,
            failure_limit: 0,
            inconclusive_limit: 0,
            min_requests: 20,
            window: Duration::from_secs(600),
            judging: Default::default(),
        }
    }

    /// A group's tally after `n` answers of each body.
    fn tally(bodies: &[(&str, u32)], overflow: u32) -> Tally {
        let t = Table::default();
        let now = metrics::now_second();
        for (body, n) in bodies {
            for _ in 0..*n {
                let f = Failed {
                    route: "api",
                    status: 503,
                    cause: None,
                    kind: None,
                    body: body.as_bytes(),
                };
                t.record(now, &f);
            }
        }
        let mut out = Tally::default();
        out.add(&t.export(0, now));
        out.overflow = overflow as u64;
        out
    }

    fn run(candidate: Tally, stable: Tally, requests: u64) -> Measurement {
        let compared = Compared {
            candidate,
            stable,
            instances: 1,
            epoch_unix_ms: 0,
        };
        let ctx = Context {
            service: "shop".into(),
            rollout: Some(1),
            stable: "blue".into(),
            candidate: "green".into(),
            baseline: None,
            weight: 1000,
            analysis: "a".into(),
            check: "new-errors".into(),
            since: 0,
            errors: Some(Source::new(move |_, _| Some(compared.clone()))),
        };
        measure(&check(), 5, requests, &ctx)
    }

    #[test]
    fn a_fingerprint_only_the_candidate_gave_min_count_times_fails_with_its_sentence() {
        let m = run(tally(&[("db pool exhausted 7", 5)], 0), tally(&[], 0), 1000);
        assert_eq!(m.outcome, Outcome::Fail, "{}", m.detail);
        assert!(
            m.detail.starts_with(
                "green answered 503 'db pool exhausted <n>' 5 times on route api since "
            ) && m.detail.ends_with("; blue never did"),
            "{}",
            m.detail
        );
        // Four times is below min_count: a pass.
        let m = run(tally(&[("db pool exhausted 7", 4)], 0), tally(&[], 0), 1000);
        assert_eq!(m.outcome, Outcome::Pass, "{}", m.detail);
    }

    #[test]
    fn the_same_error_in_stable_is_no_finding_and_stable_overflow_makes_a_finding_inconclusive() {
        let same = run(
            tally(&[("db pool exhausted 7", 50)], 0),
            tally(&[("db pool exhausted 8", 1)], 0),
            1000,
        );
        assert_eq!(same.outcome, Outcome::Pass, "{}", same.detail);
        let unsure = run(tally(&[("new bug", 9)], 0), tally(&[], 3), 1000);
        assert_eq!(unsure.outcome, Outcome::Inconclusive, "{}", unsure.detail);
        assert!(unsure.detail.contains("cannot say green's are new"));
    }

    #[test]
    fn candidate_overflow_is_a_finding_and_too_little_traffic_without_one_is_inconclusive() {
        let m = run(tally(&[], 7), tally(&[], 0), 1000);
        assert_eq!(m.outcome, Outcome::Fail, "{}", m.detail);
        assert!(
            m.detail.contains("7 failed answers beyond the 64"),
            "{}",
            m.detail
        );
        let m = run(tally(&[], 0), tally(&[], 0), 3);
        assert_eq!(m.outcome, Outcome::Inconclusive, "{}", m.detail);
    }
}
