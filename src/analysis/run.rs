//! Running an analysis: its checks in parallel, each measuring on its interval and tallying
//! failures and inconclusive results against its limits.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use super::external::{self, Context};
use super::{builtin, new_errors, AnalysisConfig, Check, Measurement, Outcome, Provider};
use crate::metrics::Summary;
use crate::rollout::machine::Verdict;

/// What a built-in check or the guard judges: the candidate's and stable's traffic over a
/// range of seconds, summed over every instance of the fleet that saw any of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Judged {
    pub candidate: Summary,
    pub stable: Summary,
    /// This instance and every peer that contributed a second (1 without a fleet).
    pub instances: usize,
}

impl Judged {
    /// What a decision's reason adds about the fleet: `", 3 instances"`, or nothing when
    /// this instance judged alone.
    pub fn across(&self) -> String {
        match self.instances {
            0 | 1 => String::new(),
            n => format!(", {n} instances"),
        }
    }
}

/// Where a running analysis (and the guard) finds what it judges: the `window` before now,
/// nothing before second `since` (see `metrics::last_range`), looked up afresh for every
/// measurement since snapshots and peers change while it runs; `None` when the groups are
/// not in the running configuration.
pub type Windows = Arc<dyn Fn(Duration, u64) -> Option<Judged> + Send + Sync>;

/// One measurement of one check, now.
pub async fn measure(check: &Check, windows: &Windows, ctx: &Context) -> Measurement {
    // The candidate's and stable's windows since the analysis began, over the fleet.
    let judged = || {
        windows(check.window, ctx.since).ok_or_else(|| Measurement {
            check: check.name.clone(),
            outcome: Outcome::Error,
            value: None,
            detail: format!(
                "groups {} / {} are not in the running configuration",
                ctx.stable, ctx.candidate
            ),
        })
    };
    let builtin = |f: &dyn Fn(&Judged) -> Measurement| match judged() {
        Ok(j) => {
            let mut m = f(&j);
            m.detail.push_str(&j.across());
            m
        }
        Err(e) => e,
    };
    match &check.provider {
        Provider::Metric(m) => builtin(&|j| builtin::metric(check, *m, &j.candidate, &j.stable)),
        Provider::MannWhitney {
            confidence,
            tolerance,
        } => builtin(&|j| {
            builtin::compare_latency(check, *confidence, *tolerance, &j.candidate, &j.stable)
        }),
        Provider::NewErrors { min_count } => {
            builtin(&|j| new_errors::measure(check, *min_count, j.candidate.requests, ctx))
        }
        Provider::Prometheus {
            url,
            query,
            timeout,
        } => external::prometheus(check, url, query, *timeout).await,
        Provider::Webhook { url, timeout } => external::webhook(check, url, *timeout, ctx).await,
        Provider::Command { command, timeout } => {
            external::command(check, command, *timeout, ctx).await
        }
    }
}

/// What an analysis concluded, and why.
#[derive(Debug, Clone)]
pub struct Report {
    pub verdict: Verdict,
    pub detail: String,
}

/// Runs every check `count` times (forever with `background`, until one does not pass).
pub async fn run(
    analysis: &AnalysisConfig,
    windows: Windows,
    ctx: Context,
    background: bool,
) -> Report {
    let mut set = JoinSet::new();
    for check in analysis.checks.clone() {
        let (windows, mut ctx) = (windows.clone(), ctx.clone());
        ctx.check = check.name.clone();
        set.spawn(async move { run_check(check, windows, ctx, background).await });
    }
    let mut passed = Vec::new();
    let mut inconclusive: Option<String> = None;
    while let Some(done) = set.join_next().await {
        let (verdict, detail) = done.expect("check task");
        match verdict {
            // A failure decides at once.
            Verdict::Fail => {
                set.abort_all();
                return Report {
                    verdict: Verdict::Fail,
                    detail: format!("{}: {detail}", analysis.name),
                };
            }
            Verdict::Inconclusive if background => {
                set.abort_all();
                return Report {
                    verdict: Verdict::Inconclusive,
                    detail: format!("{}: {detail}", analysis.name),
                };
            }
            Verdict::Inconclusive => inconclusive = inconclusive.or(Some(detail)),
            Verdict::Pass => passed.push(detail),
        }
    }
    match inconclusive {
        Some(detail) => Report {
            verdict: Verdict::Inconclusive,
            detail: format!("{}: {detail}", analysis.name),
        },
        None => Report {
            verdict: Verdict::Pass,
            detail: format!("{}: {}", analysis.name, passed.join("; ")),
        },
    }
}

async fn run_check(
    check: Check,
    windows: Windows,
    ctx: Context,
    background: bool,
) -> (Verdict, String) {
    let (mut failures, mut inconclusive, mut taken) = (0u32, 0u32, 0u32);
    let mut last = String::new();
    while background || taken < check.count.max(1) {
        tokio::time::sleep(check.interval).await;
        let m = measure(&check, &windows, &ctx).await;
        taken += 1;
        tracing::debug!(check = %m.check, outcome = ?m.outcome, detail = %m.detail, "measurement");
        last = format!("check {} {}", m.check, m.detail);
        match m.outcome {
            Outcome::Pass => {}
            Outcome::Fail => {
                failures += 1;
                if failures > check.failure_limit {
                    return (
                        Verdict::Fail,
                        format!(
                            "check {} failed {failures} of {taken} times (limit {}): {}",
                            m.check, check.failure_limit, m.detail
                        ),
                    );
                }
            }
            Outcome::Inconclusive | Outcome::Error => {
                inconclusive += 1;
                if inconclusive > check.inconclusive_limit {
                    let what = if m.outcome == Outcome::Error {
                        "erred"
                    } else {
                        "was inconclusive"
                    };
                    return (
                        Verdict::Inconclusive,
                        format!(
                            "check {} {what} {inconclusive} of {taken} times (limit {}): {}",
                            m.check, check.inconclusive_limit, m.detail
                        ),
                    );
                }
            }
        }
    }
    (
        Verdict::Pass,
        format!("{last} ({taken} measurements, {failures} failed, {inconclusive} inconclusive)"),
    )
}
