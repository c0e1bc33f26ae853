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
//! recorded: it is not the version's (see `proxy::account`). `tally` sums a group's
//! fingerprints over a fleet and compares the candidate's with stable's.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::metrics::{Failure, SLOTS};

mod tally;
pub use tally::{clock_time, sentence, Compared, Counted, Kept, Row, Source, Tally};

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

#[cfg(test)]
mod tests {
    use super::*;

    /// A 500 on route `api` with `body` (also for `tally`'s tests).
    pub(super) fn failed(body: &str) -> Failed<'_> {
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
}
