//! Validation of routes: the listeners they name, unique priorities per listener, match
//! conditions, the action (forward, fixed response, redirect) and release overrides.

use std::collections::HashMap;

use http::{HeaderName, Method, StatusCode};

use super::fields::*;
use super::locate::KeyPath;
use super::model::*;
use super::raw::*;
use crate::path;

pub(super) fn routes(
    raw: &[RawRoute],
    listeners: &[ListenerConfig],
    services: &[ServiceConfig],
    p: &mut Problems,
) -> Vec<RouteConfig> {
    let mut names = Unique::new("route");
    // (listener, priority) → route name: ALB requires a unique priority per listener.
    let mut priorities: HashMap<(String, i64), String> = HashMap::new();
    let mut out = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let at = path!["route", i];
        name(&r.name, at.join("name"), p);
        names.check(&r.name, at.join("name"), p);
        if let Some(ls) = &r.listeners {
            for (j, l) in ls.iter().enumerate() {
                if !listeners.iter().any(|x| &x.name == l) {
                    p.add(
                        at.join("listeners").join(j),
                        format!("no listener named \"{l}\""),
                    );
                }
            }
        }
        let on: Vec<String> = match &r.listeners {
            Some(ls) => ls.clone(),
            None => listeners.iter().map(|l| l.name.clone()).collect(),
        };
        for l in on {
            if let Some(other) = priorities.insert((l.clone(), r.priority), r.name.clone()) {
                p.add(
                    at.join("priority"),
                    format!(
                        "priority {} on listener \"{l}\" is already used by route \"{other}\"",
                        r.priority
                    ),
                );
            }
        }
        let conditions = conditions(&r.conditions, &at.join("match"), p);
        let action = action(r, services, &at, p);
        let groups: Option<Vec<String>> = match &action {
            Action::Forward { service } => Some(
                services
                    .iter()
                    .find(|s| &s.name == service)
                    .map(|s| s.groups.iter().map(|g| g.name.clone()).collect())
                    .unwrap_or_default(),
            ),
            _ => None,
        };
        // Said once, where the `forward` is missing: at the route, not at each override.
        if groups.is_none() && !r.overrides.is_empty() {
            p.add(
                at.clone(),
                "a route with overrides needs a `forward` action",
            );
        }
        let overrides =
            super::release::overrides(&r.overrides, groups.as_deref(), &at.join("override"), p);
        let transform = r
            .transform
            .as_ref()
            .map(|t| super::transform::transform(t, &at.join("transform"), p));
        if transform
            .as_ref()
            .is_some_and(|t| t.host.is_some() || t.path.is_some())
            // (A route with no action at all is told so once, above.)
            && (r.fixed_response.is_some() || r.redirect.is_some())
        {
            p.add(
                at.join("transform"),
                "host and path rewrites apply to what a route forwards: this route does not forward",
            );
        }
        out.push(RouteConfig {
            name: r.name.clone(),
            priority: r.priority,
            listeners: r.listeners.clone(),
            conditions,
            action,
            overrides,
            transform,
        });
    }
    out.sort_by_key(|r| r.priority);
    out
}

fn action(r: &RawRoute, services: &[ServiceConfig], at: &KeyPath, p: &mut Problems) -> Action {
    let set = [
        r.forward.is_some(),
        r.fixed_response.is_some(),
        r.redirect.is_some(),
    ];
    if set.iter().filter(|x| **x).count() != 1 {
        p.add(
            at.clone(),
            format!(
                "route \"{}\" needs exactly one action: `forward`, `fixed_response` or `redirect`",
                r.name
            ),
        );
    }
    if let Some(s) = &r.forward {
        if !services.iter().any(|x| &x.name == s) {
            p.add(at.join("forward"), format!("no service named \"{s}\""));
        }
        return Action::Forward { service: s.clone() };
    }
    if let Some(f) = &r.fixed_response {
        let status = status_code(f.status, at.join("fixed_response").join("status"), p)
            .unwrap_or(StatusCode::OK);
        return Action::Fixed(FixedResponse {
            status,
            content_type: f
                .content_type
                .clone()
                .unwrap_or_else(|| "text/plain; charset=utf-8".into()),
            body: f.body.clone(),
        });
    }
    if let Some(rd) = &r.redirect {
        let rat = at.join("redirect");
        let status = match rd.status {
            None => StatusCode::MOVED_PERMANENTLY,
            Some(s @ (301 | 302 | 303 | 307 | 308)) => {
                StatusCode::from_u16(s as u16).expect("valid redirect status")
            }
            Some(s) => {
                p.add(
                    rat.join("status"),
                    format!("{s} is not a redirect status: use 301, 302, 303, 307 or 308"),
                );
                StatusCode::MOVED_PERMANENTLY
            }
        };
        if let Some(s) = &rd.scheme {
            if s != "http" && s != "https" {
                p.add(
                    rat.join("scheme"),
                    format!("scheme \"{s}\" must be \"http\" or \"https\""),
                );
            }
        }
        let port = rd
            .port
            .and_then(|n| in_range(n, 1..=65_535, "", rat.join("port"), p))
            .map(|n| n as u16);
        if let Some(path) = &rd.path {
            if !path.starts_with('/') {
                p.add(rat.join("path"), format!("\"{path}\" must start with /"));
            }
        }
        return Action::Redirect(Redirect {
            status,
            scheme: rd.scheme.clone(),
            host: rd.host.clone(),
            port,
            path: rd.path.clone(),
            query: rd.query.clone(),
        });
    }
    Action::Fixed(FixedResponse {
        status: StatusCode::NOT_FOUND,
        content_type: "text/plain".into(),
        body: String::new(),
    })
}

fn conditions(m: &RawMatch, at: &KeyPath, p: &mut Problems) -> Conditions {
    let mut c = Conditions::default();
    for (i, h) in m.host.iter().enumerate() {
        let h = h.to_ascii_lowercase();
        let valid = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        };
        if let Some(rest) = h.strip_prefix("*.") {
            if valid(rest) {
                c.hosts.push(HostPattern::Suffix(format!(".{rest}")));
                continue;
            }
        } else if valid(&h) {
            c.hosts.push(HostPattern::Exact(h));
            continue;
        }
        p.add(
            at.join("host").join(i),
            format!("\"{h}\" is not a host name or *.domain pattern"),
        );
    }
    let mut path_list = |list: &[String], key: &str, make: fn(String) -> PathPattern| {
        for (i, s) in list.iter().enumerate() {
            if s.starts_with('/') {
                c.paths.push(make(s.clone()));
            } else {
                p.add(at.join(key).join(i), format!("\"{s}\" must start with /"));
            }
        }
    };
    path_list(&m.path, "path", PathPattern::Exact);
    path_list(&m.path_prefix, "path_prefix", PathPattern::Prefix);
    path_list(&m.path_glob, "path_glob", |s| PathPattern::Glob(Glob(s)));
    for (i, s) in m.method.iter().enumerate() {
        match Method::from_bytes(s.to_ascii_uppercase().as_bytes()) {
            Ok(method) => c.methods.push(method),
            Err(_) => p.add(
                at.join("method").join(i),
                format!("\"{s}\" is not an HTTP method"),
            ),
        }
    }
    for (name, values) in &m.header {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) => c
                .headers
                .push((h, values.iter().cloned().map(Glob).collect())),
            Err(_) => p.add(
                at.join("header").join(name),
                format!("\"{name}\" is not a valid header name"),
            ),
        }
    }
    for (name, values) in &m.query {
        c.query
            .push((name.clone(), values.iter().cloned().map(Glob).collect()));
    }
    for (i, s) in m.source.iter().enumerate() {
        match ip_net(s) {
            Some(n) => c.sources.push(n),
            None => p.add(
                at.join("source").join(i),
                format!("\"{s}\" is not an IP address or CIDR such as 10.0.0.0/8"),
            ),
        }
    }
    c
}
