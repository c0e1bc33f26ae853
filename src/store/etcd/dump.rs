//! Export and import (`switchyard store export|import`): everything under the prefix as a
//! `Dump`, and a dump written into an empty prefix with its ids kept.

use serde_json::Value;

use super::{to_json, wire, EtcdStore};
use crate::store::{Dump, StoreError};

/// Puts per transaction: etcd refuses more than 128 operations in one (`--max-txn-ops`).
pub(super) const CHUNK: usize = 100;

impl EtcdStore {
    pub(super) async fn export_async(&self) -> Result<Dump, StoreError> {
        let r = self
            .read(vec![
                wire::range_prefix(&self.keys.traffic_prefix()),
                wire::range_prefix(&self.keys.rollouts_prefix()),
                wire::range_prefix(&self.keys.events_prefix()),
                wire::range(&self.keys.event_seq()),
            ])
            .await?;
        let ranged = |i| r.range(i).map(|r| r.kvs.as_slice()).unwrap_or_default();
        let mut d = Dump::default();
        for kv in ranged(0) {
            if let super::keys::Key::Traffic(service) = self.keys.decode(&kv.key_str()) {
                d.traffic.insert(service, Self::decode(kv)?);
            }
        }
        for kv in ranged(1) {
            d.rollouts.push(Self::decode(kv)?);
        }
        let offset = Self::event_offset(r.range(3));
        for kv in ranged(2) {
            d.events.push(Self::event_of(kv, offset)?);
        }
        d.events.sort_by_key(|e| e.id);
        Ok(d)
    }

    /// Refused when the prefix holds traffic, rollouts or events. The first transaction
    /// claims the prefix (it creates the id counters, conditioned on their absence), so two
    /// imports cannot interleave.
    pub(super) async fn import_async(&self, d: &Dump) -> Result<(), StoreError> {
        let mut probes = Vec::new();
        for prefix in [
            self.keys.traffic_prefix(),
            self.keys.rollouts_prefix(),
            self.keys.events_prefix(),
        ] {
            let mut p = wire::range_prefix(&prefix);
            p["count_only"] = true.into();
            probes.push(p);
        }
        let r = self.read(probes).await?;
        if (0..3).any(|i| r.range(i).is_some_and(|r| r.count > 0)) {
            return Err(self.refused("it already holds state (traffic, rollouts or events)"));
        }
        let last_rollout = d.rollouts.iter().map(|r| r.id).max().unwrap_or(0);
        let last_event = d.events.iter().map(|e| e.id).max().unwrap_or(0);
        let (rseq, eseq) = (self.keys.rollout_seq(), self.keys.event_seq());
        let claim = wire::txn(
            vec![
                wire::create_revision_is(&rseq, 0),
                wire::create_revision_is(&eseq, 0),
            ],
            vec![
                wire::op_put(&rseq, last_rollout.to_string().as_bytes(), 0),
                wire::op_put(&eseq, last_event.to_string().as_bytes(), 0),
            ],
            vec![],
        );
        if !self.txn(claim).await?.succeeded {
            return Err(
                self.refused("it already holds id counters (another import, or rollouts made)")
            );
        }
        let mut puts: Vec<Value> = Vec::new();
        for (service, rec) in &d.traffic {
            puts.push(wire::op_put(&self.keys.traffic(service), &to_json(rec), 0));
        }
        for r in &d.rollouts {
            puts.push(wire::op_put(&self.keys.rollout(r.id), &to_json(r), 0));
        }
        let mut events: Vec<_> = d.events.iter().collect();
        events.sort_by_key(|e| e.id);
        for e in events {
            // The id is kept in the value; the key only has to be unique.
            let key = self.keys.event(e.at, "import", e.id.max(0) as u64);
            puts.push(wire::op_put(&key, &to_json(e), 0));
        }
        for chunk in puts.chunks(CHUNK) {
            self.txn(wire::txn(vec![], chunk.to_vec(), vec![])).await?;
        }
        Ok(())
    }

    fn refused(&self, why: &str) -> StoreError {
        StoreError::Etcd {
            endpoints: self.client.endpoints(),
            reason: format!("import into prefix {} refused: {why}", self.keys.all()),
        }
    }
}
