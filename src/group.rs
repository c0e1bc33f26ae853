//! Target groups: the targets that run one version, their health as seen by active checks and
//! passive ejection, and the choice of a target for each request. Everything the hot path
//! touches here is an atomic; the control plane shares no lock with it.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::uri::Authority;

use crate::metrics::{ms_at, now_ms, Striped};
use crate::upstream::{Pool, Upstream};

/// `host:port`, where host is an IP address or a DNS name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct TargetAddr(pub String);

impl std::fmt::Display for TargetAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a group picks the target for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Balance {
    LeastOutstanding,
    RoundRobin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Not checked yet (or no active check configured): routable.
    Unknown = 0,
    Healthy = 1,
    Unhealthy = 2,
}

/// One upstream `host:port`. Kept across snapshots (by address) so that health, ejection and
/// in-flight counts survive reloads and switches.
#[derive(Debug)]
pub struct Target {
    pub addr: TargetAddr,
    pub authority: Authority,
    pub pool: Pool,
    outstanding: AtomicU32,
    health: AtomicU8,
    consecutive_failures: AtomicU32,
    ejected_until_ms: AtomicU64,
    /// When the target joined or last came back (unix-epoch ms of the data plane's clock):
    /// under a group's `slow_start` its share grows from there (see `Group::pick`).
    warm_from_ms: AtomicU64,
    /// Requests sent to this target (for /metrics; striped, see `Striped`).
    pub requests: Striped<AtomicU64>,
}

impl Target {
    pub fn new(addr: TargetAddr) -> Target {
        let authority = addr.0.parse().expect("validated target address");
        Target {
            pool: Pool::new(&addr.0),
            addr,
            authority,
            outstanding: AtomicU32::new(0),
            health: AtomicU8::new(Health::Unknown as u8),
            consecutive_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            warm_from_ms: AtomicU64::new(now_ms()),
            requests: Striped::default(),
        }
    }

    /// The share of its full traffic the target takes under `slow_start` at `now`: from
    /// near 0 when it joined or came back, linearly to 1 at the end of `slow_start`.
    pub fn warmth(&self, slow_start: Duration, now: u64) -> f64 {
        let from = self.warm_from_ms.load(Relaxed);
        let span = slow_start.as_millis() as u64;
        if span == 0 || from == SETTLED || now >= from.saturating_add(span) {
            return 1.0;
        }
        // A floor, so that a target that just came back is tried at all (ALB starts low too).
        (now.saturating_sub(from) as f64 / span as f64).max(0.02)
    }

    pub fn health(&self) -> Health {
        match self.health.load(Relaxed) {
            1 => Health::Healthy,
            2 => Health::Unhealthy,
            _ => Health::Unknown,
        }
    }

    /// A target of the first configuration: it does not warm up (the process started, the
    /// target did not just join).
    pub fn settle(&self) {
        self.warm_from_ms.store(SETTLED, Relaxed);
    }

    /// A target that becomes healthy from unhealthy warms up again (see `warmth`).
    pub fn set_health(&self, h: Health) {
        let before = self.health.swap(h as u8, Relaxed);
        if h == Health::Healthy && before == Health::Unhealthy as u8 {
            self.warm_from_ms.store(now_ms(), Relaxed);
        }
    }

    pub fn outstanding(&self) -> u32 {
        self.outstanding.load(Relaxed)
    }

    pub fn ejected(&self, now: u64) -> bool {
        self.ejected_until_ms.load(Relaxed) > now
    }

    /// May new requests go here? Active checks say not unhealthy and passive ejection is over.
    pub fn routable(&self, now: u64) -> bool {
        self.health() != Health::Unhealthy && !self.ejected(now)
    }

    /// Counts the request as in flight until the guard is dropped (with the response body).
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.outstanding.fetch_add(1, Relaxed);
        self.requests.add(1);
        InFlight(self.clone())
    }

    pub fn record_success(&self) {
        // Read first: the common case writes nothing, keeping the cache line shared.
        if self.consecutive_failures.load(Relaxed) != 0 {
            self.consecutive_failures.store(0, Relaxed);
        }
    }

    /// Returns true when this failure ejected the target.
    pub fn record_failure(&self, limit: u32, ejection: Duration) -> bool {
        if limit == 0 {
            return false;
        }
        let n = self.consecutive_failures.fetch_add(1, Relaxed) + 1;
        if n >= limit {
            self.consecutive_failures.store(0, Relaxed);
            let back = now_ms() + ejection.as_millis() as u64;
            self.ejected_until_ms.store(back, Relaxed);
            // It comes back at `back` and warms up from there.
            self.warm_from_ms.store(back, Relaxed);
            return true;
        }
        false
    }
}

/// A request in flight to a target; least-outstanding balancing reads the count.
/// `warm_from_ms` of a target that is not warming up.
const SETTLED: u64 = u64::MAX;

#[derive(Debug)]
pub struct InFlight(Arc<Target>);

impl InFlight {
    pub fn target(&self) -> &Arc<Target> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Relaxed);
    }
}

/// Upper bounds (seconds) of the /metrics latency histogram.
pub const LATENCY_BOUNDS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Counters per group, recorded by the hot path: totals for /metrics, and per-second
/// windows for analysis and the rollback guard.
#[derive(Debug, Default)]
pub struct GroupStats {
    pub window: crate::metrics::Window,
    /// The totals every request adds to, striped by thread (`Striped`): read by summing.
    totals: Striped<Totals>,
    pub connect_failures: AtomicU64,
    pub timeouts: AtomicU64,
    pub resets: AtomicU64,
    /// Requests failed by the client (stalled, aborted, broken or too large upload): counted
    /// apart from the answers, never as the version's failures.
    pub client_errors: AtomicU64,
    /// Open WebSocket / Upgrade tunnels, drained when the group loses its traffic.
    pub tunnels: Arc<crate::tunnels::Tunnels>,
    /// The group's failed answers by fingerprint (the `new_errors` check).
    pub fingerprints: crate::fingerprint::Table,
}

/// A group's totals for /metrics and the observer, one stripe's share.
#[derive(Debug, Default)]
struct Totals {
    requests: AtomicU64,
    /// Responses by class: index 0 = 1xx … 4 = 5xx (including switchyard's own 5xx).
    responses: [AtomicU64; 5],
    /// Cumulative latency histogram (bounds in `LATENCY_BOUNDS`, then +Inf).
    latency: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    latency_sum_us: AtomicU64,
}

impl GroupStats {
    /// A request taken by this group (counted first, whatever its fate).
    pub fn count_request(&self) {
        self.totals.mine().requests.fetch_add(1, Relaxed);
    }

    /// Requests taken so far.
    pub fn requests(&self) -> u64 {
        self.totals.each().map(|t| t.requests.load(Relaxed)).sum()
    }

    /// The cumulative latency histogram's counts per bucket (`LATENCY_BOUNDS`, then +Inf)
    /// and the sum of latencies in µs.
    pub fn latency(&self) -> ([u64; LATENCY_BOUNDS.len() + 1], u64) {
        let mut per = [0; LATENCY_BOUNDS.len() + 1];
        let mut sum = 0;
        for t in self.totals.each() {
            for (n, b) in per.iter_mut().zip(&t.latency) {
                *n += b.load(Relaxed);
            }
            sum += t.latency_sum_us.load(Relaxed);
        }
        (per, sum)
    }

    /// A request that failed through the client's fault, at `at`: in no status class and
    /// no latency, so that neither the guard nor an analysis sees it.
    pub fn record_client_error(&self, at: Instant) {
        self.client_errors.fetch_add(1, Relaxed);
        self.window.record_client_error(ms_at(at) / 1000);
    }

    /// One answer to a request of this group, from the target or from switchyard, that
    /// took `took` and arrived at `at` (the request's start plus `took`).
    pub fn record(
        &self,
        status: u16,
        took: Duration,
        at: Instant,
        failure: Option<crate::metrics::Failure>,
    ) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        let totals = self.totals.mine();
        totals.responses[class].fetch_add(1, Relaxed);
        let secs = took.as_secs_f64();
        let bucket = LATENCY_BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BOUNDS.len());
        totals.latency[bucket].fetch_add(1, Relaxed);
        totals
            .latency_sum_us
            .fetch_add(took.as_micros() as u64, Relaxed);
        self.window.record(ms_at(at) / 1000, status, took, failure);
    }

    pub fn snapshot(&self) -> GroupCounts {
        GroupCounts {
            requests: self.requests(),
            responses: std::array::from_fn(|i| {
                self.totals
                    .each()
                    .map(|t| t.responses[i].load(Relaxed))
                    .sum()
            }),
            connect_failures: self.connect_failures.load(Relaxed),
            timeouts: self.timeouts.load(Relaxed),
            resets: self.resets.load(Relaxed),
            client_errors: self.client_errors.load(Relaxed),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct GroupCounts {
    pub requests: u64,
    pub responses: [u64; 5],
    pub connect_failures: u64,
    pub timeouts: u64,
    pub resets: u64,
    pub client_errors: u64,
}

/// A group as the data plane sees it in one snapshot.
#[derive(Debug)]
pub struct Group {
    pub name: String,
    pub targets: Vec<Arc<Target>>,
    pub upstream: Upstream,
    pub stats: Arc<GroupStats>,
    /// The service's `slow_start`: zero, no warming.
    pub slow_start: Duration,
    rr: AtomicUsize,
}

impl Group {
    pub fn new(
        name: String,
        targets: Vec<Arc<Target>>,
        upstream: Upstream,
        stats: Arc<GroupStats>,
    ) -> Group {
        Group {
            name,
            targets,
            upstream,
            stats,
            slow_start: Duration::ZERO,
            rr: AtomicUsize::new(0),
        }
    }

    /// With `slow_start` (see `Target::warmth`).
    pub fn with_slow_start(mut self, slow_start: Duration) -> Group {
        self.slow_start = slow_start;
        self
    }

    pub fn has_routable(&self, now: u64) -> bool {
        self.targets.iter().any(|t| t.routable(now))
    }

    pub fn healthy_count(&self, now: u64) -> usize {
        self.targets.iter().filter(|t| t.routable(now)).count()
    }

    pub fn target(&self, addr: &TargetAddr) -> Option<&Arc<Target>> {
        self.targets.iter().find(|t| &t.addr == addr)
    }

    /// Picks a routable target other than `avoid` (the one a retry is moving away from).
    pub fn pick(&self, balance: Balance, avoid: Option<&Target>, now: u64) -> Option<&Arc<Target>> {
        let n = self.targets.len();
        if n == 0 {
            return None;
        }
        // Rotating the starting point spreads ties (and round-robin) across targets.
        let start = self.rr.fetch_add(1, Relaxed);
        let usable = |t: &&Arc<Target>| {
            t.routable(now) && !avoid.is_some_and(|a| std::ptr::eq(a, t.as_ref()))
        };
        let rotated = (0..n).map(|i| &self.targets[(start + i) % n]);
        // Under slow start a warming target takes a request only with the chance its warmth
        // gives (one draw per request and target), so its share grows linearly under both
        // rules; if every usable target declined, the first usable takes it.
        let warm = |t: &&Arc<Target>| {
            self.slow_start.is_zero() || {
                let w = t.warmth(self.slow_start, now);
                w >= 1.0 || fastrand::f64() < w
            }
        };
        let picked = match balance {
            Balance::RoundRobin => rotated.clone().filter(usable).find(warm),
            Balance::LeastOutstanding => rotated
                .clone()
                .filter(usable)
                .filter(warm)
                .min_by_key(|t| t.outstanding()),
        };
        picked.or_else(|| rotated.clone().find(usable))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::UpstreamProtocol;

    /// Two targets, `b` warming since `from` under a 10 s slow start.
    fn pair(from: u64) -> Group {
        let target = |a: &str| Arc::new(Target::new(TargetAddr(a.into())));
        let (a, b) = (target("127.0.0.1:1"), target("127.0.0.1:2"));
        a.warm_from_ms.store(0, Relaxed);
        b.warm_from_ms.store(from, Relaxed);
        let upstream = Upstream {
            protocol: UpstreamProtocol::Http1,
            connect_timeout: Duration::from_secs(1),
            tls: None,
        };
        Group::new("g".into(), vec![a, b], upstream, Default::default())
            .with_slow_start(Duration::from_secs(10))
    }

    /// `b`'s share of 20,000 picks at `now`.
    fn share_of_b(g: &Group, balance: Balance, now: u64) -> f64 {
        let n = 20_000;
        let b = (0..n)
            .filter(|_| g.pick(balance, None, now).unwrap().addr.0 == "127.0.0.1:2")
            .count();
        b as f64 / f64::from(n)
    }

    #[test]
    fn a_warming_targets_share_grows_linearly_under_both_rules() {
        let g = pair(100_000);
        for balance in [Balance::RoundRobin, Balance::LeastOutstanding] {
            for (elapsed_s, expected) in [(0.0, 0.01), (2.5, 0.125), (5.0, 0.25), (10.0, 0.5)] {
                let now = 100_000 + (elapsed_s * 1000.0) as u64;
                let share = share_of_b(&g, balance, now);
                assert!(
                    (share - expected).abs() < 0.03,
                    "{balance:?} at {elapsed_s} s: share {share:.3}, expected {expected}"
                );
            }
        }
    }

    #[test]
    fn a_target_back_from_unhealthy_or_an_ejection_warms_up_again() {
        let g = pair(0);
        let b = &g.targets[1];
        let now = now_ms();
        assert_eq!(b.warmth(g.slow_start, now + 20_000), 1.0);
        b.set_health(Health::Unhealthy);
        b.set_health(Health::Healthy);
        assert!(b.warmth(g.slow_start, now_ms()) < 0.1);
        let c = &g.targets[0];
        assert!(c.record_failure(1, Duration::from_secs(5)));
        let back = now_ms() + 5_000;
        assert!(c.warmth(g.slow_start, back + 1_000) < 0.2);
        assert_eq!(c.warmth(g.slow_start, back + 10_000), 1.0);
    }
}
