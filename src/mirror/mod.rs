//! Mirror and compare: a share of a service's requests is copied to a group — the one
//! `[service.mirror]` names, or a rollout's candidate from its mirror steps on — and each
//! copy's answer, thrown away, is compared with the real answer (`compare`). The share of
//! copies whose answer differed, per second, is the `mirror-mismatch-rate` analyses judge.
//!
//! The real request never waits for its copy and never fails because of it: the request
//! path only offers the copy to a bounded queue (`try_send`, a full queue drops the copy
//! and counts it); a dispatcher task sends at most `concurrency` copies at once on the
//! mirror's own connections (`send`), each within the service's request timeout. The real
//! answer is watched as it passes to the client (`Witness`: the head, a hash of the body,
//! or the body itself up to a cap for a JSON comparison) and handed over when it ends.
//!
//! A lane (queue, dispatcher, counters, connections) outlives snapshots: a publish that
//! keeps the service's queue settings keeps its lane.

pub mod compare;
mod send;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::group::Group;
use crate::split::FULL_WEIGHT;
use compare::{Differences, Recorder, Seen};
pub use send::Copy;

/// The field a copy carries, so that a target (and its logs) can tell copies from real
/// requests.
pub static TAG: HeaderName = HeaderName::from_static("x-switchyard-mirror");

/// A service's mirror in one snapshot: where copies go, how many, and the lane they take.
#[derive(Debug)]
pub struct Mirror {
    pub group: Arc<Group>,
    /// Basis points of the eligible requests copied.
    pub share: u32,
    pub settings: Arc<crate::config::Mirror>,
    pub lane: Arc<Lane>,
    methods: Vec<Method>,
}

impl Mirror {
    pub fn new(
        group: Arc<Group>,
        share: u32,
        settings: Arc<crate::config::Mirror>,
        lane: Arc<Lane>,
    ) -> Mirror {
        let methods = settings
            .methods
            .iter()
            .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
            .collect();
        Mirror {
            group,
            share,
            settings,
            lane,
            methods,
        }
    }

    /// Whether a request of `method` that the split sent to `served` is copied this time: not
    /// one the mirror group itself serves (its answer would be compared with itself), only
    /// the configured methods, and `share` of them.
    pub fn wants(&self, served: &Group, method: &Method) -> bool {
        !std::ptr::eq(served, self.group.as_ref())
            && self.methods.contains(method)
            && (self.share >= FULL_WEIGHT || fastrand::u32(..FULL_WEIGHT) < self.share)
    }

    /// Queues a copy of a request whose head is `copy` and whose body is `body` (whole, or
    /// to come from the upload's tee); the witness to give the real answer to, or `None`
    /// when the queue is full (counted). Never waits.
    pub fn offer(&self, mut copy: Copy, body: Body, timeout: Duration) -> Option<Witness> {
        copy.headers
            .insert(TAG.clone(), HeaderValue::from_static("1"));
        let (tx, real) = oneshot::channel();
        let job = Job {
            copy,
            body,
            group: self.group.clone(),
            settings: self.settings.clone(),
            timeout,
            real,
        };
        match self.lane.tx.try_send(job) {
            Ok(()) => Some(Witness {
                tx,
                rec: Recorder::new(&self.settings.compare),
                settings: self.settings.clone(),
            }),
            Err(_) => {
                self.lane.counts.dropped.fetch_add(1, Relaxed);
                None
            }
        }
    }

    /// Whether the queue has room for a copy now; a full one drops it (counted) before
    /// anything is copied, so a saturated mirror costs the request path a load or two.
    pub fn room(&self) -> bool {
        let room = self.lane.tx.capacity() > 0;
        if !room {
            self.lane.counts.dropped.fetch_add(1, Relaxed);
        }
        room
    }

    /// A request whose body is too long to copy.
    pub fn too_large(&self) {
        self.lane.counts.too_large.fetch_add(1, Relaxed);
    }
}

/// A copy's body: known when the request was offered, or the upload's tee's when it ends
/// (dropped, with no body, when the upload fails or passes the cap).
#[derive(Debug)]
pub enum Body {
    Ready(Bytes),
    Tee(oneshot::Receiver<Bytes>),
}

/// The real answer as it passes: its head, then its body chunk by chunk; handed to the copy
/// when it ends whole. Dropped otherwise (a broken answer, a client gone): the copy then
/// has nothing to be compared with, and is counted so.
#[derive(Debug)]
pub struct Witness {
    tx: oneshot::Sender<Seen>,
    rec: Recorder,
    settings: Arc<crate::config::Mirror>,
}

impl Witness {
    pub fn head(&mut self, status: u16, headers: &http::HeaderMap, took: Duration) {
        self.rec.head(&self.settings.compare, status, headers, took);
    }

    pub fn data(&mut self, chunk: &[u8]) {
        // The copy gave up (timed out, or the lane is gone): nothing more to keep.
        if self.tx.is_closed() {
            self.rec.stop();
            return;
        }
        self.rec.data(chunk);
    }

    pub fn done(self) {
        if let Some(seen) = self.rec.finish() {
            let _ = self.tx.send(seen);
        }
    }
}

/// A mirror's queue, its dispatcher and its counters; kept across snapshots.
#[derive(Debug)]
pub struct Lane {
    tx: mpsc::Sender<Job>,
    pub counts: Arc<Counts>,
    pub queue: usize,
    pub concurrency: usize,
}

/// What became of a mirror's copies (`switchyard_mirror_copies_total`,
/// `switchyard_mirror_mismatches_total`, and `status`).
#[derive(Debug, Default)]
pub struct Counts {
    /// Copy and real answer both whole, compared.
    pub compared: AtomicU64,
    /// Compared and different in at least one way, or without an answer (`copy_failed`).
    pub mismatched: AtomicU64,
    /// By kind: status, headers, body, latency, no_answer.
    pub kinds: [AtomicU64; 5],
    /// The queue was full: not copied.
    pub dropped: AtomicU64,
    /// The request's body was longer than `max_body_bytes`: not copied.
    pub too_large: AtomicU64,
    /// The mirror group had no routable target.
    pub no_target: AtomicU64,
    /// The copy got no answer (could not connect, timed out, broke off) while the real one
    /// did: a difference (`no_answer`) in the mismatch rate, apart from `compared`.
    pub copy_failed: AtomicU64,
    /// The real answer did not end whole (or the upload did not): nothing to compare with.
    pub real_incomplete: AtomicU64,
}

pub const KINDS: [&str; 5] = ["status", "headers", "body", "latency", "no_answer"];

impl Counts {
    fn record(&self, d: &Differences) {
        if d.any() {
            self.mismatched.fetch_add(1, Relaxed);
        }
        for k in d.kinds() {
            let i = KINDS.iter().position(|x| *x == k).expect("a known kind");
            self.kinds[i].fetch_add(1, Relaxed);
        }
    }

    /// Outcomes by name, for `/metrics` and `status`.
    pub fn outcomes(&self) -> [(&'static str, u64); 6] {
        [
            ("compared", self.compared.load(Relaxed)),
            ("dropped", self.dropped.load(Relaxed)),
            ("too_large", self.too_large.load(Relaxed)),
            ("no_target", self.no_target.load(Relaxed)),
            ("copy_failed", self.copy_failed.load(Relaxed)),
            ("real_incomplete", self.real_incomplete.load(Relaxed)),
        ]
    }
}

impl Lane {
    /// A new lane with its dispatcher; `None` outside a runtime (a snapshot built to check a
    /// configuration sends nothing).
    pub fn start(queue: usize, concurrency: usize) -> Option<Arc<Lane>> {
        let rt = tokio::runtime::Handle::try_current().ok()?;
        let (tx, rx) = mpsc::channel(queue.max(1));
        let counts = Arc::new(Counts::default());
        rt.spawn(dispatch(
            rx,
            (queue.max(1), concurrency.max(1)),
            counts.clone(),
        ));
        Some(Arc::new(Lane {
            tx,
            counts,
            queue,
            concurrency,
        }))
    }

    /// Copies waiting now.
    pub fn waiting(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

#[derive(Debug)]
struct Job {
    copy: Copy,
    body: Body,
    group: Arc<Group>,
    settings: Arc<crate::config::Mirror>,
    timeout: Duration,
    real: oneshot::Receiver<Seen>,
}

/// Takes copies off the queue and starts them: at most `queue + concurrency` started at
/// once (waiting for their body, an exchange slot or the real answer), `queue` more waiting
/// in the channel, and at most `concurrency` exchanges with the mirror group at a time —
/// a slot is held only for the exchange itself. Ends when the lane is dropped (every
/// snapshot that held it replaced).
async fn dispatch(
    mut rx: mpsc::Receiver<Job>,
    (queue, concurrency): (usize, usize),
    counts: Arc<Counts>,
) {
    let started = Arc::new(Semaphore::new(queue + concurrency));
    let slots = Arc::new(Semaphore::new(concurrency));
    let conns = Arc::new(send::Conns::default());
    loop {
        let Ok(live) = started.clone().acquire_owned().await else {
            break;
        };
        let Some(job) = rx.recv().await else {
            break;
        };
        let (counts, conns, slots) = (counts.clone(), conns.clone(), slots.clone());
        tokio::spawn(async move {
            run(job, &counts, &conns, &slots).await;
            drop(live);
        });
    }
}

/// One copy: its body (if it comes from a tee), the exchange, then the real answer, and the
/// comparison, counted in the lane and in the mirror group's seconds. Each wait is bounded
/// by the request timeout.
async fn run(job: Job, counts: &Counts, conns: &send::Conns, slots: &Semaphore) {
    let Job {
        mut copy,
        body,
        group,
        settings,
        timeout,
        real,
    } = job;
    copy.body = match body {
        Body::Ready(b) => b,
        Body::Tee(rx) => match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(b)) => b,
            // The upload failed, outgrew the cap or stalled: no copy.
            _ => {
                counts.real_incomplete.fetch_add(1, Relaxed);
                return;
            }
        },
    };
    let copy = {
        let Ok(_slot) = slots.acquire().await else {
            return;
        };
        let copied = send::send(conns, &group, copy, &settings.compare);
        match tokio::time::timeout(timeout, copied).await {
            Ok(Ok(seen)) => Some(seen),
            Ok(Err(send::CopyError::NoTarget(_))) => {
                counts.no_target.fetch_add(1, Relaxed);
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(group = %group.name, error = %e, "mirrored copy failed");
                None
            }
            Err(_) => None,
        }
    };
    let Ok(Ok(real)) = tokio::time::timeout(timeout, real).await else {
        counts.real_incomplete.fetch_add(1, Relaxed);
        return;
    };
    let d = match copy {
        Some(c) => {
            counts.compared.fetch_add(1, Relaxed);
            compare::compare(&settings.compare, &real, &c)
        }
        // No answer at all: a difference of its own kind, in the rate analyses judge.
        None => {
            counts.copy_failed.fetch_add(1, Relaxed);
            Differences {
                no_answer: true,
                ..Differences::default()
            }
        }
    };
    counts.record(&d);
    group
        .stats
        .window
        .record_mirror(crate::metrics::now_second(), d.any());
}
