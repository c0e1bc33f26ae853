//! Measurements from switchyard's own per-second windows: a metric against thresholds and
//! effect sizes, and a Mann-Whitney U comparison of candidate and stable latency. Each says
//! in one sentence what it saw, with the groups' names and its numbers.

use super::{Check, Measurement, Metric, Outcome};
use crate::metrics::{bucket_value, Summary};

fn value_of(m: Metric, s: &Summary) -> Option<f64> {
    match m {
        Metric::SuccessRate => s.success_rate(),
        Metric::ErrorRate => s.error_rate(),
        Metric::Latency(q) => s.percentile(q).map(|d| d.as_secs_f64() * 1000.0),
        Metric::RequestRate => Some(s.request_rate()),
        Metric::MirrorMismatchRate => s.mirror_mismatch_rate(),
    }
}

/// The groups a sentence names: the candidate and the stable group it is compared with.
#[derive(Debug, Clone, Copy)]
pub struct Names<'a> {
    pub candidate: &'a str,
    pub stable: &'a str,
}

/// A relative change as a sentence shows it: `+52.0 %`, `-3.1 %`; from 0 any rise is `+∞ %`.
pub fn percent_change(change: f64) -> String {
    if change.is_infinite() {
        "+∞ %".into()
    } else {
        format!("{:+.1} %", change * 100.0)
    }
}

/// `candidate / stable - 1`: +∞ when stable is 0 and the candidate is not.
fn relative(candidate: f64, stable: f64) -> f64 {
    if stable > 0.0 {
        candidate / stable - 1.0
    } else if candidate > 0.0 {
        f64::INFINITY
    } else {
        0.0
    }
}

pub fn metric(
    check: &Check,
    m: Metric,
    candidate: &Summary,
    stable: &Summary,
    names: Names,
) -> Measurement {
    let name = check.name.clone();
    let needs_stable = check.threshold.needs_stable();
    let few = |who: &str, n: u64| Measurement {
        check: name.clone(),
        outcome: Outcome::Inconclusive,
        value: None,
        detail: format!(
            "{who} had {n} requests in the window, fewer than the {} needed",
            check.min_requests
        ),
        requests: Some(candidate.requests),
    };
    if m == Metric::MirrorMismatchRate {
        return mirror_mismatch(check, candidate, names);
    }
    // A request rate is meaningful at any volume; everything else needs a sample.
    if !matches!(m, Metric::RequestRate) {
        if candidate.requests < check.min_requests.max(1) {
            return few("candidate", candidate.requests);
        }
        if needs_stable && stable.requests < check.min_requests.max(1) {
            return few("stable", stable.requests);
        }
    }
    let Some(value) = value_of(m, candidate) else {
        return few("candidate", candidate.requests);
    };
    let stable_value = if needs_stable {
        value_of(m, stable)
    } else {
        None
    };
    let shown = match stable_value {
        Some(s) => format!(
            "{} of {} {} vs {} {} ({} vs {} requests)",
            m.label(),
            names.candidate,
            m.show(value),
            names.stable,
            m.show(s),
            candidate.requests,
            stable.requests
        ),
        None => format!(
            "{} of {} {} ({} requests)",
            m.label(),
            names.candidate,
            m.show(value),
            candidate.requests
        ),
    };
    let outcome = |outcome, detail| Measurement {
        check: name.clone(),
        outcome,
        value: Some(value),
        detail,
        requests: Some(candidate.requests),
    };
    if let Some(why) = check.threshold.violation(value, stable_value, m.unit()) {
        return outcome(Outcome::Fail, format!("{shown}: {why}"));
    }
    match stable_value.and_then(|s| effect(check, m, (value, s), candidate, stable)) {
        Some((failed, why)) => outcome(
            if failed { Outcome::Fail } else { Outcome::Pass },
            format!("{shown}: {why}"),
        ),
        None => outcome(Outcome::Pass, shown),
    }
}

/// The mirror mismatch rate (`crate::mirror`): its sample is the copies compared. Over `max`
/// fails; it passes only when the rate's upper confidence bound (Wilson, one-sided, at the
/// check's confidence) is within `max` — 0 differences in 20 copies does not show a rate
/// under 1 % (the bound is 12 %), so that is "not enough copies yet", inconclusive.
fn mirror_mismatch(check: &Check, candidate: &Summary, names: Names) -> Measurement {
    let m = Metric::MirrorMismatchRate;
    let (n, bad) = (candidate.mirror_compared, candidate.mirror_mismatched);
    let measured = |outcome, value, detail| Measurement {
        check: check.name.clone(),
        outcome,
        value,
        detail,
        requests: Some(n),
    };
    let Some(value) = candidate
        .mirror_mismatch_rate()
        .filter(|_| n >= check.min_requests.max(1))
    else {
        return measured(
            Outcome::Inconclusive,
            None,
            format!(
                "{} had {n} mirrored copies compared in the window, fewer than the {} needed",
                names.candidate,
                check.min_requests.max(1)
            ),
        );
    };
    let shown = format!(
        "{} of {} {} ({bad} of {n} copies differed from the real answers)",
        m.label(),
        names.candidate,
        m.show(value)
    );
    if let Some(why) = check.threshold.violation(value, None, m.unit()) {
        return measured(Outcome::Fail, Some(value), format!("{shown}: {why}"));
    }
    let confidence = check.judging.confidence;
    let upper = wilson_upper(bad, n, confidence) * 100.0;
    match check.threshold.max {
        Some(max) if upper > max => measured(
            Outcome::Inconclusive,
            Some(value),
            format!(
                "{shown}: could still be up to {} at {:.0} % confidence, above max {max}% — not enough copies yet",
                m.show(upper),
                confidence * 100.0
            ),
        ),
        _ => measured(Outcome::Pass, Some(value), shown),
    }
}

/// The standard normal quantile: `z` with Φ(z) = `p`, by bisection on `erfc` (60 halvings of
/// [-10, 10]: far finer than the sample sizes need).
pub fn z(p: f64) -> f64 {
    let (mut lo, mut hi) = (-10.0_f64, 10.0_f64);
    for _ in 0..60 {
        let mid = (lo + hi) / 2.0;
        let phi = 1.0 - 0.5 * erfc(mid / std::f64::consts::SQRT_2);
        if phi < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (lo + hi) / 2.0
}

/// The one-sided upper bound of a proportion `k / n` at `confidence` (Wilson's score
/// interval), 0–1.
pub fn wilson_upper(k: u64, n: u64, confidence: f64) -> f64 {
    if n == 0 {
        return 1.0;
    }
    let z = z(confidence);
    let (n, p) = (n as f64, k as f64 / n as f64);
    let z2 = z * z;
    let centre = p + z2 / (2.0 * n);
    let spread = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre + spread) / (1.0 + z2 / n)).min(1.0)
}

/// The effect-size bounds (`allowed_increase` / `allowed_decrease`): whether the candidate's
/// value is beyond one with significance at the check's confidence, and the sentence saying
/// so. Latency is tested with Mann-Whitney U on the two histograms, rates with a
/// two-proportion z-test, one-sided in the direction of the bound. `None` without such
/// bounds.
fn effect(
    check: &Check,
    m: Metric,
    (value, stable_value): (f64, f64),
    candidate: &Summary,
    stable: &Summary,
) -> Option<(bool, String)> {
    let t = &check.threshold;
    let change = relative(value, stable_value);
    let (up, limit) = match (t.allowed_increase, t.allowed_decrease) {
        (Some(i), _) if change > i => (true, i),
        (_, Some(d)) if -change > d => (false, d),
        (None, None) => return None,
        _ => {
            let mut allowed = Vec::new();
            if let Some(i) = t.allowed_increase {
                allowed.push(percent_change(i));
            }
            if let Some(d) = t.allowed_decrease {
                allowed.push(percent_change(-d));
            }
            return Some((
                false,
                format!(
                    "{} within allowed {}",
                    percent_change(change),
                    allowed.join(" / ")
                ),
            ));
        }
    };
    let (test, p) = match m {
        Metric::Latency(_) => {
            let r = if up {
                mann_whitney(&candidate.latency, &stable.latency)
            } else {
                mann_whitney(&stable.latency, &candidate.latency)
            };
            ("Mann-Whitney", r.map_or(1.0, |r| r.p))
        }
        // Success and error rates are two faces of one proportion: the 5xx answers.
        _ => {
            let higher_errors = up == matches!(m, Metric::ErrorRate);
            let (c, s) = (
                (candidate.classes[4], candidate.requests),
                (stable.classes[4], stable.requests),
            );
            let p = if higher_errors {
                two_proportion_p(c, s)
            } else {
                two_proportion_p(s, c)
            };
            ("z-test", p)
        }
    };
    let alpha = 1.0 - check.judging.confidence;
    let bound = if up {
        format!("> allowed {}", percent_change(limit))
    } else {
        format!("< allowed {}", percent_change(-limit))
    };
    let change = percent_change(change);
    Some(if p < alpha {
        (true, format!("{change} {bound} ({test} {})", p_value(p)))
    } else {
        (
            false,
            format!(
                "{change} {bound} but not significantly ({test} {} ≥ {alpha:.3})",
                p_value(p)
            ),
        )
    })
}

/// A p-value as a sentence shows it: `p = 0.003`, `p < 0.0001` below that.
pub fn p_value(p: f64) -> String {
    if p < 1e-4 {
        "p < 0.0001".into()
    } else if p < 0.01 {
        format!("p = {p:.4}")
    } else {
        format!("p = {p:.3}")
    }
}

/// One-sided p of a two-proportion z-test (pooled): the chance of `a`'s share of events
/// being this much above `b`'s if both shared one rate. `(events, trials)` each.
pub fn two_proportion_p(a: (u64, u64), b: (u64, u64)) -> f64 {
    let (na, nb) = (a.1 as f64, b.1 as f64);
    if na == 0.0 || nb == 0.0 {
        return 1.0;
    }
    let (pa, pb) = (a.0 as f64 / na, b.0 as f64 / nb);
    let pooled = (a.0 + b.0) as f64 / (na + nb);
    let se = (pooled * (1.0 - pooled) * (1.0 / na + 1.0 / nb)).sqrt();
    if se == 0.0 {
        return if pa > pb { 0.0 } else { 1.0 };
    }
    0.5 * erfc((pa - pb) / se / std::f64::consts::SQRT_2)
}

/// The result of a Mann-Whitney U test on two latency histograms with the same buckets.
#[derive(Debug, Clone, PartialEq)]
pub struct MannWhitney {
    /// U of the candidate: pairs where the candidate is slower, ties counting half.
    pub u: f64,
    pub z: f64,
    /// One-sided: the chance of a U this large if the candidate were no slower.
    pub p: f64,
    pub median_candidate_ms: f64,
    pub median_stable_ms: f64,
}

pub fn mann_whitney(candidate: &[u64], stable: &[u64]) -> Option<MannWhitney> {
    let n1: u64 = candidate.iter().sum();
    let n2: u64 = stable.iter().sum();
    if n1 == 0 || n2 == 0 {
        return None;
    }
    let (n1f, n2f) = (n1 as f64, n2 as f64);
    let mut u = 0.0;
    let mut stable_below = 0.0;
    let mut ties = 0.0;
    for (c, s) in candidate.iter().zip(stable) {
        let (c, s) = (*c as f64, *s as f64);
        u += c * (stable_below + 0.5 * s);
        stable_below += s;
        let t = c + s;
        ties += t * t * t - t;
    }
    let n = n1f + n2f;
    let mean = n1f * n2f / 2.0;
    let var = n1f * n2f / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)).max(1.0));
    let z = if var > 0.0 {
        (u - mean) / var.sqrt()
    } else {
        0.0
    };
    let median = |h: &[u64], total: u64| {
        let mut seen = 0;
        for (i, k) in h.iter().enumerate() {
            seen += k;
            if seen * 2 >= total {
                return bucket_value(i).as_secs_f64() * 1000.0;
            }
        }
        0.0
    };
    Some(MannWhitney {
        u,
        z,
        p: 0.5 * erfc(z / std::f64::consts::SQRT_2),
        median_candidate_ms: median(candidate, n1),
        median_stable_ms: median(stable, n2),
    })
}

pub fn compare_latency(
    check: &Check,
    confidence: f64,
    tolerance: f64,
    candidate: &Summary,
    stable: &Summary,
    names: Names,
) -> Measurement {
    let name = check.name.clone();
    let (n1, n2) = (candidate.requests, stable.requests);
    let inconclusive = |detail: String| Measurement {
        check: name.clone(),
        outcome: Outcome::Inconclusive,
        value: None,
        detail,
        requests: Some(n1),
    };
    if n1 < check.min_requests.max(1) || n2 < check.min_requests.max(1) {
        return inconclusive(format!(
            "{n1} candidate and {n2} stable requests; {} each are needed",
            check.min_requests
        ));
    }
    let Some(r) = mann_whitney(&candidate.latency, &stable.latency) else {
        return inconclusive("no latency samples".into());
    };
    let effect = relative(r.median_candidate_ms, r.median_stable_ms);
    let alpha = 1.0 - confidence;
    let slower = r.p < alpha && effect > tolerance;
    let judged = if slower {
        format!("> allowed {}", percent_change(tolerance))
    } else if effect > tolerance {
        format!(
            "> allowed {} but not significantly (p ≥ {alpha:.3})",
            percent_change(tolerance)
        )
    } else {
        format!("within allowed {}", percent_change(tolerance))
    };
    let detail = format!(
        "median candidate {} {:.2} ms vs stable {} {:.2} ms: {} {judged} (Mann-Whitney U={:.0} z={:.2} {}, n = {n1} / {n2})",
        names.candidate,
        r.median_candidate_ms,
        names.stable,
        r.median_stable_ms,
        percent_change(effect),
        r.u,
        r.z,
        p_value(r.p),
    );
    Measurement {
        check: name,
        outcome: if slower { Outcome::Fail } else { Outcome::Pass },
        value: Some(r.p),
        detail,
        requests: Some(n1),
    }
}

/// The complementary error function (W. J. Cody's rational approximations via the
/// Numerical Recipes form; |error| < 1.2e-7, ample for p-values). Also the guard's
/// sample-ratio test's.
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::BUCKETS;

    fn hist(ms: &[f64]) -> Vec<u64> {
        let w = crate::metrics::Window::default();
        for m in ms {
            w.record(
                crate::metrics::now_second(),
                200,
                std::time::Duration::from_secs_f64(m / 1000.0),
                None,
            );
        }
        w.last(std::time::Duration::from_secs(1)).latency
    }

    /// The bound the mirror check passes on: 0 of 20 is not under 1 % at 95 % (about 12 %),
    /// 0 of 300 is (about 0.9 %); 3 of 100 (3 %) is under 10 %, and never under itself.
    #[test]
    fn the_wilson_upper_bound_needs_enough_copies() {
        let at = |k, n| wilson_upper(k, n, 0.95) * 100.0;
        assert!((at(0, 20) - 11.9).abs() < 0.3, "{}", at(0, 20));
        assert!(at(0, 300) < 1.0, "{}", at(0, 300));
        assert!(at(3, 100) > 3.0 && at(3, 100) < 10.0, "{}", at(3, 100));
        assert_eq!(wilson_upper(0, 0, 0.95), 1.0);
        assert_eq!(wilson_upper(5, 5, 0.95), 1.0);
    }

    #[test]
    fn erfc_matches_known_values() {
        assert!((erfc(0.0) - 1.0).abs() < 1e-6);
        assert!((erfc(1.0) - 0.157_299_2).abs() < 1e-6);
        assert!((erfc(-1.0) - 1.842_700_8).abs() < 1e-6);
    }

    #[test]
    fn a_slower_candidate_is_significant_and_an_equal_one_is_not() {
        let stable: Vec<f64> = (0..300).map(|i| 10.0 + (i % 10) as f64).collect();
        let slower: Vec<f64> = (0..300).map(|i| 14.0 + (i % 10) as f64).collect();
        let r = mann_whitney(&hist(&slower), &hist(&stable)).unwrap();
        assert!(r.p < 0.001, "{r:?}");
        assert!(r.median_candidate_ms > r.median_stable_ms);
        let r = mann_whitney(&hist(&stable), &hist(&stable)).unwrap();
        assert!((r.p - 0.5).abs() < 0.01, "{r:?}");
        assert_eq!(hist(&[1.0]).len(), BUCKETS);
    }
}
