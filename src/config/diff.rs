//! What changes between two validated configurations, over the whole model at once.
//!
//! `plan` used to compare field by field by hand, and drifted: a new setting (a guard
//! threshold, a hook command that runs on the host) was applied by `apply` and never shown by
//! `plan`. Here both configurations are serialized (every model type derives `Serialize`, so
//! a new field is compared the day it is added) and the two trees are walked. As in sozu's
//! `ConfigState::diff`, the list of changes is computed once: `plan` prints it and `apply`
//! returns the list it computed under the same lock as the change it makes.
//!
//! Paths read like the file: named lists (listeners, routes, services, groups, analyses,
//! checks, tokens) are keyed by name, so `service shop › guard › max_error_rate: 5 → 10`;
//! other lists by index. Secrets are never printed, only that they changed. Keys come in
//! alphabetical order (serde_json's map), which is stable from one run to the next.

use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

use super::Config;

/// One difference, as `plan` prints it: `{op} {what}: {detail}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// `+` added, `-` removed, `~` changed.
    pub op: &'static str,
    pub what: String,
    pub detail: String,
}

impl Change {
    pub fn new(op: &'static str, what: impl Into<String>, detail: impl Into<String>) -> Change {
        Change {
            op,
            what: what.into(),
            detail: detail.into(),
        }
    }
}

/// Path separator in `what`.
pub const SEP: &str = " › ";

/// Keys whose values are credentials: a token's secret, and the notification webhook (a
/// Slack-style URL is its own credential). Only the fact that they changed is shown.
const SECRET: &[&str] = &["secret", "notifications.webhook", "password"];

/// Settings read only when the process starts: a reload or apply records them, and the
/// plan says when they take effect.
const AT_RESTART: &[&str] = &[
    "admin › bind",
    "store › kind",
    "store › path",
    "store › endpoints",
    "store › prefix",
    "store › username",
    "store › password",
    "store › lease_ttl",
    "instance › name",
    "instance › advertise",
];

/// Every difference between `cur` and `next`.
pub fn diff(cur: &Config, next: &Config) -> Vec<Change> {
    let mut out = diff_values(&to_tree(cur), &to_tree(next));
    for c in out
        .iter_mut()
        .filter(|c| AT_RESTART.contains(&c.what.as_str()))
    {
        c.detail.push_str(" (takes effect at restart)");
    }
    out
}

/// The differences between two serialized trees (`diff` without the model, for tests).
pub fn diff_values(cur: &Value, next: &Value) -> Vec<Change> {
    let mut out = Vec::new();
    walk(&mut Vec::new(), cur, next, &mut out);
    out
}

/// The model as a tree, durations as text ("1m 30s").
fn to_tree(c: &Config) -> Value {
    // Every field is plain data (strings, numbers, maps); serializing cannot fail.
    let v = serde_json::to_value(c).expect("the configuration serializes");
    durations_as_text(v)
}

fn durations_as_text(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            if let (2, Some(s), Some(n)) = (
                m.len(),
                m.get("secs").and_then(Value::as_u64),
                m.get("nanos").and_then(Value::as_u64),
            ) {
                let d = Duration::new(s, n as u32);
                return Value::String(humantime::format_duration(d).to_string());
            }
            Value::Object(
                m.into_iter()
                    .map(|(k, v)| (k, durations_as_text(v)))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.into_iter().map(durations_as_text).collect()),
        v => v,
    }
}

fn what(path: &[String]) -> String {
    path.join(SEP)
}

fn is_secret(path: &[String]) -> bool {
    path.last().is_some_and(|k| SECRET.contains(&k.as_str()))
}

fn walk(path: &mut Vec<String>, a: &Value, b: &Value, out: &mut Vec<Change>) {
    if a == b {
        return;
    }
    if is_secret(path) {
        let detail = match (a.is_null(), b.is_null()) {
            (true, _) => "set (not shown)",
            (_, true) => "removed",
            _ => "secret changed: the old one stops working",
        };
        out.push(Change::new("~", what(path), detail));
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) if !is_variant_switch(x, y) => {
            let keys = x.keys().chain(y.keys().filter(|k| !x.contains_key(*k)));
            for k in keys.cloned().collect::<Vec<_>>() {
                path.push(k.clone());
                let null = Value::Null;
                walk(
                    path,
                    x.get(&k).unwrap_or(&null),
                    y.get(&k).unwrap_or(&null),
                    out,
                );
                path.pop();
            }
        }
        (Value::Array(x), Value::Array(y)) => match (names(x), names(y)) {
            (Some(nx), Some(ny)) => named_lists(path, x, &nx, y, &ny, out),
            _ if x.iter().chain(y).all(is_scalar) => {
                out.push(Change::new("~", what(path), list_change(x, y)));
            }
            _ => indexed_lists(path, x, y, out),
        },
        (Value::Null, v) if !is_scalar(v) => {
            out.push(Change::new("+", what(path), flatten(v)));
        }
        (_, Value::Null) if !is_scalar(a) => out.push(Change::new("-", what(path), "")),
        _ => out.push(Change::new(
            "~",
            what(path),
            format!("{} → {}", render(a), render(b)),
        )),
    }
}

/// An enum that became another variant (`{"Metric": …}` → `{"Webhook": …}`): one change.
fn is_variant_switch(x: &Map<String, Value>, y: &Map<String, Value>) -> bool {
    x.len() == 1 && y.len() == 1 && x.keys().next() != y.keys().next()
}

fn is_scalar(v: &Value) -> bool {
    !matches!(v, Value::Object(_) | Value::Array(_))
}

/// The names of a list whose items all have a distinct `name`.
fn names(items: &[Value]) -> Option<Vec<&str>> {
    let names: Vec<&str> = items
        .iter()
        .map(|i| i.get("name").and_then(Value::as_str))
        .collect::<Option<_>>()?;
    let mut sorted = names.clone();
    sorted.sort_unstable();
    sorted.dedup();
    (sorted.len() == names.len()).then_some(names)
}

/// `services` → `service`: how one item of a named list is called in a path.
fn singular(key: &str) -> &str {
    match key {
        "listeners" => "listener",
        "routes" => "route",
        "services" => "service",
        "groups" => "group",
        "analyses" => "analysis",
        "checks" => "check",
        "tokens" => "token",
        k => k,
    }
}

fn named_lists(
    path: &mut Vec<String>,
    x: &[Value],
    nx: &[&str],
    y: &[Value],
    ny: &[&str],
    out: &mut Vec<Change>,
) {
    let Some(key) = path.pop() else { return };
    let label = singular(&key).to_string();
    for (item, name) in y.iter().zip(ny) {
        path.push(format!("{label} {name}"));
        match nx.iter().position(|n| n == name) {
            None => out.push(Change::new("+", what(path), summary(&label, item))),
            Some(i) => walk(path, &x[i], item, out),
        }
        path.pop();
    }
    for name in nx.iter().filter(|n| !ny.contains(n)) {
        path.push(format!("{label} {name}"));
        out.push(Change::new("-", what(path), ""));
        path.pop();
    }
    path.push(key);
}

fn indexed_lists(path: &mut Vec<String>, x: &[Value], y: &[Value], out: &mut Vec<Change>) {
    let Some(key) = path.pop() else { return };
    let null = Value::Null;
    for i in 0..x.len().max(y.len()) {
        path.push(format!("{key}[{i}]"));
        match (x.get(i), y.get(i)) {
            (Some(a), Some(b)) => walk(path, a, b, out),
            (None, Some(b)) => out.push(Change::new("+", what(path), flatten(b))),
            (Some(a), None) => walk(path, a, &null, out),
            (None, None) => {}
        }
        path.pop();
    }
    path.push(key);
}

/// A list of plain values: what came and went, else the new order.
fn list_change(x: &[Value], y: &[Value]) -> String {
    let added: Vec<String> = y
        .iter()
        .filter(|v| !x.contains(v))
        .map(|v| format!("+{}", render(v)))
        .collect();
    let removed: Vec<String> = x
        .iter()
        .filter(|v| !y.contains(v))
        .map(|v| format!("-{}", render(v)))
        .collect();
    if added.is_empty() && removed.is_empty() {
        format!("{} → {}", render_list(x), render_list(y))
    } else {
        added
            .into_iter()
            .chain(removed)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// What a new item of a named list is, in a few words.
fn summary(label: &str, item: &Value) -> String {
    let field = |k: &str| item.get(k).map(render).unwrap_or_default();
    let list = |k: &str, of: &str| {
        let names: Vec<String> = item
            .get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|v| v.get(of).map_or_else(|| render(v), render))
                    .collect()
            })
            .unwrap_or_default();
        names.join(", ")
    };
    match label {
        "listener" => format!("on {}", field("bind")),
        "route" => format!("priority {}", field("priority")),
        "service" => format!("groups {}", list("groups", "name")),
        "group" => format!("targets {}", list("targets", "")),
        "analysis" => format!("checks {}", list("checks", "name")),
        "token" => format!("scopes {}", list("scopes", "")),
        _ => flatten(item),
    }
}

/// A value on one line: `key=value` pairs for objects, secrets masked.
fn flatten(v: &Value) -> String {
    let mut parts = Vec::new();
    flatten_into("", v, &mut parts);
    let s = parts.join(", ");
    const MAX: usize = 300;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

fn flatten_into(prefix: &str, v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                if SECRET.contains(&k.as_str()) {
                    out.push(format!("{key}=(not shown)"));
                } else {
                    flatten_into(&key, v, out);
                }
            }
        }
        Value::Null => {}
        v if prefix.is_empty() => out.push(render(v)),
        v => out.push(format!("{prefix}={}", render(v))),
    }
}

/// One value for a person: `none` for an absent one, URLs without credentials.
fn render(v: &Value) -> String {
    match v {
        Value::Null => "none".into(),
        Value::String(s) => mask_url(s),
        Value::Array(a) => format!("[{}]", render_list(a)),
        Value::Object(m) if m.len() == 1 => {
            let (k, inner) = m.iter().next().expect("one entry");
            if inner.is_null() {
                k.clone()
            } else {
                format!("{k}({})", flatten(inner))
            }
        }
        Value::Object(_) => format!("{{{}}}", flatten(v)),
        // 5.0 reads as 5, as it was likely written in the file.
        Value::Number(n) => n
            .as_f64()
            .filter(|_| n.is_f64())
            .map_or_else(|| n.to_string(), |f| f.to_string()),
        v => v.to_string(),
    }
}

fn render_list(a: &[Value]) -> String {
    a.iter().map(render).collect::<Vec<_>>().join(", ")
}

/// `http://user:pass@host/p?key=…` → `http://***@host/p?…`: credentials in a URL are not
/// printed by `plan`.
fn mask_url(s: &str) -> String {
    let Some((scheme, rest)) = s.split_once("://") else {
        return s.to_string();
    };
    if !scheme.starts_with("http") {
        return s.to_string();
    }
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((p, _)) => format!("{p}?…"),
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lines(a: Value, b: Value) -> Vec<String> {
        diff_values(&durations_as_text(a), &durations_as_text(b))
            .into_iter()
            .map(|c| format!("{} {}: {}", c.op, c.what, c.detail))
            .collect()
    }

    #[test]
    fn named_lists_are_keyed_by_name_and_leaves_show_both_values() {
        let a = json!({"services": [{"name": "shop", "guard": {"max_error_rate": 5.0},
            "groups": [{"name": "blue", "targets": ["a:1"]}]}]});
        let b = json!({"services": [{"name": "shop", "guard": {"max_error_rate": 10.0},
            "groups": [{"name": "blue", "targets": ["a:1", "b:1"]}, {"name": "green", "targets": ["c:1"]}]}]});
        assert_eq!(
            lines(a, b),
            [
                "~ service shop › group blue › targets: +b:1",
                "+ service shop › group green: targets c:1",
                "~ service shop › guard › max_error_rate: 5 → 10",
            ]
        );
    }

    #[test]
    fn secrets_and_url_credentials_are_never_shown() {
        let a = json!({"admin": {"tokens": [{"name": "ci", "secret": "old-s3cret"}]},
            "hook": "http://u:pw@h/x?token=abc"});
        let b = json!({"admin": {"tokens": [{"name": "ci", "secret": "new-s3cret"},
            {"name": "bot", "secret": "bot-s3cret", "scopes": ["read"]}]},
            "hook": "http://u:pw2@h/x?token=def"});
        let text = lines(a, b).join("\n");
        assert!(
            text.contains("~ admin › token ci › secret: secret changed"),
            "{text}"
        );
        assert!(text.contains("+ admin › token bot: scopes read"), "{text}");
        assert!(
            text.contains("~ hook: http://***@h/x?… → http://***@h/x?…"),
            "{text}"
        );
        for s in ["s3cret", "pw", "abc", "def"] {
            assert!(!text.contains(s), "{s} in {text}");
        }
    }

    #[test]
    fn durations_options_lists_and_variants_read_plainly() {
        let a = json!({"t": {"secs": 90, "nanos": 0}, "o": null, "steps": [{"Pause": {"duration_ms": 1}}],
            "p": {"Metric": "ErrorRate"}});
        let b = json!({"t": {"secs": 30, "nanos": 0}, "o": {"command": "./x.sh", "retries": 2},
            "steps": [{"Pause": {"duration_ms": 2}}, {"Analysis": {"name": "smoke"}}],
            "p": {"Webhook": {"url": "http://h/v"}}});
        assert_eq!(
            lines(a, b),
            [
                "+ o: command=./x.sh, retries=2",
                "~ p: Metric(ErrorRate) → Webhook(url=http://h/v)",
                "~ steps[0] › Pause › duration_ms: 1 → 2",
                "+ steps[1]: Analysis.name=smoke",
                "~ t: 1m 30s → 30s",
            ]
        );
    }
}
