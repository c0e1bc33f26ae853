//! A side task of an active rollout: the fast rollback guard, which judges the candidate
//! against its reference (stable, or the baseline) continuously (every 100 ms by default)
//! with sequential tests (`analysis::sequential`: 5xx rate and share of slow answers, always
//! valid however often it looks) and aborts at once when one is crossed, and checks that the
//! observed split matches the weight (a mismatch pauses). It ends with the rollout, and
//! judges the fleet's traffic through `Controller::judged` (this instance's alone without
//! peers). The strategy's background analysis is `background`'s.

use std::sync::Arc;
use std::time::Duration;

use crate::analysis::run::Judged;
use crate::analysis::sequential::{self, Comparison, Counts, Judge, Look, Tick};
use crate::analysis::Guard;
use crate::audit::System;
use crate::metrics::{self, Summary};
use crate::rollout::{RollbackCause, Rollout, Status};

use super::sample_ratio::{SampleRatio, SplitCheck, SplitLook};
use super::Controller;

/// What the guard saw at its last look at an attempt, for `GET …/rollout` (the dashboard and
/// `rollout status` show it): an operator deciding whether to promote wants to know that the
/// guard is watching and what it measures, not only that it has not fired.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GuardReading {
    /// The rollout and attempt it judged.
    pub rollout: u64,
    pub attempt: u32,
    /// Wall-clock time of the look (unix ms).
    pub at_unix_ms: i64,
    /// `watching` (judged, within bounds), `too_few_requests`, `rolled_back`,
    /// `sample_ratio_mismatch` (paused), `disabled`.
    pub state: &'static str,
    /// The span of the error test reported (the one closest to rolling back), and both
    /// groups' requests and 5xx rate (%) in it (stable's over the reference span).
    pub window_ms: u64,
    pub candidate_requests: u64,
    pub candidate_error_rate: f64,
    pub stable_requests: u64,
    pub stable_error_rate: f64,
    /// One sentence with the numbers and the bound.
    pub detail: String,
    /// Lower bound of the candidate's 5xx rate minus stable's (points), and the tolerated
    /// difference it is held to.
    pub error_lower_bound: f64,
    pub max_error_rate: f64,
    /// Probability of a false rollback per hour the bounds are set for.
    pub alpha: f64,
    /// The latency test: the threshold (ms; none until stable has answers enough for a
    /// p99), each group's share of slower answers (%) and the lower bound of the difference.
    pub latency: LatencyReading,
    /// The split check of the current step, when the rollout is split by weight.
    pub sample_ratio: Option<SampleRatio>,
}

/// The latency part of a [`GuardReading`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LatencyReading {
    pub threshold_ms: Option<f64>,
    pub window_ms: u64,
    pub candidate_requests: u64,
    pub candidate_slow_rate: f64,
    pub stable_requests: u64,
    pub stable_slow_rate: f64,
    pub lower_bound: f64,
}

/// Judges attempt `of` (rollout id, attempt) of `service` every `interval` until it ends:
/// rolls back when a sequential test shows the candidate's 5xx rate, or its share of slow
/// answers, surely above stable's by more than tolerated; pauses once per step when the
/// split does not match the weight. A failure to act is logged and tried again on the next
/// tick, never a reason to stop watching. With `judged`, it says when it has watched one
/// full `window` without rolling back (a rollout resumed after a restart waits for that).
pub(super) async fn guard(
    control: Arc<Controller>,
    service: String,
    of: (u64, u32),
    mut judged: Option<tokio::sync::oneshot::Sender<()>>,
) {
    let id = of.0;
    let watching_from = tokio::time::Instant::now();
    let mut counts: Option<Counting> = None;
    let mut judge: Option<(Judge, Duration, Duration)> = None;
    let mut split = SplitCheck::default();
    loop {
        let Some(g) = control
            .snapshot()
            .config
            .service(&service)
            .map(|s| s.guard.clone())
        else {
            // The service is gone, which a reload refuses while a rollout is active.
            return;
        };
        if !g.enabled {
            // Nothing to wait for; a reload may turn it on again.
            if let Some(tx) = judged.take() {
                let _ = tx.send(());
            }
        }
        tokio::time::sleep(g.interval).await;
        let view = match control.rollout(&service).await {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(%service, rollout = id, error = %e, "guard cannot read the rollout; trying again");
                continue;
            }
        };
        let r = &view.rollout;
        if (r.id, r.attempt) != of || !r.status.is_active() {
            // The attempt ended; a retry gets a guard of its own from the driver.
            return;
        }
        if !g.enabled {
            control.set_guard_reading(
                &service,
                GuardReading::disabled(of, control.clock.unix_ms()),
            );
            continue;
        }
        // From the attempt's first look on: a retry is not judged on the errors that aborted
        // the attempt before it.
        let c = counts.get_or_insert_with(|| Counting::start(&control, &service, r));
        let Some(new) = c.read(&control, &service, r) else {
            continue;
        };
        let line = latency_line(&control, &service, r, &g);
        let threshold = line.map(|l| l.at);
        let tick = tick_of(&new, threshold);
        // A reload that changes the ticks or the window begins the tests afresh.
        if judge
            .as_ref()
            .is_none_or(|(_, w, i)| (*w, *i) != (g.window, g.interval))
        {
            judge = Some((Judge::new(g.window, g.interval), g.window, g.interval));
        }
        let (j, _, _) = judge.as_mut().expect("set above");
        j.push(tick);
        let settings = g.settings();
        let look = j.look(&settings);
        let srm = split.observe(&control, &service, r, &tick);
        let breach = Breach::of(&look, &g);
        let reading = reading(of, &control, &g, &look, threshold, &new, breach, &srm);
        control.set_guard_reading(&service, reading);
        if let Some(b) = breach {
            let why = b.reason(r, &look, &g, line, &new);
            tracing::info!(%service, rollout = id, %why, "guard rolls back");
            if let Err(e) = control
                .abort_from(&service, System::Guard, RollbackCause::Guard, &why)
                .await
            {
                tracing::error!(%service, rollout = id, error = %e, "guard rollback not applied; trying again next tick");
            }
            continue;
        }
        if let Some(s) = srm.filter(|s| s.mismatch() && r.status == Status::Progressing) {
            let why = s.reason(r);
            tracing::warn!(%service, rollout = id, %why, "guard pauses");
            if let Err(e) = control.pause_from(&service, System::Guard, &why).await {
                tracing::error!(%service, rollout = id, error = %e, "guard pause not applied; trying again next tick");
            }
        }
        // A full window watched without a breach (with fewer than `min_requests` there is
        // nothing to hold against the candidate, as in any other window).
        if watching_from.elapsed() >= g.window {
            if let Some(tx) = judged.take() {
                let _ = tx.send(());
            }
        }
    }
}

/// The fleet's answers of both groups since the attempt's first look, read cumulatively
/// from a fixed second (`Controller::judged` over `[origin, now]`: the current second's
/// slot grows while it runs, so each tick's reading less the one before is what came in
/// since — sub-second, though slots are whole seconds). What the origin second held at
/// the first look is subtracted. A peer's answers arrive with its next pull (~250 ms), so
/// they count in a later tick than this instance's; a peer's part of the origin second
/// that had not arrived at the first look is counted as new.
struct Counting {
    origin: u64,
    before: Judged,
}

/// How far back the origin moves once it is [`REBASE_AFTER`] old: past the seconds still
/// growing and a peer's pull behind.
const REBASE_KEEP: u64 = 5;
/// Seconds after which the origin moves up: each reading sums the seconds since the origin,
/// so it is kept short (the window keeps 11 minutes).
const REBASE_AFTER: u64 = 30;

impl Counting {
    fn start(control: &Controller, service: &str, r: &Rollout) -> Counting {
        let origin = metrics::now_second();
        let before = control
            .judged(service, r.reference(), &r.candidate, origin, origin)
            .unwrap_or_else(empty);
        Counting { origin, before }
    }

    /// What came in since the last reading, or `None` when the groups are not in the
    /// running configuration.
    fn read(&mut self, control: &Controller, service: &str, r: &Rollout) -> Option<Judged> {
        let now = metrics::now_second();
        let (stable, candidate) = (r.reference(), &r.candidate);
        if now.saturating_sub(self.origin) >= REBASE_AFTER {
            // The seconds before the new origin are complete: take them out of the last
            // reading so that the next difference stays right.
            let origin = now - REBASE_KEEP;
            let old = control.judged(service, stable, candidate, self.origin, origin - 1)?;
            self.before = Judged {
                candidate: self.before.candidate.since(&old.candidate),
                stable: self.before.stable.since(&old.stable),
                instances: self.before.instances,
            };
            self.origin = origin;
        }
        let seen = control.judged(service, stable, candidate, self.origin, now)?;
        let new = Judged {
            candidate: seen.candidate.since(&self.before.candidate),
            stable: seen.stable.since(&self.before.stable),
            instances: seen.instances,
        };
        self.before = seen;
        Some(new)
    }
}

fn empty() -> Judged {
    Judged {
        candidate: Summary::default(),
        stable: Summary::default(),
        instances: 1,
    }
}

/// Where an answer turns slow, and the p99 of stable's it was drawn from (the abort's reason
/// gives both).
#[derive(Debug, Clone, Copy)]
struct SlowLine {
    stable_p99: Duration,
    at: Duration,
}

/// The line past which an answer is slow (`Guard::slow_line`) from stable's p99 over the
/// tests' span; none until stable has 100 answers there (a p99 of fewer is a guess).
fn latency_line(control: &Controller, service: &str, r: &Rollout, g: &Guard) -> Option<SlowLine> {
    let span = g.window.max(sequential::REFERENCE).as_secs();
    let now = metrics::now_second();
    let seen = control.judged(
        service,
        r.reference(),
        &r.candidate,
        now.saturating_sub(span),
        now,
    )?;
    if seen.stable.requests < 100 {
        return None;
    }
    let stable_p99 = seen.stable.percentile(0.99)?;
    Some(SlowLine {
        stable_p99,
        at: g.slow_line(stable_p99),
    })
}

/// One tick's answers as the tests count them.
fn tick_of(new: &Judged, threshold: Option<Duration>) -> Tick {
    let (c, s) = (&new.candidate, &new.stable);
    let slow = |x: &Summary| match threshold {
        Some(t) => Counts {
            n: x.requests,
            k: x.slower_than(t).min(x.requests),
        },
        None => Counts::default(),
    };
    Tick {
        candidate_errors: Counts {
            n: c.requests,
            k: c.classes[4],
        },
        candidate_slow: slow(c),
        stable_errors: Counts {
            n: s.requests,
            k: s.classes[4],
        },
        stable_slow: slow(s),
    }
}

/// Which test was crossed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Breach {
    Errors,
    Latency,
}

impl Breach {
    fn of(look: &Look, g: &Guard) -> Option<Breach> {
        if look.errors.breaches(g.max_error_rate, g.min_requests) {
            Some(Breach::Errors)
        } else if look
            .latency
            .breaches(Guard::MAX_SLOW_POINTS, g.min_requests)
        {
            Some(Breach::Latency)
        } else {
            None
        }
    }

    /// The abort's reason: the counts, rates and the bound crossed.
    fn reason(
        self,
        r: &Rollout,
        look: &Look,
        g: &Guard,
        line: Option<SlowLine>,
        new: &Judged,
    ) -> String {
        match self {
            Breach::Errors => {
                let e = &look.errors;
                format!(
                    "candidate {} error rate {} exceeds {}'s {} by more than {} points: {}",
                    r.candidate,
                    counted(e.candidate, span(e.ticks, g), new),
                    against(r),
                    counted(e.stable, span(e.stable_ticks, g), new),
                    g.max_error_rate,
                    at_least(e, g.alpha)
                )
            }
            Breach::Latency => {
                let l = &look.latency;
                let increase = match g.min_latency_increase {
                    Duration::ZERO => String::new(),
                    d => format!(", and at least {} over it", ms(Some(d))),
                };
                format!(
                    "candidate {} answers slower than {} ({} × {}'s p99 of {}{increase}): {} exceeds {}'s {} by more than {} point: {}",
                    r.candidate,
                    ms(line.map(|l| l.at)),
                    g.max_latency_ratio,
                    against(r),
                    ms(line.map(|l| l.stable_p99)),
                    counted(l.candidate, span(l.ticks, g), new),
                    against(r),
                    counted(l.stable, span(l.stable_ticks, g), new),
                    Guard::MAX_SLOW_POINTS,
                    at_least(l, g.alpha)
                )
            }
        }
    }
}

/// What the candidate is judged against: `stable blue`, or `baseline blue-fresh` when the
/// strategy has one (`Rollout::reference`).
fn against(r: &Rollout) -> String {
    match &r.strategy.baseline {
        Some(b) => format!("baseline {b}"),
        None => format!("stable {}", r.stable),
    }
}

/// `29.8% (42 of 141 requests in 1.4s, 3 instances)`.
fn counted(c: Counts, over: Duration, new: &Judged) -> String {
    format!(
        "{:.1}% ({} of {} requests in {}{})",
        c.percent(),
        c.k,
        c.n,
        humantime::format_duration(over),
        new.across()
    )
}

/// `the difference is at least 18.1 points (α = 0.01 per hour)`.
fn at_least(c: &Comparison, alpha: f64) -> String {
    format!(
        "the difference is at least {:.1} points (α = {alpha} per hour)",
        c.lower_points
    )
}

/// `the difference is at least 18.1 points, more than the tolerated 5 (α = 0.01 per hour)`.
fn bound(c: &Comparison, tolerated: f64, alpha: f64) -> String {
    format!(
        "{}the difference is at least {:.1} points, {} the tolerated {tolerated} (α = {alpha} per hour)",
        if c.alongside {
            "stable changed too, so judged against its answers alongside: "
        } else {
            ""
        },
        c.lower_points,
        if c.lower_points > tolerated {
            "more than"
        } else {
            "within"
        }
    )
}

fn span(ticks: usize, g: &Guard) -> Duration {
    g.interval * ticks as u32
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    })
}

/// The reading of one look (see [`GuardReading`]).
#[allow(clippy::too_many_arguments)]
fn reading(
    of: (u64, u32),
    control: &Controller,
    g: &Guard,
    look: &Look,
    threshold: Option<Duration>,
    new: &Judged,
    breach: Option<Breach>,
    srm: &Option<SplitLook>,
) -> GuardReading {
    let (e, l) = (&look.errors, &look.latency);
    let mismatch = srm.as_ref().is_some_and(SplitLook::mismatch);
    let too_few = e.candidate.n < g.min_requests;
    let detail = if too_few {
        format!(
            "{} of at least {} candidate requests in {}{}: nothing to judge yet",
            e.candidate.n,
            g.min_requests,
            humantime::format_duration(span(e.ticks, g)),
            new.across()
        )
    } else {
        let latency = match threshold {
            Some(_) => format!(
                "; answers slower than {}: {:.1}% vs {:.1}%, {}",
                ms(threshold),
                l.candidate.percent(),
                l.stable.percent(),
                bound(l, Guard::MAX_SLOW_POINTS, g.alpha)
            ),
            None => "; latency: too few stable answers for a p99 yet".into(),
        };
        format!(
            "candidate {} vs stable {}: {} (rolls back above +{} points){latency}",
            counted(e.candidate, span(e.ticks, g), new),
            counted(e.stable, span(e.stable_ticks, g), new),
            bound(e, g.max_error_rate, g.alpha),
            g.max_error_rate,
        )
    };
    GuardReading {
        rollout: of.0,
        attempt: of.1,
        at_unix_ms: control.clock.unix_ms(),
        state: match (breach, mismatch, too_few) {
            (Some(_), _, _) => "rolled_back",
            (None, true, _) => "sample_ratio_mismatch",
            (None, false, true) => "too_few_requests",
            (None, false, false) => "watching",
        },
        window_ms: span(e.ticks, g).as_millis() as u64,
        candidate_requests: e.candidate.n,
        candidate_error_rate: e.candidate.percent(),
        stable_requests: e.stable.n,
        stable_error_rate: e.stable.percent(),
        detail,
        error_lower_bound: e.lower_points,
        max_error_rate: g.max_error_rate,
        alpha: g.alpha,
        latency: LatencyReading {
            threshold_ms: threshold.map(|t| t.as_secs_f64() * 1000.0),
            window_ms: span(l.ticks, g).as_millis() as u64,
            candidate_requests: l.candidate.n,
            candidate_slow_rate: l.candidate.percent(),
            stable_requests: l.stable.n,
            stable_slow_rate: l.stable.percent(),
            lower_bound: l.lower_points,
        },
        sample_ratio: srm.as_ref().map(|s| s.0.clone()),
    }
}

impl GuardReading {
    fn disabled(of: (u64, u32), at_unix_ms: i64) -> GuardReading {
        GuardReading {
            rollout: of.0,
            attempt: of.1,
            at_unix_ms,
            state: "disabled",
            window_ms: 0,
            candidate_requests: 0,
            candidate_error_rate: 0.0,
            stable_requests: 0,
            stable_error_rate: 0.0,
            detail: "the guard is off for this service ([service.guard] enabled = false)".into(),
            error_lower_bound: 0.0,
            max_error_rate: 0.0,
            alpha: 0.0,
            latency: LatencyReading {
                threshold_ms: None,
                window_ms: 0,
                candidate_requests: 0,
                candidate_slow_rate: 0.0,
                stable_requests: 0,
                stable_slow_rate: 0.0,
                lower_bound: 0.0,
            },
            sample_ratio: None,
        }
    }
}

impl Controller {
    fn set_guard_reading(&self, service: &str, reading: GuardReading) {
        self.guard_readings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(service.to_string(), reading);
    }

    /// The guard's last look at attempt `of` of `service`, if it has looked at that attempt.
    pub(super) fn guard_reading(&self, service: &str, of: (u64, u32)) -> Option<GuardReading> {
        self.guard_readings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(service)
            .filter(|r| (r.rollout, r.attempt) == of)
            .cloned()
    }
}
