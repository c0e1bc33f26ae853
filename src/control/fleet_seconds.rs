//! What an instance answers a fleet's leader that pulls its traffic (`control::peers` is the
//! puller): every group's one-second slots from a given second, with its groups' fingerprints,
//! in pages that a puller can always read.
//!
//! The page is cut by weight as well as by seconds: a leader catching up on 11 minutes of an
//! instance with many busy services asks for 60 seconds at a time, and 60 seconds of every
//! group can weigh more than a puller reads (`bounded::http::MAX_ANSWER_BYTES`). Such a page
//! would fail on every try, and the pull would never move past it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::bounded::http::MAX_ANSWER_BYTES;
use crate::fingerprint::Exported;
use crate::metrics::{self, Second, SLOTS};
use crate::snapshot::Snapshot;

/// What one answer may weigh: half of what a puller reads (`2 * BUDGET`), so the seconds still
/// growing while the answer is made cannot take it over.
const BUDGET: usize = MAX_ANSWER_BYTES / 2;

/// What `GET /api/v1/fleet/seconds` answers: per service and group, the seconds from the
/// asked one to `to` (now, unless fewer were asked for or they weighed too much) that saw
/// anything, on this instance's window clock.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetSeconds {
    pub now_second: u64,
    /// The last second this answer covers: `now_second` unless `seconds` or the weight of
    /// the answer cut it short; the puller asks for the next one after it.
    pub to: u64,
    /// The same clock in milliseconds: how the puller maps these seconds onto its own.
    pub now_ms: u64,
    pub services: BTreeMap<String, BTreeMap<String, Vec<Second>>>,
    /// Per service and group, the fingerprints of failed answers in the same seconds (groups
    /// without any left out; bounded by `fingerprint::CAP` per group).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub errors: BTreeMap<String, BTreeMap<String, Exported>>,
}

impl FleetSeconds {
    /// The answer, as JSON, to a pull from second `from` of at most `most` seconds: every
    /// group of the snapshot from `from` (at most the 11 minutes the window keeps) to now,
    /// or fewer seconds when they weigh more than [`BUDGET`] — cut to the share that would
    /// fit were the seconds alike, again until they do, down to one second. A single second
    /// heavier than a puller reads goes without its fingerprints (they are what grows: up
    /// to 64 a group), so that the pull still moves on; its counts still reach the judge.
    pub fn answer(snap: &Snapshot, from: u64, most: Option<u64>) -> Vec<u8> {
        Self::answer_within(snap, from, most, metrics::now_ms(), BUDGET)
    }

    fn answer_within(
        snap: &Snapshot,
        from: u64,
        most: Option<u64>,
        now_ms: u64,
        budget: usize,
    ) -> Vec<u8> {
        let now_second = now_ms / 1000;
        let from = from.max(now_second.saturating_sub(SLOTS - 1));
        let mut to = most.map_or(now_second, |n| {
            now_second.min(from.saturating_add(n.max(1) - 1))
        });
        loop {
            let mut page = Self::between(snap, from, to, now_ms);
            let mut json = serde_json::to_vec(&page).expect("plain data serializes");
            if json.len() <= budget {
                return json;
            }
            if to <= from {
                if json.len() > budget.saturating_mul(2) && !page.errors.is_empty() {
                    tracing::warn!(second = from, bytes = json.len(),
                        "one second of this instance's groups weighs more than a fleet pull reads: sent without its fingerprints");
                    page.errors.clear();
                    json = serde_json::to_vec(&page).expect("plain data serializes");
                }
                return json;
            }
            // The seconds that would fit were they alike; fewer than now, one at least.
            let span = to - from + 1;
            let fit = (u128::from(span) * budget as u128 / json.len() as u128) as u64;
            to = from + fit.clamp(1, span - 1) - 1;
        }
    }

    /// The seconds `[from, to]` of every group of the snapshot, and their fingerprints.
    fn between(snap: &Snapshot, from: u64, to: u64, now_ms: u64) -> FleetSeconds {
        let services = snap
            .services
            .values()
            .map(|svc| {
                let groups = svc
                    .groups
                    .iter()
                    .map(|g| (g.name.clone(), g.stats.window.seconds(from, to)))
                    .collect();
                (svc.name.clone(), groups)
            })
            .collect();
        let errors = snap
            .services
            .values()
            .filter_map(|svc| {
                let groups: BTreeMap<String, Exported> = svc
                    .groups
                    .iter()
                    .map(|g| (g.name.clone(), g.stats.fingerprints.export(from, to)))
                    .filter(|(_, e)| !e.is_empty())
                    .collect();
                (!groups.is_empty()).then(|| (svc.name.clone(), groups))
            })
            .collect();
        FleetSeconds {
            now_second: now_ms / 1000,
            to,
            now_ms,
            services,
            errors,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    /// A snapshot of `services` services of two groups each.
    fn snapshot(services: usize) -> Snapshot {
        let mut toml = String::from(
            "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n\n\
             [[route]]\nname = \"all\"\npriority = 1\nforward = \"svc-0\"\n\n",
        );
        for i in 0..services {
            toml += &format!(
                "[[service]]\nname = \"svc-{i}\"\nactive = \"blue\"\n\
                 [[service.group]]\nname = \"blue\"\ntargets = [\"127.0.0.1:9\"]\n\
                 [[service.group]]\nname = \"green\"\ntargets = [\"127.0.0.2:9\"]\n\n"
            );
        }
        let config = crate::config::parse(&toml, "test.toml", Path::new("."))
            .unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
        Snapshot::build(Arc::new(config), &HashMap::new(), None, 1, None)
    }

    /// Every group busy in each of the seconds `seconds`: answers of every class, spread
    /// over the latency buckets, so each second weighs what a busy group's does.
    fn busy(snap: &Snapshot, seconds: std::ops::RangeInclusive<u64>) {
        for svc in snap.services.values() {
            for g in &svc.groups {
                for s in seconds.clone() {
                    for (i, status) in [200, 204, 301, 404, 500, 503].into_iter().enumerate() {
                        for ms in 1..=40 {
                            let took = Duration::from_micros(ms * 97 * (i as u64 + 1));
                            g.stats.window.record(s, status, took, None);
                        }
                    }
                }
            }
        }
    }

    fn read(json: &[u8]) -> FleetSeconds {
        serde_json::from_slice(json).expect("the answer reads back")
    }

    /// What a puller does: pages from `from` until the current second, each cut where the
    /// last one said; every second of every group comes exactly once.
    #[test]
    fn a_catch_up_is_paged_by_weight_and_no_second_is_lost_or_sent_twice() {
        let snap = snapshot(12);
        let now_ms = 1_000_000;
        let now = now_ms / 1000;
        busy(&snap, now - 59..=now);
        let budget = 64 * 1024;
        // Unbounded, the minute weighs several budgets: without the cut, no page could be
        // read by a puller that reads at most `budget`.
        let whole = FleetSeconds::answer_within(&snap, now - 59, Some(60), now_ms, usize::MAX);
        assert!(whole.len() > 4 * budget, "{} bytes", whole.len());

        let mut seen: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
        let (mut from, mut pages) = (now - 59, 0);
        loop {
            let json = FleetSeconds::answer_within(&snap, from, Some(60), now_ms, budget);
            assert!(json.len() <= budget, "page of {} bytes", json.len());
            let page = read(&json);
            assert!(page.to >= from, "the page moves forward");
            for (svc, groups) in page.services {
                for (g, seconds) in groups {
                    let got = seen.entry((svc.clone(), g)).or_default();
                    got.extend(seconds.iter().map(|s| s.second));
                    assert!(seconds.iter().all(|s| (from..=page.to).contains(&s.second)));
                }
            }
            pages += 1;
            if page.to == page.now_second {
                break;
            }
            from = page.to + 1;
        }
        assert!(pages > 4, "{pages} pages");
        assert_eq!(seen.len(), 24);
        for (group, seconds) in seen {
            assert_eq!(seconds, (now - 59..=now).collect::<Vec<_>>(), "{group:?}");
        }
    }

    /// One second heavier than the budget is still sent: there is no smaller page, and a
    /// pull that never moved would be worse. Heavier than a puller reads, it goes without its
    /// fingerprints; within that, with them.
    #[test]
    fn a_second_heavier_than_the_budget_is_sent_alone_and_without_fingerprints_past_the_limit() {
        let snap = snapshot(4);
        let now_ms = 500_000;
        let now = now_ms / 1000;
        busy(&snap, now - 9..=now);
        for svc in snap.services.values() {
            for g in &svc.groups {
                for n in 0..64 {
                    let body =
                        format!("{} distinct failure {}", svc.name, "xyzw".repeat(n % 7 + 1));
                    let f = crate::fingerprint::Failed {
                        route: "all",
                        status: 500 + (n as u16 % 4),
                        cause: None,
                        kind: None,
                        body: body.as_bytes(),
                    };
                    g.stats.fingerprints.record(now - 9, &f);
                }
            }
        }
        // Cut down to its first second, whatever the budget.
        let cut = read(&FleetSeconds::answer_within(
            &snap,
            now - 9,
            None,
            now_ms,
            100,
        ));
        assert_eq!(cut.to, now - 9);
        assert!(cut
            .services
            .values()
            .flat_map(|g| g.values())
            .all(|s| s.len() == 1));
        let one_second =
            |budget| FleetSeconds::answer_within(&snap, now - 9, Some(1), now_ms, budget);
        let weight = one_second(usize::MAX).len();
        // Over the budget but within what a puller reads: sent whole.
        let within = read(&one_second(weight * 3 / 4));
        assert_eq!(within.errors.len(), 4, "sent with its fingerprints");
        // Past what a puller reads: its fingerprints left out, its counts sent.
        let past = read(&one_second(weight / 3));
        assert_eq!(past.to, now - 9);
        assert!(past.errors.is_empty(), "{:?}", past.errors.keys());
        assert_eq!(past.services, within.services, "its counts all the same");
    }
}
