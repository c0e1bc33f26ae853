//! Analysis: named sets of checks that judge a candidate. Each check measures `count` times,
//! one every `interval`; failures beyond `failure_limit` fail the check, inconclusive or
//! erroneous measurements beyond `inconclusive_limit` make it inconclusive. How the checks'
//! results make the analysis's verdict (pass moves on, fail rolls back, inconclusive pauses
//! for a person) is `score`'s one rule; how many requests a comparison needs, and how far a
//! step is lengthened to get them, is `evidence`'s. Too little traffic is inconclusive, never
//! a pass.

pub mod backtest;
pub mod builtin;
pub mod evidence;
pub mod external;
pub mod new_errors;
pub mod run;
pub mod score;
pub mod sequential;

use std::time::Duration;

use serde::Serialize;

use crate::metrics::Summary;

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

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnalysisConfig {
    pub name: String,
    pub checks: Vec<Check>,
    /// How the checks' results combine into the verdict.
    pub scoring: Scoring,
}

/// The thresholds of an analysis's score (0–100, the weighted share of checks that passed):
/// at or above `pass` it passes, at or above `marginal` it is inconclusive (a person
/// decides), below it fails. Without `pass_score` / `marginal_score` in the file both are
/// 100: every check must pass, as before scores existed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Scoring {
    pub pass: f64,
    pub marginal: f64,
    /// Whether the file set a threshold (the verdict's sentence then leads with the score).
    pub scored: bool,
}

impl Default for Scoring {
    fn default() -> Self {
        Scoring {
            pass: 100.0,
            marginal: 100.0,
            scored: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub name: String,
    pub provider: Provider,
    pub threshold: Threshold,
    pub interval: Duration,
    /// Measurements to take; 0 in the background means "until the rollout ends".
    pub count: u32,
    pub failure_limit: u32,
    pub inconclusive_limit: u32,
    /// Candidate requests (and stable ones, for a comparison) a built-in measurement needs.
    pub min_requests: u64,
    /// How much recent traffic a built-in measurement looks at.
    pub window: Duration,
    /// What the check weighs in the score, and the evidence it needs.
    pub judging: Judging,
}

/// A check's part in its analysis's verdict (see `score`) and the evidence its comparison
/// needs (see `evidence`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Judging {
    /// Its failure fails the analysis whatever the score.
    pub critical: bool,
    /// Its share of the score, relative to the other checks' (1 by default).
    pub weight: f64,
    /// How sure an effect beyond `allowed_increase` / `allowed_decrease` must be to fail
    /// the check (one-sided; 0.95 by default).
    pub confidence: f64,
    /// Set when the check's evidence is planned before a step: it then judges everything
    /// since its analysis began.
    pub evidence: Option<Evidence>,
}

impl Default for Judging {
    fn default() -> Self {
        Judging {
            critical: false,
            weight: 1.0,
            confidence: 0.95,
            evidence: None,
        }
    }
}

/// What a comparison's sample must be able to show.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Evidence {
    /// The chance of seeing the configured effect when it is there (0.8 by default).
    pub power: f64,
    /// How long the check's measuring may be lengthened to (its own `count × interval`
    /// when not set: not lengthened).
    pub max_duration: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Provider {
    Metric(Metric),
    /// Mann-Whitney U on candidate vs stable latency: fails when the candidate is slower with
    /// `confidence` and its median is more than `tolerance` (relative) above stable's.
    MannWhitney {
        confidence: f64,
        tolerance: f64,
    },
    /// A fingerprint of failed answers only the candidate gave, `min_count` times or more,
    /// fails (see `new_errors`).
    NewErrors {
        min_count: u64,
    },
    Prometheus {
        url: String,
        query: String,
        timeout: Duration,
    },
    Webhook {
        url: String,
        timeout: Duration,
    },
    Command {
        command: String,
        timeout: Duration,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Metric {
    /// Percent of answers that are not 5xx.
    SuccessRate,
    /// Percent of answers that are 5xx.
    ErrorRate,
    /// Latency at a quantile, in milliseconds.
    Latency(f64),
    /// Requests per second.
    RequestRate,
    /// Percent of mirrored copies to the candidate whose answer differed from the real one
    /// (`crate::mirror`); its sample is the copies compared, not the requests.
    MirrorMismatchRate,
}

impl Metric {
    pub fn parse(s: &str) -> Option<Metric> {
        Some(match s {
            "success-rate" => Metric::SuccessRate,
            "error-rate" => Metric::ErrorRate,
            "request-rate" => Metric::RequestRate,
            "mirror-mismatch-rate" => Metric::MirrorMismatchRate,
            _ => {
                let q: f64 = s.strip_prefix("latency-p")?.parse().ok()?;
                if !(0.0 < q && q < 100.0) {
                    return None;
                }
                Metric::Latency(q / 100.0)
            }
        })
    }

    /// What a sentence calls it: `error rate`, `p99`.
    pub fn label(self) -> String {
        match self {
            Metric::SuccessRate => "success rate".into(),
            Metric::ErrorRate => "error rate".into(),
            Metric::RequestRate => "request rate".into(),
            Metric::MirrorMismatchRate => "mirror mismatch rate".into(),
            Metric::Latency(q) => format!("p{}", (q * 1000.0).round() / 10.0),
        }
    }

    /// A value of it as a sentence shows it: rates to 0.01 %, latencies to 3 figures.
    pub fn show(self, v: f64) -> String {
        match self {
            Metric::SuccessRate | Metric::ErrorRate | Metric::MirrorMismatchRate => {
                format!("{v:.2}%")
            }
            Metric::RequestRate => format!("{v:.1} req/s"),
            Metric::Latency(_) if v >= 100.0 => format!("{v:.0} ms"),
            Metric::Latency(_) if v >= 10.0 => format!("{v:.1} ms"),
            Metric::Latency(_) => format!("{v:.2} ms"),
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Metric::SuccessRate | Metric::ErrorRate | Metric::MirrorMismatchRate => "%",
            Metric::Latency(_) => " ms",
            Metric::RequestRate => " req/s",
        }
    }
}

/// Bounds a measured value must keep. `*_stable` ones compare with the stable group over the
/// same window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Threshold {
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// value ≤ stable + this (percentage points for rates, ms for latency).
    pub max_over_stable: Option<f64>,
    /// value ≤ stable × this.
    pub max_ratio_to_stable: Option<f64>,
    /// The effect sizes: the candidate's value may be at most this much (relative: 0.2 is
    /// 20 %) above stable's, or below it, unless the difference is not significant at the
    /// check's confidence.
    pub allowed_increase: Option<f64>,
    pub allowed_decrease: Option<f64>,
}

impl Threshold {
    pub fn needs_stable(&self) -> bool {
        self.max_over_stable.is_some()
            || self.max_ratio_to_stable.is_some()
            || self.allowed_increase.is_some()
            || self.allowed_decrease.is_some()
    }

    /// Why `value` breaks the threshold, if it does.
    pub fn violation(&self, value: f64, stable: Option<f64>, unit: &str) -> Option<String> {
        if let Some(max) = self.max.filter(|m| value > *m) {
            return Some(format!("{value:.3}{unit} > max {max}{unit}"));
        }
        if let Some(min) = self.min.filter(|m| value < *m) {
            return Some(format!("{value:.3}{unit} < min {min}{unit}"));
        }
        if let (Some(d), Some(s)) = (self.max_over_stable, stable) {
            if value > s + d {
                return Some(format!(
                    "{value:.3}{unit} > stable {s:.3}{unit} + {d}{unit}"
                ));
            }
        }
        if let (Some(r), Some(s)) = (self.max_ratio_to_stable, stable) {
            if value > s * r {
                return Some(format!("{value:.3}{unit} > {r} × stable {s:.3}{unit}"));
            }
        }
        None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Pass,
    Fail,
    Inconclusive,
    /// The provider's answer was missing or malformed; counts as inconclusive.
    Error,
}

/// One measurement of one check, explained.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Measurement {
    pub check: String,
    pub outcome: Outcome,
    pub value: Option<f64>,
    pub detail: String,
    /// The candidate requests a built-in measurement judged (what its evidence is weighed
    /// by); absent for a measurement from outside.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
}

/// The rollout-side settings of a service's fast rollback guard (see `sequential` for the
/// statistics and `control::guard` for what it does with them).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Guard {
    pub enabled: bool,
    /// How often it looks (and begins a new test).
    pub interval: Duration,
    /// How long each test lives: the longest run of answers one judgement spans; after a
    /// restart a rollout is held until the guard has watched this long.
    pub window: Duration,
    /// The tolerated difference of 5xx rates, points: the guard rolls back once the lower
    /// bound of the candidate's rate minus stable's exceeds it.
    pub max_error_rate: f64,
    /// Candidate answers a test needs before it may roll back.
    pub min_requests: u64,
    /// The probability of a false rollback per hour of a healthy rollout (errors and latency
    /// together).
    pub alpha: f64,
    /// An answer is slow when it takes longer than this × stable's p99; the guard rolls back
    /// once the candidate's share of slow answers is surely more than 1 point over stable's
    /// (a candidate whose p99 is under the threshold has at most 1 % slow answers).
    pub max_latency_ratio: f64,
    /// …and longer than stable's p99 by at least this much. Without it a fast service's line
    /// sits within the scheduler's reach: 1.5 × a 0.3 ms p99 is crossed by every answer a
    /// busy host holds up for half a millisecond, and after a blue-green switch (or in an
    /// A/B test with only matching traffic) stable answers nothing alongside to show that
    /// the host, not the version, was slow. Finer regressions are the analyses' to find.
    pub min_latency_increase: Duration,
    /// Whether a split that does not match the configured weight pauses the rollout.
    pub sample_ratio: bool,
}

impl Guard {
    /// The tolerated difference of slow answers' shares, points.
    pub const MAX_SLOW_POINTS: f64 = 1.0;

    /// **The one rule** of a slow answer, given stable's p99: above `max_latency_ratio` × it
    /// and above it by `min_latency_increase`, whichever line is the later.
    pub fn slow_line(&self, stable_p99: Duration) -> Duration {
        stable_p99
            .mul_f64(self.max_latency_ratio)
            .max(stable_p99 + self.min_latency_increase)
    }

    /// The statistics' settings for these.
    pub fn settings(&self) -> sequential::Settings {
        sequential::Settings {
            max_error_points: self.max_error_rate,
            max_slow_points: Guard::MAX_SLOW_POINTS,
            log_level: sequential::Settings::level(self.alpha, self.interval),
            min_requests: self.min_requests,
        }
    }
}

impl Default for Guard {
    fn default() -> Self {
        Guard {
            enabled: true,
            interval: Duration::from_millis(100),
            window: Duration::from_secs(2),
            max_error_rate: 5.0,
            min_requests: 10,
            alpha: 0.01,
            max_latency_ratio: 1.5,
            min_latency_increase: Duration::from_millis(5),
            sample_ratio: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_bound_is_applied_and_named() {
        let t = Threshold {
            max_over_stable: Some(5.0),
            max_ratio_to_stable: Some(2.0),
            ..Threshold::default()
        };
        assert_eq!(t.violation(2.0, Some(1.1), " ms"), None);
        let ratio = t.violation(2.4, Some(1.1), " ms").unwrap();
        assert!(ratio.contains("> 2 × stable 1.100 ms"), "{ratio}");
        let over = t.violation(40.0, Some(30.0), " ms").unwrap();
        assert!(over.contains("> stable 30.000 ms + 5 ms"), "{over}");
        // Without the stable group's value, stable-relative bounds cannot judge.
        assert_eq!(t.violation(100.0, None, " ms"), None);
        let abs = Threshold {
            min: Some(1.0),
            max: Some(3.0),
            ..Threshold::default()
        };
        assert!(abs.violation(0.5, None, "").unwrap().contains("< min 1"));
        assert!(abs.violation(3.5, None, "").unwrap().contains("> max 3"));
        assert_eq!(abs.violation(2.0, None, ""), None);
    }

    #[test]
    fn a_slow_answer_is_past_both_the_ratio_and_the_least_increase() {
        let ms = Duration::from_millis;
        let us = Duration::from_micros;
        let g = Guard::default();
        // A fast service: 1.5 × 0.3 ms would be 0.45 ms, within a busy host's reach.
        assert_eq!(g.slow_line(us(300)), us(5_300));
        // A slow one: the ratio is the later line.
        assert_eq!(g.slow_line(ms(300)), ms(450));
        assert_eq!(g.slow_line(ms(10)), ms(15));
        // With no least increase, the ratio alone, as before it existed.
        let ratio_only = Guard {
            min_latency_increase: Duration::ZERO,
            ..Guard::default()
        };
        assert_eq!(ratio_only.slow_line(us(300)), us(450));
    }
}
