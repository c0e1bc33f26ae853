//! Rollbacks end to end: the guard's boundary (how far over stable, over which window),
//! every rollback cause counted in `/metrics` and posted to the notification webhook, HTTP
//! hooks with timeouts and retries, a slow `on_rollback` hook holding back a retry, and
//! analyses that tolerate `failure_limit` / `inconclusive_limit` measurements.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::release::*;
use common::*;
use serde_json::json;
use switchyard::client::AdminClient;
use switchyard::metrics::now_second;

const PREVIEW: &str =
    "[[route.override]]\ngroup = \"candidate\"\nheader = { name = \"x-preview\", values = [\"1\"] }";

/// A switchyard for `shop` (blue stable, green candidate, preview override), notifying a
/// receiver the test holds.
struct Rig {
    _blue: TestBackend,
    green: TestBackend,
    sy: Server,
    api: AdminClient,
    url: String,
    notified: Receiver,
}

impl Rig {
    async fn start(top: &str, service: &str) -> Rig {
        let (blue, green) = TestBackend::pair().await;
        let notified = Receiver::answering(200, "").await;
        let toml = blue_green(blue.addr, green.addr)
            .route(PREVIEW)
            .top(&format!(
                "[notifications]\nwebhook = \"{}\"",
                notified.url()
            ))
            .top(top)
            .service(service)
            .build();
        let sy = start(&toml).await;
        let api = admin(&sy);
        let url = web_url(&sy).await;
        Rig {
            _blue: blue,
            green,
            sy,
            api,
            url,
            notified,
        }
    }

    /// The rollback is counted once under `cause` (and under no other), and one Slack-style
    /// message naming the rollout and saying `said` reached the webhook.
    async fn rolled_back_by(&self, cause: &str, said: &str) {
        wait_rollbacks(&self.sy, cause, 1).await;
        let calls = self.notified.wait_calls(1).await;
        let text = calls[0].body["text"].as_str().unwrap_or("").to_string();
        assert!(
            text.contains("rollout #1 of shop (blue -> green)") && text.contains(said),
            "{text}"
        );
        assert_eq!(calls.len(), 1, "one message per rollback: {calls:?}");
    }
}

bounded_test! {
    async fn a_manual_abort_is_counted_as_manual_and_notified() {
        let rig = Rig::start("", "[service.guard]\nenabled = false").await;
        start_held(&rig.api, 10.0).await;
        verb(&rig.api, "abort", json!({ "reason": "bad logs" })).await;
        rig.rolled_back_by(
            "manual",
            "aborted, all traffic back on the stable group: aborted by admin: bad logs",
        )
        .await;
    }
}

bounded_test! {
    async fn an_undo_is_counted_as_undo_and_notified() {
        let rig = Rig::start("", "[service.guard]\nenabled = false").await;
        start_rollout(&rig.api, json!("all-at-once")).await;
        wait_status(&rig.api, 10, |r| r["status"] == "completed").await;
        let r = verb(&rig.api, "undo", json!({})).await;
        assert_eq!(r["status"], "rolled_back");
        rig.rolled_back_by("undo", ") rolled back: ").await;
        assert_eq!(backend_of(&rig.url).await, "blue");
    }
}

bounded_test! {
    async fn a_failed_analysis_step_is_counted_as_analysis_and_notified() {
        let analysis = "[[analysis]]\nname = \"smoke\"\ninterval = \"100ms\"\ncount = 1\n[[analysis.check]]\nname = \"smoke\"\ncommand = \"exit 1\"";
        let rig = Rig::start(analysis, "[service.guard]\nenabled = false").await;
        start_rollout(
            &rig.api,
            json!({ "kind": "canary", "steps": [{ "weight": 10 }, { "analysis": "smoke" }] }),
        )
        .await;
        let r = wait_status(&rig.api, 10, |r| r["status"] == "aborted").await;
        assert!(reason(&r).contains("analysis failed: smoke"), "{r}");
        rig.rolled_back_by("analysis", "analysis failed: smoke").await;
    }
}

bounded_test! {
    async fn a_failed_hook_is_counted_as_hook_and_notified() {
        let rig = Rig::start(
            "",
            "[service.guard]\nenabled = false\n[service.hooks.before_traffic]\ncommand = \"exit 1\"\nretries = 0",
        )
        .await;
        start_rollout(&rig.api, held_at(10.0)).await;
        wait_status(&rig.api, 10, |r| r["status"] == "aborted").await;
        rig.rolled_back_by("hook", "hook before_traffic failed after 1 attempts")
            .await;
    }
}

bounded_test! {
    async fn a_progress_deadline_is_counted_as_deadline_and_notified() {
        let rig = Rig::start(
            "",
            "progress_deadline = \"300ms\"\n[service.guard]\nenabled = false\n[service.hooks.before_traffic]\ncommand = \"sleep 30\"\ntimeout = \"60s\"",
        )
        .await;
        start_rollout(&rig.api, held_at(10.0)).await;
        wait_status(&rig.api, 10, |r| r["status"] == "aborted").await;
        rig.rolled_back_by("deadline", "made no progress for 300ms").await;
    }
}

/// Sends requests to one group until stopped — to the candidate through the preview override,
/// or to stable (at weight 0) without it — of which `percent` go to `/status/500`, spread
/// evenly: any run of `k` requests holds `k·percent/100` errors give or take one. Returns the
/// number sent.
fn traffic(
    url: &str,
    candidate: bool,
    percent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    let url = url.to_string();
    tokio::spawn(async move {
        let c = client();
        let headers: &[(&str, &str)] = if candidate {
            &[("x-preview", "1")]
        } else {
            &[]
        };
        let mut i = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let p = percent.load(Ordering::SeqCst);
            let error = (i + 1) * p / 100 > i * p / 100;
            let path = if error { "status/500" } else { "" };
            let _ = get(&c, &format!("{url}{path}"), headers).await;
            i += 1;
        }
        i
    })
}

bounded_test! {
    /// `max_error_rate` is the tolerated difference, 5 points over stable's rate, not 5 %: a
    /// candidate at 7 % against stable at 4 % (+3) stays through many judged windows; at 25 %
    /// (+21) it is rolled back. (The sequential guard rolls back once the *lower bound* of the
    /// difference passes 5 points: +7 would take thousands of answers to tell from +5, so the
    /// second rate is a clear effect.) `min_requests = 200` keeps a reading's share within
    /// half a point of the set rate (evenly spread errors: at most one more or fewer than the
    /// rate in any run).
    async fn the_guard_keeps_a_candidate_three_points_over_stable_and_rolls_back_one_twenty_one_over() {
        let rig = Rig::start(
            "",
            "[service.guard]\ninterval = \"100ms\"\nwindow = \"2s\"\nmin_requests = 200",
        )
        .await;
        start_held(&rig.api, 0.0).await;
        let stop = Arc::new(AtomicBool::new(false));
        let (on_green, on_blue) = (Arc::new(AtomicU64::new(7)), Arc::new(AtomicU64::new(4)));
        let began = Instant::now();
        let green = traffic(&rig.url, true, on_green.clone(), stop.clone());
        let blue = traffic(&rig.url, false, on_blue, stop.clone());

        // At least two full windows of judged traffic (each with ≥ 200 requests) at +3.
        eventually(
            Duration::from_secs(20),
            "1000 requests on the candidate",
            || async { rig.green.hits() >= 1000 },
        )
        .await;
        tokio::time::sleep(Duration::from_secs(5).saturating_sub(began.elapsed())).await;
        assert_status(&rig.api, "paused", "+3 points is within the guard's 5").await;
        // The rollout says what the guard sees while it lets the candidate be.
        let r = wait_status(&rig.api, 10, |r| r["guard"]["state"] == "watching").await;
        let seen = &r["guard"];
        assert!(seen["candidate_requests"].as_u64() >= Some(200), "{r}");
        assert!(
            (seen["candidate_error_rate"].as_f64().unwrap() - 7.0).abs() < 1.0,
            "{r}"
        );
        assert!(
            seen["detail"]
                .as_str()
                .is_some_and(|d| d.contains("rolls back above +5 points")),
            "{r}"
        );

        on_green.store(25, Ordering::SeqCst);
        let r = wait_status(&rig.api, 10, |r| r["status"] == "aborted").await;
        assert_eq!(r["guard"]["state"], "rolled_back", "{r}");
        stop.store(true, Ordering::SeqCst);
        let (g, b) = (green.await.unwrap(), blue.await.unwrap());
        assert!(
            reason(&r).starts_with("aborted by guard: candidate green error rate"),
            "{r}"
        );
        assert!(g > 0 && b > 0);
        rig.rolled_back_by("guard", "exceeds stable blue's").await;
    }
}

/// `n` requests to the candidate (through the preview override) at `path`.
async fn to_candidate(url: &str, path: &str, n: usize) {
    let c = client();
    for _ in 0..n {
        get(&c, &format!("{url}{path}"), &[("x-preview", "1")])
            .await
            .unwrap();
    }
}

/// Waits until the guard's clock (whole seconds) reaches `second`.
async fn until_second(second: u64) {
    while now_second() < second {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

bounded_test! {
    /// The guard judges exactly its window, in whole seconds (`now - 2 ..= now` for 2 s): errors
    /// that left it are forgotten, and errors spread over two of its seconds add up. With
    /// `min_requests = 20`, each batch of 15 or 12 requests alone is too few to judge.
    async fn the_guard_forgets_errors_older_than_its_window_and_adds_up_those_within_it() {
        let rig = Rig::start(
            "",
            "[service.guard]\ninterval = \"100ms\"\nwindow = \"2s\"\nmin_requests = 20",
        )
        .await;
        let begun = now_second();
        start_held(&rig.api, 0.0).await;
        // The guard counts from the second after its attempt began.
        until_second(begun + 2).await;

        // 15 errors, then 15 answers once those errors are 3 seconds old (out of the window).
        to_candidate(&rig.url, "status/500", 15).await;
        until_second(now_second() + 3).await;
        to_candidate(&rig.url, "", 15).await;
        let healthy_until = now_second();
        // Ten ticks: a guard that still counted the first batch would see 30 requests at 50 %.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_status(&rig.api, "paused", "errors out of the window were judged").await;

        // Once those answers left the window too: 12 errors in one second, 12 in the next.
        // Too few to judge alone; 24 within the window.
        until_second(healthy_until + 3).await;
        to_candidate(&rig.url, "status/500", 12).await;
        let first = now_second();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_status(&rig.api, "paused", "12 requests are fewer than min_requests").await;
        until_second(first + 1).await;
        to_candidate(&rig.url, "status/500", 12).await;
        let r = wait_status(&rig.api, 5, |r| r["status"] == "aborted").await;
        assert!(reason(&r).contains("aborted by guard"), "{r}");
    }
}

bounded_test! {
    /// A hook target that stalls its first call past the hook's timeout, then answers: the retry
    /// goes through; one that always fails is called once plus `retries` times, then aborts.
    async fn an_http_hook_is_timed_out_and_retried_and_a_failing_one_aborts_after_its_attempts() {
        let stalls_once = Receiver::start(Arc::new(|n| {
            let delay = if n == 0 { Duration::from_secs(30) } else { Duration::ZERO };
            (delay, 200, "ok")
        }))
        .await;
        let rig = Rig::start(
            "",
            &format!(
                "[service.guard]\nenabled = false\n[service.hooks.before_traffic]\nurl = \"{}\"\ntimeout = \"300ms\"\nretries = 1",
                stalls_once.url()
            ),
        )
        .await;
        start_rollout(&rig.api, held_at(10.0)).await;
        let r = wait_status(&rig.api, 10, |r| r["status"] != "progressing").await;
        assert_eq!(r["status"], "paused", "the retry answered: {r}");
        let calls = stalls_once.calls();
        assert_eq!(calls.len(), 2, "{calls:?}");
        let gap = calls[1].at - calls[0].at;
        assert!(gap >= Duration::from_millis(300), "retried after {gap:?}, before the timeout");
        assert_eq!(calls[0].body["hook"], "before_traffic");
        drop(rig);

        let fails = Receiver::answering(500, "down for maintenance").await;
        let rig = Rig::start(
            "",
            &format!(
                "[service.guard]\nenabled = false\n[service.hooks.before_traffic]\nurl = \"{}\"\ntimeout = \"1s\"\nretries = 2",
                fails.url()
            ),
        )
        .await;
        start_rollout(&rig.api, held_at(10.0)).await;
        let r = wait_status(&rig.api, 10, |r| r["status"] == "aborted").await;
        assert!(
            reason(&r).contains("hook before_traffic failed after 3 attempts"),
            "{r}"
        );
        assert!(reason(&r).contains("down for maintenance"), "{r}");
        assert_eq!(fails.calls().len(), 3);
        assert_eq!(r["weight"], 0, "no traffic reached the candidate");
    }
}

/// Lines `name <nanoseconds>` from a log the hooks write.
fn stamps(log: &std::path::Path, name: &str) -> Vec<u128> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{name} ")))
        .map(|t| t.trim().parse().unwrap())
        .collect()
}

bounded_test! {
    /// README: "a retry or the next rollout of the service starts only once that hook has
    /// finished". The retry is accepted at once; its first step (the before_traffic hook, then
    /// the weight) waits until the slow `on_rollback` hook has ended.
    async fn a_slow_on_rollback_hook_holds_back_the_retry_until_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("hooks.log");
        let rig = Rig::start(
            "",
            &format!(
                "[service.guard]\nenabled = false\n[service.hooks.before_traffic]\ncommand = \"echo before $(date +%s%N) >> {log}\"\n[service.hooks.on_rollback]\ncommand = \"echo start $(date +%s%N) >> {log}; sleep 1.5; echo end $(date +%s%N) >> {log}\"\ntimeout = \"10s\"",
                log = log.display()
            ),
        )
        .await;
        start_held(&rig.api, 10.0).await;
        verb(&rig.api, "abort", json!({})).await;
        eventually(Duration::from_secs(10), "on_rollback started", || async {
            !stamps(&log, "start").is_empty()
        })
        .await;
        let r = verb(&rig.api, "retry", json!({})).await;
        assert_eq!(r["attempt"], 1, "the retry is accepted while the hook runs");
        // Held: no weight while the hook runs.
        let r = rollout(&rig.api).await;
        if stamps(&log, "end").is_empty() {
            assert_eq!(r["weight"], 0, "{r}");
        }
        wait_status(&rig.api, 10, paused_at(1000)).await;
        let (end, before) = (stamps(&log, "end"), stamps(&log, "before"));
        assert_eq!(before.len(), 2, "before_traffic once per attempt");
        assert!(
            before[1] >= end[0],
            "the retry's before_traffic started {} ms before on_rollback ended",
            (end[0] - before[1]) / 1_000_000
        );
    }
}

/// A command check that counts its runs in `file` and fails (exit 1) or is inconclusive
/// (exit 3) on its first `bad` runs (all of them with `bad` = 99), then passes.
fn counted(file: &std::path::Path, bad: u32, code: u32) -> String {
    let f = file.display();
    format!(
        "command = \"n=$(cat {f} 2>/dev/null | wc -l); echo run >> {f}; [ $n -ge {bad} ] || exit {code}\""
    )
}

fn runs(file: &std::path::Path) -> usize {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .count()
}

bounded_test! {
    /// `failure_limit = 2` tolerates two failed measurements and rolls back at the third;
    /// `inconclusive_limit = 1` tolerates one inconclusive measurement and holds at the second.
    async fn analyses_tolerate_their_limits_and_act_one_measurement_past_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str| dir.path().join(name);
        let analysis = |name: &str, limits: &str, check: String| {
            format!(
                "[[analysis]]\nname = \"{name}\"\ninterval = \"100ms\"\ncount = 5\n{limits}\n[[analysis.check]]\nname = \"{name}\"\n{check}\n"
            )
        };
        let top = [
            analysis("fails-twice", "failure_limit = 2", counted(&file("a"), 2, 1)),
            analysis("unsure-once", "inconclusive_limit = 1", counted(&file("b"), 1, 3)),
            analysis("always-fails", "failure_limit = 2", counted(&file("c"), 99, 1)),
            analysis("always-unsure", "inconclusive_limit = 1", counted(&file("d"), 99, 3)),
        ]
        .concat();
        let rig = Rig::start(&top, "[service.guard]\nenabled = false").await;
        start_rollout(
            &rig.api,
            json!({ "kind": "canary", "steps": [
                { "weight": 10 }, { "analysis": "fails-twice" },
                { "weight": 20 }, { "analysis": "unsure-once" },
                { "weight": 30 }, { "analysis": "always-fails" },
            ]}),
        )
        .await;
        let r = wait_status(&rig.api, 20, |r| r["status"] == "aborted").await;
        assert_eq!(r["weight"], 0, "{r}");
        assert!(
            reason(&r).contains("check always-fails failed 3 of 3 times (limit 2)"),
            "{r}"
        );
        let passed: Vec<String> = events(&rig.api, "service=shop&kind=analysis")
            .await
            .iter()
            .map(|e| reason(e).to_string())
            .collect();
        assert_eq!(passed.len(), 2, "{passed:?}");
        assert!(passed[1].contains("(5 measurements, 2 failed, 0 inconclusive)"), "{passed:?}");
        assert!(passed[0].contains("(5 measurements, 0 failed, 1 inconclusive)"), "{passed:?}");
        assert_eq!(
            (runs(&file("a")), runs(&file("b")), runs(&file("c"))),
            (5, 5, 3),
            "no measurement after the verdict"
        );

        start_rollout(
            &rig.api,
            json!({ "kind": "canary", "steps": [{ "weight": 10 }, { "analysis": "always-unsure" }] }),
        )
        .await;
        let r = wait_status(&rig.api, 10, |r| r["status"] == "paused").await;
        assert_eq!(r["weight"], 1000, "held, not rolled back: {r}");
        assert!(
            reason(&r).contains("check always-unsure was inconclusive 2 of 2 times (limit 1)"),
            "{r}"
        );
        assert_eq!(runs(&file("d")), 2);
    }
}
