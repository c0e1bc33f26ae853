//! A fleet: several instances that share their state in etcd (`store::etcd`).
//!
//! Every instance serves traffic from its own snapshot and takes commands; every change is
//! one etcd transaction, and every instance applies the fleet's changes from one etcd watch
//! (`follow`), so a switch or an abort made through any instance serves on all of them
//! within the watch's delay. One instance, the **leader** (an etcd lease, see
//! `store::etcd::election`; what leading starts and stops: `leadership`), runs what decides
//! by itself — rollout drivers with their guard and analyses, hooks — and its writes are
//! fenced on its leadership, so a deposed leader changes nothing. Forward writes of any
//! instance carry the revision they were decided on and are refused if another instance
//! changed the same state since (`StoreError::Stale`); moves toward stable always land.
//!
//! Without etcd (a partition, an outage) an instance keeps serving its last snapshot (fail
//! static), shows itself degraded, and never advances a rollout: forward writes fail, and a
//! leader that cannot renew its lease steps down before it runs out. A rollback decided
//! meanwhile takes effect on the instance at once and reaches the others when its write
//! lands (the persister retries it).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use super::{ControlError, Controller, State, Traffic};
use crate::config::{Config, EtcdConfig};
use crate::rollout::Rollout;
use crate::store::etcd::watch::Batch;
use crate::store::etcd::{Change, ConfigRecord, Connection, InstanceRecord};
use crate::store::{EtcdStore, Persisted};

/// How long the start waits for etcd before it gives up, naming the endpoints.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// This instance's part in a fleet.
pub(super) struct Fleet {
    pub(super) etcd: Arc<EtcdStore>,
    pub(super) name: String,
    lease_ttl: Duration,
    /// The configuration file this instance started with: what is its own (store, instance,
    /// admin bind, listener overrides) is kept when the fleet's configuration changes.
    local: Config,
    /// The folder of that file (relative paths of the shared configuration).
    base_dir: PathBuf,
    pub(super) leads: AtomicBool,
    pub(super) view: Mutex<View>,
    /// Held while the fleet's state is being taken in (a watch batch, or a new leader's
    /// fresh read): one at a time, so that a batch older than a fresh read is never applied
    /// over it. A rollback never takes it.
    pub(super) applying: tokio::sync::Mutex<()>,
    /// Services of which the watch brought a change that was not taken because a durable
    /// write of this instance about them was still waiting for its answer (`own_newer`).
    /// That write may already have landed *before* the change (its answer is late): the
    /// change is then the fleet's newest state, and nothing else would ever bring it back.
    /// Once the write's answer came, the state is read again (`recheck_set_aside`).
    set_aside: Mutex<std::collections::BTreeSet<String>>,
}

#[derive(Default)]
pub(super) struct View {
    pub(super) leader: Option<InstanceRecord>,
    instances: std::collections::BTreeMap<String, InstanceRecord>,
}

/// What `status` shows of the fleet.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct FleetStatus {
    /// This instance.
    pub instance: String,
    pub leader: Option<String>,
    pub leading: bool,
    /// Whether this instance reaches etcd, its last contact and the state revision it has.
    pub store: Connection,
    pub instances: Vec<InstanceRecord>,
    /// What this instance pulled from each of the others for fleet-wide judgement: when,
    /// whether it is stale, and the split each observed.
    #[serde(default)]
    pub peers: Vec<super::PeerView>,
    /// Per service, each group's share of the whole fleet's requests over the last seconds.
    #[serde(default)]
    pub observed: std::collections::BTreeMap<String, std::collections::BTreeMap<String, f64>>,
}

/// The instance's name when the file gives none: host name and admin port.
pub(super) fn default_name(admin_port: u16) -> String {
    let host = crate::sys::hostname().unwrap_or_else(|| "switchyard".into());
    format!("{host}:{admin_port}")
}

/// Connects to the fleet's etcd and settles which configuration runs: the one the fleet
/// applied last (with this instance's own parts from `local`), or, for the first instance
/// of a fleet, `local` itself, which it records for the others.
/// `base_dir`: the folder of this instance's configuration file, against which relative
/// paths of the shared configuration (certificates, the access log) resolve.
pub(super) async fn join(
    cfg: &EtcdConfig,
    local: Config,
    base_dir: PathBuf,
) -> Result<(Arc<Fleet>, Config), ControlError> {
    let name = local
        .instance
        .name
        .clone()
        .unwrap_or_else(|| default_name(local.admin.bind.port()));
    let etcd = EtcdStore::connect(cfg, &name, CONNECT_TIMEOUT).await?;
    let config = loop {
        if let Some(shared) = etcd.config().await? {
            let parsed = crate::config::parse_async(
                shared.text.clone(),
                format!("the fleet's configuration (applied by {})", shared.by),
                &base_dir,
            )
            .await?;
            let mut same = Config::localize(parsed.clone(), &local);
            same.source.clone_from(&local.source);
            if same != local {
                tracing::warn!(by = %shared.by, "running the fleet's configuration, not this instance's file (apply or reload the file to make it the fleet's)");
            } else {
                tracing::info!(by = %shared.by, "running the fleet's configuration");
            }
            break Config::localize(parsed, &local);
        }
        let Some(text) = &local.source else {
            break local.clone();
        };
        let record = ConfigRecord {
            text: text.to_string(),
            by: name.clone(),
            at: crate::sys::unix_ms(),
        };
        // Only if no other instance recorded one meanwhile; else that one is read above.
        if etcd.create_config(&record).await? {
            tracing::info!("first instance of the fleet: its configuration is the fleet's");
            break local.clone();
        }
    };
    let fleet = Arc::new(Fleet {
        etcd,
        name,
        base_dir,
        lease_ttl: cfg.lease_ttl,
        local,
        leads: AtomicBool::new(false),
        view: Mutex::new(View::default()),
        applying: tokio::sync::Mutex::new(()),
        set_aside: Mutex::default(),
    });
    Ok((fleet, config))
}

impl Fleet {
    /// Whether a change the watch brought is set aside (see `set_aside`).
    pub(super) fn has_set_aside(&self) -> bool {
        !self.set_aside.lock().expect("set aside").is_empty()
    }

    pub(super) fn leads(&self) -> bool {
        self.leads.load(Ordering::SeqCst)
    }

    pub(super) fn local(&self) -> &Config {
        &self.local
    }
}

impl Controller {
    /// Whether this instance runs rollout drivers: always alone, the leader in a fleet.
    pub(super) fn leads(&self) -> bool {
        self.fleet.as_ref().is_none_or(|f| f.leads())
    }

    /// Whether the state is a fleet's (etcd).
    pub(crate) fn in_fleet(&self) -> bool {
        self.fleet.is_some()
    }

    /// The fleet as this instance sees it; `None` for a single instance.
    pub fn fleet_status(&self) -> Option<FleetStatus> {
        let f = self.fleet.as_ref()?;
        let view = f.view.lock().expect("fleet view");
        Some(FleetStatus {
            instance: f.name.clone(),
            leader: view.leader.as_ref().map(|l| l.name.clone()),
            leading: f.leads(),
            store: f.etcd.connection(),
            instances: view.instances.values().cloned().collect(),
            peers: self.peer_views(),
            observed: self
                .snapshot()
                .config
                .services
                .iter()
                .filter_map(|s| Some((s.name.clone(), self.fleet_observed(&s.name)?)))
                .collect(),
        })
    }

    /// Called once the admin API is bound (its address is how peers reach this instance):
    /// takes part in the leader election and follows who leads.
    pub async fn join_fleet(self: &Arc<Self>, admin: std::net::SocketAddr) {
        let Some(f) = &self.fleet else {
            return;
        };
        let now = crate::sys::unix_ms();
        let me = InstanceRecord {
            name: f.name.clone(),
            advertise: f
                .local
                .instance
                .advertise
                .clone()
                .unwrap_or_else(|| admin.to_string()),
            started_at: now,
            revision: f.etcd.connection().revision,
            last_contact: now,
        };
        let (rx, task) = crate::store::etcd::campaign(f.etcd.clone(), me, f.lease_ttl);
        self.load_instances(f).await;
        let control = self.clone();
        let follow = tokio::spawn(async move { control.follow_leadership(rx).await });
        let mut tasks = self.fleet_tasks.lock().expect("fleet tasks");
        tasks.push(task.abort_handle());
        tasks.push(follow.abort_handle());
    }

    /// The fleet's instances as etcd has them now (the watch brings every change after).
    async fn load_instances(&self, f: &Fleet) {
        match f.etcd.instances().await {
            Ok(list) => {
                let mut view = f.view.lock().expect("fleet view");
                // The watch may have brought newer records meanwhile (this instance's own
                // first one among them): those stay.
                for r in list {
                    view.instances.entry(r.name.clone()).or_insert(r);
                }
                let peers = peers_of(&view, &f.name);
                drop(view);
                self.set_peers(peers);
            }
            Err(e) => tracing::error!(error = %e, "cannot read the fleet's instances"),
        }
    }

    /// Applies the fleet's changes as etcd delivers them, for the life of the instance.
    pub(super) async fn follow(self: Arc<Self>, from_revision: i64) {
        let Some(f) = self.fleet.clone() else {
            return;
        };
        let mut watch = loop {
            match f.etcd.watch(from_revision).await {
                Ok(w) => break w,
                Err(e) => {
                    tracing::error!(error = %e, "cannot watch the fleet's state; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        let recheck = tokio::spawn(self.clone().recheck_set_aside(f.clone()));
        self.fleet_tasks
            .lock()
            .expect("fleet tasks")
            .push(recheck.abort_handle());
        loop {
            let batch = watch.next().await;
            self.apply_batch(&f, batch).await;
        }
    }

    /// Each time a durable write of this instance got its answer: when a change the watch
    /// set aside for such a write is no longer held back by one, the fleet's state is read
    /// again (the watch's `Change::Resync`, applied in order with its batches), so that what
    /// the fleet recorded after the write — a leader's end work begun and done — is not lost
    /// from this instance's view, nor decided on again when it leads next.
    async fn recheck_set_aside(self: Arc<Self>, f: Arc<Fleet>) {
        let mut landed = self.persist.landings();
        while landed.changed().await.is_ok() {
            let free = {
                let mut aside = f.set_aside.lock().expect("set aside");
                let before = aside.len();
                aside.retain(|s| self.pending_move(s));
                aside.len() < before
            };
            if free {
                tracing::info!("a write of this instance was answered after the watch brought later changes: reading the fleet's state again");
                f.etcd.want_resync();
            }
        }
    }

    async fn apply_batch(self: &Arc<Self>, f: &Fleet, batch: Batch) {
        let revision = batch.revision;
        let applying = f.applying.lock().await;
        // Changes the state already has: it was read fresh at a later revision (a new
        // leader's read, or a reload) while they were on their way.
        let old = revision <= self.state.lock().await.revision;
        let (mut traffic, mut rollouts, mut config, mut resync) =
            (Vec::new(), Vec::new(), None, false);
        for change in batch.changes {
            match change {
                Change::Traffic { .. } | Change::Rollout(_) | Change::Config(_) if old => {}
                Change::Traffic {
                    service,
                    record: Some(record),
                } => traffic.push((service, Traffic::from_record(record))),
                Change::Traffic { record: None, .. } => {}
                Change::Rollout(r) => rollouts.push(*r),
                Change::Config(c) => config = Some(c),
                Change::Leader(l) => f.view.lock().expect("fleet view").leader = l,
                Change::Instance { name, record } => self.instance_changed(f, name, record),
                Change::Resync => resync = true,
            }
        }
        // After the watch lost its place: the whole state again, read before the state lock
        // is taken (a rollback never waits for etcd), the configuration included.
        let mut reloaded = None;
        if resync {
            match f.etcd.load_fleet().await {
                Ok((persisted, shared, at)) => {
                    config = config.or(shared);
                    reloaded = Some((persisted, at));
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot reload the fleet's state; keeping the last one");
                }
            }
        }
        // A new configuration is installed together with the traffic that came with it (a
        // split naming its new groups must never be published with the old one).
        let running = self.snapshot().config.source.clone();
        if let Some(c) = config.filter(|c| running.as_deref() != Some(&c.text)) {
            let incoming: std::collections::BTreeMap<String, Traffic> =
                std::mem::take(&mut traffic)
                    .into_iter()
                    .filter(|(s, _)| !self.own_newer(f, s, revision))
                    .collect();
            self.apply_shared_config(f, c, incoming).await;
        }
        let mut touched = Vec::new();
        let mut dirty = false;
        let mut state = self.state.lock().await;
        if let Some((persisted, at)) = reloaded {
            self.resync(f, &mut state, persisted, at);
            dirty = true;
        }
        for (service, t) in traffic {
            if self.own_newer(f, &service, revision) || state.traffic.get(&service) == Some(&t) {
                continue;
            }
            state.traffic.insert(service, t);
            dirty = true;
        }
        for r in rollouts {
            // A newer rollout than the one a local write is about is never skipped.
            let newer = state.rollouts.get(&r.service).is_none_or(|o| r.id > o.id);
            if !newer && self.own_newer(f, &r.service, revision) {
                continue;
            }
            if let Some(s) = Self::take_rollout(&mut state, r) {
                touched.push(s);
                dirty = true;
            }
        }
        state.revision = state.revision.max(revision);
        if dirty {
            if let Err(e) = self.publish(&mut state) {
                tracing::error!(error = %e, "cannot publish the fleet's state");
            }
        }
        drop(state);
        drop(applying);
        for service in touched {
            self.ensure_driver(&service).await;
        }
    }

    /// An instance's record came, changed or went.
    fn instance_changed(&self, f: &Fleet, name: String, record: Option<InstanceRecord>) {
        let mut view = f.view.lock().expect("fleet view");
        let joined = record.as_ref().map(|r| r.advertise.clone());
        let before = view.instances.get(&name).map(|r| r.advertise.clone());
        match record {
            Some(r) => view.instances.insert(name, r),
            None => view.instances.remove(&name),
        };
        // Only a peer that came, went or moved changes whom the judgement pulls (records
        // are renewed every second).
        if joined != before {
            let peers = peers_of(&view, &f.name);
            drop(view);
            self.set_peers(peers);
        }
    }

    /// Whether this instance holds a newer state of `service` than a change at `revision`:
    /// a rollback it applied and has not yet recorded, or a write of its own after it.
    /// A change not taken for a pending write is set aside (see `Fleet::set_aside`).
    fn own_newer(&self, f: &Fleet, service: &str, revision: i64) -> bool {
        if f.etcd.written_at(service) > revision {
            return true;
        }
        let pending = self.pending_move(service);
        if pending {
            let mut aside = f.set_aside.lock().expect("set aside");
            aside.insert(service.to_string());
        }
        pending
    }

    /// Whether a durable write that carries `service`'s whole state (a rollback, a hold) is
    /// still waiting for the store.
    fn pending_move(&self, service: &str) -> bool {
        self.persist
            .pending_kind(service)
            .is_some_and(super::persist::Kind::supersedes)
    }

    /// Takes a rollout another instance wrote; the service, when it changed anything. (When
    /// it ended there with end work due, this instance's driver does it if it leads: the
    /// caller makes sure of the driver.)
    fn take_rollout(state: &mut State, r: Rollout) -> Option<String> {
        let service = r.service.clone();
        state.config.service(&service)?;
        let old = state.rollouts.get(&service);
        if old.is_some_and(|o| o.id > r.id || *o == r) {
            return None;
        }
        if let Some(t) = state.traffic.get_mut(&service) {
            if r.status.is_active() {
                t.current = super::transition::rollout_split(&r);
            }
        }
        if !r.status.is_active() {
            state.resume_gate.remove(&service);
            state.restore.remove(&service);
        }
        state.rollouts.insert(service.clone(), r);
        Some(service)
    }

    /// Takes the fleet's state read whole at `revision` (after the watch lost its place, or
    /// by a new leader): each service's traffic and latest rollout, except where this
    /// instance holds newer — a write of its own that landed after `revision`, or, for the
    /// traffic, one still waiting for the store (a rollback's record refused as decided on
    /// an old view asks for this reload, so its rollout is taken whatever is queued); a
    /// rollout is never replaced by an older one (`take_rollout`). The state is at
    /// `revision` from then on: the watch's changes up to it are skipped.
    pub(super) fn resync(&self, f: &Fleet, state: &mut State, persisted: Persisted, revision: i64) {
        for (service, record) in persisted.traffic {
            if state.config.service(&service).is_some()
                && self.persist.pending_kind(&service).is_none()
                && f.etcd.written_at(&service) <= revision
            {
                state.traffic.insert(service, Traffic::from_record(record));
            }
        }
        for (_, r) in persisted.rollouts {
            let newer = state.rollouts.get(&r.service).is_none_or(|o| r.id > o.id);
            if newer || f.etcd.written_at(&r.service) <= revision {
                Self::take_rollout(state, r);
            }
        }
        // What was set aside is in this read, unless a write still holds it back.
        let mut aside = f.set_aside.lock().expect("set aside");
        aside.retain(|s| self.pending_move(s));
        drop(aside);
        state.revision = state.revision.max(revision);
    }

    /// The traffic of a state read whole at `revision`, for a configuration installed with
    /// it, less the services this instance holds newer (see `resync`).
    pub(super) fn incoming_traffic(
        &self,
        f: &Fleet,
        persisted: &Persisted,
        revision: i64,
    ) -> std::collections::BTreeMap<String, Traffic> {
        persisted
            .traffic
            .iter()
            .filter(|(s, _)| {
                self.persist.pending_kind(s).is_none() && f.etcd.written_at(s) <= revision
            })
            .map(|(s, t)| (s.clone(), Traffic::from_record(t.clone())))
            .collect()
    }

    /// The fleet applied a new configuration (through another instance, or this one's own
    /// write coming back): run it here, with this instance's own parts, without recording
    /// anything — the instance that applied it recorded it, with the traffic it implies.
    pub(super) async fn apply_shared_config(
        &self,
        f: &Fleet,
        c: ConfigRecord,
        incoming: std::collections::BTreeMap<String, Traffic>,
    ) {
        let parsed = crate::config::parse_async(
            c.text.clone(),
            format!("the fleet's configuration (applied by {})", c.by),
            &f.base_dir,
        )
        .await;
        match parsed {
            Ok(shared) => {
                let config = Config::localize(shared, &f.local);
                match self.install_config(config, incoming).await {
                    Ok(_) => {
                        let at = humantime::format_rfc3339_seconds(
                            std::time::UNIX_EPOCH + Duration::from_millis(c.at.max(0) as u64),
                        );
                        self.state.lock().await.applied_elsewhere =
                            Some(format!("applied by {} for the fleet at {at}", c.by));
                    }
                    Err(e) => {
                        tracing::error!(by = %c.by, error = %e, "cannot run the fleet's new configuration here; keeping the last one");
                    }
                }
            }
            Err(e) => {
                tracing::error!(by = %c.by, error = %e, "the fleet's new configuration does not load here; keeping the last one");
            }
        }
    }
}

/// Every instance but this one, as the judgement pulls them.
fn peers_of(view: &View, me: &str) -> Vec<super::Peer> {
    view.instances
        .values()
        .filter(|r| r.name != me)
        .map(|r| super::Peer {
            name: r.name.clone(),
            admin: r.advertise.clone(),
        })
        .collect()
}
