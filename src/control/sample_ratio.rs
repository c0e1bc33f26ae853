//! The guard's check of the split: during a rollout split by weight, the candidate's share
//! of the two groups' requests since the current step began is tested against the
//! configured share (`analysis::sequential::sample_ratio_p`). A mismatch means every
//! comparison the guard and the analyses make is biased — the groups do not see the same
//! clients — so the guard pauses the rollout for a person, saying so.

use crate::analysis::sequential::{self, Tick};
use crate::rollout::{Rollout, Status};

use super::Controller;

/// The observed split since the current step began, against the configured one.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SampleRatio {
    /// Requests of both groups since the step began, and the candidate's share (%).
    pub requests: u64,
    pub observed: f64,
    /// The candidate's share of the two groups' weights (%).
    pub configured: f64,
    /// Pearson's chi-square p-value.
    pub p: f64,
}

/// A split is a mismatch below this p-value, once it has [`SRM_MIN_REQUESTS`]: strict,
/// since it is looked at every tick (the looks of a growing sample are strongly correlated;
/// a seeded fair split stays far above it over 1000 looks, see `sequential`'s tests).
const SRM_P: f64 = 1e-6;
/// How long after a step begins its split is first counted.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(2);
/// Requests both groups need since the step began before the split is judged.
const SRM_MIN_REQUESTS: u64 = 500;

/// The split check of the current step: both groups' requests since the weight (or the
/// status) last changed — so a rollout it paused, once resumed, is judged afresh. What the
/// data plane counts per group cannot tell a request the weights routed from one that an
/// override, a preview header or a sticky key sent: all count, which is the point — a flood
/// of overrides biases the comparison the guard makes.
#[derive(Debug, Default)]
pub(super) struct SplitCheck {
    segment: Option<(u32, Status)>,
    /// When the segment began (tokio's clock).
    began: Option<tokio::time::Instant>,
    candidate: u64,
    total: u64,
}

/// One look at the split.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct SplitLook(pub(super) SampleRatio);

impl SplitCheck {
    pub(super) fn observe(
        &mut self,
        control: &Controller,
        service: &str,
        r: &Rollout,
        tick: &Tick,
    ) -> Option<SplitLook> {
        let g = control.snapshot().config.service(service)?.guard.clone();
        let snap = control.snapshot();
        let split = snap.services.get(service)?.split();
        let (wc, ws) = (split.weight(&r.candidate), split.weight(r.reference()));
        let segment = (wc, r.status);
        if self.segment != Some(segment) {
            // A new step (or a pause, or a resume): count afresh.
            *self = SplitCheck {
                segment: Some(segment),
                began: Some(tokio::time::Instant::now()),
                ..SplitCheck::default()
            };
            return None;
        }
        if self.began.is_some_and(|b| b.elapsed() < SETTLE) {
            // Not yet: the other instances of a fleet take up a new weight a moment later,
            // and their answers from before it still arrive with their next pulls.
            return None;
        }
        self.candidate += tick.candidate_errors.n;
        self.total += tick.candidate_errors.n + tick.stable_errors.n;
        // Synthetic requests counted with the candidate's traffic add to its share alone:
        // the split cannot be judged while they are (`[service.synthetic] count = "together"`).
        let synthetic = snap
            .config
            .service(service)
            .and_then(|s| s.synthetic.as_ref())
            .is_some_and(|s| s.together);
        if !g.sample_ratio || wc == 0 || ws == 0 || synthetic {
            return None;
        }
        let share = wc as f64 / (wc + ws) as f64;
        let ratio = SampleRatio {
            requests: self.total,
            observed: if self.total == 0 {
                0.0
            } else {
                100.0 * self.candidate as f64 / self.total as f64
            },
            configured: 100.0 * share,
            p: sequential::sample_ratio_p(self.candidate, self.total, share),
        };
        Some(SplitLook(ratio))
    }
}

impl SplitLook {
    pub(super) fn mismatch(&self) -> bool {
        self.0.requests >= SRM_MIN_REQUESTS && self.0.p < SRM_P
    }

    pub(super) fn reason(&self, r: &Rollout) -> String {
        let s = &self.0;
        format!(
            "observed {:.1}% to {} over {} requests, configured {:.1}%: sample ratio mismatch, p < {:.0e} — comparisons are biased (sticky keys or overrides?)",
            s.observed, r.candidate, s.requests, s.configured, SRM_P.max(s.p)
        )
    }
}
