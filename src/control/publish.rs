//! Publishing: the state becomes one new snapshot, swapped in whole; health checks follow
//! it and removed targets drain.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use super::{ControlError, Controller, State, Traffic};
use crate::access_log::AccessLog;
use crate::config::{Glob, GroupRef, Override, OverrideWhen};
use crate::rollout::{AbMatch, Rollout};
use crate::snapshot::{ServiceTraffic, Snapshot};

impl Controller {
    /// Builds and swaps in a snapshot of the current state; starts and stops health checks
    /// to match, and lets removed targets drain.
    pub(super) fn publish(&self, state: &mut State) -> Result<u64, ControlError> {
        let log = Snapshot::access_log_for(&state.config, Some(&self.snapshots.load()))?;
        Ok(self.publish_with(state, log))
    }

    /// [`Controller::publish`] with the access log already opened (by `apply`, before it
    /// recorded the configuration): it cannot fail.
    pub(super) fn publish_with(&self, state: &mut State, log: Option<AccessLog>) -> u64 {
        let prev = self.snapshots.load_full();
        let generation = state.generation + 1;
        let next = Arc::new(Snapshot::build(
            state.config.clone(),
            &view(&state.traffic, &state.rollouts),
            Some(&prev),
            generation,
            log,
        ));
        self.snapshots.store(next.clone());
        state.generation = generation;
        state.health.reconcile(&next);
        drain_removed(&prev, &next);
        self.traffic_moved(state, &prev, &next);
        generation
    }

    /// Groups that lost all their traffic with this snapshot (a switch, a rollback, an
    /// abort): HTTP/2 clients get a GOAWAY, and the group's open tunnels keep running for
    /// the service's `drain_timeout`, then are cut — unless the group takes traffic again
    /// first.
    fn traffic_moved(&self, state: &State, prev: &Snapshot, next: &Snapshot) {
        let mut emptied = false;
        for (name, s) in &next.services {
            let old = prev.services.get(name);
            let before = old.map(|b| b.split());
            // Stable at 0 beside a baseline (a canary past 50 %) is still the rollout's
            // stable group: not emptied.
            let stable_of_rollout = state
                .rollouts
                .get(name)
                .filter(|r| r.status.is_active())
                .map(|r| r.stable.as_str());
            // An A/B test's candidate takes traffic at weight 0, through its rules.
            let ab_candidate = old
                .filter(|o| !o.ab.is_empty())
                .and_then(|o| o.candidate.map(|i| o.groups[i].name.as_str()));
            for (g, w) in s.groups.iter().zip(&s.weights) {
                let was = before.as_ref().map_or(0, |b| b.weight(&g.name));
                let took_ab = ab_candidate == Some(g.name.as_str())
                    && s.candidate.map(|i| s.groups[i].name.as_str()) != ab_candidate;
                if *w > 0 || Some(g.name.as_str()) == stable_of_rollout {
                    if was == 0 {
                        g.stats.tunnels.end_drain();
                    }
                    continue;
                }
                if was == 0 && !took_ab {
                    continue;
                }
                emptied = true;
                let delay = next
                    .config
                    .service(name)
                    .map_or(Duration::from_secs(300), |c| c.drain_timeout);
                let tunnels = g.stats.tunnels.clone();
                let until = self.clock.unix_ms() + delay.as_millis() as i64;
                let drain = tunnels.begin_drain(until);
                let (service, group) = (name.clone(), g.name.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let cut = tunnels.cut_if(drain);
                    if cut > 0 {
                        tracing::info!(%service, %group, tunnels = cut, "drain_timeout over: tunnels to a group without traffic cut");
                    }
                });
            }
        }
        if emptied {
            for l in state.listeners.values() {
                l.goaway();
            }
        }
    }
}

/// What the snapshot needs of the traffic state: the split, and the stable and candidate
/// groups (a candidate only while its rollout is active).
pub(super) fn view(
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
                ab: active.map_or_else(Vec::new, |r| ab_rules(&r.strategy.ab_match)),
                mirror: active
                    .filter(|r| r.mirror_share() > 0)
                    .map(|r| (r.candidate.clone(), r.mirror_share())),
            };
            (name.clone(), v)
        })
        .collect()
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

/// An A/B test's rules as the data plane's overrides to the candidate. The names were
/// checked when the strategy was (a header name that is not one matches nothing).
fn ab_rules(rules: &[AbMatch]) -> Vec<Override> {
    let globs = |v: &[String]| v.iter().cloned().map(Glob).collect();
    rules
        .iter()
        .filter_map(|m| {
            let when = match m {
                AbMatch::Header { name, values } => OverrideWhen::Header(
                    http::HeaderName::from_bytes(name.as_bytes()).ok()?,
                    globs(values),
                ),
                AbMatch::Cookie { name, values } => {
                    OverrideWhen::Cookie(name.clone(), globs(values))
                }
            };
            Some(Override {
                to: GroupRef::Candidate,
                when,
            })
        })
        .collect()
}
