//! Writes: each one etcd transaction, conditioned on this instance's leadership while it
//! leads (the fence) and, for a forward commit, on its keys being unchanged since the
//! revision the decision was made on. The failure branch reads the leader key and the
//! guarded keys, so that a refused write says which condition failed.

use serde_json::Value;

use super::{to_json, wire, EtcdStore};
use crate::store::{Commit, NewRollout, StoreError};

/// How long `create_rollout` keeps trying while other instances take the ids it read.
const ID_RACES: std::time::Duration = std::time::Duration::from_secs(3);

/// One transaction's writes and its conditions.
#[derive(Debug, Default)]
pub(super) struct Write {
    pub puts: Vec<Value>,
    /// Keys that must not have been modified after `based_on`, each with its service.
    pub guarded: Vec<(String, String)>,
    pub based_on: i64,
    /// Further conditions (the rollout id's compare-and-swap): when only these fail the
    /// outcome is `Raced`.
    pub extra: Vec<Value>,
    /// The leadership the write was decided under; `None`: the store's fence now.
    pub fence: Option<Option<i64>>,
    /// For a move toward stable: the service's latest-rollout key and the rollout's id. It
    /// is written only while that rollout is still the service's latest (see `Superseded`).
    pub latest: Option<(String, String, u64)>,
    /// For a hold (a move toward stable that leaves the rollout active): the key saying its
    /// attempt ended. It is written only while that key is absent.
    pub ended: Option<(String, String, u64)>,
    /// For the end of an attempt as a move toward stable: the key saying it ended this way.
    /// It is written only while that key is absent; present, the end is recorded already
    /// and the write is answered as landed without writing (see `Keys::ended_as`).
    pub once: Option<String>,
    /// A durable write's token (see `Commit::token`): its key, the token, and whether the key
    /// is known to be absent (no durable write of this instance ever landed).
    pub token: Option<(String, u64, bool)>,
}

#[derive(Debug, PartialEq)]
pub(super) enum Outcome {
    /// Written at this revision.
    Written(i64),
    /// An `extra` condition failed.
    Raced,
    /// The end it records was recorded already (see `Write::once`): nothing written.
    Recorded,
}

/// The last part of an event's key: from the event itself and its place in the commit, so
/// that the same commit written again (a durable write retried after an answer that was
/// lost although it landed) puts the same keys and records its events once. The place, last
/// in the number, keeps the events of one commit apart (`events` makes ids of it, mod 1000).
fn event_n(stored: &[u8], place: usize) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    stored.hash(&mut h);
    (h.finish() % (1 << 40)) * 1000 + place as u64 % 1000
}

impl EtcdStore {
    /// The puts and conditions of a commit.
    pub(super) fn commit_write(&self, c: &Commit) -> Write {
        let mut w = Write {
            based_on: c.based_on,
            fence: Some(c.fence),
            ..Write::default()
        };
        for (service, rec) in &c.traffic {
            let key = self.keys.traffic(service);
            w.puts.push(wire::op_put(&key, &to_json(rec), 0));
            w.guarded.push((key, service.clone()));
        }
        if let Some(r) = &c.rollout {
            let key = self.keys.rollout(r.id);
            w.puts.push(wire::op_put(&key, &to_json(r), 0));
            w.guarded.push((key, r.service.clone()));
            if !r.status.is_active() {
                w.puts
                    .push(wire::op_put(&self.keys.ended(r.id, r.attempt), b"1", 0));
                let once = self.keys.ended_as(r.id, r.attempt, r.status.as_str());
                w.puts.push(wire::op_put(&once, b"1", 0));
                if !c.forward {
                    w.once = Some(once);
                }
            }
        }
        for (i, e) in c.events.iter().enumerate() {
            // The id is made from the key's create revision when read (see `events`).
            let stored = to_json(&crate::store::Event { id: 0, ..e.clone() });
            let key = self.keys.event(e.at, &self.instance, event_n(&stored, i));
            w.puts.push(wire::op_put(&key, &stored, 0));
        }
        if let Some(text) = &c.config {
            let record = super::ConfigRecord {
                text: text.to_string(),
                by: self.instance.clone(),
                at: crate::sys::unix_ms(),
            };
            w.puts
                .push(wire::op_put(&self.keys.config(), &to_json(&record), 0));
        }
        if c.token != 0 {
            let key = self.keys.once(&self.instance);
            w.puts
                .push(wire::op_put(&key, c.token.to_string().as_bytes(), 0));
            w.token = Some((key, c.token, false));
        }
        if !c.forward {
            w.guarded.clear();
            // Whatever else changed meanwhile, a move toward stable lands — unless it is about
            // a rollout a newer one of its service replaced (decided on an instance cut off
            // from etcd while the others went on).
            if let Some(r) = &c.rollout {
                w.latest = Some((self.keys.latest(&r.service), r.service.clone(), r.id));
                // A hold must not bring back an attempt that ended meanwhile (a person's pause
                // on a cut-off instance while the fleet completed the rollout).
                if r.status.is_active() {
                    let ended = self.keys.ended(r.id, r.attempt);
                    w.ended = Some((ended, r.service.clone(), r.id));
                }
            }
        }
        w
    }

    /// Runs one write; `Fenced` (and the fence cleared, `fenced()` woken) when the leader key
    /// is no longer this instance's, `Stale` naming the services changed meanwhile.
    pub(super) async fn write(&self, mut w: Write) -> Result<Outcome, StoreError> {
        let fence = w.fence.unwrap_or_else(|| self.fence.borrow().fence);
        let leader = self.keys.leader();
        let mut compare = Vec::new();
        if let Some(f) = fence {
            compare.push(wire::create_revision_is(&leader, f));
        }
        for (key, _) in &w.guarded {
            compare.push(wire::mod_revision_below(key, w.based_on + 1));
        }
        compare.extend(w.extra.iter().cloned());
        let mut failure = vec![wire::op_range(&leader)];
        failure.extend(w.guarded.iter().map(|(key, _)| wire::op_range(key)));
        if let Some((key, _, id)) = &w.latest {
            compare.push(wire::value_is(key, &id.to_string()));
            failure.push(wire::op_range(key));
        }
        let ended_at = failure.len();
        if let Some((key, _, _)) = &w.ended {
            compare.push(wire::create_revision_is(key, 0));
            failure.push(wire::op_range(key));
        }
        let token_at = failure.len();
        if let Some((key, token, absent)) = &w.token {
            compare.push(if *absent {
                wire::create_revision_is(key, 0)
            } else {
                wire::value_is_not(key, &token.to_string())
            });
            failure.push(wire::op_range(key));
        }
        let once_at = failure.len();
        if let Some(key) = &w.once {
            compare.push(wire::create_revision_is(key, 0));
            failure.push(wire::op_range(key));
        }
        let r = self
            .txn(wire::txn(compare, w.puts.clone(), failure))
            .await?;
        if r.succeeded {
            return Ok(Outcome::Written(r.header.revision));
        }
        if let Some(f) = fence {
            let holder = r
                .range(0)
                .and_then(|l| l.kvs.first())
                .map(|kv| kv.create_revision);
            if holder != Some(f) {
                self.deposed(f);
                return Err(StoreError::Fenced);
            }
        }
        if let Some((key, token, absent)) = w.token.take() {
            let last = r.range(token_at).and_then(|g| g.kvs.first());
            match last {
                // This very write landed on an earlier try whose answer was lost: written
                // again it would undo what was written since. The instance reloads the state.
                Some(kv) if kv.value == token.to_string().as_bytes() => {
                    self.resync_wanted.notify_one();
                    return Ok(Outcome::Recorded);
                }
                // A compare on a key's value fails while the key is absent (no durable write
                // of this instance landed yet, this one included).
                // The key's presence was guessed wrong (absent, or written meanwhile): the
                // compare that fits what is there now.
                None if !absent => {
                    w.token = Some((key, token, true));
                    return Box::pin(self.write(w)).await;
                }
                Some(_) if absent => {
                    w.token = Some((key, token, false));
                    return Box::pin(self.write(w)).await;
                }
                _ => w.token = Some((key, token, absent)),
            }
        }
        let mut stale: Vec<&str> = Vec::new();
        for (i, (_, service)) in w.guarded.iter().enumerate() {
            let changed = r
                .range(i + 1)
                .and_then(|g| g.kvs.first())
                .is_some_and(|kv| kv.mod_revision > w.based_on);
            if changed && !stale.contains(&service.as_str()) {
                stale.push(service);
            }
        }
        if !stale.is_empty() {
            return Err(StoreError::Stale(stale.join(", ")));
        }
        if let Some((_, service, id)) = &w.ended {
            if r.range(ended_at).is_some_and(|g| !g.kvs.is_empty()) {
                self.resync_wanted.notify_one();
                return Err(StoreError::Ended {
                    service: service.clone(),
                    rollout: *id,
                });
            }
        }
        if w.once.is_some() && r.range(once_at).is_some_and(|g| !g.kvs.is_empty()) {
            // Recorded already; what this instance holds may be older than what came after
            // (or another instance's end of the same attempt): it reloads the state.
            self.resync_wanted.notify_one();
            return Ok(Outcome::Recorded);
        }
        if let Some((_, service, id)) = w.latest.take() {
            let latest = r
                .range(w.guarded.len() + 1)
                .and_then(|g| g.kvs.first())
                .map(|kv| String::from_utf8_lossy(&kv.value).trim().parse::<u64>());
            match latest {
                Some(Ok(latest)) if latest > id => {
                    // This instance's view of the service is older than the fleet's: the
                    // watch skipped the changes it had pending; it reloads the state.
                    self.resync_wanted.notify_one();
                    return Err(StoreError::Superseded {
                        service,
                        rollout: id,
                        latest,
                    });
                }
                // No record of a newer rollout (none kept: a fleet written before it was,
                // or an import): written as before, without the condition.
                _ => return Box::pin(self.write(w)).await,
            }
        }
        Ok(Outcome::Raced)
    }

    /// The fence `f` was found broken: `fenced()` wakes (unless a newer one was set meanwhile).
    fn deposed(&self, f: i64) {
        // The fence stays: writes keep failing until the control plane has stopped what
        // decides and lifts it (`lift_fence`).
        self.fence.send_if_modified(|s| {
            if s.fence != Some(f) || s.deposed {
                return false;
            }
            s.deposed = true;
            true
        });
    }

    /// Takes the next id from `P/seq/rollout` by compare-and-swap, in the same transaction
    /// as the rollout's commit: ids never repeat across instances.
    pub(super) async fn create_rollout_async(&self, make: &NewRollout) -> Result<u64, StoreError> {
        let seq = self.keys.rollout_seq();
        let started = tokio::time::Instant::now();
        for attempt in 0u32.. {
            let r = self.range(wire::range(&seq)).await?;
            let (last, modified) = match r.kvs.first() {
                None => (0, 0),
                Some(kv) => {
                    let text = String::from_utf8_lossy(&kv.value);
                    let n: u64 = text
                        .trim()
                        .parse()
                        .map_err(|e| Self::corrupt(&seq, format!("{text:?}: {e}")))?;
                    (n, kv.mod_revision)
                }
            };
            let id = last + 1;
            let commit = make(id);
            let mut w = self.commit_write(&commit);
            // It makes itself the latest (below), so it is not conditioned on being it.
            w.latest = None;
            w.puts
                .push(wire::op_put(&seq, id.to_string().as_bytes(), 0));
            if let Some(r) = &commit.rollout {
                let latest = self.keys.latest(&r.service);
                w.puts
                    .push(wire::op_put(&latest, id.to_string().as_bytes(), 0));
            }
            w.extra.push(wire::mod_revision_is(&seq, modified));
            if let Outcome::Written(revision) = self.write(w).await? {
                self.note_written(&commit, revision);
                return Ok(id);
            }
            if started.elapsed() > ID_RACES {
                break;
            }
            // Another instance took this id: read again after a random pause, longer each
            // time, so that racing writers spread out.
            let pause = fastrand::u64(0..=1 << attempt.min(6));
            tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
        }
        Err(StoreError::Etcd {
            endpoints: self.client.endpoints(),
            reason: format!("no rollout id within {ID_RACES:?}: other instances kept taking them"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::event_n;

    #[test]
    fn an_event_keeps_its_key_when_its_commit_is_written_again_and_others_get_their_own() {
        let a = br#"{"kind":"switch","at":1}"#;
        let b = br#"{"kind":"switch","at":2}"#;
        assert_eq!(event_n(a, 0), event_n(a, 0));
        assert_ne!(event_n(a, 0), event_n(b, 0));
        // Two equal events in one commit stay two, with ids apart.
        assert_ne!(event_n(a, 0) % 1000, event_n(a, 1) % 1000);
    }
}
