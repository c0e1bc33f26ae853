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
