//! Leadership of a fleet, as the control plane lives it: what this instance starts when it
//! comes to lead (`take_over`) and stops when it no longer does (`step_down`). The election
//! itself (the lease, the leader key, the fence) is `store::etcd::election`.
//!
//! A new leader decides from the fleet's state read fresh from etcd once it leads, never
//! from what its watch has brought so far, which may lag behind what the last leader wrote:
//! a leader's forward writes would be refused as stale, but not its holds and aborts (moves
//! toward stable always land), nor a hook run before any write, nor the split it publishes.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::fleet::Fleet;
use super::Controller;
use crate::store::etcd::Leadership;
use crate::store::Store;

/// How soon a new leader that could not read the fleet's state tries again.
const TAKE_OVER_RETRY: Duration = Duration::from_millis(250);

impl Controller {
    pub(super) async fn follow_leadership(
        self: Arc<Self>,
        mut rx: tokio::sync::watch::Receiver<Leadership>,
    ) {
        let Some(f) = self.fleet.clone() else {
            return;
        };
        loop {
            let l = rx.borrow_and_update().clone();
            f.view.lock().expect("fleet view").leader = l.leader.clone();
            match (f.leads(), l.me) {
                // Lost again before it could read the fleet's state: nothing was started;
                // look at the leadership as it is now.
                (false, true) if !self.take_over(&f, &rx).await => continue,
                (true, false) => self.step_down(&f).await,
                _ => {}
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// This instance now leads: every active rollout gets a driver, held until its guard has
    /// judged one full window (as after a restart: the last leader may have decided a
    /// rollback it could not record).
    ///
    /// Decided from the fleet's state read fresh from etcd once leading, not from what the
    /// watch has brought so far: the watch may lag behind what the last leader wrote (its
    /// last step, a hook done, the rollout completed), and several of a leader's decisions
    /// are not refused by etcd when made on an old view — a hold or an abort (moves toward
    /// stable always land), a hook or an end hook run before any write, its "may or may not
    /// have run" record, the split published here. Every write of the last leader was
    /// fenced on its leader key, which was gone before this instance's was created, so a
    /// read made now has all of them. While etcd cannot be read nothing starts (tried again
    /// until it can, or until this instance no longer leads). False when leadership was
    /// lost before that: nothing started, and the fence of the leadership left is lifted.
    async fn take_over(
        self: &Arc<Self>,
        f: &Fleet,
        leadership: &tokio::sync::watch::Receiver<Leadership>,
    ) -> bool {
        let mut leadership = leadership.clone();
        let asked = tokio::time::Instant::now();
        let (fresh, fence) = loop {
            let fence = f.etcd.fence();
            let gone = |fence: Option<i64>| {
                if let Some(fence) = fence {
                    f.etcd.lift_fence(fence);
                }
                false
            };
            // Not waited for past the leadership (a read can take seconds without etcd).
            let read = tokio::select! {
                read = f.etcd.load_fleet() => read,
                _ = leadership.wait_for(|l| !l.me) => return gone(fence),
            };
            match read {
                // Read within this same leadership (else a leader between may have written
                // after the read: read again).
                Ok(fresh) if f.etcd.fence() == fence => break (fresh, fence),
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "this instance leads the fleet but cannot read its state: no rollout is driven from an older one; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(TAKE_OVER_RETRY) => {}
                        _ = leadership.wait_for(|l| !l.me) => return gone(fence),
                    }
                }
            }
        };
        let (mut persisted, mut shared, mut revision) = fresh;
        let applying = f.applying.lock().await;
        let mut behind = self.state.lock().await.revision < revision;
        if !behind && f.has_set_aside() {
            // A change the watch set aside for a write of this instance answered late is
            // missing from a state whose revision is past it. Read again, under `applying`
            // (the state may be past the first read, which must not be taken over it).
            match f.etcd.load_fleet().await {
                Ok(again) => {
                    (persisted, shared, revision) = again;
                    behind = true;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot read again the fleet's state a late answer left this instance behind on");
                }
            }
        }
        if behind {
            tracing::info!(revision, read_in = ?asked.elapsed(), "leading from the fleet's state read at this revision");
            let running = self.snapshot().config.source.clone();
            if let Some(c) = shared.filter(|c| running.as_deref() != Some(&c.text)) {
                let incoming = self.incoming_traffic(f, &persisted, revision);
                self.apply_shared_config(f, c, incoming).await;
            }
        }
        let active: Vec<String> = {
            let mut state = self.state.lock().await;
            if behind {
                self.resync(f, &mut state, persisted, revision);
                if let Err(e) = self.publish(&mut state) {
                    tracing::error!(error = %e, "cannot publish the fleet's state");
                }
            }
            if f.etcd.fence() != fence || !leadership.borrow().me {
                // Lost meanwhile: the state read stays (it is the fleet's), nothing starts.
                drop(state);
                if let Some(fence) = fence {
                    f.etcd.lift_fence(fence);
                }
                return false;
            }
            // Under the state lock, which `ensure_driver` takes before it looks.
            f.leads.store(true, Ordering::SeqCst);
            let active: Vec<String> = state
                .rollouts
                .values()
                .filter(|r| r.status.is_active())
                .map(|r| r.service.clone())
                .collect();
            state.resume_gate.extend(active.iter().cloned());
            // And rollouts that ended with their end work not done (ended while no one led,
            // or the last leader was lost doing it).
            let ended = state.rollouts.values().filter(|r| !r.status.is_active());
            active
                .iter()
                .cloned()
                .chain(
                    ended
                        .filter(|r| r.end_work.is_some())
                        .map(|r| r.service.clone()),
                )
                .collect()
        };
        drop(applying);
        tracing::warn!(rollouts = active.len(), after = ?asked.elapsed(), "this instance leads the fleet now");
        for service in active {
            self.ensure_driver(&service).await;
        }
        true
    }

    /// This instance no longer leads: what decides stops here (the new leader's drivers take
    /// over from the recorded state).
    async fn step_down(&self, f: &Fleet) {
        // The fence of the leadership being left: lifted only once nothing decides here.
        let fence = f.etcd.fence();
        let drivers: Vec<_> = {
            let mut state = self.state.lock().await;
            f.leads.store(false, Ordering::SeqCst);
            // The next leader judges its own window; nothing is held here any more.
            state.resume_gate.clear();
            state.restore.clear();
            state.drivers.drain().map(|(_, (_, task))| task).collect()
        };
        tracing::warn!(
            drivers = drivers.len(),
            "this instance no longer leads the fleet"
        );
        for task in drivers {
            task.abort();
            let _ = task.await;
        }
        if let Some(fence) = fence {
            f.etcd.lift_fence(fence);
        }
    }
}
