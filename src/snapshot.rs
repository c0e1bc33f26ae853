//! The routing snapshot: everything a request needs, immutable, swapped in whole by the
//! control plane. A request loads it once and finishes on it even if a newer one is published.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::access_log::AccessLog;
use crate::config::{Action, Conditions, Config, FixedResponse, Override, Redirect};
use crate::group::{Group, GroupStats, Target};
use crate::service::Service;
use crate::split::{Split, FULL_WEIGHT};
use crate::upstream::Upstream;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("access log {path}: {source}")]
    AccessLog {
        path: String,
        source: std::io::Error,
    },
}

#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub config: Arc<Config>,
    /// Routes by listener name, in priority order.
    pub routes: HashMap<String, Vec<Route>>,
    pub services: BTreeMap<String, Arc<Service>>,
    pub tls: HashMap<String, Arc<rustls::ServerConfig>>,
    /// Present when a listener has `client_auth`: see `tls::client_auth::ClientCerts`.
    pub client_certs: Option<Arc<crate::tls::client_auth::ClientCerts>>,
    pub access_log: Option<AccessLog>,
    /// Requests no route matched, per listener.
    pub unmatched: HashMap<String, Arc<RouteStats>>,
}

#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub conditions: Conditions,
    pub action: RouteAction,
    pub overrides: Vec<Override>,
    /// Boxed: most routes have none, and a route is read on every request.
    pub transform: Option<Box<crate::transform::Transform>>,
    pub stats: Arc<RouteStats>,
}

/// Answers by status class, per listener and route (kept across snapshots by name), and the
/// requests among them that failed through the client's fault.
#[derive(Debug, Default)]
pub struct RouteStats {
    /// By class (index 0 = 1xx … 4 = 5xx), striped by thread (`metrics::Striped`).
    responses: crate::metrics::Striped<[std::sync::atomic::AtomicU64; 5]>,
    pub client_errors: std::sync::atomic::AtomicU64,
}

impl RouteStats {
    pub fn record(&self, status: u16) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.responses.mine()[class].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Answers by class so far: index 0 = 1xx … 4 = 5xx.
    pub fn responses(&self) -> [u64; 5] {
        std::array::from_fn(|i| {
            self.responses
                .each()
                .map(|r| r[i].load(std::sync::atomic::Ordering::Relaxed))
                .sum()
        })
    }
}

/// The control plane's traffic state of one service, as the snapshot needs it.
#[derive(Debug, Clone, Default)]
pub struct ServiceTraffic {
    /// `None`: the config's split.
    pub split: Option<Split>,
    pub stable: Option<String>,
    pub candidate: Option<String>,
    /// An A/B test's rules: matching requests go to the candidate, whatever the split.
    pub ab: Vec<Override>,
    /// A rollout's mirror: copies of this share (basis points) of requests to this group.
    pub mirror: Option<(String, u32)>,
}

#[derive(Debug)]
pub enum RouteAction {
    Forward(Arc<Service>),
    Fixed(FixedResponse),
    Redirect(Redirect),
}

impl Snapshot {
    /// The access log a snapshot of `config` writes to: the running writer (and its
    /// counters) when the settings are the same, else a new one. Opened apart from
    /// [`Snapshot::build`] so that the one step that can fail comes before a change is
    /// recorded, as binding a listener does: once the store holds a configuration, building
    /// its snapshot cannot fail.
    pub fn access_log_for(
        config: &Config,
        prev: Option<&Snapshot>,
    ) -> Result<Option<AccessLog>, SnapshotError> {
        let Some(c) = &config.access_log else {
            return Ok(None);
        };
        if let Some(running) = prev.and_then(|p| p.access_log.as_ref()) {
            if *running.config == *c {
                return Ok(Some(running.clone()));
            }
        }
        AccessLog::start(c.clone())
            .map(Some)
            .map_err(|source| SnapshotError::AccessLog {
                path: c
                    .path
                    .as_ref()
                    .map_or("stdout".into(), |p| p.display().to_string()),
                source,
            })
    }

    /// Builds a snapshot for `config` with the given splits (by service; a missing one takes
    /// the config's), reusing targets, counters and pools of `prev` by name so that health,
    /// in-flight counts and warm connections carry over.
    pub fn build(
        config: Arc<Config>,
        traffic: &HashMap<String, ServiceTraffic>,
        prev: Option<&Snapshot>,
        generation: u64,
        access_log: Option<AccessLog>,
    ) -> Snapshot {
        let mut services = BTreeMap::new();
        for s in &config.services {
            let old = prev.and_then(|p| p.services.get(&s.name));
            let t = traffic.get(&s.name);
            let split = t.and_then(|t| t.split.as_ref()).unwrap_or(&s.split);
            let groups: Vec<Arc<Group>> = s
                .groups
                .iter()
                .map(|g| {
                    let old = old.and_then(|o| o.group(&g.name));
                    let upstream = Upstream {
                        protocol: g.protocol,
                        connect_timeout: config.timeouts.connect,
                        tls: g.tls.as_ref().map(|t| t.client.clone()),
                    };
                    // A target keeps its pooled connections only while they were opened the
                    // way the group now connects: a changed protocol or TLS (turned on, a new
                    // CA or client certificate) starts it afresh, so no request goes out on
                    // a connection the new settings would not have made.
                    let reusable = old.filter(|o| {
                        (o.upstream.protocol, &o.upstream.tls) == (upstream.protocol, &upstream.tls)
                    });
                    let targets = g
                        .targets
                        .iter()
                        .map(|addr| {
                            reusable
                                .and_then(|o| o.target(addr))
                                .cloned()
                                .unwrap_or_else(|| {
                                    let t = Arc::new(Target::new(addr.clone()));
                                    // Only a target that joins a running instance warms up.
                                    if prev.is_none() {
                                        t.settle();
                                    }
                                    t
                                })
                        })
                        .collect();
                    let stats =
                        old.map_or_else(|| Arc::new(GroupStats::default()), |o| o.stats.clone());
                    Arc::new(
                        Group::new(g.name.clone(), targets, upstream, stats)
                            .with_slow_start(s.slow_start),
                    )
                })
                .collect();
            let mirror = mirror_of(s, t, &groups, old.map(AsRef::as_ref));
            services.insert(
                s.name.clone(),
                Arc::new(
                    Service::new(
                        s.name.clone(),
                        groups,
                        split,
                        t.and_then(|t| t.stable.as_deref()).or(split.active()),
                        t.and_then(|t| t.candidate.as_deref()),
                        s.balance,
                        s.request_timeout.unwrap_or(config.timeouts.request),
                        s.passive,
                        s.stickiness.clone(),
                    )
                    .with_ab(t.map_or_else(Vec::new, |t| t.ab.clone()))
                    .with_mirror(mirror),
                ),
            );
        }
        debug_assert!(services
            .values()
            .all(|s| s.weights.iter().sum::<u32>() == FULL_WEIGHT));

        let mut routes: HashMap<String, Vec<Route>> = HashMap::new();
        for l in &config.listeners {
            let on_listener = config.routes.iter().filter(|r| {
                r.listeners
                    .as_ref()
                    .is_none_or(|ls| ls.iter().any(|n| n == &l.name))
            });
            let table = on_listener
                .map(|r| Route {
                    name: r.name.clone(),
                    conditions: r.conditions.clone(),
                    action: match &r.action {
                        Action::Forward { service } => {
                            RouteAction::Forward(services[service].clone())
                        }
                        Action::Fixed(f) => RouteAction::Fixed(f.clone()),
                        Action::Redirect(r) => RouteAction::Redirect(r.clone()),
                    },
                    overrides: r.overrides.clone(),
                    transform: r.transform.clone().map(Box::new),
                    stats: prev
                        .and_then(|p| p.routes.get(&l.name))
                        .and_then(|rs| rs.iter().find(|x| x.name == r.name))
                        .map_or_else(Default::default, |x| x.stats.clone()),
                })
                .collect();
            routes.insert(l.name.clone(), table);
        }

        // A traffic change keeps the config object and so the loaded certificates; a reload
        // reads the files again (that is how certificates are rotated).
        let (tls, client_certs) = match prev {
            Some(p) if Arc::ptr_eq(&p.config, &config) => (p.tls.clone(), p.client_certs.clone()),
            _ => {
                let mut tls = HashMap::new();
                for l in config.listeners.iter().filter(|l| l.is_tls()) {
                    let keys = l.certificates.iter().map(|c| &c.loaded);
                    let config = crate::tls::server_config(keys, &l.tls, l.client_auth.as_ref());
                    tls.insert(l.name.clone(), config);
                }
                let mtls = config
                    .listeners
                    .iter()
                    .filter_map(|l| Some((l.name.as_str(), l.client_auth.as_ref()?)));
                let certs = crate::tls::client_auth::ClientCerts::of(mtls).map(Arc::new);
                (tls, certs)
            }
        };

        let unmatched = config
            .listeners
            .iter()
            .map(|l| {
                let kept = prev.and_then(|p| p.unmatched.get(&l.name)).cloned();
                (l.name.clone(), kept.unwrap_or_default())
            })
            .collect();
        Snapshot {
            generation,
            config,
            routes,
            services,
            tls,
            client_certs,
            access_log,
            unmatched,
        }
    }

    /// Every service's mirror in this snapshot.
    pub fn mirrors(&self) -> impl Iterator<Item = (&str, &crate::mirror::Mirror)> {
        self.services
            .values()
            .filter_map(|s| Some((s.name.as_str(), s.mirror.as_ref()?)))
    }

    /// Every (service, group, target) in this snapshot.
    pub fn targets(&self) -> impl Iterator<Item = (&str, &str, &Arc<Target>)> {
        self.services.values().flat_map(|s| {
            s.groups.iter().flat_map(move |g| {
                g.targets
                    .iter()
                    .map(move |t| (s.name.as_str(), g.name.as_str(), t))
            })
        })
    }
}

/// A service's mirror: a rollout's mirror steps' (to its candidate) or else the
/// configuration's `group`, with the settings of `[service.mirror]` (or the defaults). The
/// lane — queue, dispatcher, counters, connections — is the previous snapshot's while its
/// group and queue settings stay, so a publish neither drops queued copies nor resets the
/// counts (another group gets a lane, and connections, of its own).
fn mirror_of(
    s: &crate::config::ServiceConfig,
    t: Option<&ServiceTraffic>,
    groups: &[Arc<Group>],
    old: Option<&Service>,
) -> Option<crate::mirror::Mirror> {
    let settings = s.mirror.clone().unwrap_or_default();
    let (group, share) = match t.and_then(|t| t.mirror.as_ref()) {
        Some((g, share)) => (g.clone(), *share),
        None => (settings.group.clone()?, settings.share),
    };
    let group = groups.iter().find(|g| g.name == group)?.clone();
    if share == 0 {
        return None;
    }
    let lane = old
        .and_then(|o| o.mirror.as_ref())
        .filter(|m| m.group.name == group.name)
        .map(|m| m.lane.clone())
        .filter(|l| (l.queue, l.concurrency) == (settings.queue, settings.concurrency))
        .or_else(|| crate::mirror::Lane::start(settings.queue, settings.concurrency))?;
    Some(crate::mirror::Mirror::new(
        group,
        share,
        Arc::new(settings),
        lane,
    ))
}
