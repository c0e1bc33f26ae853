//! The one writer of the state database: an ordered queue worked by one task.
//!
//! Two kinds of writes go through it:
//! - **forward** writes (a step, a promotion, a start, a switch, a config): the caller waits
//!   for the result and publishes only once the write landed; tried once, so that a store
//!   that cannot be written refuses the change quickly instead of holding it;
//! - **durable** writes (a rollback, a hold, a hook's event): the caller has already
//!   published them and does not wait; they are retried with backoff until they land, in
//!   order, because a rollback must never depend on the store being writable.
//!
//! While a durable write is pending and the store fails, forward writes are refused up
//! front (and those already queued behind it fail): nothing moves traffic toward a
//! candidate while the database does not know about a rollback. A forward
//! write queued before a durable write of the same service is dropped when its turn comes
//! (the durable write carries the service's whole state and supersedes it), so an earlier
//! write never lands after a later one.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{oneshot, Notify};

use tokio::sync::MutexGuard;

use super::{ControlError, Controller, State};
use crate::rollout::unix_ms;
use crate::store::{Commit, NewRollout, Store, StoreError};

/// First wait before a failed durable write is tried again; it doubles up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Why a forward write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The store refused it, or durable writes are still waiting for it.
    #[error("{0}")]
    Unavailable(String),
    /// A rollback of the same service was decided while it waited; it was not written.
    #[error("superseded by a rollback of the same service")]
    Superseded,
}

pub(super) enum Write {
    Commit(Box<Commit>),
    /// A new rollout: its id comes from the database.
    NewRollout(Arc<NewRollout>),
}

struct Entry {
    write: Write,
    services: Vec<String>,
    /// `Some`: a forward write, tried once, its caller waits. `None`: durable, retried.
    reply: Option<oneshot::Sender<Result<Option<u64>, WriteError>>>,
}

/// What `status` and `/metrics` show of the store.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct StoreHealth {
    /// Durable writes (rollbacks, holds, events) published but not yet in the database.
    pub pending_writes: usize,
    /// The services those writes are about.
    pub pending_services: Vec<String>,
    /// The last write error, while writes fail.
    pub last_error: Option<String>,
    /// Unix ms of the first failure of the current outage.
    pub failing_since: Option<i64>,
}

pub(super) struct Persister {
    store: Arc<dyn Store>,
    queue: Mutex<VecDeque<Entry>>,
    wake: Notify,
    health: Mutex<StoreHealth>,
}

impl Persister {
    pub(super) fn spawn(store: Arc<dyn Store>) -> (Arc<Persister>, tokio::task::AbortHandle) {
        let p = Arc::new(Persister {
            store,
            queue: Mutex::default(),
            wake: Notify::new(),
            health: Mutex::default(),
        });
        let task = tokio::spawn(p.clone().run()).abort_handle();
        (p, task)
    }

    pub(super) fn health(&self) -> StoreHealth {
        self.health.lock().expect("store health").clone()
    }

    /// Whether a durable write about `service` waits for the store.
    pub(super) fn pending_for(&self, service: &str) -> bool {
        self.health
            .lock()
            .expect("store health")
            .pending_services
            .iter()
            .any(|s| s == service)
    }

    /// Queues a write the caller has already published; it lands when the store lets it.
    /// Call it under the control lock so that the queue's order is the order of decisions.
    pub(super) fn durable(&self, services: Vec<String>, commit: Commit) {
        // Queue first, then health, both under the queue lock (the lock order everywhere).
        let mut q = self.queue.lock().expect("store queue");
        {
            let mut h = self.health.lock().expect("store health");
            h.pending_writes += 1;
            for s in &services {
                if !h.pending_services.contains(s) {
                    h.pending_services.push(s.clone());
                }
            }
        }
        q.push_back(Entry {
            write: Write::Commit(Box::new(commit)),
            services,
            reply: None,
        });
        drop(q);
        self.wake.notify_one();
    }

    /// Queues a forward write and returns where its result will come. Refused at once while
    /// a durable write is pending and the store has been failing; behind a durable write
    /// that is merely being written (the usual case: a pause step just recorded) it waits
    /// its turn, and fails with it if that write fails. Queue it under the control lock (the
    /// order of decisions), await it without.
    pub(super) fn forward(
        &self,
        services: Vec<String>,
        write: Write,
    ) -> Result<oneshot::Receiver<Result<Option<u64>, WriteError>>, WriteError> {
        let mut q = self.queue.lock().expect("store queue");
        let h = self.health();
        if h.pending_writes > 0 && h.failing_since.is_some() {
            return Err(WriteError::Unavailable(format!(
                "{} rollback write(s) for {} are waiting for it{}",
                h.pending_writes,
                h.pending_services.join(", "),
                h.last_error
                    .map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default()
            )));
        }
        let (tx, rx) = oneshot::channel();
        q.push_back(Entry {
            write,
            services,
            reply: Some(tx),
        });
        drop(q);
        self.wake.notify_one();
        Ok(rx)
    }

    async fn run(self: Arc<Self>) {
        let mut backoff = MIN_BACKOFF;
        loop {
            // Forward writes leave the queue to be tried; a durable one stays at the head
            // until it landed, so nothing behind it overtakes it.
            let next = {
                let mut q = self.queue.lock().expect("store queue");
                match q.front() {
                    None => None,
                    Some(e) if e.reply.is_some() => {
                        let e = q.pop_front().expect("front");
                        let superseded = q.iter().any(|later| {
                            later.reply.is_none()
                                && later.services.iter().any(|s| e.services.contains(s))
                        });
                        Some((Some(e), superseded))
                    }
                    Some(_) => Some((None, false)),
                }
            };
            match next {
                None => self.wake.notified().await,
                Some((Some(e), true)) => {
                    let _ = e.reply.expect("forward").send(Err(WriteError::Superseded));
                }
                Some((Some(e), false)) => {
                    let store = self.store.clone();
                    let result = tokio::task::spawn_blocking(move || match e.write {
                        Write::Commit(c) => store.commit(&c).map(|()| None),
                        Write::NewRollout(make) => store.create_rollout(&*make).map(Some),
                    })
                    .await
                    .expect("store task");
                    let reply = match result {
                        Ok(id) => {
                            self.written();
                            Ok(id)
                        }
                        Err(err) => {
                            self.failed(&err);
                            Err(WriteError::Unavailable(err.to_string()))
                        }
                    };
                    let _ = e.reply.expect("forward").send(reply);
                }
                Some((None, _)) => {
                    let commit = {
                        let q = self.queue.lock().expect("store queue");
                        match &q.front().expect("durable at the head").write {
                            Write::Commit(c) => (**c).clone(),
                            Write::NewRollout(_) => unreachable!("new rollouts are forward"),
                        }
                    };
                    let store = self.store.clone();
                    let result = tokio::task::spawn_blocking(move || store.commit(&commit))
                        .await
                        .expect("store task");
                    match result {
                        Ok(()) => {
                            self.durable_written();
                            backoff = MIN_BACKOFF;
                        }
                        Err(err) => {
                            self.failed(&err);
                            // Forward writes queued behind it would wait for the outage:
                            // they fail now instead (they only ever get one try).
                            let behind: VecDeque<Entry> = {
                                let mut q = self.queue.lock().expect("store queue");
                                let (keep, fail) = q.drain(..).partition(|e| e.reply.is_none());
                                *q = keep;
                                fail
                            };
                            for e in behind {
                                let _ = e
                                    .reply
                                    .expect("forward")
                                    .send(Err(WriteError::Unavailable(err.to_string())));
                            }
                            let h = self.health();
                            tracing::error!(error = %err, pending = h.pending_writes,
                                services = %h.pending_services.join(","),
                                retry_in_ms = backoff.as_millis() as u64,
                                "state database not writable: rollback already applied to traffic, its record is pending");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                        }
                    }
                }
            }
        }
    }

    fn failed(&self, err: &StoreError) {
        let mut h = self.health.lock().expect("store health");
        h.last_error = Some(err.to_string());
        h.failing_since.get_or_insert_with(unix_ms);
    }

    fn written(&self) {
        let mut h = self.health.lock().expect("store health");
        if h.pending_writes == 0 {
            h.last_error = None;
            h.failing_since = None;
        }
    }

    /// The durable write at the head landed: it leaves the queue and the count together.
    fn durable_written(&self) {
        let mut q = self.queue.lock().expect("store queue");
        q.pop_front();
        let services: Vec<String> = q
            .iter()
            .filter(|e| e.reply.is_none())
            .flat_map(|e| e.services.iter().cloned())
            .collect();
        let mut h = self.health.lock().expect("store health");
        h.pending_writes = h.pending_writes.saturating_sub(1);
        h.pending_services.retain(|s| services.contains(s));
        if h.pending_writes == 0 && h.failing_since.is_some() {
            tracing::warn!(
                since = h.failing_since,
                "state database writable again; every pending write is recorded"
            );
            h.last_error = None;
            h.failing_since = None;
        }
    }

    /// Waits up to `limit` for pending durable writes (at shutdown); says what is left.
    pub(super) async fn flush(&self, limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = self.health().pending_writes;
            if left == 0 || tokio::time::Instant::now() >= deadline {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Controller {
    /// Writes a forward change: queued under the control lock (so the store sees changes in
    /// the order they were decided), awaited without it (so a rollback never waits behind a
    /// store write), then the lock is taken again. The caller holds `writer`, so only a
    /// rollback can have changed the state meanwhile: it compares the service's epoch.
    pub(super) async fn write_forward<'a>(
        &'a self,
        state: MutexGuard<'a, State>,
        services: Vec<String>,
        write: Write,
    ) -> Result<(MutexGuard<'a, State>, Option<u64>), ControlError> {
        let wrote = self
            .persist
            .forward(services.clone(), write)
            .map_err(|e| write_error(&services, e))?;
        drop(state);
        let id = wrote
            .await
            .map_err(|_| ControlError::StoreUnavailable("the store writer stopped".into()))?
            .map_err(|e| write_error(&services, e))?;
        Ok((self.state.lock().await, id))
    }

    /// The store's state for `status` and `/metrics`: writes published but not yet recorded.
    pub fn store_health(&self) -> StoreHealth {
        self.persist.health()
    }
}

fn write_error(services: &[String], e: WriteError) -> ControlError {
    match e {
        WriteError::Unavailable(why) => ControlError::StoreUnavailable(why),
        WriteError::Superseded => superseded(&services.join(", ")),
    }
}

pub(super) fn superseded(service: &str) -> ControlError {
    ControlError::Conflict(format!(
        "a rollback of {service} was decided while this change waited for the state database; the change was not applied"
    ))
}
