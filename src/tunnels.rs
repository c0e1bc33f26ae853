//! A group's open tunnels (WebSocket and other Upgrades): counted, and cut together when
//! the group has had no traffic for its service's `drain_timeout` — a switch or rollback
//! leaves the old group's tunnels running until they end or the drain ends, rather than
//! cutting them at once (Argo Rollouts #3761) or never.
//!
//! A tunnel joins the group's current *epoch* (a cancellation token); cutting cancels that
//! epoch and begins a new one, so tunnels opened after the group took traffic again are not
//! cut by a drain decided before.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

#[derive(Debug, Default)]
pub struct Tunnels {
    open: AtomicU64,
    /// Tunnels cut by a drain since the process started.
    cut: AtomicU64,
    epoch: Mutex<CancellationToken>,
    /// The drain under way: its number and when it cuts (unix ms); 0 when none.
    drain: Mutex<(u64, i64)>,
}

/// One open tunnel; counted until dropped.
#[derive(Debug)]
pub struct Tunnel {
    tunnels: Arc<Tunnels>,
    cut: CancellationToken,
}

impl Tunnel {
    /// Resolves when the group's drain cuts this tunnel.
    pub async fn cut(&self) {
        self.cut.cancelled().await;
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.tunnels.open.fetch_sub(1, Relaxed);
    }
}

impl Tunnels {
    pub fn join(self: &Arc<Self>) -> Tunnel {
        self.open.fetch_add(1, Relaxed);
        let cut = self.epoch.lock().expect("tunnels lock").child_token();
        Tunnel {
            tunnels: self.clone(),
            cut,
        }
    }

    pub fn open(&self) -> u64 {
        self.open.load(Relaxed)
    }

    pub fn cut_total(&self) -> u64 {
        self.cut.load(Relaxed)
    }

    /// A drain begins, cutting at `at_unix_ms`: its number, for [`Tunnels::cut_if`].
    pub fn begin_drain(&self, at_unix_ms: i64) -> u64 {
        let mut d = self.drain.lock().expect("tunnels lock");
        d.0 += 1;
        d.1 = at_unix_ms;
        d.0
    }

    /// The group takes traffic again: no drain is under way.
    pub fn end_drain(&self) {
        self.drain.lock().expect("tunnels lock").1 = 0;
    }

    /// When the drain under way cuts the tunnels (unix ms), if one is.
    pub fn draining_until(&self) -> Option<i64> {
        Some(self.drain.lock().expect("tunnels lock").1).filter(|t| *t != 0)
    }

    /// Cuts every open tunnel if drain `number` is still the one under way; how many.
    pub fn cut_if(&self, number: u64) -> u64 {
        let mut d = self.drain.lock().expect("tunnels lock");
        if d.0 != number || d.1 == 0 {
            return 0;
        }
        d.1 = 0;
        let open = self.open();
        let mut epoch = self.epoch.lock().expect("tunnels lock");
        epoch.cancel();
        *epoch = CancellationToken::new();
        self.cut.fetch_add(open, Relaxed);
        open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drain_cuts_the_tunnels_of_its_epoch_only_while_it_is_under_way() {
        let t = Arc::new(Tunnels::default());
        let old = t.join();
        let n = t.begin_drain(1);
        assert_eq!(t.draining_until(), Some(1));
        // Traffic came back before the drain ended: nothing is cut.
        t.end_drain();
        assert_eq!(t.cut_if(n), 0);
        assert!(!old.cut.is_cancelled());
        // A later drain, superseded by another: only the latest cuts.
        let first = t.begin_drain(2);
        let second = t.begin_drain(3);
        assert_eq!(t.cut_if(first), 0);
        assert_eq!(t.cut_if(second), 1);
        assert!(old.cut.is_cancelled());
        assert_eq!((t.open(), t.cut_total(), t.draining_until()), (1, 1, None));
        // A tunnel opened after the cut lives in a new epoch.
        let new = t.join();
        assert!(!new.cut.is_cancelled());
        drop(old);
        assert_eq!(t.open(), 1);
    }
}
