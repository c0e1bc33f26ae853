//! Validation of analyses, the rollback guard, hooks and notifications.

use std::time::Duration;

use super::fields::*;
use super::locate::KeyPath;
use super::raw::{RawAnalysis, RawCheck, RawGuard, RawHook, RawHooks};
use crate::analysis::{AnalysisConfig, Check, Guard, Metric, Provider, Threshold};

fn count(v: Option<i64>, at: KeyPath, default: u32, max: i64, p: &mut Problems) -> u32 {
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
        let defaults = (
            duration_or(
                a.interval.as_ref(),
                at.join("interval"),
                Duration::from_secs(10),
                &MEASURE,
                p,
            ),
            measurements(a.count, at.join("count"), 3, p),
            count(a.failure_limit, at.join("failure_limit"), 0, 10_000, p),
            count(
                a.inconclusive_limit,
                at.join("inconclusive_limit"),
                1,
                10_000,
                p,
            ),
            count(
                a.min_requests,
                at.join("min_requests"),
                20,
                1_000_000_000,
                p,
            ) as u64,
            a.window.clone(),
        );
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
        });
    }
    out
}

type Defaults = (Duration, u32, u32, u32, u64, Option<String>);

fn check(c: &RawCheck, d: &Defaults, at: &KeyPath, p: &mut Problems) -> Option<Check> {
    let interval = duration_or(c.interval.as_ref(), at.join("interval"), d.0, &MEASURE, p);
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
    let has_bound = c.min.is_some()
        || c.max.is_some()
        || c.max_over_stable.is_some()
        || c.max_ratio_to_stable.is_some();
    let provider = if let Some(m) = &c.metric {
        let Some(metric) = Metric::parse(m) else {
            p.add(
                at.join("metric"),
                format!("unknown metric \"{m}\": use success-rate, error-rate, request-rate or latency-pNN (e.g. latency-p99)"),
            );
            return None;
        };
        if !has_bound {
            p.add(
                at.clone(),
                "a metric check needs a bound: min, max, max_over_stable or max_ratio_to_stable",
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
    let window_src = c.window.clone().or_else(|| d.5.clone());
    // A new_errors check looks back over the whole analysis (the window keeps 11 minutes).
    let window_default = match provider {
        Provider::NewErrors { .. } => Duration::from_secs(crate::metrics::SLOTS),
        _ => interval,
    };
    Some(Check {
        name: c.name.clone(),
        provider,
        threshold,
        interval,
        count: measurements(c.count, at.join("count"), d.1, p),
        failure_limit: count(c.failure_limit, at.join("failure_limit"), d.2, 10_000, p),
        inconclusive_limit: count(
            c.inconclusive_limit,
            at.join("inconclusive_limit"),
            d.3,
            10_000,
            p,
        ),
        min_requests: c.min_requests.map_or(d.4, |_| {
            count(
                c.min_requests,
                at.join("min_requests"),
                20,
                1_000_000_000,
                p,
            ) as u64
        }),
        // The window defaults to the interval: each measurement sees the traffic since the last.
        window: duration_or(
            window_src.as_ref(),
            at.join("window"),
            window_default,
            &MEASURE,
            p,
        ),
    })
}

pub fn guard(raw: Option<&RawGuard>, at: &KeyPath, p: &mut Problems) -> Guard {
    let d = Guard::default();
    let Some(raw) = raw else { return d };
    let max_error_rate = raw.max_error_rate.unwrap_or(d.max_error_rate);
    in_range(
        max_error_rate,
        0.0..=100.0,
        "points",
        at.join("max_error_rate"),
        p,
    );
    // The false rollbacks allowed per hour: above 0 (a test that may never err cannot
    // decide), at most 0.5 (beyond that the guard is a coin).
    let alpha = raw.alpha.unwrap_or(d.alpha);
    in_range(alpha, 1e-12..=0.5, "per hour", at.join("alpha"), p);
    let max_latency_ratio = raw.max_latency_ratio.unwrap_or(d.max_latency_ratio);
    in_range(
        max_latency_ratio,
        1.0..=100.0,
        "× stable's p99",
        at.join("max_latency_ratio"),
        p,
    );
    Guard {
        enabled: raw.enabled.unwrap_or(true),
        interval: duration_or(
            raw.interval.as_ref(),
            at.join("interval"),
            d.interval,
            &MEASURE,
            p,
        ),
        window: duration_or(
            raw.window.as_ref(),
            at.join("window"),
            d.window,
            &MEASURE,
            p,
        ),
        max_error_rate,
        min_requests: count(
            raw.min_requests,
            at.join("min_requests"),
            d.min_requests as u32,
            1_000_000,
            p,
        ) as u64,
        alpha,
        max_latency_ratio,
        sample_ratio: raw.sample_ratio.unwrap_or(d.sample_ratio),
    }
}

/// A lifecycle hook: an HTTP call or a command, with timeout and retries.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Hook {
    pub url: Option<String>,
    pub command: Option<String>,
    pub timeout_ms: u64,
    pub retries: u32,
    pub confirm: bool,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Hooks {
    pub before_traffic: Option<Hook>,
    pub after_traffic: Option<Hook>,
    pub before_promotion: Option<Hook>,
    pub after_rollout: Option<Hook>,
    pub on_rollback: Option<Hook>,
}

pub fn hooks(raw: Option<&RawHooks>, at: &KeyPath, p: &mut Problems) -> Hooks {
    let Some(raw) = raw else {
        return Hooks::default();
    };
    let one = |h: &Option<RawHook>, key: &str, p: &mut Problems| {
        let h = h.as_ref()?;
        let hat = at.join(key);
        if h.url.is_some() == h.command.is_some() {
            p.add(
                hat.clone(),
                "a hook needs exactly one of `url` or `command`",
            );
        }
        if let Some(u) = &h.url {
            http_url(u, hat.join("url"), p);
        }
        if h.confirm == Some(true) && key != "before_promotion" {
            p.add(
                hat.join("confirm"),
                "only before_promotion can wait for a confirmation",
            );
        }
        Some(Hook {
            url: h.url.clone(),
            command: h.command.clone(),
            timeout_ms: duration_or(
                h.timeout.as_ref(),
                hat.join("timeout"),
                Duration::from_secs(30),
                &TIMEOUT,
                p,
            )
            .as_millis() as u64,
            retries: count(h.retries, hat.join("retries"), 0, 10, p),
            confirm: h.confirm.unwrap_or(false),
        })
    };
    Hooks {
        before_traffic: one(&raw.before_traffic, "before_traffic", p),
        after_traffic: one(&raw.after_traffic, "after_traffic", p),
        before_promotion: one(&raw.before_promotion, "before_promotion", p),
        after_rollout: one(&raw.after_rollout, "after_rollout", p),
        on_rollback: one(&raw.on_rollback, "on_rollback", p),
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
    fn the_guard_alpha_and_latency_ratio_are_parsed_and_range_checked_at_their_place() {
        let c = parse("alpha = 0.001\nmax_latency_ratio = 2\nsample_ratio = false").unwrap();
        let g = &c.service("shop").unwrap().guard;
        assert_eq!(
            (g.alpha, g.max_latency_ratio, g.sample_ratio),
            (0.001, 2.0, false)
        );
        assert_eq!(g.interval, std::time::Duration::from_millis(100));
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
