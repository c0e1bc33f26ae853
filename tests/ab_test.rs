//! A/B tests (issue 16, point 3): `kind = "ab"` sends only the requests that match its
//! header or cookie rules to the candidate, for `iterations` rounds of `interval` and an
//! analysis, then promotes — or rolls back at the first failed round. Over real sockets with
//! real backends, and the refusals of strategies that cannot work.

mod common;

use common::release::*;
use common::*;
use serde_json::json;

const ANALYSIS: &str = r#"
[[analysis]]
name = "errors"
interval = "100ms"
count = 2
min_requests = 10
[[analysis.check]]
name = "error-rate"
metric = "error-rate"
max = 5
"#;

/// `shop` with blue (active) and green, and the `errors` analysis; `service` appended to
/// the service's table.
async fn rig(service: &str) -> (TestBackend, TestBackend, Server) {
    let (blue, green) = TestBackend::pair().await;
    let cfg = blue_green(blue.addr, green.addr)
        .top(ANALYSIS)
        .service(service)
        .build();
    (blue, green, start(&cfg).await)
}

/// Three rounds of 300 ms; requests with `x-beta: yes` or cookie `cohort=beta*` go to green.
fn ab() -> serde_json::Value {
    json!({
        "kind": "ab",
        "match": [
            { "header": { "name": "X-Beta", "values": ["yes"] } },
            { "cookie": { "name": "cohort", "values": ["beta*"] } }
        ],
        "iterations": 3,
        "interval": "300ms",
        "analysis": "errors"
    })
}

bounded_test! {
    /// While it runs, matching requests (header or cookie) reach green and the rest blue;
    /// three passing rounds promote green, and every round's analysis is in the events.
    async fn an_ab_test_routes_matching_requests_to_the_candidate_and_promotes_after_its_rounds() {
        // The guard's latency line is stable's p99 × the ratio and at least 5 ms over it,
        // and stable answers nothing while the matching load runs: its p99 comes from the
        // quiet measurements before (~0.3 ms here). Before the 5 ms floor a busy host made a
        // few % of green's answers cross 1.5× of it and the guard rolled back (CI, twice); a
        // starved 2-core host can still stall answers past 5 ms. What this test checks is the
        // routing and the rounds, so the line is set far off; the guard's own tests are in
        // `guard.rs`.
        let (_blue, _green, sy) = rig("[service.guard]\nmax_latency_ratio = 50").await;
        let api = admin(&sy);
        start_rollout(&api, ab()).await;
        let r = wait_status(&api, 10, |r| r["status"] == "progressing" && r["step"].as_u64() >= Some(1)).await;
        assert_eq!(r["weight"], 0, "{r}");
        let url = web_url(&sy).await;
        let plain = measure(&url, 200, 4, &[]).await;
        assert_eq!(share(&plain, "blue"), 100.0, "{plain:?}");
        let beta = measure(&url, 200, 4, &[("x-beta", "yes")]).await;
        assert_eq!(share(&beta, "green"), 100.0, "{beta:?}");
        let cookie = measure(&url, 100, 2, &[("cookie", "a=1; cohort=beta-7")]).await;
        assert_eq!(share(&cookie, "green"), 100.0, "{cookie:?}");
        let other = measure(&url, 100, 2, &[("x-beta", "no")]).await;
        assert_eq!(share(&other, "blue"), 100.0, "{other:?}");
        // Matching traffic keeps flowing so that every round has evidence.
        let load = Load::start(url.clone(), 4, &[("x-beta", "yes")]);
        let done = wait_status(&api, 30, |r| r["status"] == "completed").await;
        load.stop().await;
        assert_eq!(done["weight"], 10_000, "{done}");
        let passes = events(&api, "service=shop&kind=analysis")
            .await
            .into_iter()
            .filter(|e| e["reason"].as_str().is_some_and(|r| r.contains("analysis passed: errors:")))
            .count();
        assert_eq!(passes, 3, "one analysis per round");
        let after = measure(&url, 100, 2, &[]).await;
        assert_eq!(share(&after, "green"), 100.0, "{after:?}");
    }
}

bounded_test! {
    /// A candidate that fails its matching requests fails a round's analysis: the test
    /// rolls back and matching requests go to blue again. (The guard, which would take it
    /// back sooner, is off: this is the rounds' analysis at work.)
    async fn an_ab_test_rolls_back_at_the_first_failed_round() {
        let (_blue, green, sy) = rig("[service.guard]\nenabled = false").await;
        green.set_errors(500);
        let api = admin(&sy);
        start_rollout(&api, ab()).await;
        let url = web_url(&sy).await;
        let load = Load::start(url.clone(), 4, &[("x-beta", "yes")]);
        let r = wait_status(&api, 30, |r| r["status"] == "aborted").await;
        load.stop().await;
        assert!(
            reason(&r).contains("step 3: analysis failed: errors: check error-rate failed"),
            "{r}"
        );
        assert_eq!(r["step"], 2, "the first round's analysis: {r}");
        let beta = measure(&url, 100, 2, &[("x-beta", "yes")]).await;
        assert_eq!(share(&beta, "blue"), 100.0, "{beta:?}");
    }
}

#[test]
fn ab_strategies_that_cannot_work_are_refused_at_their_key() {
    let (a, b) = (
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
    );
    for (strategy, want) in [
        ("kind = \"ab\"\nanalysis = \"errors\"", "needs `match`"),
        (
            "kind = \"ab\"\nmatch = [{ header = { name = \"x-beta\", values = [\"yes\"] } }]",
            "needs `analysis`",
        ),
        (
            "kind = \"ab\"\nanalysis = \"nope\"\nmatch = [{ header = { name = \"x-beta\", values = [\"yes\"] } }]",
            "strategy.analysis: no analysis named \"nope\"",
        ),
        (
            "kind = \"ab\"\nanalysis = \"errors\"\niterations = 0\nmatch = [{ cookie = { name = \"c\", values = [\"1\"] } }]",
            "strategy.iterations: 0 is out of range",
        ),
        (
            "kind = \"ab\"\nanalysis = \"errors\"\nmatch = [{ cookie = { name = \"c\", values = [\"1\"] }, header = { name = \"h\", values = [\"1\"] } }]",
            "strategy.match[0]: a rule needs exactly one of `header` or `cookie`",
        ),
        (
            "kind = \"ab\"\nanalysis = \"errors\"\nmatch = [{ header = { name = \"bad header\", values = [\"1\"] } }]",
            "strategy.match[0].header.name: \"bad header\" is not a header name",
        ),
        (
            "kind = \"canary\"\nsteps = [{ weight = 10 }]\niterations = 3",
            "`iterations` does not apply to strategy \"canary\"",
        ),
    ] {
        let toml = blue_green(a, b)
            .top(ANALYSIS)
            .service(&format!("[service.strategy]\n{strategy}"))
            .build();
        let e = config_error(&toml);
        assert!(e.contains(want), "{strategy}\n→ {e}");
    }
    // The example's shape is accepted.
    let ok = blue_green(a, b)
        .top(ANALYSIS)
        .service("[service.strategy]\nkind = \"ab\"\nanalysis = \"errors\"\niterations = 5\ninterval = \"1m\"\nmatch = [{ header = { name = \"x-beta\", values = [\"yes\"] } }]")
        .build();
    switchyard::config::parse(&ok, "t.toml", std::path::Path::new(".")).unwrap();
}
