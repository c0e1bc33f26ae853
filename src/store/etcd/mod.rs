//! The fleet's store: the state of several instances in etcd, under one prefix.
//!
//! Keys under the prefix `P` (values are JSON unless said otherwise):
//! - `P/traffic/<service>`: a `TrafficRecord`;
//! - `P/rollouts/<id, 20 digits>`: a `Rollout` (the latest of a service has the highest id);
//! - `P/seq/rollout`: the last rollout id handed out (decimal), moved by compare-and-swap;
//! - `P/events/<unix ms, 13 digits>-<instance>-<n>`: an `Event`; its id is
//!   `create_revision * 1000 + n` (`n` < 1000, so at most 1000 events per commit), unique
//!   and increasing across the fleet, plus `P/seq/event` when events were imported;
//! - `P/seq/event`: the highest imported event id (imported events keep theirs in the value);
//! - `P/latest/<service>`: the id of the service's latest rollout (decimal);
//! - `P/ended/<id>/<attempt>` and `P/ends/<id>/<attempt>/<status>`: that attempt ended (and
//!   how), written with the end (see `keys` for what each keeps from being written twice);
//! - `P/seconds/<service>/<id, 20 digits>/<attempt>/<first ms>`: a batch of a rollout's
//!   recorded seconds (binary, see `store::seconds`);
//! - `P/config`: the applied configuration's text (TOML), see `ConfigRecord`;
//! - `P/leader`: the leader's `InstanceRecord`, attached to its lease;
//! - `P/instances/<name>`: each live instance's `InstanceRecord`, attached to its lease.
//!
//! Files: `client` (the JSON gateway), `wire` (its messages), `keys` (this layout), `txn`
//! (writes and their conditions), `events` (the history), `dump` (export/import), `watch`,
//! `election`. A commit is one etcd transaction, so it holds at most 128 operations (etcd's
//! default `--max-txn-ops`): traffic, rollout and events together.

pub mod client;
mod dump;
pub mod election;
mod events;
mod keys;
mod seconds;
mod txn;
pub mod watch;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;

use super::{Commit, Dump, Event, EventQuery, NewRollout, Persisted, Store, StoreError};
use crate::config::EtcdConfig;
use crate::rollout::Rollout;
use client::{Client, EtcdError};
use keys::Keys;
use wire::{Kv, RangeResponse, TxnResponse};

pub use election::{campaign, Leadership};
pub use watch::{Batch, Change, Watch};

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
    /// How often the fleet's watch was found stuck (silent while it cannot be) and reopened.
    #[serde(default)]
    pub watch_reopened: u64,
}

/// The leadership fence and whether a write found it broken.
#[derive(Debug, Clone, Copy, Default)]
struct FenceState {
    fence: Option<i64>,
    deposed: bool,
}

pub struct EtcdStore {
    client: Client,
    keys: Keys,
    /// This instance's name, in event keys.
    instance: String,
    /// The runtime `Store` methods block on (they run on `spawn_blocking` threads).
    rt: Handle,
    fence: tokio::sync::watch::Sender<FenceState>,
    /// Wakes the fleet's watch to have the state reloaded (`Change::Resync`): a write found
    /// this instance's view of a service older than the fleet's (see `txn`).
    resync_wanted: tokio::sync::Notify,
    /// Per service, the revision of this instance's last write of its state.
    written: std::sync::Mutex<std::collections::HashMap<String, i64>>,
}

impl EtcdStore {
    /// Connects to the first endpoint that answers (each connection attempt bounded by
    /// `connect_timeout`, each answer by at least `client::ANSWER_TIMEOUT`) and checks
    /// that etcd serves; the error names every endpoint and why it failed.
    /// Must run on a tokio runtime: the `Store` methods block on it (they are only ever called
    /// from `spawn_blocking`).
    pub async fn connect(
        cfg: &EtcdConfig,
        instance: &str,
        connect_timeout: Duration,
    ) -> Result<Arc<EtcdStore>, StoreError> {
        let auth = cfg.username.clone().zip(cfg.password.clone());
        let store = EtcdStore {
            client: Client::new(cfg.endpoints.clone(), auth, connect_timeout),
            keys: Keys::new(&cfg.prefix),
            instance: instance.to_string(),
            rt: Handle::current(),
            fence: tokio::sync::watch::Sender::new(FenceState::default()),
            resync_wanted: tokio::sync::Notify::new(),
            written: Default::default(),
        };
        let mut probe = wire::range_prefix(&store.keys.all());
        probe["limit"] = "1".into();
        probe["keys_only"] = true.into();
        let _: RangeResponse = store
            .client
            .call("/v3/kv/range", &probe)
            .await
            .map_err(|e| store.err(e))?;
        Ok(Arc::new(store))
    }

    /// Leadership fence: while set, every write is a transaction conditioned on the leader
    /// key's create revision being this one; a write that fails the condition returns
    /// `StoreError::Fenced`, clears the fence and wakes `fenced()`.
    pub fn set_fence(&self, fence: Option<i64>) {
        self.fence.send_replace(FenceState {
            fence,
            deposed: false,
        });
    }

    /// Lifts fence `f` once this instance has stopped acting as leader (the control plane's
    /// step-down), unless a newer one was set meanwhile. Until then every write, retries of
    /// those decided before included, stays conditioned on the lost leadership.
    pub fn lift_fence(&self, f: i64) {
        self.fence.send_if_modified(|s| {
            if s.fence != Some(f) {
                return false;
            }
            *s = FenceState::default();
            true
        });
    }

    /// Resolves when a fenced write found this instance deposed.
    pub async fn fenced(&self) {
        let mut rx = self.fence.subscribe();
        // The sender lives as long as `self`, so `wait_for` only ends on the state.
        let _ = rx.wait_for(|s| s.deposed).await;
    }

    /// Has the fleet's watch reload the state (`Change::Resync`, in order with its batches).
    pub fn want_resync(&self) {
        self.resync_wanted.notify_one();
    }

    pub fn connection(&self) -> Connection {
        self.client.connection()
    }

    /// The revision of this instance's last write of `service`'s state (0: none): the watch
    /// delivers older changes of it after the instance already applied its own.
    pub fn written_at(&self, service: &str) -> i64 {
        let written = self.written.lock().expect("written");
        written.get(service).copied().unwrap_or(0)
    }

    /// A commit landed at `revision`: its services' state is this instance's from there.
    pub(super) fn note_written(&self, c: &Commit, revision: i64) {
        let mut written = self.written.lock().expect("written");
        let services = c
            .traffic
            .iter()
            .map(|(s, _)| s)
            .chain(c.rollout.iter().map(|r| &r.service));
        for s in services {
            let at = written.entry(s.clone()).or_default();
            *at = (*at).max(revision);
        }
    }

    /// The configuration the fleet applied last, if any.
    pub async fn config(&self) -> Result<Option<ConfigRecord>, StoreError> {
        let key = self.keys.config();
        let r = self.range(wire::range(&key)).await?;
        r.kvs.first().map(Self::decode).transpose()
    }

    /// Records the configuration for the fleet (fenced like every write).
    pub async fn put_config(&self, c: &ConfigRecord) -> Result<(), StoreError> {
        let put = wire::op_put(&self.keys.config(), &to_json(c), 0);
        self.write(txn::Write {
            puts: vec![put],
            ..txn::Write::default()
        })
        .await
        .map(drop)
    }

    /// Records `c` as the fleet's configuration only if it has none yet: whether it did. Two
    /// first instances starting together with different files: one wins, the other runs it.
    pub async fn create_config(&self, c: &ConfigRecord) -> Result<bool, StoreError> {
        let key = self.keys.config();
        let outcome = self
            .write(txn::Write {
                puts: vec![wire::op_put(&key, &to_json(c), 0)],
                extra: vec![wire::create_revision_is(&key, 0)],
                ..txn::Write::default()
            })
            .await?;
        Ok(outcome != txn::Outcome::Raced)
    }

    /// The live instances (those whose lease is alive).
    pub async fn instances(&self) -> Result<Vec<InstanceRecord>, StoreError> {
        let r = self
            .range(wire::range_prefix(&self.keys.instances_prefix()))
            .await?;
        r.kvs.iter().map(Self::decode).collect()
    }

    /// `Store::load`, and the revision the state was read at: a watch from there misses
    /// nothing and repeats nothing (`watch(revision)`).
    pub async fn load_at(&self) -> Result<(Persisted, i64), StoreError> {
        let (persisted, _, revision) = self.load_fleet().await?;
        Ok((persisted, revision))
    }

    /// The state, the configuration the fleet applied last and the revision both were read
    /// at, in one read: what a new leader decides from (`control::fleet::take_over`), and
    /// what the watch reloads after it lost its place, with nothing between the parts.
    pub async fn load_fleet(&self) -> Result<(Persisted, Option<ConfigRecord>, i64), StoreError> {
        let r = self
            .read(vec![
                wire::range_prefix(&self.keys.traffic_prefix()),
                wire::range_prefix(&self.keys.rollouts_prefix()),
                wire::range(&self.keys.config()),
            ])
            .await?;
        let mut out = Persisted::default();
        for kv in r.range(0).map(|r| r.kvs.as_slice()).unwrap_or_default() {
            if let keys::Key::Traffic(service) = self.keys.decode(&kv.key_str()) {
                out.traffic.insert(service, Self::decode(kv)?);
            }
        }
        // Keys sort by id: the last of a service is its latest.
        for kv in r.range(1).map(|r| r.kvs.as_slice()).unwrap_or_default() {
            let rollout: Rollout = Self::decode(kv)?;
            out.rollouts.insert(rollout.service.clone(), rollout);
        }
        let config = r
            .range(2)
            .and_then(|c| c.kvs.first())
            .map(Self::decode)
            .transpose()?;
        Ok((out, config, r.header.revision))
    }

    /// Changes under the prefix after `from_revision` (see `watch`). The stream is opened
    /// here, so that the first change is not delayed by it; if etcd cannot be reached now
    /// the watch still comes back, and keeps trying (it never fails after this).
    pub async fn watch(self: &Arc<Self>, from_revision: i64) -> Result<Watch, StoreError> {
        let mut w = Watch::new(self.clone(), from_revision);
        w.open().await;
        Ok(w)
    }

    fn err(&self, e: EtcdError) -> StoreError {
        StoreError::Etcd {
            endpoints: self.client.endpoints(),
            reason: e.to_string(),
        }
    }

    fn corrupt(key: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt {
            path: key.to_string(),
            reason: e.to_string(),
        }
    }

    /// A stored JSON value, or `Corrupt` naming its key.
    fn decode<T: DeserializeOwned>(kv: &Kv) -> Result<T, StoreError> {
        serde_json::from_slice(&kv.value).map_err(|e| Self::corrupt(&kv.key_str(), e))
    }

    /// A read of the state; its revision counts as seen.
    async fn range(&self, req: serde_json::Value) -> Result<RangeResponse, StoreError> {
        let r: RangeResponse = self
            .client
            .call("/v3/kv/range", &req)
            .await
            .map_err(|e| self.err(e))?;
        self.client.saw_revision(r.header.revision);
        Ok(r)
    }

    /// A write (or a read of several ranges) of the state; its revision counts as seen.
    /// The election's presence and leader writes do not come here: they say nothing about
    /// the state this instance has seen.
    async fn txn(&self, req: serde_json::Value) -> Result<TxnResponse, StoreError> {
        let r: TxnResponse = self
            .client
            .call("/v3/kv/txn", &req)
            .await
            .map_err(|e| self.err(e))?;
        self.client.saw_revision(r.header.revision);
        Ok(r)
    }

    /// Several ranges read at one revision.
    async fn read(&self, ranges: Vec<serde_json::Value>) -> Result<TxnResponse, StoreError> {
        let ops = ranges
            .into_iter()
            .map(|r| serde_json::json!({ "request_range": r }))
            .collect();
        self.txn(wire::txn(vec![], ops, vec![])).await
    }
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("stored records serialise")
}

impl Store for EtcdStore {
    fn load(&self) -> Result<Persisted, StoreError> {
        self.rt.block_on(self.load_at()).map(|(p, _)| p)
    }

    fn commit(&self, c: &Commit) -> Result<(), StoreError> {
        match self.rt.block_on(self.write(self.commit_write(c)))? {
            txn::Outcome::Written(revision) => {
                self.note_written(c, revision);
                Ok(())
            }
            // Not this commit's revision: the watch must not skip what came after the end.
            txn::Outcome::Recorded => Ok(()),
            // A commit has no condition that gives this; never report it as written.
            txn::Outcome::Raced => Err(StoreError::Etcd {
                endpoints: self.client.endpoints(),
                reason: "the commit's transaction failed a condition that names no service".into(),
            }),
        }
    }

    fn create_rollout(&self, make: &NewRollout) -> Result<u64, StoreError> {
        self.rt.block_on(self.create_rollout_async(make))
    }

    fn events(&self, q: &EventQuery) -> Result<Vec<Event>, StoreError> {
        self.rt.block_on(self.query_events(q))
    }

    fn rollouts(&self, service: Option<&str>, limit: usize) -> Result<Vec<Rollout>, StoreError> {
        self.rt.block_on(async {
            let mut req = wire::range_prefix(&self.keys.rollouts_prefix());
            req["sort_order"] = "DESCEND".into();
            req["sort_target"] = "KEY".into();
            if service.is_none() {
                req["limit"] = limit.to_string().into();
            }
            let r = self.range(req).await?;
            let mut out = Vec::new();
            for kv in &r.kvs {
                let rollout: Rollout = Self::decode(kv)?;
                if service.is_none_or(|s| s == rollout.service) {
                    out.push(rollout);
                }
                if out.len() >= limit {
                    break;
                }
            }
            Ok(out)
        })
    }

    fn fence(&self) -> Option<i64> {
        self.fence.borrow().fence
    }

    fn export(&self) -> Result<Dump, StoreError> {
        self.rt.block_on(self.export_async())
    }

    fn import(&self, d: &Dump) -> Result<(), StoreError> {
        self.rt.block_on(self.import_async(d))
    }

    fn record_seconds(&self, b: &crate::store::seconds::Batch) -> Result<(), StoreError> {
        self.rt.block_on(self.record_seconds_async(b))
    }

    fn recorded_seconds(
        &self,
        service: &str,
        rollout: u64,
    ) -> Result<std::collections::BTreeMap<u32, crate::analysis::backtest::Recording>, StoreError>
    {
        self.rt
            .block_on(self.recorded_seconds_async(service, rollout))
    }
}
