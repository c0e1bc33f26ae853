//! SKELETON — the fleet's changes, in revision order, from an etcd watch on the prefix.

use std::sync::Arc;

use super::{ConfigRecord, EtcdStore, InstanceRecord};
use crate::rollout::Rollout;
use crate::store::TrafficRecord;

/// One change of the shared state.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// `None`: the key was deleted.
    Traffic {
        service: String,
        record: Option<TrafficRecord>,
    },
    Rollout(Rollout),
    Config(ConfigRecord),
    /// `None`: no leader (its lease ran out or it resigned).
    Leader(Option<InstanceRecord>),
    Instance {
        name: String,
        record: Option<InstanceRecord>,
    },
    /// The watch could not go on from where it stood (etcd compacted that history, or the
    /// watch was cancelled): reload the whole state (`Store::load`) and go on from `Batch`'s
    /// revision.
    Resync,
}

/// The changes of one etcd revision or more, all at or below `revision`.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub revision: i64,
    pub changes: Vec<Change>,
}

/// A watch that survives etcd restarts: `next` reconnects by itself (with backoff) from the
/// last revision it delivered, and while it cannot, `EtcdStore::connection` says so.
pub struct Watch {
    _store: Arc<EtcdStore>,
}

impl Watch {
    /// The next batch of changes; waits (reconnecting as needed) until there is one.
    pub async fn next(&mut self) -> Batch {
        todo!()
    }
}

#[allow(dead_code)]
fn _uses(_: Rollout, _: TrafficRecord, _: ConfigRecord, _: InstanceRecord) {}
