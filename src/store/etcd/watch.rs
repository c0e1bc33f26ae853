//! The fleet's changes, in revision order, from an etcd watch on the prefix. The stream is
//! reopened by itself (with backoff) from the revision after the last one delivered; when
//! etcd no longer has that history (compacted) or cancels the watch, the caller is told to
//! reload (`Change::Resync`).

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::client::{EtcdError, Lines};
use super::keys::Key;
use super::wire::{self, Streamed, WatchEvent, WatchResponse};
use super::{ConfigRecord, EtcdStore, InstanceRecord};
use crate::rollout::Rollout;
use crate::store::TrafficRecord;

/// The first pause before reopening a broken watch; doubled up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How long a new watch may take to be registered.
const OPEN_WAIT: Duration = Duration::from_secs(2);
/// How long the fleet's watch may go without an answer before it is taken for stuck and
/// reopened. Every instance rewrites its record under the prefix each second
/// (`election::REFRESH`), so a healthy watch is never silent this long; a stuck one (a
/// half-open connection, a proxy that stopped forwarding) would otherwise leave the instance
/// serving an old state without knowing it.
const SILENT: Duration = Duration::from_secs(5);
/// After `SILENT`, how long the stream gets once more before it is taken for stuck.
const WAKE_GRACE: Duration = Duration::from_millis(200);

/// One change of the shared state.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// `None`: the key was deleted.
    Traffic {
        service: String,
        record: Option<TrafficRecord>,
    },
    /// Boxed: a rollout (its strategy, steps and rules) is the largest change by far.
    Rollout(Box<Rollout>),
    Config(ConfigRecord),
    /// `None`: no leader (its lease ran out or it resigned).
    Leader(Option<InstanceRecord>),
    Instance {
        name: String,
        record: Option<InstanceRecord>,
    },
    /// The watch could not go on from where it stood (etcd compacted that history, or the
    /// watch was cancelled): reload the whole state (`Store::load`) and go on from `Batch`'s
    /// revision.
    Resync,
}

/// The changes of one etcd revision or more, all at or below `revision`.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub revision: i64,
    pub changes: Vec<Change>,
}

/// A watch that survives etcd restarts: `next` reconnects by itself (with backoff) from the
/// last revision it delivered, and while it cannot, `EtcdStore::connection` says so.
pub struct Watch {
    store: Arc<EtcdStore>,
    raw: RawWatch,
}

impl Watch {
    pub(super) fn new(store: Arc<EtcdStore>, from_revision: i64) -> Watch {
        let all = store.keys.all();
        let mut raw = RawWatch::new(store.clone(), &all, true, from_revision);
        raw.silent = Some(SILENT);
        Watch { raw, store }
    }

    /// Opens the stream now (best effort: `next` opens it again if this failed).
    pub(super) async fn open(&mut self) {
        let _ = self.raw.open().await;
    }

    /// The next batch of changes; waits (reconnecting as needed) until there is one.
    pub async fn next(&mut self) -> Batch {
        loop {
            let raw = tokio::select! {
                raw = self.raw.next() => raw,
                () = self.store.resync_wanted.notified() => {
                    return Batch {
                        revision: self.raw.next_revision - 1,
                        changes: vec![Change::Resync],
                    }
                }
            };
            let (revision, events) = match raw {
                Raw::Resync(revision) => {
                    return Batch {
                        revision,
                        changes: vec![Change::Resync],
                    }
                }
                Raw::Events(revision, events) => (revision, events),
            };
            self.store.client.saw_revision(revision);
            let changes: Vec<Change> = events.iter().filter_map(|e| self.change(e)).collect();
            if !changes.is_empty() {
                return Batch { revision, changes };
            }
        }
    }

    /// The typed change of an event; `None` for keys the state does not follow (ids,
    /// events) and for values that cannot be read (logged).
    fn change(&self, e: &WatchEvent) -> Option<Change> {
        let key = e.kv.key_str();
        Some(match self.store.keys.decode(&key) {
            Key::Traffic(service) => Change::Traffic {
                record: value(e, "traffic")?,
                service,
            },
            Key::Rollout => Change::Rollout(value(e, "rollout")??),
            Key::Config => Change::Config(value(e, "config")??),
            Key::Leader => Change::Leader(value(e, "leader")?),
            Key::Instance(name) => Change::Instance {
                record: value(e, "instance")?,
                name,
            },
            Key::Event | Key::Other => return None,
        })
    }
}

/// An event's value: `Some(None)` for a delete, `None` when it cannot be read (logged).
fn value<T: DeserializeOwned>(e: &WatchEvent, what: &str) -> Option<Option<T>> {
    if e.is_delete() {
        return Some(None);
    }
    match serde_json::from_slice(&e.kv.value) {
        Ok(v) => Some(Some(v)),
        Err(err) => {
            tracing::warn!(key = e.kv.key_str(), %err, "etcd watch: unreadable {what}, skipped");
            None
        }
    }
}

/// What a raw watch yields.
pub(super) enum Raw {
    /// The events of one answer, and the highest revision among them.
    Events(i64, Vec<WatchEvent>),
    /// History lost: reload, then go on after this revision.
    Resync(i64),
}

/// A watch on one key or prefix that reopens itself; shared by `Watch` and the election's
/// watch of the leader key.
pub(super) struct RawWatch {
    store: Arc<EtcdStore>,
    request: serde_json::Value,
    next_revision: i64,
    lines: Option<Lines>,
    /// The first answer of a new stream, when it was more than "created".
    pending: Option<Streamed<WatchResponse>>,
    backoff: Duration,
    /// A stream without an answer for this long is reopened (see `SILENT`); `None` for a
    /// watch that may rightly be silent (one key).
    silent: Option<Duration>,
}

impl RawWatch {
    /// Events after `from_revision` on `key` (a prefix when `prefix`).
    pub(super) fn new(
        store: Arc<EtcdStore>,
        key: &str,
        prefix: bool,
        from_revision: i64,
    ) -> RawWatch {
        let request = if prefix {
            wire::range_prefix(key)
        } else {
            wire::range(key)
        };
        RawWatch {
            store,
            request,
            next_revision: from_revision + 1,
            lines: None,
            pending: None,
            backoff: MIN_BACKOFF,
            silent: None,
        }
    }

    /// The next answer with events; reconnects as needed. Cancel-safe.
    pub(super) async fn next(&mut self) -> Raw {
        loop {
            let answer = match self.answer().await {
                Ok(Some(a)) => a,
                Ok(None) => {
                    // Closed by etcd (shutting down, or a proxy's idle limit): reopen after
                    // a pause, which the open's outcome then reports.
                    self.lines = None;
                    self.pause().await;
                    continue;
                }
                Err(e) => {
                    self.failed(e).await;
                    continue;
                }
            };
            self.store.client.note(&Ok::<(), EtcdError>(()));
            self.backoff = MIN_BACKOFF;
            let Some(w) = answer.result else {
                // An error object in the stream: open a new one.
                self.lines = None;
                continue;
            };
            if w.canceled || w.compact_revision > 0 {
                tracing::warn!(
                    compacted = w.compact_revision,
                    reason = w.cancel_reason,
                    "etcd watch cancelled: reloading the state"
                );
                self.lines = None;
                if let Some(now) = self.current_revision().await {
                    self.next_revision = now + 1;
                    return Raw::Resync(now);
                }
                continue;
            }
            let Some(last) = w.events.iter().map(|e| e.kv.mod_revision).max() else {
                continue;
            };
            self.next_revision = last + 1;
            return Raw::Events(last, w.events);
        }
    }

    /// The next answer, opening the stream first when there is none.
    async fn answer(&mut self) -> Result<Option<Streamed<WatchResponse>>, EtcdError> {
        if self.lines.is_none() {
            self.open().await?;
        }
        if let Some(first) = self.pending.take() {
            return Ok(Some(first));
        }
        let (Some(lines), Some(limit)) = (&mut self.lines, self.silent) else {
            return match &mut self.lines {
                Some(lines) => lines.next().await,
                None => Ok(None),
            };
        };
        if let Ok(answer) = tokio::time::timeout(limit, lines.next()).await {
            return answer;
        }
        // A process that was stopped (SIGSTOP, a frozen VM) wakes with the timer already run
        // out and the answers that came meanwhile still unread: those come first.
        match tokio::time::timeout(WAKE_GRACE, lines.next()).await {
            Ok(answer) => answer,
            Err(_) => {
                tracing::warn!(silent_for = ?limit, from_revision = self.next_revision,
                    "etcd watch silent for longer than a healthy one can be: reopening it");
                self.store.client.note_stuck_watch();
                // As if closed: `next` reopens it from the revision after the last delivered.
                Ok(None)
            }
        }
    }

    /// Opens the stream and waits for etcd's first answer, which comes once the watch is
    /// registered: a change made after this returns is streamed at once, where a watcher
    /// still being set up would get it from etcd's catch-up loop, up to 100 ms later.
    pub(super) async fn open(&mut self) -> Result<(), EtcdError> {
        let mut create = self.request.clone();
        create["start_revision"] = self.next_revision.to_string().into();
        let body = serde_json::json!({ "create_request": create });
        let mut lines = self.store.client.stream("/v3/watch", &body).await?;
        let first = tokio::time::timeout(OPEN_WAIT, lines.next::<Streamed<WatchResponse>>()).await;
        let first = match first {
            Err(_) => {
                return Err(EtcdError::Timeout {
                    endpoint: self.store.client.endpoints(),
                    after: OPEN_WAIT,
                })
            }
            Ok(first) => first?,
        };
        // A plain "created" says nothing more; anything else is for `next`.
        self.pending = first.filter(|a| {
            a.result
                .as_ref()
                .is_none_or(|w| w.canceled || w.compact_revision > 0 || !w.events.is_empty())
        });
        self.lines = Some(lines);
        Ok(())
    }

    /// The stream broke or could not be opened: noted (the store shows itself disconnected),
    /// then a pause before the next try.
    async fn failed(&mut self, e: EtcdError) {
        self.lines = None;
        self.store.client.note(&Err::<(), _>(e));
        self.pause().await;
    }

    /// Waits before the next try, longer each time until an answer comes.
    async fn pause(&mut self) {
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// etcd's revision now, to go on from after a reload; `None` when unreachable (noted).
    async fn current_revision(&mut self) -> Option<i64> {
        let mut probe = self.request.clone();
        probe["limit"] = "1".into();
        probe["keys_only"] = true.into();
        match self.store.range(probe).await {
            Ok(r) => Some(r.header.revision),
            Err(_) => {
                self.pause().await;
                None
            }
        }
    }
}
