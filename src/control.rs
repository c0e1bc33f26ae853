//! The control plane: owns the configuration, the traffic state of each service (its split
//! and the split before it) and the running listeners and health checks. Every change is
//! validated first, then published as one new snapshot; a change that fails anywhere is not
//! applied at all. The hot path only ever sees the published snapshot.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Mutex;

use crate::config::{self, Config, ConfigError, Split};
use crate::group::now_ms;
use crate::health::HealthChecker;
use crate::listener::{self, Listener};
use crate::snapshot::Snapshot;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no service named \"{0}\"")]
    UnknownService(String),
    #[error("service \"{service}\" has no group named \"{group}\"")]
    UnknownGroup { service: String, group: String },
    #[error("group \"{group}\" of service \"{service}\" has no healthy target (use force to switch anyway)")]
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
    Tls(#[from] crate::tls::TlsError),
}

/// Traffic state of one service.
#[derive(Debug, Clone)]
struct Traffic {
    current: Split,
    previous: Option<Split>,
    /// The split the file asked for when last loaded; a reload that leaves it unchanged keeps
    /// a switch made since, one that changes it takes the file's new value.
    from_file: Split,
}

struct State {
    config: Arc<Config>,
    traffic: BTreeMap<String, Traffic>,
    listeners: HashMap<String, Listener>,
    health: HealthChecker,
    generation: u64,
}

pub struct Controller {
    snapshots: Arc<ArcSwap<Snapshot>>,
    state: Mutex<State>,
    config_path: Option<PathBuf>,
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
    /// Binds every listener and starts serving `config`. Nothing is left running on error.
    pub async fn start(
        config: Config,
        path: Option<PathBuf>,
    ) -> Result<Arc<Controller>, ControlError> {
        let config = Arc::new(config);
        let traffic = config
            .services
            .iter()
            .map(|s| {
                let t = Traffic {
                    current: s.split.clone(),
                    previous: None,
                    from_file: s.split.clone(),
                };
                (s.name.clone(), t)
            })
            .collect();
        let snapshot = Arc::new(Snapshot::build(config.clone(), &HashMap::new(), None, 1)?);
        let snapshots = Arc::new(ArcSwap::new(snapshot.clone()));
        let mut listeners = HashMap::new();
        for l in &config.listeners {
            let socket = listener::bind(l.bind).map_err(|source| ControlError::Bind {
                name: l.name.clone(),
                addr: l.bind,
                source,
            })?;
            let running = listener::spawn(&l.name, l.bind, socket, l.is_tls(), snapshots.clone())
                .map_err(|source| ControlError::Bind {
                name: l.name.clone(),
                addr: l.bind,
                source,
            })?;
            tracing::info!(listener = %l.name, addr = %running.local, tls = l.is_tls(), "listening");
            listeners.insert(l.name.clone(), running);
        }
        let mut health = HealthChecker::default();
        health.reconcile(&snapshot);
        Ok(Arc::new(Controller {
            snapshots,
            state: Mutex::new(State {
                config,
                traffic,
                listeners,
                health,
                generation: 1,
            }),
            config_path: path,
        }))
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
    ) -> Result<TrafficChange, ControlError> {
        self.set_split(service, Split::all_to(group), force).await
    }

    /// Restores the split that was in force before the last change.
    pub async fn switch_back(
        &self,
        service: &str,
        force: bool,
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
        self.set_split(service, previous, force).await
    }

    /// Sets a weighted split. Every group that would get traffic must have a healthy target
    /// unless `force`.
    pub async fn set_split(
        &self,
        service: &str,
        split: Split,
        force: bool,
    ) -> Result<TrafficChange, ControlError> {
        let mut state = self.state.lock().await;
        let svc = state
            .config
            .service(service)
            .ok_or_else(|| ControlError::UnknownService(service.into()))?;
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
            let snap = self.snapshots.load();
            let rt = &snap.services[service];
            let now = now_ms();
            for (g, w) in &split.0 {
                if *w > 0 && !rt.group(g).is_some_and(|g| g.has_routable(now)) {
                    return Err(ControlError::NoHealthyTarget {
                        service: service.into(),
                        group: g.clone(),
                    });
                }
            }
        }
        let t = state
            .traffic
            .get_mut(service)
            .expect("every service has traffic state");
        let from = t.current.clone();
        t.previous = Some(from.clone());
        t.current = split.clone();
        let generation = self.publish(&mut state)?;
        tracing::info!(service, from = %from, to = %split, generation, "traffic changed");
        Ok(TrafficChange {
            service: service.into(),
            from,
            to: split,
            generation,
        })
    }

    /// Re-reads the configuration file. An invalid file changes nothing.
    pub async fn reload(&self) -> Result<u64, ControlError> {
        let path = self
            .config_path
            .as_ref()
            .ok_or(ControlError::NoConfigFile)?;
        let config = config::load(path)?;
        self.apply(config).await
    }

    /// Replaces the configuration: binds new listeners first (so a bind failure changes
    /// nothing), publishes, then stops listeners that are gone.
    pub async fn apply(&self, config: Config) -> Result<u64, ControlError> {
        let mut state = self.state.lock().await;
        let config = Arc::new(config);

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
        for s in &config.services {
            let t = match state.traffic.get(&s.name) {
                Some(old)
                    if old.from_file == s.split
                        && old.current.0.keys().all(|g| s.group(g).is_some()) =>
                {
                    old.clone()
                }
                Some(old) => Traffic {
                    current: s.split.clone(),
                    previous: Some(old.current.clone())
                        .filter(|p| p.0.keys().all(|g| s.group(g).is_some())),
                    from_file: s.split.clone(),
                },
                None => Traffic {
                    current: s.split.clone(),
                    previous: None,
                    from_file: s.split.clone(),
                },
            };
            traffic.insert(s.name.clone(), t);
        }

        let old_config = std::mem::replace(&mut state.config, config.clone());
        let old_traffic = std::mem::replace(&mut state.traffic, traffic);
        let generation = match self.publish(&mut state) {
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
        tracing::info!(generation, "configuration applied");
        Ok(generation)
    }

    /// Builds and swaps in a snapshot of the current state; starts and stops health checks
    /// to match, and lets removed targets drain.
    fn publish(&self, state: &mut State) -> Result<u64, ControlError> {
        let prev = self.snapshots.load_full();
        let splits: HashMap<String, Split> = state
            .traffic
            .iter()
            .map(|(k, v)| (k.clone(), v.current.clone()))
            .collect();
        let generation = state.generation + 1;
        let next = Arc::new(Snapshot::build(
            state.config.clone(),
            &splits,
            Some(&prev),
            generation,
        )?);
        self.snapshots.store(next.clone());
        state.generation = generation;
        state.health.reconcile(&next);
        drain_removed(&prev, &next);
        Ok(generation)
    }

    /// Stops accepting on every listener and waits for in-flight requests to finish (each
    /// listener bounds its wait by the shutdown timeout).
    pub async fn shutdown(&self) {
        let mut state = self.state.lock().await;
        state.health.stop();
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

    /// Current traffic state, for the API.
    pub async fn traffic(&self) -> BTreeMap<String, (Split, Option<Split>)> {
        let state = self.state.lock().await;
        state
            .traffic
            .iter()
            .map(|(k, t)| (k.clone(), (t.current.clone(), t.previous.clone())))
            .collect()
    }

    pub fn config_path(&self) -> Option<&PathBuf> {
        self.config_path.as_ref()
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
                tracing::warn!(%service, %group, target = %target.addr, in_flight = left, "deregistration delay over with requests in flight");
            }
        });
    }
}
