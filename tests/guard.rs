//! The sequential guard end to end, over real sockets with steady load: a candidate that
//! starts answering 30 % 5xx is rolled back within a second or two, one with stable's own
//! 1 % background 5xx is kept, one whose latency doubles is rolled back, and a flood of
//! overrides to stable that skews the split pauses the rollout (sample ratio mismatch); and
//! errors both versions show at once are not the candidate's. A fast service's candidate
//! is held to a latency line a host's hiccups do not reach (`min_latency_increase`), yet
//! rolled back when it really slows down.

mod common;

use std::time::{Duration, Instant};

use common::release::*;
use common::*;
use serde_json::{json, Value};
use switchyard::client::AdminClient;

const TO_STABLE: &str =
    "[[route.override]]\ngroup = \"stable\"\nheader = { name = \"x-stable\", values = [\"1\"] }";

/// `shop` with blue stable and green candidate, each answering after `delay_ms`, the route
/// with an override to stable, the guard's defaults.
struct Rig {
    blue: TestBackend,
    green: TestBackend,
    _sy: Server,
    api: AdminClient,
    url: String,
}

impl Rig {
    async fn start(delay_ms: u64) -> Rig {
        Rig::start_with(delay_ms, "").await
    }

    /// The same, with `service` added to the service's section (e.g. `[service.guard]`).
    async fn start_with(delay_ms: u64, service: &str) -> Rig {
        let (blue, green) = TestBackend::pair().await;
        blue.set_delay(delay_ms);
        green.set_delay(delay_ms);
        let cfg = blue_green(blue.addr, green.addr)
            .route(TO_STABLE)
            .service(service)
            .build();
        let sy = start(&cfg).await;
        let api = admin(&sy);
        let url = web_url(&sy).await;
        Rig {
            blue,
            green,
            _sy: sy,
            api,
            url,
        }
    }

    /// Steady load from `workers` keep-alive clients.
    fn load(&self, workers: usize) -> Load {
        Load::start(self.url.clone(), workers, &[])
    }

    /// Waits until the guard has judged `n` candidate answers in one test.
    async fn judging(&self, n: u64) -> Value {
        wait_status(&self.api, 20, |r| {
            r["guard"]["candidate_requests"].as_u64() >= Some(n)
        })
        .await
    }

    /// Waits until the guard has a latency line (stable's p99) and has judged 20 candidate
    /// answers against it, and checks the candidate, as fast as stable so far, was kept.
    async fn judging_latency(&self) {
        wait_status(&self.api, 20, |r| {
            r["guard"]["latency"]["threshold_ms"].is_number()
                && r["guard"]["latency"]["candidate_requests"].as_u64() >= Some(20)
        })
        .await;
        assert_status(&self.api, "paused", "a candidate as fast as stable is kept").await;
    }

    /// Waits for the abort; the rollout and the time since `onset`, printed.
    async fn aborted_after(&self, onset: Instant, what: &str) -> (Value, Duration) {
        let r = wait_status(&self.api, 20, |r| r["status"] == "aborted").await;
        let took = onset.elapsed();
        eprintln!(
            "{what}: rolled back {took:?} after the onset — {}",
            reason(&r)
        );
        (r, took)
    }
}

bounded_test! {
    /// 30 % 5xx from the candidate at 10 % of the traffic is taken back within 2 s of the
    /// onset (plus the testkit's load slack; the bench measures the distribution), and the
    /// reason gives the counts, the rates and the bound crossed.
    async fn a_candidate_answering_30_percent_5xx_at_10_percent_is_rolled_back_within_2_s() {
        let rig = Rig::start(0).await;
        start_held(&rig.api, 10.0).await;
        let load = rig.load(8);
        // Healthy first: the tests begun before the onset see good answers.
        rig.judging(100).await;
        assert_status(&rig.api, "paused", "a healthy candidate is kept").await;

        rig.green.set_errors(300);
        let (r, took) = rig.aborted_after(Instant::now(), "30 % 5xx").await;
        load.stop().await;
        fired_between(took, Duration::ZERO, Duration::from_secs(2), "30 % 5xx rollback");
        let why = reason(&r);
        assert!(
            why.starts_with("aborted by guard: candidate green error rate")
                && why.contains("exceeds stable blue's")
                && why.contains("by more than 5 points: the difference is at least")
                && why.contains("(α = 0.01 per hour)"),
            "{why}"
        );
        assert_eq!(r["guard"]["state"], "rolled_back", "{r}");
        assert!(r["guard"]["error_lower_bound"].as_f64() > Some(5.0), "{r}");
    }
}

bounded_test! {
    /// A candidate with the same 1 % background 5xx as stable is kept through 8 s of load
    /// (about 80 looks, every test of them judged with answers enough): the guard reads
    /// "watching" and its bound stays under the tolerance. Absence over time is what is
    /// checked, so the test waits the time out.
    async fn a_healthy_candidate_with_the_same_1_percent_5xx_as_stable_is_kept_for_8_s() {
        let rig = Rig::start(0).await;
        rig.blue.set_errors(10);
        rig.green.set_errors(10);
        start_held(&rig.api, 10.0).await;
        let load = rig.load(8);
        rig.judging(100).await;
        tokio::time::sleep(Duration::from_secs(8)).await;
        let r = rollout(&rig.api).await;
        load.stop().await;
        assert_eq!(r["status"], "paused", "{r}");
        assert_eq!(r["guard"]["state"], "watching", "{r}");
        assert!(r["guard"]["error_lower_bound"].as_f64() < Some(5.0), "{r}");
        assert!(rig.green.hits() >= 200, "the candidate was judged on its answers");
    }
}

bounded_test! {
    /// Both versions answer after 300 ms (long against a loaded machine's scheduling
    /// jitter, which would otherwise make stable's p99 and the threshold); once the guard
    /// has a p99 of stable, the candidate at 50 % slows to 600 ms: every answer is over 1.5 ×
    /// stable's p99 (unless jitter took that past 400 ms), and it is rolled back within 2 s
    /// (plus load slack) with a reason about latency.
    async fn a_candidate_whose_latency_doubles_is_rolled_back_within_2_s() {
        let rig = Rig::start(300).await;
        start_held(&rig.api, 50.0).await;
        let load = rig.load(16);
        rig.judging_latency().await;

        rig.green.set_delay(600);
        let (r, took) = rig.aborted_after(Instant::now(), "latency doubled").await;
        load.stop().await;
        fired_between(took, Duration::ZERO, Duration::from_secs(2), "latency rollback");
        let why = reason(&r);
        assert!(
            why.contains("answers slower than") && why.contains("× stable blue's p99 of "),
            "{why}"
        );
    }
}

bounded_test! {
    /// A fast service (no delay: stable's p99 well under a millisecond on loopback) whose
    /// candidate turns 30 ms slower: past 1.5 × stable's p99 and past it by the least
    /// increase (5 ms by default) — rolled back, with the reason naming both lines. The
    /// least increase keeps a host's hiccups from counting; it does not hide a real slowdown.
    async fn a_fast_service_whose_candidate_turns_30_ms_slower_is_rolled_back() {
        let rig = Rig::start(0).await;
        start_held(&rig.api, 50.0).await;
        let load = rig.load(8);
        rig.judging_latency().await;
        rig.green.set_delay(30);
        let (r, _) = rig.aborted_after(Instant::now(), "30 ms slower").await;
        load.stop().await;
        let why = reason(&r);
        assert!(
            why.contains("answers slower than")
                && why.contains("× stable blue's p99 of ")
                && why.contains(", and at least 5.0 ms over it)"),
            "{why}"
        );
    }
}

bounded_test! {
    /// With `min_latency_increase = "2s"` the same candidate, 30 ms slower than a fast
    /// stable (every answer far past 1.5 × stable's p99), is kept: the guard's line is
    /// stable's p99 + 2 s, which it reads out. With the line at the ratio alone it is rolled
    /// back at once. (The increase is far above the 30 ms so that a host stall of a few
    /// hundred ms — which lands on the candidate's in-flight 30-ms answers more than on
    /// stable's — cannot cross it either.) Absence over time is what is checked, so the test
    /// waits the time out.
    async fn a_slowdown_under_the_least_increase_is_not_rolled_back() {
        let rig = Rig::start_with(0, "[service.guard]\nmin_latency_increase = \"2s\"").await;
        start_held(&rig.api, 50.0).await;
        let load = rig.load(8);
        rig.judging_latency().await;
        rig.green.set_delay(30);
        let hits = rig.green.hits();
        // Several windows of the candidate's slower answers, each judged.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let r = rollout(&rig.api).await;
        load.stop().await;
        assert_eq!(r["status"], "paused", "{}", reason(&r));
        assert_eq!(r["guard"]["state"], "watching", "{r}");
        let latency = &r["guard"]["latency"];
        assert!(latency["threshold_ms"].as_f64() >= Some(2000.0), "{r}");
        assert!(latency["lower_bound"].as_f64() < Some(1.0), "{r}");
        assert!(rig.green.hits() >= hits + 100, "the slower candidate was judged on its answers");
    }
}

bounded_test! {
    /// Once the guard judges a candidate at 50 %, both versions answer 30 % 5xx for 2.5 s
    /// together (a dependency of both failing) and recover. The candidate's young tests see
    /// only the bad seconds while stable's 10-s reference dilutes them — but stable's own
    /// answers alongside were as bad: nothing the candidate did, and it is kept. Absence
    /// over time is what is checked, so the test waits the time out.
    async fn errors_both_versions_share_are_not_rolled_back() {
        let rig = Rig::start(0).await;
        start_held(&rig.api, 50.0).await;
        let load = rig.load(8);
        rig.judging(200).await;
        // Stable's reference reaches back to the attempt's first look: let it span its 10 s.
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert_status(&rig.api, "paused", "a healthy candidate is kept").await;
        rig.blue.set_errors(300);
        rig.green.set_errors(300);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        rig.blue.set_errors(0);
        rig.green.set_errors(0);
        // The tests that saw the bad seconds live 2 s past them.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let r = rollout(&rig.api).await;
        load.stop().await;
        assert_eq!(r["status"], "paused", "{}", reason(&r));
        assert_eq!(r["guard"]["state"], "watching", "{r}");
        assert!(rig.green.hits() >= 500, "the candidate was judged on its answers");
    }
}

bounded_test! {
    /// A canary progressing at 50 % under plain load keeps going; a flood of requests that
    /// an override sends to stable makes the candidate's observed share far below 50 %, and
    /// the guard pauses the rollout saying so (a comparison over such a split is biased).
    async fn a_flood_of_overrides_to_stable_pauses_the_rollout_as_a_sample_ratio_mismatch() {
        let rig = Rig::start(0).await;
        start_rollout(
            &rig.api,
            json!({ "kind": "canary", "steps": [{ "weight": 50 }, { "pause": "1h" }] }),
        )
        .await;
        wait_status(&rig.api, 10, |r| r["weight"] == 5000).await;
        let plain = rig.load(2);
        // Over the minimum the split is judged on, and as configured.
        wait_status(&rig.api, 20, |r| {
            r["guard"]["sample_ratio"]["requests"].as_u64() >= Some(1000)
        })
        .await;
        assert_status(&rig.api, "progressing", "a split as configured").await;

        let flood = Load::start(rig.url.clone(), 6, &[("x-stable", "1")]);
        let r = wait_status(&rig.api, 20, |r| r["status"] == "paused").await;
        flood.stop().await;
        plain.stop().await;
        let why = reason(&r);
        assert!(
            why.contains("sample ratio mismatch")
                && why.contains("configured 50.0%")
                && why.contains("sticky keys or overrides"),
            "{why}"
        );
        let paused = events(&rig.api, "service=shop").await;
        assert!(
            paused
                .iter()
                .any(|e| e["actor"] == "guard" && e["kind"] == "paused"),
            "{paused:?}"
        );
    }
}
