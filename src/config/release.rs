//! Validation of the release settings: rollout strategies, stickiness and route overrides.
//! Strategies are also validated here when they arrive in an API request.

use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;

use super::locate::KeyPath;
use super::model::*;
use super::raw::{RawOverride, RawStickiness, RawStrategy};
use crate::rollout::{BlueGreen, Step, Strategy};

/// A strategy from its raw form; problems are (path relative to the strategy, message).
pub fn strategy(
    raw: &RawStrategy,
    analyses: &[String],
) -> Result<Strategy, Vec<(KeyPath, String)>> {
    let mut p = Vec::new();
    let dur = |v: &Option<String>, key: &str, p: &mut Vec<(KeyPath, String)>| -> Option<Duration> {
        v.as_ref().and_then(|s| match humantime::parse_duration(s) {
            Ok(d) => Some(d),
            Err(_) => {
                p.push((
                    crate::path![key],
                    format!("\"{s}\" is not a duration such as \"30s\" or \"5m\""),
                ));
                None
            }
        })
    };
    let only = |p: &mut Vec<(KeyPath, String)>, kind: &str, fields: &[(&str, bool)]| {
        for (f, set) in fields {
            if *set {
                p.push((
                    crate::path![*f],
                    format!("`{f}` does not apply to strategy \"{kind}\""),
                ));
            }
        }
    };
    let s = match raw.kind.as_str() {
        "canary" => {
            only(
                &mut p,
                "canary",
                &[
                    ("auto_promote_after", raw.auto_promote_after.is_some()),
                    ("scale_down_delay", raw.scale_down_delay.is_some()),
                    ("teardown", raw.teardown.is_some()),
                ],
            );
            let Some(raw_steps) = &raw.steps else {
                p.push((KeyPath::default(), "a canary strategy needs `steps`".into()));
                return Err(p);
            };
            if raw_steps.is_empty() {
                p.push((
                    crate::path!["steps"],
                    "a canary needs at least one step".into(),
                ));
            }
            let mut steps = Vec::new();
            for (i, st) in raw_steps.iter().enumerate() {
                let at = crate::path!["steps", i];
                let set = [
                    st.weight.is_some(),
                    st.pause.is_some(),
                    st.analysis.is_some(),
                ];
                if set.iter().filter(|x| **x).count() != 1 {
                    p.push((
                        at,
                        "a step is exactly one of `weight`, `pause` or `analysis`".into(),
                    ));
                    continue;
                }
                if let Some(w) = st.weight {
                    match super::split::basis_points(w) {
                        Ok(weight) => steps.push(Step::SetWeight { weight }),
                        Err(e) => p.push((at.join("weight"), e.to_string())),
                    }
                } else if let Some(pause) = &st.pause {
                    if pause == "until-promoted" {
                        steps.push(Step::Pause { duration_ms: None });
                    } else {
                        match humantime::parse_duration(pause) {
                            Ok(d) => steps.push(Step::Pause {
                                duration_ms: Some(d.as_millis() as u64),
                            }),
                            Err(_) => p.push((
                                at.join("pause"),
                                format!("\"{pause}\" is not a duration such as \"30s\" or `until-promoted`"),
                            )),
                        }
                    }
                } else if let Some(name) = &st.analysis {
                    if !analyses.contains(name) {
                        p.push((at.join("analysis"), format!("no analysis named \"{name}\"")));
                    }
                    steps.push(Step::Analysis { name: name.clone() });
                }
            }
            Strategy::canary(steps)
        }
        "blue-green" => {
            if raw.steps.is_some() {
                p.push((
                    crate::path!["steps"],
                    "blue-green has fixed steps; use `kind = \"canary\"` for custom ones".into(),
                ));
            }
            let auto_promote_after = dur(&raw.auto_promote_after, "auto_promote_after", &mut p);
            let scale_down_delay = dur(&raw.scale_down_delay, "scale_down_delay", &mut p)
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
                &mut p,
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
        preset => match Strategy::preset(preset) {
            Some(s) => {
                only(&mut p, preset, &[("steps", raw.steps.is_some())]);
                s
            }
            None => {
                p.push((
                    crate::path!["kind"],
                    format!(
                        "unknown strategy \"{preset}\": use canary, blue-green, all-at-once or a preset such as \
                         canary-10pct-5m, canary-10pct-15m, linear-10pct-every-1m, linear-10pct-every-3m"
                    ),
                ));
                return Err(p);
            }
        },
    };
    let mut s = s;
    if raw.kind != "blue-green" {
        only(
            &mut p,
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
                p.push((crate::path![key], format!("no analysis named \"{n}\"")));
            }
        }
    }
    s.background_analysis = raw.background_analysis.clone();
    if p.is_empty() {
        Ok(s)
    } else {
        Err(p)
    }
}

pub fn stickiness(raw: &RawStickiness, at: &KeyPath, p: &mut Vec<(KeyPath, String)>) -> Stickiness {
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
        p.push((
            at.join("key"),
            format!("\"{k}\" is not a key: use cookie:NAME, header:NAME or client-ip"),
        ));
        None
    });
    let max_age = match &raw.cookie_max_age {
        None => Duration::from_secs(86_400),
        Some(s) => humantime::parse_duration(s).unwrap_or_else(|_| {
            p.push((
                at.join("cookie_max_age"),
                format!("\"{s}\" is not a duration such as \"1h\""),
            ));
            Duration::from_secs(86_400)
        }),
    };
    let cookie = raw.cookie.as_ref().map(|name| {
        let ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
        if !ok {
            p.push((
                at.join("cookie"),
                format!("\"{name}\" is not a cookie name"),
            ));
        }
        StickyCookie {
            name: name.clone(),
            max_age,
        }
    });
    if raw.key.is_none() && raw.cookie.is_none() {
        p.push((
            at.clone(),
            "stickiness needs a `key`, a `cookie`, or both".into(),
        ));
    }
    Stickiness { key, cookie }
}

/// Overrides of a route that forwards to `service` (with these group names).
pub fn overrides(
    raw: &[RawOverride],
    groups: Option<&[String]>,
    at: &KeyPath,
    p: &mut Vec<(KeyPath, String)>,
) -> Vec<Override> {
    let mut out = Vec::new();
    for (i, o) in raw.iter().enumerate() {
        let oat = at.join(i);
        let Some(groups) = groups else {
            p.push((oat, "overrides need a `forward` action".into()));
            continue;
        };
        if let Some(h) = &o.group_from_header {
            if o.group.is_some()
                || o.header.is_some()
                || o.cookie.is_some()
                || o.source.is_some()
                || o.country.is_some()
            {
                p.push((
                    oat.join("group_from_header"),
                    "`group_from_header` stands alone: the header's value is the group".into(),
                ));
            }
            match HeaderName::from_bytes(h.as_bytes()) {
                Ok(h) => out.push(Override {
                    to: GroupRef::Candidate,
                    when: OverrideWhen::GroupFromHeader(h),
                }),
                Err(_) => p.push((
                    oat.join("group_from_header"),
                    format!("\"{h}\" is not a header name"),
                )),
            }
            continue;
        }
        let to = match &o.group {
            None => {
                p.push((
                    oat.clone(),
                    "an override needs `group` (a group name, `candidate` or `stable`)".into(),
                ));
                continue;
            }
            Some(g) => {
                let r = GroupRef::parse(g);
                if let GroupRef::Named(n) = &r {
                    if !groups.contains(n) {
                        p.push((
                            oat.join("group"),
                            format!("no group named \"{n}\" in the forwarded service"),
                        ));
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
            p.push((
                oat.clone(),
                "an override needs exactly one of `header`, `cookie`, `source` or `country`".into(),
            ));
            continue;
        }
        let globs = |v: &[String]| v.iter().cloned().map(Glob).collect::<Vec<_>>();
        let when = if let Some(h) = &o.header {
            match HeaderName::from_bytes(h.name.as_bytes()) {
                Ok(name) => OverrideWhen::Header(name, globs(&h.values)),
                Err(_) => {
                    p.push((
                        oat.join("header").join("name"),
                        format!("\"{}\" is not a header name", h.name),
                    ));
                    continue;
                }
            }
        } else if let Some(c) = &o.cookie {
            OverrideWhen::Cookie(c.name.clone(), globs(&c.values))
        } else if let Some(src) = &o.source {
            let mut nets = Vec::new();
            for (j, s) in src.iter().enumerate() {
                match s
                    .parse::<IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                {
                    Ok(n) => nets.push(n),
                    Err(_) => p.push((
                        oat.join("source").join(j),
                        format!("\"{s}\" is not an IP address or CIDR"),
                    )),
                }
            }
            OverrideWhen::Source(nets)
        } else {
            let header = o
                .country_header
                .as_deref()
                .unwrap_or("cloudfront-viewer-country");
            let Ok(h) = HeaderName::from_bytes(header.as_bytes()) else {
                p.push((
                    oat.join("country_header"),
                    format!("\"{header}\" is not a header name"),
                ));
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
