//! What the data plane saw, per group, in one-second slots kept for 11 minutes: responses by
//! class, upstream failures, and a latency histogram (5 % wide log buckets from 100 µs to 60 s,
//! enough for p50–p99.9). Recording is a handful of relaxed atomic adds; a slot that belongs
//! to an old second is reset by whichever request first claims it. Analysis and the rollback
//! guard read ranges of seconds.
//!
//! Requests that failed through the client's fault (a stalled, aborted, broken or too large
//! upload) are counted apart, in `client_errors`: they are not answers of the version, so
//! they add to neither the requests, the status classes nor the latency that the guard and
//! analyses judge a version by.
//!
//! A fleet's leader judges the sum of every instance's traffic: a second's slot is exported
//! as a [`Second`] (the histogram sparse) for the admin API, and added into a [`Summary`].

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Milliseconds since the process started: a clock cheap enough to read per request and small
/// enough to keep in an atomic. A slot's second is this divided by 1000.
pub fn now_ms() -> u64 {
    ms_at(Instant::now())
}

/// [`now_ms`] at an instant already read: the request path reads the clock once when a
/// request starts and once when its answer arrives, and derives everything else.
pub fn ms_at(t: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    t.saturating_duration_since(*EPOCH.get_or_init(Instant::now))
        .as_millis() as u64
}

/// Copies of a [`Striped`] value: more than the workers usually run, so that threads taking
/// them in turn rarely share one.
pub const STRIPES: usize = 4;

/// One copy of a striped value, alone on its cache lines (128 bytes: the adjacent-line
/// prefetcher pairs 64-byte lines).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Line<T>(T);

/// Counters that every request adds to and only a rare reader (/metrics, the observer) sums,
/// kept in [`STRIPES`] copies on cache lines of their own: a thread adds to its own copy
/// ([`Striped::mine`]). Why: with `--workers 2` one shared counter's cache line moves between
/// the cores on every request of either (the other core must give it up before the add), and
/// a group's, a route's and a target's totals are written by every request. The window's
/// seconds stay shared: a striped copy of 11 minutes of slots per worker would cost more
/// memory than the bouncing costs time.
#[derive(Debug)]
pub struct Striped<T> {
    lines: [Line<T>; STRIPES],
}

impl<T: Default> Default for Striped<T> {
    fn default() -> Self {
        Striped {
            lines: std::array::from_fn(|_| Line::default()),
        }
    }
}

impl<T> Striped<T> {
    /// This thread's copy.
    pub fn mine(&self) -> &T {
        &self.lines[stripe()].0
    }

    /// Every copy, for a reader to sum.
    pub fn each(&self) -> impl Iterator<Item = &T> {
        self.lines.iter().map(|l| &l.0)
    }
}

impl Striped<AtomicU64> {
    pub fn add(&self, n: u64) {
        self.mine().fetch_add(n, Relaxed);
    }

    pub fn sum(&self) -> u64 {
        self.each().map(|c| c.load(Relaxed)).sum()
    }
}

/// This thread's stripe: threads take the stripes in turn as they first count something, so
/// a runtime's workers (which count first, and most) get stripes of their own.
fn stripe() -> usize {
    thread_local! {
        static MINE: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
    }
    MINE.with(|mine| {
        let s = mine.get();
        if s != usize::MAX {
            return s;
        }
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let s = NEXT.fetch_add(1, Relaxed) % STRIPES;
        mine.set(s);
        s
    })
}

/// Seconds kept: 11 minutes.
pub const SLOTS: u64 = 660;
const MIN_US: f64 = 100.0;
const GROWTH: f64 = 1.05;
/// ln(60 s / 100 µs) / ln(1.05) ≈ 273, plus under- and overflow.
pub const BUCKETS: usize = 275;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Connect,
    Timeout,
    Reset,
}

struct Slot {
    second: AtomicU64,
    requests: AtomicU64,
    classes: [AtomicU64; 5],
    failures: [AtomicU64; 3],
    client_errors: AtomicU64,
    latency: [AtomicU32; BUCKETS],
    /// Mirrored copies compared with their real answers, and those that differed.
    mirror: [AtomicU64; 2],
}

impl Slot {
    fn new() -> Slot {
        Slot {
            // Second 0's slot starts valid and empty; every other slot is claimed when its
            // second first comes.
            second: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            classes: Default::default(),
            failures: Default::default(),
            client_errors: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU32::new(0)),
            mirror: Default::default(),
        }
    }

    fn clear(&self) {
        self.requests.store(0, Relaxed);
        self.classes.iter().for_each(|c| c.store(0, Relaxed));
        self.failures.iter().for_each(|c| c.store(0, Relaxed));
        self.client_errors.store(0, Relaxed);
        self.latency.iter().for_each(|c| c.store(0, Relaxed));
        self.mirror.iter().for_each(|c| c.store(0, Relaxed));
    }
}

pub struct Window {
    slots: Box<[Slot]>,
}

impl std::fmt::Debug for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Window")
    }
}

impl Default for Window {
    fn default() -> Self {
        Window {
            slots: (0..SLOTS).map(|_| Slot::new()).collect(),
        }
    }
}

/// The current second on the window's clock.
pub fn now_second() -> u64 {
    now_ms() / 1000
}

impl Window {
    /// The slot of `second`, claimed for it if it still holds an older one; `None` when a
    /// newer second has taken it over (a write that late would count in the wrong second,
    /// so it is dropped — the slot's second is 11 minutes past it).
    fn slot(&self, second: u64) -> Option<&Slot> {
        let s = &self.slots[(second % SLOTS) as usize];
        let seen = s.second.load(Relaxed);
        if seen > second {
            return None;
        }
        // Only a newer second takes a slot over (a late writer never clears newer data).
        if seen < second {
            match s.second.compare_exchange(seen, second, Relaxed, Relaxed) {
                Ok(_) => s.clear(),
                // Another writer claimed it: for this second, or for a newer one.
                Err(now) if now != second => return None,
                Err(_) => {}
            }
        }
        Some(s)
    }

    /// One response (from the target or from switchyard itself) and how long it took.
    pub fn record(&self, second: u64, status: u16, latency: Duration, failure: Option<Failure>) {
        let Some(s) = self.slot(second) else { return };
        s.requests.fetch_add(1, Relaxed);
        s.classes[(status / 100).clamp(1, 5) as usize - 1].fetch_add(1, Relaxed);
        if let Some(f) = failure {
            s.failures[f as usize].fetch_add(1, Relaxed);
        }
        s.latency[bucket(latency)].fetch_add(1, Relaxed);
    }

    /// A request that failed through the client's fault (see the module comment).
    pub fn record_client_error(&self, second: u64) {
        if let Some(s) = self.slot(second) {
            s.client_errors.fetch_add(1, Relaxed);
        }
    }

    /// A mirrored copy of a request to another group, compared with the real answer (see
    /// `crate::mirror`): counted in the mirror group's seconds, apart from its answers.
    pub fn record_mirror(&self, second: u64, mismatched: bool) {
        let Some(s) = self.slot(second) else { return };
        s.mirror[0].fetch_add(1, Relaxed);
        if mismatched {
            s.mirror[1].fetch_add(1, Relaxed);
        }
    }

    /// The slots of the seconds `[from, to]` still kept (at most the last 11 minutes up to
    /// `to`), each with its second; slots a newer second took over are skipped.
    fn slots_in(&self, from: u64, to: u64) -> impl Iterator<Item = (u64, &Slot)> {
        (from.max(to.saturating_sub(SLOTS - 1))..=to).filter_map(move |sec| {
            let s = &self.slots[(sec % SLOTS) as usize];
            (s.second.load(Relaxed) == sec).then_some((sec, s))
        })
    }

    /// Totals over the seconds `[from, to]` (slots of other seconds are skipped).
    pub fn summary(&self, from: u64, to: u64) -> Summary {
        let mut out = Summary {
            seconds: to.saturating_sub(from) + 1,
            ..Summary::default()
        };
        for (_, s) in self.slots_in(from, to) {
            out.requests += s.requests.load(Relaxed);
            for i in 0..5 {
                out.classes[i] += s.classes[i].load(Relaxed);
            }
            for i in 0..3 {
                out.failures[i] += s.failures[i].load(Relaxed);
            }
            out.client_errors += s.client_errors.load(Relaxed);
            out.mirror_compared += s.mirror[0].load(Relaxed);
            out.mirror_mismatched += s.mirror[1].load(Relaxed);
            for (h, b) in out.latency.iter_mut().zip(s.latency.iter()) {
                *h += b.load(Relaxed) as u64;
            }
        }
        out
    }

    /// The current (partial) second and the `window` of whole seconds before it, so a
    /// measurement just after a second begins still sees a full window of traffic.
    pub fn last(&self, window: Duration) -> Summary {
        self.last_since(window, 0)
    }

    /// `last`, but nothing before second `since`.
    pub fn last_since(&self, window: Duration, since: u64) -> Summary {
        let (from, to) = last_range(window, since);
        self.summary(from, to)
    }

    /// The seconds `[from, to]` that saw anything, each as a [`Second`] (empty ones left
    /// out: an idle group costs nothing to send).
    pub fn seconds(&self, from: u64, to: u64) -> Vec<Second> {
        self.slots_in(from, to)
            .filter_map(|(sec, s)| {
                let out = Second {
                    second: sec,
                    requests: s.requests.load(Relaxed),
                    classes: std::array::from_fn(|i| s.classes[i].load(Relaxed)),
                    failures: std::array::from_fn(|i| s.failures[i].load(Relaxed)),
                    client_errors: s.client_errors.load(Relaxed),
                    mirror: std::array::from_fn(|i| s.mirror[i].load(Relaxed)),
                    latency: (0..BUCKETS)
                        .filter_map(|i| {
                            let n = s.latency[i].load(Relaxed);
                            (n > 0).then_some((i as u16, n))
                        })
                        .collect(),
                };
                (out.requests + out.client_errors + out.mirror[0] > 0).then_some(out)
            })
            .collect()
    }
}

/// The seconds `[from, to]` that `last_since(window, since)` judges: the current (partial)
/// second and the `window` of whole seconds before it, none before `since`. One rule for
/// the local window and the seconds a fleet's peers add to it.
pub fn last_range(window: Duration, since: u64) -> (u64, u64) {
    let now = now_second();
    let secs = window.as_secs().max(1);
    (now.saturating_sub(secs).max(since), now)
}

/// One second's slot as it travels between instances: the counters, and the latency
/// histogram as (bucket, count) pairs of its non-empty buckets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Second {
    pub second: u64,
    pub requests: u64,
    pub classes: [u64; 5],
    pub failures: [u64; 3],
    pub client_errors: u64,
    /// Mirrored copies compared, and those that differed (absent from an older peer).
    #[serde(default)]
    pub mirror: [u64; 2],
    pub latency: Vec<(u16, u32)>,
}

fn bucket(latency: Duration) -> usize {
    let us = latency.as_secs_f64() * 1e6;
    if us < MIN_US {
        return 0;
    }
    (((us / MIN_US).ln() / GROWTH.ln()) as usize + 1).min(BUCKETS - 1)
}

/// A representative latency for a bucket: the geometric middle of its bounds.
pub fn bucket_value(i: usize) -> Duration {
    if i == 0 {
        return Duration::from_micros(50);
    }
    let lo = MIN_US * GROWTH.powi(i as i32 - 1);
    Duration::from_secs_f64(lo * GROWTH.sqrt() / 1e6)
}

#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub seconds: u64,
    pub requests: u64,
    pub classes: [u64; 5],
    /// connect, timeout, reset
    pub failures: [u64; 3],
    /// Requests failed by the client, not in `requests` (nor judged).
    pub client_errors: u64,
    pub latency: Vec<u64>,
    /// Mirrored copies to this group compared with their real answers, and those that
    /// differed (`mirror-mismatch-rate`).
    pub mirror_compared: u64,
    pub mirror_mismatched: u64,
}

impl Default for Summary {
    fn default() -> Self {
        Summary {
            seconds: 0,
            requests: 0,
            classes: [0; 5],
            failures: [0; 3],
            client_errors: 0,
            latency: vec![0; BUCKETS],
            mirror_compared: 0,
            mirror_mismatched: 0,
        }
    }
}

impl Summary {
    /// Adds another instance's second: counters summed, histograms merged bucket by bucket
    /// (a bucket index this build does not have, from a peer's answer, is dropped). The
    /// seconds spanned stay this summary's own.
    pub fn add(&mut self, s: &Second) {
        self.requests += s.requests;
        self.classes
            .iter_mut()
            .zip(s.classes)
            .for_each(|(a, b)| *a += b);
        self.failures
            .iter_mut()
            .zip(s.failures)
            .for_each(|(a, b)| *a += b);
        self.client_errors += s.client_errors;
        self.mirror_compared += s.mirror[0];
        self.mirror_mismatched += s.mirror[1];
        for &(i, n) in &s.latency {
            if let Some(h) = self.latency.get_mut(i as usize) {
                *h += n as u64;
            }
        }
    }

    /// Share of 5xx answers, in percent.
    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| 100.0 * self.classes[4] as f64 / self.requests as f64)
    }

    /// Share of mirrored copies whose answer differed from the real one, in percent.
    pub fn mirror_mismatch_rate(&self) -> Option<f64> {
        (self.mirror_compared > 0)
            .then(|| 100.0 * self.mirror_mismatched as f64 / self.mirror_compared as f64)
    }

    /// Share of answers that are not 5xx, in percent.
    pub fn success_rate(&self) -> Option<f64> {
        self.error_rate().map(|e| 100.0 - e)
    }

    pub fn request_rate(&self) -> f64 {
        self.requests as f64 / self.seconds.max(1) as f64
    }

    /// Answers slower than `d`: those in buckets whose representative latency is above it.
    pub fn slower_than(&self, d: Duration) -> u64 {
        let from = bucket(d) + 1;
        self.latency.iter().skip(from).sum()
    }

    /// What `self` counts beyond `earlier` (an earlier reading of the same seconds, or of
    /// fewer of them): counters and histogram bucket by bucket, never below zero. The guard
    /// reads the still-growing current second at each tick and takes differences.
    pub fn since(&self, earlier: &Summary) -> Summary {
        let sub = |a: &[u64], b: &[u64]| -> Vec<u64> {
            a.iter().zip(b).map(|(x, y)| x.saturating_sub(*y)).collect()
        };
        Summary {
            seconds: self.seconds,
            requests: self.requests.saturating_sub(earlier.requests),
            classes: std::array::from_fn(|i| self.classes[i].saturating_sub(earlier.classes[i])),
            failures: std::array::from_fn(|i| self.failures[i].saturating_sub(earlier.failures[i])),
            client_errors: self.client_errors.saturating_sub(earlier.client_errors),
            latency: sub(&self.latency, &earlier.latency),
            mirror_compared: self.mirror_compared.saturating_sub(earlier.mirror_compared),
            mirror_mismatched: self
                .mirror_mismatched
                .saturating_sub(earlier.mirror_mismatched),
        }
    }

    /// The latency at quantile `q` (0–1).
    pub fn percentile(&self, q: f64) -> Option<Duration> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, n) in self.latency.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(bucket_value(i));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn striped_counts_from_every_thread_are_summed_and_threads_take_stripes_in_turn() {
        let c: Striped<AtomicU64> = Striped::default();
        let mine: Vec<usize> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..STRIPES)
                .map(|_| {
                    scope.spawn(|| {
                        for _ in 0..1000 {
                            c.add(1);
                        }
                        c.mine() as *const AtomicU64 as usize
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        assert_eq!(c.sum(), 1000 * STRIPES as u64);
        // Threads that first counted one after another hold stripes of their own (a shared
        // one would put two workers' adds on one cache line again).
        let distinct: std::collections::HashSet<_> = mine.iter().collect();
        assert!(distinct.len() > 1, "every thread on one stripe");
        assert!(std::mem::align_of::<Line<AtomicU64>>() >= 128);
    }

    #[test]
    fn buckets_cover_100us_to_60s_within_5_percent() {
        for ms in [0.2, 1.0, 7.3, 120.0, 2500.0, 59_000.0] {
            let d = Duration::from_secs_f64(ms / 1000.0);
            let v = bucket_value(bucket(d)).as_secs_f64() * 1000.0;
            assert!((v / ms - 1.0).abs() < 0.05, "{ms} ms -> {v} ms");
        }
        assert_eq!(bucket(Duration::from_secs(3600)), BUCKETS - 1);
    }

    #[test]
    fn percentiles_and_rates() {
        let w = Window::default();
        for i in 0..100 {
            let status = if i < 10 { 503 } else { 200 };
            w.record(now_second(), status, Duration::from_millis(i + 1), None);
        }
        let s = w.last(Duration::from_secs(1));
        assert_eq!(s.requests, 100);
        assert_eq!(s.error_rate(), Some(10.0));
        let p99 = s.percentile(0.99).unwrap().as_secs_f64() * 1000.0;
        assert!((p99 / 99.0 - 1.0).abs() < 0.05, "{p99}");
        let p50 = s.percentile(0.5).unwrap().as_secs_f64() * 1000.0;
        assert!((p50 / 50.0 - 1.0).abs() < 0.05, "{p50}");
    }

    #[test]
    fn a_write_for_a_second_whose_slot_a_newer_second_took_is_dropped() {
        let w = Window::default();
        let now = 5 * SLOTS + 7;
        w.record(now, 200, Duration::from_millis(1), None);
        // The same slot, 11 minutes earlier: must not count in `now`.
        w.record(now - SLOTS, 503, Duration::from_millis(1), None);
        w.record_client_error(now - SLOTS);
        let s = w.summary(now, now);
        assert_eq!((s.requests, s.classes[4], s.client_errors), (1, 0, 0));
    }

    #[test]
    fn two_windows_exported_as_seconds_and_added_equal_one_window_that_saw_both() {
        let (a, b, both) = (Window::default(), Window::default(), Window::default());
        let now = 3 * SLOTS + 11;
        for (i, sec) in [now - 2, now - 1, now].into_iter().enumerate() {
            for k in 0..(5 + i as u64) {
                let (w, status) = if k % 2 == 0 { (&a, 200) } else { (&b, 503) };
                let latency = Duration::from_millis(1 + 7 * k);
                let failure = (status == 503).then_some(Failure::Reset);
                w.record(sec, status, latency, failure);
                both.record(sec, status, latency, failure);
            }
        }
        b.record_client_error(now);
        both.record_client_error(now);
        let mut sum = a.summary(now - 2, now);
        for s in b.seconds(now - 2, now) {
            sum.add(&s);
        }
        assert_eq!(sum, both.summary(now - 2, now));
        assert_eq!(sum.classes[4], b.summary(now - 2, now).requests);
        // An idle second is not sent; a second outside the range is not either.
        assert!(a.seconds(now - 10, now - 3).is_empty());
        assert_eq!(b.seconds(now, now).len(), 1);
    }
}
