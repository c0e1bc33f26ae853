//! The fleet's fingerprints of failed answers (`crate::fingerprint`) of a rollout's two
//! groups over the same seconds: this instance's tables plus what every peer sent
//! (`control::peers`) — what a `new_errors` check and the rollout view read.

use std::sync::Arc;

use super::Controller;
use crate::fingerprint::{Compared, Source, Tally};
use crate::metrics;

impl Controller {
    /// Both groups' fingerprints in seconds `[from, to]`, summed over the fleet; `None` when
    /// the groups are not in the running configuration.
    pub fn compared(
        &self,
        service: &str,
        stable: &str,
        candidate: &str,
        (from, to): (u64, u64),
    ) -> Option<Compared> {
        let snap = self.snapshot();
        let s = snap.services.get(service)?;
        let (sg, cg) = (s.group(stable)?, s.group(candidate)?);
        let (mut st, mut ct) = (Tally::default(), Tally::default());
        st.add(&sg.stats.fingerprints.export(from, to));
        ct.add(&cg.stats.fingerprints.export(from, to));
        let peers = self.peers.add_errors(
            service,
            &mut [(candidate, &mut ct), (stable, &mut st)],
            (from, to),
        );
        Some(Compared {
            candidate: ct,
            stable: st,
            instances: 1 + peers,
            epoch_unix_ms: self.clock.unix_ms() - metrics::now_ms() as i64,
        })
    }

    /// [`Controller::compared`] for a running check, looked up afresh at every measurement.
    pub fn errors(self: &Arc<Self>, service: &str, stable: &str, candidate: &str) -> Source {
        let control = self.clone();
        let (service, stable, candidate) = (
            service.to_string(),
            stable.to_string(),
            candidate.to_string(),
        );
        Source::new(move |from, to| control.compared(&service, &stable, &candidate, (from, to)))
    }
}

/// The fingerprints of an active rollout's candidate against stable, for `GET …/rollout`
/// (the CLI's `status` and `rollout status`, the dashboard): over the seconds since the
/// rollout was created, at most the 11 minutes the window keeps, summed over the fleet.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NewErrorsView {
    /// The first second looked at (unix ms).
    pub since_unix_ms: i64,
    /// The count a fingerprint needs to be `new` here: the smallest `min_count` of the
    /// configured `new_errors` checks, else the default.
    pub min_count: u64,
    /// Every fingerprint of the candidate, most frequent first; `new` ones are findings.
    pub fingerprints: Vec<crate::fingerprint::Row>,
    /// Failed answers not kept as a fingerprint, per group (see `fingerprint::CAP`).
    pub candidate_overflow: u64,
    pub stable_overflow: u64,
    /// Instances whose answers are counted (1 without a fleet).
    pub instances: usize,
}

impl Controller {
    /// What [`NewErrorsView`] shows of `r`; `None` for a rollout not in progress or whose
    /// groups are not in the running configuration.
    pub fn new_errors(&self, r: &crate::rollout::Rollout) -> Option<NewErrorsView> {
        if !r.status.is_active() {
            return None;
        }
        let now = metrics::now_second();
        let age = (self.clock.unix_ms() - r.created_at).max(0) as u64 / 1000;
        let from = now.saturating_sub(age.min(metrics::SLOTS - 1));
        let c = self.compared(&r.service, &r.stable, &r.candidate, (from, now))?;
        let min_count = self.min_count();
        Some(NewErrorsView {
            // The rollout's start while the window holds it: the same in every reading.
            since_unix_ms: if age < metrics::SLOTS - 1 {
                r.created_at
            } else {
                c.unix_ms(from)
            },
            min_count,
            fingerprints: c.rows(min_count),
            candidate_overflow: c.candidate.overflow,
            stable_overflow: c.stable.overflow,
            instances: c.instances,
        })
    }

    /// The smallest `min_count` of the configured `new_errors` checks, else the default.
    fn min_count(&self) -> u64 {
        let snap = self.snapshot();
        snap.config
            .analyses
            .iter()
            .flat_map(|a| &a.checks)
            .filter_map(|c| match c.provider {
                crate::analysis::Provider::NewErrors { min_count } => Some(min_count),
                _ => None,
            })
            .min()
            .unwrap_or(crate::fingerprint::DEFAULT_MIN_COUNT)
    }
}
