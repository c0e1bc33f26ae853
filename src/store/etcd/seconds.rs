//! The etcd side of a rollout's recorded seconds (see `store::seconds`): one key per batch,
//! `P/seconds/<service>/<id, 20 digits>/<attempt>/<first ms, 13 digits>`, its value the
//! batch's compact encoding. Written fenced like every write (a deposed leader records
//! nothing); the fleet's watch ignores these keys.

use std::collections::BTreeMap;

use serde_json::json;

use super::{wire, EtcdStore};
use crate::analysis::backtest::Recording;
use crate::store::seconds::{self, Batch, KEEP_ROLLOUTS};
use crate::store::StoreError;

/// Batches read per request.
const PAGE: usize = 200;

impl EtcdStore {
    pub(super) async fn record_seconds_async(&self, b: &Batch) -> Result<(), StoreError> {
        let key = self
            .keys
            .seconds(&b.service, b.rollout, b.attempt, b.key_ms());
        let mut ops = vec![wire::op_put(&key, &seconds::encode(&b.recording), 0)];
        if b.first {
            if let Some(oldest) = self.oldest_kept(&b.service, b.rollout).await? {
                let from = self.keys.seconds_prefix(&b.service);
                let below = self.keys.seconds_of(&b.service, oldest);
                ops.push(json!({ "request_delete_range": {
                    "key": wire::b64(from.as_bytes()), "range_end": wire::b64(below.as_bytes()) } }));
            }
        }
        self.write(super::txn::Write {
            puts: ops,
            ..Default::default()
        })
        .await
        .map(drop)
    }

    /// The oldest of the service's `KEEP_ROLLOUTS` newest recorded rollouts, counting
    /// `adding` (whose first batch is being written) — when there are that many.
    async fn oldest_kept(&self, service: &str, adding: u64) -> Result<Option<u64>, StoreError> {
        let prefix = self.keys.seconds_prefix(service);
        let mut end = self.keys.seconds_of(service, adding);
        let mut kept = 1;
        let mut oldest = adding;
        while kept < KEEP_ROLLOUTS {
            let req = json!({ "key": wire::b64(prefix.as_bytes()),
                "range_end": wire::b64(end.as_bytes()), "limit": "1", "keys_only": true,
                "sort_order": "DESCEND", "sort_target": "KEY" });
            let r = self.range(req).await?;
            let Some(kv) = r.kvs.first() else {
                return Ok(None);
            };
            let key = kv.key_str();
            oldest = self
                .keys
                .seconds_rollout(&key)
                .ok_or_else(|| Self::corrupt(&key, "not a key of recorded seconds"))?;
            end = self.keys.seconds_of(service, oldest);
            kept += 1;
        }
        Ok(Some(oldest))
    }

    pub(super) async fn recorded_seconds_async(
        &self,
        service: &str,
        rollout: u64,
    ) -> Result<BTreeMap<u32, Recording>, StoreError> {
        let prefix = self.keys.seconds_of(service, rollout);
        let end = wire::prefix_end(&prefix);
        let mut from = prefix.clone().into_bytes();
        let mut out: BTreeMap<u32, Recording> = BTreeMap::new();
        loop {
            let req = json!({ "key": wire::b64(&from), "range_end": wire::b64(&end),
                "limit": PAGE.to_string() });
            let r = self.range(req).await?;
            for kv in &r.kvs {
                let key = kv.key_str();
                let attempt = self
                    .keys
                    .seconds_attempt(&key)
                    .ok_or_else(|| Self::corrupt(&key, "not a key of recorded seconds"))?;
                let part = seconds::decode(&kv.value).map_err(|e| Self::corrupt(&key, e))?;
                out.entry(attempt).or_default().merge(part);
            }
            match r.kvs.last() {
                Some(last) if r.kvs.len() >= PAGE => {
                    from = last.key.clone();
                    from.push(0);
                }
                _ => return Ok(out),
            }
        }
    }
}
