//! Rollouts with the real binary: SIGKILL mid-rollout and restart resumes the same rollout
//! at the same step, weights and remaining pause (once the guard judged a window); SIGKILL
//! with a rollback not yet recorded; one instance per state database; the CLI's rollout verbs.

mod common;

use std::time::{Duration, Instant};

use common::bin::*;
use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_rollout_resumes_at_the_same_step_weights_and_remaining_pause() {
    let bin = Binary::setup().await;
    let (path, web, admin_addr) = (bin.path.clone(), bin.web, bin.admin);
    small_guard(&path, "1s");
    let api = admin_at(admin_addr);

    let mut first = run_binary(&path, admin_addr).await;
    let started = start_rollout(
        &api,
        json!({ "kind": "canary", "steps": [
            { "weight": 20 }, { "pause": "3s" }, { "weight": 60 }, { "pause": "until-promoted" }
        ]}),
    )
    .await;
    let id = started["id"].clone();
    // Into the timed pause, with at least one checkpoint of its progress.
    eventually(Duration::from_secs(5), "pause checkpointed", || async {
        let r = api.get("/api/v1/services/shop/rollout").await.unwrap();
        r["step"] == 1 && r["pause_elapsed_ms"].as_u64().unwrap() >= 1000
    })
    .await;
    signal(&first.child, "-KILL");
    first.child.wait().unwrap();

    let restarted_at = Instant::now();
    let _second = run_binary(&path, admin_addr).await;
    let r = api.get("/api/v1/services/shop/rollout").await.unwrap();
    assert_eq!(r["id"], id, "the same rollout");
    assert_eq!(
        (r["step"].as_u64(), r["weight"].as_u64()),
        (Some(1), Some(2000)),
        "{r}"
    );
    assert_eq!(r["status"], "progressing");
    let elapsed_before = r["pause_elapsed_ms"].as_u64().unwrap();
    assert!(elapsed_before >= 1000, "{r}");

    // The same weights in the data plane at once.
    let c = client();
    let mut green_hits = 0;
    for _ in 0..2000 {
        if get(&c, &format!("http://{web}/"), &[])
            .await
            .unwrap()
            .backend()
            == "green"
        {
            green_hits += 1;
        }
    }
    let pct = green_hits as f64 / 20.0;
    assert!(
        (pct - 20.0).abs() <= 4.0,
        "{pct}% on green after the restart"
    );

    // The pause goes on with the time it had left, not from the start, once the guard has
    // judged one full window (1 s here, whole seconds) after the restart.
    eventually(Duration::from_secs(10), "next step", || async {
        api.get("/api/v1/services/shop/rollout").await.unwrap()["weight"] == 6000
    })
    .await;
    let took = restarted_at.elapsed().as_millis() as u64;
    let left = 3000 - elapsed_before;
    assert!(
        took + 300 >= left,
        "moved on after {took} ms, but {left} ms were left"
    );
    assert!(
        took <= left + GUARD_GATE_MS + 2000,
        "took {took} ms for the {left} ms that were left"
    );
    let events = api
        .get("/api/v1/events?service=shop&kind=weight")
        .await
        .unwrap();
    assert_eq!(
        events.as_array().unwrap().len(),
        2,
        "no step was repeated: {events}"
    );
}

/// A guard that judges a `window` every 100 ms (a restarted rollout waits for one).
fn small_guard(path: &std::path::Path, window: &str) {
    let mut text = std::fs::read_to_string(path).unwrap();
    // After the groups, this table belongs to the (only) service.
    text.push_str(&format!(
        "[service.guard]\ninterval = \"100ms\"\nwindow = \"{window}\"\nmin_requests = 5\n"
    ));
    std::fs::write(path, text).unwrap();
}

/// At most how long the guard's first window after a restart holds a rollout: the window,
/// up to a second to reach whole seconds, and a tick.
const GUARD_GATE_MS: u64 = 2200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_an_unrecorded_abort_resumes_held_at_no_more_than_the_recorded_weight() {
    let Binary {
        blue: _blue,
        green: _green,
        dir,
        path,
        web,
        admin: admin_addr,
    } = Binary::setup().await;
    let db = dir.path().join("switchyard.db");
    // Long enough that the hold is still on when the first requests after the restart are
    // answered, however slowly the box starts the binary.
    small_guard(&path, "5s");
    let api = admin_at(admin_addr);

    let mut first = run_binary(&path, admin_addr).await;
    start_rollout(&api, json!({ "kind": "canary", "steps": [
            { "weight": 30 }, { "pause": "until-promoted" }, { "weight": 80 }, { "pause": "until-promoted" }
        ]})).await;
    eventually(Duration::from_secs(10), "paused at 30%", || async {
        let r = api.get("/api/v1/services/shop/rollout").await.unwrap();
        r["status"] == "paused" && r["weight"] == 3000
    })
    .await;

    // The abort is decided and applied while the file is locked, then the process dies
    // before it could record it.
    let lock = DbLock::hold(&db);
    let r = api
        .post("/api/v1/services/shop/rollout/abort", json!({}))
        .await
        .expect("abort during the outage");
    assert_eq!(r["status"], "aborted");
    let c = client();
    for _ in 0..20 {
        let r = get(&c, &format!("http://{web}/"), &[]).await.unwrap();
        assert_eq!(r.backend(), "blue");
    }
    let s = api.get("/api/v1/status").await.unwrap();
    assert!(s["store"]["pending_writes"].as_u64().unwrap() >= 1, "{s}");
    signal(&first.child, "-KILL");
    first.child.wait().unwrap();
    lock.release();

    let restarted = Instant::now();
    let _second = run_binary(&path, admin_addr).await;
    let r = api.get("/api/v1/services/shop/rollout").await.unwrap();
    assert_eq!(
        r["weight"].as_u64(),
        Some(3000),
        "the candidate has what it had when the rollback was decided, never more: {r}"
    );
    // Held until the guard has judged one full window (5 s of whole seconds from the
    // driver's start, which comes before the admin API answers): no promotion, no step.
    assert!(
        r["waiting_for"]
            .as_str()
            .is_some_and(|w| w.contains("guard")),
        "{r}"
    );
    let e = api
        .post("/api/v1/services/shop/rollout/promote", json!({}))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("409"), "{e}");
    eventually(
        Duration::from_secs(20),
        "the guard judged a window",
        || async {
            api.get("/api/v1/services/shop/rollout").await.unwrap()["waiting_for"].is_null()
        },
    )
    .await;
    assert!(
        restarted.elapsed() >= Duration::from_millis(5000),
        "held for at least the guard window"
    );
    let r = api
        .post("/api/v1/services/shop/rollout/promote", json!({}))
        .await
        .unwrap();
    assert_eq!(r["status"], "progressing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_on_the_same_database_refuses_to_start_and_names_the_holder() {
    let (blue, green) = TestBackend::pair().await;
    let dir = tempfile::tempdir().unwrap();
    let (first_cfg, second_cfg) = (dir.path().join("a.toml"), dir.path().join("b.toml"));
    let admin_addr = free_port();
    write_config(
        &first_cfg,
        free_port(),
        admin_addr,
        "blue",
        blue.addr,
        green.addr,
    );
    let first = run_binary(&first_cfg, admin_addr).await;

    // The very same configuration (same ports): the store is opened before anything is
    // bound, so it fails on the database's lock, naming the holder, not "address in use".
    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["run", "-c"])
        .arg(&first_cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = second.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            panic!("a second instance runs on the same state database");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("switchyard.db"), "{err}");
    assert!(
        err.contains(&format!("pid {}", first.child.id())),
        "names the holder: {err}"
    );

    // SIGKILL frees it: the kernel drops the lock with the process.
    let mut first = first;
    signal(&first.child, "-KILL");
    first.child.wait().unwrap();
    drop(first);
    let second_admin = free_port();
    write_config(
        &second_cfg,
        free_port(),
        second_admin,
        "blue",
        blue.addr,
        green.addr,
    );
    let _second = run_binary(&second_cfg, second_admin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_drives_a_rollout() {
    let bin = Binary::setup().await;
    let (path, web, admin_addr) = (bin.path.clone(), bin.web, bin.admin);
    let _sy = run_binary(&path, admin_addr).await;

    let (code, out, err) = cli(
        &path,
        &[
            "rollout",
            "start",
            "shop",
            "green",
            "--strategy",
            "canary-50pct-1h",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("rollout #1 of shop: blue -> green (canary-50pct-1h, 2 steps)"),
        "{out}"
    );

    let c = client();
    eventually(Duration::from_secs(5), "at 50%", || async {
        let (_, out, _) = cli(&path, &["rollout", "status", "shop"]);
        out.contains("weights:  blue 50%  green 50%")
    })
    .await;
    for _ in 0..50 {
        get(&c, &format!("http://{web}/"), &[]).await.unwrap();
    }
    // The observed split appears once the sampler (4 per second) has seen the traffic.
    eventually(Duration::from_secs(3), "observed split shown", || async {
        cli(&path, &["rollout", "status", "shop"])
            .1
            .contains("observed: blue ")
    })
    .await;
    let (_, out, _) = cli(&path, &["rollout", "status", "shop"]);
    assert!(out.contains("[x] 1. set weight 50%"), "{out}");
    assert!(out.contains("[>] 2. pause 1h"), "{out}");

    let (code, out, _) = cli(&path, &["status"]);
    assert_eq!(code, 0);
    assert!(
        out.contains(
            "rollout #1 blue -> green (canary-50pct-1h): progressing, step 2/2, candidate at 50%"
        ),
        "{out}"
    );
    assert!(out.contains("observed (last 5 s): blue="), "{out}");
    let (_, out, _) = cli(&path, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["services"][0]["rollout"]["weight"], 5000);

    let (code, out, _) = cli(&path, &["rollout", "pause", "shop"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("status: paused") && out.contains("paused by admin on behalf of cli:"),
        "{out}"
    );
    let (code, out, _) = cli(&path, &["rollout", "resume", "shop"]);
    assert_eq!(code, 0);
    assert!(out.contains("status: progressing"), "{out}");
    let (code, out, _) = cli(&path, &["rollout", "promote", "shop", "--full"]);
    assert_eq!(code, 0, "{out}");
    eventually(Duration::from_secs(5), "completed", || async {
        cli(&path, &["rollout", "status", "shop"])
            .1
            .contains("status: completed")
    })
    .await;
    // --watch on a finished rollout draws once and ends.
    let (code, out, _) = cli(&path, &["rollout", "status", "shop", "--watch"]);
    assert_eq!(code, 0);
    assert!(out.contains("status: completed"), "{out}");

    let (code, out, _) = cli(&path, &["rollout", "undo", "shop"]);
    assert_eq!(code, 0);
    assert!(out.contains("status: rolled_back"), "{out}");
    let (code, _, err) = cli(&path, &["rollout", "promote", "shop"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("409") && err.contains("is rolled_back"),
        "{err}"
    );

    let (_, out, _) = cli(&path, &["rollout", "history", "shop"]);
    assert!(out.contains("#1") && out.contains("rolled_back"), "{out}");
    let (_, out, _) = cli(&path, &["events", "--service", "shop"]);
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    assert!(
        out.contains(&format!("admin for cli:{user}"))
            && out.contains("started")
            && out.contains("rolled_back"),
        "{out}"
    );
    assert_eq!(
        get(&c, &format!("http://{web}/"), &[])
            .await
            .unwrap()
            .backend(),
        "blue"
    );
}
