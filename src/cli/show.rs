//! Reading the admin API's JSON for display: a missing or mistyped field shows as nothing
//! rather than failing a command that only prints.

use serde_json::Value;

/// A string field, or "" when it is absent or not a string.
pub(super) fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// `shown` when a boolean field is true, else "".
pub(super) fn flag<'a>(v: &Value, shown: &'a str) -> &'a str {
    if v.as_bool() == Some(true) {
        shown
    } else {
        ""
    }
}

/// An observed split (shares from 0 to 1 by group) as `blue=90.0% green=10.0%`: one way in
/// every view.
pub(super) fn observed_text(v: &Value) -> String {
    let shares: Vec<String> = v
        .as_object()
        .into_iter()
        .flatten()
        .map(|(g, s)| format!("{g}={:.1}%", s.as_f64().unwrap_or(0.0) * 100.0))
        .collect();
    shares.join(" ")
}

/// Where a rollout is, in every text view: `step 2 of 4`, counted from 1 (the API's `step`
/// counts from 0 and equals the number of steps once all ran: `step 4 of 4`).
pub(super) fn step_of(r: &Value) -> String {
    let total = r["steps"].as_array().map_or(0, Vec::len) as u64;
    let current = (r["step"].as_u64().unwrap_or(0) + 1).min(total);
    format!("step {current} of {total}")
}

/// Fingerprints listed in a text view; more are counted.
const FINGERPRINTS_SHOWN: usize = 5;

/// A rollout's `new_errors` (the candidate's failed answers by fingerprint against stable's)
/// as lines for `status` and `rollout status`, each indented by `indent`; none when the
/// view has none (no rollout in progress, or no failed answer of the candidate).
pub(super) fn new_errors_lines(r: &Value, indent: &str) -> Vec<String> {
    let e = &r["new_errors"];
    let rows = e["fingerprints"].as_array().map_or(&[][..], Vec::as_slice);
    let overflow = e["candidate_overflow"].as_u64().unwrap_or(0);
    if rows.is_empty() && overflow == 0 {
        return Vec::new();
    }
    let (cand, stable) = (str_of(&r["candidate"]), str_of(&r["stable"]));
    let since = e["since_unix_ms"].as_i64().unwrap_or(0);
    let new = rows.iter().filter(|f| f["new"] == true).count();
    let mut out = vec![format!(
        "{indent}new errors since {} (new: only {cand}, {}+ times): {new} new of {} fingerprints",
        switchyard::fingerprint::clock_time(since),
        e["min_count"],
        rows.len()
    )];
    for f in rows.iter().take(FINGERPRINTS_SHOWN) {
        let mark = if f["new"] == true { "NEW" } else { "   " };
        let mut what = f["status"].to_string();
        if let Some(c) = f["cause"].as_str() {
            what.push_str(&format!(" {c}"));
        }
        if let Some(s) = f["sample"].as_str().filter(|s| !s.is_empty()) {
            what.push_str(&format!(" '{s}'"));
        }
        out.push(format!(
            "{indent}  {mark} {what} on route {}: {cand} {}, {stable} {}, first {}",
            str_of(&f["route"]),
            f["candidate"],
            f["stable"],
            switchyard::fingerprint::clock_time(f["first_unix_ms"].as_i64().unwrap_or(0))
        ));
    }
    if rows.len() > FINGERPRINTS_SHOWN {
        out.push(format!(
            "{indent}  … and {} more",
            rows.len() - FINGERPRINTS_SHOWN
        ));
    }
    if overflow > 0 {
        out.push(format!(
            "{indent}  {overflow} failed answers of {cand} beyond the fingerprints kept"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_errors_are_listed_new_first_with_both_groups_counts_and_nothing_without_any() {
        let r = serde_json::json!({
            "stable": "blue", "candidate": "green",
            "new_errors": {
                "since_unix_ms": 3_600_000, "min_count": 5, "candidate_overflow": 0,
                "stable_overflow": 0, "instances": 1,
                "fingerprints": [
                    { "id": "a", "route": "api", "status": 503, "sample": "db pool exhausted <n>",
                      "candidate": 12, "stable": 0, "first_unix_ms": 3_601_000,
                      "last_unix_ms": 3_602_000, "new": true },
                    { "id": "b", "route": "api", "status": 502, "cause": "upstream_reset",
                      "kind": "reset", "sample": "", "candidate": 2, "stable": 3,
                      "first_unix_ms": 3_605_000, "last_unix_ms": 3_605_000, "new": false }
                ]
            }
        });
        assert_eq!(
            new_errors_lines(&r, ""),
            [
                "new errors since 01:00:00 (new: only green, 5+ times): 1 new of 2 fingerprints",
                "  NEW 503 'db pool exhausted <n>' on route api: green 12, blue 0, first 01:00:01",
                "      502 upstream_reset on route api: green 2, blue 3, first 01:00:05",
            ]
        );
        assert!(new_errors_lines(&serde_json::json!({ "new_errors": null }), "").is_empty());
    }
}
