//! Health checks, passive ejection, retries and the proxy's own error answers.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::raw::RefusingPort;
use common::*;

async fn target_state(
    api: &switchyard::client::AdminClient,
    group: usize,
    target: usize,
) -> serde_json::Value {
    let s = api.get("/api/v1/status").await.unwrap();
    s["services"][0]["groups"][group]["targets"][target].clone()
}

bounded_test! {
    async fn a_killed_target_is_marked_unhealthy_within_the_thresholds_and_costs_at_most_the_in_flight_requests() {
        let a = TestBackend::start("a").await;
        let b = TestBackend::start("b").await;
        let c = TestBackend::start("c").await;
        // 100 ms interval, 2 failures: unhealthy at most ~2 intervals after the kill.
        let sy = start(&config(
            &[("blue", &[a.addr, b.addr, c.addr])],
            "[service.health_check]\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\nunhealthy_threshold = 2\nhealthy_threshold = 2",
        ))
        .await;
        let api = admin(&sy);
        let url = format!("http://{}/sleep/5", sy.listener_addr("web").await);
        eventually(Duration::from_secs(3), "all healthy", || async {
            target_state(&api, 0, 1).await["health"] == "healthy"
        })
        .await;

        const WORKERS: u64 = 8;
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for _ in 0..WORKERS {
            let (url, stop) = (url.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let cl = client();
                let (mut ok, mut failed) = (0u64, 0u64);
                while !stop.load(Ordering::SeqCst) && ok + failed < 20_000 {
                    match get(&cl, &url, &[]).await {
                        Ok(r) if r.status == 200 => ok += 1,
                        _ => failed += 1,
                    }
                }
                (ok, failed)
            }));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let b_hits_before = b.hits();
        assert!(b_hits_before > 0, "b served before the kill");
        let killed = Instant::now();
        b.kill();
        eventually(Duration::from_secs(3), "b marked unhealthy", || async {
            target_state(&api, 0, 1).await["health"] == "unhealthy"
        })
        .await;
        let detect = killed.elapsed();
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::SeqCst);
        let (mut ok, mut failed) = (0, 0);
        for t in tasks {
            let (o, f) = t.await.unwrap();
            ok += o;
            failed += f;
        }
        // Two failed probes at 100 ms intervals: 200 ms, plus the probes' 100 ms timeout. The
        // 8 load workers share the 2 cores with the probes and the status polls, so the bound
        // allows a further second of scheduling delay: what it catches is a threshold or
        // interval ignored (detection after seconds, or never — the wait above fails then).
        assert!(
            detect < Duration::from_millis(1300),
            "took {detect:?} to mark the target unhealthy"
        );
        assert!(ok > 200, "too little load: {ok}");
        assert!(
            failed <= WORKERS,
            "{failed} failures, more than the {WORKERS} requests that can be in flight"
        );
        eprintln!("detected in {detect:?}; {ok} ok, {failed} failed");
    }
}

bounded_test! {
    async fn a_connect_failure_moves_the_request_to_another_target() {
        let live = TestBackend::start("live").await;
        let refusing = RefusingPort::new();
        let dead = refusing.addr;
        // No health checks and no passive ejection: only the retry can save requests.
        let sy = start(&config(
            &[("blue", &[dead, live.addr])],
            "balance = \"round-robin\"\npassive = { consecutive_failures = 0 }",
        ))
        .await;
        let addr = sy.listener_addr("web").await;
        let cl = client();
        for _ in 0..50 {
            let r = get(&cl, &format!("http://{addr}/"), &[]).await.unwrap();
            assert_eq!(r.status, 200, "{}", r.body);
        }
        let s = admin(&sy).get("/api/v1/status").await.unwrap();
        let connect_failures = s["services"][0]["groups"][0]["counts"]["connect_failures"]
            .as_u64()
            .unwrap();
        assert!(
            connect_failures >= 20,
            "round-robin should have hit the dead target: {connect_failures}"
        );

        // The connection is made before anything is sent, so even a POST with a body moves
        // safely to another target.
        let post_client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        for _ in 0..6 {
            let req = http::Request::post(format!("http://{addr}/echo"))
                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                    b"payload",
                )))
                .unwrap();
            let r = post_client.request(req).await.unwrap();
            assert_eq!(r.status(), 200);
            let body = http_body_util::BodyExt::collect(r.into_body())
                .await
                .unwrap()
                .to_bytes();
            let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(seen["body"], "payload");
        }
    }
}

bounded_test! {
    current_thread;
    async fn when_no_target_can_be_reached_the_answer_is_502_after_one_retry() {
        let (d1, d2) = (RefusingPort::new(), RefusingPort::new());
        let (d1, d2) = (d1.addr, d2.addr);
        let sy = start(&config(
            &[("blue", &[d1, d2])],
            "passive = { consecutive_failures = 0 }",
        ))
        .await;
        let r = get_web(&sy, "/").await;
        assert_eq!(r.status, 502);
        assert_eq!(r.headers["x-switchyard-error"], "upstream_connect_failed");
        assert!(r.body.contains("cannot connect to target"), "{}", r.body);
        let s = admin(&sy).get("/api/v1/status").await.unwrap();
        let counts = &s["services"][0]["groups"][0]["counts"];
        assert_eq!(
            counts["connect_failures"], 2,
            "tried both targets once: {counts}"
        );
        assert_eq!(counts["5xx"], 1);
    }
}

/// A round-robin group of a refusing target (first) and a live one, ejecting after 3
/// consecutive failures for `ejection_time`; the listener's URL.
async fn ejecting(ejection_time: &str) -> (TestBackend, RefusingPort, Server, String) {
    let live = TestBackend::start("live").await;
    let refusing = RefusingPort::new();
    let sy = start(&config(
        &[("blue", &[refusing.addr, live.addr])],
        &format!("balance = \"round-robin\"\npassive = {{ consecutive_failures = 3, ejection_time = \"{ejection_time}\" }}"),
    ))
    .await;
    let url = web_url(&sy).await;
    (live, refusing, sy, url)
}

bounded_test! {
    async fn consecutive_failures_eject_a_target_passively() {
        let (_live, _refusing, sy, url) = ejecting("30s").await;
        let (api, cl) = (admin(&sy), client());
        for _ in 0..20 {
            assert_eq!(get(&cl, &url, &[]).await.unwrap().status, 200);
        }
        let t = target_state(&api, 0, 0).await;
        assert_eq!(t["ejected"], true, "{t}");
        let s = api.get("/api/v1/status").await.unwrap();
        let failures = s["services"][0]["groups"][0]["counts"]["connect_failures"]
            .as_u64()
            .unwrap();
        assert_eq!(failures, 3, "ejected after exactly 3 consecutive failures");
        for _ in 0..20 {
            assert_eq!(get(&cl, &url, &[]).await.unwrap().backend(), "live");
        }
        let s = api.get("/api/v1/status").await.unwrap();
        assert_eq!(
            s["services"][0]["groups"][0]["counts"]["connect_failures"], 3,
            "no request went to the ejected target"
        );
    }
}

bounded_test! {
    current_thread;
    async fn proxy_errors_have_their_status_and_code() {
        let slow = TestBackend::start("slow").await;
        let refusing = RefusingPort::new();
        let dead = refusing.addr;
        let toml = format!(
            r#"{head}[[route]]
name = "slow"
priority = 1
match.path_prefix = ["/sleep/"]
forward = "slow"
[[route]]
name = "dead"
priority = 2
match.path = ["/dead"]
forward = "dead"
[[service]]
name = "slow"
request_timeout = "200ms"
[[service.group]]
name = "only"
targets = ["{slow}"]
[[service]]
name = "dead"
passive = {{ consecutive_failures = 0 }}
[[service.group]]
name = "only"
targets = ["{dead}"]
"#,
            head = Cfg::new().head(),
            slow = slow.addr
        );
        let sy = start(&toml).await;
        let base = format!("http://{}", sy.listener_addr("web").await);
        let cl = client();

        let r = get(&cl, &format!("{base}/sleep/2000"), &[]).await.unwrap();
        assert_eq!(r.status, 504);
        assert_eq!(r.headers["x-switchyard-error"], "upstream_timeout");
        assert!(r.body.contains("200ms"), "{}", r.body);

        let r = get(&cl, &format!("{base}/dead"), &[]).await.unwrap();
        assert_eq!(r.status, 502);
        assert_eq!(r.headers["x-switchyard-error"], "upstream_connect_failed");

        let r = get(&cl, &format!("{base}/nothing-here"), &[])
            .await
            .unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.headers["x-switchyard-error"], "no_route");

        let r = get(&cl, &format!("{base}/sleep/1"), &[]).await.unwrap();
        assert_eq!(r.status, 200, "a fast request still works");
    }
}

bounded_test! {
    async fn a_target_back_up_is_healthy_again_only_after_healthy_threshold_passing_probes() {
        let live = TestBackend::start("live").await;
        let flaky = TestBackend::start("flaky").await;
        // 100 ms probes; 4 passes to come back: not before 3 intervals after the first.
        let sy = start(&config(
            &[("blue", &[live.addr, flaky.addr])],
            "balance = \"round-robin\"\n[service.health_check]\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\nunhealthy_threshold = 1\nhealthy_threshold = 4",
        ))
        .await;
        let api = admin(&sy);
        let url = web_url(&sy).await;
        eventually(Duration::from_secs(3), "both healthy", || async {
            target_state(&api, 0, 1).await["health"] == "healthy"
        })
        .await;
        // Probes time out (100 ms) while it answers after 300 ms; then it answers at once.
        flaky.set_delay(300);
        eventually(Duration::from_secs(3), "flaky unhealthy", || async {
            target_state(&api, 0, 1).await["health"] == "unhealthy"
        })
        .await;
        flaky.set_delay(0);
        let up = Instant::now();
        eventually(Duration::from_secs(5), "flaky healthy again", || async {
            target_state(&api, 0, 1).await["health"] == "healthy"
        })
        .await;
        let took = up.elapsed();
        assert!(
            took + MEASURE_SLACK >= Duration::from_millis(300),
            "healthy after {took:?}: fewer than 4 passing probes"
        );
        // Back in rotation: round-robin gives it every other request.
        let before = flaky.hits();
        let cl = client();
        for _ in 0..10 {
            assert_eq!(get(&cl, &url, &[]).await.unwrap().status, 200);
        }
        assert!(
            flaky.hits() - before >= 4,
            "{} of 10 requests",
            flaky.hits() - before
        );
    }
}

bounded_test! {
    async fn an_ejected_target_is_back_in_rotation_when_its_ejection_time_is_over() {
        let (_live, refusing, sy, url) = ejecting("1s").await;
        let (api, cl) = (admin(&sy), client());
        // Measured from before the requests that eject it: the ejection is no earlier.
        let ejected = Instant::now();
        for _ in 0..10 {
            assert_eq!(get(&cl, &url, &[]).await.unwrap().status, 200);
        }
        assert_eq!(target_state(&api, 0, 0).await["ejected"], true);
        // The target comes back at once, but is left alone until its ejection time is over.
        let revived = TestBackend::start_on(refusing.release(), "revived").await;
        eventually(Duration::from_secs(5), "ejection over", || async {
            target_state(&api, 0, 0).await["ejected"] == false
        })
        .await;
        let took = ejected.elapsed();
        fired_between(
            took,
            Duration::from_secs(1),
            Duration::from_secs(1),
            "ejection_time",
        );
        assert_eq!(revived.hits(), 0, "no request while ejected");
        for _ in 0..10 {
            assert_eq!(get(&cl, &url, &[]).await.unwrap().status, 200);
        }
        assert!(revived.hits() >= 4, "{} of 10 requests", revived.hits());
    }
}
