//! Start and stop of the control plane, and what a restart resumes.
//!
//! **Start** opens the store first (taking the one-instance lock) so a second instance fails
//! on that, naming the holder, before it binds anything. Each active rollout resumes *held*
//! (`resume_gate`): no step or promotion before its guard has judged one full window, since
//! the last instance may have died with a rollback applied but not recorded. The database
//! then has at most the split from before that rollback, with one exception: a step forward
//! whose write was already running when the rollback was decided lands first. Such a
//! record carries `step_from` (the split while it was written; any later write of the
//! service clears it), so the rollout resumes at the lower of the recorded weight and the
//! candidate's weight in `step_from`, and goes back to the recorded weight, by a forward
//! write, only once the guard has judged the lower one.
//!
//! **Shutdown** first stops everything that decides (drivers with their guard and background
//! analysis, health checks), then gives pending writes a bounded chance, then closes the
//! writer so that every caller still waiting gets an answer, then drains listeners.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Mutex;

use super::persist::Persister;
use super::transition::rollout_split;
use super::{keeps_split, observe, view, Clock, ControlError, Controller, State, Traffic};
use crate::config::{Config, StoreConfig};
use crate::health::HealthChecker;
use crate::listener::{self, Listener};
use crate::rollout::machine::{Change, Outcome};
use crate::rollout::Rollout;
use crate::snapshot::Snapshot;
use crate::split::{format_percent, Split};
use crate::store::{SqliteStore, Store};

/// How long shutdown waits for writes already published (rollbacks) to reach the store.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);

impl Controller {
    /// Opens the store, restores persisted traffic and rollouts, binds every listener and
    /// starts serving. Nothing is left running on error.
    pub async fn start(
        config: Config,
        path: Option<PathBuf>,
    ) -> Result<Arc<Controller>, ControlError> {
        Controller::start_with(config, path, Clock::system()).await
    }

    /// [`Controller::start`] with the wall clock its records and events are stamped with.
    pub async fn start_with(
        config: Config,
        path: Option<PathBuf>,
        clock: Clock,
    ) -> Result<Arc<Controller>, ControlError> {
        let (store, fleet, config): (Arc<dyn Store>, _, _) = match &config.store {
            StoreConfig::Sqlite { path } => (Arc::new(SqliteStore::open(path)?), None, config),
            StoreConfig::Etcd(cfg) => {
                let cfg = cfg.clone();
                let base_dir = path
                    .as_ref()
                    .and_then(|p| p.parent())
                    .map(std::path::Path::to_path_buf)
                    .unwrap_or_default();
                let (fleet, config) = super::fleet::join(&cfg, config, base_dir).await?;
                (fleet.etcd.clone(), Some(fleet), config)
            }
        };
        // A fleet's state comes with the revision it was read at: its changes are watched
        // from just after it, and forward decisions are based on it.
        let (persisted, revision) = match &fleet {
            Some(f) => f.etcd.load_at().await?,
            None => {
                let store = store.clone();
                let loaded = tokio::task::spawn_blocking(move || store.load())
                    .await
                    .expect("store task")?;
                (loaded, 0)
            }
        };
        let config = Arc::new(config);
        let mut traffic = BTreeMap::new();
        let mut step_from = HashMap::new();
        for s in &config.services {
            let restored = persisted
                .traffic
                .get(&s.name)
                .filter(|t| keeps_split(&t.from_file, &t.current, s));
            let t = match restored {
                Some(r) => {
                    if let Some(from) = &r.step_from {
                        step_from.insert(s.name.clone(), from.clone());
                    }
                    Traffic::from_record(r.clone())
                }
                None => Traffic::from_config(&s.split),
            };
            traffic.insert(s.name.clone(), t);
        }
        let mut rollouts: BTreeMap<String, Rollout> = persisted
            .rollouts
            .into_iter()
            .filter(|(svc, r)| {
                config
                    .service(svc)
                    .is_some_and(|s| r.groups().all(|g| s.group(g).is_some()))
            })
            .collect();
        // In a fleet the state is the fleet's, kept by its leader: a new leader holds what it
        // takes over (`fleet::take_over`), and no instance lowers a weight on its own.
        let in_fleet = fleet.is_some();
        let restore = if in_fleet {
            HashMap::new()
        } else {
            hold_unconfirmed_steps(&mut rollouts, &mut traffic, &step_from)
        };

        let log = Snapshot::access_log_for(&config, None)?;
        let snapshot = Arc::new(Snapshot::build(
            config.clone(),
            &view(&traffic, &rollouts),
            None,
            1,
            log,
        ));
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
        let persist = Persister::spawn(store.clone());
        let control = Arc::new(Controller {
            fleet,
            fleet_tasks: Default::default(),
            counts: Default::default(),
            guard_readings: Default::default(),
            observer,
            observer_task,
            peers: super::peers::Peers::new(snapshots.clone(), clock.clone()),
            snapshots,
            state: Mutex::new(State {
                config,
                traffic,
                rollouts,
                epochs: HashMap::new(),
                revision,
                // The last instance may have died with a rollback applied but not recorded:
                // no rollout moves on before the guard has judged what it resumes at.
                resume_gate: if in_fleet {
                    Default::default()
                } else {
                    active.iter().cloned().collect()
                },
                restore,
                listeners,
                health,
                generation: 1,
                drivers: HashMap::new(),
                applied_elsewhere: None,
            }),
            config_path: path,
            store,
            persist,
            writer: Mutex::new(()),
            clock,
        });
        if control.fleet.is_some() {
            // Drivers wait until this instance leads (`join_fleet`, once the admin API is up).
            let follow = tokio::spawn(control.clone().follow(revision));
            control
                .fleet_tasks
                .lock()
                .expect("fleet tasks")
                .push(follow.abort_handle());
        }
        tokio::spawn(super::cert_watch::watch(Arc::downgrade(&control)));
        for service in active {
            tracing::info!(%service, "resuming rollout");
            control.ensure_driver(&service).await;
        }
        // A single instance killed after a rollout ended and before its end work was done
        // does it now (in a fleet, the leader does: `fleet::take_over`).
        if !in_fleet {
            let ended: Vec<String> = {
                let state = control.state.lock().await;
                state
                    .rollouts
                    .values()
                    .filter(|r| !r.status.is_active() && r.end_work.is_some())
                    .map(|r| r.service.clone())
                    .collect()
            };
            for service in ended {
                tracing::info!(%service, "running the end work of a rollout that ended before the restart");
                control.ensure_driver(&service).await;
            }
        }
        Ok(control)
    }

    /// Stops what decides (drivers, their guard and background analysis, health checks),
    /// then gives published writes a bounded chance to land, then closes the store writer so
    /// that no caller waits for it, then every listener, waiting for in-flight requests
    /// (each listener bounds its wait by the shutdown timeout). In this order a rollback
    /// decided late is still in the queue when it is drained, and nothing waits forever.
    pub async fn shutdown(&self) {
        self.observer_task.abort();
        // Out of the fleet first: no more leadership, no more changes from the others. The
        // lease is not revoked: the others take over when it runs out, as after a crash.
        for task in self.fleet_tasks.lock().expect("fleet tasks").drain(..) {
            task.abort();
        }
        self.peers.set(Vec::new());
        let drivers: Vec<_> = {
            let mut state = self.state.lock().await;
            state.health.stop();
            state.drivers.drain().map(|(_, (_, task))| task).collect()
        };
        for task in drivers {
            task.abort();
            // Aborted at an await point: the side tasks (a JoinSet) go with the driver's
            // future; a transition is either fully applied and queued or not at all.
            let _ = task.await;
        }
        let left = self.persist.close(SHUTDOWN_FLUSH).await;
        if left > 0 {
            // The next start resumes any active rollout held (see the module's doc).
            tracing::error!(
                pending = left,
                "stopping with writes the state database did not take"
            );
        }
        let listeners: Vec<Listener> = {
            let mut state = self.state.lock().await;
            state.listeners.drain().map(|(_, l)| l).collect()
        };
        // Signal all first so every listener stops accepting at the same moment.
        for l in &listeners {
            l.signal_stop();
        }
        for l in listeners {
            l.stop().await;
        }
    }

    /// Whether the service's rollout resumed after a restart and its guard has not yet
    /// judged a full window.
    pub(crate) async fn resume_gated(&self, service: &str) -> bool {
        self.state.lock().await.resume_gate.contains(service)
    }

    /// The guard judged one full window after a restart: a rollout held below its recorded
    /// weight goes back to it (a forward write, so it can fail and be tried again), then the
    /// rollout may move on.
    pub(crate) async fn open_resume_gate(&self, service: &str) -> Result<(), ControlError> {
        let target = self.state.lock().await.restore.get(service).copied();
        if let Some(target) = target {
            self.transition(service, &crate::audit::System::Restart.into(), None, |r| {
                if !r.status.is_active() || r.weight >= target {
                    return Ok(Outcome::Idle);
                }
                let held = r.weight;
                r.weight = target;
                Ok(Outcome::Changed(Change {
                    kind: crate::audit::EventKind::Restored,
                    reason: format!(
                        "{} back to the recorded {} after the guard judged a window at {} since the restart",
                        r.candidate,
                        format_percent(target),
                        format_percent(held)
                    ),
                    weight_changed: true,
                }))
            })
            .await?;
        }
        let mut state = self.state.lock().await;
        state.restore.remove(service);
        if state.resume_gate.remove(service) {
            tracing::info!(%service, "guard judged a full window after the restart; rollout goes on");
        }
        Ok(())
    }

    /// What a gated rollout waits for, for its view.
    pub(super) fn resume_wait(state: &State, service: &str) -> Option<String> {
        if !state.resume_gate.contains(service) {
            return None;
        }
        Some(match state.restore.get(service) {
            Some(w) => format!(
                "the guard to judge one full window after a restart (held below the recorded {} until then)",
                format_percent(*w)
            ),
            None => "the guard to judge one full window after a restart".into(),
        })
    }
}

/// For each active rollout whose last record was a step forward not yet confirmed (its
/// traffic row has `step_from`): resumes at the candidate's weight in `step_from` when that
/// is lower, and returns the recorded weights to go back to once the guard has judged it.
fn hold_unconfirmed_steps(
    rollouts: &mut BTreeMap<String, Rollout>,
    traffic: &mut BTreeMap<String, Traffic>,
    step_from: &HashMap<String, Split>,
) -> HashMap<String, u32> {
    let mut restore = HashMap::new();
    for r in rollouts.values_mut().filter(|r| r.status.is_active()) {
        let Some(from) = step_from.get(&r.service) else {
            continue;
        };
        let held = from.weight(&r.candidate);
        if held >= r.weight {
            continue;
        }
        tracing::warn!(service = %r.service, rollout = r.id, recorded = r.weight, held,
            "the last record is a step forward that may have raced a rollback not recorded: resuming at the weight before it");
        restore.insert(r.service.clone(), r.weight);
        r.weight = held;
        if let Some(t) = traffic.get_mut(&r.service) {
            t.current = rollout_split(r);
        }
    }
    restore
}
