//! `[service.mirror]`: mirror and compare, checked once here — a group of the service, a
//! share with the split's resolution, methods that are methods, bounded queue and
//! concurrency, and a comparison that names what it compares.

use http::{HeaderName, Method};

use super::fields::{in_range, Problems};
use super::locate::KeyPath;
use super::model::{BodyCompare, Mirror};
use super::raw::RawMirror;

/// Copies waiting or in flight at most, whatever the file says: a mirror is a sample of
/// traffic, not a second data plane, and its memory is bounded by these — each copy started
/// holds at most its request body (`max_body_bytes`) and, for a JSON comparison, the two
/// answers' bodies up to `compare.max_body_bytes`.
const MAX_QUEUE: i64 = 4_096;
const MAX_CONCURRENCY: i64 = 512;
/// A copied request body is held whole until the copy is sent; bodies above this are not
/// copied at all. Also the most of an answer kept for a JSON comparison.
const MAX_BODY: i64 = 1024 * 1024;
/// Fields that describe one connection or one framing, not the answer: they differ between
/// two answers of the same version (and the real answer's are already gone).
const NOT_COMPARABLE: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "date",
];

pub(super) fn mirror(raw: &RawMirror, groups: &[&str], at: &KeyPath, p: &mut Problems) -> Mirror {
    let mut m = Mirror::default();
    if let Some(g) = &raw.group {
        if groups.contains(&g.as_str()) {
            m.group = Some(g.clone());
        } else {
            p.add(
                at.join("group"),
                format!("no group named \"{g}\" in this service"),
            );
        }
    }
    match (raw.percent, &raw.group) {
        (Some(_), None) => p.add(
            at.join("percent"),
            "`percent` is the share copied to `group`; a rollout's mirror steps set their own (`{ mirror = 100 }`)",
        ),
        (Some(v), Some(_)) => match crate::split::basis_points(v) {
            Ok(bp) => m.share = bp,
            Err(e) => p.add(at.join("percent"), e.to_string()),
        },
        (None, Some(_)) => m.share = crate::split::FULL_WEIGHT,
        (None, None) => {}
    }
    if let Some(methods) = &raw.methods {
        m.methods.clear();
        for (i, name) in methods.iter().enumerate() {
            let upper = name.to_ascii_uppercase();
            if upper.is_empty() || Method::from_bytes(upper.as_bytes()).is_err() {
                p.add(
                    at.join("methods").join(i),
                    format!("\"{name}\" is not an HTTP method"),
                );
            } else if !m.methods.contains(&upper) {
                m.methods.push(upper);
            }
        }
        if methods.is_empty() {
            p.add(
                at.join("methods"),
                "no method would be copied: leave `methods` out for GET, HEAD and OPTIONS",
            );
        }
    }
    let count = |v: Option<i64>, max: i64, key: &str, note: &str, p: &mut Problems| {
        v.and_then(|n| in_range(n, 1..=max, note, at.join(key), p))
    };
    if let Some(n) = raw.max_body_bytes.and_then(|n| {
        in_range(
            n,
            0..=MAX_BODY,
            "bytes; larger bodies are not copied",
            at.join("max_body_bytes"),
            p,
        )
    }) {
        m.max_body_bytes = n as u64;
    }
    if let Some(n) = count(raw.queue, MAX_QUEUE, "queue", "copies waiting", p) {
        m.queue = n as usize;
    }
    if let Some(n) = count(
        raw.concurrency,
        MAX_CONCURRENCY,
        "concurrency",
        "copies in flight",
        p,
    ) {
        m.concurrency = n as usize;
    }
    let Some(c) = &raw.compare else {
        return m;
    };
    let cat = at.join("compare");
    if let Some(s) = c.status {
        m.compare.status = s;
    }
    for (i, h) in c.headers.iter().flatten().enumerate() {
        match HeaderName::from_bytes(h.as_bytes()) {
            Ok(n) if NOT_COMPARABLE.contains(&n.as_str()) => p.add(
                cat.join("headers").join(i),
                format!("\"{h}\" differs between any two answers (a connection's or a framing's field, or the time): the body comparison covers what it says"),
            ),
            Ok(n) => m.compare.headers.push(n.as_str().to_string()),
            Err(_) => p.add(
                cat.join("headers").join(i),
                format!("\"{h}\" is not a header name"),
            ),
        }
    }
    m.compare.body = match c.body.as_deref() {
        None | Some("hash") => BodyCompare::Hash,
        Some("json") => BodyCompare::Json,
        Some("json-shape") => BodyCompare::JsonShape,
        Some("none") => BodyCompare::None,
        Some(other) => {
            p.add(
                cat.join("body"),
                format!("\"{other}\": use \"hash\", \"json\", \"json-shape\" or \"none\""),
            );
            BodyCompare::Hash
        }
    };
    if let Some(ignore) = &c.ignore {
        if !matches!(m.compare.body, BodyCompare::Json | BodyCompare::JsonShape) {
            p.add(
                cat.join("ignore"),
                "`ignore` names JSON fields: it needs `body = \"json\"` or \"json-shape\"",
            );
        }
        for (i, f) in ignore.iter().enumerate() {
            if f.is_empty() || f.split('.').any(str::is_empty) {
                p.add(
                    cat.join("ignore").join(i),
                    format!("\"{f}\" is not a field: a name, or a path like \"meta.time\""),
                );
            } else {
                m.compare.ignore.push(f.clone());
            }
        }
    }
    if let Some(n) = c.max_body_bytes.and_then(|n| {
        in_range(
            n,
            1..=MAX_BODY,
            "bytes of each answer kept to compare",
            cat.join("max_body_bytes"),
            p,
        )
    }) {
        m.compare.max_body_bytes = n as usize;
    }
    if let Some(s) = &c.allowed_latency_increase {
        let n = s
            .trim()
            .strip_suffix('%')
            .and_then(|n| n.trim().parse::<f64>().ok());
        match n {
            Some(n) => {
                m.compare.allowed_latency_increase = in_range(
                    n,
                    0.0..=10_000.0,
                    "percent of the real answer's latency",
                    cat.join("allowed_latency_increase"),
                    p,
                )
                .map(|n| n / 100.0);
            }
            None => p.add(
                cat.join("allowed_latency_increase"),
                format!("\"{s}\" is not a percentage: use e.g. \"50%\""),
            ),
        }
    }
    m
}
