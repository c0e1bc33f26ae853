//! The keys of a fleet under its prefix (the layout is in `etcd`'s module doc): built and
//! read back here only.

/// What a key under the prefix holds.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Key {
    Traffic(String),
    Rollout,
    Event,
    Config,
    Leader,
    Instance(String),
    /// `P/seq/*` and anything unknown.
    Other,
}

#[derive(Debug, Clone)]
pub(super) struct Keys {
    /// With its trailing `/`.
    root: String,
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Keys {
        Keys {
            root: format!("{}/", prefix.trim_end_matches('/')),
        }
    }

    /// `P/`: everything of the fleet.
    pub(super) fn all(&self) -> String {
        self.root.clone()
    }

    pub(super) fn traffic_prefix(&self) -> String {
        format!("{}traffic/", self.root)
    }

    pub(super) fn traffic(&self, service: &str) -> String {
        format!("{}traffic/{service}", self.root)
    }

    pub(super) fn rollouts_prefix(&self) -> String {
        format!("{}rollouts/", self.root)
    }

    pub(super) fn rollout(&self, id: u64) -> String {
        format!("{}rollouts/{id:020}", self.root)
    }

    pub(super) fn rollout_seq(&self) -> String {
        format!("{}seq/rollout", self.root)
    }

    /// The id imported events ended at; computed ids start above it.
    pub(super) fn event_seq(&self) -> String {
        format!("{}seq/event", self.root)
    }

    pub(super) fn events_prefix(&self) -> String {
        format!("{}events/", self.root)
    }

    /// Events from unix ms `at` on.
    pub(super) fn events_from(&self, at: i64) -> String {
        format!("{}events/{:013}", self.root, at.max(0))
    }

    pub(super) fn event(&self, at: i64, instance: &str, n: u64) -> String {
        format!("{}events/{:013}-{instance}-{n}", self.root, at.max(0))
    }

    /// The id of the service's latest rollout, written with each new one: a move toward
    /// stable decided on an older rollout is not written over a newer one (see `txn`).
    pub(super) fn latest(&self, service: &str) -> String {
        format!("{}latest/{service}", self.root)
    }

    /// Present once attempt `attempt` of rollout `id` ended (written with its end): a hold of
    /// that attempt decided on an instance that had not seen the end is not written.
    pub(super) fn ended(&self, id: u64, attempt: u32) -> String {
        format!("{}ended/{id:020}/{attempt}", self.root)
    }

    /// Present once attempt `attempt` of rollout `id` ended with `status` (written with that
    /// end): the same end written again — a durable write retried after an answer lost
    /// although it landed, or a second instance ending the same attempt the same way — is
    /// not written over what was recorded after it (the end work's progress).
    pub(super) fn ended_as(&self, id: u64, attempt: u32, status: &str) -> String {
        format!("{}ends/{id:020}/{attempt}/{status}", self.root)
    }

    /// The token of this instance's last durable write that landed (see `Commit::token`).
    pub(super) fn once(&self, instance: &str) -> String {
        format!("{}once/{instance}", self.root)
    }

    /// Every recorded second of `service`'s rollouts (see `seconds`).
    pub(super) fn seconds_prefix(&self, service: &str) -> String {
        format!("{}seconds/{service}/", self.root)
    }

    /// The recorded seconds of rollout `id` (and, as a range's end, of every older one).
    pub(super) fn seconds_of(&self, service: &str, id: u64) -> String {
        format!("{}{id:020}/", self.seconds_prefix(service))
    }

    /// One batch of recorded seconds of an attempt, by its first second (unix ms).
    pub(super) fn seconds(&self, service: &str, id: u64, attempt: u32, first_ms: i64) -> String {
        format!(
            "{}{attempt}/{:013}",
            self.seconds_of(service, id),
            first_ms.max(0)
        )
    }

    /// The rollout id of a key of recorded seconds.
    pub(super) fn seconds_rollout(&self, key: &str) -> Option<u64> {
        self.seconds_parts(key)?.0.parse().ok()
    }

    /// The attempt of a key of recorded seconds.
    pub(super) fn seconds_attempt(&self, key: &str) -> Option<u32> {
        self.seconds_parts(key)?.1.parse().ok()
    }

    /// (id, attempt) of `P/seconds/<service>/<id>/<attempt>/<first>`; a service's name has
    /// no `/`, so they are the last parts but one and two.
    fn seconds_parts<'k>(&self, key: &'k str) -> Option<(&'k str, &'k str)> {
        let rest = key.strip_prefix(&self.root)?.strip_prefix("seconds/")?;
        let mut parts = rest.rsplit('/');
        let (_first, attempt, id) = (parts.next()?, parts.next()?, parts.next()?);
        Some((id, attempt))
    }

    pub(super) fn config(&self) -> String {
        format!("{}config", self.root)
    }

    pub(super) fn leader(&self) -> String {
        format!("{}leader", self.root)
    }

    pub(super) fn instances_prefix(&self) -> String {
        format!("{}instances/", self.root)
    }

    pub(super) fn instance(&self, name: &str) -> String {
        format!("{}instances/{name}", self.root)
    }

    pub(super) fn decode(&self, key: &str) -> Key {
        let Some(rest) = key.strip_prefix(&self.root) else {
            return Key::Other;
        };
        if let Some(s) = rest.strip_prefix("traffic/") {
            return Key::Traffic(s.to_string());
        }
        if let Some(s) = rest.strip_prefix("instances/") {
            return Key::Instance(s.to_string());
        }
        match rest {
            "config" => Key::Config,
            "leader" => Key::Leader,
            _ if rest.starts_with("rollouts/") => Key::Rollout,
            _ if rest.starts_with("events/") => Key::Event,
            _ => Key::Other,
        }
    }

    /// The `n` of an event key (`…-<instance>-<n>`).
    pub(super) fn event_n(key: &str) -> u64 {
        key.rsplit('-')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_decode_to_what_they_were_built_for() {
        let k = Keys::new("/sy/prod");
        assert_eq!(k.decode(&k.traffic("web")), Key::Traffic("web".into()));
        assert_eq!(k.decode(&k.rollout(7)), Key::Rollout);
        assert_eq!(k.rollout(7), "/sy/prod/rollouts/00000000000000000007");
        assert_eq!(k.decode(&k.instance("lb-1")), Key::Instance("lb-1".into()));
        assert_eq!(k.decode(&k.leader()), Key::Leader);
        assert_eq!(k.decode(&k.config()), Key::Config);
        assert_eq!(k.decode(&k.rollout_seq()), Key::Other);
        let e = k.event(1_700_000_000_000, "lb-1", 42);
        assert_eq!(k.decode(&e), Key::Event);
        assert_eq!(Keys::event_n(&e), 42);
        assert_eq!(k.decode("/sy/prodx/traffic/web"), Key::Other);
        let s = k.seconds("web", 7, 2, 1_764_000_000_000);
        assert_eq!(
            s,
            "/sy/prod/seconds/web/00000000000000000007/2/1764000000000"
        );
        assert_eq!(
            k.decode(&s),
            Key::Other,
            "the watch ignores recorded seconds"
        );
        assert_eq!(
            (k.seconds_rollout(&s), k.seconds_attempt(&s)),
            (Some(7), Some(2))
        );
        assert!(s.starts_with(&k.seconds_of("web", 7)) && !s.starts_with(&k.seconds_prefix("we")));
    }
}
