//! A canary with a baseline (issue 15, point 6): a third group running a fresh copy of the
//! stable version gets the candidate's weight, taken from stable, and the judge compares the
//! candidate with it instead of the long-running stable group. Over real sockets: the split
//! three ways, back to stable alone on abort; the guard rolling back a candidate that is as bad
//! as an old, degraded stable group but worse than the fresh baseline; the dry run judging
//! against the baseline; and the refusals (config and API) that say what and where.

mod common;

use common::release::*;
use common::*;
use serde_json::json;

/// `shop` with `blue` stable (active), `base` (the baseline) and `green` (the candidate).
struct Rig {
    blue: TestBackend,
    base: TestBackend,
    green: TestBackend,
    sy: Server,
}

impl Rig {
    async fn start() -> Rig {
        let (blue, green) = TestBackend::pair().await;
        let base = TestBackend::start("base").await;
        let toml = blue_green(blue.addr, green.addr)
            .group("base", &[base.addr])
            .build();
        let sy = start(&toml).await;
        Rig {
            blue,
            base,
            green,
            sy,
        }
    }
}

/// A canary held at `percent` % with baseline `base`.
fn with_baseline(percent: f64) -> serde_json::Value {
    let mut s = held_at(percent);
    s["baseline"] = json!("base");
    s
}

bounded_test! {
    /// At 20 % the candidate and the baseline get 20 % each and stable the 60 % left; the
    /// rollout view names the baseline; an abort sends everything back to stable.
    async fn a_baseline_gets_the_candidates_weight_from_stable_and_nothing_after_an_abort() {
        let rig = Rig::start().await;
        let api = admin(&rig.sy);
        start_rollout(&api, with_baseline(20.0)).await;
        let r = wait_status(&api, 10, paused_at(2000)).await;
        assert_eq!(r["strategy"]["baseline"], "base", "{r}");
        let url = web_url(&rig.sy).await;
        let seen = measure(&url, 2000, 8, &[]).await;
        for (group, want) in [("green", 20.0), ("base", 20.0), ("blue", 60.0)] {
            let got = share(&seen, group);
            assert!((got - want).abs() < 5.0, "{group}: {got:.1} % of {seen:?}, want ~{want} %");
        }
        verb(&api, "abort", json!({})).await;
        wait_status(&api, 10, |r| r["status"] == "aborted").await;
        let seen = measure(&url, 300, 4, &[]).await;
        assert_eq!(share(&seen, "blue"), 100.0, "{seen:?}");
        assert!(rig.base.hits() > 0 && rig.green.hits() > 0);
    }
}

bounded_test! {
    /// Stable has run long and answers 10 % 5xx; the fresh baseline answers none; the
    /// candidate answers 10 %. Against stable it looks no worse, so a judge that compared
    /// with stable would keep it; against the baseline it is 10 points worse, past the
    /// guard's tolerated 5, and the guard rolls it back naming the baseline.
    async fn the_guard_judges_the_candidate_against_the_baseline_not_a_degraded_stable() {
        let rig = Rig::start().await;
        rig.blue.set_errors(100);
        rig.green.set_errors(100);
        let api = admin(&rig.sy);
        start_rollout(&api, with_baseline(25.0)).await;
        let load = Load::start(web_url(&rig.sy).await, 8, &[]);
        let r = wait_status(&api, 30, |r| r["status"] == "aborted").await;
        load.stop().await;
        let why = reason(&r);
        assert!(
            why.starts_with("aborted by guard: candidate green error rate")
                && why.contains("exceeds baseline base's"),
            "{why}"
        );
    }
}

bounded_test! {
    /// `analysis run` during a rollout with a baseline measures the candidate against it:
    /// the answer names the baseline, and a check bounded by "stable" + 1 point fails on a
    /// candidate that is 10 points worse than the baseline though equal to stable.
    async fn the_dry_run_compares_with_the_baseline() {
        let (blue, green) = TestBackend::pair().await;
        let base = TestBackend::start("base").await;
        blue.set_errors(100);
        green.set_errors(100);
        let toml = blue_green(blue.addr, green.addr)
            .group("base", &[base.addr])
            .top(
                "[[analysis]]\nname = \"errors\"\n[[analysis.check]]\nname = \"error-rate\"\n\
                 metric = \"error-rate\"\nmax_over_stable = 1\nwindow = \"30s\"\nmin_requests = 50\n",
            )
            .build();
        let sy = start(&toml).await;
        let api = admin(&sy);
        let mut strategy = with_baseline(30.0);
        strategy["steps"] = json!([{ "weight": 30 }, { "pause": "until-promoted" }]);
        // The guard would decide first: keep it out of this test of the analysis.
        start_rollout(&api, strategy).await;
        wait_status(&api, 10, paused_at(3000)).await;
        let url = web_url(&sy).await;
        let load = Load::start(url, 4, &[]);
        let r = eventually_dry_run(&api).await;
        load.stop().await;
        assert_eq!(r["baseline"], "base", "{r}");
        assert_eq!(r["stable"], "blue", "{r}");
        let m = &r["results"][0]["measurement"];
        assert_eq!(m["outcome"], "fail", "{r}");
    }
}

/// The dry run once the candidate and the baseline have 50 answers each in its window.
async fn eventually_dry_run(api: &switchyard::client::AdminClient) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let r = dry_run(api, "errors").await;
        if r["results"][0]["measurement"]["outcome"] != "inconclusive" {
            return r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still inconclusive: {r}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

bounded_test! {
    /// A baseline that is stable or the candidate, or no group at all, is refused with the
    /// reason; nothing starts.
    async fn a_baseline_that_is_not_a_third_group_is_refused() {
        let rig = Rig::start().await;
        let api = admin(&rig.sy);
        for (baseline, why) in [
            ("blue", "not the stable group"),
            ("green", "not the candidate"),
            ("nope", "nope"),
        ] {
            let mut s = held_at(10.0);
            s["baseline"] = json!(baseline);
            let e = post_err(
                &api,
                "/api/v1/rollouts",
                json!({ "service": "shop", "candidate": "green", "strategy": s }),
            )
            .await;
            assert!(e.contains(why), "{baseline}: {e}");
        }
        let r = api.get("/api/v1/services/shop/rollout").await;
        assert!(r.is_err() || r.unwrap()["status"] != "progressing");
    }
}

#[test]
fn a_baseline_in_the_file_must_name_a_group_and_suit_the_strategy() {
    let (a, b) = (
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
    );
    let unknown = blue_green(a, b)
        .service("[service.strategy]\nkind = \"canary\"\nsteps = [{ weight = 10 }]\nbaseline = \"fresh\"")
        .build();
    let e = config_error(&unknown);
    assert!(
        e.contains("strategy.baseline") && e.contains("no group named \"fresh\""),
        "{e}"
    );
    let bg = blue_green(a, b)
        .service("[service.strategy]\nkind = \"blue-green\"\nbaseline = \"green\"")
        .build();
    let e = config_error(&bg);
    assert!(
        e.contains("`baseline` does not apply to strategy \"blue-green\""),
        "{e}"
    );
}
