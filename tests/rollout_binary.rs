//! Rollouts with the real binary: SIGKILL mid-rollout and restart resumes the same rollout
//! at the same step, weights and remaining pause (once the guard judged a window); SIGKILL
//! with a rollback not yet recorded; one instance per state database; the CLI's rollout verbs.

mod common;

use std::time::{Duration, Instant};

use common::bin::*;
use common::release::*;
use common::*;
use serde_json::json;

bounded_test! {
    async fn sigkill_mid_rollout_resumes_at_the_same_step_weights_and_remaining_pause() {
        let bin = Binary::setup().await;
        let (path, web, admin_addr) = (bin.path.clone(), bin.web, bin.admin);
        small_guard(&path, "1s");
        let api = admin_at(admin_addr);

        let mut first = run_binary(&path, admin_addr).await;
        // A 10 s pause killed once 5 s of it are checkpointed: what is left (4–5 s) is longer
        // than the guard's hold after the restart, and left + hold + margin is shorter than the
        // whole pause, so that a pause counted as over and one started again both fail below.
        let started = start_rollout(
        &api,
        json!({ "kind": "canary", "steps": [
            { "weight": 20 }, { "pause": "10s" }, { "weight": 60 }, { "pause": "until-promoted" }
        ]}),
    )
    .await;
        let id = started["id"].clone();
        eventually(Duration::from_secs(20), "pause checkpointed", || async {
            let r = api.get("/api/v1/services/shop/rollout").await.unwrap();
            r["step"] == 1 && r["pause_elapsed_ms"].as_u64().unwrap() >= 5000
        })
        .await;
        signal(&first.child, "-KILL");
        first.child.wait().unwrap();

        let spawned = Instant::now();
        let _second = run_binary(&path, admin_addr).await;
        let up = Instant::now();
        let r = api.get("/api/v1/services/shop/rollout").await.unwrap();
        assert_eq!(r["id"], id, "the same rollout");
        assert_eq!(
            (r["step"].as_u64(), r["weight"].as_u64()),
            (Some(1), Some(2000)),
            "{r}"
        );
        assert_eq!(r["status"], "progressing");
        let elapsed_before = r["pause_elapsed_ms"].as_u64().unwrap();
        assert!(elapsed_before >= 5000, "{r}");

        // The same weights in the data plane at once: one client's requests follow the split's
        // sequence, so 500 of them land within a point or two of 20 %.
        let seen = measure(&format!("http://{web}/"), 500, 1, &[]).await;
        let r = api.get("/api/v1/services/shop/rollout").await.unwrap();
        assert_eq!(r["weight"], 2000, "the step changed while measuring: {r}");
        let pct = share(&seen, "green");
        assert!(
            (pct - 20.0).abs() <= 2.0,
            "{pct}% on green after the restart"
        );

        // The pause goes on with the time it had left, not from the start, once the guard has
        // judged one full window (1 s here, whole seconds) after the restart: no sooner than
        // `left` after the new process answered, no later than `left` + the hold after it was
        // spawned (+ 2 s for starting on a loaded box).
        eventually(Duration::from_secs(20), "next step", || async {
            api.get("/api/v1/services/shop/rollout").await.unwrap()["weight"] == 6000
        })
        .await;
        let (since_up, since_spawn) = (
            up.elapsed().as_millis() as u64,
            spawned.elapsed().as_millis() as u64,
        );
        let left = 10_000 - elapsed_before;
        assert!(
            since_up >= left,
            "moved on {since_up} ms after the restart, but {left} ms were left"
        );
        assert!(
            since_spawn <= left + GUARD_GATE_MS + 2000,
            "took {since_spawn} ms for the {left} ms that were left"
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

bounded_test! {
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

        // The pause at 30 % recorded too (the view shows it before the bookkeeping write that
        // confirms the step lands): otherwise the step counts as in flight, and a restart
        // rightly resumes below it.
        eventually(Duration::from_secs(10), "the pause at 30% recorded", || async {
            let conn = rusqlite::Connection::open(&db).unwrap();
            let state: String = conn
                .query_row("SELECT state FROM rollouts ORDER BY id DESC LIMIT 1", [], |row| row.get(0))
                .unwrap();
            let traffic: String = conn
                .query_row("SELECT state FROM traffic WHERE service = 'shop'", [], |row| row.get(0))
                .unwrap();
            let r: serde_json::Value = serde_json::from_str(&state).unwrap();
            let t: serde_json::Value = serde_json::from_str(&traffic).unwrap();
            r["status"] == "paused" && r["weight"] == 3000 && t["step_from"].is_null()
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
        let e = verb_err(&api, "promote", json!({})).await;
        assert!(e.contains("409"), "{e}");
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
        let r = promote(&api).await;
        assert_eq!(r["status"], "progressing");
    }
}

bounded_test! {
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
}

bounded_test! {
    async fn the_cli_drives_a_rollout() {
        let bin = Binary::setup().await;
        let (path, web, admin_addr) = (bin.path.clone(), bin.web, bin.admin);
        let _sy = run_binary(&path, admin_addr).await;

        let out = cli_ok(
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
                .contains("observed (last 5 s): blue=")
        })
        .await;
        let (_, out, _) = cli(&path, &["rollout", "status", "shop"]);
        assert!(out.contains("[x] 1. set weight 50%"), "{out}");
        assert!(out.contains("[>] 2. pause 1h"), "{out}");

        let out = cli_ok(&path, &["status"]);
        assert!(
        out.contains(
            "rollout #1 blue -> green (canary-50pct-1h): progressing, step 2 of 2, candidate at 50%"
        ),
        "{out}"
    );
        assert!(out.contains("observed (last 5 s): blue="), "{out}");
        let (_, out, _) = cli(&path, &["status", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["services"][0]["rollout"]["weight"], 5000);

        let out = cli_ok(&path, &["rollout", "pause", "shop"]);
        assert!(
            out.contains("status: paused") && out.contains("paused by admin on behalf of cli:"),
            "{out}"
        );
        let out = cli_ok(&path, &["rollout", "resume", "shop"]);
        assert!(out.contains("status: progressing"), "{out}");
        cli_ok(&path, &["rollout", "promote", "shop", "--full"]);
        eventually(Duration::from_secs(5), "completed", || async {
            cli(&path, &["rollout", "status", "shop"])
                .1
                .contains("status: completed")
        })
        .await;
        // --watch on a finished rollout writes once and ends (one line: not a terminal).
        let out = cli_ok(&path, &["rollout", "status", "shop", "--watch"]);
        assert_eq!(
            out, "rollout #1 of shop: completed, step 2 of 2, weights green 100%\n",
            "{out}"
        );

        let out = cli_ok(&path, &["rollout", "undo", "shop"]);
        assert!(out.contains("status: rolled_back"), "{out}");
        let err = cli_fails(&path, &["rollout", "promote", "shop"]);
        assert!(
            err.contains("409") && err.contains("is rolled_back"),
            "{err}"
        );

        let (_, out, _) = cli(&path, &["rollout", "history", "shop"]);
        assert!(out.contains("#1") && out.contains("rolled_back"), "{out}");
        let (_, out, _) = cli(&path, &["events", "--service", "shop"]);
        // $USER, else the login name (as `id -un` says).
        let user = std::env::var("USER").unwrap_or_else(|_| {
            let id = std::process::Command::new("id").arg("-un").output().unwrap();
            String::from_utf8(id.stdout).unwrap().trim().to_string()
        });
        assert!(
            out.contains(&format!("admin for cli:{user}"))
                && out.contains("started")
                && out.contains("rolled_back"),
            "{out}"
        );
        assert_eq!(backend_of(&format!("http://{web}/")).await, "blue");
    }
}

/// Appends `text` to the config file (tables after the groups belong to the service).
fn append(path: &std::path::Path, text: &str) {
    let mut config = std::fs::read_to_string(path).unwrap();
    config.push_str(text);
    std::fs::write(path, config).unwrap();
}

/// Kills the instance with SIGKILL and starts another on the same files, which it returns
/// once its admin API answers.
async fn kill_and_restart(
    running: &mut Running,
    path: &std::path::Path,
    admin: std::net::SocketAddr,
) -> Running {
    signal(&running.child, "-KILL");
    running.child.wait().unwrap();
    run_binary(path, admin).await
}

/// Which backends answered 50 requests without and 10 with the preview header.
async fn answered(web: std::net::SocketAddr) -> (Vec<String>, Vec<String>) {
    let url = format!("http://{web}/");
    let public = measure(&url, 50, 1, &[]).await;
    let preview = measure(&url, 10, 1, &[("x-preview", "1")]).await;
    (public.into_keys().collect(), preview.into_keys().collect())
}

/// Waits until a restarted rollout's guard has judged its window (no more `waiting_for`).
async fn released(api: &switchyard::client::AdminClient) -> serde_json::Value {
    wait_status(api, 20, |r| r["waiting_for"].is_null()).await
}

bounded_test! {
    /// SIGKILL in the preview of a blue-green rollout and again in its scale-down window: each
    /// restart serves what was committed (preview: stable for all, the candidate by preview;
    /// switched: the candidate for all), and the rollout goes on from there to a rollback.
    async fn sigkill_during_a_blue_green_restarts_with_the_traffic_as_committed() {
        let bin = Binary::setup().await;
        let (path, web, admin_addr) = (bin.path.clone(), bin.web, bin.admin);
        append(
            &path,
            "[service.strategy]\nkind = \"blue-green\"\nscale_down_delay = \"1h\"\n",
        );
        small_guard(&path, "1s");
        let text = std::fs::read_to_string(&path).unwrap().replace(
            "forward = \"shop\"\n",
            "forward = \"shop\"\n[[route.override]]\ngroup = \"candidate\"\nheader = { name = \"x-preview\", values = [\"1\"] }\n",
        );
        std::fs::write(&path, text).unwrap();
        let api = admin_at(admin_addr);
        let mut running = run_binary(&path, admin_addr).await;
        start_green(&api).await;
        wait_status(&api, 10, paused_at(0)).await;

        running = kill_and_restart(&mut running, &path, admin_addr).await;
        assert_eq!(answered(web).await, (vec!["blue".into()], vec!["green".into()]));
        let r = released(&api).await;
        assert_eq!((r["status"].as_str(), r["weight"].as_u64()), (Some("paused"), Some(0)), "{r}");
        promote(&api).await;
        // Switched and in the scale-down window, with the pause checkpointed: the switch is
        // then confirmed (an unconfirmed last step resumes below it, see store_outage).
        let r = wait_status(&api, 10, |r| {
            r["weight"] == 10000 && r["pause_elapsed_ms"].as_u64() >= Some(1000)
        })
        .await;
        assert_eq!(r["status"], "progressing", "in the scale-down window: {r}");

        running = kill_and_restart(&mut running, &path, admin_addr).await;
        assert_eq!(answered(web).await, (vec!["green".into()], vec!["green".into()]));
        let r = rollout(&api).await;
        assert_eq!((r["weight"].as_u64(), r["step"].clone()), (Some(10000), json!(3)), "{r}");
        // The rollback of the window still works after the restart.
        let r = verb(&api, "abort", json!({})).await;
        assert_eq!(r["status"], "aborted");
        assert_eq!(answered(web).await.0, vec!["blue".to_string()]);
        drop(running);
    }
}

bounded_test! {
    /// SIGKILL in the middle of an analysis step: the restarted rollout is held (guard window)
    /// at the recorded weight, then runs the analysis again from its start and goes on when it
    /// passes; killed in the next analysis step with the check now failing, it rolls back.
    async fn sigkill_during_an_analysis_step_holds_then_judges_again_and_goes_on_or_rolls_back() {
        let bin = Binary::setup().await;
        let (path, admin_addr) = (bin.path.clone(), bin.admin);
        let (runs, ok) = (bin.dir.path().join("runs"), bin.dir.path().join("ok"));
        std::fs::write(&ok, "").unwrap();
        small_guard(&path, "1s");
        append(
            &path,
            &format!(
                "[[analysis]]\nname = \"judge\"\ninterval = \"300ms\"\ncount = 5\n[[analysis.check]]\nname = \"judge\"\ncommand = \"echo run >> {}; test -e {}\"\n",
                runs.display(),
                ok.display()
            ),
        );
        let count = || std::fs::read_to_string(&runs).unwrap_or_default().lines().count();
        let api = admin_at(admin_addr);
        let mut running = run_binary(&path, admin_addr).await;
        start_rollout(
            &api,
            json!({ "kind": "canary", "steps": [
                { "weight": 20 }, { "analysis": "judge" },
                { "weight": 40 }, { "analysis": "judge" },
                { "weight": 60 }, { "pause": "until-promoted" },
            ]}),
        )
        .await;
        eventually(Duration::from_secs(10), "the first analysis measured", || async {
            count() >= 1
        })
        .await;

        // An analysis step writes nothing, so the step to 20 % is the last record and is
        // unconfirmed: the restart holds at most at 20 % (README: "After a restart").
        running = kill_and_restart(&mut running, &path, admin_addr).await;
        let before = count();
        let r = rollout(&api).await;
        assert_eq!(r["step"], 1, "{r}");
        assert!(r["weight"].as_u64() <= Some(2000), "{r}");
        assert!(r["waiting_for"].as_str().is_some_and(|w| w.contains("guard")), "{r}");
        // Once released: back at 20 %, judged again from the start (five measurements after
        // the restart), and on to the next step.
        let r = wait_status(&api, 20, |r| {
            let held = !r["waiting_for"].is_null();
            // The first measurement comes an interval (300 ms) after the analysis starts.
            assert!(!held || count() == before, "measured while held: {r}");
            !held
        })
        .await;
        assert_eq!((r["step"].as_u64(), r["weight"].as_u64()), (Some(1), Some(2000)), "{r}");
        let r = wait_status(&api, 20, |r| r["step"].as_u64() >= Some(3)).await;
        assert_eq!(r["weight"], 4000, "{r}");
        assert!(count() >= before + 5, "judged again from the start");
        eventually(Duration::from_secs(10), "the second analysis measured", || async {
            count() >= before + 6
        })
        .await;

        std::fs::remove_file(&ok).unwrap();
        running = kill_and_restart(&mut running, &path, admin_addr).await;
        let r = rollout(&api).await;
        assert_eq!(r["step"], 3, "{r}");
        assert!(r["weight"].as_u64() <= Some(4000), "{r}");
        assert!(r["waiting_for"].as_str().is_some_and(|w| w.contains("guard")), "{r}");
        let r = wait_status(&api, 20, |r| r["status"] == "aborted").await;
        assert!(reason(&r).contains("analysis failed: judge"), "{r}");
        assert_eq!(r["weight"], 0);
        drop(running);
    }
}

bounded_test! {
    /// SIGKILL while a rollout's `on_rollback` hook runs: the record says the end work is
    /// still due, so the restarted process runs the hook again (a single instance runs it at
    /// least once; it has no one to leave the decision to), records it, and not a third time.
    async fn sigkill_during_an_on_rollback_hook_runs_it_again_after_the_restart() {
        let bin = Binary::setup().await;
        let (path, admin_addr) = (bin.path.clone(), bin.admin);
        let runs = path.with_extension("runs");
        append(
            &path,
            &format!(
                "[service.hooks.on_rollback]\ncommand = \"echo start >> {0}; sleep 3; echo end >> {0}\"\ntimeout = \"20s\"\n",
                runs.display()
            ),
        );
        let lines = |word: &str| {
            let text = std::fs::read_to_string(&runs).unwrap_or_default();
            text.lines().filter(|l| *l == word).count()
        };
        let api = admin_at(admin_addr);
        let mut running = run_binary(&path, admin_addr).await;
        start_rollout(
            &api,
            json!({ "kind": "canary", "steps": [{ "weight": 10 }, { "pause": "until-promoted" }] }),
        )
        .await;
        wait_status(&api, 10, paused_at(1000)).await;
        verb(&api, "abort", json!({})).await;
        // The abort is in the state database (the kill must not undo the end itself).
        released(&api).await;
        eventually(Duration::from_secs(10), "the hook began", || async { lines("start") == 1 }).await;
        assert_eq!(lines("end"), 0, "the hook ended before the kill");
        running = kill_and_restart(&mut running, &path, admin_addr).await;
        eventually(Duration::from_secs(10), "the restart ran the hook to its end", || async {
            lines("start") == 2 && lines("end") >= 1
        })
        .await;
        eventually(Duration::from_secs(5), "the end work is recorded done", || async {
            rollout(&api).await.get("end_work").is_none()
        })
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(lines("start"), 2, "the hook ran a third time");
        drop(running);
    }
}
