//! The control plane: owns the configuration, the traffic state of each service (its split,
//! the split before it, its stable group), rollouts, and the running listeners and health
//! checks. Every change is validated, persisted, and only then published as one new
//! snapshot; a change that fails anywhere is not applied at all. The hot path only ever sees
//! the published snapshot.

mod background;
mod backtest;
mod cert_watch;
pub mod clock;
mod driver;
mod effects;
mod ending;
mod errors;
mod fleet;
mod fleet_seconds;
mod guard;
mod history;
mod hooks;
mod leadership;
mod lifecycle;
mod observe;
mod peers;
mod persist;
mod plan;
mod publish;
mod record;
mod rollouts;
mod sample_ratio;
mod synthetic;
mod traffic;
mod transition;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{Mutex, Notify};

use crate::audit::{Actor, EventKind};
use crate::config::{Config, ConfigError};
use crate::health::HealthChecker;
use crate::listener::Listener;
use crate::rollout::Rollout;
use crate::snapshot::Snapshot;
use crate::split::Split;
use crate::store::{Event, EventQuery, Store, StoreError, TrafficRecord};
use persist::Persister;
use publish::view;

pub use backtest::{Backtest, BacktestError};
pub use clock::Clock;
pub use errors::NewErrorsView;
pub use fleet::FleetStatus;
pub use fleet_seconds::FleetSeconds;
pub use guard::GuardReading;
pub use peers::{Peer, PeerView};
pub use persist::StoreHealth;
use plan::keeps_split;
pub use plan::PlanChange;
pub use traffic::{Applied, TrafficChange};
pub use transition::RolloutView;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no service named \"{0}\"")]
    UnknownService(String),
    #[error("service \"{service}\" has no group named \"{group}\"")]
    UnknownGroup { service: String, group: String },
    #[error("group \"{group}\" of service \"{service}\" has no healthy target (use force to go ahead anyway)")]
    NoHealthyTarget { service: String, group: String },
    #[error("service \"{0}\" has no previous split to go back to")]
    NothingToRevert(String),
    #[error("no configuration file to reload (started without one)")]
    NoConfigFile,
    /// One source of truth: a reload never silently undoes a configuration applied since the
    /// file was last read (through `apply`, or by another instance of the fleet).
    #[error("{path} differs from the running configuration, which was {how}: reloading the file would undo that. Make the file say what should run and reload, or replace the running configuration on purpose with `switchyard apply -c {path}`")]
    ReloadWouldUndo { path: String, how: String },
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("listener \"{name}\" cannot bind {addr}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error("{0}")]
    Store(#[from] StoreError),
    /// A change toward a candidate (or any forward change) while the state database cannot
    /// be written: refused rather than published unrecorded. Rollbacks are never refused.
    #[error("the state database cannot be written, so nothing moves toward a candidate: {0}")]
    StoreUnavailable(String),
    #[error("service \"{service}\" has a rollout in progress (#{id}, to {candidate}); {what}")]
    RolloutInProgress {
        service: String,
        id: u64,
        candidate: String,
        what: &'static str,
    },
    #[error("service \"{0}\" has no rollout")]
    NoRollout(String),
    #[error("{0}")]
    Rollout(#[from] crate::rollout::machine::CommandError),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
}

/// Traffic state of one service.
#[derive(Debug, Clone, PartialEq)]
struct Traffic {
    current: Split,
    previous: Option<Split>,
    /// The split the file asked for when last loaded; a reload that leaves it unchanged keeps
    /// a switch made since, one that changes it takes the file's new value.
    from_file: Split,
    /// The group a rollout starts from.
    stable: Option<String>,
    retired: Vec<String>,
}

impl Traffic {
    fn from_config(split: &Split) -> Traffic {
        Traffic {
            current: split.clone(),
            previous: None,
            from_file: split.clone(),
            stable: split.active().map(str::to_string),
            retired: Vec::new(),
        }
    }

    fn record(&self) -> TrafficRecord {
        TrafficRecord {
            current: self.current.clone(),
            previous: self.previous.clone(),
            from_file: self.from_file.clone(),
            stable: self.stable.clone(),
            retired: self.retired.clone(),
            step_from: None,
        }
    }

    fn from_record(r: TrafficRecord) -> Traffic {
        Traffic {
            current: r.current,
            previous: r.previous,
            from_file: r.from_file,
            stable: r.stable,
            retired: r.retired,
        }
    }
}

struct State {
    config: Arc<Config>,
    traffic: BTreeMap<String, Traffic>,
    /// The latest rollout of each service.
    rollouts: BTreeMap<String, Rollout>,
    /// Per service, how many changes toward stable were applied without waiting for the
    /// store. A forward change that waited for its write without the lock checks this
    /// before it applies, and gives way if a rollback came in meanwhile.
    epochs: HashMap<String, u64>,
    /// The highest fleet revision applied (0 for a single instance): what a forward decision
    /// is based on (`Commit::based_on`).
    revision: i64,
    /// Services whose rollout resumed after a restart and whose driver waits for the guard
    /// to judge one full window before any step or promotion.
    resume_gate: HashSet<String>,
    /// Rollouts resumed below their recorded weight (see `lifecycle`): the weight to go back
    /// to once the guard has judged the lower one.
    restore: HashMap<String, u32>,
    listeners: HashMap<String, Listener>,
    health: HealthChecker,
    generation: u64,
    /// Wakes the driver task of a service's rollout after a command.
    drivers: HashMap<String, (Arc<Notify>, tokio::task::JoinHandle<()>)>,
    /// How the running configuration came when it did not come from this instance's file
    /// (`apply` through the API, or the fleet): `reload` then refuses a file that differs.
    applied_elsewhere: Option<String>,
}

pub struct Controller {
    snapshots: Arc<ArcSwap<Snapshot>>,
    state: Mutex<State>,
    config_path: Option<PathBuf>,
    store: Arc<dyn Store>,
    /// Every write goes through it, in order; see `persist`.
    persist: Arc<Persister>,
    /// Held by forward changes across their store write (the state lock is not, so that a
    /// rollback never waits for the store): one forward change at a time.
    writer: Mutex<()>,
    /// Timestamps of records and events (durations are on tokio's clock); see `clock`.
    clock: Clock,
    observer: Arc<observe::Observer>,
    observer_task: tokio::task::AbortHandle,
    /// This instance's part in a fleet (etcd); `None` alone.
    fleet: Option<Arc<fleet::Fleet>>,
    /// The fleet's election and the watch: stopped at shutdown.
    fleet_tasks: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
    /// The fleet's other instances, pulled for fleet-wide judgement (empty alone).
    peers: peers::Peers,
    /// The guard's last look per service (never on the request path; see `guard`).
    guard_readings: std::sync::Mutex<HashMap<String, guard::GuardReading>>,
    /// Rollbacks by (service, cause) and analysis verdicts by (service, verdict), for /metrics.
    pub counts: std::sync::Mutex<Counts>,
}

#[derive(Debug, Default, Clone)]
pub struct Counts {
    pub rollbacks: BTreeMap<(String, String), u64>,
    pub analyses: BTreeMap<(String, String), u64>,
    /// Synthetic requests by (service, result).
    pub synthetic: BTreeMap<(String, String), u64>,
    /// Changed certificate files read by the watch, by result (`swapped`, `unchanged`,
    /// `rejected`).
    pub certificate_reads: BTreeMap<String, u64>,
}

impl Controller {
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshots.load_full()
    }

    /// The address a listener actually bound (useful with port 0).
    pub async fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.state.lock().await.listeners.get(name).map(|l| l.local)
    }

    /// Each TLS listener's failed handshakes so far, by reason (for `/metrics`).
    pub async fn handshake_failures(&self) -> Vec<(String, Vec<(&'static str, u64)>)> {
        let state = self.state.lock().await;
        state
            .listeners
            .values()
            .filter(|l| l.tls)
            .map(|l| (l.name.to_string(), l.handshakes.counts().collect()))
            .collect()
    }

    /// Current traffic state, for the API: (current split, previous split, stable group).
    pub async fn traffic(&self) -> BTreeMap<String, (Split, Option<Split>, Option<String>)> {
        let state = self.state.lock().await;
        state
            .traffic
            .iter()
            .map(|(k, t)| {
                (
                    k.clone(),
                    (t.current.clone(), t.previous.clone(), t.stable.clone()),
                )
            })
            .collect()
    }

    pub async fn events(&self, q: EventQuery) -> Result<Vec<Event>, ControlError> {
        let store = self.store.clone();
        Ok(tokio::task::spawn_blocking(move || store.events(&q))
            .await
            .expect("store task")?)
    }

    /// Each group's observed share of a service's requests over about the last `window_ms`.
    pub fn observed(&self, service: &str, window_ms: u64) -> Option<BTreeMap<String, f64>> {
        self.observer.shares(service, window_ms)
    }

    pub fn config_path(&self) -> Option<&PathBuf> {
        self.config_path.as_ref()
    }
}

impl State {
    fn epoch(&self, service: &str) -> u64 {
        self.epochs.get(service).copied().unwrap_or(0)
    }
}

fn event(
    at: i64,
    service: &str,
    rollout: Option<u64>,
    actor: &Actor,
    kind: EventKind,
    (from, to): (Option<&Split>, Option<&Split>),
    reason: String,
) -> Event {
    Event {
        id: 0,
        at,
        service: service.to_string(),
        rollout,
        actor: actor.name().to_string(),
        on_behalf_of: actor.on_behalf_of().map(str::to_string),
        kind: kind.as_str().to_string(),
        from: from.cloned(),
        to: to.cloned(),
        reason,
    }
}

#[cfg(test)]
mod time_tests;
