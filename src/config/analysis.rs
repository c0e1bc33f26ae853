//! Validation of analyses, the rollback guard, hooks and notifications.

use std::time::Duration;

use super::fields::*;
use super::locate::KeyPath;
use super::raw::{RawAnalysis, RawCheck};
use crate::analysis::evidence::JUDGED;
use crate::analysis::{
    AnalysisConfig, Check, Evidence, Judging, Metric, Provider, Scoring, Threshold,
};

pub(super) fn count(v: Option<i64>, at: KeyPath, default: u32, max: i64, p: &mut Problems) -> u32 {
    count_or(v, 0..=max, default as u64, "", at, p) as u32
}

/// How many times a check measures: at least once (0 used to be run as 1).
fn measurements(v: Option<i64>, at: KeyPath, default: u32, p: &mut Problems) -> u32 {
    count_or(v, 1..=10_000, default as u64, "measurements", at, p) as u32
}

/// A check's bounds, each a number that can be met: finite, not negative for the built-in
/// metrics (rates and latencies are never below 0), a ratio to stable above 0. A bound such as
/// `max_over_stable = -1` or `nan` makes a check that can never pass (or always does).
fn threshold(c: &RawCheck, at: &KeyPath, p: &mut Problems) -> Threshold {
    let metric = c.metric.is_some();
    let bound = |v: Option<f64>, key: &str, lo: f64, note: &str, p: &mut Problems| {
        let v = v?;
        let lo = if metric || key != "min" && key != "max" {
            lo
        } else {
            // A Prometheus query may measure anything, below 0 too: finite is enough.
            -f64::MAX
        };
        if !v.is_finite() {
            p.add(
                at.join(key),
                format!("{v} is not a number: use a finite bound"),
            );
            return None;
        }
        in_range(v, lo..=f64::MAX, note, at.join(key), p)
    };
    Threshold {
        min: bound(c.min, "min", 0.0, "", p),
        max: bound(c.max, "max", 0.0, "", p),
        max_over_stable: bound(c.max_over_stable, "max_over_stable", 0.0, "", p),
        max_ratio_to_stable: bound(
            c.max_ratio_to_stable,
            "max_ratio_to_stable",
            0.01,
            "a ratio to stable",
            p,
        ),
        allowed_increase: percent(
            c.allowed_increase.as_ref(),
            0.0..=1000.0,
            at.join("allowed_increase"),
            p,
        ),
        allowed_decrease: percent(
            c.allowed_decrease.as_ref(),
            0.0..=99.9,
            at.join("allowed_decrease"),
            p,
        ),
    }
}

/// An effect size written as a percentage (`"20%"`), as a fraction (0.2), within `range` (%).
fn percent(
    v: Option<&String>,
    range: std::ops::RangeInclusive<f64>,
    at: KeyPath,
    p: &mut Problems,
) -> Option<f64> {
    let s = v?;
    let Some(n) = s
        .trim()
        .strip_suffix('%')
        .and_then(|n| n.trim().parse::<f64>().ok())
    else {
        p.add(at, format!("\"{s}\" is not a percentage: use e.g. \"20%\""));
        return None;
    };
    in_range(n, range, "percent of stable's value", at, p).map(|n| n / 100.0)
}

/// An analysis's score thresholds: both 100 (every check must pass) unless written; a
/// marginal score alone leaves the pass score at 100, a pass score alone is also the
/// marginal one (no inconclusive band).
fn scoring(a: &RawAnalysis, at: &KeyPath, p: &mut Problems) -> Scoring {
    let score = |v: Option<f64>, key: &str, p: &mut Problems| {
        v.and_then(|v| in_range(v, 0.0..=100.0, "of 100", at.join(key), p))
    };
    let pass = score(a.pass_score, "pass_score", p);
    let marginal = score(a.marginal_score, "marginal_score", p);
    if pass.is_none() && marginal.is_none() {
        return Scoring::default();
    }
    let pass = pass.unwrap_or(100.0);
    let marginal = marginal.unwrap_or(pass);
    if marginal > pass {
        p.add(
            at.join("marginal_score"),
            format!("marginal_score {marginal} is above pass_score {pass}: use at most {pass}"),
        );
    }
    Scoring {
        pass,
        marginal: marginal.min(pass),
        scored: true,
    }
}

pub fn analyses(raw: &[RawAnalysis], p: &mut Problems) -> Vec<AnalysisConfig> {
    let mut out: Vec<AnalysisConfig> = Vec::new();
    let mut names = Unique::new("analysis");
    for (i, a) in raw.iter().enumerate() {
        let at = crate::path!["analysis", i];
        names.check(&a.name, at.join("name"), p);
        if a.check.is_empty() {
            p.add(
                at.clone(),
                format!("analysis \"{}\" has no [[analysis.check]]", a.name),
            );
        }
        let defaults = Defaults {
            interval: duration_or(
                a.interval.as_ref(),
                at.join("interval"),
                Duration::from_secs(10),
                &MEASURE,
                p,
            ),
            count: measurements(a.count, at.join("count"), 3, p),
            failure_limit: count(a.failure_limit, at.join("failure_limit"), 0, 10_000, p),
            inconclusive_limit: count(
                a.inconclusive_limit,
                at.join("inconclusive_limit"),
                1,
                10_000,
                p,
            ),
            min_requests: count(
                a.min_requests,
                at.join("min_requests"),
                20,
                1_000_000_000,
                p,
            ) as u64,
            window: a.window.clone(),
            confidence: a
                .confidence
                .and_then(|c| in_range(c, 0.5..=0.999, "", at.join("confidence"), p)),
            power: a
                .power
                .and_then(|c| in_range(c, 0.5..=0.99, "", at.join("power"), p)),
            max_duration: a
                .max_duration
                .as_ref()
                .and_then(|d| duration(d, at.join("max_duration"), &MAX_DURATION, p))
                .map(|d| (d, at.join("max_duration"))),
        };
        let mut checks: Vec<Check> = Vec::new();
        let mut check_names = Unique::new("check");
        for (j, c) in a.check.iter().enumerate() {
            let cat = at.join("check").join(j);
            check_names.check(&c.name, cat.join("name"), p);
            if let Some(check) = check(c, &defaults, &cat, p) {
                checks.push(check);
            }
        }
        out.push(AnalysisConfig {
            name: a.name.clone(),
            checks,
            scoring: scoring(a, &at, p),
        });
    }
    out
}

/// How long a planned check may measure: what the metrics keep (it judges its whole step).
const MAX_DURATION: std::ops::RangeInclusive<Duration> = Duration::from_millis(1)..=JUDGED;

/// An analysis's settings that its checks inherit.
struct Defaults {
    interval: Duration,
    count: u32,
    failure_limit: u32,
    inconclusive_limit: u32,
    min_requests: u64,
    window: Option<String>,
    confidence: Option<f64>,
    power: Option<f64>,
    /// With where it was written, for a problem with a check's measuring.
    max_duration: Option<(Duration, KeyPath)>,
}

fn check(c: &RawCheck, d: &Defaults, at: &KeyPath, p: &mut Problems) -> Option<Check> {
    let interval = duration_or(
        c.interval.as_ref(),
        at.join("interval"),
        d.interval,
        &MEASURE,
        p,
    );
    let timeout = duration_or(
        c.timeout.as_ref(),
        at.join("timeout"),
        Duration::from_secs(10),
        &TIMEOUT,
        p,
    );
    let kinds = [
        c.metric.is_some(),
        c.mann_whitney.is_some(),
        c.new_errors.is_some(),
        c.prometheus.is_some(),
        c.webhook.is_some(),
        c.command.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() != 1 {
        p.add(
            at.clone(),
            format!("check \"{}\" needs exactly one of `metric`, `mann_whitney`, `new_errors`, `prometheus`, `webhook` or `command`", c.name),
        );
        return None;
    }
    let threshold = threshold(c, at, p);
    // Written bounds count even when one was rejected above: one problem per mistake.
    let effect = c.allowed_increase.is_some() || c.allowed_decrease.is_some();
    let has_bound = c.min.is_some()
        || c.max.is_some()
        || c.max_over_stable.is_some()
        || c.max_ratio_to_stable.is_some()
        || effect;
    let effect_at = || {
        at.join(if c.allowed_increase.is_some() {
            "allowed_increase"
        } else {
            "allowed_decrease"
        })
    };
    if effect && c.metric.is_none() {
        p.add(
            effect_at(),
            "only a metric check (success-rate, error-rate, latency-pNN) has allowed_increase / allowed_decrease; a Mann-Whitney check has `tolerance`",
        );
    }
    if c.metric.as_deref() == Some("mirror-mismatch-rate") && threshold.needs_stable() {
        p.add(
            at.clone(),
            "the mirror mismatch rate already compares the candidate with stable's real answers: bound it with max",
        );
    }
    if effect && c.metric.as_deref() == Some("request-rate") {
        p.add(
            effect_at(),
            "a request rate follows the weight, not the version: bound it with min or max",
        );
    }
    let provider = if let Some(m) = &c.metric {
        let Some(metric) = Metric::parse(m) else {
            p.add(
                at.join("metric"),
                format!("unknown metric \"{m}\": use success-rate, error-rate, request-rate, latency-pNN (e.g. latency-p99) or mirror-mismatch-rate"),
            );
            return None;
        };
        if !has_bound {
            p.add(
                at.clone(),
                "a metric check needs a bound: min, max, max_over_stable, max_ratio_to_stable, allowed_increase or allowed_decrease",
            );
        }
        Provider::Metric(metric)
    } else if let Some(mw) = &c.mann_whitney {
        let confidence = mw.confidence.unwrap_or(0.95);
        let tolerance = mw.tolerance.unwrap_or(0.1);
        let mat = at.join("mann_whitney");
        in_range(confidence, 0.5..=0.999, "", mat.join("confidence"), p);
        in_range(
            tolerance,
            0.0..=10.0,
            "0 is any slowdown",
            mat.join("tolerance"),
            p,
        );
        Provider::MannWhitney {
            confidence,
            tolerance,
        }
    } else if let Some(ne) = &c.new_errors {
        if has_bound {
            p.add(
                at.clone(),
                "a new_errors check has no bounds: it fails on a finding",
            );
        }
        let min_count = count_or(
            ne.min_count,
            1..=1_000_000,
            crate::fingerprint::DEFAULT_MIN_COUNT,
            "answers",
            at.join("new_errors").join("min_count"),
            p,
        );
        Provider::NewErrors { min_count }
    } else if let Some(pr) = &c.prometheus {
        http_url(&pr.url, at.join("prometheus").join("url"), p);
        if c.max_over_stable.is_some() || c.max_ratio_to_stable.is_some() {
            p.add(at.clone(), "a Prometheus check compares with min/max only");
        }
        if !has_bound {
            p.add(at.clone(), "a Prometheus check needs min or max");
        }
        Provider::Prometheus {
            url: pr.url.clone(),
            query: pr.query.clone(),
            timeout,
        }
    } else if let Some(w) = &c.webhook {
        http_url(&w.url, at.join("webhook").join("url"), p);
        Provider::Webhook {
            url: w.url.clone(),
            timeout,
        }
    } else {
        Provider::Command {
            command: c.command.clone().unwrap_or_default(),
            timeout,
        }
    };
    let count_ = measurements(c.count, at.join("count"), d.count, p);
    let judging = judging(c, d, &provider, &threshold, interval * count_, at, p);
    let window_src = c.window.clone().or_else(|| d.window.clone());
    // The window defaults to the interval: each measurement sees the traffic since the last;
    // a planned check's is its whole step (at most what the metrics keep); a new_errors
    // check looks back over the whole analysis (the window keeps 11 minutes).
    let window_default = match provider {
        Provider::NewErrors { .. } => Duration::from_secs(crate::metrics::SLOTS),
        _ => interval,
    };
    let window = if judging.evidence.is_some() {
        if c.window.is_some() {
            p.add(
                at.join("window"),
                "a check whose evidence is planned judges everything since its analysis began: remove `window`",
            );
        }
        JUDGED
    } else {
        duration_or(
            window_src.as_ref(),
            at.join("window"),
            window_default,
            &MEASURE,
            p,
        )
    };
    Some(Check {
        name: c.name.clone(),
        provider,
        threshold,
        interval,
        count: count_,
        failure_limit: count(
            c.failure_limit,
            at.join("failure_limit"),
            d.failure_limit,
            10_000,
            p,
        ),
        inconclusive_limit: count(
            c.inconclusive_limit,
            at.join("inconclusive_limit"),
            d.inconclusive_limit,
            10_000,
            p,
        ),
        min_requests: c.min_requests.map_or(d.min_requests, |_| {
            count(
                c.min_requests,
                at.join("min_requests"),
                20,
                1_000_000_000,
                p,
            ) as u64
        }),
        window,
        judging,
    })
}

/// A check's weight in the score and, for a comparison with stable, the evidence it plans:
/// planned when it has an effect size or its analysis (or itself) sets `power` or
/// `max_duration` — so a file written before plans existed runs as it did.
fn judging(
    c: &RawCheck,
    d: &Defaults,
    provider: &Provider,
    threshold: &Threshold,
    measuring: Duration,
    at: &KeyPath,
    p: &mut Problems,
) -> Judging {
    let weight = c
        .weight
        .and_then(|w| {
            in_range(
                w,
                0.01..=1000.0,
                "a share of the score",
                at.join("weight"),
                p,
            )
        })
        .unwrap_or(1.0);
    let compares = match provider {
        Provider::Metric(m) => {
            threshold.needs_stable()
                && !matches!(m, Metric::RequestRate | Metric::MirrorMismatchRate)
        }
        Provider::MannWhitney { .. } => true,
        _ => false,
    };
    let own_max = c
        .max_duration
        .as_ref()
        .and_then(|v| duration(v, at.join("max_duration"), &MAX_DURATION, p))
        .map(|v| (v, at.join("max_duration")));
    if c.max_duration.is_some() && !compares {
        p.add(
            at.join("max_duration"),
            "max_duration lengthens a comparison with stable to gather its evidence: this check does not compare",
        );
    }
    let planned = compares
        && (c.allowed_increase.is_some()
            || c.allowed_decrease.is_some()
            || d.power.is_some()
            || d.max_duration.is_some()
            || c.max_duration.is_some());
    let max_duration = own_max.or_else(|| d.max_duration.clone());
    if planned {
        if measuring > JUDGED {
            p.add(
                at.clone(),
                format!(
                    "check \"{}\" measures for {} (count × interval), longer than the {} a planned check can judge",
                    c.name,
                    humantime::format_duration(measuring),
                    humantime::format_duration(JUDGED)
                ),
            );
        }
        if let Some((max, key)) = max_duration.as_ref().filter(|(max, _)| *max < measuring) {
            p.add(
                key.clone(),
                format!(
                    "max_duration {} is shorter than check \"{}\"'s own measuring ({} = count × interval)",
                    humantime::format_duration(*max),
                    c.name,
                    humantime::format_duration(measuring)
                ),
            );
        }
    }
    Judging {
        critical: c.critical.unwrap_or(false),
        weight,
        confidence: d.confidence.unwrap_or(0.95),
        evidence: planned.then(|| Evidence {
            power: d.power.unwrap_or(0.8),
            max_duration: max_duration.map(|(d, _)| d),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    const SERVICE: &str = "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n[[route]]\nname = \"all\"\npriority = 1\nforward = \"shop\"\n[[service]]\nname = \"shop\"\nactive = \"blue\"\n[[service.group]]\nname = \"blue\"\ntargets = [\"127.0.0.1:9001\"]\n";

    fn parse(guard: &str) -> Result<crate::config::Config, String> {
        // The guard table after the group's: TOML puts it on the service all the same.
        let text = format!("{SERVICE}[service.guard]\n{guard}");
        crate::config::parse(&text, "sy.toml", Path::new(".")).map_err(|e| e.to_string())
    }

    /// A `new_errors` check: `min_count` defaults to 5 and is at least 1, its window is
    /// everything kept, and a bound (which it would ignore) is refused.
    #[test]
    fn a_new_errors_check_parses_with_its_defaults_and_refuses_a_zero_min_count_or_a_bound() {
        let analysis = |check: &str| {
            let text = format!(
                "{SERVICE}[[analysis]]\nname = \"a\"\n[[analysis.check]]\nname = \"n\"\n{check}\n"
            );
            crate::config::parse(&text, "sy.toml", Path::new(".")).map_err(|e| e.to_string())
        };
        let c = analysis("new_errors = {}").unwrap();
        let check = &c.analysis("a").unwrap().checks[0];
        assert_eq!(
            check.provider,
            crate::analysis::Provider::NewErrors { min_count: 5 }
        );
        assert_eq!(check.window, std::time::Duration::from_secs(660));
        let c = analysis("new_errors = { min_count = 12 }\nwindow = \"2m\"").unwrap();
        let check = &c.analysis("a").unwrap().checks[0];
        assert_eq!(
            check.provider,
            crate::analysis::Provider::NewErrors { min_count: 12 }
        );
        assert_eq!(check.window, std::time::Duration::from_secs(120));
        let e = analysis("new_errors = { min_count = 0 }").unwrap_err();
        assert!(
            e.contains("analysis[0].check[0].new_errors.min_count: 0 is out of range"),
            "{e}"
        );
        let e = analysis("new_errors = {}\nmax = 1").unwrap_err();
        assert!(e.contains("a new_errors check has no bounds"), "{e}");
    }

    /// The sequential guard's settings parse with their defaults, and out-of-range values are
    /// refused at their line and column like every other field.
    #[test]
    fn the_guard_alpha_and_latency_line_are_parsed_and_range_checked_at_their_place() {
        let c = parse("alpha = 0.001\nmax_latency_ratio = 2\nsample_ratio = false").unwrap();
        let g = &c.service("shop").unwrap().guard;
        assert_eq!(
            (g.alpha, g.max_latency_ratio, g.sample_ratio),
            (0.001, 2.0, false)
        );
        assert_eq!(g.interval, std::time::Duration::from_millis(100));
        assert_eq!(g.min_latency_increase, std::time::Duration::from_millis(5));
        let c = parse("min_latency_increase = \"0s\"").unwrap();
        let g = &c.service("shop").unwrap().guard;
        assert_eq!(g.min_latency_increase, std::time::Duration::ZERO);
        let e = parse("min_latency_increase = \"2h\"").unwrap_err();
        assert!(
            e.contains("sy.toml:15:24: service[0].guard.min_latency_increase: \"2h\" is out of range: use 0s to 1h"),
            "{e}"
        );
        let e = parse("min_latency_increase = 5").unwrap_err();
        assert!(e.contains("sy.toml:15:24"), "{e}");
        let e = parse("alpha = 0").unwrap_err();
        assert!(
            e.contains("sy.toml:15:9: service[0].guard.alpha: 0 is out of range: use 0.000000000001 to 0.5 (per hour)"),
            "{e}"
        );
        let e = parse("max_latency_ratio = 0.5").unwrap_err();
        assert!(
            e.contains("sy.toml:15:21: service[0].guard.max_latency_ratio: 0.5 is out of range"),
            "{e}"
        );
    }
}
