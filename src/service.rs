//! A service as the data plane sees it: its groups and the current split between them.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Balance, PassiveHealth, Split, FULL_WEIGHT};
use crate::group::Group;

#[derive(Debug)]
pub struct Service {
    pub name: String,
    pub groups: Vec<Arc<Group>>,
    /// Basis points per group, aligned with `groups`; sums to `FULL_WEIGHT`.
    pub weights: Vec<u32>,
    pub balance: Balance,
    pub request_timeout: Duration,
    pub passive: PassiveHealth,
}

impl Service {
    /// The group for a bucket in [0, FULL_WEIGHT): groups own consecutive bucket ranges in
    /// their order, so a bucket below the candidate's weight stays there as the weight rises.
    pub fn group_for_bucket(&self, bucket: u32) -> usize {
        let mut edge = 0;
        for (i, w) in self.weights.iter().enumerate() {
            edge += w;
            if bucket < edge {
                return i;
            }
        }
        self.weights.len().saturating_sub(1)
    }

    /// A random group by weight; if it has no routable target, another weighted group that
    /// has one (a split degrades rather than fails).
    pub fn choose_group(&self, now: u64) -> Option<&Arc<Group>> {
        let i = self.group_for_bucket(fastrand::u32(0..FULL_WEIGHT));
        let g = &self.groups[i];
        if g.has_routable(now) {
            return Some(g);
        }
        self.groups
            .iter()
            .zip(&self.weights)
            .find(|(g, w)| **w > 0 && g.has_routable(now))
            .map(|(g, _)| g)
            .or(Some(g))
    }

    pub fn split(&self) -> Split {
        Split(
            self.groups
                .iter()
                .zip(&self.weights)
                .map(|(g, w)| (g.name.clone(), *w))
                .collect(),
        )
    }

    pub fn group(&self, name: &str) -> Option<&Arc<Group>> {
        self.groups.iter().find(|g| g.name == name)
    }
}
