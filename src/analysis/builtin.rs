//! Measurements from switchyard's own per-second windows: a metric against thresholds, and
//! a Mann-Whitney U comparison of candidate and stable latency.

use super::{Check, Measurement, Metric, Outcome};
use crate::metrics::{bucket_value, Summary};

fn value_of(m: Metric, s: &Summary) -> Option<f64> {
    match m {
        Metric::SuccessRate => s.success_rate(),
        Metric::ErrorRate => s.error_rate(),
        Metric::Latency(q) => s.percentile(q).map(|d| d.as_secs_f64() * 1000.0),
        Metric::RequestRate => Some(s.request_rate()),
    }
}

pub fn metric(check: &Check, m: Metric, candidate: &Summary, stable: &Summary) -> Measurement {
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
    };
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
    let unit = m.unit();
    let shown = match stable_value {
        Some(s) => format!(
            "candidate {value:.3}{unit}, stable {s:.3}{unit} ({} vs {} requests)",
            candidate.requests, stable.requests
        ),
        None => format!(
            "candidate {value:.3}{unit} ({} requests)",
            candidate.requests
        ),
    };
    match check.threshold.violation(value, stable_value, unit) {
        Some(why) => Measurement {
            check: name,
            outcome: Outcome::Fail,
            value: Some(value),
            detail: format!("{shown}: {why}"),
        },
        None => Measurement {
            check: name,
            outcome: Outcome::Pass,
            value: Some(value),
            detail: shown,
        },
    }
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
) -> Measurement {
    let name = check.name.clone();
    let (n1, n2) = (candidate.requests, stable.requests);
    if n1 < check.min_requests.max(1) || n2 < check.min_requests.max(1) {
        return Measurement {
            check: name,
            outcome: Outcome::Inconclusive,
            value: None,
            detail: format!(
                "{n1} candidate and {n2} stable requests; {} each are needed",
                check.min_requests
            ),
        };
    }
    let Some(r) = mann_whitney(&candidate.latency, &stable.latency) else {
        return Measurement {
            check: name,
            outcome: Outcome::Inconclusive,
            value: None,
            detail: "no latency samples".into(),
        };
    };
    let effect = if r.median_stable_ms > 0.0 {
        r.median_candidate_ms / r.median_stable_ms - 1.0
    } else {
        0.0
    };
    let slower = r.p < 1.0 - confidence && effect > tolerance;
    let detail = format!(
        "Mann-Whitney U={:.0} z={:.2} p={:.4} (n={n1}/{n2}); median candidate {:.2} ms, stable {:.2} ms ({:+.1} %); \
         fails when p < {:.3} and the median is more than {:.0} % higher",
        r.u,
        r.z,
        r.p,
        r.median_candidate_ms,
        r.median_stable_ms,
        effect * 100.0,
        1.0 - confidence,
        tolerance * 100.0
    );
    Measurement {
        check: name,
        outcome: if slower { Outcome::Fail } else { Outcome::Pass },
        value: Some(r.p),
        detail,
    }
}

/// The complementary error function (W. J. Cody's rational approximations via the
/// Numerical Recipes form; |error| < 1.2e-7, ample for p-values). Also the guard's
/// sample-ratio test's.
pub(super) fn erfc(x: f64) -> f64 {
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
