//! The one writer of the state database: an ordered queue worked by one task.
//!
//! Two kinds of writes go through it:
//! - **forward** writes (a step, a promotion, a start, a switch, a config): the caller waits
//!   for the result (at most `FORWARD_WAIT`) and publishes only once the write landed; tried
//!   once, so that a store that cannot be written refuses the change quickly instead of
//!   holding it;
//! - **durable** writes (a rollback, a hold, a hook's event): the caller has already
//!   published them and does not wait; they are retried with backoff until they land, in
//!   order, because a rollback must never depend on the store being writable.
//!
//! While a durable write is pending and the store fails (or has been writing it for longer
//! than `FORWARD_WAIT`), forward writes are refused up front (and those already queued
//! behind it fail): nothing moves traffic toward a candidate while the database does not
//! know about a rollback. A forward write queued before a state-carrying durable write of the
//! same service (a rollback or a hold, not a hook's event) is dropped when its turn comes:
//! the durable write carries the service's whole state and supersedes it, so an earlier
//! write never lands after a later one.
//!
//! The task is supervised: if it ends (a panic, or shutdown) every waiting caller gets an
//! error and new forward writes are refused, instead of waiting for a reply that never comes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard as StdGuard, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{oneshot, Notify};

use crate::store::{Commit, NewRollout, Store, StoreError};
use crate::sys::unix_ms;

/// First wait before a failed durable write is tried again; it doubles up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How long a forward change waits for its write (queue included) before it is refused
/// with `StoreUnavailable`: a few times the store's busy timeout, so that a store that
/// hangs instead of failing (a stuck disk, NFS) answers 503 rather than holding the caller
/// and the `writer` lock. Also how long a durable write may run before forward writes are
/// refused up front.
pub(super) const FORWARD_WAIT: Duration = Duration::from_secs(2);

/// Why a forward write did not happen.
#[derive(Debug, thiserror::Error)]
pub(super) enum WriteError {
    /// The store refused it, or durable writes are still waiting for it.
    #[error("{0}")]
    Unavailable(String),
    /// A rollback (or hold) of the same service was decided while it waited; not written.
    #[error("superseded by a rollback of the same service")]
    Superseded,
    /// Another instance of the fleet changed the same services after this decision was made.
    #[error("{0}")]
    Stale(String),
}

pub(super) enum Write {
    Commit(Box<Commit>),
    /// A new rollout: its id comes from the database.
    NewRollout(Arc<NewRollout>),
    /// A batch of a rollout's recorded seconds (`history`): tried once like a forward write.
    Seconds(Box<crate::store::seconds::Batch>),
}

/// What a durable write records; it words logs and messages, and decides whether the write
/// supersedes forward writes of its services queued before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Kind {
    /// A hook's result: an event only, no state.
    Event,
    /// A rollout held (paused) where it is: carries the service's whole state.
    Hold,
    /// Traffic back to stable (abort, undo, a failed check): carries the whole state.
    Rollback,
}

impl Kind {
    /// Only writes that carry the service's whole state make an earlier forward write moot;
    /// a hook's event does not, and dropping a step for it would lose the step.
    pub(super) fn supersedes(self) -> bool {
        self != Kind::Event
    }

    pub(super) fn noun(self) -> &'static str {
        match self {
            Kind::Event => "event",
            Kind::Hold => "hold",
            Kind::Rollback => "rollback",
        }
    }
}

type Reply = Result<Option<u64>, WriteError>;

enum Job {
    /// Tried once; its caller waits for the reply.
    Forward(oneshot::Sender<Reply>),
    /// Already published; retried until it lands.
    Durable(Kind),
}

struct Entry {
    write: Write,
    services: Vec<String>,
    job: Job,
}

#[derive(Default)]
struct Queue {
    entries: VecDeque<Entry>,
    /// Set when the writer stops (shutdown, or its task ended): forward writes are refused.
    closed: Option<String>,
    /// When the current attempt at the durable write at the head began, while it runs.
    durable_since: Option<Instant>,
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
    queue: Mutex<Queue>,
    wake: Notify,
    health: Mutex<StoreHealth>,
    task: OnceLock<tokio::task::AbortHandle>,
    /// Counts durable writes that left the queue (landed, or dropped as moot): the fleet
    /// looks again then at what the watch set aside for them.
    landed: tokio::sync::watch::Sender<u64>,
}

/// A poisoned lock only means a panic elsewhere (which the supervisor reports); the data is
/// still consistent enough to answer callers, which matters more than propagating it.
fn lock<T>(m: &Mutex<T>) -> StdGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Persister {
    /// Starts the writer task and its supervisor.
    pub(super) fn spawn(store: Arc<dyn Store>) -> Arc<Persister> {
        let p = Arc::new(Persister {
            store,
            queue: Mutex::default(),
            wake: Notify::new(),
            health: Mutex::default(),
            task: OnceLock::new(),
            landed: tokio::sync::watch::Sender::new(0),
        });
        let run = tokio::spawn(p.clone().run());
        let _ = p.task.set(run.abort_handle());
        let sup = p.clone();
        tokio::spawn(async move {
            let why = match run.await {
                Err(e) if e.is_panic() => {
                    tracing::error!("the state database writer panicked; nothing more is written");
                    "the state database writer stopped after a panic"
                }
                _ => "switchyard is shutting down",
            };
            sup.stop(why);
        });
        p
    }

    pub(super) fn health(&self) -> StoreHealth {
        lock(&self.health).clone()
    }

    /// Changes each time a durable write leaves the queue.
    pub(super) fn landings(&self) -> tokio::sync::watch::Receiver<u64> {
        self.landed.subscribe()
    }

    /// The most serious durable write about `service` still waiting for the store.
    pub(super) fn pending_kind(&self, service: &str) -> Option<Kind> {
        lock(&self.queue)
            .entries
            .iter()
            .filter(|e| e.services.iter().any(|s| s == service))
            .filter_map(|e| match e.job {
                Job::Durable(k) => Some(k),
                Job::Forward(_) => None,
            })
            .max()
    }

    /// Queues a write the caller has already published; it lands when the store lets it.
    /// Call it under the control lock so that the queue's order is the order of decisions.
    pub(super) fn durable(&self, kind: Kind, services: Vec<String>, mut commit: Commit) {
        // Decided under this leadership: retried, it is written only while that holds.
        commit.fence = self.store.fence();
        commit.token = fastrand::u64(1..);
        // Queue first, then health, both under the queue lock (the lock order everywhere).
        let mut q = lock(&self.queue);
        {
            let mut h = lock(&self.health);
            h.pending_writes += 1;
            for s in &services {
                if !h.pending_services.contains(s) {
                    h.pending_services.push(s.clone());
                }
            }
        }
        q.entries.push_back(Entry {
            write: Write::Commit(Box::new(commit)),
            services,
            job: Job::Durable(kind),
        });
        drop(q);
        self.wake.notify_one();
    }

    /// Queues a forward write and returns where its result will come. Refused at once when
    /// the writer is closed, or while a durable write is pending and the store has been
    /// failing (or has been writing it for longer than `FORWARD_WAIT`); behind a durable
    /// write that is merely being written (the usual case: a pause step just recorded) it
    /// waits its turn, and fails with it if that write fails. Queue it under the control
    /// lock (the order of decisions), await it without.
    pub(super) fn forward(
        &self,
        services: Vec<String>,
        write: Write,
    ) -> Result<oneshot::Receiver<Reply>, WriteError> {
        let mut q = lock(&self.queue);
        if let Some(why) = &q.closed {
            return Err(WriteError::Unavailable(why.clone()));
        }
        let h = self.health();
        let slow = q.durable_since.filter(|t| t.elapsed() > FORWARD_WAIT);
        if h.pending_writes > 0 && (h.failing_since.is_some() || slow.is_some()) {
            let why = match (h.last_error, slow) {
                (Some(e), _) => format!(" (last error: {e})"),
                (None, Some(t)) => {
                    format!(" (the current one has been running for {:?})", t.elapsed())
                }
                (None, None) => String::new(),
            };
            return Err(WriteError::Unavailable(format!(
                "{} for {} waiting for it{why}",
                describe(&q.entries),
                h.pending_services.join(", "),
            )));
        }
        let (tx, rx) = oneshot::channel();
        q.entries.push_back(Entry {
            write,
            services,
            job: Job::Forward(tx),
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
                let mut q = lock(&self.queue);
                match q.entries.front().map(|e| &e.job) {
                    None => None,
                    Some(Job::Forward(_)) => {
                        let e = q.entries.pop_front().expect("front");
                        let superseded = q.entries.iter().any(|later| {
                            matches!(later.job, Job::Durable(k) if k.supersedes())
                                && later.services.iter().any(|s| e.services.contains(s))
                        });
                        Some(Some((e, superseded)))
                    }
                    Some(Job::Durable(_)) => {
                        q.durable_since = Some(Instant::now());
                        Some(None)
                    }
                }
            };
            match next {
                None => self.wake.notified().await,
                Some(Some((e, superseded))) => {
                    let Job::Forward(reply) = e.job else {
                        unreachable!("popped a forward write")
                    };
                    if superseded {
                        let _ = reply.send(Err(WriteError::Superseded));
                        continue;
                    }
                    if reply.is_closed() {
                        // Its caller gave up waiting (FORWARD_WAIT) and was told it failed:
                        // it must not land now.
                        continue;
                    }
                    let store = self.store.clone();
                    let result = blocking(move || match e.write {
                        Write::Commit(c) => store.commit(&c).map(|()| None),
                        Write::NewRollout(make) => store.create_rollout(&*make).map(Some),
                        Write::Seconds(b) => store.record_seconds(&b).map(|()| None),
                    })
                    .await;
                    let answer = match result {
                        Ok(id) => {
                            self.written();
                            Ok(id)
                        }
                        // Another instance of the fleet changed the same state first: this
                        // decision was made on an old state, and the store is fine.
                        Err(StoreError::Stale(what)) => Err(WriteError::Stale(what)),
                        // This instance was deposed while it decided: nothing is wrong with
                        // the store, and the new leader decides from here.
                        Err(e @ StoreError::Fenced) => Err(WriteError::Unavailable(e.to_string())),
                        Err(err) => {
                            let err = err.to_string();
                            self.failed(&err);
                            Err(WriteError::Unavailable(err))
                        }
                    };
                    let _ = reply.send(answer);
                }
                Some(None) => {
                    let (commit, kind) = {
                        let q = lock(&self.queue);
                        let head = q.entries.front().expect("durable at the head");
                        match (&head.write, &head.job) {
                            (Write::Commit(c), Job::Durable(k)) => ((**c).clone(), *k),
                            _ => unreachable!("durable writes are commits"),
                        }
                    };
                    let store = self.store.clone();
                    let result = blocking(move || store.commit(&commit)).await;
                    lock(&self.queue).durable_since = None;
                    match result {
                        Ok(()) => {
                            self.durable_written();
                            backoff = MIN_BACKOFF;
                        }
                        // Decided while this instance led the fleet, which it no longer does:
                        // never written (the new leader decides from the recorded state).
                        // About a rollout another instance replaced with a newer one while
                        // this one could not reach the store: moot (the store reloads this
                        // instance's view of the fleet).
                        Err(e @ (StoreError::Superseded { .. } | StoreError::Ended { .. })) => {
                            tracing::warn!(error = %e, "a {} decided on an old view of the fleet is dropped", kind.noun());
                            self.durable_written();
                        }
                        Err(StoreError::Fenced) => {
                            tracing::error!(services = %lock(&self.queue).entries.front().map(|e| e.services.join(",")).unwrap_or_default(),
                                "a {} decided while this instance led the fleet is dropped: it no longer leads",
                                kind.noun());
                            self.durable_written();
                        }
                        Err(err) => {
                            let err = err.to_string();
                            self.failed(&err);
                            // Forward writes queued behind it would wait for the outage:
                            // they fail now instead (they only ever get one try).
                            self.fail_forward(&err);
                            let h = self.health();
                            tracing::error!(error = %err, pending = h.pending_writes,
                                services = %h.pending_services.join(","),
                                retry_in_ms = backoff.as_millis() as u64,
                                "state database not writable: a {} already applied is not recorded yet",
                                kind.noun());
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                        }
                    }
                }
            }
        }
    }

    /// Answers every queued forward write with `why`; durable ones stay (and stay counted).
    fn fail_forward(&self, why: &str) {
        let failed: VecDeque<Entry> = {
            let mut q = lock(&self.queue);
            let (keep, fail) = q
                .entries
                .drain(..)
                .partition(|e| matches!(e.job, Job::Durable(_)));
            q.entries = keep;
            fail
        };
        for e in failed {
            if let Job::Forward(reply) = e.job {
                let _ = reply.send(Err(WriteError::Unavailable(why.to_string())));
            }
        }
    }

    /// The writer is gone: refuse forward writes from now on and answer those waiting.
    fn stop(&self, why: &str) {
        lock(&self.queue).closed = Some(why.to_string());
        self.fail_forward(why);
        let mut h = lock(&self.health);
        if h.pending_writes > 0 {
            h.last_error = Some(why.to_string());
            h.failing_since.get_or_insert_with(unix_ms);
        }
    }

    fn failed(&self, err: &str) {
        let mut h = lock(&self.health);
        h.last_error = Some(err.to_string());
        h.failing_since.get_or_insert_with(unix_ms);
    }

    fn written(&self) {
        let mut h = lock(&self.health);
        if h.pending_writes == 0 {
            h.last_error = None;
            h.failing_since = None;
        }
    }

    /// The durable write at the head landed: it leaves the queue and the count together.
    fn durable_written(&self) {
        let mut q = lock(&self.queue);
        q.entries.pop_front();
        let services: Vec<String> = q
            .entries
            .iter()
            .filter(|e| matches!(e.job, Job::Durable(_)))
            .flat_map(|e| e.services.iter().cloned())
            .collect();
        let mut h = lock(&self.health);
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
        drop(h);
        drop(q);
        self.landed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// At shutdown, once nothing decides anything any more: refuses new forward writes and
    /// answers queued ones, waits up to `limit` for pending durable writes, then stops the
    /// task (its supervisor answers whatever is left). Returns how many durable writes the
    /// database did not take.
    pub(super) async fn close(&self, limit: Duration) -> usize {
        self.stop("switchyard is shutting down");
        let deadline = tokio::time::Instant::now() + limit;
        let left = loop {
            let left = self.health().pending_writes;
            if left == 0 || tokio::time::Instant::now() >= deadline {
                break left;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if let Some(task) = self.task.get() {
            task.abort();
        }
        left
    }
}

/// Waits at most `limit` for a forward write's result. On a timeout the receiver is
/// dropped, which tells the writer not to start it; one already running may still land,
/// which is a forward record never applied: the next step rewrites it, and a restart holds
/// at the split before it (its `step_from`, see `lifecycle`).
pub(super) async fn wait(rx: oneshot::Receiver<Reply>, limit: Duration) -> Reply {
    match tokio::time::timeout(limit, rx).await {
        Err(_) => Err(WriteError::Unavailable(format!(
            "the state database did not answer within {limit:?}"
        ))),
        Ok(Err(_)) => Err(WriteError::Unavailable(
            "the state database writer stopped".into(),
        )),
        Ok(Ok(r)) => r,
    }
}

/// Runs a store call off the async threads (SQLite fsyncs); a panic in it is an error of
/// that write, not the end of the writer.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(StoreError::Io {
            path: "state store".into(),
            reason: format!("the call failed: {e}"),
        }),
    }
}

/// "3 writes (1 rollback, 2 events)" of the durable writes in the queue.
fn describe(entries: &VecDeque<Entry>) -> String {
    let mut counts = [0usize; 3];
    for e in entries {
        if let Job::Durable(k) = e.job {
            counts[k as usize] += 1;
        }
    }
    let total: usize = counts.iter().sum();
    let parts: Vec<String> = [Kind::Rollback, Kind::Hold, Kind::Event]
        .into_iter()
        .filter(|k| counts[*k as usize] > 0)
        .map(|k| {
            let n = counts[k as usize];
            format!("{n} {}{}", k.noun(), if n == 1 { "" } else { "s" })
        })
        .collect();
    format!(
        "{total} write{} ({})",
        if total == 1 { "" } else { "s" },
        parts.join(", ")
    )
}

#[cfg(test)]
#[path = "persist_tests.rs"]
mod tests;
