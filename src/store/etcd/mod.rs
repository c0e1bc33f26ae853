//! The fleet's store: the state of several instances in etcd, under one prefix.
//!
//! SKELETON — signatures agreed with the control plane; bodies are being written.
//!
//! Keys under the prefix `P` (values are JSON unless said otherwise):
//! - `P/traffic/<service>`: a `TrafficRecord`;
//! - `P/rollouts/<id, 20 digits>`: a `Rollout` (the latest of a service has the highest id);
//! - `P/seq/rollout`: the last rollout id handed out (decimal), moved by compare-and-swap;
//! - `P/events/<unix ms, 13 digits>-<instance>-<n>`: an `Event`; its id is
//!   `create_revision * 1000 + n`, unique and increasing across the fleet;
//! - `P/config`: the applied configuration's text (TOML), see `ConfigRecord`;
//! - `P/leader`: the leader's `InstanceRecord`, attached to its lease;
//! - `P/instances/<name>`: each live instance's `InstanceRecord`, attached to its lease.

pub mod client;
pub mod election;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Commit, Event, EventQuery, NewRollout, Persisted, Store, StoreError, TrafficRecord};
use crate::config::EtcdConfig;
use crate::rollout::Rollout;

pub use election::{campaign, Leadership};
pub use watch::{Change, Watch};

/// An instance as the fleet sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub name: String,
    /// Its admin API, `host:port`.
    pub advertise: String,
    /// Unix ms.
    pub started_at: i64,
    /// The last state revision it applied.
    pub revision: i64,
    /// Unix ms of its last renewal (at least once a second while it reaches etcd).
    pub last_contact: i64,
}

/// The configuration in force for the whole fleet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigRecord {
    /// The TOML text as applied.
    pub text: String,
    /// Who applied it (instance name) and when (unix ms).
    pub by: String,
    pub at: i64,
}

/// Whether this instance reaches etcd, for `/healthz`, `status` and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Connection {
    pub connected: bool,
    /// The last error while not connected.
    pub last_error: Option<String>,
    /// Unix ms of the last successful exchange with etcd.
    pub last_contact: Option<i64>,
    /// The highest state revision seen.
    pub revision: i64,
}

pub struct EtcdStore {
    _todo: (),
}

impl EtcdStore {
    /// Connects to the first endpoint that answers (each tried for at most `connect_timeout`)
    /// and checks that etcd serves; the error names every endpoint and why it failed.
    /// Must run on a tokio runtime: the `Store` methods block on it (they are only ever called
    /// from `spawn_blocking`).
    pub async fn connect(
        _cfg: &EtcdConfig,
        _instance: &str,
        _connect_timeout: Duration,
    ) -> Result<Arc<EtcdStore>, StoreError> {
        todo!()
    }

    /// Leadership fence: while set, every write is a transaction conditioned on the leader
    /// key's create revision being this one; a write that fails the condition returns
    /// `StoreError::Fenced`, clears the fence and wakes `fenced()`.
    pub fn set_fence(&self, _fence: Option<i64>) {
        todo!()
    }

    /// Resolves when a fenced write found this instance deposed.
    pub async fn fenced(&self) {
        todo!()
    }

    pub fn connection(&self) -> Connection {
        todo!()
    }

    /// The revision of this instance's last write of `service`'s state (0: none): the watch
    /// delivers older changes of it after the instance already applied its own.
    pub fn written_at(&self, _service: &str) -> i64 {
        todo!()
    }

    /// The configuration the fleet applied last, if any.
    pub async fn config(&self) -> Result<Option<ConfigRecord>, StoreError> {
        todo!()
    }

    /// Records the configuration for the fleet (fenced like every write).
    pub async fn put_config(&self, _c: &ConfigRecord) -> Result<(), StoreError> {
        todo!()
    }

    /// The live instances (those whose lease is alive).
    pub async fn instances(&self) -> Result<Vec<InstanceRecord>, StoreError> {
        todo!()
    }

    /// Changes under the prefix after `from_revision` (see `watch`).
    pub async fn watch(self: &Arc<Self>, _from_revision: i64) -> Result<Watch, StoreError> {
        todo!()
    }
}

impl Store for EtcdStore {
    fn load(&self) -> Result<Persisted, StoreError> {
        todo!()
    }
    fn commit(&self, _c: &Commit) -> Result<(), StoreError> {
        todo!()
    }
    fn create_rollout(&self, _make: &NewRollout) -> Result<u64, StoreError> {
        todo!()
    }
    fn events(&self, _q: &EventQuery) -> Result<Vec<Event>, StoreError> {
        todo!()
    }
    fn rollouts(&self, _service: Option<&str>, _limit: usize) -> Result<Vec<Rollout>, StoreError> {
        todo!()
    }
    fn export(&self) -> Result<super::Dump, StoreError> {
        todo!()
    }
    fn import(&self, _d: &super::Dump) -> Result<(), StoreError> {
        todo!()
    }
}

#[allow(dead_code)]
fn _uses(_: TrafficRecord) {}
