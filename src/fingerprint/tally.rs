//! Fingerprints summed and compared: a peer's kept on our seconds (`Kept`), a group's summed
//! over the fleet (`Tally`), the candidate's against stable's (`Compared`, `Row`) and the
//! sentence of a finding — what the `new_errors` check and the rollout view read.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Serialize;

use super::{Exported, Fingerprint, Seen, CAP};

/// A peer's fingerprints of one group, on our seconds (see `control::peers`). A second sent
/// again (still growing when first pulled) replaces what came before. Bounded like the
/// peer's own table: at most 2 × [`CAP`] fingerprints (a peer's table turns over while
/// seconds are kept), later ones dropped.
#[derive(Debug, Default)]
pub struct Kept {
    fingerprints: HashMap<String, (Fingerprint, BTreeMap<u64, u32>)>,
    overflow: BTreeMap<u64, u32>,
}

impl Kept {
    /// Takes in a peer's export, its seconds moved by `shift` onto ours.
    pub fn take(&mut self, e: Exported, shift: i64) {
        let ours = |s: u64| u64::try_from(s as i64 + shift).ok();
        for seen in e.fingerprints {
            let full = self.fingerprints.len() >= 2 * CAP;
            let kept = match self.fingerprints.get_mut(&seen.fingerprint.id) {
                Some((_, k)) => k,
                None if full => continue,
                None => {
                    let id = seen.fingerprint.id.clone();
                    &mut self
                        .fingerprints
                        .entry(id)
                        .or_insert((seen.fingerprint, BTreeMap::new()))
                        .1
                }
            };
            for (s, n) in seen.seconds {
                if let Some(s) = ours(s) {
                    kept.insert(s, n);
                }
            }
        }
        for (s, n) in e.overflow {
            if let Some(s) = ours(s) {
                self.overflow.insert(s, n);
            }
        }
    }

    /// Forgets seconds before `oldest`, and fingerprints left without any.
    pub fn forget_before(&mut self, oldest: u64) {
        for (_, k) in self.fingerprints.values_mut() {
            *k = k.split_off(&oldest);
        }
        self.fingerprints.retain(|_, (_, k)| !k.is_empty());
        self.overflow = self.overflow.split_off(&oldest);
    }

    pub fn is_empty(&self) -> bool {
        self.fingerprints.is_empty() && self.overflow.is_empty()
    }

    /// What was kept of our seconds `[from, to]`.
    pub fn export(&self, from: u64, to: u64) -> Exported {
        let within = |k: &BTreeMap<u64, u32>| -> Vec<(u64, u32)> {
            if from > to {
                return Vec::new();
            }
            k.range(from..=to).map(|(s, n)| (*s, *n)).collect()
        };
        Exported {
            fingerprints: self
                .fingerprints
                .values()
                .filter_map(|(f, k)| {
                    let seconds = within(k);
                    (!seconds.is_empty()).then(|| Seen {
                        fingerprint: f.clone(),
                        seconds,
                    })
                })
                .collect(),
            overflow: within(&self.overflow),
        }
    }
}

/// A group's fingerprints summed over instances: each with its count and the first and last
/// second it was seen in.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    pub seen: BTreeMap<String, Counted>,
    /// Failures no instance kept as a fingerprint.
    pub overflow: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Counted {
    pub fingerprint: Fingerprint,
    pub count: u64,
    pub first: u64,
    pub last: u64,
}

impl Tally {
    pub fn add(&mut self, e: &Exported) {
        for seen in &e.fingerprints {
            let Some(first) = seen.seconds.iter().map(|x| x.0).min() else {
                continue;
            };
            let last = seen.seconds.iter().map(|x| x.0).max().unwrap_or(first);
            let n: u64 = seen.seconds.iter().map(|x| x.1 as u64).sum();
            let c = self
                .seen
                .entry(seen.fingerprint.id.clone())
                .or_insert_with(|| Counted {
                    fingerprint: seen.fingerprint.clone(),
                    count: 0,
                    first,
                    last,
                });
            c.count += n;
            c.first = c.first.min(first);
            c.last = c.last.max(last);
        }
        self.overflow += e.overflow.iter().map(|x| x.1 as u64).sum::<u64>();
    }

    /// The count of fingerprint `id` (0 when never seen).
    pub fn count(&self, id: &str) -> u64 {
        self.seen.get(id).map_or(0, |c| c.count)
    }
}

/// Both groups' fingerprints over the same seconds, summed over the fleet, with the clock
/// that turns window seconds into wall-clock time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Compared {
    pub candidate: Tally,
    pub stable: Tally,
    /// This instance and every peer that contributed (1 without a fleet).
    pub instances: usize,
    /// The wall-clock time (unix ms) of the window clock's second 0: the same at every
    /// reading, so a second is shown as the same time in every view.
    pub epoch_unix_ms: i64,
}

/// One fingerprint of the candidate against stable, as the rollout view shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    #[serde(flatten)]
    pub fingerprint: Fingerprint,
    /// Answers of this fingerprint by the candidate, and by stable, over the same seconds.
    pub candidate: u64,
    pub stable: u64,
    /// When the candidate first and last gave it (unix ms: the start of the window second).
    pub first_unix_ms: i64,
    pub last_unix_ms: i64,
    /// A finding: stable never gave it, and the candidate at least `min_count` times.
    pub new: bool,
}

impl Compared {
    /// The unix milliseconds of window second `second`.
    pub fn unix_ms(&self, second: u64) -> i64 {
        self.epoch_unix_ms + second as i64 * 1000
    }

    /// Every fingerprint of the candidate, most frequent first, each against stable's count
    /// of it; those only the candidate gave, `min_count` times or more, are `new`.
    pub fn rows(&self, min_count: u64) -> Vec<Row> {
        let mut rows: Vec<Row> = self
            .candidate
            .seen
            .values()
            .map(|c| {
                let stable = self.stable.count(&c.fingerprint.id);
                Row {
                    fingerprint: c.fingerprint.clone(),
                    candidate: c.count,
                    stable,
                    first_unix_ms: self.unix_ms(c.first),
                    last_unix_ms: self.unix_ms(c.last),
                    new: stable == 0 && c.count >= min_count.max(1),
                }
            })
            .collect();
        rows.sort_by(|a, b| {
            b.candidate
                .cmp(&a.candidate)
                .then(a.fingerprint.id.cmp(&b.fingerprint.id))
        });
        rows
    }
}

/// The sentence of a finding: `green answered 503 'db pool exhausted <n>' 12 times on
/// route api since 10:04:31; blue never did`.
pub fn sentence(row: &Row, candidate: &str, stable: &str) -> String {
    format!(
        "{candidate} answered {} {} times on route {} since {}; {stable} never did",
        row.fingerprint.describe(),
        row.candidate,
        row.fingerprint.route,
        clock_time(row.first_unix_ms),
    )
}

/// `HH:MM:SS` (UTC) of a unix time in milliseconds.
pub fn clock_time(unix_ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms.max(0) as u64);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    s.get(11..19).unwrap_or(&s).to_string()
}

/// Where a `new_errors` check finds both groups' fingerprints over seconds `[from, to]`
/// (`Controller::errors`: this instance's plus every peer's); `None` when the groups are
/// not in the running configuration.
#[derive(Clone)]
pub struct Source(Arc<dyn Fn(u64, u64) -> Option<Compared> + Send + Sync>);

impl Source {
    pub fn new(f: impl Fn(u64, u64) -> Option<Compared> + Send + Sync + 'static) -> Source {
        Source(Arc::new(f))
    }

    pub fn over(&self, from: u64, to: u64) -> Option<Compared> {
        (self.0)(from, to)
    }
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("fingerprint::Source")
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::failed;
    use super::*;
    use crate::fingerprint::Table;

    #[test]
    fn a_peer_s_seconds_replace_on_a_second_pull_and_tallies_compare_groups() {
        let t = Table::default();
        for _ in 0..3 {
            t.record(10, &failed("db pool exhausted 3"));
        }
        let mut kept = Kept::default();
        kept.take(t.export(10, 10), 5);
        t.record(10, &failed("db pool exhausted 4"));
        t.record(11, &failed("db pool exhausted 5"));
        kept.take(t.export(10, 11), 5);
        let mut candidate = Tally::default();
        candidate.add(&kept.export(15, 16));
        let c = candidate.seen.values().next().unwrap();
        assert_eq!((c.count, c.first, c.last), (5, 15, 16));
        kept.forget_before(16);
        assert_eq!(kept.export(0, 100).fingerprints[0].seconds, vec![(16, 1)]);

        let mut stable = Tally::default();
        let s = Table::default();
        s.record(15, &failed("other 1"));
        stable.add(&s.export(0, 100));
        let compared = Compared {
            candidate,
            stable,
            instances: 1,
            epoch_unix_ms: 980_000,
        };
        let rows = compared.rows(5);
        assert_eq!(rows.len(), 1);
        assert!(rows[0].new);
        assert_eq!(rows[0].first_unix_ms, 995_000);
        assert!(!compared.rows(6)[0].new);
        assert_eq!(
            sentence(&rows[0], "green", "blue"),
            "green answered 500 'db pool exhausted <n>' 5 times on route api since 00:16:35; blue never did"
        );
    }
}
