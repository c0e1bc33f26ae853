//! Persisted state: each service's traffic (split, previous split, stable group), rollouts and
//! the event history. A transition is one `Commit`, written atomically before its weights are
//! published, so a restarted process resumes exactly where the last one stood.
//!
//! The trait exists because there are two backends in the design: SQLite (one instance) and
//! etcd (several instances sharing state).

pub mod etcd;
mod lock;
pub mod seconds;
mod sqlite;
mod sqlite_seconds;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use etcd::EtcdStore;
pub use sqlite::SqliteStore;

use crate::analysis::backtest::Recording;
use crate::rollout::Rollout;
use crate::split::Split;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("state database {path}: {reason}")]
    Io { path: String, reason: String },
    #[error("state database {path}: a stored record is unreadable: {reason}")]
    Corrupt { path: String, reason: String },
    /// Another instance runs on this database: one instance per file, or two drivers would
    /// move the same rollouts.
    #[error("state database {path} is in use by {holder} (lock file {lock}); one switchyard instance per state database")]
    InUse {
        path: String,
        holder: String,
        lock: String,
    },
    /// etcd could not be reached or refused the request.
    #[error("etcd at {endpoints}: {reason}")]
    Etcd { endpoints: String, reason: String },
    /// This instance led the fleet when it made the write, and no longer does: its writes
    /// are refused so that a deposed leader changes nothing.
    #[error("this instance is no longer the fleet's leader; its write was refused")]
    Fenced,
    /// A forward write about services another instance changed since this one read them.
    #[error("the state of {0} was changed by another instance meanwhile; not written")]
    Stale(String),
    /// A move toward stable about a rollout that is no longer its service's latest: another
    /// instance started a newer one while this one could not reach the store.
    #[error("rollout #{rollout} of {service} is no longer its latest (#{latest} was started meanwhile); not written")]
    Superseded {
        service: String,
        rollout: u64,
        latest: u64,
    },
    /// A hold of a rollout attempt that another instance ended meanwhile.
    #[error("rollout #{rollout} of {service} ended meanwhile (through another instance); a hold of it is not written")]
    Ended { service: String, rollout: u64 },
}

/// The traffic state of one service as persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrafficRecord {
    pub current: Split,
    pub previous: Option<Split>,
    /// The split the config file asked for when this state was made (see `control`).
    pub from_file: Split,
    pub stable: Option<String>,
    #[serde(default)]
    pub retired: Vec<String>,
    /// Set by a forward write that moves traffic: the split in force while it was written.
    /// Such a write is recorded before it is applied, so a rollback decided meanwhile is
    /// published first and its own record queued after it; if that record never lands (the
    /// file stays locked, then SIGKILL) this row is ahead of anything the candidate had when
    /// the rollback was decided. Cleared by any later write of the service (which is only
    /// made once the step was applied), so a restart that finds it set holds the rollout at
    /// this split until the guard has judged a window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_from: Option<Split>,
}

/// An entry of the audit history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(default)]
    pub id: i64,
    /// Unix milliseconds.
    pub at: i64,
    pub service: String,
    pub rollout: Option<u64>,
    /// Who or what acted: an admin token's name (`admin` for the unnamed one), or
    /// switchyard itself: `schedule`, `analysis`, `guard`, `hook`, `deadline`, …
    pub actor: String,
    /// Whom the client said it acted for (`x-switchyard-actor`, e.g. `cli:alice`): recorded,
    /// never trusted as the actor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<String>,
    pub kind: String,
    pub from: Option<Split>,
    pub to: Option<Split>,
    pub reason: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
/// Unknown fields are refused: a misspelt filter in a query must not widen the answer.
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    pub service: Option<String>,
    pub rollout: Option<u64>,
    pub kind: Option<String>,
    pub actor: Option<String>,
    /// Unix milliseconds.
    pub since: Option<i64>,
    pub limit: Option<usize>,
}

/// Everything a transition writes, in one transaction.
#[derive(Debug, Clone, Default)]
pub struct Commit {
    pub traffic: Vec<(String, TrafficRecord)>,
    pub rollout: Option<Rollout>,
    pub events: Vec<Event>,
    /// A forward write (a step, a promotion, a switch): in a fleet it lands only if no other
    /// instance changed the same services since this one read them (`StoreError::Stale`);
    /// a move toward stable lands whatever was written meanwhile. SQLite has one writer and
    /// ignores it.
    pub forward: bool,
    /// The fleet's state revision the decision was made on (the highest revision the
    /// instance had applied when it made it; 0 when unknown). An etcd store writes a forward
    /// commit only if none of its keys (each `traffic/<service>` and the rollout's key) was
    /// modified after this revision, and otherwise fails with `StoreError::Stale`.
    pub based_on: i64,
    /// A fleet's configuration text, applied with this commit (an etcd store writes it to
    /// the fleet's config key in the same transaction; SQLite, whose instance reads its own
    /// file, ignores it).
    pub config: Option<std::sync::Arc<str>>,
    /// The leadership this write was decided under (`Store::fence` when it was queued): an
    /// etcd store writes it only while that leadership holds, so a write a leader decided
    /// is never made after it was deposed, even by a retry after it stepped down.
    pub fence: Option<i64>,
    /// A durable write's own random number (0: none), the same on every try: an etcd store
    /// records the last one of this instance that landed (`P/once/<instance>`) in the same
    /// transaction, so that a try after an answer that was lost although the write landed is
    /// not written again over what others wrote since (a person's resume, the end work
    /// marked begun). SQLite, which answers every write, ignores it.
    pub token: u64,
}

/// Everything a store holds, to move it to another (`switchyard store export` / `import`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dump {
    pub traffic: BTreeMap<String, TrafficRecord>,
    /// Every rollout, oldest first.
    pub rollouts: Vec<Rollout>,
    /// Every event, oldest first.
    pub events: Vec<Event>,
}

#[derive(Debug, Default)]
pub struct Persisted {
    pub traffic: BTreeMap<String, TrafficRecord>,
    /// The latest rollout of each service.
    pub rollouts: BTreeMap<String, Rollout>,
}

/// Builds the commit that starts a rollout, given the id the database allocated for it.
pub type NewRollout = dyn Fn(u64) -> Commit + Send + Sync;

pub trait Store: Send + Sync + 'static {
    fn load(&self) -> Result<Persisted, StoreError>;
    fn commit(&self, c: &Commit) -> Result<(), StoreError>;
    /// Writes a new rollout in one transaction with the database allocating its id (never an
    /// in-memory counter, which a second process or a restart could repeat); returns the id.
    fn create_rollout(&self, make: &NewRollout) -> Result<u64, StoreError>;
    fn events(&self, q: &EventQuery) -> Result<Vec<Event>, StoreError>;
    /// Rollouts, newest first.
    fn rollouts(&self, service: Option<&str>, limit: usize) -> Result<Vec<Rollout>, StoreError>;
    /// The leadership under which this instance decides now (a fleet's leader: its leader
    /// key's create revision); `None` alone or when not leading.
    fn fence(&self) -> Option<i64> {
        None
    }
    /// Everything, for another store.
    fn export(&self) -> Result<Dump, StoreError>;
    /// Writes a dump into an empty store, ids kept; refused if the store holds any state.
    fn import(&self, d: &Dump) -> Result<(), StoreError>;
    /// Keeps a batch of a rollout's recorded seconds (see `seconds`); its attempt's first
    /// batch prunes the service's seconds beyond the `seconds::KEEP_ROLLOUTS` latest rollouts
    /// recorded. A store that keeps none refuses (the recorder drops and counts).
    fn record_seconds(&self, b: &seconds::Batch) -> Result<(), StoreError> {
        Err(StoreError::Io {
            path: format!("seconds of rollout #{}", b.rollout),
            reason: "this store keeps no recorded seconds".into(),
        })
    }
    /// The recorded seconds of rollout `rollout` of `service`, by attempt; empty when none
    /// were recorded (or they were pruned).
    fn recorded_seconds(
        &self,
        service: &str,
        rollout: u64,
    ) -> Result<BTreeMap<u32, Recording>, StoreError> {
        let _ = (service, rollout);
        Ok(BTreeMap::new())
    }
}
