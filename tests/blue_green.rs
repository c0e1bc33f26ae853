//! Blue-green switching and weighted splits, over real sockets with real backends.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;

/// Runs `workers` clients against `url` until `stop`, each request tagged with a global
/// sequence number in `x-seq`. Returns (requests, failures).
fn load(
    url: String,
    workers: usize,
    seq: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(u64, u64)>> {
    (0..workers)
        .map(|_| {
            let (url, seq, stop) = (url.clone(), seq.clone(), stop.clone());
            tokio::spawn(async move {
                let c = client();
                let (mut n, mut failed) = (0, 0);
                // Bounded: stop flag, or 50 000 requests per worker at most.
                while !stop.load(Ordering::SeqCst) && n < 50_000 {
                    let s = seq.fetch_add(1, Ordering::SeqCst).to_string();
                    match get(&c, &url, &[("x-seq", &s)]).await {
                        Ok(r) if r.status == 200 => {}
                        Ok(r) => {
                            failed += 1;
                            eprintln!("failed: {} {}", r.status, r.body);
                        }
                        Err(e) => {
                            failed += 1;
                            eprintln!("failed: {e}");
                        }
                    }
                    n += 1;
                }
                (n, failed)
            })
        })
        .collect()
}

bounded_test! {
    async fn switch_and_switch_back_under_load_fail_nothing() {
        let (blue, green, sy) = serve_pair(|b, g| blue_green(b, g).build()).await;
        let url = web_url(&sy).await;
        let api = admin(&sy);

        // Seq numbers start at 1 so that "max seen" 0 means "none".
        let seq = Arc::new(AtomicU64::new(1));
        let stop = Arc::new(AtomicBool::new(false));
        let workers = load(url, 8, seq.clone(), stop.clone());

        tokio::time::sleep(Duration::from_millis(300)).await;
        api.post("/api/v1/services/shop/switch", json!({ "group": "green" }))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        api.post("/api/v1/services/shop/switch", json!({ "back": true }))
            .await
            .unwrap();
        let after_back = seq.load(Ordering::SeqCst);
        let green_hits_at_back = green.hits();
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::SeqCst);

        let (mut total, mut failed) = (0, 0);
        for w in workers {
            let (n, f) = w.await.unwrap();
            total += n;
            failed += f;
        }
        assert!(total > 500, "load too light to mean anything: {total}");
        assert_eq!(failed, 0, "requests failed during the switches");
        // Blue saw requests before the switch and after the switch back, but none that was
        // started between the switch returning and the switch back.
        let blue_max = blue.max_seq.load(Ordering::SeqCst);
        assert!(
            blue_max >= after_back,
            "blue got traffic again after switching back"
        );
        assert!(green.hits() > 0, "green never got traffic");
        assert!(
            green.max_seq.load(Ordering::SeqCst) < after_back,
            "green got a request started after the switch back"
        );
        assert!(green_hits_at_back > 0);
    }
}

bounded_test! {
    async fn no_request_started_after_a_switch_reaches_the_old_group() {
        let (blue, green, sy) = serve_pair(|b, g| blue_green(b, g).build()).await;
        let url = web_url(&sy).await;
        let seq = Arc::new(AtomicU64::new(1));
        let stop = Arc::new(AtomicBool::new(false));
        let workers = load(url, 8, seq.clone(), stop.clone());
        tokio::time::sleep(Duration::from_millis(300)).await;
        admin(&sy)
            .post("/api/v1/services/shop/switch", json!({ "group": "green" }))
            .await
            .unwrap();
        let marker = seq.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(400)).await;
        stop.store(true, Ordering::SeqCst);
        let mut failed = 0;
        for w in workers {
            failed += w.await.unwrap().1;
        }
        assert_eq!(failed, 0);
        let blue_max = blue.max_seq.load(Ordering::SeqCst);
        assert!(blue_max > 0, "blue served before the switch");
        assert!(
            blue_max < marker,
            "a request started after the switch ({blue_max} >= {marker}) reached blue"
        );
        assert!(green.max_seq.load(Ordering::SeqCst) >= marker);
    }
}

bounded_test! {
    async fn a_90_10_split_over_20000_requests_lands_within_one_point() {
        let (blue, green, sy) = serve_pair(|b, g| config(
            &[("blue", &[b]), ("green", &[g])],
            "weights = { blue = 90, green = 10 }",
        )).await;
        let url = web_url(&sy).await;
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let c = client();
                for _ in 0..1250 {
                    let r = get(&c, &url, &[]).await.unwrap();
                    assert_eq!(r.status, 200);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let (b, g) = (blue.hits() as f64, green.hits() as f64);
        assert_eq!(b + g, 20_000.0);
        let green_pct = 100.0 * g / (b + g);
        assert!(
            (green_pct - 10.0).abs() <= 1.0,
            "green got {green_pct:.2}% instead of 10%"
        );
    }
}

bounded_test! {
    async fn switching_to_a_group_without_healthy_targets_is_refused_unless_forced() {
        let blue = TestBackend::start("blue").await;
        let refusing = common::raw::RefusingPort::new();
        let dead = refusing.addr;
        let sy = start(&config(
            &[("blue", &[blue.addr]), ("green", &[dead])],
            "active = \"blue\"\n[service.health_check]\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"100ms\"",
        ))
        .await;
        let api = admin(&sy);
        let url = web_url(&sy).await;
        eventually(Duration::from_secs(5), "green marked unhealthy", || async {
            let s = api.get("/api/v1/status").await.unwrap();
            s["services"][0]["groups"][1]["targets"][0]["health"] == "unhealthy"
        })
        .await;

        let err = api
            .post("/api/v1/services/shop/switch", json!({ "group": "green" }))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("409"), "{err}");
        assert!(err.to_string().contains("no healthy target"), "{err}");
        // Refused means nothing changed.
        assert_eq!(backend_of(&url).await, "blue");

        api.post(
            "/api/v1/services/shop/switch",
            json!({ "group": "green", "force": true }),
        )
        .await
        .unwrap();
        let r = get(&client(), &url, &[]).await.unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.headers["x-switchyard-error"], "no_healthy_target");
        assert!(r.body.contains("group green"), "{}", r.body);

        api.post("/api/v1/services/shop/switch", json!({ "back": true }))
            .await
            .unwrap();
        assert_eq!(backend_of(&url).await, "blue");
    }
}

bounded_test! {
    current_thread;
    async fn admin_api_errors_say_what_is_wrong() {
        let blue = TestBackend::start("blue").await;
        let sy = start(&config(&[("blue", &[blue.addr])], "")).await;
        let api = admin(&sy);
        let cases = [
            (
                "/api/v1/services/nope/switch",
                json!({ "group": "blue" }),
                "404",
                "no service named \"nope\"",
            ),
            (
                "/api/v1/services/shop/switch",
                json!({ "group": "teal" }),
                "404",
                "no group named \"teal\"",
            ),
            (
                "/api/v1/services/shop/switch",
                json!({ "back": true }),
                "409",
                "no previous split",
            ),
            (
                "/api/v1/services/shop/switch",
                json!({}),
                "422",
                "either `group` or `back",
            ),
            (
                "/api/v1/services/shop/switch",
                json!({ "group": 7 }),
                "422",
                "group",
            ),
            (
                "/api/v1/services/shop/switch",
                json!({ "grop": "blue" }),
                "422",
                "unknown field",
            ),
        ];
        for (path, body, status, text) in cases {
            let err = post_err(&api, path, body.clone()).await;
            assert!(
                err.contains(status) && err.contains(text),
                "{path} {body}: {err}"
            );
        }
        let err = api
            .put(
                "/api/v1/services/shop/weights",
                json!({ "weights": { "blue": 50 } }),
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("422") && err.contains("weights: weights sum to 50, not 100"),
            "{err}"
        );

        let anonymous = switchyard::client::AdminClient::new(&sy.admin_addr.to_string(), None);
        let err = anonymous
            .get("/api/v1/status")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("401") && err.contains("Bearer"), "{err}");
        let wrong =
            switchyard::client::AdminClient::new(&sy.admin_addr.to_string(), Some("nope".into()));
        let err = wrong.get("/api/v1/status").await.unwrap_err().to_string();
        assert!(err.contains("401") && err.contains("wrong"), "{err}");
    }
}

bounded_test! {
    current_thread;
    async fn named_tokens_are_who_acted_in_the_history() {
        let (blue, green) = TestBackend::pair().await;
        let toml = blue_green(blue.addr, green.addr).build().replacen(
            "token = \"t0ken\"",
            "token = \"t0ken\"\n[[admin.tokens]]\nname = \"deploy-bot\"\ntoken = \"bot-secret\"",
            1,
        );
        let sy = start(&toml).await;
        let bot = switchyard::client::AdminClient::new(
            &sy.admin_addr.to_string(),
            Some("bot-secret".into()),
        );
        bot.post("/api/v1/services/shop/switch", json!({ "group": "green" }))
            .await
            .unwrap();
        let alice = switchyard::client::AdminClient::new(
            &sy.admin_addr.to_string(),
            Some("bot-secret".into()),
        )
        .with_actor("cli:alice");
        alice
            .post("/api/v1/services/shop/switch", json!({ "back": true }))
            .await
            .unwrap();
        admin(&sy)
            .post("/api/v1/services/shop/switch", json!({ "group": "green" }))
            .await
            .unwrap();
        let events = admin(&sy).get("/api/v1/events?service=shop").await.unwrap();
        let actors: Vec<(&str, Option<&str>)> = events
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .map(|e| (e["actor"].as_str().unwrap(), e["on_behalf_of"].as_str()))
            .collect();
        assert_eq!(
            actors,
            [
                ("deploy-bot", None),
                ("deploy-bot", Some("cli:alice")),
                ("admin", None)
            ]
        );
        let only_bot = admin(&sy)
            .get("/api/v1/events?actor=deploy-bot")
            .await
            .unwrap();
        assert_eq!(only_bot.as_array().unwrap().len(), 2);
        let e = &only_bot[1];
        assert_eq!(
            (e["kind"].as_str(), e["reason"].as_str()),
            (Some("switch"), Some("blue=100% -> green=100%"))
        );
    }
}
