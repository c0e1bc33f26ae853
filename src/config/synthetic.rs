//! `[service.synthetic]`: the load generator for quiet services, checked once here — a
//! rate within bounds, only idempotent methods, paths and headers that are valid as written.

use http::{HeaderName, HeaderValue, Method};

use super::fields::{in_range, Problems};
use super::locate::KeyPath;
use super::model::{Synthetic, SyntheticRequest};
use super::raw::RawSynthetic;

/// At most this many requests per second: enough to give an analysis evidence, never a
/// load test (and each is a connection of its own).
pub(super) const MAX_RATE: f64 = 100.0;

pub(super) fn synthetic(
    raw: &RawSynthetic,
    logged: bool,
    at: &KeyPath,
    p: &mut Problems,
) -> Synthetic {
    let rate = raw
        .rate
        .and_then(|r| in_range(r, 0.1..=MAX_RATE, "requests per second", at.join("rate"), p))
        .unwrap_or(10.0);
    let replay = raw.replay == Some(true);
    if replay && !logged {
        p.add(
            at.join("replay"),
            "`replay` sends recent requests from the access log: configure [access_log]",
        );
    }
    let mut requests = Vec::new();
    for (i, r) in raw.requests.iter().flatten().enumerate() {
        let rat = at.join("requests").join(i);
        let method = r.method.as_deref().unwrap_or("GET").to_ascii_uppercase();
        if !matches!(method.as_str(), "GET" | "HEAD" | "OPTIONS") {
            p.add(
                rat.join("method"),
                format!(
                    "{method} is not a safe method: synthetic requests are GET, HEAD or OPTIONS"
                ),
            );
            continue;
        }
        if !r.path.starts_with('/') || r.path.parse::<http::uri::PathAndQuery>().is_err() {
            p.add(
                rat.join("path"),
                format!("\"{}\" is not a path (it starts with /)", r.path),
            );
            continue;
        }
        let mut headers = Vec::new();
        for (name, value) in r.headers.iter().flatten() {
            if HeaderName::from_bytes(name.as_bytes()).is_err()
                || HeaderValue::from_str(value).is_err()
            {
                p.add(
                    rat.join("headers").join(name.as_str()),
                    format!("\"{name}: {value}\" is not a header"),
                );
                continue;
            }
            headers.push((name.to_ascii_lowercase(), value.clone()));
        }
        debug_assert!(Method::from_bytes(method.as_bytes()).is_ok());
        requests.push(SyntheticRequest {
            method,
            path: r.path.clone(),
            headers,
        });
    }
    if raw.requests.as_ref().is_none_or(Vec::is_empty) && !replay {
        p.add(
            at.clone(),
            "synthetic traffic needs `requests`, or `replay = true` (recent requests from the access log)",
        );
    }
    let together = match raw.count.as_deref() {
        None | Some("together") => true,
        Some("apart") => false,
        Some(other) => {
            p.add(
                at.join("count"),
                format!(
                    "\"{other}\": use \"together\" (with the candidate's traffic) or \"apart\""
                ),
            );
            true
        }
    };
    Synthetic {
        rate,
        requests,
        replay,
        together,
    }
}
