//! The split actually observed: a control-plane task samples each group's request counter
//! four times a second, and the share of each group over a recent window is the difference
//! of two samples. The hot path only increments its counters.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::metrics::now_ms;
use crate::snapshot::Snapshot;

const EVERY: Duration = Duration::from_millis(250);
/// Samples kept: one minute.
const KEEP: usize = 240;

type Sample = (u64, BTreeMap<String, u64>);

#[derive(Debug, Default)]
pub(super) struct Observer {
    samples: Mutex<HashMap<String, VecDeque<Sample>>>,
}

impl Observer {
    pub(super) fn spawn(
        snapshots: Arc<ArcSwap<Snapshot>>,
    ) -> (Arc<Observer>, tokio::task::AbortHandle) {
        let observer = Arc::new(Observer::default());
        let o = observer.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(EVERY);
            loop {
                tick.tick().await;
                o.sample(&snapshots.load());
            }
        });
        (observer, task.abort_handle())
    }

    fn sample(&self, snap: &Snapshot) {
        let now = now_ms();
        let mut samples = self.samples.lock().expect("observer lock");
        for (name, svc) in &snap.services {
            let counts = svc
                .groups
                .iter()
                .map(|g| (g.name.clone(), g.stats.requests()))
                .collect();
            let ring = samples.entry(name.clone()).or_default();
            ring.push_back((now, counts));
            if ring.len() > KEEP {
                ring.pop_front();
            }
        }
    }

    /// Each group's share (0–1) of the requests over about the last `window_ms`; `None`
    /// without traffic in that window.
    pub(super) fn shares(&self, service: &str, window_ms: u64) -> Option<BTreeMap<String, f64>> {
        let samples = self.samples.lock().expect("observer lock");
        let ring = samples.get(service)?;
        let (t_new, newest) = ring.back()?;
        let (_, oldest) = ring
            .iter()
            .find(|(t, _)| t_new - t <= window_ms)
            .filter(|(t, _)| t < t_new)?;
        let delta: BTreeMap<String, u64> = newest
            .iter()
            .map(|(g, n)| {
                (
                    g.clone(),
                    n.saturating_sub(oldest.get(g).copied().unwrap_or(0)),
                )
            })
            .collect();
        let total: u64 = delta.values().sum();
        (total > 0).then(|| {
            delta
                .into_iter()
                .map(|(g, n)| (g, n as f64 / total as f64))
                .collect()
        })
    }
}
