//! SKELETON — one leader per fleet, on an etcd lease; and each instance's presence.

use std::sync::Arc;
use std::time::Duration;

use super::{EtcdStore, InstanceRecord};

/// Who leads, as this instance knows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Leadership {
    pub leader: Option<InstanceRecord>,
    /// This instance leads: its writes are fenced on its leadership (`EtcdStore::set_fence`).
    pub me: bool,
}

/// Runs for the life of the instance: keeps `P/instances/<name>` alive on a lease of `ttl`
/// (refreshed with its revision and last contact), campaigns for `P/leader` when nobody
/// holds it, renews the lease while it leads, and steps down — `me: false` published
/// *before* the lease can have run out on etcd's side, and at once when a fenced write
/// found it deposed — when it cannot.
pub fn campaign(
    _store: Arc<EtcdStore>,
    _me: InstanceRecord,
    _ttl: Duration,
) -> (
    tokio::sync::watch::Receiver<Leadership>,
    tokio::task::JoinHandle<()>,
) {
    todo!()
}
