//! Running an analysis: its checks in parallel, each measuring on its interval and tallying
//! failures and inconclusive results against its limits.

use std::sync::Arc;

use tokio::task::JoinSet;

use super::external::{self, Context};
use super::{builtin, AnalysisConfig, Check, Measurement, Outcome, Provider};
use crate::group::Group;
use crate::rollout::machine::Verdict;

/// Where a running analysis finds the stable and candidate groups: looked up afresh for
/// every measurement, since snapshots change while it runs.
pub type Groups = Arc<dyn Fn() -> Option<(Arc<Group>, Arc<Group>)> + Send + Sync>;

/// One measurement of one check, now.
pub async fn measure(check: &Check, groups: &Groups, ctx: &Context) -> Measurement {
    // The candidate's and stable's windows since the analysis began, from the live groups.
    let windows = || {
        let (stable, candidate) = groups().ok_or_else(|| Measurement {
            check: check.name.clone(),
            outcome: Outcome::Error,
            value: None,
            detail: format!(
                "groups {} / {} are not in the running configuration",
                ctx.stable, ctx.candidate
            ),
        })?;
        let since = |g: &Group| g.stats.window.last_since(check.window, ctx.since);
        Ok::<_, Measurement>((since(&candidate), since(&stable)))
    };
    match &check.provider {
        Provider::Metric(m) => match windows() {
            Ok((candidate, stable)) => builtin::metric(check, *m, &candidate, &stable),
            Err(e) => e,
        },
        Provider::MannWhitney {
            confidence,
            tolerance,
        } => match windows() {
            Ok((candidate, stable)) => {
                builtin::compare_latency(check, *confidence, *tolerance, &candidate, &stable)
            }
            Err(e) => e,
        },
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
    groups: Groups,
    ctx: Context,
    background: bool,
) -> Report {
    let mut set = JoinSet::new();
    for check in analysis.checks.clone() {
        let (groups, mut ctx) = (groups.clone(), ctx.clone());
        ctx.check = check.name.clone();
        set.spawn(async move { run_check(check, groups, ctx, background).await });
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
    groups: Groups,
    ctx: Context,
    background: bool,
) -> (Verdict, String) {
    let (mut failures, mut inconclusive, mut taken) = (0u32, 0u32, 0u32);
    let mut last = String::new();
    while background || taken < check.count.max(1) {
        tokio::time::sleep(check.interval).await;
        let m = measure(&check, &groups, &ctx).await;
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
