//! `plan` reports every setting of the file. Generated, not a hand list: every leaf value of
//! `examples/switchyard.toml` (plus the sections it leaves commented out: guard, hooks,
//! notifications, access log, external checks) is changed, one at a time, to another value of
//! its type; each change that still validates must appear in the plan.

use std::path::Path;

use switchyard::config::{diff::diff, parse, Config};
use toml_edit::{DocumentMut, Item, Value};

/// The settings the example leaves commented out, and that a hand-written plan forgot.
const FORGOTTEN: &str = r#"
[[admin.tokens]]
name = "ops"
token = "ops-s3cret"
scopes = ["read", "config"]

[notifications]
webhook = "http://127.0.0.1:7000/slack"

[access_log]
path = "access.log"
buffer = 1000

[[analysis]]
name = "external"
[[analysis.check]]
name = "synthetic"
command = "./checks/login.sh"
timeout = "20s"
[[analysis.check]]
name = "checkout-errors"
prometheus = { url = "http://127.0.0.1:9090", query = "sum(rate(checkout_errors_total[1m]))" }
max = 0.5
[[analysis.check]]
name = "verdict"
webhook = { url = "http://127.0.0.1:7000/verdict" }

[[service]]
name = "api"
active = "v1"
progress_deadline = "10m"
[service.guard]
interval = "1s"
window = "2s"
max_error_rate = 5
min_requests = 10
[service.hooks.before_traffic]
command = "./hooks/warm-caches.sh"
timeout = "60s"
retries = 2
[service.hooks.before_promotion]
url = "http://127.0.0.1:7000/change-approved"
confirm = true
[service.hooks.on_rollback]
command = "./hooks/page-oncall.sh"
[service.mirror]
group = "v2"
percent = 10
methods = ["GET", "HEAD"]
max_body_bytes = 1024
queue = 100
concurrency = 8
compare = { status = true, headers = ["content-type"], body = "json", ignore = ["id"], max_body_bytes = 4096, allowed_latency_increase = "50%" }
[[service.group]]
name = "v1"
targets = ["127.0.0.1:9101"]
[[service.group]]
name = "v2"
targets = ["127.0.0.1:9102"]
"#;

/// Leaves that must be covered by a valid mutation: the ones most likely to be forgotten.
const MUST_COVER: &[&str] = &[
    "admin.token",
    "admin.tokens[0].token",
    "admin.tokens[0].scopes[0]",
    "notifications.webhook",
    "access_log.path",
    "access_log.buffer",
    "analysis[0].check[0].max_over_stable",
    "analysis[0].check[1].max_ratio_to_stable",
    "analysis[0].min_requests",
    "analysis[1].check[0].command",
    "analysis[1].check[1].max",
    "service[0].progress_deadline",
    "service[0].stickiness.cookie_max_age",
    "service[1].guard.max_error_rate",
    "service[1].guard.window",
    "service[1].hooks.before_traffic.command",
    "service[1].hooks.on_rollback.command",
    "service[1].hooks.before_promotion.url",
    "service[1].progress_deadline",
    "service[1].mirror.percent",
    "service[1].mirror.queue",
    "service[1].mirror.compare.ignore[0]",
    "service[1].mirror.compare.allowed_latency_increase",
];

fn source() -> String {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/switchyard.toml");
    std::fs::read_to_string(example).unwrap() + FORGOTTEN
}

fn load(text: &str) -> Option<Config> {
    parse(text, "switchyard.toml", Path::new("/etc/switchyard")).ok()
}

/// Calls `f` on every leaf value under `item`, with its path (`a.b[0].c`).
fn leaves(item: &mut Item, path: &str, f: &mut dyn FnMut(&str, &mut Value)) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match item {
        Item::Table(t) => {
            for (k, v) in t.iter_mut() {
                leaves(v, &join(&k), f);
            }
        }
        Item::ArrayOfTables(a) => {
            for (i, t) in a.iter_mut().enumerate() {
                for (k, v) in t.iter_mut() {
                    leaves(v, &format!("{path}[{i}].{k}"), f);
                }
            }
        }
        Item::Value(v) => value_leaves(v, path, f),
        Item::None => {}
    }
}

fn value_leaves(v: &mut Value, path: &str, f: &mut dyn FnMut(&str, &mut Value)) {
    match v {
        Value::Array(a) => {
            for (i, x) in a.iter_mut().enumerate() {
                value_leaves(x, &format!("{path}[{i}]"), f);
            }
        }
        Value::InlineTable(t) => {
            for (k, x) in t.iter_mut() {
                value_leaves(x, &format!("{path}.{k}"), f);
            }
        }
        leaf => f(path, leaf),
    }
}

/// Other values of the same type, most plausible first.
fn candidates(v: &Value, same_key: &[String]) -> Vec<Value> {
    match v {
        Value::Integer(i) => {
            let i = *i.value();
            vec![(i + 1).into(), (i * 2).into(), (i - 1).into()]
        }
        Value::Float(x) => {
            let x = *x.value();
            vec![(x + 1.0).into(), (x * 2.0).into(), (x / 2.0).into()]
        }
        Value::Boolean(b) => vec![(!*b.value()).into()],
        Value::String(s) => {
            let s = s.value();
            let mut out = Vec::new();
            if let Ok(d) = humantime::parse_duration(s) {
                out.push(humantime::format_duration(d * 2).to_string());
            }
            // Another last digit: ports, addresses, CIDRs, status ranges.
            if let Some(i) = s.rfind(|c: char| c.is_ascii_digit()) {
                let d = s.as_bytes()[i] - b'0';
                let mut t = s.to_string();
                t.replace_range(i..=i, &((d + 1) % 10).to_string());
                out.push(t);
            }
            out.extend(same_key.iter().filter(|o| *o != s).cloned());
            out.push(format!("{s}x"));
            out.push(format!("{s}/x"));
            out.into_iter().map(Value::from).collect()
        }
        _ => Vec::new(),
    }
}

/// The last key of a path, without indexes: `match.host[1]` → `host`.
fn key_of(path: &str) -> &str {
    let last = path.rsplit('.').next().unwrap_or(path);
    last.split('[').next().unwrap_or(last)
}

#[test]
fn every_setting_of_the_file_that_changes_shows_in_the_plan() {
    let text = source();
    let original = load(&text).expect("the example and its extra sections are valid");
    let doc: DocumentMut = text.parse().unwrap();

    // Every leaf, and the string values each key has anywhere in the file.
    let mut all: Vec<(String, Value)> = Vec::new();
    leaves(&mut doc.clone().as_item_mut().clone(), "", &mut |p, v| {
        all.push((p.to_string(), v.clone()));
    });
    let strings_of = |key: &str| -> Vec<String> {
        let mut v: Vec<String> = all
            .iter()
            .filter(|(p, _)| key_of(p) == key)
            .filter_map(|(_, v)| v.as_str().map(str::to_string))
            .collect();
        v.dedup();
        v
    };

    let (mut covered, mut skipped, mut missed) = (Vec::new(), Vec::new(), Vec::new());
    for (path, value) in &all {
        let mut found = None;
        for candidate in candidates(value, &strings_of(key_of(path))) {
            let mut doc = doc.clone();
            leaves(doc.as_item_mut(), "", &mut |p, v| {
                if p == path {
                    *v = candidate.clone().decorated(" ", "");
                }
            });
            if let Some(next) = load(&doc.to_string()) {
                found = Some((candidate, next));
                break;
            }
        }
        let Some((candidate, next)) = found else {
            skipped.push(path.clone());
            continue;
        };
        let changes = diff(&original, &next);
        if changes.is_empty() {
            missed.push(format!("{path}: {value} → {candidate}"));
            continue;
        }
        let text = format!("{changes:?}");
        for secret in ["change-me", "s3cret", "slack"] {
            if candidate.as_str().is_some_and(|c| c.contains(secret)) {
                assert!(
                    !text.contains(secret),
                    "{path}: a secret in the plan: {text}"
                );
            }
        }
        covered.push(path.clone());
    }

    assert!(
        missed.is_empty(),
        "plan shows no change for:\n{}",
        missed.join("\n")
    );
    let total = covered.len() + skipped.len();
    assert!(
        covered.len() * 100 >= total * 80,
        "only {} of {total} leaves could be changed validly; skipped:\n{}",
        covered.len(),
        skipped.join("\n")
    );
    for must in MUST_COVER {
        assert!(
            covered.iter().any(|c| c == must),
            "{must} is not covered (skipped: {})",
            skipped.contains(&must.to_string())
        );
    }
    println!(
        "{} leaves: {} covered, {} skipped (a change of them is invalid): {}",
        total,
        covered.len(),
        skipped.len(),
        skipped.join(", ")
    );
}

#[test]
fn the_forgotten_settings_read_plainly_in_the_plan() {
    let text = source();
    let original = load(&text).unwrap();
    let next = text
        .replace("max_error_rate = 5", "max_error_rate = 10")
        .replace("./hooks/warm-caches.sh", "./hooks/warm-all.sh")
        .replace("token = \"change-me-too\"", "token = \"rotated\"")
        .replace("max_over_stable = 0.5", "max_over_stable = 1");
    let lines: Vec<String> = diff(&original, &load(&next).unwrap())
        .iter()
        .map(|c| format!("{} {}: {}", c.op, c.what, c.detail))
        .collect();
    assert_eq!(
        lines,
        [
            "~ admin › token deploy-bot › secret: secret changed: the old one stops working",
            "~ analysis smoke › check errors › threshold › max_over_stable: 0.5 → 1",
            "~ service api › guard › max_error_rate: 5 → 10",
            "~ service api › hooks › before_traffic › command: ./hooks/warm-caches.sh → ./hooks/warm-all.sh",
        ]
    );
}
