//! The primitives of validation, one of each: the `Problems` collector every check writes to,
//! durations with bounds, numbers in a range, names, addresses and status codes. Each has one
//! message shape, so that the same mistake reads the same wherever it is made.

use std::collections::HashSet;
use std::fmt::Display;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::Duration;

use http::StatusCode;
use ipnet::IpNet;

use super::locate::KeyPath;
use crate::group::TargetAddr;

/// Every problem found, each with the key path of the value the user wrote; `mod.rs` turns the
/// paths into lines and columns. All problems are collected, not just the first.
#[derive(Debug, Default)]
pub struct Problems(pub Vec<(KeyPath, String)>);

impl Problems {
    pub fn new() -> Problems {
        Problems(Vec::new())
    }

    pub fn add(&mut self, at: KeyPath, msg: impl Into<String>) {
        self.0.push((at, msg.into()));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The problems, each reported once (a value shared by several sections, such as a
    /// service's health check, is checked for each but written once).
    pub fn into_unique(self) -> Vec<(KeyPath, String)> {
        let mut seen = HashSet::new();
        self.0
            .into_iter()
            .filter(|(at, msg)| seen.insert((at.to_string(), msg.clone())))
            .collect()
    }
}

const MS: Duration = Duration::from_millis(1);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// Timeouts, intervals, windows: above zero, at most an hour.
pub(super) const TIMEOUT: RangeInclusive<Duration> = MS..=HOUR;
/// Delays that may be zero (deregistration): at most an hour.
pub(super) const DELAY: RangeInclusive<Duration> = Duration::ZERO..=HOUR;
/// Analysis intervals and windows: above zero, at most a day.
pub(super) const MEASURE: RangeInclusive<Duration> = MS..=DAY;
/// Release pauses and delays (may be zero): at most a week.
pub(super) const RELEASE: RangeInclusive<Duration> =
    Duration::ZERO..=Duration::from_secs(7 * 86_400);
/// A rollout's progress deadline: above zero, at most a week.
pub(super) const DEADLINE: RangeInclusive<Duration> = MS..=Duration::from_secs(7 * 86_400);
/// Slow start: off, or up to 15 minutes (ALB allows 30 s to 15 min).
pub(super) const SLOW_START: RangeInclusive<Duration> = Duration::ZERO..=Duration::from_secs(900);
/// A cookie's max age: at most 400 days (what browsers keep).
pub(super) const COOKIE_AGE: RangeInclusive<Duration> =
    Duration::ZERO..=Duration::from_secs(400 * 86_400);

/// The one duration parser: `500ms`, `30s`, `5m`, … within `bounds`. `None` (and a problem at
/// `at`) when the text is not a duration or is out of range.
pub(super) fn duration(
    s: &str,
    at: KeyPath,
    bounds: &RangeInclusive<Duration>,
    p: &mut Problems,
) -> Option<Duration> {
    let out_of_range = |p: &mut Problems| {
        p.add(
            at.clone(),
            format!(
                "\"{s}\" is out of range: use {} to {}",
                short(*bounds.start()),
                short(*bounds.end())
            ),
        );
        None
    };
    match humantime::parse_duration(s) {
        // A number too large for any duration is a duration out of range, not a typo.
        Err(humantime::DurationError::NumberOverflow) => out_of_range(p),
        Err(_) => {
            p.add(at.clone(), not_a_duration(s));
            None
        }
        Ok(d) if !bounds.contains(&d) => out_of_range(p),
        Ok(d) => Some(d),
    }
}

/// An optional duration field: its default when absent or wrong (the problem is recorded).
pub(super) fn duration_or(
    v: Option<&String>,
    at: KeyPath,
    default: Duration,
    bounds: &RangeInclusive<Duration>,
    p: &mut Problems,
) -> Duration {
    v.and_then(|s| duration(s, at, bounds, p))
        .unwrap_or(default)
}

/// The message for text that is not a duration.
pub(super) fn not_a_duration(s: &str) -> String {
    format!("\"{s}\" is not a duration: use e.g. 500ms, 30s, 5m")
}

/// A bound as the user would write it: `0s`, `1ms`, `1h`, `7d`.
fn short(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, n) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms >= n && ms.is_multiple_of(n) {
            return format!("{}{unit}", ms / n);
        }
    }
    if ms == 0 {
        "0s".into()
    } else {
        format!("{ms}ms")
    }
}

/// A number that a range can bound: integers and floats.
pub(super) trait Bound: Copy + PartialOrd + Display {
    /// The type's largest value: a range up to it is written "N or more".
    const MAX: Self;
}

impl Bound for i64 {
    const MAX: i64 = i64::MAX;
}

impl Bound for f64 {
    const MAX: f64 = f64::MAX;
}

/// The one range check: `v` within `range`, or `None` and "N is out of range: use LO to HI"
/// (with `note`, when given, in parentheses after it).
pub(super) fn in_range<T: Bound>(
    v: T,
    range: RangeInclusive<T>,
    note: &str,
    at: KeyPath,
    p: &mut Problems,
) -> Option<T> {
    // Written with comparisons so that NaN is out of every range.
    if v >= *range.start() && v <= *range.end() {
        return Some(v);
    }
    let use_ = if *range.end() == T::MAX {
        format!("{} or more", range.start())
    } else {
        format!("{} to {}", range.start(), range.end())
    };
    let note = if note.is_empty() {
        String::new()
    } else {
        format!(" ({note})")
    };
    p.add(at, format!("{v} is out of range: use {use_}{note}"));
    None
}

/// An optional count: its default when absent or out of range (the problem is recorded).
pub(super) fn count_or(
    v: Option<i64>,
    range: RangeInclusive<i64>,
    default: u64,
    note: &str,
    at: KeyPath,
    p: &mut Problems,
) -> u64 {
    v.and_then(|n| in_range(n, range, note, at, p))
        .map_or(default, |n| n as u64)
}

/// Names that must be unique among their kind (listeners, services, a service's groups,
/// tokens, analyses, an analysis's checks): every use after the first is a problem at its
/// own key, `duplicate <kind> name "<name>"`.
pub(super) struct Unique {
    kind: &'static str,
    /// Said after the name: whose names these are (`in service "shop"`).
    within: String,
    seen: HashSet<String>,
}

impl Unique {
    pub(super) fn new(kind: &'static str) -> Unique {
        Unique::within(kind, String::new())
    }

    pub(super) fn within(kind: &'static str, owner: String) -> Unique {
        Unique {
            kind,
            within: owner,
            seen: HashSet::new(),
        }
    }

    pub(super) fn check(&mut self, n: &str, at: KeyPath, p: &mut Problems) {
        if !self.seen.insert(n.to_string()) {
            p.add(
                at,
                format!("duplicate {} name \"{n}\"{}", self.kind, self.within),
            );
        }
    }
}

pub(super) fn name(s: &str, at: KeyPath, p: &mut Problems) {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if !ok {
        p.add(
            at,
            format!("name \"{s}\" must be 1-64 characters of letters, digits, '-', '_' or '.'"),
        );
    }
}

pub(super) fn socket_addr(s: &str, at: KeyPath, p: &mut Problems) -> SocketAddr {
    s.parse().unwrap_or_else(|_| {
        p.add(
            at,
            format!("\"{s}\" is not an address: use IP:PORT such as 127.0.0.1:8080 or [::1]:8080"),
        );
        SocketAddr::from(([127, 0, 0, 1], 0))
    })
}

/// An IP network, or a single address as one.
pub(super) fn ip_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .ok()
}

pub(super) fn http_url(u: &str, at: KeyPath, p: &mut Problems) {
    if !(u.starts_with("http://") && u.parse::<http::Uri>().is_ok()) {
        p.add(at, format!("\"{u}\" is not an http:// URL"));
    }
}

/// `host:port` with a port; the host may be an IP address or a DNS name.
pub fn target_addr(s: &str) -> Result<TargetAddr, String> {
    if s.parse::<SocketAddr>().is_ok() {
        return Ok(TargetAddr(s.to_string()));
    }
    let bad = || format!("\"{s}\" is not a target: use HOST:PORT such as 10.0.0.5:8080");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0);
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if port_ok && host_ok {
        Ok(TargetAddr(s.to_string()))
    } else {
        Err(bad())
    }
}

pub(super) fn status_code(n: i64, at: KeyPath, p: &mut Problems) -> Option<StatusCode> {
    in_range(n, 200..=599, "", at, p).and_then(|n| StatusCode::from_u16(n as u16).ok())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    const BASE: &str = r#"[[listener]]
name = "web"
bind = "127.0.0.1:8080"

[[route]]
name = "all"
priority = 1
forward = "shop"

[[service]]
name = "shop"
active = "blue"
SERVICE

[[service.group]]
name = "blue"
targets = ["127.0.0.1:9001"]

TOP
"#;

    /// Every duration field of the file: (text in the `[[service]]` table, text at the end,
    /// the field's path). `V` is the value under test.
    const FIELDS: &[(&str, &str, &str)] = &[
        ("", "[timeouts]\nconnect = V", "timeouts.connect"),
        ("", "[timeouts]\nrequest = V", "timeouts.request"),
        ("", "[timeouts]\nheader_read = V", "timeouts.header_read"),
        ("", "[timeouts]\nclient_body = V", "timeouts.client_body"),
        ("", "[timeouts]\nidle = V", "timeouts.idle"),
        ("", "[timeouts]\nshutdown = V", "timeouts.shutdown"),
        ("", "[admin]\nheader_read_timeout = V", "admin.header_read_timeout"),
        ("", "[admin]\nidle_timeout = V", "admin.idle_timeout"),
        ("request_timeout = V", "", "service[0].request_timeout"),
        ("deregistration_delay = V", "", "service[0].deregistration_delay"),
        ("drain_timeout = V", "", "service[0].drain_timeout"),
        ("progress_deadline = V", "", "service[0].progress_deadline"),
        ("rollback_window = V", "", "service[0].rollback_window"),
        ("slow_start = V", "", "service[0].slow_start"),
        ("", "[service.health_check]\ntimeout = \"500ms\"\ninterval = V", "service[0].health_check.interval"),
        ("", "[service.health_check]\ntimeout = V", "service[0].health_check.timeout"),
        ("", "[service.passive]\nejection_time = V", "service[0].passive.ejection_time"),
        (
            "",
            "[service.stickiness]\nkey = \"client-ip\"\ncookie = \"sy\"\ncookie_max_age = V",
            "service[0].stickiness.cookie_max_age",
        ),
        (
            "",
            "[service.strategy]\nkind = \"blue-green\"\nauto_promote_after = V",
            "service[0].strategy.auto_promote_after",
        ),
        (
            "",
            "[service.strategy]\nkind = \"blue-green\"\nscale_down_delay = V",
            "service[0].strategy.scale_down_delay",
        ),
        (
            "",
            "[service.strategy]\nkind = \"canary\"\nsteps = [{ pause = V }]",
            "service[0].strategy.steps[0].pause",
        ),
        ("", "[service.guard]\ninterval = V", "service[0].guard.interval"),
        ("", "[service.guard]\nwindow = V", "service[0].guard.window"),
        (
            "",
            "[service.hooks.before_traffic]\nurl = \"http://127.0.0.1:1/\"\ntimeout = V",
            "service[0].hooks.before_traffic.timeout",
        ),
        (
            "",
            "[[analysis]]\nname = \"a\"\ninterval = V\n[[analysis.check]]\nname = \"c\"\nmetric = \"error-rate\"\nmax = 5",
            "analysis[0].interval",
        ),
        (
            "",
            "[[analysis]]\nname = \"a\"\n[[analysis.check]]\nname = \"c\"\nmetric = \"error-rate\"\nmax = 5\ninterval = V",
            "analysis[0].check[0].interval",
        ),
        (
            "",
            "[[analysis]]\nname = \"a\"\n[[analysis.check]]\nname = \"c\"\ncommand = \"true\"\ntimeout = V",
            "analysis[0].check[0].timeout",
        ),
        (
            "",
            "[[analysis]]\nname = \"a\"\n[[analysis.check]]\nname = \"c\"\nmetric = \"error-rate\"\nmax = 5\nwindow = V",
            "analysis[0].check[0].window",
        ),
    ];

    fn problems(service: &str, top: &str, value: &str) -> Vec<(String, String)> {
        let v = format!("\"{value}\"");
        let src = BASE
            .replace("SERVICE", &service.replace('V', &v))
            .replace("TOP", &top.replace(" V", &format!(" {v}")));
        match super::super::parse(&src, "t.toml", Path::new(".")) {
            Ok(_) => Vec::new(),
            Err(e) => e
                .diagnostics()
                .iter()
                .map(|d| (d.field.clone(), d.message.clone()))
                .collect(),
        }
    }

    #[test]
    fn every_duration_field_accepts_a_good_value() {
        for (service, top, field) in FIELDS {
            assert_eq!(problems(service, top, "1s"), vec![], "{field}");
        }
    }

    #[test]
    fn every_duration_field_rejects_a_bad_value_with_the_same_message() {
        for (service, top, field) in FIELDS {
            assert_eq!(
                problems(service, top, "5x"),
                vec![(
                    field.to_string(),
                    "\"5x\" is not a duration: use e.g. 500ms, 30s, 5m".to_string()
                )],
                "{field}"
            );
            let out = problems(service, top, "9999d");
            assert_eq!(out.len(), 1, "{field}: {out:?}");
            assert_eq!(out[0].0, *field);
            let msg = &out[0].1;
            let bounds = msg
                .strip_prefix("\"9999d\" is out of range: use ")
                .unwrap_or_else(|| panic!("{field}: {msg}"));
            let (lo, hi) = bounds.split_once(" to ").expect("use LO to HI");
            for b in [lo, hi] {
                assert!(humantime::parse_duration(b).is_ok(), "{field}: {msg}");
            }
        }
    }

    #[test]
    fn ranges_read_the_same_for_integers_and_floats() {
        let mut p = super::Problems::new();
        assert_eq!(
            super::in_range(5, 1..=10, "", crate::path!["a"], &mut p),
            Some(5)
        );
        assert_eq!(
            super::in_range(0, 1..=10, "", crate::path!["a"], &mut p),
            None
        );
        assert_eq!(
            super::in_range(-1, 0..=i64::MAX, "bytes", crate::path!["b"], &mut p),
            None
        );
        assert_eq!(
            super::in_range(f64::NAN, 0.0..=1.0, "", crate::path!["c"], &mut p),
            None
        );
        assert_eq!(
            super::in_range(1.5, 0.5..=0.999, "x", crate::path!["d"], &mut p),
            None
        );
        let msgs: Vec<&str> = p.0.iter().map(|(_, m)| m.as_str()).collect();
        assert_eq!(
            msgs,
            [
                "0 is out of range: use 1 to 10",
                "-1 is out of range: use 0 or more (bytes)",
                "NaN is out of range: use 0 to 1",
                "1.5 is out of range: use 0.5 to 0.999 (x)",
            ]
        );
    }
}
