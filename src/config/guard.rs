//! `[service.guard]`: the fast rollback guard's settings, range-checked at their keys (the
//! statistics are `analysis::sequential`'s).

use super::analysis::count;
use super::fields::*;
use super::locate::KeyPath;
use super::raw::RawGuard;
use crate::analysis::Guard;

pub(super) fn guard(raw: Option<&RawGuard>, at: &KeyPath, p: &mut Problems) -> Guard {
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
        min_latency_increase: duration_or(
            raw.min_latency_increase.as_ref(),
            at.join("min_latency_increase"),
            d.min_latency_increase,
            &DELAY,
            p,
        ),
        sample_ratio: raw.sample_ratio.unwrap_or(d.sample_ratio),
    }
}
