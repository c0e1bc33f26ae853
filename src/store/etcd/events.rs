//! The event history in etcd: keys sorted by time, ids made from each key's create revision
//! (`offset + create_revision * 1000 + n`, where `offset` is the highest imported id), so
//! that ids are unique and increasing across the fleet without a counter to contend on.
//! Queries answer newest first by id, with the same filters as SQLite's.

use super::keys::Keys;
use super::wire::{self, Kv, RangeResponse};
use super::EtcdStore;
use crate::store::{Event, EventQuery, StoreError};

/// Events read per request. A transaction writes at most `dump::CHUNK` events, so a page
/// always holds more than one revision's events.
const PAGE: usize = 500;

impl EtcdStore {
    /// An event as stored, with its id.
    pub(super) fn event_of(kv: &Kv, offset: i64) -> Result<Event, StoreError> {
        let mut e: Event = Self::decode(kv)?;
        if e.id == 0 {
            let n = (Keys::event_n(&kv.key_str()) % 1000) as i64;
            e.id = offset + kv.create_revision * 1000 + n;
        }
        Ok(e)
    }

    /// The highest imported event id (0 when nothing was imported), from a range of it.
    pub(super) fn event_offset(r: Option<&RangeResponse>) -> i64 {
        r.and_then(|r| r.kvs.first())
            .and_then(|kv| String::from_utf8_lossy(&kv.value).trim().parse().ok())
            .unwrap_or(0)
    }

    pub(super) async fn query_events(&self, q: &EventQuery) -> Result<Vec<Event>, StoreError> {
        let limit = q.limit.unwrap_or(100).min(10_000);
        let from = match q.since {
            Some(at) => self.keys.events_from(at),
            None => self.keys.events_prefix(),
        };
        let end = wire::b64(&wire::prefix_end(&self.keys.events_prefix()));
        let mut out = Vec::new();
        // Pages by create revision, newest first; a page's last revision is read again
        // whole with the next page, so no revision is split between two.
        let mut below: Option<i64> = None;
        while out.len() < limit {
            let mut req = serde_json::json!({
                "key": wire::b64(from.as_bytes()), "range_end": end,
                "sort_order": "DESCEND", "sort_target": "CREATE", "limit": PAGE.to_string(),
            });
            if let Some(max) = below {
                req["max_create_revision"] = max.to_string().into();
            }
            let r = self
                .read(vec![wire::range(&self.keys.event_seq()), req])
                .await?;
            let offset = Self::event_offset(r.range(0));
            let page = r.range(1).cloned().unwrap_or_default();
            let Some(lowest) = page.kvs.last().map(|kv| kv.create_revision) else {
                break;
            };
            let whole = if page.more {
                page.kvs
                    .iter()
                    .take_while(|kv| kv.create_revision > lowest)
                    .collect::<Vec<_>>()
            } else {
                page.kvs.iter().collect()
            };
            // A page of one revision only (never with our writes): take it and move on.
            let (take, next) = if whole.is_empty() {
                (page.kvs.iter().collect(), lowest - 1)
            } else {
                (whole, lowest)
            };
            let mut events = take
                .into_iter()
                .map(|kv| Self::event_of(kv, offset))
                .collect::<Result<Vec<_>, _>>()?;
            events.sort_by_key(|e| std::cmp::Reverse(e.id));
            out.extend(events.into_iter().filter(|e| matches(q, e)));
            if !page.more || next <= 0 {
                break;
            }
            below = Some(next);
        }
        out.truncate(limit);
        Ok(out)
    }
}

/// SQLite's filters: each set one must hold.
fn matches(q: &EventQuery, e: &Event) -> bool {
    q.service.as_ref().is_none_or(|s| *s == e.service)
        && q.rollout.is_none_or(|r| e.rollout == Some(r))
        && q.kind.as_ref().is_none_or(|k| *k == e.kind)
        && q.actor.as_ref().is_none_or(|a| *a == e.actor)
        && q.since.is_none_or(|s| e.at >= s)
}
