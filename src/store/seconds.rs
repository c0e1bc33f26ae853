//! A rollout's recorded seconds as both stores keep them (see `control::history` for what is
//! recorded and `analysis::backtest` for what replays them): batches of a few seconds, each
//! stored under (service, rollout, attempt, its first second) in a compact binary form —
//! LEB128 numbers, times as differences from the one before, the latency histogram as its
//! non-empty buckets only. Measured: some 400 bytes a second for both groups at ~1,000
//! requests a second each with latencies spread over ~40 buckets (`tests/backtest.rs`), so
//! an attempt recorded for its full 2 hours takes ~3 MB, a service at most ~30 MB.
//!
//! Bounded: the recorder stops after `MAX_SECONDS` of an attempt, and the first batch of an
//! attempt prunes the service's seconds beyond its `KEEP_ROLLOUTS` latest recorded rollouts.

use crate::analysis::backtest::{RecordedSecond, Recording, StepMark};
use crate::metrics::Second;

/// The longest an attempt is recorded: 2 hours.
pub const MAX_SECONDS: u64 = 2 * 60 * 60;

/// Per service, the rollouts whose seconds are kept (the newest).
pub const KEEP_ROLLOUTS: usize = 10;

/// The encoding's version, its first byte. 2 added each second's mirror counts (compared,
/// mismatched) after its client errors; version 1 is still read (no mirror counts).
const VERSION: u8 = 2;

/// Seconds of one attempt of a rollout, written together.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub service: String,
    pub rollout: u64,
    pub attempt: u32,
    /// The attempt's first batch: the store prunes older rollouts of the service with it.
    pub first: bool,
    pub recording: Recording,
}

impl Batch {
    /// Where it sorts among the attempt's batches: its first second (or its first mark,
    /// for a batch of marks only).
    pub fn key_ms(&self) -> i64 {
        let r = &self.recording;
        let first = r.seconds.first().map(|s| s.start_ms);
        first.or(r.marks.first().map(|m| m.at_ms)).unwrap_or(0)
    }
}

/// The stored form of a batch's recording.
pub fn encode(r: &Recording) -> Vec<u8> {
    let mut out = vec![VERSION];
    put(&mut out, r.dropped);
    put(&mut out, r.marks.len() as u64);
    let mut prev = 0i64;
    for m in &r.marks {
        put(&mut out, m.step as u64);
        put_signed(&mut out, m.at_ms - prev);
        prev = m.at_ms;
    }
    put(&mut out, r.seconds.len() as u64);
    prev = 0;
    for s in &r.seconds {
        put_signed(&mut out, s.start_ms - prev);
        prev = s.start_ms;
        put(&mut out, s.instances as u64);
        put_second(&mut out, &s.candidate);
        put_second(&mut out, &s.stable);
    }
    out
}

/// A batch's recording from its stored form; why not, for a `Corrupt` error.
pub fn decode(bytes: &[u8]) -> Result<Recording, String> {
    let mut r = Reader {
        bytes,
        at: 0,
        version: 0,
    };
    let version = r.byte()?;
    r.version = version;
    if version != VERSION && version != 1 {
        return Err(format!(
            "recorded seconds in an unknown encoding ({version})"
        ));
    }
    let dropped = r.num()?;
    let mut marks = Vec::new();
    let mut prev = 0i64;
    for _ in 0..r.len()? {
        let step = u32::try_from(r.num()?).map_err(|e| e.to_string())?;
        prev += r.signed()?;
        marks.push(StepMark { step, at_ms: prev });
    }
    let mut seconds = Vec::new();
    prev = 0;
    for _ in 0..r.len()? {
        prev += r.signed()?;
        let instances = u32::try_from(r.num()?).map_err(|e| e.to_string())?;
        let candidate = r.second(prev)?;
        let stable = r.second(prev)?;
        seconds.push(RecordedSecond {
            start_ms: prev,
            instances,
            candidate,
            stable,
        });
    }
    if r.at != bytes.len() {
        return Err("recorded seconds with bytes after their end".into());
    }
    Ok(Recording {
        seconds,
        marks,
        dropped,
    })
}

fn put(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_signed(out: &mut Vec<u8>, n: i64) {
    put(out, ((n << 1) ^ (n >> 63)) as u64);
}

fn put_second(out: &mut Vec<u8>, s: &Second) {
    put(out, s.requests);
    for &n in s.classes.iter().chain(&s.failures) {
        put(out, n);
    }
    put(out, s.client_errors);
    put(out, s.mirror[0]);
    put(out, s.mirror[1]);
    put(out, s.latency.len() as u64);
    let mut prev = 0u64;
    for &(bucket, n) in &s.latency {
        put(out, (bucket as u64).wrapping_sub(prev));
        prev = bucket as u64;
        put(out, n as u64);
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    /// The encoding's version, once read.
    version: u8,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, String> {
        let b = *self
            .bytes
            .get(self.at)
            .ok_or("recorded seconds cut short")?;
        self.at += 1;
        Ok(b)
    }

    fn num(&mut self) -> Result<u64, String> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            n |= ((b & 0x7f) as u64) << shift;
            if b < 0x80 {
                return Ok(n);
            }
        }
        Err("recorded seconds with a number over 64 bits".into())
    }

    fn signed(&mut self) -> Result<i64, String> {
        let n = self.num()?;
        Ok((n >> 1) as i64 ^ -((n & 1) as i64))
    }

    /// A count of items that follow, each at least a byte: never more than the bytes left.
    fn len(&mut self) -> Result<usize, String> {
        let n = self.num()?;
        usize::try_from(n)
            .ok()
            .filter(|n| *n <= self.bytes.len() - self.at)
            .ok_or_else(|| format!("recorded seconds claim {n} items"))
    }

    fn second(&mut self, start_ms: i64) -> Result<Second, String> {
        let requests = self.num()?;
        let mut classes = [0; 5];
        for c in &mut classes {
            *c = self.num()?;
        }
        let mut failures = [0; 3];
        for f in &mut failures {
            *f = self.num()?;
        }
        let client_errors = self.num()?;
        let mirror = if self.version >= 2 {
            [self.num()?, self.num()?]
        } else {
            [0, 0]
        };
        let mut latency = Vec::new();
        let mut bucket = 0u64;
        for _ in 0..self.len()? {
            bucket = bucket.wrapping_add(self.num()?);
            let n = self.num()?;
            let pair = (u16::try_from(bucket), u32::try_from(n));
            let (Ok(b), Ok(n)) = pair else {
                return Err("recorded seconds with a bucket out of range".into());
            };
            latency.push((b, n));
        }
        Ok(Second {
            second: start_ms.max(0) as u64 / 1000,
            requests,
            classes,
            failures,
            client_errors,
            mirror,
            latency,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn second(start_ms: i64, requests: u64, errors: u64) -> RecordedSecond {
        let side = |n: u64, e: u64, bucket: u16| Second {
            second: start_ms as u64 / 1000,
            requests: n,
            classes: [0, n - e, 0, 0, e],
            failures: [0, 0, e / 2],
            client_errors: 1,
            mirror: [n / 3, e / 3],
            latency: vec![(bucket, (n / 2) as u32), (bucket + 40, (n - n / 2) as u32)],
        };
        RecordedSecond {
            start_ms,
            instances: 3,
            candidate: side(requests, errors, 60),
            stable: side(requests * 9, 0, 58),
        }
    }

    #[test]
    fn a_recording_decodes_to_what_was_encoded_and_a_busy_second_stays_small() {
        let start = 1_764_000_000_123;
        let r = Recording {
            seconds: (0..10)
                .map(|i| second(start + i * 1000, 50 + i as u64, i as u64))
                .collect(),
            marks: vec![
                StepMark {
                    step: 0,
                    at_ms: start - 5,
                },
                StepMark {
                    step: 1,
                    at_ms: start + 4_321,
                },
            ],
            dropped: 7,
        };
        let bytes = encode(&r);
        assert_eq!(decode(&bytes).unwrap(), r);
        let per_second = bytes.len() / r.seconds.len();
        assert!(per_second < 60, "{per_second} bytes per second");
        // Cut short, or with bytes after the end: refused, never misread.
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
        assert!(decode(&[9]).unwrap_err().contains("unknown encoding"));
    }

    /// A batch written before the mirror counts existed (version 1) still reads, with none.
    #[test]
    fn a_version_1_batch_reads_without_mirror_counts() {
        let mut v1 = vec![1u8];
        put(&mut v1, 0); // dropped
        put(&mut v1, 0); // marks
        put(&mut v1, 1); // seconds
        put_signed(&mut v1, 5_000);
        put(&mut v1, 1); // instances
        for (requests, errors) in [(10, 2), (90, 0)] {
            put(&mut v1, requests);
            for c in [0, requests - errors, 0, 0, errors] {
                put(&mut v1, c);
            }
            for f in [0, 0, 0] {
                put(&mut v1, f);
            }
            put(&mut v1, 0); // client errors, and no mirror counts after them
            put(&mut v1, 1); // one latency bucket
            put(&mut v1, 40);
            put(&mut v1, requests);
        }
        let r = decode(&v1).unwrap();
        let s = &r.seconds[0];
        assert_eq!(
            (s.start_ms, s.candidate.requests, s.candidate.classes[4]),
            (5_000, 10, 2)
        );
        assert_eq!((s.candidate.mirror, s.stable.mirror), ([0, 0], [0, 0]));
        assert_eq!(s.stable.latency, [(40, 90)]);
        // Written again, it is version 2 and reads back the same.
        assert_eq!(decode(&encode(&r)).unwrap(), r);
    }
}
