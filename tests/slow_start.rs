//! Slow start through the real data plane: a target added to a group by `apply` starts with
//! a small share that grows to its full one over `slow_start`.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn config(targets: &[SocketAddr]) -> String {
    Cfg::new()
        .active("blue")
        .service("slow_start = \"2s\"\nbalance = \"round-robin\"")
        .group("blue", targets)
        .build()
}

bounded_test! {
    /// Round-robin would give the new target half at once; under a 2 s slow start it gets
    /// little in its first half second and about half after the 2 s.
    async fn a_target_added_under_slow_start_gets_a_share_that_grows_to_its_full_one() {
        let (old, new) = (TestBackend::start("old").await, TestBackend::start("new").await);
        let sy = start(&config(&[old.addr])).await;
        let url = web_url(&sy).await;
        admin(&sy)
            .post(
                "/api/v1/config/apply",
                json!({ "path": "slow.toml", "content": config(&[old.addr, new.addr]) }),
            )
            .await
            .unwrap();
        let added = Instant::now();
        let status = admin(&sy).get("/api/v1/status").await.unwrap();
        let targets = &status["services"][0]["groups"][0]["targets"];
        let share_now = |addr: SocketAddr| {
            targets.as_array().unwrap().iter().find(|t| t["addr"] == addr.to_string()).unwrap()
                ["slow_start"]
                .as_f64()
        };
        assert!(share_now(new.addr).is_some_and(|w| w < 0.5), "{targets}");
        assert_eq!(share_now(old.addr), None, "a target from the start is not warming: {targets}");
        let client = client();
        let mut seen: Vec<(Duration, bool)> = Vec::new();
        while added.elapsed() < Duration::from_millis(2600) {
            let reply = get(&client, &url, &[]).await.unwrap();
            seen.push((added.elapsed(), reply.backend() == "new"));
        }
        let share = |from: u64, to: u64| {
            let window: Vec<bool> = seen
                .iter()
                .filter(|(at, _)| (from..to).contains(&(at.as_millis() as u64)))
                .map(|(_, new)| *new)
                .collect();
            let n = window.len().max(1);
            (window.iter().filter(|x| **x).count() as f64 / n as f64, window.len())
        };
        let (early, n_early) = share(0, 500);
        let (late, n_late) = share(2100, 2600);
        println!("new target's share: {early:.3} of {n_early} in the first 0.5 s, {late:.3} of {n_late} after 2.1 s");
        assert!(n_early >= 50 && n_late >= 50, "too few requests: {n_early}, {n_late}");
        assert!(early < 0.2, "early share {early:.3}");
        assert!(late > 0.35, "late share {late:.3}");
    }
}
