//! Validation of the release settings: rollout strategies, stickiness and route overrides.
//! Strategies are also validated here when they arrive in an API request.

use std::time::Duration;

use http::HeaderName;

use super::fields::*;
use super::locate::KeyPath;
use super::model::*;
use super::raw::{RawAbMatch, RawOverride, RawStickiness, RawStrategy};
use crate::rollout::{AbMatch, BlueGreen, Step, Strategy};

/// A strategy from its raw form; problems are (path relative to the strategy, message).
pub(super) fn strategy(
    raw: &RawStrategy,
    analyses: &[String],
    at: &KeyPath,
    p: &mut Problems,
) -> Option<Strategy> {
    let before = p.0.len();
    let dur = |v: &Option<String>, key: &str, p: &mut Problems| -> Option<Duration> {
        v.as_ref()
            .and_then(|s| duration(s, at.join(key), &RELEASE, p))
    };
    let only = |p: &mut Problems, kind: &str, fields: &[(&str, bool)]| {
        for (f, set) in fields {
            if *set {
                p.add(
                    at.join(*f),
                    format!("`{f}` does not apply to strategy \"{kind}\""),
                );
            }
        }
    };
    let s = match raw.kind.as_str() {
        "canary" => {
            only(
                p,
                "canary",
                &[
                    ("auto_promote_after", raw.auto_promote_after.is_some()),
                    ("scale_down_delay", raw.scale_down_delay.is_some()),
                    ("teardown", raw.teardown.is_some()),
                ],
            );
            let Some(raw_steps) = &raw.steps else {
                p.add(at.clone(), "a canary strategy needs `steps`");
                return None;
            };
            if raw_steps.is_empty() {
                p.add(at.join("steps"), "a canary needs at least one step");
            }
            let mut steps = Vec::new();
            for (i, st) in raw_steps.iter().enumerate() {
                let sat = at.join("steps").join(i);
                let set = [
                    st.weight.is_some(),
                    st.pause.is_some(),
                    st.analysis.is_some(),
                    st.mirror.is_some(),
                ];
                if set.iter().filter(|x| **x).count() != 1 {
                    p.add(
                        sat,
                        "a step is exactly one of `weight`, `pause`, `analysis` or `mirror`",
                    );
                    continue;
                }
                if st.duration.is_some() && st.mirror.is_none() {
                    p.add(
                        sat.join("duration"),
                        "`duration` is how long a `mirror` step waits; a pause is `pause = \"5m\"`",
                    );
                }
                if let Some(m) = st.mirror {
                    let share = crate::split::basis_points(m)
                        .map_err(|e| p.add(sat.join("mirror"), e.to_string()))
                        .ok();
                    let duration_ms = match &st.duration {
                        None => None,
                        Some(d) => match duration(d, sat.join("duration"), &RELEASE, p) {
                            Some(d) => Some(d.as_millis() as u64),
                            None => continue,
                        },
                    };
                    if let Some(share) = share {
                        steps.push(Step::Mirror { share, duration_ms });
                    }
                } else if let Some(w) = st.weight {
                    match crate::split::basis_points(w) {
                        Ok(weight) => steps.push(Step::SetWeight { weight }),
                        Err(e) => p.add(sat.join("weight"), e.to_string()),
                    }
                } else if let Some(pause) = &st.pause {
                    if pause == "until-promoted" {
                        steps.push(Step::Pause { duration_ms: None });
                    } else if let Some(d) = duration(pause, sat.join("pause"), &RELEASE, p) {
                        steps.push(Step::Pause {
                            duration_ms: Some(d.as_millis() as u64),
                        });
                    }
                } else if let Some(name) = &st.analysis {
                    if !analyses.contains(name) {
                        p.add(
                            sat.join("analysis"),
                            format!("no analysis named \"{name}\""),
                        );
                    }
                    steps.push(Step::Analysis { name: name.clone() });
                }
            }
            Strategy::canary(steps)
        }
        "blue-green" => {
            if raw.steps.is_some() {
                p.add(
                    at.join("steps"),
                    "blue-green has fixed steps; use `kind = \"canary\"` for custom ones",
                );
            }
            let auto_promote_after = dur(&raw.auto_promote_after, "auto_promote_after", p);
            let scale_down_delay = dur(&raw.scale_down_delay, "scale_down_delay", p)
                .unwrap_or(Duration::from_secs(600));
            Strategy::blue_green(&BlueGreen {
                auto_promote_after,
                scale_down_delay,
                teardown: raw.teardown.clone(),
                pre_promotion_analysis: raw.pre_promotion_analysis.clone(),
                post_promotion_analysis: raw.post_promotion_analysis.clone(),
            })
        }
        "all-at-once" => {
            only(
                p,
                "all-at-once",
                &[
                    ("steps", raw.steps.is_some()),
                    ("auto_promote_after", raw.auto_promote_after.is_some()),
                    ("scale_down_delay", raw.scale_down_delay.is_some()),
                    ("teardown", raw.teardown.is_some()),
                ],
            );
            Strategy::all_at_once()
        }
        "ab" => {
            only(
                p,
                "ab",
                &[
                    ("steps", raw.steps.is_some()),
                    ("auto_promote_after", raw.auto_promote_after.is_some()),
                    ("scale_down_delay", raw.scale_down_delay.is_some()),
                    ("teardown", raw.teardown.is_some()),
                ],
            );
            ab(raw, analyses, at, p)?
        }
        preset => match Strategy::preset(preset) {
            Some(s) => {
                only(p, preset, &[("steps", raw.steps.is_some())]);
                s
            }
            None => {
                p.add(
                    at.join("kind"),
                    format!(
                        "unknown strategy \"{preset}\": use canary, blue-green, all-at-once, ab or a preset such as \
                         canary-10pct-5m, canary-10pct-15m, linear-10pct-every-1m, linear-10pct-every-3m"
                    ),
                );
                return None;
            }
        },
    };
    let mut s = s;
    if raw.kind != "ab" {
        only(
            p,
            &raw.kind,
            &[
                ("match", raw.ab_match.is_some()),
                ("iterations", raw.iterations.is_some()),
                ("interval", raw.interval.is_some()),
                ("analysis", raw.analysis.is_some()),
            ],
        );
    }
    if raw.kind != "blue-green" {
        only(
            p,
            &raw.kind,
            &[
                (
                    "pre_promotion_analysis",
                    raw.pre_promotion_analysis.is_some(),
                ),
                (
                    "post_promotion_analysis",
                    raw.post_promotion_analysis.is_some(),
                ),
            ],
        );
    }
    for (key, name) in [
        ("background_analysis", &raw.background_analysis),
        ("pre_promotion_analysis", &raw.pre_promotion_analysis),
        ("post_promotion_analysis", &raw.post_promotion_analysis),
    ] {
        if let Some(n) = name {
            if !analyses.contains(n) {
                p.add(at.join(key), format!("no analysis named \"{n}\""));
            }
        }
    }
    s.background_analysis = raw.background_analysis.clone();
    if raw.baseline.is_some() && matches!(raw.kind.as_str(), "blue-green" | "all-at-once" | "ab") {
        // Blue-green and all-at-once move all traffic at once, an A/B test none until its
        // end: there is no share for a baseline to mirror.
        only(p, &raw.kind, &[("baseline", true)]);
    }
    if let Some(b) = &raw.baseline {
        super::fields::name(b, at.join("baseline"), p);
    }
    s.baseline = raw.baseline.clone();
    (p.0.len() == before).then_some(s)
}

/// An A/B test: rules that send requests to the candidate, `iterations` (1–1000) rounds of
/// `interval` and `analysis`.
fn ab(raw: &RawStrategy, analyses: &[String], at: &KeyPath, p: &mut Problems) -> Option<Strategy> {
    let rules = match &raw.ab_match {
        None => {
            p.add(
                at.clone(),
                "an A/B test needs `match`: the header or cookie rules whose requests go to the candidate",
            );
            Vec::new()
        }
        Some(v) if v.is_empty() => {
            p.add(at.join("match"), "`match` needs at least one rule");
            Vec::new()
        }
        Some(v) => v
            .iter()
            .enumerate()
            .filter_map(|(i, m)| ab_rule(m, &at.join("match").join(i), p))
            .collect(),
    };
    let iterations = count_or(
        raw.iterations,
        1..=1000,
        10,
        "rounds",
        at.join("iterations"),
        p,
    );
    let interval = match &raw.interval {
        Some(i) => duration(i, at.join("interval"), &MEASURE, p)?,
        None => Duration::from_secs(60),
    };
    let Some(analysis) = &raw.analysis else {
        p.add(
            at.clone(),
            "an A/B test needs `analysis`: the analysis every round runs",
        );
        return None;
    };
    if !analyses.contains(analysis) {
        p.add(
            at.join("analysis"),
            format!("no analysis named \"{analysis}\""),
        );
    }
    Some(Strategy::ab(rules, iterations as u32, interval, analysis))
}

fn ab_rule(m: &RawAbMatch, at: &KeyPath, p: &mut Problems) -> Option<AbMatch> {
    let rule = match (&m.header, &m.cookie) {
        (Some(h), None) => {
            if HeaderName::from_bytes(h.name.as_bytes()).is_err() {
                p.add(
                    at.join("header").join("name"),
                    format!("\"{}\" is not a header name", h.name),
                );
                return None;
            }
            AbMatch::Header {
                name: h.name.to_ascii_lowercase(),
                values: h.values.clone(),
            }
        }
        (None, Some(c)) => AbMatch::Cookie {
            name: c.name.clone(),
            values: c.values.clone(),
        },
        _ => {
            p.add(
                at.clone(),
                "a rule needs exactly one of `header` or `cookie`",
            );
            return None;
        }
    };
    let (AbMatch::Header { values, .. } | AbMatch::Cookie { values, .. }) = &rule;
    if values.is_empty() {
        p.add(at.clone(), "a rule needs at least one value");
        return None;
    }
    Some(rule)
}

pub(super) fn stickiness(raw: &RawStickiness, at: &KeyPath, p: &mut Problems) -> Stickiness {
    let key = raw.key.as_deref().and_then(|k| {
        if k == "client-ip" {
            return Some(StickyKey::ClientIp);
        }
        if let Some(name) = k.strip_prefix("cookie:").filter(|n| !n.is_empty()) {
            return Some(StickyKey::Cookie(name.to_string()));
        }
        if let Some(h) = k
            .strip_prefix("header:")
            .and_then(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        {
            return Some(StickyKey::Header(h));
        }
        p.add(
            at.join("key"),
            format!("\"{k}\" is not a key: use cookie:NAME, header:NAME or client-ip"),
        );
        None
    });
    let max_age = duration_or(
        raw.cookie_max_age.as_ref(),
        at.join("cookie_max_age"),
        Duration::from_secs(86_400),
        &COOKIE_AGE,
        p,
    );
    let cookie = raw.cookie.as_ref().map(|name| {
        let ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
        if !ok {
            p.add(
                at.join("cookie"),
                format!("\"{name}\" is not a cookie name"),
            );
        }
        StickyCookie {
            name: name.clone(),
            max_age,
        }
    });
    if raw.key.is_none() && raw.cookie.is_none() {
        p.add(at.clone(), "stickiness needs a `key`, a `cookie`, or both");
    }
    Stickiness { key, cookie }
}

/// Overrides of a route that forwards to `service` (with these group names).
pub(super) fn overrides(
    raw: &[RawOverride],
    groups: Option<&[String]>,
    at: &KeyPath,
    p: &mut Problems,
) -> Vec<Override> {
    let mut out = Vec::new();
    for (i, o) in raw.iter().enumerate() {
        let oat = at.join(i);
        // Without a `forward` the route says so (see `routes`).
        let Some(groups) = groups else {
            continue;
        };
        if let Some(h) = &o.group_from_header {
            if o.group.is_some()
                || o.header.is_some()
                || o.cookie.is_some()
                || o.source.is_some()
                || o.country.is_some()
            {
                p.add(
                    oat.join("group_from_header"),
                    "`group_from_header` stands alone: the header's value is the group",
                );
            }
            match HeaderName::from_bytes(h.as_bytes()) {
                Ok(h) => out.push(Override {
                    to: GroupRef::Candidate,
                    when: OverrideWhen::GroupFromHeader(h),
                }),
                Err(_) => p.add(
                    oat.join("group_from_header"),
                    format!("\"{h}\" is not a header name"),
                ),
            }
            continue;
        }
        let to = match &o.group {
            None => {
                p.add(
                    oat.clone(),
                    "an override needs `group` (a group name, `candidate` or `stable`)",
                );
                continue;
            }
            Some(g) => {
                let r = GroupRef::parse(g);
                if let GroupRef::Named(n) = &r {
                    if !groups.contains(n) {
                        p.add(
                            oat.join("group"),
                            format!("no group named \"{n}\" in the forwarded service"),
                        );
                    }
                }
                r
            }
        };
        let set = [
            o.header.is_some(),
            o.cookie.is_some(),
            o.source.is_some(),
            o.country.is_some(),
        ];
        if set.iter().filter(|x| **x).count() != 1 {
            p.add(
                oat.clone(),
                "an override needs exactly one of `header`, `cookie`, `source` or `country`",
            );
            continue;
        }
        let globs = |v: &[String]| v.iter().cloned().map(Glob).collect::<Vec<_>>();
        let when = if let Some(h) = &o.header {
            match HeaderName::from_bytes(h.name.as_bytes()) {
                Ok(name) => OverrideWhen::Header(name, globs(&h.values)),
                Err(_) => {
                    p.add(
                        oat.join("header").join("name"),
                        format!("\"{}\" is not a header name", h.name),
                    );
                    continue;
                }
            }
        } else if let Some(c) = &o.cookie {
            OverrideWhen::Cookie(c.name.clone(), globs(&c.values))
        } else if let Some(src) = &o.source {
            let mut nets = Vec::new();
            for (j, s) in src.iter().enumerate() {
                match ip_net(s) {
                    Some(n) => nets.push(n),
                    None => p.add(
                        oat.join("source").join(j),
                        format!("\"{s}\" is not an IP address or CIDR"),
                    ),
                }
            }
            OverrideWhen::Source(nets)
        } else {
            let header = o
                .country_header
                .as_deref()
                .unwrap_or("cloudfront-viewer-country");
            let Ok(h) = HeaderName::from_bytes(header.as_bytes()) else {
                p.add(
                    oat.join("country_header"),
                    format!("\"{header}\" is not a header name"),
                );
                continue;
            };
            let codes = o
                .country
                .clone()
                .unwrap_or_default()
                .iter()
                .map(|c| c.to_ascii_uppercase())
                .collect();
            OverrideWhen::Country(h, codes)
        };
        out.push(Override { to, when });
    }
    out
}
