//! Fingerprints of failed answers, per group: what a version's 5xx answers and upstream
//! failures look like, so that an error only the candidate gives is seen even when the
//! overall error rate is within bounds (the `new_errors` check, `analysis::new_errors`).
//!
//! A fingerprint is the route, the status, switchyard's error cause (its own 502/503/504
//! reasons, `x-switchyard-error`), the upstream failure kind, and a hash of the answer body's
//! first [`PREFIX_BYTES`] bytes once normalised ([`normalise`]: digit, hex and UUID runs
//! replaced, whitespace collapsed — "order 1234 failed" and "order 987 failed" are one
//! fingerprint). Its id hashes all of them but the group, so the same failure has the same
//! id in every group and on every instance of a fleet (FNV-1a: the same on every build).
//!
//! Memory is bounded: a group keeps at most [`CAP`] distinct fingerprints, each with its
//! counts per second for the 11 minutes the metrics window keeps (a fingerprint not seen for
//! that long makes room); a failure that finds no room is counted as overflow, per second.
//! Only failed answers are recorded, under a mutex: the path of a successful answer never
//! touches it. A failure the client caused (closed, timed out, broke its upload) is never
//! recorded: it is not the version's (see `proxy::account`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::metrics::{Failure, SLOTS};

/// The body bytes a fingerprint reads: enough for an error's message, little enough to copy
/// beside an answer on its way to the client.
pub const PREFIX_BYTES: usize = 256;
/// Distinct fingerprints a group keeps; failures of any other are counted as overflow.
pub const CAP: usize = 64;
/// Characters of the normalised prefix kept to show.
const SAMPLE_CHARS: usize = 80;
/// The `min_count` of a `new_errors` check when none is configured, and of the rollout view.
pub const DEFAULT_MIN_COUNT: u64 = 5;

/// A failed answer as the proxy has it, borrowed.
pub struct Failed<'a> {
    pub route: &'a str,
    pub status: u16,
    /// switchyard's own reason (`upstream_reset`, `no_healthy_target`, …).
    pub cause: Option<&'a str>,
    pub kind: Option<Failure>,
    /// The first bytes of the body (only read for a 5xx the target answered).
    pub body: &'a [u8],
}

/// What a failure kind is called in fingerprints.
pub fn kind_name(f: Failure) -> &'static str {
    match f {
        Failure::Connect => "connect",
        Failure::Timeout => "timeout",
        Failure::Reset => "reset",
    }
}

/// One kind of failed answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// 16 hex digits: the hash of everything below (and of the whole normalised prefix).
    pub id: String,
    pub route: String,
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// `connect`, `timeout` or `reset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The start of the normalised body prefix (empty for an answer switchyard made).
    pub sample: String,
}

impl Fingerprint {
    fn new(f: &Failed, key: u64, text: &str) -> Fingerprint {
        Fingerprint {
            id: format!("{key:016x}"),
            route: f.route.to_string(),
            status: f.status,
            cause: f.cause.map(str::to_string),
            kind: f.kind.map(|k| kind_name(k).to_string()),
            sample: text.chars().take(SAMPLE_CHARS).collect(),
        }
    }

    #[cfg(test)]
    fn of(f: &Failed) -> Fingerprint {
        let (key, text) = key(f);
        Fingerprint::new(f, key, &text)
    }

    /// How a sentence names it: `503 'db pool exhausted <n>'`, `502 upstream_reset`.
    pub fn describe(&self) -> String {
        let mut s = self.status.to_string();
        if let Some(c) = &self.cause {
            s.push(' ');
            s.push_str(c);
        }
        if !self.sample.is_empty() {
            s.push_str(&format!(" '{}'", self.sample));
        } else if self.cause.is_none() {
            s.push_str(" with an empty body");
        }
        s
    }
}

/// A failed answer's hash (its fingerprint's id), and its body's normalised prefix.
fn key(f: &Failed) -> (u64, String) {
    let text = if f.body.is_empty() {
        String::new()
    } else {
        normalise(f.body)
    };
    let mut h = Fnv::default();
    h.part(f.route.as_bytes());
    h.part(&f.status.to_be_bytes());
    h.part(f.cause.unwrap_or("").as_bytes());
    h.part(f.kind.map_or("", kind_name).as_bytes());
    h.part(text.as_bytes());
    (h.0, text)
}

/// FNV-1a, 64 bits; parts are separated so that ("ab", "c") and ("a", "bc") differ.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn part(&mut self, bytes: &[u8]) {
        for b in bytes.iter().chain(&[0xff]) {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// The first [`PREFIX_BYTES`] of a body as one text for all its variants: UUIDs become
/// `<uuid>`, runs of 6 or more hex digits with a digit among them (or `0x…`) `<hex>`, other
/// digit runs `<n>`; whitespace runs become one space, trimmed at both ends. A character
/// cut by the prefix's end is dropped; other invalid UTF-8 is replaced.
pub fn normalise(body: &[u8]) -> String {
    let body = &body[..body.len().min(PREFIX_BYTES)];
    let text = String::from_utf8_lossy(body);
    let chars: Vec<char> = text.trim_end_matches('\u{FFFD}').chars().collect();
    let mut out = String::with_capacity(chars.len());
    let (mut i, mut space) = (0, false);
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            space = true;
            i += 1;
            continue;
        }
        if std::mem::take(&mut space) && !out.is_empty() {
            out.push(' ');
        }
        if is_uuid(&chars[i..]) {
            out.push_str("<uuid>");
            i += 36;
        } else if c.is_ascii_alphanumeric() {
            let len = chars[i..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric())
                .count();
            word(&chars[i..i + len], &mut out);
            i += len;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// A UUID (8-4-4-4-12 hex digits) at the start of `s`, not running on into a word.
fn is_uuid(s: &[char]) -> bool {
    s.len() >= 36
        && s[..36].iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == '-',
            _ => c.is_ascii_hexdigit(),
        })
        && !s.get(36).is_some_and(char::is_ascii_alphanumeric)
}

/// One run of ASCII letters and digits, normalised into `out`.
fn word(w: &[char], out: &mut String) {
    let hex = |s: &[char]| s.iter().all(char::is_ascii_hexdigit);
    let has_digit = w.iter().any(char::is_ascii_digit);
    if w.len() >= 3 && w[0] == '0' && w[1] == 'x' && hex(&w[2..]) {
        out.push_str("<hex>");
    } else if w.iter().all(char::is_ascii_digit) {
        out.push_str("<n>");
    } else if w.len() >= 6 && has_digit && hex(w) {
        out.push_str("<hex>");
    } else {
        let mut in_digits = false;
        for c in w {
            if c.is_ascii_digit() {
                if !std::mem::replace(&mut in_digits, true) {
                    out.push_str("<n>");
                }
            } else {
                in_digits = false;
                out.push(*c);
            }
        }
    }
}

/// Counts per second, oldest first, of the seconds the window keeps.
#[derive(Debug, Default)]
struct Counts(VecDeque<(u64, u32)>);

impl Counts {
    fn add(&mut self, second: u64) {
        match self.0.back_mut() {
            Some((s, n)) if *s == second => *n += 1,
            Some((s, _)) if *s > second => match self.0.binary_search_by_key(&second, |x| x.0) {
                Ok(i) => self.0[i].1 += 1,
                Err(i) => self.0.insert(i, (second, 1)),
            },
            _ => self.0.push_back((second, 1)),
        }
        while self.0.front().is_some_and(|(s, _)| s + SLOTS <= second) {
            self.0.pop_front();
        }
    }

    fn last(&self) -> u64 {
        self.0.back().map_or(0, |x| x.0)
    }

    fn within(&self, from: u64, to: u64) -> Vec<(u64, u32)> {
        self.0
            .iter()
            .filter(|(s, _)| (from..=to).contains(s))
            .copied()
            .collect()
    }
}

#[derive(Debug)]
struct Entry {
    fingerprint: Fingerprint,
    counts: Counts,
}

#[derive(Debug, Default)]
struct Inner {
    /// By the fingerprint's hash.
    entries: HashMap<u64, Entry>,
    overflow: Counts,
}

/// A group's fingerprints (in `GroupStats`, so it lives as long as the group's counters).
#[derive(Debug, Default)]
pub struct Table {
    inner: Mutex<Inner>,
}

impl Table {
    /// One failed answer in window second `second`.
    /// Only a fingerprint seen for the first time is made (strings copied); a known one is
    /// a hash, a lookup and an add.
    pub fn record(&self, second: u64, failed: &Failed) {
        let (key, text) = key(failed);
        let mut t = self.inner.lock().expect("fingerprints lock");
        if let Some(e) = t.entries.get_mut(&key) {
            e.counts.add(second);
            return;
        }
        if t.entries.len() >= CAP {
            // Room from fingerprints the window no longer holds.
            t.entries.retain(|_, e| e.counts.last() + SLOTS > second);
        }
        if t.entries.len() >= CAP {
            t.overflow.add(second);
            return;
        }
        let mut counts = Counts::default();
        counts.add(second);
        let fingerprint = Fingerprint::new(failed, key, &text);
        t.entries.insert(
            key,
            Entry {
                fingerprint,
                counts,
            },
        );
    }

    /// The fingerprints seen in seconds `[from, to]`, with their counts there.
    pub fn export(&self, from: u64, to: u64) -> Exported {
        let t = self.inner.lock().expect("fingerprints lock");
        let mut fingerprints: Vec<Seen> = t
            .entries
            .values()
            .filter_map(|e| {
                let seconds = e.counts.within(from, to);
                (!seconds.is_empty()).then(|| Seen {
                    fingerprint: e.fingerprint.clone(),
                    seconds,
                })
            })
            .collect();
        fingerprints.sort_by(|a, b| a.fingerprint.id.cmp(&b.fingerprint.id));
        Exported {
            fingerprints,
            overflow: t.overflow.within(from, to),
        }
    }
}

/// A group's fingerprints over some seconds, as they travel between the instances of a
/// fleet (`GET /api/v1/fleet/seconds`): at most [`CAP`] of them, each with its non-zero
/// seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Exported {
    pub fingerprints: Vec<Seen>,
    /// Failures not kept as a fingerprint (the group had [`CAP`]), per second.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overflow: Vec<(u64, u32)>,
}

impl Exported {
    pub fn is_empty(&self) -> bool {
        self.fingerprints.is_empty() && self.overflow.is_empty()
    }
}

/// One fingerprint and its counts as `(second, count)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Seen {
    pub fingerprint: Fingerprint,
    pub seconds: Vec<(u64, u32)>,
}

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
    use super::*;

    fn failed(body: &str) -> Failed<'_> {
        Failed {
            route: "api",
            status: 500,
            cause: None,
            kind: None,
            body: body.as_bytes(),
        }
    }

    #[test]
    fn digits_hex_runs_and_uuids_are_replaced_and_whitespace_collapsed() {
        assert_eq!(normalise(b"order 1234 failed"), "order <n> failed");
        assert_eq!(
            normalise(b"order 987 failed"),
            normalise(b"order 1234 failed")
        );
        assert_eq!(
            normalise(b"  req 123e4567-e89b-12d3-a456-426614174000\n\n\tat  0x7ffd12  "),
            "req <uuid> at <hex>"
        );
        assert_eq!(
            normalise(b"trace 5f3a9c0b17 node12 took 1.25s"),
            "trace <hex> node<n> took <n>.<n>s"
        );
        // Words stay words, even of hex letters.
        assert_eq!(normalise(b"deadbeef cafe"), "deadbeef cafe");
        assert_eq!(
            normalise(b"{\"error\":\"db pool exhausted\",\"n\":17}"),
            "{\"error\":\"db pool exhausted\",\"n\":<n>}"
        );
    }

    #[test]
    fn only_the_prefix_is_read_and_a_character_cut_at_its_end_is_dropped() {
        let mut body = vec![b'a'; PREFIX_BYTES - 1];
        body.extend("é and more after the prefix".as_bytes());
        let n = normalise(&body);
        assert_eq!(n, "a".repeat(PREFIX_BYTES - 1));
    }

    #[test]
    fn the_fingerprint_id_depends_on_route_status_cause_kind_and_normalised_body_only() {
        let a = Fingerprint::of(&failed("order 1234 failed"));
        assert_eq!(a.id, Fingerprint::of(&failed("order   987 failed ")).id);
        assert_ne!(a.id, Fingerprint::of(&failed("order 1 lost")).id);
        let other_route = Failed {
            route: "web",
            ..failed("order 1 failed")
        };
        assert_ne!(a.id, Fingerprint::of(&other_route).id);
        let reset = Failed {
            status: 502,
            cause: Some("upstream_reset"),
            kind: Some(Failure::Reset),
            body: b"",
            ..failed("")
        };
        let f = Fingerprint::of(&reset);
        assert_eq!(f.describe(), "502 upstream_reset");
        assert_eq!(f.kind.as_deref(), Some("reset"));
        assert_eq!(a.describe(), "500 'order <n> failed'");
    }

    #[test]
    fn a_table_holds_at_most_cap_fingerprints_and_counts_the_rest_as_overflow() {
        let t = Table::default();
        for i in 0..(CAP + 10) {
            // Letters, not digits: each is its own fingerprint.
            let body: String = (0..4)
                .map(|k| (b'a' + ((i >> (k * 4)) & 15) as u8) as char)
                .collect();
            t.record(100, &failed(&body));
            t.record(101, &failed(&body));
        }
        let e = t.export(0, 200);
        assert_eq!(e.fingerprints.len(), CAP);
        assert_eq!(e.overflow, vec![(100, 10), (101, 10)]);
        // Once the window no longer holds the old ones, a new fingerprint takes their room.
        t.record(101 + SLOTS, &failed("fresh"));
        let e = t.export(101 + SLOTS, 101 + SLOTS);
        assert_eq!(e.fingerprints.len(), 1);
        assert!(e.overflow.is_empty());
    }

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
