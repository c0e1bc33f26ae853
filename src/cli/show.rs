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
