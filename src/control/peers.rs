//! Fleet-wide judgement: the peers of this instance, and the fleet's traffic as the guard and
//! the analyses judge it.
//!
//! In a fleet every instance serves a share of the traffic, but only the leader judges a
//! candidate. The leader pulls each peer's per-second summaries from its admin API
//! (`GET /api/v1/fleet/seconds?from=S`, about every 250 ms, from the last second it has;
//! `control::fleet_seconds` is the answer) and keeps them for the 11 minutes the local window
//! keeps; [`Controller::windows`] adds them to the local window second by second (counters
//! summed, histograms merged). No metrics pass through the shared store. A peer that does
//! not answer keeps the seconds it sent, is shown stale with the error, and never holds up a
//! judgement: each peer has its own pull task, and a judgement only reads what the tasks have
//! already stored.
//!
//! A peer's seconds are on its own clock (`metrics::now_second` counts from its process
//! start): each answer carries the peer's `now_ms`, and the first answer fixes the shift, in
//! whole seconds, that maps the peer's seconds onto ours (nearest second; a peer that
//! restarted is noticed by its clock going back, and followed afresh).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use super::fleet_seconds::FleetSeconds;
use super::{Clock, Controller};
use crate::analysis::run::{Judged, Windows};
use crate::bounded::http::{call_as, ReadBody};
use crate::config::Scope;
use crate::fingerprint::{Kept, Tally};
use crate::metrics::{self, Second, Summary, SLOTS};
use crate::snapshot::Snapshot;

/// How often each peer is pulled.
const EVERY: Duration = Duration::from_millis(250);
/// How long one pull may take; a peer slower than that is stale until it answers again.
const TIMEOUT: Duration = Duration::from_secs(1);
/// The most seconds one pull asks for: a leader catching up on 11 minutes of a peer's busy
/// groups does it in pages (and the peer cuts a page shorter when its seconds weigh more
/// than a pull reads: `fleet_seconds`).
const PAGE: u64 = 60;
/// The seconds a peer's observed split is taken over, in its view.
const OBSERVED_SECONDS: u64 = 5;

/// Another instance of the fleet: its name and its admin API's address (`host:port`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub name: String,
    pub admin: String,
}

/// A peer as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerView {
    pub name: String,
    pub admin: String,
    /// When a pull last answered (unix ms); `None` before the first.
    pub last_pull_unix_ms: Option<i64>,
    /// Why the latest pull failed; `None` while the peer answers.
    pub stale: Option<String>,
    /// Per service, each group's share (0–1) of the peer's requests over its last few
    /// seconds; a service without requests there is left out.
    pub observed: BTreeMap<String, BTreeMap<String, f64>>,
}

/// Summaries being added to, by group name.
type Sums<'a, 'b> = [(&'a str, &'b mut Summary)];

/// What has been pulled from one peer.
#[derive(Debug, Default)]
struct Pulled {
    /// (service, group) → our second → the peer's counts in it.
    seconds: HashMap<(String, String), BTreeMap<u64, Second>>,
    /// (service, group) → the peer's fingerprints of failed answers, on our seconds.
    errors: HashMap<(String, String), Kept>,
    /// Our second minus the peer's, fixed by the first answer.
    shift: Option<i64>,
    /// The peer's second the next pull starts from.
    from: u64,
    last_pull_unix_ms: Option<i64>,
    stale: Option<String>,
}

impl Pulled {
    /// Takes in an answer that arrived at `local_ms` on our window clock.
    fn take(&mut self, answer: FleetSeconds, local_ms: u64, at_unix_ms: i64) {
        self.last_pull_unix_ms = Some(at_unix_ms);
        self.stale = None;
        if answer.now_second < self.from {
            // The peer's clock went back: it restarted. What it sent before is on another
            // clock; follow it afresh from all it has.
            *self = Pulled {
                last_pull_unix_ms: Some(at_unix_ms),
                ..Pulled::default()
            };
            return;
        }
        let shift = *self
            .shift
            .get_or_insert(((local_ms as f64 - answer.now_ms as f64) / 1000.0).round() as i64);
        for (service, groups) in answer.services {
            for (group, seconds) in groups {
                let kept = self.seconds.entry((service.clone(), group)).or_default();
                for s in seconds {
                    if let Ok(ours) = u64::try_from(s.second as i64 + shift) {
                        kept.insert(ours, s);
                    }
                }
            }
        }
        for (service, groups) in answer.errors {
            for (group, e) in groups {
                let kept = self.errors.entry((service.clone(), group)).or_default();
                kept.take(e, shift);
            }
        }
        let oldest = metrics::now_second().saturating_sub(SLOTS);
        for kept in self.seconds.values_mut() {
            *kept = kept.split_off(&oldest);
        }
        self.seconds.retain(|_, kept| !kept.is_empty());
        self.errors
            .values_mut()
            .for_each(|k| k.forget_before(oldest));
        self.errors.retain(|_, kept| !kept.is_empty());
        // Catching up, the next page; else the current second, still growing, and the one
        // before (a request that ended just before the second turned may be counted a
        // moment after the answer was read): both come again.
        self.from = if answer.to < answer.now_second {
            answer.to + 1
        } else {
            answer.now_second.saturating_sub(1)
        };
    }

    /// Adds the peer's seconds `[from, to]` of `service`'s groups to their summaries; true
    /// when it had any.
    fn add_to(&self, service: &str, groups: &mut Sums, from: u64, to: u64) -> bool {
        let mut any = false;
        for (group, summary) in groups.iter_mut() {
            let key = (service.to_string(), group.to_string());
            for s in self
                .seconds
                .get(&key)
                .into_iter()
                .flat_map(|k| within(k, from, to))
            {
                summary.add(s);
                any = true;
            }
        }
        any
    }

    /// Each group's share of the service's requests in our seconds `[from, to]`.
    fn observed(&self, from: u64, to: u64) -> BTreeMap<String, BTreeMap<String, f64>> {
        let mut counts: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for ((service, group), kept) in &self.seconds {
            let n: u64 = within(kept, from, to).map(|s| s.requests).sum();
            *counts
                .entry(service.clone())
                .or_default()
                .entry(group.clone())
                .or_default() += n;
        }
        counts
            .into_iter()
            .filter_map(|(service, groups)| {
                let total: u64 = groups.values().sum();
                (total > 0).then(|| {
                    let shares = groups
                        .into_iter()
                        .map(|(g, n)| (g, n as f64 / total as f64))
                        .collect();
                    (service, shares)
                })
            })
            .collect()
    }
}

/// The seconds `[from, to]` of `kept`; none when `from` is past `to` (a guard that began
/// this second asks from the next one).
fn within(kept: &BTreeMap<u64, Second>, from: u64, to: u64) -> impl Iterator<Item = &Second> {
    (from <= to)
        .then(|| kept.range(from..=to).map(|(_, s)| s))
        .into_iter()
        .flatten()
}

/// A followed peer: what was pulled, and the task pulling it.
struct Followed {
    peer: Peer,
    pulled: Arc<Mutex<Pulled>>,
    task: tokio::task::AbortHandle,
}

/// Pulls by (peer, result): `ok` or `failed`.
type Pulls = BTreeMap<(String, &'static str), u64>;

/// The peers this instance follows; empty (and idle) in single-instance mode.
pub(super) struct Peers {
    snapshots: Arc<ArcSwap<Snapshot>>,
    clock: Clock,
    followed: Mutex<Vec<Followed>>,
    pulls: Arc<Mutex<Pulls>>,
}

impl Peers {
    pub(super) fn new(snapshots: Arc<ArcSwap<Snapshot>>, clock: Clock) -> Peers {
        Peers {
            snapshots,
            clock,
            followed: Mutex::new(Vec::new()),
            pulls: Arc::default(),
        }
    }

    /// Follows exactly `peers`: a peer no longer in the set is forgotten (its task stopped,
    /// its seconds dropped), a new one is pulled from now on, one still there goes on.
    pub(super) fn set(&self, peers: Vec<Peer>) {
        let mut followed = self.followed.lock().expect("peers lock");
        followed.retain(|f| {
            let kept = peers.contains(&f.peer);
            if !kept {
                f.task.abort();
            }
            kept
        });
        for peer in peers {
            if followed.iter().any(|f| f.peer == peer) {
                continue;
            }
            let pulled = Arc::new(Mutex::new(Pulled::default()));
            let task = tokio::spawn(follow(
                peer.clone(),
                pulled.clone(),
                self.snapshots.clone(),
                self.clock.clone(),
                self.pulls.clone(),
            ));
            followed.push(Followed {
                peer,
                pulled,
                task: task.abort_handle(),
            });
        }
    }

    /// Adds every peer's seconds `[from, to]` of `service`'s groups; the number of peers
    /// that had any.
    fn add_to(&self, service: &str, groups: &mut Sums, from: u64, to: u64) -> usize {
        let followed = self.followed.lock().expect("peers lock");
        followed
            .iter()
            .filter(|f| {
                let pulled = f.pulled.lock().expect("peer lock");
                pulled.add_to(service, groups, from, to)
            })
            .count()
    }
}

impl Peers {
    /// Adds every peer's fingerprints of `service`'s groups in seconds `[from, to]` to their
    /// tallies; the number of peers that had any.
    pub(super) fn add_errors(
        &self,
        service: &str,
        groups: &mut [(&str, &mut Tally)],
        (from, to): (u64, u64),
    ) -> usize {
        let followed = self.followed.lock().expect("peers lock");
        followed
            .iter()
            .filter(|f| {
                let pulled = f.pulled.lock().expect("peer lock");
                let mut any = false;
                for (group, tally) in groups.iter_mut() {
                    if let Some(k) = pulled.errors.get(&(service.to_string(), group.to_string())) {
                        tally.add(&k.export(from, to));
                        any = true;
                    }
                }
                any
            })
            .count()
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        self.set(Vec::new());
    }
}

/// Pulls `peer` every [`EVERY`] until aborted. A failed pull leaves the seconds as they were
/// and marks the peer stale; the next tick tries again.
async fn follow(
    peer: Peer,
    pulled: Arc<Mutex<Pulled>>,
    snapshots: Arc<ArcSwap<Snapshot>>,
    clock: Clock,
    pulls: Arc<Mutex<Pulls>>,
) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // Pages follow each other at once until the peer's current second is reached.
        let mut more = true;
        while more {
            let from = pulled.lock().expect("peer lock").from;
            let result = fetch(&peer, from, read_token(&snapshots.load()).as_deref()).await;
            let local_ms = metrics::now_ms();
            let outcome = match result {
                Ok(answer) => {
                    // (An answer that does not move forward ends the pages until the next tick.)
                    more = answer.to < answer.now_second && answer.to >= from;
                    let mut p = pulled.lock().expect("peer lock");
                    p.take(answer, local_ms, clock.unix_ms());
                    "ok"
                }
                Err(e) => {
                    tracing::debug!(peer = %peer.name, error = %e, "peer pull failed");
                    more = false;
                    pulled.lock().expect("peer lock").stale = Some(e);
                    "failed"
                }
            };
            *pulls
                .lock()
                .expect("pulls lock")
                .entry((peer.name.clone(), outcome))
                .or_default() += 1;
        }
    }
}

/// The token a pull sends: the fleet shares one configuration, so the first token with the
/// `read` scope — the unnamed `[admin] token` when there is one, as it comes first — is
/// accepted by every peer; none when the API is read-only (reads need no token then).
fn read_token(snap: &Snapshot) -> Option<String> {
    let admin = &snap.config.admin;
    admin
        .tokens
        .iter()
        .find(|t| t.scopes.allows(Scope::Read))
        .map(|t| t.secret.clone())
}

/// One pull: the peer's seconds from its second `from`.
async fn fetch(peer: &Peer, from: u64, token: Option<&str>) -> Result<FleetSeconds, String> {
    let url = format!(
        "http://{}/api/v1/fleet/seconds?from={from}&seconds={PAGE}",
        peer.admin
    );
    let answer = call_as(
        http::Method::GET,
        &url,
        token,
        None,
        TIMEOUT,
        ReadBody::Always,
    )
    .await
    .map_err(|e| e.to_string())?;
    let body = match answer.body {
        Some(Ok(body)) => body,
        Some(Err(e)) => return Err(format!("{url}: {e}")),
        None => bytes::Bytes::new(),
    };
    if !answer.status.is_success() {
        let said = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        return Err(format!("{url}: answered {}: {said}", answer.status));
    }
    serde_json::from_slice(&body).map_err(|e| format!("{url}: not a fleet answer: {e}"))
}

impl Controller {
    /// Follows exactly these peers (the fleet's other live instances); empty in
    /// single-instance mode, where nothing is pulled.
    pub fn set_peers(&self, peers: Vec<Peer>) {
        self.peers.set(peers);
    }

    /// Each followed peer: where it is, when it last answered, why it is stale, and the
    /// split it observed over its last few seconds.
    pub fn peer_views(&self) -> Vec<PeerView> {
        let now = metrics::now_second();
        let from = now.saturating_sub(OBSERVED_SECONDS - 1);
        let followed = self.peers.followed.lock().expect("peers lock");
        followed
            .iter()
            .map(|f| {
                let p = f.pulled.lock().expect("peer lock");
                PeerView {
                    name: f.peer.name.clone(),
                    admin: f.peer.admin.clone(),
                    last_pull_unix_ms: p.last_pull_unix_ms,
                    stale: p.stale.clone(),
                    observed: p.observed(from, now),
                }
            })
            .collect()
    }

    /// Pulls of peers so far by (peer, result), for /metrics.
    pub fn peer_pulls(&self) -> Vec<((String, &'static str), u64)> {
        let pulls = self.peers.pulls.lock().expect("pulls lock");
        pulls.iter().map(|(k, n)| (k.clone(), *n)).collect()
    }

    /// Each group's share of `service`'s requests over the last few seconds, summed over
    /// this instance and every peer (`status`: the observed split of the whole fleet).
    pub fn fleet_observed(&self, service: &str) -> Option<BTreeMap<String, f64>> {
        let snap = self.snapshot();
        let s = snap.services.get(service)?;
        let now = metrics::now_second();
        let (from, to) = (now.saturating_sub(OBSERVED_SECONDS - 1), now);
        let mut sums: Vec<(String, metrics::Summary)> = s
            .groups
            .iter()
            .map(|g| (g.name.clone(), g.stats.window.summary(from, to)))
            .collect();
        {
            let mut refs: Vec<(&str, &mut metrics::Summary)> =
                sums.iter_mut().map(|(n, s)| (n.as_str(), s)).collect();
            self.peers.add_to(service, &mut refs, from, to);
        }
        let total: u64 = sums.iter().map(|(_, s)| s.requests).sum();
        (total > 0).then(|| {
            sums.into_iter()
                .map(|(g, s)| (g, s.requests as f64 / total as f64))
                .collect()
        })
    }

    /// What the guard and the built-in checks of a rollout of `service` judge: the stable
    /// and candidate groups' seconds, this instance's window plus every peer's — the one
    /// place the fleet's traffic is summed. Without peers, exactly the local window.
    pub fn windows(self: &Arc<Self>, service: &str, stable: &str, candidate: &str) -> Windows {
        let control = self.clone();
        let (service, stable, candidate) = (
            service.to_string(),
            stable.to_string(),
            candidate.to_string(),
        );
        Arc::new(move |window, since| {
            let (from, to) = metrics::last_range(window, since);
            control.judged(&service, &stable, &candidate, from, to)
        })
    }

    /// The seconds `[from, to]` of `service`'s stable and candidate groups, this instance's
    /// plus every peer's: what [`Controller::windows`] reads, for a caller that chooses the
    /// seconds itself (the guard reads from a fixed second to now, tick after tick). A
    /// peer's share arrives with its next pull (about every 250 ms), so it is counted in a
    /// later reading than this instance's.
    pub fn judged(
        &self,
        service: &str,
        stable: &str,
        candidate: &str,
        from: u64,
        to: u64,
    ) -> Option<Judged> {
        let snap = self.snapshot();
        let s = snap.services.get(service)?;
        let (sg, cg) = (s.group(stable)?, s.group(candidate)?);
        let mut stable_sum = sg.stats.window.summary(from, to);
        let mut candidate_sum = cg.stats.window.summary(from, to);
        let peers = self.peers.add_to(
            service,
            &mut [(candidate, &mut candidate_sum), (stable, &mut stable_sum)],
            from,
            to,
        );
        Some(Judged {
            candidate: candidate_sum,
            stable: stable_sum,
            instances: 1 + peers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn second(second: u64, requests: u64, errors: u64) -> Second {
        Second {
            second,
            requests,
            classes: [0, requests - errors, 0, 0, errors],
            failures: [0; 3],
            client_errors: 0,
            mirror: [0; 2],
            latency: vec![(10, requests as u32)],
        }
    }

    fn answer(now_ms: u64, seconds: Vec<Second>) -> FleetSeconds {
        let groups = BTreeMap::from([("green".to_string(), seconds)]);
        FleetSeconds {
            now_second: now_ms / 1000,
            to: now_ms / 1000,
            now_ms,
            services: BTreeMap::from([("shop".to_string(), groups)]),
            errors: BTreeMap::new(),
        }
    }

    #[test]
    fn a_peer_seconds_are_shifted_onto_ours_replaced_when_pulled_again_paged_and_forgotten_on_its_restart(
    ) {
        let mut p = Pulled::default();
        let ours = metrics::now_second() + 100;
        // The peer's clock is 0.3 s into its second 60 when ours is at the start of `ours`
        // plus 1 s: its second 60 is our `ours` (the nearest whole shift).
        let peer_now = 60_000 + 700;
        p.take(
            answer(peer_now, vec![second(60, 10, 1)]),
            ours * 1000 + 1000,
            1,
        );
        assert_eq!(p.shift, Some(ours as i64 - 60));
        assert_eq!(p.from, 59);
        // The still-growing second comes again with more: replaced, not added.
        p.take(
            answer(peer_now + 200, vec![second(60, 12, 2)]),
            ours * 1000 + 1200,
            2,
        );
        let mut s = Summary::default();
        assert!(p.add_to("shop", &mut [("green", &mut s)], ours, ours));
        assert_eq!((s.requests, s.classes[4], s.latency[10]), (12, 2, 12));
        assert_eq!(p.observed(ours, ours)["shop"]["green"], 1.0);
        // A page of a catch-up: the next pull asks from the second after it.
        let mut page = answer(peer_now + 300, vec![]);
        page.to = 30;
        p.take(page, ours * 1000 + 1300, 3);
        assert_eq!(p.from, 31);
        // Its clock went back: it restarted, and what it sent before is dropped.
        p.take(answer(3_000, vec![]), ours * 1000 + 1500, 4);
        assert!(p.seconds.is_empty() && p.shift.is_none() && p.from == 0);
        assert_eq!(p.last_pull_unix_ms, Some(4));
    }
}
