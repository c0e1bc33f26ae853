//! Automated analysis, the rollback guard, hooks and notifications, end to end with real
//! backends whose errors and latency the tests turn up.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

fn cfg(
    blue: std::net::SocketAddr,
    green: std::net::SocketAddr,
    top: &str,
    service: &str,
) -> String {
    blue_green(blue, green)
        .route("[[route.override]]\ngroup = \"candidate\"\nheader = { name = \"x-preview\", values = [\"1\"] }")
        .top(top)
        .service(service)
        .build()
}

/// Steady traffic until dropped.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(
        url: String,
        workers: usize,
        headers: &'static [(&'static str, &'static str)],
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..workers)
            .map(|_| {
                let (url, stop) = (url.clone(), stop.clone());
                tokio::spawn(async move {
                    let c = client();
                    let mut n = 0;
                    while !stop.load(Ordering::SeqCst) && n < 200_000 {
                        n += 1;
                        let _ = get(&c, &url, headers).await;
                    }
                })
            })
            .collect();
        Load { stop, tasks }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn wait_status(
    api: &switchyard::client::AdminClient,
    secs: u64,
    f: impl Fn(&Value) -> bool,
) -> Value {
    wait_rollout_for(
        api,
        Duration::from_secs(secs),
        "rollout did not get there",
        f,
    )
    .await
}

const HEALTH: &str = r#"
[[analysis]]
name = "health"
interval = "300ms"
count = 3
min_requests = 20
[[analysis.check]]
name = "errors"
metric = "error-rate"
max_over_stable = 1.0
# Sub-millisecond p99s on a loaded 2-core machine differ by scheduling noise alone (seen:
# 3.4 ms against 0.6 ms, both healthy), so the bound is absolute and wide: it still catches
# a candidate tens of milliseconds slower, and the ratio bound is unit-tested.
[[analysis.check]]
name = "p99"
metric = "latency-p99"
max_over_stable = 50.0
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_candidate_promotes_through_every_step_by_analysis_alone() {
    let (blue, green) = TestBackend::pair().await;
    let sy = start(&cfg(
        blue.addr,
        green.addr,
        HEALTH,
        "[service.strategy]\nkind = \"canary\"\nsteps = [{ weight = 20 }, { analysis = \"health\" }, { weight = 50 }, { analysis = \"health\" }]",
    ))
    .await;
    let api = admin(&sy);
    let load = Load::start(format!("http://{}/", sy.listener_addr("web").await), 4, &[]);
    start_green(&api).await;
    let r = wait_status(&api, 15, |r| r["status"] != "progressing").await;
    load.stop().await;
    assert_eq!(r["status"], "completed", "{r:#}");
    let events = api
        .get("/api/v1/events?service=shop&kind=analysis")
        .await
        .unwrap();
    let events = events.as_array().unwrap();
    assert_eq!(events.len(), 2, "two analysis steps passed");
    assert!(
        events[0]["reason"]
            .as_str()
            .unwrap()
            .contains("analysis passed: health:"),
        "{events:?}"
    );
    assert_eq!(events[0]["actor"], "analysis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_candidate_is_rolled_back_by_the_guard_within_seconds_and_notified() {
    let (blue, green) = TestBackend::pair().await;
    // A Slack-compatible receiver.
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let hook_addr = json_receiver(received.clone(), 200, "").await;
    let sy = start(&cfg(
        blue.addr,
        green.addr,
        &format!("[notifications]\nwebhook = \"http://{hook_addr}/slack\""),
        "[service.strategy]\nkind = \"canary\"\nsteps = [{ weight = 10 }, { pause = \"1h\" }]",
    ))
    .await;
    let api = admin(&sy);
    let load = Load::start(format!("http://{}/", sy.listener_addr("web").await), 6, &[]);
    start_green(&api).await;
    wait_status(&api, 5, |r| r["weight"] == 1000).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        api.get("/api/v1/services/shop/rollout").await.unwrap()["status"],
        "progressing",
        "healthy so far"
    );

    // The onset: 30 % of the candidate's answers become 500s.
    green.set_errors(300);
    let onset = Instant::now();
    let r = wait_status(&api, 10, |r| r["status"] == "aborted").await;
    let rollback = onset.elapsed();
    let green_after = green.hits();
    tokio::time::sleep(Duration::from_millis(300)).await;
    load.stop().await;
    eprintln!("rolled back {rollback:?} after the onset");
    // Wall-clock bound only as a functional check; the figure is measured in bench/rollback.sh.
    assert!(
        rollback < Duration::from_secs(5),
        "rollback took {rollback:?}"
    );
    let reason = r["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("aborted by guard: candidate green error rate"),
        "{reason}"
    );
    assert!(reason.contains("by more than 5 points"), "{reason}");
    assert!(
        green.hits() - green_after <= 6,
        "traffic stopped going to green"
    );
    eprintln!("{reason}");

    let deadline = Instant::now() + Duration::from_secs(5);
    while received.lock().unwrap().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let msgs = received.lock().unwrap().clone();
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    let text = msgs[0]["text"].as_str().unwrap();
    assert!(
        text.contains("rollout #1 of shop (blue -> green) aborted") && text.contains("error rate"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_analysis_check_records_the_failing_values_and_threshold() {
    let (blue, green) = TestBackend::pair().await;
    green.set_errors(300);
    let sy = start(&cfg(
        blue.addr,
        green.addr,
        HEALTH,
        "[service.guard]\nenabled = false\n[service.strategy]\nkind = \"canary\"\nsteps = [{ weight = 30 }, { analysis = \"health\" }]",
    ))
    .await;
    let api = admin(&sy);
    let load = Load::start(format!("http://{}/", sy.listener_addr("web").await), 4, &[]);
    start_green(&api).await;
    let r = wait_status(&api, 10, |r| r["status"] == "aborted").await;
    load.stop().await;
    let reason = r["reason"].as_str().unwrap();
    assert!(
        reason.contains("analysis failed: health: check errors failed 1 of 1 times (limit 0)"),
        "{reason}"
    );
    assert!(
        reason.contains("> stable") && reason.contains("+ 1%"),
        "values and threshold recorded: {reason}"
    );
    let ev = api
        .get("/api/v1/events?service=shop&kind=aborted")
        .await
        .unwrap();
    assert_eq!(ev[0]["actor"], "analysis");
    assert_eq!(ev[0]["to"], json!({ "blue": 10000 }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latency_regression_is_caught_by_the_mann_whitney_comparison() {
    let (blue, green) = TestBackend::pair().await;
    green.set_delay(15);
    let analysis = r#"
[[analysis]]
name = "latency"
interval = "500ms"
count = 2
min_requests = 20
[[analysis.check]]
name = "mann-whitney"
mann_whitney = { confidence = 0.99, tolerance = 0.2 }
"#;
    let sy = start(&cfg(
        blue.addr,
        green.addr,
        analysis,
        "[service.strategy]\nkind = \"canary\"\nsteps = [{ weight = 50 }, { analysis = \"latency\" }]",
    ))
    .await;
    let api = admin(&sy);
    let load = Load::start(format!("http://{}/", sy.listener_addr("web").await), 8, &[]);
    start_green(&api).await;
    let r = wait_status(&api, 10, |r| r["status"] == "aborted").await;
    let reason = r["reason"].as_str().unwrap().to_string();
    assert!(
        reason.contains("check mann-whitney failed") && reason.contains("Mann-Whitney U="),
        "{reason}"
    );
    assert!(
        reason.contains("median candidate") && reason.contains("stable"),
        "{reason}"
    );

    // The same comparison between equal versions passes: the retried rollout completes.
    // Both at 10 ms, so scheduling noise on a busy machine is small against the 20 % tolerance.
    green.set_delay(10);
    blue.set_delay(10);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    api.post("/api/v1/services/shop/rollout/retry", json!({}))
        .await
        .unwrap();
    let r = wait_status(&api, 10, |r| r["status"] != "progressing").await;
    load.stop().await;
    assert_eq!(r["status"], "completed", "{r:#}");
    let ev = api
        .get("/api/v1/events?service=shop&kind=analysis")
        .await
        .unwrap();
    assert!(
        ev[0]["reason"].as_str().unwrap().contains("Mann-Whitney"),
        "{ev}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_little_traffic_is_inconclusive_and_pauses_for_a_person() {
    let (blue, green) = TestBackend::pair().await;
    let analysis = r#"
[[analysis]]
name = "volume"
interval = "200ms"
count = 3
inconclusive_limit = 1
min_requests = 1000
[[analysis.check]]
name = "errors"
metric = "error-rate"
max = 1.0
"#;
    let sy = start(&cfg(
        blue.addr,
        green.addr,
        analysis,
        "[service.strategy]\nkind = \"canary\"\nsteps = [{ weight = 50 }, { analysis = \"volume\" }]",
    ))
    .await;
    let api = admin(&sy);
    start_green(&api).await;
    // A trickle of requests: never enough for a verdict.
    let c = client();
    let url = format!("http://{}/", sy.listener_addr("web").await);
    for _ in 0..10 {
        get(&c, &url, &[]).await.unwrap();
    }
    let r = wait_status(&api, 10, |r| r["status"] != "progressing").await;
    assert_eq!(r["status"], "paused", "{r:#}");
    assert_eq!(r["weight"], 5000, "neither promoted nor rolled back");
    let reason = r["reason"].as_str().unwrap();
    assert!(
        reason.contains("analysis inconclusive") && reason.contains("fewer than the 1000 needed"),
        "{reason}"
    );
    // A person decides: promote past it.
    api.post("/api/v1/services/shop/rollout/promote", json!({}))
        .await
        .unwrap();
    wait_status(&api, 5, |r| r["status"] == "completed").await;
}

/// An HTTP server that records JSON bodies and answers `status` with `body`.
async fn json_receiver(
    seen: Arc<Mutex<Vec<Value>>>,
    status: u16,
    body: &'static str,
) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let b = req.into_body().collect().await.unwrap().to_bytes();
                            if let Ok(v) = serde_json::from_slice(&b) {
                                seen.lock().unwrap().push(v);
                            }
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::from_static(body.as_bytes())))
                                    .unwrap(),
                            )
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_and_command_checks_including_empty_and_malformed_answers() {
    let (blue, green) = TestBackend::pair().await;
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let ok = json_receiver(seen.clone(), 200, "").await;
    let fail = json_receiver(
        seen.clone(),
        200,
        r#"{"verdict":"fail","reason":"smoke test 3 failed"}"#,
    )
    .await;
    let unsure = json_receiver(seen.clone(), 200, r#"{"verdict":"inconclusive"}"#).await;
    let down = json_receiver(seen.clone(), 503, "maintenance").await;
    let garbage = json_receiver(seen.clone(), 200, "<html>oops").await;
    let odd = json_receiver(seen.clone(), 200, r#"{"verdict":"maybe"}"#).await;
    let checks = [
        (
            "ok",
            format!("webhook = {{ url = \"http://{ok}/\" }}"),
            "pass",
        ),
        (
            "fail",
            format!("webhook = {{ url = \"http://{fail}/\" }}"),
            "fail",
        ),
        (
            "unsure",
            format!("webhook = {{ url = \"http://{unsure}/\" }}"),
            "inconclusive",
        ),
        (
            "down",
            format!("webhook = {{ url = \"http://{down}/\" }}"),
            "fail",
        ),
        (
            "garbage",
            format!("webhook = {{ url = \"http://{garbage}/\" }}"),
            "error",
        ),
        (
            "odd",
            format!("webhook = {{ url = \"http://{odd}/\" }}"),
            "error",
        ),
        (
            "unreachable",
            "webhook = { url = \"http://127.0.0.1:9/\" }".into(),
            "error",
        ),
        (
            "cmd-ok",
            "command = \"test \\\"$SWITCHYARD_CANDIDATE\\\" = green\"".into(),
            "pass",
        ),
        (
            "cmd-fail",
            "command = \"echo too slow >&2; exit 1\"".into(),
            "fail",
        ),
        ("cmd-unsure", "command = \"exit 3\"".into(), "inconclusive"),
        ("cmd-missing", "command = \"/no/such/tool\"".into(), "error"),
        (
            "cmd-slow",
            "command = \"sleep 5\"\ntimeout = \"200ms\"".into(),
            "error",
        ),
    ];
    let mut analysis = String::from("[[analysis]]\nname = \"ext\"\n");
    for (name, body, _) in &checks {
        analysis.push_str(&format!("[[analysis.check]]\nname = \"{name}\"\n{body}\n"));
    }
    let sy = start(&cfg(blue.addr, green.addr, &analysis, "")).await;
    let res = admin(&sy)
        .post(
            "/api/v1/services/shop/analysis/run",
            json!({ "analysis": "ext", "candidate": "green" }),
        )
        .await
        .unwrap();
    let results = res["results"].as_array().unwrap();
    for (i, (name, _, want)) in checks.iter().enumerate() {
        let m = &results[i]["measurement"];
        assert_eq!(m["check"], *name);
        assert_eq!(m["outcome"], *want, "{name}: {m}");
    }
    let detail = |i: usize| {
        results[i]["measurement"]["detail"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(detail(1).contains("smoke test 3 failed"));
    assert!(detail(4).contains("not JSON"), "{}", detail(4));
    assert!(detail(6).contains("127.0.0.1:9"), "{}", detail(6));
    assert!(detail(8).contains("too slow"), "{}", detail(8));
    // The webhook got the rollout's context.
    let ctx = seen.lock().unwrap()[0].clone();
    assert_eq!(
        (ctx["service"].as_str(), ctx["candidate"].as_str()),
        (Some("shop"), Some("green"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_hook_aborts_and_a_confirm_gate_waits_for_promotion() {
    let (blue, green) = TestBackend::pair().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("hooks.log");
    let gate = dir.path().join("gate-open");
    let hooks = format!(
        r#"
[service.strategy]
kind = "canary"
steps = [{{ weight = 25 }}]
[service.hooks.before_traffic]
command = "test -e {gate} && echo before_traffic >> {log}"
retries = 1
timeout = "2s"
[service.hooks.before_promotion]
command = "echo before_promotion >> {log}"
confirm = true
[service.hooks.after_traffic]
command = "echo after_traffic >> {log}"
[service.hooks.after_rollout]
command = "echo after_rollout $SWITCHYARD_CANDIDATE >> {log}"
[service.hooks.on_rollback]
command = "echo on_rollback >> {log}"
"#,
        gate = gate.display(),
        log = log.display()
    );
    let sy = start(&cfg(blue.addr, green.addr, "", &hooks)).await;
    let api = admin(&sy);

    // The gate file is missing: before_traffic fails (after its retry) and aborts.
    start_green(&api).await;
    let r = wait_status(&api, 10, |r| r["status"] == "aborted").await;
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .contains("hook before_traffic failed after 2 attempts"),
        "{r}"
    );
    assert_eq!(r["weight"], 0, "no traffic ever reached the candidate");

    // With the gate open the hooks run in order; before_promotion waits for a confirmation.
    std::fs::write(&gate, "").unwrap();
    api.post("/api/v1/services/shop/rollout/retry", json!({}))
        .await
        .unwrap();
    let r = wait_status(&api, 10, |r| r["status"] == "paused").await;
    assert_eq!(r["weight"], 2500);
    api.post("/api/v1/services/shop/rollout/promote", json!({}))
        .await
        .unwrap();
    wait_status(&api, 10, |r| r["status"] == "completed").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("after_rollout") {
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(
                lines,
                [
                    "on_rollback",
                    "before_traffic",
                    "before_promotion",
                    "after_traffic",
                    "after_rollout green"
                ],
                "{text}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_that_stops_moving_hits_the_progress_deadline() {
    let (blue, green) = TestBackend::pair().await;
    let sy = start(&cfg(
        blue.addr,
        green.addr,
        "",
        "progress_deadline = \"300ms\"\n[service.strategy]\nkind = \"all-at-once\"\n[service.hooks.before_traffic]\ncommand = \"sleep 30\"\ntimeout = \"60s\"",
    ))
    .await;
    let api = admin(&sy);
    start_green(&api).await;
    let r = wait_status(&api, 5, |r| r["status"] == "aborted").await;
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .contains("hook before_traffic made no progress for 300ms"),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_checks_preview_traffic_before_and_the_switch_after() {
    let (blue, green) = TestBackend::pair().await;
    let dir = tempfile::tempdir().unwrap();
    let healthy = dir.path().join("post-ok");
    let analyses = format!(
        r#"
[[analysis]]
name = "preview"
interval = "300ms"
count = 2
min_requests = 20
[[analysis.check]]
name = "errors"
metric = "error-rate"
max = 1
[[analysis]]
name = "post"
interval = "200ms"
count = 1
[[analysis.check]]
name = "smoke"
command = "test -e {}"
"#,
        healthy.display()
    );
    let sy = start(&cfg(
        blue.addr,
        green.addr,
        &analyses,
        "[service.guard]\nenabled = false\n[service.strategy]\nkind = \"blue-green\"\nauto_promote_after = \"100ms\"\nscale_down_delay = \"0s\"\npre_promotion_analysis = \"preview\"\npost_promotion_analysis = \"post\"",
    ))
    .await;
    let api = admin(&sy);
    let url = format!("http://{}/", sy.listener_addr("web").await);
    // Only preview traffic reaches the candidate before the switch.
    let preview = Load::start(url.clone(), 4, &[("x-preview", "1")]);
    green.set_errors(300);
    start_green(&api).await;
    let r = wait_status(&api, 10, |r| r["status"] == "aborted").await;
    assert_eq!(r["weight"], 0, "never switched");
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .contains("analysis failed: preview: check errors"),
        "{r}"
    );

    // Healthy preview: switch; then the post-promotion check fails and rolls the switch back.
    green.set_errors(0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    api.post("/api/v1/services/shop/rollout/retry", json!({}))
        .await
        .unwrap();
    let r = wait_status(&api, 10, |r| r["status"] == "aborted").await;
    preview.stop().await;
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .contains("analysis failed: post: check smoke"),
        "{r}"
    );
    let weights: Vec<Value> = api
        .get("/api/v1/events?service=shop&kind=weight")
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["to"]["green"].clone())
        .collect();
    assert!(
        weights.contains(&json!(10000)),
        "the switch happened before the post check: {weights:?}"
    );
    assert_eq!(
        get(&client(), &url, &[]).await.unwrap().backend(),
        "blue",
        "rolled back"
    );

    // Both pass: completed.
    std::fs::write(&healthy, "").unwrap();
    api.post("/api/v1/services/shop/rollout/retry", json!({}))
        .await
        .unwrap();
    let preview = Load::start(url.clone(), 4, &[("x-preview", "1")]);
    let r = wait_status(&api, 10, |r| r["status"] != "progressing").await;
    preview.stop().await;
    assert_eq!(r["status"], "completed", "{r:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_analysis_watches_the_whole_rollout() {
    let (blue, green) = TestBackend::pair().await;
    let analysis = r#"
[[analysis]]
name = "bg"
interval = "300ms"
min_requests = 10
[[analysis.check]]
name = "errors"
metric = "error-rate"
max_over_stable = 2
"#;
    let sy = start(&cfg(
        blue.addr,
        green.addr,
        analysis,
        "[service.guard]\nenabled = false\n[service.strategy]\nkind = \"canary\"\nsteps = [{ weight = 30 }, { pause = \"1h\" }]\nbackground_analysis = \"bg\"",
    ))
    .await;
    let api = admin(&sy);
    let load = Load::start(format!("http://{}/", sy.listener_addr("web").await), 4, &[]);
    start_green(&api).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        api.get("/api/v1/services/shop/rollout").await.unwrap()["status"],
        "progressing"
    );
    green.set_errors(200);
    let r = wait_status(&api, 10, |r| r["status"] == "aborted").await;
    load.stop().await;
    let reason = r["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("aborted by analysis: background analysis bg: check errors failed"),
        "{reason}"
    );
}

/// An inconclusive background analysis pauses the rollout for a person; once the person
/// resumes, the analysis watches again (it used to end with the pause, so a resumed rollout
/// went on unwatched) and a failure then rolls back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_analysis_watches_again_after_its_pause_is_resumed() {
    let (blue, green) = (
        TestBackend::start("blue").await,
        TestBackend::start("green").await,
    );
    let analysis = r#"
[[analysis]]
name = "bg"
interval = "200ms"
min_requests = 10
[[analysis.check]]
name = "errors"
metric = "error-rate"
max_over_stable = 2
"#;
    let sy = start(&cfg(
        blue.addr,
        green.addr,
        analysis,
        "[service.guard]\nenabled = false\n[service.strategy]\nkind = \"canary\"\nsteps = [{ weight = 30 }, { pause = \"1h\" }]\nbackground_analysis = \"bg\"",
    ))
    .await;
    let api = admin(&sy);
    // No traffic: fewer than min_requests is inconclusive, which pauses for a person.
    api.post(
        "/api/v1/rollouts",
        json!({ "service": "shop", "candidate": "green" }),
    )
    .await
    .unwrap();
    let r = wait_status(&api, 15, |r| r["status"] == "paused").await;
    assert!(
        r["reason"]
            .as_str()
            .unwrap_or("")
            .contains("background analysis inconclusive"),
        "{r:#}"
    );
    // Resumed with a failing candidate under load: the analysis must catch it.
    green.set_errors(300);
    let load = Load::start(format!("http://{}/", sy.listener_addr("web").await), 4, &[]);
    api.post("/api/v1/services/shop/rollout/resume", json!({}))
        .await
        .unwrap();
    let r = wait_status(&api, 15, |r| r["status"] == "aborted").await;
    load.stop().await;
    let reason = r["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("aborted by analysis: background analysis bg: check errors failed"),
        "{reason}"
    );
}
