//! Enough evidence, or say so: before an analysis step, how many candidate requests each
//! built-in comparison needs to see its configured effect, whether the step's measuring can
//! gather them at the candidate's current rate, and how far it is lengthened (up to
//! `max_duration`) when it cannot. Pure: the numbers come from a [`Judged`] reading of the
//! recent seconds, so a backtest can plan over stored seconds the same way.
//!
//! A planned check judges everything since its analysis began (its window is the whole
//! step, at most [`JUDGED`]), so its last measurement judges `rate × count × interval`
//! candidate requests: that is what the plan weighs against the need, and what the verdict
//! weighs the last measurement's actual count against ([`Need::short_of`]). Short of it, the
//! analysis is inconclusive, never a pass (see `score`).
//!
//! **Rates** (error rate, success rate: both the share of 5xx answers) use the sample size of
//! a one-sided two-proportion z-test with unequal groups (Fleiss, *Statistical Methods for
//! Rates and Proportions*, 2nd ed., §3.2): with stable's rate `p0`, the rate `p1` the bound
//! allows, `k` stable requests per candidate request and `p̄` the pooled rate,
//! `n = (z_α √(p̄ q̄ (1 + 1/k)) + z_β √(p1 q1 + p0 q0 / k))² / (p1 − p0)²` candidate requests.
//! Stable's rate is floored at 0.1 %: a relative bound on a rate of 0 sees nothing.
//!
//! **Latency** (a `latency-pNN` bound, a Mann-Whitney comparison) uses Noether's sample size
//! for the Mann-Whitney U test (JASA 82, 1987): `N = (z_α + z_β)² / (12 c (1 − c) (P − ½)²)`
//! with `c` the candidate's share and `P` the chance that a candidate answer is slower than a
//! stable one. `P` is taken from stable's own histogram, scaled by the allowed change: the
//! candidate is assumed to be stable slowed uniformly by it, which moves every quantile,
//! p99 included, by that much. A slowdown confined to the tail moves the median less and
//! needs more requests than this says; the p99 a measurement reports is still the test.

use std::time::Duration;

use super::builtin::{percent_change, z};
use super::{AnalysisConfig, Check, Judged, Metric, Provider};
use crate::metrics::{bucket_value, BUCKETS};

/// The most a planned check judges: the seconds the metrics keep, less a minute of margin.
pub const JUDGED: Duration = Duration::from_secs(600);

/// How far back the candidate's current rate is read.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);

/// What a check's plan found.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Not planned (no evidence settings, or not a comparison with stable).
    None,
    /// Planned, but the need cannot be estimated (why): only `min_requests` applies.
    Unknown(String),
    Need(Need),
}

/// How many candidate requests a check needs and how long its measuring takes to get them.
#[derive(Debug, Clone, PartialEq)]
pub struct Need {
    pub check: String,
    /// Candidate requests needed.
    pub requests: u64,
    /// The effect to see, as a sentence says it: `+20.0 %`, `+1 point`.
    pub effect: String,
    pub confidence: f64,
    pub power: f64,
    /// The candidate's requests per second now.
    pub rate: f64,
    /// The check's measuring as configured (`count × interval`), lengthened, and at most.
    pub planned: Duration,
    pub stretched: Duration,
    pub max: Duration,
}

impl Need {
    /// Candidate requests a measuring of `d` judges at the current rate.
    pub fn gives(&self, d: Duration) -> u64 {
        (self.rate * d.min(JUDGED).as_secs_f64()).floor() as u64
    }

    pub fn reached(&self) -> bool {
        self.gives(self.stretched) >= self.requests
    }

    /// How much longer the check measures than configured.
    pub fn added(&self) -> Duration {
        self.stretched.saturating_sub(self.planned)
    }

    fn needs(&self) -> String {
        format!(
            "≈ {} candidate requests to see {} at {} % confidence and {} % power",
            grouped(self.requests),
            self.effect,
            (self.confidence * 1000.0).round() / 10.0,
            (self.power * 1000.0).round() / 10.0
        )
    }

    /// The plan in one sentence: what is needed, what the step gives, whether (and how far)
    /// it was lengthened.
    pub fn sentence(&self) -> String {
        let given = format!(
            "check {} needs {}; at {:.1} req/s its {} gives ≈ {}",
            self.check,
            self.needs(),
            self.rate,
            span(self.planned),
            grouped(self.gives(self.planned))
        );
        let lengthened = format!(
            "lengthened to {} (+{})",
            span(self.stretched),
            span(self.added())
        );
        match (self.added().is_zero(), self.reached()) {
            (true, true) => given,
            (false, true) => format!(
                "{given}: {lengthened}, ≈ {}",
                grouped(self.gives(self.stretched))
            ),
            (true, false) => format!("{given}, and it may not be lengthened (no max_duration)"),
            (false, false) => format!(
                "{given}, and the maximum {} ≈ {}: {lengthened}",
                span(self.max),
                grouped(self.gives(self.max))
            ),
        }
    }

    /// The verdict's sentence when the last measurement judged fewer than needed.
    pub fn short_of(&self, judged: u64) -> Option<String> {
        (judged < self.requests).then(|| {
            format!(
                "insufficient evidence: {}; it judged {}",
                self.sentence(),
                grouped(judged)
            )
        })
    }
}

/// Plans every check of `analysis` (in order) from `recent`, the groups' last
/// [`RATE_WINDOW`], with the candidate at `weight` basis points of the service.
pub fn plan(analysis: &AnalysisConfig, recent: &Judged, weight: u32) -> Vec<Plan> {
    let secs = recent.candidate.seconds.max(recent.stable.seconds).max(1) as f64;
    let (c, s) = (
        recent.candidate.requests as f64,
        recent.stable.requests as f64,
    );
    // Just after a weight change the candidate's own rate is the old weight's: the
    // service's total at the new weight is the better guess, when there is one.
    let share = f64::from(weight) / 10_000.0;
    let rate = (c / secs).max((c + s) / secs * share);
    let stable_rate = if share > 0.0 {
        (c + s) / secs * (1.0 - share)
    } else {
        s / secs
    };
    let k = if rate > 0.0 && stable_rate > 0.0 {
        (stable_rate / rate).clamp(0.01, 100.0)
    } else {
        1.0
    };
    analysis
        .checks
        .iter()
        .map(|check| plan_check(check, recent, rate, k))
        .collect()
}

fn plan_check(check: &Check, recent: &Judged, rate: f64, k: f64) -> Plan {
    let Some(evidence) = check.judging.evidence else {
        return Plan::None;
    };
    let confidence = match check.provider {
        Provider::MannWhitney { confidence, .. } => confidence,
        _ => check.judging.confidence,
    };
    let (alpha, power) = (1.0 - confidence, evidence.power);
    let needed = match &check.provider {
        Provider::Metric(m @ (Metric::ErrorRate | Metric::SuccessRate)) => {
            rates_effect(check, *m, recent)
                .map(|(p0, p1, effect)| (rates_needed(p0, p1, k, alpha, power), effect))
        }
        Provider::Metric(Metric::Latency(q)) => {
            latency_effect(check, *q, recent).and_then(|(shift, effect)| {
                latency_needed(&recent.stable.latency, shift, k, alpha, power).map(|n| (n, effect))
            })
        }
        Provider::MannWhitney { tolerance, .. } => {
            let shift = tolerance.max(0.01);
            latency_needed(&recent.stable.latency, shift, k, alpha, power)
                .map(|n| (n, percent_change(shift)))
        }
        _ => return Plan::None,
    };
    let Some((requests, effect)) = needed else {
        return Plan::Unknown(format!(
            "check {} cannot be planned: stable answered nothing in the last {}",
            check.name,
            span(RATE_WINDOW)
        ));
    };
    let planned = check.interval * check.count.max(1);
    let max = evidence.max_duration.unwrap_or(planned).max(planned);
    let mut need = Need {
        check: check.name.clone(),
        requests: requests.ceil().min(1e12) as u64,
        effect,
        confidence,
        power,
        rate,
        planned,
        stretched: planned,
        max,
    };
    if !need.reached() {
        let wanted = if rate > 0.0 {
            Duration::from_secs_f64((need.requests as f64 / rate).min(1e9))
        } else {
            max
        };
        // Whole seconds: a lengthened step reads as "7m 40s", not to the nanosecond.
        let wanted = Duration::from_secs(wanted.as_secs() + 1);
        need.stretched = wanted.clamp(planned, max);
    }
    Plan::Need(need)
}

/// The check lengthened as `need` says: the same measurements, each interval stretched.
pub fn stretch(check: &Check, need: &Need) -> Check {
    let mut out = check.clone();
    if !need.added().is_zero() {
        out.interval = need.stretched / check.count.max(1);
    }
    out
}

/// Stable's 5xx share and the share the check's smallest bound allows, with the effect's
/// words; `None` when no bound compares with stable.
fn rates_effect(check: &Check, m: Metric, recent: &Judged) -> Option<(f64, f64, String)> {
    let s = &recent.stable;
    let p0 = (s.classes[4] as f64 / s.requests.max(1) as f64).clamp(0.001, 0.999);
    let t = &check.threshold;
    // Every bound as the 5xx share it allows; a success rate's bounds mirror an error rate's.
    let errors = matches!(m, Metric::ErrorRate);
    let ok0 = 1.0 - p0;
    let mut bounds: Vec<(f64, String)> = Vec::new();
    if let Some(i) = t.allowed_increase {
        let p1 = if errors {
            p0 * (1.0 + i)
        } else {
            1.0 - ok0 * (1.0 + i)
        };
        bounds.push((p1, percent_change(i)));
    }
    if let Some(d) = t.allowed_decrease {
        let p1 = if errors {
            p0 * (1.0 - d)
        } else {
            1.0 - ok0 * (1.0 - d)
        };
        bounds.push((p1, percent_change(-d)));
    }
    if let Some(x) = t.max_over_stable {
        let p1 = if errors {
            p0 + x / 100.0
        } else {
            p0 - x / 100.0
        };
        bounds.push((p1, format!("+{x} point{}", if x == 1.0 { "" } else { "s" })));
    }
    if let Some(r) = t.max_ratio_to_stable {
        let p1 = if errors { p0 * r } else { 1.0 - ok0 * r };
        bounds.push((p1, format!("× {r}")));
    }
    bounds
        .into_iter()
        .map(|(p1, e)| (p1.clamp(1e-6, 1.0 - 1e-6), e))
        .filter(|(p1, _)| (p1 - p0).abs() > 1e-9)
        .min_by(|a, b| (a.0 - p0).abs().total_cmp(&(b.0 - p0).abs()))
        .map(|(p1, e)| (p0, p1, e))
}

/// The relative change of latency the check's smallest bound allows, with its words.
fn latency_effect(check: &Check, q: f64, recent: &Judged) -> Option<(f64, String)> {
    let t = &check.threshold;
    let stable_ms = recent
        .stable
        .percentile(q)
        .map(|d| d.as_secs_f64() * 1000.0)?;
    let mut shifts: Vec<(f64, String)> = Vec::new();
    if let Some(i) = t.allowed_increase {
        shifts.push((i, percent_change(i)));
    }
    if let Some(d) = t.allowed_decrease {
        shifts.push((-d, percent_change(-d)));
    }
    if let Some(x) = t.max_over_stable {
        shifts.push((x / stable_ms, format!("+{x} ms")));
    }
    if let Some(r) = t.max_ratio_to_stable {
        shifts.push((r - 1.0, format!("× {r}")));
    }
    shifts
        .into_iter()
        .map(|(s, e)| (s.max(-0.99), e))
        .filter(|(s, _)| s.abs() > 1e-9)
        .min_by(|a, b| a.0.abs().total_cmp(&b.0.abs()))
}

/// Candidate requests for a one-sided two-proportion z-test at `alpha` and `power`
/// (see the module's comment).
pub fn rates_needed(p0: f64, p1: f64, k: f64, alpha: f64, power: f64) -> f64 {
    let (za, zb) = (z(1.0 - alpha), z(power));
    let pooled = (p1 + k * p0) / (1.0 + k);
    let a = za * (pooled * (1.0 - pooled) * (1.0 + 1.0 / k)).sqrt();
    let b = zb * (p1 * (1.0 - p1) + p0 * (1.0 - p0) / k).sqrt();
    (a + b).powi(2) / (p1 - p0).powi(2)
}

/// Candidate requests for a one-sided Mann-Whitney test to see stable's latency scaled by
/// `1 + shift` (Noether; see the module's comment); `None` without stable answers.
pub fn latency_needed(stable: &[u64], shift: f64, k: f64, alpha: f64, power: f64) -> Option<f64> {
    let p = slower_chance(stable, shift)?;
    let (za, zb) = (z(1.0 - alpha), z(power));
    let c = 1.0 / (1.0 + k);
    let gap = (p - 0.5).abs().max(1e-6);
    Some((za + zb).powi(2) / (12.0 * (1.0 - c) * gap * gap))
}

/// P(X·(1 + shift) > Y) + ½ P(tie) for X, Y drawn from `hist` (5 % log buckets): the
/// histogram moved by `ln(1 + shift) / ln(1.05)` buckets, its fraction split between two.
fn slower_chance(hist: &[u64], shift: f64) -> Option<f64> {
    let n: u64 = hist.iter().sum();
    if n == 0 {
        return None;
    }
    let growth = (bucket_value(2).as_secs_f64() / bucket_value(1).as_secs_f64()).ln();
    let by = (1.0 + shift).ln() / growth;
    let (whole, frac) = (by.floor(), by - by.floor());
    let mut moved = vec![0.0; BUCKETS];
    for (i, &c) in hist.iter().enumerate() {
        let at = |d: f64| (i as f64 + whole + d).clamp(0.0, (BUCKETS - 1) as f64) as usize;
        moved[at(0.0)] += c as f64 * (1.0 - frac);
        moved[at(1.0)] += c as f64 * frac;
    }
    let mut below = 0.0;
    let mut wins = 0.0;
    for (m, &s) in moved.iter().zip(hist) {
        wins += m * (below + 0.5 * s as f64);
        below += s as f64;
    }
    Some(wins / (n as f64 * n as f64))
}

/// A count with thousands separated: `1,840`.
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// A duration as a sentence shows it: whole seconds (`5m`, `7m 40s`), or milliseconds below one.
pub fn span(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        return format!("{}ms", d.as_millis());
    }
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}
