//! Who acted, for the audit history: the actor (an admin token's name, or switchyard's own
//! `guard`, `analysis`, `schedule`, …) and, when a client said so, on whose behalf (the
//! CLI sends `cli:$USER`, the dashboard `dashboard`).
//!
//! The control plane passes who acted as one string, used as is in reasons ("paused by
//! deploy-bot on behalf of cli:alice") and split into the event's `actor` and
//! `on_behalf_of` fields when an event is written. Token names have no spaces, so the first
//! separator is always the one [`compose`] put there.

use std::fmt;

const SEPARATOR: &str = " on behalf of ";

/// Who acted: a person or script through the admin API or the CLI, or switchyard itself.
/// Written to the store as the same strings as ever (`deploy-bot`, `guard`, …; the event's
/// `actor` and `on_behalf_of`, the rollout's `created_by` as `actor on behalf of client`),
/// so that existing databases read back. Counting a rollback by cause never reads it: an
/// API caller can name itself anything (see `rollout::RollbackCause`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// An admin token's name (or the CLI's own, e.g. `signal:SIGHUP`), and whom its client
    /// said it acts for (`cli:alice`, `dashboard`).
    Operator {
        name: String,
        on_behalf_of: Option<String>,
    },
    /// switchyard itself.
    System(System),
}

/// The parts of switchyard that act on their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    /// The driver, taking a rollout's next step.
    Schedule,
    /// The fast rollback guard.
    Guard,
    /// An analysis (a step's or the background one).
    Analysis,
    /// The progress deadline of a step.
    Deadline,
    /// A lifecycle hook's result.
    Hook,
    /// A rollout resumed after a restart, going back to its recorded weight.
    Restart,
}

impl System {
    pub fn as_str(self) -> &'static str {
        match self {
            System::Schedule => "schedule",
            System::Guard => "guard",
            System::Analysis => "analysis",
            System::Deadline => "deadline",
            System::Hook => "hook",
            System::Restart => "restart",
        }
    }
}

impl Actor {
    /// The event's `actor` field: a token's name or switchyard's part.
    pub fn name(&self) -> &str {
        match self {
            Actor::Operator { name, .. } => name,
            Actor::System(s) => s.as_str(),
        }
    }

    /// The event's `on_behalf_of` field.
    pub fn on_behalf_of(&self) -> Option<&str> {
        match self {
            Actor::Operator { on_behalf_of, .. } => on_behalf_of.as_deref(),
            Actor::System(_) => None,
        }
    }
}

/// `actor`, or `actor on behalf of client`: what reasons ("paused by …") and `created_by`
/// say.
impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.on_behalf_of() {
            Some(c) => write!(f, "{}{SEPARATOR}{c}", self.name()),
            None => f.write_str(self.name()),
        }
    }
}

/// An operator from the composed form the API's `Actor` extractor makes (see [`compose`]).
/// Text from outside is always an operator, whatever it says: only code names a system part.
impl From<&str> for Actor {
    fn from(who: &str) -> Actor {
        let (name, on_behalf_of) = split(who);
        Actor::Operator { name, on_behalf_of }
    }
}

impl From<&String> for Actor {
    fn from(who: &String) -> Actor {
        Actor::from(who.as_str())
    }
}

impl From<System> for Actor {
    fn from(s: System) -> Actor {
        Actor::System(s)
    }
}

/// What an event records: its `kind` column, one name per change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// All traffic to one group by hand.
    Switch,
    /// Back to the split before the last change.
    SwitchBack,
    /// A split set by hand.
    Weights,
    /// A configuration applied (reload, apply, its new split).
    Config,
    Started,
    Weight,
    /// A mirror step set the share of requests copied to the candidate.
    Mirror,
    /// A timed pause over.
    Step,
    Paused,
    Resumed,
    Promoted,
    Retried,
    Analysis,
    /// A hook step passed, or an end hook ran.
    Hook,
    /// An end hook (`after_rollout`, `on_rollback`) failed.
    HookFailed,
    Retired,
    Completed,
    Aborted,
    RolledBack,
    /// A resumed rollout went back to its recorded weight.
    Restored,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Switch => "switch",
            EventKind::SwitchBack => "switch_back",
            EventKind::Weights => "weights",
            EventKind::Config => "config",
            EventKind::Started => "started",
            EventKind::Weight => "weight",
            EventKind::Mirror => "mirror",
            EventKind::Step => "step",
            EventKind::Paused => "paused",
            EventKind::Resumed => "resumed",
            EventKind::Promoted => "promoted",
            EventKind::Retried => "retried",
            EventKind::Analysis => "analysis",
            EventKind::Hook => "hook",
            EventKind::HookFailed => "hook_failed",
            EventKind::Retired => "retired",
            EventKind::Completed => "completed",
            EventKind::Aborted => "aborted",
            EventKind::RolledBack => "rolled_back",
            EventKind::Restored => "restored",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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

    /// The strings written to the store are today's: an old database reads back, and what
    /// the API composed comes back apart in the event's two fields.
    #[test]
    fn actors_are_stored_as_the_same_strings() {
        let op = Actor::from(compose("deploy-bot", Some("cli:alice")).as_str());
        assert_eq!(op.to_string(), "deploy-bot on behalf of cli:alice");
        assert_eq!(
            (op.name(), op.on_behalf_of()),
            ("deploy-bot", Some("cli:alice"))
        );
        assert_eq!(Actor::from(System::Guard).to_string(), "guard");
        assert_eq!(Actor::from(System::Schedule).on_behalf_of(), None);
        // A caller naming itself "guard" stays an operator.
        assert!(matches!(Actor::from("guard"), Actor::Operator { .. }));
    }

    #[test]
    fn clean_text() {
        assert_eq!(clean("a\r\n\u{1b}[2Jb  c\t", 100), "a [2Jb c");
        assert_eq!(clean("abcdef", 3), "abc…");
        assert_eq!(clean("abc", 3), "abc");
    }
}
