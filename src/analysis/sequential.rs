//! The guard's statistics: sequential tests whose error rates hold however often they look,
//! and the sample-ratio check. Pure: counts in, bounds and verdicts out (the control plane's
//! `guard` feeds it and acts).
//!
//! **The rate bound.** For a Bernoulli rate p (a 5xx, or an answer slower than a threshold)
//! after n answers with k events, the beta-binomial mixture
//! `M_n(p) = B(½+k, ½+n−k) / B(½, ½) / (p^k (1−p)^(n−k))` is a nonnegative martingale under
//! p (a Bayes factor of the Jeffreys mixture against p), so by Ville's inequality
//! `P(∃n: M_n(p) ≥ 1/a) ≤ a`: the set `{p : M_n(p) < 1/a}` covers p at every n at once,
//! however often it is looked at (an always-valid confidence sequence, Robbins 1970; Howard
//! et al. 2021). Unlike a Hoeffding-style bound it is tight for rare events and a few dozen
//! answers, which is where the guard has to decide.
//!
//! **The difference.** The candidate's lower bound minus stable's upper bound (each at a/2)
//! bounds `p_candidate − p_stable` from below with probability ≥ 1 − a at all times; the
//! guard rolls back when it exceeds the tolerated difference. With no stable answers the
//! candidate is held to the tolerance alone: stable's 5xx rate taken as 0 (as the guard
//! always did), and its share of slow answers as 1 % — an answer is slow above a multiple
//! (≥ 1) of stable's own p99, so at most 1 % of stable's answers are, and taking 0 rolled a
//! healthy candidate back for the 1–2 % of answers over it on a busy host (an A/B test,
//! whose matching requests all go to the candidate, on CI: 80 of 3434).
//!
//! **Changes mid-rollout.** A candidate that turns bad after minutes of good answers would
//! take minutes to move a test that began with the rollout. So a test begins at every tick
//! and lives for `window`; the guard looks at all living ones at each tick. Each is always
//! valid on its own; with one begun per `interval`, a false alarm over an hour needs one of
//! `3600 s / interval` tests to err, so each gets `alpha × interval / 1 h` (a union bound):
//! `alpha` is the probability of a false rollback per hour of a healthy rollout. Cost: the
//! log of the number of tests, ~10 nats at 100 ms ticks — detecting sooner than that would
//! need a looser guarantee.
//!
//! **Shared changes.** Stable's long reference assumes its rate holds still while the
//! candidate's test runs. A change both versions show at once — the host starved of CPU, a
//! dependency of both failing for a second — breaks that: the candidate's young test sees
//! only the bad second, stable's reference dilutes it over ten. So when stable's own answers
//! in a test's span ("alongside") show a rate more than the tolerance above its reference's,
//! the test compares the candidate with those answers instead. The bound is then wider (fewer
//! answers), so it only ever rolls back less: the guarantee above holds. What it gives up is
//! rolling back for a change both versions show at once, which the data cannot pin on the
//! candidate.
//!
//! **Sample ratio.** Candidate answers out of all, against the configured share: Pearson's
//! chi-square with one degree of freedom (a two-sided z test), p from `erfc`.

use std::collections::VecDeque;
use std::time::Duration;

/// Answers and events (5xx, or slower than the latency threshold) of one group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub n: u64,
    pub k: u64,
}

impl Counts {
    /// The events' share in percent (0 without answers).
    pub fn percent(self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            100.0 * self.k as f64 / self.n as f64
        }
    }

    fn add(&mut self, o: Counts) {
        self.n += o.n;
        self.k += o.k;
    }
}

/// One tick's new answers of both groups.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tick {
    /// Candidate: answers and 5xx; answers and those slower than the latency threshold.
    pub candidate_errors: Counts,
    pub candidate_slow: Counts,
    pub stable_errors: Counts,
    pub stable_slow: Counts,
}

/// How the tests judge.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Tolerated 5xx difference, points.
    pub max_error_points: f64,
    /// Tolerated difference in the share of slow answers, points.
    pub max_slow_points: f64,
    /// `ln(1/a)` of each one-sided rate bound (see [`Settings::level`]).
    pub log_level: f64,
    /// Candidate answers a test needs before it may roll back.
    pub min_requests: u64,
}

impl Settings {
    /// `ln(1/a)` for each rate bound when `alpha` per hour is spent over one test begun per
    /// `interval`, each test being two comparisons (errors, latency) of two bounds each.
    pub fn level(alpha_per_hour: f64, interval: Duration) -> f64 {
        let per_test = alpha_per_hour * interval.as_secs_f64().max(1e-3) / 3600.0;
        (4.0 / per_test).ln()
    }

    /// The per-test false alarm rate this level gives (for the reasons' wording).
    pub fn per_test_alpha(&self) -> f64 {
        4.0 * (-self.log_level).exp()
    }
}

/// One comparison at one look: the counts of the test with the highest lower bound, and it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    pub candidate: Counts,
    /// Stable's answers it was compared with: over the reference span, or over the test's
    /// own span when stable changed too (see "shared changes" above).
    pub stable: Counts,
    /// How many ticks those answers of stable span.
    pub stable_ticks: usize,
    /// Whether they were stable's answers alongside (it changed too), not the reference.
    pub alongside: bool,
    /// Lower bound of the difference of the rates, points (may be negative).
    pub lower_points: f64,
    /// How many ticks the candidate's side of that test has seen.
    pub ticks: usize,
}

impl Comparison {
    /// Whether it crosses `tolerance` with enough candidate answers.
    pub fn breaches(&self, tolerance: f64, min_requests: u64) -> bool {
        self.candidate.n >= min_requests && self.lower_points > tolerance
    }
}

/// What one look found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Look {
    pub errors: Comparison,
    pub latency: Comparison,
}

/// The living tests: one begun before each of the last ticks within `window`; stable's
/// answers over at least [`REFERENCE`].
///
/// A change after minutes of good answers is caught by the tests begun after it, which have
/// not seen those (a test that had would dilute it). Stable is the reference, and its rate
/// does not change when the candidate's does: every test compares the candidate's answers
/// since its beginning with stable's over the whole reference span, so that a test begun
/// 300 ms ago (15 candidate answers at 50 req/s) is not held back by a bound on 300 ms of
/// stable's answers as well.
#[derive(Debug, Clone)]
pub struct Judge {
    ticks: VecDeque<Tick>,
    tests: usize,
    reference: usize,
}

/// How long stable's answers are the reference, at least (the guard's `window` when longer).
pub const REFERENCE: Duration = Duration::from_secs(10);

impl Judge {
    /// Tests that live `window`, one begun every `interval`.
    pub fn new(window: Duration, interval: Duration) -> Judge {
        let ticks = |d: Duration| {
            ((d.as_secs_f64() / interval.as_secs_f64().max(1e-3)).ceil() as usize).max(1)
        };
        Judge {
            ticks: VecDeque::new(),
            tests: ticks(window),
            reference: ticks(window.max(REFERENCE)),
        }
    }

    /// Takes in a tick's new answers; the oldest test ends.
    pub fn push(&mut self, t: Tick) {
        self.ticks.push_back(t);
        while self.ticks.len() > self.reference {
            self.ticks.pop_front();
        }
    }

    /// Looks at every living test; for each comparison, the one with the highest lower bound
    /// among those whose observed difference is over the tolerance with `min_requests` (else
    /// the oldest, as a reading of where things stand).
    pub fn look(&self, s: &Settings) -> Look {
        let (mut se, mut ss) = (Counts::default(), Counts::default());
        for t in &self.ticks {
            se.add(t.stable_errors);
            ss.add(t.stable_slow);
        }
        let span = self.ticks.len();
        let mut errors = Best::new(se, span, (s.max_error_points, 0.0), s);
        let mut latency = Best::new(ss, span, (s.max_slow_points, SLOW_WITHOUT_ANSWERS), s);
        let (mut ce, mut cs) = (Counts::default(), Counts::default());
        let (mut ae, mut als) = (Counts::default(), Counts::default());
        for (i, t) in self.ticks.iter().rev().take(self.tests).enumerate() {
            ce.add(t.candidate_errors);
            cs.add(t.candidate_slow);
            ae.add(t.stable_errors);
            als.add(t.stable_slow);
            errors.consider(ce, ae, i + 1, s);
            latency.consider(cs, als, i + 1, s);
        }
        Look {
            errors: errors.done(s),
            latency: latency.done(s),
        }
    }
}

/// The best test of one comparison so far.
#[derive(Debug)]
struct Best {
    /// Stable's answers over the reference span, how many ticks that is, and their upper
    /// bound (the same for every test of a look that uses them).
    reference: Counts,
    reference_ticks: usize,
    reference_upper: f64,
    tolerance: f64,
    /// Stable's rate taken when it has no answers (see "the difference").
    without_answers: f64,
    best: Option<Comparison>,
    /// The oldest test's candidate answers, stable's alongside, and its ticks.
    oldest: (Counts, Counts, usize),
}

impl Best {
    fn new(
        reference: Counts,
        reference_ticks: usize,
        (tolerance, without_answers): (f64, f64),
        s: &Settings,
    ) -> Best {
        Best {
            reference,
            reference_ticks,
            reference_upper: upper_or(reference, s.log_level, without_answers),
            tolerance,
            without_answers,
            best: None,
            oldest: (Counts::default(), Counts::default(), 0),
        }
    }

    fn consider(&mut self, c: Counts, alongside: Counts, ticks: usize, s: &Settings) {
        self.oldest = (c, alongside, ticks);
        let (stable, stable_ticks, alongside) = self.stable_side(alongside, ticks);
        // The lower bound is under the observed difference: a test whose observed difference
        // is within the tolerance, or under the best bound so far, cannot roll back or beat
        // it (most looks end here).
        let seen = c.percent() - stable.percent();
        if c.n < s.min_requests
            || seen <= self.tolerance
            || self.best.is_some_and(|b| seen <= b.lower_points)
        {
            return;
        }
        let lower_points = self.lower_points(c, stable, alongside, s);
        if self.best.is_none_or(|b| lower_points > b.lower_points) {
            self.best = Some(Comparison {
                candidate: c,
                stable,
                stable_ticks,
                alongside,
                lower_points,
                ticks,
            });
        }
    }

    /// Stable's answers a test of `ticks` is judged against: the reference, unless those
    /// alongside show a rate more than the tolerance above it (see "shared changes").
    fn stable_side(&self, alongside: Counts, ticks: usize) -> (Counts, usize, bool) {
        if alongside.n > 0 && alongside.percent() > self.reference.percent() + self.tolerance {
            (alongside, ticks, true)
        } else {
            (self.reference, self.reference_ticks, false)
        }
    }

    fn lower_points(&self, c: Counts, stable: Counts, alongside: bool, s: &Settings) -> f64 {
        let upper = if alongside {
            upper_or(stable, s.log_level, self.without_answers)
        } else {
            self.reference_upper
        };
        100.0 * (rate_bounds(c, s.log_level).0 - upper)
    }

    fn done(self, s: &Settings) -> Comparison {
        if let Some(best) = self.best {
            return best;
        }
        let (c, alongside, ticks) = self.oldest;
        let (stable, stable_ticks, alongside) = self.stable_side(alongside, ticks);
        Comparison {
            candidate: c,
            stable,
            stable_ticks,
            alongside,
            lower_points: self.lower_points(c, stable, alongside, s),
            ticks,
        }
    }
}

/// Lower bound, in points, of the candidate's rate minus stable's (each bound at level
/// `exp(-log_level)`); stable's rate is taken as 0 when it has no answers.
pub fn difference_lower(c: Counts, stable: Counts, log_level: f64) -> f64 {
    100.0 * (rate_bounds(c, log_level).0 - upper_or(stable, log_level, 0.0))
}

/// Stable's share of answers slower than the latency threshold taken when it has none: the
/// threshold is at least its p99 (see "the difference").
const SLOW_WITHOUT_ANSWERS: f64 = 0.01;

/// Stable's upper bound; `without` when it has no answers (see the module comment).
fn upper_or(stable: Counts, log_level: f64, without: f64) -> f64 {
    if stable.n == 0 {
        without
    } else {
        rate_bounds(stable, log_level).1
    }
}

/// The confidence sequence `{p : ln M_n(p) < log_level}` for a Bernoulli rate (see the
/// module comment): its lower and upper ends.
pub fn rate_bounds(c: Counts, log_level: f64) -> (f64, f64) {
    if c.n == 0 {
        return (0.0, 1.0);
    }
    let (n, k) = (c.n as f64, c.k.min(c.n) as f64);
    let mix = ln_beta(0.5 + k, 0.5 + n - k) - ln_beta(0.5, 0.5);
    // ln M(p) − level: convex in p, least at k/n (where it is ≤ −level, since the mixture is
    // never above the best likelihood), so each end is one bisection.
    let f = |p: f64| mix - k * p.ln() - (n - k) * (1.0 - p).ln() - log_level;
    let mle = k / n;
    let lower = if k == 0.0 {
        0.0
    } else {
        bisect(|p| f(p) > 0.0, 0.0, mle)
    };
    let upper = if k == n {
        1.0
    } else {
        1.0 - bisect(|q| f(1.0 - q) > 0.0, 0.0, 1.0 - mle)
    };
    (lower, upper)
}

/// The boundary in `[lo, hi]` where `outside` turns false (true at `lo`, false at `hi`).
fn bisect(outside: impl Fn(f64) -> bool, mut lo: f64, mut hi: f64) -> f64 {
    for _ in 0..40 {
        let mid = 0.5 * (lo + hi);
        if mid <= 0.0 || outside(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

fn ln_beta(a: f64, b: f64) -> f64 {
    ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b)
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7: ~15 significant digits).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1−x) = π / sin(πx).
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + 7.5;
    let sum = G[0]
        + G[1..]
            .iter()
            .enumerate()
            .map(|(i, g)| g / (x + i as f64 + 1.0))
            .sum::<f64>();
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

/// The sample-ratio test of `candidate` answers out of `total` against the configured
/// `share` (0–1): the p-value of Pearson's chi-square (1 degree of freedom); 1 when there is
/// nothing to test (no answers, or a share of 0 or 1).
pub fn sample_ratio_p(candidate: u64, total: u64, share: f64) -> f64 {
    if total == 0 || share <= 0.0 || share >= 1.0 {
        return 1.0;
    }
    let expected = total as f64 * share;
    let z = (candidate as f64 - expected).abs() / (expected * (1.0 - share)).sqrt();
    super::builtin::erfc(z / std::f64::consts::SQRT_2)
}

#[cfg(test)]
#[path = "sequential_tests.rs"]
mod tests;
