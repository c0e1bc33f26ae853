//! A service as the data plane sees it: its groups, the current split, which group is stable
//! and which is the candidate of a rollout, and how a request picks its group.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};

use crate::config::{PassiveHealth, Stickiness, StickyKey};
use crate::group::Balance;
use crate::group::Group;
use crate::split::{Split, FULL_WEIGHT};

#[derive(Debug)]
pub struct Service {
    pub name: String,
    pub groups: Vec<Arc<Group>>,
    /// Basis points per group, aligned with `groups`; sums to `FULL_WEIGHT`.
    pub weights: Vec<u32>,
    pub stable: Option<usize>,
    pub candidate: Option<usize>,
    /// Group indices in bucket order: the candidate first, so that the buckets below its
    /// weight are its own and a rising weight only ever moves buckets to it.
    order: Vec<usize>,
    pub balance: Balance,
    pub request_timeout: Duration,
    pub passive: PassiveHealth,
    pub stickiness: Option<Stickiness>,
    /// Requests without a sticky key so far (from a random start): their buckets follow a
    /// low-discrepancy sequence, so every short run of requests is split as the weights say.
    /// Independent random buckets let a 10 % group get bursts of several requests in a row,
    /// which lengthen its queue and the latency tail.
    spread: AtomicU64,
    /// An A/B test's rules while one runs: matching requests go to the candidate (after
    /// the route's own overrides, before the split).
    pub ab: Vec<crate::config::Override>,
    /// Where copies of its requests go, while any do (`crate::mirror`).
    pub mirror: Option<crate::mirror::Mirror>,
}

/// The sequence's step: about FULL_WEIGHT / φ and coprime with FULL_WEIGHT, so the buckets
/// cycle through all of [0, FULL_WEIGHT) and each new one lands in the largest gap left.
const SPREAD_STEP: u64 = 6_181;

impl Service {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        groups: Vec<Arc<Group>>,
        split: &Split,
        stable: Option<&str>,
        candidate: Option<&str>,
        balance: Balance,
        request_timeout: Duration,
        passive: PassiveHealth,
        stickiness: Option<Stickiness>,
    ) -> Service {
        let index = |n: Option<&str>| n.and_then(|n| groups.iter().position(|g| g.name == n));
        let (stable, candidate) = (index(stable), index(candidate));
        let weights = groups.iter().map(|g| split.weight(&g.name)).collect();
        let mut order: Vec<usize> = candidate.into_iter().collect();
        order.extend((0..groups.len()).filter(|i| Some(*i) != candidate));
        Service {
            name,
            groups,
            weights,
            stable,
            candidate,
            order,
            balance,
            request_timeout,
            passive,
            stickiness,
            spread: AtomicU64::new(fastrand::u64(..u64::from(FULL_WEIGHT))),
            ab: Vec::new(),
            mirror: None,
        }
    }

    /// With an A/B test's rules (see [`Service::ab`]).
    pub fn with_ab(mut self, rules: Vec<crate::config::Override>) -> Service {
        self.ab = rules;
        self
    }

    /// With copies of its requests going to a group (see [`Service::mirror`]).
    pub fn with_mirror(mut self, mirror: Option<crate::mirror::Mirror>) -> Service {
        self.mirror = mirror;
        self
    }

    /// The group owning `bucket` in [0, FULL_WEIGHT).
    pub fn group_for_bucket(&self, bucket: u32) -> usize {
        let mut edge = 0;
        for &i in &self.order {
            edge += self.weights[i];
            if bucket < edge {
                return i;
            }
        }
        self.order.last().copied().unwrap_or(0)
    }

    /// The split's choice for a request: a sticky bucket when the service has a key (or sets
    /// its own cookie), the next of an evenly spread sequence otherwise. If that group has no
    /// routable target, another weighted group that has one. The second value is a cookie to
    /// set.
    pub fn choose_by_split(
        &self,
        headers: &HeaderMap,
        client_ip: std::net::IpAddr,
        now: u64,
    ) -> (&Arc<Group>, Option<HeaderValue>) {
        let (bucket, set_cookie) = self.bucket(headers, client_ip);
        let g = &self.groups[self.group_for_bucket(bucket)];
        if g.has_routable(now) {
            return (g, set_cookie);
        }
        let fallback = self
            .order
            .iter()
            .map(|&i| (&self.groups[i], self.weights[i]))
            .find(|(g, w)| *w > 0 && g.has_routable(now))
            .map_or(g, |(g, _)| g);
        (fallback, set_cookie)
    }

    /// The next bucket of the low-discrepancy sequence (for requests without a key).
    fn spread_bucket(&self) -> u32 {
        spread_at(self.spread.fetch_add(1, Relaxed))
    }

    fn bucket(
        &self,
        headers: &HeaderMap,
        client_ip: std::net::IpAddr,
    ) -> (u32, Option<HeaderValue>) {
        let Some(st) = &self.stickiness else {
            return (self.spread_bucket(), None);
        };
        let key = match &st.key {
            Some(StickyKey::Cookie(name)) => {
                cookie(headers, name).map(|v| bucket_of(&self.name, v.as_bytes()))
            }
            Some(StickyKey::Header(name)) => headers
                .get(name)
                .map(|v| bucket_of(&self.name, v.as_bytes())),
            Some(StickyKey::ClientIp) => Some(match client_ip {
                std::net::IpAddr::V4(a) => bucket_of(&self.name, &a.octets()),
                std::net::IpAddr::V6(a) => bucket_of(&self.name, &a.octets()),
            }),
            None => None,
        };
        if let Some(b) = key {
            return (b, None);
        }
        let Some(c) = &st.cookie else {
            return (self.spread_bucket(), None);
        };
        if let Some(v) = cookie(headers, &c.name) {
            return (bucket_of(&self.name, v.as_bytes()), None);
        }
        // A client without a key: pin it with our own cookie.
        let id = format!("{:016x}", fastrand::u64(..));
        let set = format!(
            "{}={id}; Max-Age={}; Path=/; HttpOnly; SameSite=Lax",
            c.name,
            c.max_age.as_secs()
        );
        (
            bucket_of(&self.name, id.as_bytes()),
            HeaderValue::from_str(&set).ok(),
        )
    }

    /// Another group of the split (weight > 0) with a routable target, for a request whose
    /// group could not be reached.
    pub fn fallback(&self, from: &Group, now: u64) -> Option<&Arc<Group>> {
        self.order
            .iter()
            .map(|&i| (&self.groups[i], self.weights[i]))
            .find(|(g, w)| *w > 0 && !std::ptr::eq(g.as_ref(), from) && g.has_routable(now))
            .map(|(g, _)| g)
    }

    pub fn split(&self) -> Split {
        Split::from_basis_points(
            self.groups
                .iter()
                .zip(&self.weights)
                .map(|(g, w)| (g.name.clone(), *w)),
        )
        .expect("a snapshot's weights come from a split")
    }

    pub fn group(&self, name: &str) -> Option<&Arc<Group>> {
        self.groups.iter().find(|g| g.name == name)
    }
}

/// A stable bucket in [0, FULL_WEIGHT) for a key: the same on every instance and restart
/// (FNV-1a with a splitmix finaliser), salted with the service name so services are
/// independent.
pub fn bucket_of(service: &str, key: &[u8]) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in service.as_bytes().iter().chain([0xffu8].iter()).chain(key) {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h % FULL_WEIGHT as u64) as u32
}

fn spread_at(n: u64) -> u32 {
    (n.wrapping_mul(SPREAD_STEP) % u64::from(FULL_WEIGHT)) as u32
}

/// The value of cookie `name` in the request's Cookie headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_uniform_enough() {
        let mut below_500 = 0;
        for i in 0..100_000u32 {
            if bucket_of("shop", &i.to_le_bytes()) < 500 {
                below_500 += 1;
            }
        }
        // 5 % ± 0.3 pp
        assert!((4700..=5300).contains(&below_500), "{below_500}");
    }

    #[test]
    fn the_spread_sequence_splits_every_short_run_by_the_weights() {
        // A 10 % group (buckets below 1000) gets 0–2 of every 10 requests, 8–12 of every 100
        // and 98–102 of every 1000, from any starting point. Independent random buckets
        // break this within a few hundred windows (100 requests: 10 ± 3 at one sigma).
        for (window, lo, hi) in [(10u64, 0, 2), (100, 8, 12), (1000, 98, 102)] {
            for start in 0..20_000u64 {
                let n = (start..start + window)
                    .filter(|&i| spread_at(i) < 1000)
                    .count();
                assert!((lo..=hi).contains(&n), "{n} of {window} from {start}");
            }
        }
        // Every bucket is visited once per cycle, so any weights are met exactly over one.
        let mut seen = vec![false; FULL_WEIGHT as usize];
        for i in 0..u64::from(FULL_WEIGHT) {
            seen[spread_at(i) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.append("cookie", "a=1; sy=abc".parse().unwrap());
        h.append("cookie", "b=2".parse().unwrap());
        assert_eq!(cookie(&h, "sy"), Some("abc"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "c"), None);
    }
}
