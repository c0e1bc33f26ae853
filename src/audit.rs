//! Who acted, for the audit history: the actor (an admin token's name, or switchyard's own
//! `guard`, `analysis`, `schedule`, …) and, when a client said so, on whose behalf (the
//! CLI sends `cli:$USER`, the dashboard `dashboard`).
//!
//! The control plane passes who acted as one string, used as is in reasons ("paused by
//! deploy-bot on behalf of cli:alice") and split into the event's `actor` and
//! `on_behalf_of` fields when an event is written. Token names have no spaces, so the first
//! separator is always the one [`compose`] put there.

const SEPARATOR: &str = " on behalf of ";

/// `actor`, or `actor on behalf of client`.
pub fn compose(actor: &str, on_behalf_of: Option<&str>) -> String {
    match on_behalf_of {
        Some(c) if c != actor => format!("{actor}{SEPARATOR}{c}"),
        _ => actor.to_string(),
    }
}

/// The inverse of [`compose`]: (actor, on behalf of).
pub fn split(who: &str) -> (String, Option<String>) {
    match who.split_once(SEPARATOR) {
        Some((a, c)) => (a.to_string(), Some(c.to_string())),
        None => (who.to_string(), None),
    }
}

/// Client or remote text made fit for the audit history and logs: control characters
/// (newlines, escapes) become spaces, runs of spaces one, and at most `max` characters are
/// kept (with `…` when cut), so that text cannot forge lines or fill the history.
pub fn clean(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut count = 0;
    let mut space = false;
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if c == ' ' && space {
            continue;
        }
        space = c == ' ';
        if count == max {
            out.push('…');
            break;
        }
        out.push(c);
        count += 1;
    }
    out.trim().to_string()
}

/// The longest reason a client may give (an abort's): longer ones are cut.
pub const MAX_REASON_CHARS: usize = 500;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let who = compose("deploy-bot", Some("cli:alice on behalf of x"));
        assert_eq!(
            split(&who),
            ("deploy-bot".into(), Some("cli:alice on behalf of x".into()))
        );
        assert_eq!(split(&compose("guard", None)), ("guard".into(), None));
        assert_eq!(compose("admin", Some("admin")), "admin");
    }

    #[test]
    fn clean_text() {
        assert_eq!(clean("a\r\n\u{1b}[2Jb  c\t", 100), "a [2Jb c");
        assert_eq!(clean("abcdef", 3), "abc…");
        assert_eq!(clean("abc", 3), "abc");
    }
}
