//! Running an analysis: its evidence planned (and its checks lengthened) first, then its
//! checks in parallel, each measuring on its interval and tallying failures and
//! inconclusive results against its limits; `score::judge` makes the verdict from the
//! tallies, as soon as one is certain.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use super::builtin::{self, Names};
use super::evidence::{self, Need, Plan};
use super::external::{self, Context};
use super::score::{judge, CheckTally, Tallied};
use super::{new_errors, AnalysisConfig, Check, Measurement, Outcome, Provider};
use crate::rollout::machine::Verdict;

pub use super::score::Report;
pub use super::Judged;

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
                ctx.reference(),
                ctx.candidate
            ),
            requests: None,
        })
    };
    let names = Names {
        candidate: &ctx.candidate,
        stable: ctx.reference(),
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
        Provider::Metric(m) => {
            builtin(&|j| builtin::metric(check, *m, &j.candidate, &j.stable, names))
        }
        Provider::MannWhitney {
            confidence,
            tolerance,
        } => builtin(&|j| {
            builtin::compare_latency(
                check,
                *confidence,
                *tolerance,
                &j.candidate,
                &j.stable,
                names,
            )
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

/// An analysis ready to run: its checks as lengthened by the evidence plan, and the plan.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub analysis: AnalysisConfig,
    /// One per check, in order.
    pub plans: Vec<Plan>,
}

impl Prepared {
    /// `analysis` run as configured, without a plan (the background analysis).
    pub fn as_is(analysis: &AnalysisConfig) -> Prepared {
        Prepared {
            analysis: analysis.clone(),
            plans: vec![Plan::None; analysis.checks.len()],
        }
    }

    /// How much longer than configured the longest lengthened check measures.
    pub fn added(&self) -> Duration {
        self.needs().map(Need::added).max().unwrap_or_default()
    }

    fn needs(&self) -> impl Iterator<Item = &Need> {
        self.plans.iter().filter_map(|p| match p {
            Plan::Need(n) => Some(n),
            _ => None,
        })
    }

    /// What the plan changed or could not do, one sentence each: lengthened checks, and
    /// checks whose need could not be estimated.
    pub fn notes(&self) -> Vec<String> {
        self.plans
            .iter()
            .filter_map(|p| match p {
                Plan::Need(n) if !n.added().is_zero() => Some(n.sentence()),
                Plan::Unknown(why) => Some(why.clone()),
                _ => None,
            })
            .collect()
    }
}

/// Plans `analysis`'s evidence from the groups' last seconds (before the analysis began)
/// and lengthens the checks that need it.
pub fn prepare(analysis: &AnalysisConfig, windows: &Windows, ctx: &Context) -> Prepared {
    let plans = match windows(evidence::RATE_WINDOW, 0) {
        Some(recent) => evidence::plan(analysis, &recent, ctx.weight),
        None => vec![Plan::None; analysis.checks.len()],
    };
    let mut out = analysis.clone();
    for (check, plan) in out.checks.iter_mut().zip(&plans) {
        if let Plan::Need(need) = plan {
            *check = evidence::stretch(check, need);
        }
    }
    let prepared = Prepared {
        analysis: out,
        plans,
    };
    for note in prepared.notes() {
        tracing::info!(analysis = %analysis.name, service = %ctx.service, "{note}");
    }
    prepared
}

/// Plans and runs every check `count` times (forever with `background`, unplanned, until
/// one does not pass).
pub async fn run(
    analysis: &AnalysisConfig,
    windows: Windows,
    ctx: Context,
    background: bool,
) -> Report {
    let prepared = if background {
        Prepared::as_is(analysis)
    } else {
        prepare(analysis, &windows, &ctx)
    };
    execute(prepared, windows, ctx, background).await
}

/// Runs a prepared analysis: the verdict as soon as it is certain (a failure no later
/// result can undo; in the background, any check that does not pass).
pub async fn execute(
    prepared: Prepared,
    windows: Windows,
    ctx: Context,
    background: bool,
) -> Report {
    let analysis = &prepared.analysis;
    let mut set = JoinSet::new();
    for (check, plan) in analysis.checks.iter().cloned().zip(prepared.plans.clone()) {
        let (windows, mut ctx) = (windows.clone(), ctx.clone());
        ctx.check = check.name.clone();
        let need = match plan {
            Plan::Need(n) => Some(n),
            _ => None,
        };
        set.spawn(async move { run_check(check, need, windows, ctx, background).await });
    }
    let mut tallies = Vec::new();
    while let Some(done) = set.join_next().await {
        let tally = done.expect("check task");
        let unsure = tally.result != Tallied::Passed;
        tallies.push(tally);
        let report = judge(analysis, &tallies);
        if report.verdict == Verdict::Fail || (background && unsure) {
            set.abort_all();
            return noted(report, &prepared);
        }
    }
    noted(judge(analysis, &tallies), &prepared)
}

/// Every check of `analysis` measured once, now (a dry run), and the verdict they make.
pub async fn once(
    analysis: &AnalysisConfig,
    windows: &Windows,
    ctx: &Context,
) -> (Vec<Measurement>, Report) {
    let prepared = prepare(analysis, windows, ctx);
    let mut measured = Vec::new();
    let mut tallies = Vec::new();
    for (check, plan) in analysis.checks.iter().zip(&prepared.plans) {
        let mut ctx = ctx.clone();
        ctx.check = check.name.clone();
        let m = measure(check, windows, &ctx).await;
        let result = match m.outcome {
            Outcome::Pass => Tallied::Passed,
            Outcome::Fail => Tallied::Failed,
            Outcome::Inconclusive | Outcome::Error => Tallied::Inconclusive,
        };
        tallies.push(CheckTally {
            check: check.name.clone(),
            result,
            sentence: format!("check {} {}", m.check, m.detail),
            short_of: short_of(plan, &m),
        });
        measured.push(m);
    }
    (measured, judge(analysis, &tallies))
}

/// The plan's lengthening said in the verdict (unless a sentence there already says it).
fn noted(mut report: Report, prepared: &Prepared) -> Report {
    for note in prepared.notes() {
        if !report.detail.contains(&note) {
            report.detail.push_str("; ");
            report.detail.push_str(&note);
        }
    }
    report
}

/// Why a passing measurement is not enough evidence, if it is not.
fn short_of(plan: &Plan, m: &Measurement) -> Option<String> {
    match plan {
        Plan::Need(need) if m.outcome == Outcome::Pass => need.short_of(m.requests.unwrap_or(0)),
        _ => None,
    }
}

/// A check's measurements counted against its limits: the one rule the live run and the
/// backtest both follow.
pub(super) struct Tally<'a> {
    check: &'a Check,
    pub(super) taken: u32,
    failures: u32,
    inconclusive: u32,
    /// The last measurement's outcome and sentence.
    last: Option<(Outcome, String)>,
}

impl<'a> Tally<'a> {
    pub(super) fn new(check: &'a Check) -> Tally<'a> {
        Tally {
            check,
            taken: 0,
            failures: 0,
            inconclusive: 0,
            last: None,
        }
    }

    /// Counts `m`; the check's result once a limit is passed.
    pub(super) fn add(&mut self, m: &Measurement) -> Option<(Tallied, String)> {
        self.taken += 1;
        self.last = Some((m.outcome, format!("check {} {}", m.check, m.detail)));
        let (count, limit, result, what) = match m.outcome {
            Outcome::Pass => return None,
            Outcome::Fail => {
                self.failures += 1;
                let f = self.failures;
                (f, self.check.failure_limit, Tallied::Failed, "failed")
            }
            Outcome::Inconclusive | Outcome::Error => {
                self.inconclusive += 1;
                let what = if m.outcome == Outcome::Error {
                    "erred"
                } else {
                    "was inconclusive"
                };
                let n = self.inconclusive;
                (
                    n,
                    self.check.inconclusive_limit,
                    Tallied::Inconclusive,
                    what,
                )
            }
        };
        (count > limit).then(|| {
            let taken = self.taken;
            (
                result,
                format!(
                    "check {} {what} {count} of {taken} times (limit {limit}): {}",
                    m.check, m.detail
                ),
            )
        })
    }

    /// The result of a check that took all its measurements within its limits. The last
    /// measurement judged the most (a planned check's window is the whole step): one without
    /// enough evidence, or that erred, leaves the check inconclusive, whatever its
    /// `inconclusive_limit` forgave on the way (that limit forgives a slow start, not a
    /// missing end).
    pub(super) fn end(&self) -> (Tallied, String) {
        let counts = format!(
            "{} measurements, {} failed, {} inconclusive",
            self.taken, self.failures, self.inconclusive
        );
        match &self.last {
            None => (
                Tallied::Inconclusive,
                format!("check {} measured nothing", self.check.name),
            ),
            Some((Outcome::Inconclusive, last)) => (
                Tallied::Inconclusive,
                format!("{last} — ended inconclusive ({counts})"),
            ),
            Some((Outcome::Error, last)) => (
                Tallied::Inconclusive,
                format!("{last} — ended in an error ({counts})"),
            ),
            Some((Outcome::Pass | Outcome::Fail, last)) => {
                (Tallied::Passed, format!("{last} ({counts})"))
            }
        }
    }
}

async fn run_check(
    check: Check,
    need: Option<Need>,
    windows: Windows,
    ctx: Context,
    background: bool,
) -> CheckTally {
    let mut tally = Tally::new(&check);
    let mut requests = 0;
    while background || tally.taken < check.count.max(1) {
        tokio::time::sleep(check.interval).await;
        let m = measure(&check, &windows, &ctx).await;
        tracing::debug!(check = %m.check, outcome = ?m.outcome, detail = %m.detail, "measurement");
        requests = m.requests.unwrap_or(0);
        if let Some((result, sentence)) = tally.add(&m) {
            return CheckTally {
                check: check.name.clone(),
                result,
                sentence,
                short_of: None,
            };
        }
    }
    let (result, sentence) = tally.end();
    let short_of = match result {
        Tallied::Passed => need.and_then(|n| n.short_of(requests)),
        _ => None,
    };
    CheckTally {
        check: check.name.clone(),
        result,
        sentence,
        short_of,
    }
}
