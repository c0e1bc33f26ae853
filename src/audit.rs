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
}
