//! Traffic changes outside a rollout: `switch` (and back), `weights`, and a whole new
//! configuration by `reload` or `apply`. Each commits before it publishes; `apply` binds
//! new listeners and opens a new access log before it records anything, so a failure
//! leaves the store, the state and the serving snapshot as they were. Which split survives
//! a new configuration is `plan`'s one rule (`Traffic::after_config`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::persist::Write;
use super::plan::{self, PlanChange};
use super::record::{superseded, Landed};
use super::{event, ControlError, Controller, State, Traffic};
use crate::audit::{Actor, EventKind};
use crate::config::{self, Config};
use crate::listener;
use crate::metrics::now_ms;
use crate::snapshot::Snapshot;
use crate::split::Split;
use crate::store::Commit;

/// What an `apply` did: the generation it published and the changes it made.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Applied {
    pub generation: u64,
    pub changes: Vec<PlanChange>,
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
    /// Sends all new requests of `service` to `group` at once.
    pub async fn switch(
        &self,
        service: &str,
        group: &str,
        force: bool,
        actor: impl Into<Actor>,
    ) -> Result<TrafficChange, ControlError> {
        self.set_split(
            service,
            Split::all_to(group),
            force,
            actor,
            EventKind::Switch,
        )
        .await
    }

    /// Restores the split that was in force before the last change. It is read under the
    /// `writer` and state locks, in the same critical section that writes the change, so
    /// two concurrent `switch --back`s (or a switch in between) cannot both act on the same
    /// `previous`. Like every manual split it is a forward write: during a store outage it
    /// is refused (a rollout's way back, `abort`, never is).
    pub async fn switch_back(
        &self,
        service: &str,
        force: bool,
        actor: impl Into<Actor>,
    ) -> Result<TrafficChange, ControlError> {
        let actor = actor.into();
        self.change_split(service, force, &actor, EventKind::SwitchBack, |t| {
            t.previous
                .clone()
                .ok_or_else(|| ControlError::NothingToRevert(service.into()))
        })
        .await
    }

    /// Sets a split by hand. Every group that would get traffic must have a healthy target
    /// unless `force`; refused while a rollout of the service is in progress.
    pub async fn set_split(
        &self,
        service: &str,
        split: Split,
        force: bool,
        actor: impl Into<Actor>,
        kind: EventKind,
    ) -> Result<TrafficChange, ControlError> {
        let actor = actor.into();
        self.change_split(service, force, &actor, kind, |_| Ok(split.clone()))
            .await
    }

    /// `set_split` with the split worked out from the service's traffic under the locks.
    async fn change_split(
        &self,
        service: &str,
        force: bool,
        actor: &Actor,
        kind: EventKind,
        to: impl FnOnce(&Traffic) -> Result<Split, ControlError>,
    ) -> Result<TrafficChange, ControlError> {
        let _writer = self.writer.lock().await;
        let state = self.state.lock().await;
        let svc = state
            .config
            .service(service)
            .ok_or_else(|| ControlError::UnknownService(service.into()))?;
        let split = to(&state.traffic[service])?;
        if let Some(r) = state.rollouts.get(service).filter(|r| r.status.is_active()) {
            return Err(ControlError::RolloutInProgress {
                service: service.into(),
                id: r.id,
                candidate: r.candidate.clone(),
                what: "promote or abort it instead",
            });
        }
        for g in split.groups() {
            if svc.group(g).is_none() {
                return Err(ControlError::UnknownGroup {
                    service: service.into(),
                    group: g.to_string(),
                });
            }
        }
        if !force {
            self.check_healthy(
                service,
                split.iter().filter(|(_, w)| *w > 0).map(|(g, _)| g),
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
            self.clock.unix_ms(),
            service,
            None,
            actor,
            kind,
            (Some(&from), Some(&split)),
            format!("{from} -> {split}"),
        );
        let commit = Commit {
            traffic: vec![(service.to_string(), t.record())],
            rollout: None,
            events: vec![event],
            ..Commit::default()
        };
        let (mut state, landed) = self.write_service(state, service, commit).await?;
        let generation = match landed {
            Landed::Kept => {
                state.traffic.insert(service.to_string(), t);
                self.publish(&mut state)?
            }
            Landed::RolledBack => return Err(superseded(service)),
            // Switched, and another instance changed the service after it: served as the
            // fleet has it now.
            Landed::Overtaken => self.snapshots.load().generation,
        };
        tracing::info!(service, from = %from, to = %split, generation, %actor, "traffic changed");
        Ok(TrafficChange {
            service: service.into(),
            from,
            to: split,
            generation,
        })
    }

    pub(super) fn check_healthy<'a>(
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
    pub async fn reload(&self, actor: impl Into<Actor>) -> Result<u64, ControlError> {
        let path = self
            .config_path
            .as_ref()
            .ok_or(ControlError::NoConfigFile)?;
        let config = config::load_async(path).await?;
        let how = self.state.lock().await.applied_elsewhere.clone();
        if let Some(how) = how {
            let running = self.snapshot().config.source.clone();
            if running.as_deref() != config.source.as_deref() {
                return Err(ControlError::ReloadWouldUndo {
                    path: path.display().to_string(),
                    how,
                });
            }
        }
        let generation = self.replace_config(config, actor.into()).await?.generation;
        self.state.lock().await.applied_elsewhere = None;
        Ok(generation)
    }

    /// Replaces the configuration; the new generation. See [`Controller::apply_config`].
    pub async fn apply(
        &self,
        config: Config,
        actor: impl Into<Actor>,
    ) -> Result<u64, ControlError> {
        Ok(self.apply_config(config, actor).await?.generation)
    }

    /// `apply` through the API: the running configuration no longer comes from the file, so a
    /// `reload` of a file that differs is refused until the file says the same (see
    /// `ControlError::ReloadWouldUndo`).
    pub async fn apply_config(
        &self,
        config: Config,
        actor: impl Into<Actor>,
    ) -> Result<Applied, ControlError> {
        let actor = actor.into();
        let applied = self.replace_config(config, actor.clone()).await?;
        let at = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        self.state.lock().await.applied_elsewhere =
            Some(format!("applied through the API by {actor} at {at}"));
        Ok(applied)
    }

    /// Replaces the configuration: checks it against rollouts in progress, binds new
    /// listeners and opens a new access log (so a failure there changes nothing), persists,
    /// publishes (which cannot fail then), then stops
    /// listeners that are gone. What it changed is computed by `plan`'s own function under
    /// the same lock, so the list returned is what this apply did, not what a plan said a
    /// moment earlier.
    async fn replace_config(&self, config: Config, actor: Actor) -> Result<Applied, ControlError> {
        let actor = &actor;
        // In a fleet the text is the fleet's; what is this instance's own stays its own.
        let config = match &self.fleet {
            Some(f) => Config::localize(config, f.local()),
            None => config,
        };
        let _writer = self.writer.lock().await;
        let state = self.state.lock().await;
        let diffs = plan::plan(&state, &config);
        let config = Arc::new(config);

        for r in state.rollouts.values().filter(|r| r.status.is_active()) {
            let keeps = config
                .service(&r.service)
                .is_some_and(|s| r.groups().all(|g| s.group(g).is_some()));
            if !keeps {
                return Err(ControlError::RolloutInProgress {
                    service: r.service.clone(),
                    id: r.id,
                    candidate: r.candidate.clone(),
                    what:
                        "the new configuration removes the service or one of the groups it runs on",
                });
            }
        }

        let started = bind_new(&state, &config)?;

        // Like the listeners, the access log is opened before anything is recorded: after
        // the commit, publishing cannot fail, so the store never holds a configuration
        // that is not the one serving.
        let access_log = Snapshot::access_log_for(&config, Some(&self.snapshots.load()))?;

        let mut traffic = BTreeMap::new();
        let mut changes = Vec::new();
        let mut events = Vec::new();
        for s in &config.services {
            let in_rollout = state
                .rollouts
                .get(&s.name)
                .is_some_and(|r| r.status.is_active());
            let t = Traffic::after_config(state.traffic.get(&s.name), s, in_rollout);
            if state.traffic.get(&s.name) != Some(&t) {
                changes.push((s.name.clone(), t.record()));
                let from = state.traffic.get(&s.name).map(|o| o.current.clone());
                if from.as_ref() != Some(&t.current) {
                    events.push(event(
                        self.clock.unix_ms(),
                        &s.name,
                        None,
                        actor,
                        EventKind::Config,
                        (from.as_ref(), Some(&t.current)),
                        "the configuration file sets a new split".into(),
                    ));
                }
            }
            traffic.insert(s.name.clone(), t);
        }
        events.push(event(
            self.clock.unix_ms(),
            "",
            None,
            actor,
            EventKind::Config,
            (None, None),
            match diffs.len() {
                0 => "configuration applied: no changes".into(),
                1 => "configuration applied: 1 change".into(),
                n => format!("configuration applied: {n} changes"),
            },
        ));

        let epochs = state.epochs.clone();
        let before = state.traffic.clone();
        let services: Vec<String> = changes.iter().map(|(s, _)| s.clone()).collect();
        let commit = Commit {
            traffic: changes,
            rollout: None,
            events,
            config: self.fleet.as_ref().and(config.source.clone()),
            ..Commit::default()
        };
        let (mut state, _) = self
            .write_forward(state, services, Write::Commit(Box::new(commit)))
            .await?;
        // A rollback that came in while the write waited is newer than this file's split
        // (and its write lands after this one): it stays. So does, in a fleet, a change of
        // another instance applied meanwhile (a service this apply did not change included).
        for (service, t) in &mut traffic {
            let rolled_back = state.epoch(service) != epochs.get(service).copied().unwrap_or(0);
            let now = state.traffic.get(service);
            let moved = now != before.get(service) && now != Some(&*t);
            if rolled_back || moved {
                if let Some(now) = now {
                    *t = now.clone();
                }
            }
        }
        let generation = self.install(&mut state, config, traffic, started, access_log);
        for c in &diffs {
            tracing::info!(op = c.op, what = %c.what, detail = %c.detail, "configuration change");
        }
        tracing::info!(
            generation,
            %actor,
            changes = diffs.len(),
            "configuration applied"
        );
        Ok(Applied {
            generation,
            changes: diffs,
        })
    }

    /// Runs a configuration another instance of the fleet applied and recorded, with the
    /// traffic that came with it (`incoming`, in place of what this instance had): binds and
    /// opens what it needs, then swaps both in at once. Nothing is recorded here.
    pub(super) async fn install_config(
        &self,
        config: Config,
        mut incoming: BTreeMap<String, Traffic>,
    ) -> Result<u64, ControlError> {
        let _writer = self.writer.lock().await;
        let mut state = self.state.lock().await;
        let config = Arc::new(config);
        let started = bind_new(&state, &config)?;
        let access_log = Snapshot::access_log_for(&config, Some(&self.snapshots.load()))?;
        let traffic = config
            .services
            .iter()
            .map(|s| {
                let t = incoming.remove(&s.name);
                let t = t.or_else(|| state.traffic.get(&s.name).cloned());
                (
                    s.name.clone(),
                    t.unwrap_or_else(|| Traffic::from_config(&s.split)),
                )
            })
            .collect();
        Ok(self.install(&mut state, config, traffic, started, access_log))
    }

    /// Swaps a configuration in whose listeners are bound and access log opened: publishes
    /// it with `traffic`, starts the new listeners and drains those that are gone.
    fn install(
        &self,
        state: &mut State,
        config: Arc<Config>,
        traffic: BTreeMap<String, Traffic>,
        started: Bound,
        access_log: Option<crate::access_log::AccessLog>,
    ) -> u64 {
        state.config = config.clone();
        state.traffic = traffic;
        let generation = self.publish_with(state, access_log);

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
        generation
    }
}

/// Listeners bound ahead of a configuration change, by name: (configured address, socket, TLS).
type Bound = HashMap<String, (std::net::SocketAddr, tokio::net::TcpListener, bool)>;

/// Binds the listeners of `config` that do not run as configured, so that a failure to bind
/// changes nothing.
fn bind_new(state: &State, config: &Config) -> Result<Bound, ControlError> {
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

    Ok(started)
}
