//! The control plane: owns the configuration, the traffic state of each service (its split,
//! the split before it, its stable group), rollouts, and the running listeners and health
//! checks. Every change is validated, persisted, and only then published as one new
//! snapshot; a change that fails anywhere is not applied at all. The hot path only ever sees
//! the published snapshot.

mod observe;
mod plan;
mod rollouts;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{Mutex, Notify};

use crate::config::{self, Config, ConfigError, Split};
use crate::group::now_ms;
use crate::health::HealthChecker;
use crate::listener::{self, Listener};
use crate::rollout::{unix_ms, Rollout};
use crate::snapshot::{ServiceTraffic, Snapshot};
use crate::store::{Commit, Event, EventQuery, SqliteStore, Store, StoreError, TrafficRecord};

pub use plan::PlanChange;
pub use rollouts::RolloutView;

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
    #[error("weights for service \"{service}\" are invalid: {reason}")]
    BadWeights { service: String, reason: String },
    #[error("no configuration file to reload (started without one)")]
    NoConfigFile,
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
    next_rollout_id: u64,
    listeners: HashMap<String, Listener>,
    health: HealthChecker,
    generation: u64,
    /// Wakes the driver task of a service's rollout after a command.
    drivers: HashMap<String, (Arc<Notify>, tokio::task::JoinHandle<()>)>,
    /// Per service, held while a finished rollout's `after_rollout`/`on_rollback` hook runs:
    /// the next attempt's driver waits for it, so a cleanup hook never overlaps the set-up of
    /// a retry.
    end_hooks: HashMap<String, Arc<Mutex<()>>>,
}

pub struct Controller {
    snapshots: Arc<ArcSwap<Snapshot>>,
    state: Mutex<State>,
    config_path: Option<PathBuf>,
    store: Arc<dyn Store>,
    observer: Arc<observe::Observer>,
    observer_task: tokio::task::AbortHandle,
    /// Rollbacks by (service, cause) and analysis verdicts by (service, verdict), for /metrics.
    pub counts: std::sync::Mutex<Counts>,
}

#[derive(Debug, Default, Clone)]
pub struct Counts {
    pub rollbacks: BTreeMap<(String, String), u64>,
    pub analyses: BTreeMap<(String, String), u64>,
}

/// What a traffic change did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrafficChange {
    pub service: String,
    pub from: Split,
    pub to: Split,
    pub generation: u64,
}

impl Controller {
    /// Opens the store, restores persisted traffic and rollouts, binds every listener and
    /// starts serving. Nothing is left running on error.
    pub async fn start(
        config: Config,
        path: Option<PathBuf>,
    ) -> Result<Arc<Controller>, ControlError> {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&config.store.path)?);
        let persisted = store.load()?;
        let config = Arc::new(config);
        let mut traffic = BTreeMap::new();
        for s in &config.services {
            let restored = persisted.traffic.get(&s.name).filter(|t| {
                let known = |sp: &Split| sp.0.keys().all(|g| s.group(g).is_some());
                t.from_file == s.split && known(&t.current)
            });
            let t = match restored {
                Some(r) => Traffic::from_record(r.clone()),
                None => Traffic::from_config(&s.split),
            };
            traffic.insert(s.name.clone(), t);
        }
        let rollouts: BTreeMap<String, Rollout> = persisted
            .rollouts
            .into_iter()
            .filter(|(svc, r)| {
                config.service(svc).is_some_and(|s| {
                    s.group(&r.stable).is_some() && s.group(&r.candidate).is_some()
                })
            })
            .collect();

        let snapshot = Arc::new(Snapshot::build(
            config.clone(),
            &view(&traffic, &rollouts),
            None,
            1,
        )?);
        let snapshots = Arc::new(ArcSwap::new(snapshot.clone()));
        let mut listeners = HashMap::new();
        for l in &config.listeners {
            let bind_err = |source| ControlError::Bind {
                name: l.name.clone(),
                addr: l.bind,
                source,
            };
            let socket = listener::bind(l.bind).map_err(bind_err)?;
            let running = listener::spawn(&l.name, l.bind, socket, l.is_tls(), snapshots.clone())
                .map_err(bind_err)?;
            tracing::info!(listener = %l.name, addr = %running.local, tls = l.is_tls(), "listening");
            listeners.insert(l.name.clone(), running);
        }
        let mut health = HealthChecker::default();
        health.reconcile(&snapshot);
        let active: Vec<String> = rollouts
            .values()
            .filter(|r| r.status.is_active())
            .map(|r| r.service.clone())
            .collect();
        let (observer, observer_task) = observe::Observer::spawn(snapshots.clone());
        let control = Arc::new(Controller {
            counts: Default::default(),
            observer,
            observer_task,
            snapshots,
            state: Mutex::new(State {
                config,
                traffic,
                rollouts,
                next_rollout_id: persisted.next_rollout_id,
                listeners,
                health,
                generation: 1,
                drivers: HashMap::new(),
                end_hooks: HashMap::new(),
            }),
            config_path: path,
            store,
        });
        for service in active {
            tracing::info!(%service, "resuming rollout");
            control.ensure_driver(&service).await;
        }
        Ok(control)
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshots.load_full()
    }

    /// The address a listener actually bound (useful with port 0).
    pub async fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.state.lock().await.listeners.get(name).map(|l| l.local)
    }

    /// Sends all new requests of `service` to `group` at once.
    pub async fn switch(
        &self,
        service: &str,
        group: &str,
        force: bool,
        actor: &str,
    ) -> Result<TrafficChange, ControlError> {
        self.set_split(service, Split::all_to(group), force, actor, "switch")
            .await
    }

    /// Restores the split that was in force before the last change.
    pub async fn switch_back(
        &self,
        service: &str,
        force: bool,
        actor: &str,
    ) -> Result<TrafficChange, ControlError> {
        let previous = {
            let state = self.state.lock().await;
            let t = state
                .traffic
                .get(service)
                .ok_or_else(|| ControlError::UnknownService(service.into()))?;
            t.previous
                .clone()
                .ok_or_else(|| ControlError::NothingToRevert(service.into()))?
        };
        self.set_split(service, previous, force, actor, "switch_back")
            .await
    }

    /// Sets a split by hand. Every group that would get traffic must have a healthy target
    /// unless `force`; refused while a rollout of the service is in progress.
    pub async fn set_split(
        &self,
        service: &str,
        split: Split,
        force: bool,
        actor: &str,
        kind: &str,
    ) -> Result<TrafficChange, ControlError> {
        let mut state = self.state.lock().await;
        let svc = state
            .config
            .service(service)
            .ok_or_else(|| ControlError::UnknownService(service.into()))?;
        if let Some(r) = state.rollouts.get(service).filter(|r| r.status.is_active()) {
            return Err(ControlError::RolloutInProgress {
                service: service.into(),
                id: r.id,
                candidate: r.candidate.clone(),
                what: "promote or abort it instead",
            });
        }
        for g in split.0.keys() {
            if svc.group(g).is_none() {
                return Err(ControlError::UnknownGroup {
                    service: service.into(),
                    group: g.clone(),
                });
            }
        }
        let sum: u32 = split.0.values().sum();
        if sum != config::FULL_WEIGHT {
            return Err(ControlError::BadWeights {
                service: service.into(),
                reason: format!("they sum to {}, not 100%", config::format_percent(sum)),
            });
        }
        if !force {
            self.check_healthy(
                service,
                split
                    .0
                    .iter()
                    .filter(|(_, w)| **w > 0)
                    .map(|(g, _)| g.as_str()),
            )?;
        }
        let mut t = state.traffic[service].clone();
        let from = t.current.clone();
        t.previous = Some(from.clone());
        t.current = split.clone();
        if let Some(active) = split.active() {
            t.stable = Some(active.to_string());
            t.retired.retain(|g| g != active);
        }
        let event = event(
            service,
            None,
            actor,
            kind,
            Some(&from),
            Some(&split),
            format!("{from} -> {split}"),
        );
        self.commit(Commit {
            traffic: vec![(service.to_string(), t.record())],
            rollout: None,
            events: vec![event],
        })
        .await?;
        state.traffic.insert(service.to_string(), t);
        let generation = self.publish(&mut state)?;
        tracing::info!(service, from = %from, to = %split, generation, actor, "traffic changed");
        Ok(TrafficChange {
            service: service.into(),
            from,
            to: split,
            generation,
        })
    }

    fn check_healthy<'a>(
        &self,
        service: &str,
        groups: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), ControlError> {
        let snap = self.snapshots.load();
        let rt = &snap.services[service];
        let now = now_ms();
        for g in groups {
            if !rt.group(g).is_some_and(|g| g.has_routable(now)) {
                return Err(ControlError::NoHealthyTarget {
                    service: service.into(),
                    group: g.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Re-reads the configuration file. An invalid file changes nothing.
    pub async fn reload(&self, actor: &str) -> Result<u64, ControlError> {
        let path = self
            .config_path
            .as_ref()
            .ok_or(ControlError::NoConfigFile)?;
        let config = config::load_async(path).await?;
        self.apply(config, actor).await
    }

    /// Replaces the configuration: checks it against rollouts in progress, binds new
    /// listeners (so a bind failure changes nothing), persists, publishes, then stops
    /// listeners that are gone.
    pub async fn apply(&self, config: Config, actor: &str) -> Result<u64, ControlError> {
        let mut state = self.state.lock().await;
        let config = Arc::new(config);

        for r in state.rollouts.values().filter(|r| r.status.is_active()) {
            let keeps = config
                .service(&r.service)
                .is_some_and(|s| s.group(&r.stable).is_some() && s.group(&r.candidate).is_some());
            if !keeps {
                return Err(ControlError::RolloutInProgress {
                    service: r.service.clone(),
                    id: r.id,
                    candidate: r.candidate.clone(),
                    what: "the new configuration removes the service or one of its two groups",
                });
            }
        }

        let mut started = HashMap::new();
        for l in &config.listeners {
            let same = state
                .listeners
                .get(&l.name)
                .is_some_and(|r| r.configured == l.bind && r.tls == l.is_tls());
            if same {
                continue;
            }
            match listener::bind(l.bind) {
                Ok(socket) => {
                    started.insert(l.name.clone(), (l.bind, socket, l.is_tls()));
                }
                Err(source) => {
                    return Err(ControlError::Bind {
                        name: l.name.clone(),
                        addr: l.bind,
                        source,
                    })
                }
            }
        }

        let mut traffic = BTreeMap::new();
        let mut changes = Vec::new();
        let mut events = Vec::new();
        for s in &config.services {
            let in_rollout = state
                .rollouts
                .get(&s.name)
                .is_some_and(|r| r.status.is_active());
            let known = |sp: &Split| sp.0.keys().all(|g| s.group(g).is_some());
            let t = match state.traffic.get(&s.name) {
                Some(old) if in_rollout || (old.from_file == s.split && known(&old.current)) => {
                    old.clone()
                }
                Some(old) => Traffic {
                    current: s.split.clone(),
                    previous: Some(old.current.clone()).filter(known),
                    from_file: s.split.clone(),
                    stable: s.split.active().map(str::to_string),
                    retired: Vec::new(),
                },
                None => Traffic::from_config(&s.split),
            };
            if state.traffic.get(&s.name) != Some(&t) {
                changes.push((s.name.clone(), t.record()));
                let from = state.traffic.get(&s.name).map(|o| o.current.clone());
                if from.as_ref() != Some(&t.current) {
                    events.push(event(
                        &s.name,
                        None,
                        actor,
                        "config",
                        from.as_ref(),
                        Some(&t.current),
                        "the configuration file sets a new split".into(),
                    ));
                }
            }
            traffic.insert(s.name.clone(), t);
        }
        events.push(event(
            "",
            None,
            actor,
            "config",
            None,
            None,
            "configuration applied".into(),
        ));

        let old_config = std::mem::replace(&mut state.config, config.clone());
        let old_traffic = std::mem::replace(&mut state.traffic, traffic);
        let applied = match self
            .commit(Commit {
                traffic: changes,
                rollout: None,
                events,
            })
            .await
        {
            Ok(()) => self.publish(&mut state),
            Err(e) => Err(e),
        };
        let generation = match applied {
            Ok(g) => g,
            Err(e) => {
                state.config = old_config;
                state.traffic = old_traffic;
                return Err(e);
            }
        };

        for (name, (configured, socket, tls)) in started {
            match listener::spawn(&name, configured, socket, tls, self.snapshots.clone()) {
                Ok(l) => {
                    tracing::info!(listener = %name, addr = %l.local, tls, "listening");
                    if let Some(old) = state.listeners.insert(name, l) {
                        tokio::spawn(old.stop());
                    }
                }
                Err(e) => tracing::error!(listener = %name, error = %e, "cannot start listener"),
            }
        }
        let gone: Vec<String> = state
            .listeners
            .keys()
            .filter(|n| !config.listeners.iter().any(|l| &&l.name == n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(l) = state.listeners.remove(&name) {
                tracing::info!(listener = %name, "listener removed; draining");
                tokio::spawn(l.stop());
            }
        }
        tracing::info!(generation, actor, "configuration applied");
        Ok(generation)
    }

    /// Writes a transition to the store (off the async threads: SQLite fsyncs).
    async fn commit(&self, c: Commit) -> Result<(), ControlError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.commit(&c))
            .await
            .expect("store task")
            .map_err(ControlError::from)
    }

    /// Builds and swaps in a snapshot of the current state; starts and stops health checks
    /// to match, and lets removed targets drain.
    fn publish(&self, state: &mut State) -> Result<u64, ControlError> {
        let prev = self.snapshots.load_full();
        let generation = state.generation + 1;
        let next = Arc::new(Snapshot::build(
            state.config.clone(),
            &view(&state.traffic, &state.rollouts),
            Some(&prev),
            generation,
        )?);
        self.snapshots.store(next.clone());
        state.generation = generation;
        state.health.reconcile(&next);
        drain_removed(&prev, &next);
        Ok(generation)
    }

    /// Stops rollout drivers, then every listener, waiting for in-flight requests (each
    /// listener bounds its wait by the shutdown timeout).
    pub async fn shutdown(&self) {
        self.observer_task.abort();
        let mut state = self.state.lock().await;
        state.health.stop();
        for (_, (_, task)) in state.drivers.drain() {
            task.abort();
        }
        let listeners: Vec<Listener> = state.listeners.drain().map(|(_, l)| l).collect();
        drop(state);
        // Signal all first so every listener stops accepting at the same moment.
        for l in &listeners {
            l.signal_stop();
        }
        for l in listeners {
            l.stop().await;
        }
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

/// What the snapshot needs of the traffic state: the split, and the stable and candidate
/// groups (a candidate only while its rollout is active).
fn view(
    traffic: &BTreeMap<String, Traffic>,
    rollouts: &BTreeMap<String, Rollout>,
) -> HashMap<String, ServiceTraffic> {
    traffic
        .iter()
        .map(|(name, t)| {
            let active = rollouts.get(name).filter(|r| r.status.is_active());
            let v = ServiceTraffic {
                split: Some(t.current.clone()),
                stable: active
                    .map(|r| r.stable.clone())
                    .or_else(|| t.stable.clone()),
                candidate: active.map(|r| r.candidate.clone()),
            };
            (name.clone(), v)
        })
        .collect()
}

fn event(
    service: &str,
    rollout: Option<u64>,
    actor: &str,
    kind: &str,
    from: Option<&Split>,
    to: Option<&Split>,
    reason: String,
) -> Event {
    let (actor, on_behalf_of) = crate::audit::split(actor);
    Event {
        id: 0,
        at: unix_ms(),
        service: service.to_string(),
        rollout,
        actor,
        on_behalf_of,
        kind: kind.to_string(),
        from: from.cloned(),
        to: to.cloned(),
        reason,
    }
}

/// Targets in `prev` but not in `next` get no new requests; their in-flight ones finish.
/// Logged when drained, or when the deregistration delay ends first.
fn drain_removed(prev: &Snapshot, next: &Snapshot) {
    for (service, group, target) in prev.targets() {
        let still = next
            .services
            .get(service)
            .and_then(|s| s.group(group))
            .is_some_and(|g| g.target(&target.addr).is_some());
        if still || target.outstanding() == 0 {
            continue;
        }
        let delay = prev
            .config
            .service(service)
            .map_or(Duration::from_secs(30), |s| s.deregistration_delay);
        let (service, group, target) = (service.to_string(), group.to_string(), target.clone());
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + delay;
            while target.outstanding() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let left = target.outstanding();
            if left == 0 {
                tracing::info!(%service, %group, target = %target.addr, "removed target drained");
            } else {
                tracing::warn!(%service, %group, target = %target.addr, in_flight = left,
                    "deregistration delay over with requests in flight");
            }
        });
    }
}
