//! Records what the guard and the analyses judged during one attempt of a rollout, for
//! backtests (`analysis::backtest`): each second's candidate and stable sums over the fleet
//! (`Controller::judged`, the one sum they read) and when each step began, written to the
//! state store in batches through the persister.
//!
//! Never on the hot path and never in a rollback's way: a task beside the driver reads the
//! window once a second is complete (and a peer's share of it has been pulled: `LAG`), and
//! every `FLUSH_EVERY` queues one batch, tried once like a forward write. A store that
//! refuses (an outage, a pending rollback it cannot write yet, a deposed leader) does not
//! stop anything: the batch is kept for the next flush, up to `MAX_PENDING` seconds; older
//! ones are dropped, counted in the recording (`dropped`, which a backtest reports) and
//! logged. Bounded: `seconds::MAX_SECONDS` per attempt, and the store prunes old rollouts.
//!
//! The task ends with its attempt (after a last batch), or when its driver stops (a
//! shutdown, a step-down: the last batch is tried, and dropped if the store is closed). It
//! holds the controller only while it works, so a stopped instance is not kept alive.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::oneshot;

use super::persist::{self, Write, FORWARD_WAIT};
use super::Controller;
use crate::analysis::backtest::{RecordedSecond, Recording, StepMark};
use crate::metrics::{self, Second, Summary};
use crate::rollout::{Rollout, StepBegan};
use crate::store::seconds::{Batch, MAX_SECONDS};

/// How often the rollout's step is looked at.
const TICK: Duration = Duration::from_secs(1);
/// How often a batch is written.
const FLUSH_EVERY: u32 = 5;
/// How many seconds behind now a second is recorded: peers are pulled about every 250 ms,
/// their current second and the one before again each time.
const LAG: u64 = 2;
/// The most seconds kept for another try while the store refuses.
const MAX_PENDING: usize = 120;

/// The recording of one attempt; dropping it (the driver stopped, or went on with another
/// attempt) ends it after a last batch.
pub(super) struct Recorder {
    _stop: oneshot::Sender<()>,
}

/// Starts recording attempt `r` of `service`.
pub(super) fn start(control: &Arc<Controller>, service: &str, r: &Rollout) -> Recorder {
    let (stop, stopped) = oneshot::channel();
    let at = Attempt {
        service: service.to_string(),
        of: (r.id, r.attempt),
        stable: r.reference().to_string(),
        candidate: r.candidate.clone(),
    };
    tokio::spawn(record(Arc::downgrade(control), at, stopped));
    Recorder { _stop: stop }
}

struct Attempt {
    service: String,
    of: (u64, u32),
    stable: String,
    candidate: String,
}

/// What has been recorded and not yet written.
struct Pending {
    recording: Recording,
    /// The next second to record, on the window's clock.
    next: u64,
    /// The attempt's first second: nothing after `MAX_SECONDS` of it is recorded.
    first_second: u64,
    /// Unix ms at the window clock's second 0, fixed at the start.
    epoch_ms: i64,
    /// No batch of this attempt written yet.
    first_batch: bool,
    last_mark: Option<StepBegan>,
}

async fn record(control: Weak<Controller>, at: Attempt, mut stopped: oneshot::Receiver<()>) {
    let Some(c) = control.upgrade() else { return };
    let now = metrics::now_ms();
    let first_second = now / 1000;
    let mut p = Pending {
        recording: Recording::default(),
        next: first_second,
        first_second,
        epoch_ms: c.clock.unix_ms() - now as i64,
        first_batch: true,
        last_mark: None,
    };
    drop(c);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 1u32.. {
        let stop = tokio::select! {
            _ = tick.tick() => false,
            _ = &mut stopped => true,
        };
        let Some(c) = control.upgrade() else { return };
        let active = mark(&c, &at, &mut p).await;
        if stop || !active {
            // The last batch: once the peers' share of the last seconds has come.
            drop(c);
            tokio::time::sleep(Duration::from_secs(LAG)).await;
            let Some(c) = control.upgrade() else { return };
            collect(&c, &at, &mut p, metrics::now_second());
            flush(&c, &at, &mut p).await;
            return;
        }
        if n % FLUSH_EVERY == 0 {
            collect(&c, &at, &mut p, metrics::now_second().saturating_sub(LAG));
            flush(&c, &at, &mut p).await;
        }
    }
}

/// Notes the step the attempt is in if it began since the last look; whether the attempt
/// is still active.
async fn mark(c: &Controller, at: &Attempt, p: &mut Pending) -> bool {
    let Ok(view) = c.rollout(&at.service).await else {
        return false;
    };
    let r = view.rollout;
    if (r.id, r.attempt) != at.of {
        return false;
    }
    if let Some(b) = r.step_began.filter(|b| b.attempt == at.of.1) {
        if p.last_mark != Some(b) {
            p.last_mark = Some(b);
            p.recording.marks.push(StepMark {
                step: b.step as u32,
                at_ms: b.at,
            });
        }
    }
    r.status.is_active()
}

/// Adds the seconds from the next one to `to` that saw anything (at most `MAX_SECONDS`
/// after the attempt's first).
fn collect(c: &Controller, at: &Attempt, p: &mut Pending, to: u64) {
    let to = to.min(p.first_second + MAX_SECONDS - 1);
    for s in p.next..=to {
        let Some(j) = c.judged(&at.service, &at.stable, &at.candidate, s, s) else {
            continue;
        };
        let seen = |x: &Summary| x.requests + x.client_errors > 0;
        if seen(&j.candidate) || seen(&j.stable) {
            p.recording.seconds.push(RecordedSecond {
                start_ms: p.epoch_ms + s as i64 * 1000,
                instances: j.instances as u32,
                candidate: second_of(&j.candidate, s),
                stable: second_of(&j.stable, s),
            });
        }
    }
    p.next = p.next.max(to + 1);
}

/// One second's summary in its sparse form.
fn second_of(s: &Summary, second: u64) -> Second {
    Second {
        second,
        requests: s.requests,
        classes: s.classes,
        failures: s.failures,
        client_errors: s.client_errors,
        mirror: [s.mirror_compared, s.mirror_mismatched],
        latency: (s.latency.iter().enumerate())
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| (i as u16, (*n).min(u32::MAX as u64) as u32))
            .collect(),
    }
}

/// Writes what is pending as one batch; kept for the next try when the store refuses,
/// the oldest seconds beyond `MAX_PENDING` dropped and counted.
async fn flush(c: &Controller, at: &Attempt, p: &mut Pending) {
    let r = &mut p.recording;
    if r.seconds.is_empty() && r.marks.is_empty() && r.dropped == 0 {
        return;
    }
    let batch = Batch {
        service: at.service.clone(),
        rollout: at.of.0,
        attempt: at.of.1,
        first: p.first_batch,
        recording: r.clone(),
    };
    let written = match c
        .persist
        .forward(Vec::new(), Write::Seconds(Box::new(batch)))
    {
        Ok(rx) => persist::wait(rx, FORWARD_WAIT).await.map(drop),
        Err(e) => Err(e),
    };
    match written {
        Ok(()) => {
            *r = Recording::default();
            p.first_batch = false;
        }
        Err(e) => {
            let over = keep_for_retry(r, MAX_PENDING);
            tracing::warn!(service = %at.service, rollout = at.of.0, error = %e,
                pending = r.seconds.len(), dropped = over,
                "recorded seconds not written; kept for the next try");
        }
    }
}

/// Keeps the newest `most` seconds of a recording the store refused, for the next try; the
/// older ones are dropped and counted in it. How many were dropped.
fn keep_for_retry(r: &mut Recording, most: usize) -> usize {
    let over = r.seconds.len().saturating_sub(most);
    r.seconds.drain(..over);
    r.dropped += over as u64;
    over
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_batch_keeps_its_newest_seconds_and_counts_the_ones_it_drops() {
        let second = |i: i64| RecordedSecond {
            start_ms: i * 1000,
            instances: 1,
            candidate: second_of(&Summary::default(), i as u64),
            stable: second_of(&Summary::default(), i as u64),
        };
        let mut r = Recording {
            seconds: (0..130).map(second).collect(),
            marks: vec![StepMark { step: 0, at_ms: 0 }],
            dropped: 4,
        };
        assert_eq!(keep_for_retry(&mut r, 120), 10);
        assert_eq!((r.seconds.len(), r.dropped), (120, 14));
        assert_eq!(r.seconds[0].start_ms, 10_000, "the oldest went");
        assert_eq!(r.marks.len(), 1, "step marks are kept");
        assert_eq!(keep_for_retry(&mut r, 120), 0);
        assert_eq!(r.dropped, 14);
    }

    #[test]
    fn a_summary_becomes_a_second_with_only_its_non_empty_buckets() {
        let mut s = Summary {
            requests: 3,
            classes: [0, 2, 0, 0, 1],
            ..Summary::default()
        };
        s.latency[7] = 2;
        s.latency[200] = 1;
        let sec = second_of(&s, 42);
        assert_eq!(sec.latency, [(7, 2), (200, 1)]);
        let mut back = Summary::default();
        back.add(&sec);
        back.seconds = s.seconds;
        assert_eq!(back, s);
    }
}
