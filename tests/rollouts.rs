//! Rollouts end to end: every strategy and step type, the split observed at each step,
//! stickiness while the weight rises, overrides, aborts and blue-green under load, API errors.
//!
//! Over 600 lines: one test binary for the rollout verbs and strategies end to end; split
//! into several it would link the crate once more each (seconds of build per binary).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::release::*;
use common::*;
use serde_json::{json, Value};

const SMOKE: &str = r#"[[analysis]]
name = "smoke"
interval = "100ms"
count = 1
inconclusive_limit = 0
min_requests = 1000000
[[analysis.check]]
name = "errors"
metric = "error-rate"
max = 1
"#;

fn shop(
    blue: std::net::SocketAddr,
    green: std::net::SocketAddr,
    service_extra: &str,
    route_extra: &str,
) -> String {
    blue_green(blue, green)
        .route(route_extra)
        .top(SMOKE)
        .service(service_extra)
        .build()
}

/// Backends `blue` and `green`, a switchyard for `shop` (see `shop`) in front of them, its
/// admin client and its listener's URL.
/// The guard off, for the load tests of the split (see their comments).
const NO_GUARD: &str = "[service.guard]\nenabled = false";

async fn started(
    service_extra: &str,
    route_extra: &str,
) -> (
    TestBackend,
    TestBackend,
    Server,
    switchyard::client::AdminClient,
    String,
) {
    let (blue, green) = TestBackend::pair().await;
    let (sy, api, url) = started_on(&blue, &green, service_extra, route_extra).await;
    (blue, green, sy, api, url)
}

/// As `started`, in front of backends the test already has.
async fn started_on(
    blue: &TestBackend,
    green: &TestBackend,
    service_extra: &str,
    route_extra: &str,
) -> (Server, switchyard::client::AdminClient, String) {
    let sy = start(&shop(blue.addr, green.addr, service_extra, route_extra)).await;
    let api = admin(&sy);
    let url = web_url(&sy).await;
    (sy, api, url)
}

/// The error a rollout start with `body` is refused with.
async fn start_err(api: &switchyard::client::AdminClient, body: Value) -> String {
    post_err(api, "/api/v1/rollouts", body).await
}

bounded_test! {
    limit = LOAD_LIMIT;
    async fn a_canary_walks_its_steps_and_each_observed_split_lands_within_one_point() {
        // The split is under test, not the guard: a loaded 2-core host can stall the proxy
        // long enough for the guard's latency test to see the candidate slower and roll
        // back (seen in CI next to a release build; noted on issue 15).
        let (_blue, _green, _sy, api, url) = started(NO_GUARD, "").await;
        let steps = json!({ "kind": "canary", "steps": [
            { "weight": 5 }, { "pause": "until-promoted" },
            { "weight": 25 }, { "pause": "until-promoted" },
            { "weight": 50 }, { "pause": "until-promoted" },
        ]});
        let r = start_rollout(&api, steps).await;
        assert_eq!(r["steps"][0], "set weight 5%");
        for pct in [5u64, 25, 50] {
            wait_rollout(&api, "paused at step", paused_at(pct * 100)).await;
            // The observed split over this step's traffic only. Samples come every 250 ms
            // and a window starts at a sample: the window reaches back to `t`, so at most
            // 250 ms before it — a quiet time (the last step's requests ended longer ago) —
            // and one sample at least is taken between `t` and this step's first request.
            let t = std::time::Instant::now();
            tokio::time::sleep(Duration::from_millis(300)).await;
            // The split follows a low-discrepancy sequence, so that any run of requests is
            // split as the weights say: 5000 requests are plenty for one point.
            let seen = measure(&url, 5_000, 16, &[]).await;
            let g = share(&seen, "green");
            assert!((g - pct as f64).abs() <= 1.0, "at {pct}% green got {g:.2}%");
            tokio::time::sleep(Duration::from_millis(300)).await;
            let window = t.elapsed().as_millis() as u64;
            let status = api
                .get(&format!("/api/v1/services/shop/rollout?window={window}"))
                .await
                .unwrap();
            let observed = status["observed"]["green"]
                .as_f64()
                .expect("observed split");
            assert!(
                (observed * 100.0 - pct as f64).abs() <= 1.0,
                "observed {observed} at {pct}% (window {window} ms, measured in {:?}): {status}",
                t.elapsed()
            );
            promote(&api).await;
        }
        let r = wait_rollout(&api, "completed", |r| r["status"] == "completed").await;
        assert_eq!(r["split"], json!({ "green": 10000 }));
        let seen = measure(&url, 200, 4, &[]).await;
        assert_eq!(seen.get("green"), Some(&200));
        // The candidate is the new stable group: a rollout back to blue is allowed.
        let s = api.get("/api/v1/status").await.unwrap();
        assert_eq!(s["services"][0]["stable"], "green");

        let events = api
            .get("/api/v1/events?service=shop&limit=100")
            .await
            .unwrap();
        let kinds: Vec<&str> = events
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            [
                "started",
                "weight",
                "paused",
                "promoted",
                "weight",
                "paused",
                "promoted",
                "weight",
                "paused",
                "promoted",
                "completed"
            ]
        );
    }
}

bounded_test! {
    limit = LOAD_LIMIT;
    async fn a_half_percent_step_lands_within_a_fifth_of_a_point_over_40000_requests() {
        let (_blue, _green, _sy, api, url) = started("", "").await;
        start_held(&api, 0.5).await;
        let seen = measure(&url, 40_000, 16, &[]).await;
        let g = share(&seen, "green");
        assert!((g - 0.5).abs() <= 0.2, "green got {g:.3}% at 0.5%");
    }
}

/// The candidate's weight set by each `weight` (and the `completed`) event of rollout `id`,
/// oldest first, with the event's time (Unix ms).
async fn weights(
    api: &switchyard::client::AdminClient,
    id: u64,
    candidate: &str,
) -> Vec<(u64, i64)> {
    let mut out: Vec<(u64, i64)> = events(api, &format!("rollout={id}"))
        .await
        .iter()
        .filter(|e| e["kind"] == "weight" || e["kind"] == "completed")
        .map(|e| {
            (
                e["to"][candidate].as_u64().unwrap_or(0),
                e["at"].as_i64().unwrap(),
            )
        })
        .collect();
    out.reverse();
    out
}

bounded_test! {
    async fn timed_pauses_presets_and_all_at_once_complete_by_themselves() {
        let (_blue, _green, sy, api, _url) = started("", "").await;

        // A canary with timed pauses.
        let r = start_rollout(
            &api,
            json!({ "kind": "canary", "steps": [
                { "weight": 10 }, { "pause": "200ms" }, { "weight": 40 }, { "pause": "200ms" }
            ]}),
        )
        .await;
        let id = r["id"].as_u64().unwrap();
        // The steps are read back from the events once it completed, not caught by polling
        // (a 200 ms step can pass between two polls on a loaded box).
        wait_rollout(&api, "completed", |r| r["status"] == "completed").await;
        let steps = weights(&api, id, "green").await;
        assert_eq!(
            steps.iter().map(|s| s.0).collect::<Vec<_>>(),
            [1000, 4000, 10000]
        );
        for pair in steps.windows(2) {
            assert!(
                pair[1].1 - pair[0].1 >= 199,
                "a 200ms pause took {} ms",
                pair[1].1 - pair[0].1
            );
        }
        let reasons: Vec<String> = events(&api, &format!("rollout={id}"))
            .await
            .iter()
            .map(|e| reason(e).to_string())
            .collect();
        assert!(
            reasons.iter().any(|r| r == "step 2: pause of 200ms over"),
            "{reasons:?}"
        );

        // A linear preset: 25, 50, 75 then all, every 150 ms; then back with all-at-once.
        let r = api
            .post(
                "/api/v1/rollouts",
                json!({ "service": "shop", "candidate": "blue", "strategy": "linear-25pct-every-150ms" }),
            )
            .await
            .unwrap();
        let id = r["id"].as_u64().unwrap();
        wait_rollout(&api, "completed", |r| {
            r["status"] == "completed" && r["candidate"] == "blue"
        })
        .await;
        let steps = weights(&api, id, "blue").await;
        assert_eq!(
            steps.iter().map(|s| s.0).collect::<Vec<_>>(),
            [2500, 5000, 7500, 10000]
        );

        let r = api
            .post(
                "/api/v1/rollouts",
                json!({ "service": "shop", "candidate": "green", "strategy": "all-at-once" }),
            )
            .await
            .unwrap();
        assert_eq!(r["steps"], json!(["set weight 100%"]));
        wait_rollout(&api, "completed", |r| {
            r["status"] == "completed" && r["candidate"] == "green"
        })
        .await;
        assert_eq!(
            measure(
                &web_url(&sy).await,
                50,
                2,
                &[]
            )
            .await
            .get("green"),
            Some(&50)
        );

        // A CodeDeploy preset by name, promoted fully instead of waiting 5 minutes.
        let r = api
            .post(
                "/api/v1/rollouts",
                json!({ "service": "shop", "candidate": "blue", "strategy": "canary-10pct-5m" }),
            )
            .await
            .unwrap();
        assert_eq!(r["steps"], json!(["set weight 10%", "pause 5m"]));
        wait_rollout(&api, "at 10%", |r| r["weight"] == 1000).await;
        api.post(
            "/api/v1/services/shop/rollout/promote",
            json!({ "full": true }),
        )
        .await
        .unwrap();
        wait_rollout(&api, "completed", |r| {
            r["status"] == "completed" && r["candidate"] == "blue"
        })
        .await;
    }
}

bounded_test! {
    async fn an_analysis_step_holds_the_rollout_until_promoted() {
        let (_blue, _green, _sy, api, _url) = started("", "").await;
        start_rollout(
            &api,
            json!({ "kind": "canary", "steps": [{ "weight": 20 }, { "analysis": "smoke" }] }),
        )
        .await;
        let r = wait_rollout(&api, "held at analysis", |r| r["status"] == "paused").await;
        assert_eq!(r["weight"], 2000);
        // Far too little traffic for a verdict: held for a person, never promoted by itself.
        assert!(
            reason(&r).contains("analysis inconclusive: smoke"),
            "{r}"
        );
        promote(&api).await;
        wait_rollout(&api, "completed", |r| r["status"] == "completed").await;
    }
}

bounded_test! {
    limit = LOAD_LIMIT;
    async fn no_key_ever_goes_back_from_candidate_to_stable_while_the_weight_rises() {
        let (_blue, _green, _sy, api, url) = started(
            &format!("{NO_GUARD}\n[service.stickiness]\nkey = \"header:x-user\""),
            "",
        )
        .await;
        start_rollout(
            &api,
            json!({ "kind": "canary", "steps": [
                { "weight": 5 }, { "pause": "until-promoted" },
                { "weight": 25 }, { "pause": "until-promoted" },
                { "weight": 50 }, { "pause": "until-promoted" },
            ]}),
        )
        .await;
        const KEYS: usize = 10_000;
        let mut on_candidate = vec![false; KEYS];
        for pct in [5u64, 25, 50, 100] {
            if pct < 100 {
                wait_rollout(&api, "paused", paused_at(pct * 100)).await;
            } else {
                wait_rollout(&api, "completed", |r| r["status"] == "completed").await;
            }
            // Each key twice: it must see one version within the step.
            let mut tasks = Vec::new();
            for w in 0..20 {
                let url = url.clone();
                tasks.push(tokio::spawn(async move {
                    let c = client();
                    let mut out = Vec::new();
                    for k in (w..KEYS).step_by(20) {
                        let key = format!("user-{k}");
                        let a = get(&c, &url, &[("x-user", &key)])
                            .await
                            .unwrap()
                            .backend()
                            .to_string();
                        let b = get(&c, &url, &[("x-user", &key)])
                            .await
                            .unwrap()
                            .backend()
                            .to_string();
                        out.push((k, a, b));
                    }
                    out
                }));
            }
            let mut green_count = 0;
            for t in tasks {
                for (k, a, b) in t.await.unwrap() {
                    assert_eq!(a, b, "key {k} saw two versions at {pct}%");
                    let now_green = a == "green";
                    assert!(
                        !on_candidate[k] || now_green,
                        "key {k} went back from green to blue at {pct}%"
                    );
                    on_candidate[k] = now_green;
                    green_count += usize::from(now_green);
                }
            }
            let g = 100.0 * green_count as f64 / KEYS as f64;
            assert!(
                (g - pct as f64).abs() <= 1.5,
                "{g:.2}% of keys on green at {pct}%"
            );
            if pct < 100 {
                promote(&api).await;
            }
        }
    }
}

bounded_test! {
    async fn switchyard_pins_clients_without_a_key_with_its_own_cookie() {
        let (_blue, _green, _sy, api, url) = started(
            "[service.stickiness]\ncookie = \"sy_pin\"\ncookie_max_age = \"1h\"",
            "",
        )
        .await;
        start_held(&api, 50.0).await;
        let c = client();
        let mut versions = std::collections::BTreeSet::new();
        for _ in 0..20 {
            let first = get(&c, &url, &[]).await.unwrap();
            let set = first.headers["set-cookie"].to_str().unwrap().to_string();
            assert!(
                set.starts_with("sy_pin=") && set.contains("Max-Age=3600"),
                "{set}"
            );
            let cookie = set.split(';').next().unwrap().to_string();
            for _ in 0..5 {
                let r = get(&c, &url, &[("cookie", &cookie)]).await.unwrap();
                assert!(r.headers.get("set-cookie").is_none());
                assert_eq!(
                    r.backend(),
                    first.backend(),
                    "a pinned client changed version"
                );
            }
            versions.insert(first.backend().to_string());
        }
        assert_eq!(
            versions.len(),
            2,
            "20 new clients at 50% all got one version"
        );
    }
}

bounded_test! {
    async fn overrides_force_a_group_before_the_split() {
        let (blue, green) = TestBackend::pair().await;
        let routes = r#"
[[route.override]]
group_from_header = "x-switchyard-group"
[[route.override]]
group = "candidate"
cookie = { name = "beta", values = ["yes"] }
[[route.override]]
group = "green"
country = ["NZ"]
[[route.override]]
group = "candidate"
source = ["10.0.0.0/8"]
"#;
        let (_sy, api, url) = started_on(&blue, &green, "", routes).await;
        let c = client();
        let via = |h: &'static [(&'static str, &'static str)]| {
            let (c, url) = (c.clone(), url.clone());
            async move { get(&c, &url, h).await.unwrap().backend().to_string() }
        };
        assert_eq!(via(&[]).await, "blue");
        assert_eq!(via(&[("x-switchyard-group", "green")]).await, "green");
        assert_eq!(
            via(&[("x-switchyard-group", "nope")]).await,
            "blue",
            "an unknown group is ignored"
        );
        assert_eq!(via(&[("cloudfront-viewer-country", "nz")]).await, "green");
        assert_eq!(
            via(&[("cookie", "beta=yes")]).await,
            "blue",
            "no rollout: no candidate"
        );

        start_held(&api, 0.0).await;
        assert_eq!(via(&[("cookie", "a=1; beta=yes")]).await, "green");
        assert_eq!(via(&[("x-switchyard-group", "candidate")]).await, "green");
        assert_eq!(via(&[("x-switchyard-group", "stable")]).await, "blue");
        assert_eq!(
            via(&[]).await,
            "blue",
            "the candidate gets no public traffic at 0%"
        );
        // The source override does not match loopback clients.
        assert_eq!(measure(&url, 100, 2, &[]).await.get("blue"), Some(&100));
    }
}

bounded_test! {
    limit = LOAD_LIMIT;
    async fn abort_under_load_fails_no_request_and_returns_all_traffic_to_stable() {
        let (_blue, green, _sy, api, url) = started("", "").await;
        let load = Load::start(url.clone(), 8, &[]);
        start_held(&api, 50.0).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let green_before = green.hits();
        let r = api
            .post(
                "/api/v1/services/shop/rollout/abort",
                json!({ "reason": "errors in the logs" }),
            )
            .await
            .unwrap();
        assert_eq!(r["status"], "aborted");
        assert_eq!(r["reason"], "aborted by admin: errors in the logs");
        let after_abort = green.hits();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(load.stop().await, 0);
        assert!(green_before > 0);
        assert!(
            green.hits() - after_abort <= 8,
            "at most the in-flight requests reached green after the abort"
        );
        assert_eq!(measure(&url, 100, 2, &[]).await.get("blue"), Some(&100));

        // Retry starts from the first step again.
        let r = verb(&api, "retry", json!({})).await;
        assert_eq!(r["attempt"], 1);
        wait_rollout(&api, "at 50% again", paused_at(5000)).await;
    }
}

bounded_test! {
    limit = LOAD_LIMIT;
    async fn blue_green_previews_switches_retires_and_rolls_back_under_load_without_a_failed_request() {
        let (blue, green) = TestBackend::pair().await;
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("torn-down");
        let strategy = format!(
            "[service.strategy]\nkind = \"blue-green\"\nscale_down_delay = \"1h\"\nteardown = \"echo $SWITCHYARD_GROUP > {}\"",
            marker.display()
        );
        let (_sy, api, url) = started_on(&blue, &green, &strategy, "[[route.override]]\ngroup = \"candidate\"\nheader = { name = \"x-preview\", values = [\"1\"] }").await;
        let load = Load::start(url.clone(), 8, &[]);

        // Preview: the candidate only through the preview route.
        let r = api
            .post(
                "/api/v1/rollouts",
                json!({ "service": "shop", "candidate": "green" }),
            )
            .await
            .unwrap();
        assert_eq!(r["strategy"]["name"], "blue-green");
        wait_rollout(&api, "waiting for promotion", paused_at(0)).await;
        assert_eq!(
            get(&client(), &url, &[("x-preview", "1")])
                .await
                .unwrap()
                .backend(),
            "green"
        );
        assert_eq!(backend_of(&url).await, "blue");

        // Promotion: the atomic switch; then the window in which abort is the rollback (an hour,
        // so that it cannot run out while the test measures: promote ends it below).
        promote(&api).await;
        let r = wait_rollout(&api, "switched", |r| r["weight"] == 10000).await;
        assert_eq!(r["status"], "progressing", "in the scale-down window: {r}");
        assert_eq!(measure(&url, 50, 2, &[]).await.get("green"), Some(&50));
        verb(&api, "abort", json!({})).await;
        assert_eq!(measure(&url, 50, 2, &[]).await.get("blue"), Some(&50));

        // Again, this time to the end: the old group is retired and torn down.
        verb(&api, "retry", json!({})).await;
        wait_rollout(&api, "waiting for promotion", paused_at(0)).await;
        promote(&api).await;
        wait_rollout(&api, "switched again", |r| r["weight"] == 10000).await;
        // A promotion in the scale-down window retires the old group now.
        promote(&api).await;
        let r = wait_rollout(&api, "completed", |r| r["status"] == "completed").await;
        assert_eq!(r["split"], json!({ "green": 10000 }));
        assert_eq!(
            std::fs::read_to_string(&marker).unwrap().trim(),
            "blue",
            "teardown ran for the old group"
        );
        let events = api
            .get("/api/v1/events?service=shop&kind=retired")
            .await
            .unwrap();
        assert!(
            events[0]["reason"].as_str().unwrap().contains("teardown"),
            "{events}"
        );

        // Undo: one command back to blue.
        let r = verb(&api, "undo", json!({})).await;
        assert_eq!(r["status"], "rolled_back");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            load.stop().await,
            0,
            "no request failed across preview, switch, rollback, retire, undo"
        );
        assert_eq!(measure(&url, 50, 2, &[]).await.get("blue"), Some(&50));
    }
}

bounded_test! {
    async fn blue_green_can_promote_itself_after_a_delay() {
        let (_blue, _green, _sy, api, _url) = started("[service.strategy]\nkind = \"blue-green\"\nauto_promote_after = \"1s\"\nscale_down_delay = \"0s\"", "").await;
        let r = start_green(&api).await;
        let id = r["id"].as_u64().unwrap();
        // Not before the delay: while polled, and by the times the events record. After it: by
        // itself, with no command.
        let early = rollout(&api).await;
        assert_eq!(early["weight"], 0, "switched at once: {early}");
        wait_rollout(&api, "completed", |r| r["status"] == "completed").await;
        let all = events(&api, &format!("rollout={id}")).await;
        let at = |kind: &str, green: u64| {
            all.iter()
                .find(|e| e["kind"] == kind && e["to"]["green"].as_u64().unwrap_or(0) == green)
                .unwrap_or_else(|| panic!("no {kind} event to {green}: {all:?}"))["at"]
                .as_i64()
                .unwrap()
        };
        let waited = at("weight", 10000) - at("started", 0);
        // The events' times are whole milliseconds: 1 ms of rounding.
        assert!(
            waited >= 999,
            "promoted {waited} ms after the start, before the 1s delay"
        );
        assert!(
            all.iter()
                .all(|e| e["actor"] != "admin" || e["kind"] == "started"),
            "nobody promoted it: {all:?}"
        );
    }
}

bounded_test! {
    current_thread;
    async fn rollout_api_errors_say_what_is_wrong() {
        let (_blue, _green, _sy, api, _url) = started("", "").await;
        let err = |r: Result<Value, switchyard::client::ClientError>| r.unwrap_err().to_string();

        let e = err(api.get("/api/v1/services/shop/rollout").await);
        assert!(e.contains("404") && e.contains("has no rollout"), "{e}");
        let e = start_err(&api, json!({ "service": "nope", "candidate": "green" })).await;
        assert!(
            e.contains("404") && e.contains("no service named \"nope\""),
            "{e}"
        );
        let e = start_err(&api, json!({ "service": "shop", "candidate": "teal" })).await;
        assert!(
            e.contains("404") && e.contains("no group named \"teal\""),
            "{e}"
        );
        let e = start_err(&api, json!({ "service": "shop", "candidate": "blue" })).await;
        assert!(
            e.contains("422") && e.contains("already the stable group"),
            "{e}"
        );
        let e = start_err(
            &api,
            json!({ "service": "shop", "candidate": "green", "strategy": "canary-ish" }),
        )
        .await;
        assert!(
            e.contains("422") && e.contains("unknown strategy \"canary-ish\""),
            "{e}"
        );
        let bad_steps = json!({ "service": "shop", "candidate": "green",
            "strategy": { "kind": "canary", "steps": [{ "weight": 5 }, { "pause": "soon" }, { "analysis": "nope" }] } });
        let e = err(api.post("/api/v1/rollouts", bad_steps).await);
        assert!(
            e.contains("strategy.steps[1].pause: \"soon\" is not a duration"),
            "{e}"
        );
        assert!(
            e.contains("strategy.steps[2].analysis: no analysis named \"nope\""),
            "{e}"
        );
        let e = start_err(&api, json!({ "service": "shop" })).await;
        assert!(e.contains("422") && e.contains("candidate"), "{e}");

        start_held(&api, 10.0).await;
        let e = start_err(&api, json!({ "service": "shop", "candidate": "green" })).await;
        assert!(
            e.contains("409") && e.contains("rollout in progress"),
            "{e}"
        );
        let e = post_err(
            &api,
            "/api/v1/services/shop/switch",
            json!({ "group": "green" }),
        )
        .await;
        assert!(
            e.contains("409") && e.contains("promote or abort it instead"),
            "{e}"
        );
        let e = verb_err(&api, "undo", json!({})).await;
        assert!(
            e.contains("409") && e.contains("only a completed rollout can be undone"),
            "{e}"
        );
        let e = verb_err(&api, "resume", json!({})).await;
        assert!(
            e.contains("409") && e.contains("waits for promotion, not for resume: use promote"),
            "{e}"
        );
        let e = verb_err(&api, "launch", json!({})).await;
        assert!(
            e.contains("404") && e.contains("no rollout verb \"launch\""),
            "{e}"
        );
        let e = post_err(
            &api,
            "/api/v1/services/shop/rollout/promote",
            json!({ "ful": true }),
        )
        .await;
        assert!(e.contains("422") && e.contains("unknown field"), "{e}");

        api.post(
            "/api/v1/services/shop/rollout/promote",
            json!({ "full": true }),
        )
        .await
        .unwrap();
        wait_rollout(&api, "completed", |r| r["status"] == "completed").await;
        let e = verb_err(&api, "promote", json!({})).await;
        assert!(
            e.contains("409") && e.contains("is completed: only an active rollout can be promoted"),
            "{e}"
        );
        let e = verb_err(&api, "retry", json!({})).await;
        assert!(e.contains("409"), "{e}");

        let spec: Value = serde_json::from_str(switchyard::api::OPENAPI).unwrap();
        assert_eq!(spec["openapi"].as_str().map(|v| &v[..2]), Some("3."));
    }
}

/// Why a switchyard with its state in `db` does not start.
async fn start_error(db: &std::path::Path, dir: &std::path::Path) -> String {
    let toml = format!(
        "[store]\npath = \"{}\"\n{}",
        db.display(),
        config(&[("blue", &["127.0.0.1:9".parse().unwrap()])], "")
    );
    let cfg = switchyard::config::parse(&toml, "t.toml", dir).unwrap();
    match Server::start(cfg, None).await {
        Ok(_) => panic!("started on {}", db.display()),
        Err(e) => e.to_string(),
    }
}

bounded_test! {
    current_thread;
    async fn a_corrupt_database_stops_the_start_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        std::fs::write(&db, vec![b'x'; 4096]).unwrap();
        let err = start_error(&db, dir.path()).await;
        assert!(
            err.contains("state.db") && err.contains("not a database"),
            "{err}"
        );

        let unopenable = dir.path().join("missing-dir/deeper/state.db");
        let err = start_error(&unopenable, dir.path()).await;
        assert!(
            err.contains("state database") && err.contains("deeper/state.db"),
            "{err}"
        );
    }
}

bounded_test! {
    limit = LOAD_LIMIT;
    async fn cookie_and_client_ip_keys_stick_and_a_dead_candidate_falls_back_to_stable() {
        let (blue, green, sy, api, url) = started("", "[[route.override]]\ngroup = \"candidate\"\nsource = [\"127.0.0.0/8\"]").await;
        start_held(&api, 50.0).await;
        // Loopback clients are "internal users": the source override sends them to the candidate.
        assert_eq!(measure(&url, 50, 2, &[]).await.get("green"), Some(&50));
        drop(sy);

        let (sy, api, url) = started_on(&blue, &green, "[service.stickiness]\nkey = \"cookie:session\"", "").await;
        start_held(&api, 50.0).await;
        let c = client();
        let mut per_session = BTreeMap::new();
        for i in 0..200 {
            let cookie = format!("session=s{i}");
            let a = get(&c, &url, &[("cookie", &cookie)])
                .await
                .unwrap()
                .backend()
                .to_string();
            let b = get(&c, &url, &[("cookie", &cookie)])
                .await
                .unwrap()
                .backend()
                .to_string();
            assert_eq!(a, b, "session {i} changed version");
            *per_session.entry(a).or_insert(0) += 1;
        }
        assert!(per_session.len() == 2, "{per_session:?}");

        // The candidate dies: its users go to stable instead of failing.
        green.down().await;
        for i in 0..100 {
            let cookie = format!("session=s{i}");
            let r = get(&c, &url, &[("cookie", &cookie)]).await.unwrap();
            assert_eq!(
                (r.status.as_u16(), r.backend()),
                (200, "blue"),
                "session {i}"
            );
        }
        drop(sy);

        // A client IP is a key too: one client, one version (with a live candidate again).
        let green = TestBackend::start("green").await;
        let (_sy, api, url) = started_on(&blue, &green, "[service.stickiness]\nkey = \"client-ip\"", "").await;
        api.post(
            "/api/v1/rollouts",
            json!({ "service": "shop", "candidate": "green", "force": true,
                    "strategy": { "kind": "canary", "steps": [{ "weight": 50 }, { "pause": "until-promoted" }] } }),
        )
        .await
        .unwrap();
        wait_rollout(&api, "at 50%", paused_at(5000)).await;
        let seen = measure(&url, 100, 4, &[]).await;
        assert_eq!(seen.len(), 1, "one client IP, one version: {seen:?}");
        let (v, _) = seen.into_iter().next().unwrap();
        // 127.0.0.1's bucket decides; with the candidate at 100% every key is on it.
        api.post(
            "/api/v1/services/shop/rollout/promote",
            json!({ "full": true }),
        )
        .await
        .unwrap();
        wait_rollout(&api, "completed", |r| r["status"] == "completed").await;
        assert_eq!(
            measure(&url, 20, 2, &[]).await.get("green"),
            Some(&20),
            "was on {v}"
        );
    }
}

/// Starts a rollout of `shop` to `candidate` and promotes it fully once it waits at 10 %: the
/// completed rollout and when the test saw it complete.
async fn complete(
    api: &switchyard::client::AdminClient,
    candidate: &str,
) -> (Value, std::time::Instant) {
    api.post(
        "/api/v1/rollouts",
        json!({ "service": "shop", "candidate": candidate }),
    )
    .await
    .unwrap();
    wait_status(api, 10, paused_at(1000)).await;
    verb(api, "promote", json!({ "full": true })).await;
    let r = wait_rollout(api, "completed", |r| r["status"] == "completed").await;
    (r, std::time::Instant::now())
}

bounded_test! {
    /// Within `rollback_window` after a rollout completed, `undo` moves all traffic straight
    /// back; past it, `undo` starts a rollout back to the old group through the service's
    /// steps (here held at its first step), and `immediate` goes straight back anyway.
    async fn undo_goes_straight_back_within_the_rollback_window_and_through_the_steps_after_it() {
        let window = Duration::from_secs(2);
        let (_blue, _green, _sy, api, _url) = started(
            "rollback_window = \"2s\"\n[service.strategy]\nkind = \"canary\"\nsteps = [{ weight = 10 }, { pause = \"until-promoted\" }, { weight = 100 }]",
            "",
        )
        .await;
        let (first, done) = complete(&api, "green").await;
        let r = verb(&api, "undo", json!({})).await;
        assert!(done.elapsed() < window, "the undo came too late to test the window");
        assert_eq!(r["status"], "rolled_back", "{r}");
        assert_eq!(r["id"], first["id"], "{r}");
        assert_eq!(r["split"]["blue"], 10000, "{r}");

        let (second, done) = complete(&api, "green").await;
        tokio::time::sleep(window.saturating_sub(done.elapsed()) + Duration::from_millis(200)).await;
        let r = verb(&api, "undo", json!({})).await;
        assert_ne!(r["id"], second["id"], "past the window an undo is a new rollout: {r}");
        assert_eq!(r["candidate"], "blue", "{r}");
        assert_eq!(r["stable"], "green", "{r}");
        let r = wait_status(&api, 10, paused_at(1000)).await;
        assert_eq!(r["split"]["blue"], 1000, "through the steps: {r}");
        verb(&api, "promote", json!({ "full": true })).await;
        let back = wait_rollout(&api, "completed", |r| r["status"] == "completed").await;
        tokio::time::sleep(window + Duration::from_millis(200)).await;
        let r = verb(&api, "undo", json!({ "immediate": true })).await;
        assert_eq!(r["status"], "rolled_back", "{r}");
        assert_eq!(r["id"], back["id"], "{r}");
        assert_eq!(r["split"]["green"], 10000, "{r}");
    }
}
