//! One leader per fleet, on an etcd lease; and each instance's presence.
//!
//! The campaign holds a lease of `ttl`, with this instance's record under
//! `P/instances/<name>` on it (refreshed every second: revision, last contact). Whoever
//! creates `P/leader` on its lease leads; the others watch that key and campaign as soon as
//! it is gone. The leader measures its lease on its own clock: when no keepalive succeeded
//! for `ttl - margin` (counted from when the last good one was *sent*) it steps down before
//! etcd can have given the key to another; and at once when a fenced write found it deposed.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;
use tokio::time::{sleep, sleep_until, timeout, Instant};

use super::client::EtcdError;
use super::watch::{Raw, RawWatch};
use super::wire::{self, LeaseGrant, Streamed};
use super::{to_json, EtcdStore, InstanceRecord};

/// How often the instance record is refreshed (its `last_contact`, `revision`).
const REFRESH: Duration = Duration::from_secs(1);
/// The pause after a failed lease grant.
const RETRY: Duration = Duration::from_millis(200);

/// Who leads, as this instance knows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Leadership {
    pub leader: Option<InstanceRecord>,
    /// This instance leads: its writes are fenced on its leadership (`EtcdStore::set_fence`).
    pub me: bool,
}

/// Runs for the life of the instance: keeps `P/instances/<name>` alive on a lease of `ttl`
/// (refreshed with its revision and last contact), campaigns for `P/leader` when nobody
/// holds it, renews the lease while it leads, and steps down — `me: false` published
/// *before* the lease can have run out on etcd's side, and at once when a fenced write
/// found it deposed — when it cannot.
pub fn campaign(
    store: Arc<EtcdStore>,
    me: InstanceRecord,
    ttl: Duration,
) -> (watch::Receiver<Leadership>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(Leadership::default());
    let c = Campaign { store, me, ttl, tx };
    (rx, tokio::spawn(c.run()))
}

/// The time a leader may go without a successful keepalive: `ttl` less a margin of at
/// least a quarter of it (clock drift, a late answer).
pub fn lead_budget(ttl: Duration) -> Duration {
    ttl - (ttl / 4).max(Duration::from_millis(250)).min(ttl / 2)
}

struct Campaign {
    store: Arc<EtcdStore>,
    me: InstanceRecord,
    ttl: Duration,
    tx: watch::Sender<Leadership>,
}

/// Why a lease ended.
enum Ended {
    /// etcd no longer has it.
    Lost,
    /// This instance stepped down on its own clock; the lease may still live on etcd.
    Abandoned,
}

impl Campaign {
    async fn run(self) {
        loop {
            let Some((lease, granted)) = self.grant().await else {
                sleep(RETRY).await;
                continue;
            };
            if let Ended::Abandoned = self.hold(lease, granted).await {
                // Whatever still hangs on it (the leader key) goes now rather than at expiry.
                let body = json!({ "ID": lease.to_string() });
                let revoke = self
                    .store
                    .client
                    .call::<serde_json::Value>("/v3/lease/revoke", &body);
                let _ = timeout(self.ttl / 2, revoke).await;
            }
        }
    }

    /// A new lease and when it was asked for.
    async fn grant(&self) -> Option<(i64, Instant)> {
        let asked = Instant::now();
        let secs = self.ttl.as_secs_f64().ceil().max(1.0) as i64;
        let body = json!({ "TTL": secs.to_string() });
        let call = self
            .store
            .client
            .call::<LeaseGrant>("/v3/lease/grant", &body);
        match timeout(self.ttl, call).await {
            Ok(Ok(g)) if g.id != 0 => Some((g.id, asked)),
            _ => None,
        }
    }

    /// Lives on one lease until it is lost or abandoned.
    async fn hold(&self, lease: i64, granted: Instant) -> Ended {
        let budget = lead_budget(self.ttl);
        let every = self.ttl / 3;
        let mut last_ok = granted;
        let mut next_keepalive = Instant::now() + every;
        // Present in the fleet before campaigning: whoever sees a leader sees its peers.
        if let Some(false) = self.present(lease, Instant::now() + every).await {
            return Ended::Lost;
        }
        let mut next_refresh = Instant::now() + REFRESH;
        let mut leading: Option<i64> = None;
        let mut follow: Option<RawWatch> = None;
        let mut vacant = true;
        loop {
            if leading.is_none() && vacant {
                match self
                    .within(Instant::now() + every, self.try_lead(lease))
                    .await
                {
                    Some(Ok(Ok(fence))) => {
                        self.store.set_fence(Some(fence));
                        leading = Some(fence);
                        follow = None;
                        self.publish(true, Some(self.record()));
                    }
                    Some(Ok(Err((holder, revision)))) => {
                        vacant = holder.is_none();
                        self.publish(false, holder);
                        follow = Some(RawWatch::new(
                            self.store.clone(),
                            &self.store.keys.leader(),
                            false,
                            revision,
                        ));
                    }
                    Some(Err(e)) if lease_gone(&e) => return Ended::Lost,
                    Some(Err(_)) | None => {}
                }
            }
            let lead_deadline = last_ok + budget;
            // No call waits past the next keepalive, nor, while leading, past the moment
            // to step down.
            let soon = Instant::now() + every;
            let bound = leading.map_or(soon, |_| lead_deadline.min(soon));
            tokio::select! {
                biased;
                _ = sleep_until(lead_deadline), if leading.is_some() => {
                    tracing::warn!(instance = self.me.name, "no lease keepalive for {budget:?}: stepping down");
                    self.step_down(&mut leading);
                    return Ended::Abandoned;
                }
                _ = self.store.fenced(), if leading.is_some() => {
                    tracing::warn!(instance = self.me.name, "a write found this instance deposed: stepping down");
                    self.step_down(&mut leading);
                    vacant = true;
                }
                _ = sleep_until(next_keepalive) => {
                    let sent = Instant::now();
                    next_keepalive = sent + every;
                    match self.within(bound, self.keepalive(lease)).await.flatten() {
                        Some(true) => last_ok = sent,
                        Some(false) => {
                            self.step_down(&mut leading);
                            return Ended::Lost;
                        }
                        None => {}
                    }
                }
                _ = sleep_until(next_refresh) => {
                    next_refresh = Instant::now() + REFRESH;
                    if let Some(false) = self.present(lease, bound).await {
                        self.step_down(&mut leading);
                        return Ended::Lost;
                    }
                    // Retry a lost race for a vacant seat once a second.
                    vacant = vacant || follow.is_none();
                }
                raw = next_of(&mut follow), if leading.is_none() => match raw {
                    Raw::Resync(_) => vacant = true,
                    Raw::Events(_, events) => {
                        let Some(last) = events.last() else { continue };
                        if last.is_delete() {
                            vacant = true;
                            self.publish(false, None);
                        } else {
                            self.publish(false, serde_json::from_slice(&last.kv.value).ok());
                        }
                    }
                },
            }
        }
    }

    /// Creates the leader key on `lease` if nobody holds it: `Ok(fence)` (its create
    /// revision) when won, else the holder's record (if any) and the revision read at.
    async fn try_lead(
        &self,
        lease: i64,
    ) -> Result<Result<i64, (Option<InstanceRecord>, i64)>, EtcdError> {
        let key = self.store.keys.leader();
        let txn = wire::txn(
            vec![wire::create_revision_is(&key, 0)],
            vec![wire::op_put(&key, &to_json(&self.record()), lease)],
            vec![wire::op_range(&key)],
        );
        let r: wire::TxnResponse = self.store.client.call("/v3/kv/txn", &txn).await?;
        if r.succeeded {
            return Ok(Ok(r.header.revision));
        }
        let holder = r
            .range(0)
            .and_then(|l| l.kvs.first())
            .and_then(|kv| serde_json::from_slice(&kv.value).ok());
        Ok(Err((holder, r.header.revision)))
    }

    /// Writes this instance's record on `lease`: `Some(false)` when the lease is gone,
    /// `None` when etcd could not be reached by `until`.
    async fn present(&self, lease: i64, until: Instant) -> Option<bool> {
        let key = self.store.keys.instance(&self.me.name);
        let put = wire::put(&key, &to_json(&self.record()), lease);
        let call = self
            .store
            .client
            .call::<serde_json::Value>("/v3/kv/put", &put);
        match self.within(until, call).await? {
            Ok(_) => Some(true),
            Err(e) if lease_gone(&e) => Some(false),
            Err(_) => None,
        }
    }

    /// `Some(alive)` when etcd answered, `None` when it could not be reached.
    async fn keepalive(&self, lease: i64) -> Option<bool> {
        let body = json!({ "ID": lease.to_string() });
        let call = self
            .store
            .client
            .call::<Streamed<LeaseGrant>>("/v3/lease/keepalive", &body);
        match call.await {
            Ok(s) => Some(s.result.is_some_and(|g| g.ttl > 0)),
            Err(e) if lease_gone(&e) => Some(false),
            Err(_) => None,
        }
    }

    /// `f`'s output, or `None` if `until` came first: noted as etcd not answering, as a
    /// paused or cut-off etcd closes nothing and `connection()` must show it all the same.
    async fn within<T>(
        &self,
        until: Instant,
        f: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        let asked = Instant::now();
        let r = tokio::time::timeout_at(until, f).await.ok();
        if r.is_none() {
            self.store.client.note(&Err::<(), _>(EtcdError::Timeout {
                endpoint: self.store.client.endpoints(),
                after: until.saturating_duration_since(asked),
            }));
        }
        r
    }

    /// Says that this instance no longer leads. The fence stays until the control plane has
    /// stopped its drivers (`EtcdStore::lift_fence`), so that nothing they decide as leader
    /// meanwhile is written unconditioned.
    fn step_down(&self, leading: &mut Option<i64>) {
        if leading.take().is_some() {
            self.publish(false, None);
        }
    }

    fn record(&self) -> InstanceRecord {
        InstanceRecord {
            revision: self.store.connection().revision,
            last_contact: crate::sys::unix_ms(),
            ..self.me.clone()
        }
    }

    fn publish(&self, me: bool, leader: Option<InstanceRecord>) {
        self.tx.send_if_modified(|l| {
            let new = Leadership { leader, me };
            let changed = *l != new;
            *l = new;
            changed
        });
    }
}

/// The next answer of the leader watch, or never when there is none.
async fn next_of(follow: &mut Option<RawWatch>) -> Raw {
    match follow {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

fn lease_gone(e: &EtcdError) -> bool {
    matches!(e, EtcdError::Status { message, .. } if message.contains("lease not found"))
}
