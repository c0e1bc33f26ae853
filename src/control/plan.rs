//! What applying a configuration would change on the running instance: listeners, routes,
//! services, groups, targets, settings, and the weights that would be in force.

use std::collections::BTreeSet;

use serde::Serialize;

use super::{Controller, Traffic};
use crate::config::{Config, ServiceConfig, Split};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanChange {
    /// `+` added, `-` removed, `~` changed.
    pub op: &'static str,
    pub what: String,
    pub detail: String,
}

fn change(op: &'static str, what: String, detail: impl Into<String>) -> PlanChange {
    PlanChange {
        op,
        what,
        detail: detail.into(),
    }
}

impl Controller {
    pub async fn plan(&self, next: &Config) -> Vec<PlanChange> {
        let state = self.state.lock().await;
        let cur = &state.config;
        let mut out = Vec::new();

        for l in &next.listeners {
            match cur.listeners.iter().find(|c| c.name == l.name) {
                None => out.push(change(
                    "+",
                    format!("listener {}", l.name),
                    format!("on {}", l.bind),
                )),
                Some(c) if c != l => out.push(change(
                    "~",
                    format!("listener {}", l.name),
                    format!(
                        "{} -> {}{}",
                        c.bind,
                        l.bind,
                        if l.is_tls() { " (tls)" } else { "" }
                    ),
                )),
                _ => {}
            }
        }
        for c in cur
            .listeners
            .iter()
            .filter(|c| !next.listeners.iter().any(|l| l.name == c.name))
        {
            out.push(change(
                "-",
                format!("listener {}", c.name),
                format!("on {}", c.bind),
            ));
        }

        for r in &next.routes {
            match cur.routes.iter().find(|c| c.name == r.name) {
                None => out.push(change(
                    "+",
                    format!("route {}", r.name),
                    format!("priority {}", r.priority),
                )),
                Some(c) if c != r => {
                    let mut parts = Vec::new();
                    if c.priority != r.priority {
                        parts.push(format!("priority {} -> {}", c.priority, r.priority));
                    }
                    if c.conditions != r.conditions {
                        parts.push("conditions".into());
                    }
                    if c.action != r.action {
                        parts.push("action".into());
                    }
                    if c.overrides != r.overrides {
                        parts.push("overrides".into());
                    }
                    if c.listeners != r.listeners {
                        parts.push("listeners".into());
                    }
                    out.push(change("~", format!("route {}", r.name), parts.join(", ")));
                }
                _ => {}
            }
        }
        for c in cur
            .routes
            .iter()
            .filter(|c| !next.routes.iter().any(|r| r.name == c.name))
        {
            out.push(change("-", format!("route {}", c.name), ""));
        }

        for s in &next.services {
            match cur.service(&s.name) {
                None => out.push(change(
                    "+",
                    format!("service {}", s.name),
                    format!(
                        "groups {}",
                        names(&s.groups.iter().map(|g| g.name.clone()).collect::<Vec<_>>())
                    ),
                )),
                Some(c) => service_changes(c, s, &mut out),
            }
            let in_rollout = state
                .rollouts
                .get(&s.name)
                .is_some_and(|r| r.status.is_active());
            let old = state.traffic.get(&s.name);
            let now = old.map(|t| t.current.clone());
            let then = weights_after(old, s, in_rollout);
            if now.as_ref() != Some(&then) {
                let from = now.map_or_else(|| "none".into(), |n| n.to_string());
                out.push(change(
                    "~",
                    format!("service {} weights", s.name),
                    format!("{from} -> {then}"),
                ));
            }
        }
        for c in cur
            .services
            .iter()
            .filter(|c| next.service(&c.name).is_none())
        {
            out.push(change("-", format!("service {}", c.name), ""));
        }
        if cur.timeouts != next.timeouts || cur.limits != next.limits {
            out.push(change("~", "settings".into(), "timeouts or limits"));
        }
        for (op, what, detail) in crate::config::admin::changes(&cur.admin, &next.admin) {
            out.push(change(op, what, detail));
        }
        out
    }
}

/// The split `apply` would leave in force: the same rule as `Controller::apply`.
fn weights_after(old: Option<&Traffic>, s: &ServiceConfig, in_rollout: bool) -> Split {
    Traffic::after_config(old, s, in_rollout).current
}

fn service_changes(c: &ServiceConfig, s: &ServiceConfig, out: &mut Vec<PlanChange>) {
    for g in &s.groups {
        let what = format!("service {} group {}", s.name, g.name);
        match c.group(&g.name) {
            None => out.push(change(
                "+",
                what,
                format!(
                    "targets {}",
                    names(&g.targets.iter().map(|t| t.0.clone()).collect::<Vec<_>>())
                ),
            )),
            Some(cg) => {
                let before: BTreeSet<String> = cg.targets.iter().map(|t| t.0.clone()).collect();
                let after: BTreeSet<String> = g.targets.iter().map(|t| t.0.clone()).collect();
                let mut parts: Vec<String> =
                    after.difference(&before).map(|t| format!("+{t}")).collect();
                parts.extend(before.difference(&after).map(|t| format!("-{t}")));
                if cg.protocol != g.protocol {
                    parts.push("protocol".into());
                }
                if cg.health_check != g.health_check {
                    parts.push("health check".into());
                }
                if !parts.is_empty() {
                    out.push(change("~", what, parts.join(" ")));
                }
            }
        }
    }
    for cg in c.groups.iter().filter(|cg| s.group(&cg.name).is_none()) {
        out.push(change(
            "-",
            format!("service {} group {}", s.name, cg.name),
            "",
        ));
    }
    let mut parts = Vec::new();
    if c.balance != s.balance {
        parts.push("balance");
    }
    if c.request_timeout != s.request_timeout || c.deregistration_delay != s.deregistration_delay {
        parts.push("timeouts");
    }
    if c.passive != s.passive {
        parts.push("passive health");
    }
    if c.strategy != s.strategy {
        parts.push("strategy");
    }
    if c.stickiness != s.stickiness {
        parts.push("stickiness");
    }
    if !parts.is_empty() {
        out.push(change("~", format!("service {}", s.name), parts.join(", ")));
    }
}

fn names(v: &[String]) -> String {
    v.join(", ")
}
