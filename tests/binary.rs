//! The real `switchyard` binary: the CLI verbs against a running instance, and the demo.
//! (Signals are in `signals.rs`.)

mod common;

use std::process::Command;

use common::bin::*;
use common::*;

bounded_test! {
    async fn cli_verbs_drive_a_running_instance() {
        let bin = Binary::setup().await;
        let (path, web, admin) = (bin.path.clone(), bin.web, bin.admin);
        let _sy = run_binary(&path, admin).await;

        let out = cli_ok(&path, &["switch", "shop", "green"]);
        assert!(out.contains("shop: blue=100% -> green=100%"), "{out}");
        assert_eq!(backend_of(&format!("http://{web}/")).await, "green");

        let out = cli_ok(&path, &["status"]);
        assert!(out.contains("service shop: green=100%"), "{out}");
        assert!(out.contains("group green"), "{out}");
        let out = cli_ok(&path, &["status", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["services"][0]["split"]["green"], 10000);

        let out = cli_ok(&path, &["switch", "shop", "--back"]);
        assert!(out.contains("-> blue=100%"), "{out}");

        let out = cli_ok(&path, &["weights", "shop", "blue=99.5", "green=0.5"]);
        assert!(out.contains("-> blue=99.5% green=0.5%"), "{out}");

        let err = cli_fails(&path, &["switch", "shop", "teal"]);
        assert!(
            err.contains("404") && err.contains("no group named \"teal\""),
            "{err}"
        );

        let err = cli_fails(&path, &["weights", "shop", "blue=abc"]);
        assert!(
            err.contains("\"abc\" in \"blue=abc\" is not a number"),
            "{err}"
        );

        // Reload of a file that became invalid: the error names line and column. The CLI reads
        // the admin address from that same (now broken) file, so point it at the API directly.
        let broken = std::fs::read_to_string(&path)
            .unwrap()
            .replace("forward = \"shop\"", "forward = \"x\"");
        std::fs::write(&path, broken).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["reload", "--admin", &admin.to_string(), "--token", "t0ken"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("sy.toml:12:11: route[0].forward: no service named \"x\""),
            "{err}"
        );

        let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["status", "--admin", &admin.to_string(), "--token", "wrong"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    }
}

bounded_test! {
    async fn plan_shows_what_apply_then_changes() {
        let (blue, green) = TestBackend::pair().await;
        let green2 = TestBackend::start("green").await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sy.toml");
        let (web, admin) = (free_port(), free_port());
        write_config(&path, web, admin, "blue", blue.addr, green.addr);
        let _sy = run_binary(&path, admin).await;

        let (code, out, _) = cli(&path, &["plan"]);
        assert_eq!((code, out.trim()), (0, "no changes"));

        let next = std::fs::read_to_string(&path)
            .unwrap()
            .replace("active = \"blue\"", "weights = { blue = 90, green = 10 }")
            .replace(
                &format!("targets = [\"{}\"]", green.addr),
                &format!("targets = [\"{}\", \"{}\"]", green.addr, green2.addr),
            )
            + "[service.guard]\nmax_error_rate = 10\n[service.hooks.on_rollback]\ncommand = \"./page.sh\"\n"
            + "[[route]]\nname = \"health\"\npriority = 0\nmatch.path = [\"/lb\"]\nfixed_response = { status = 200, body = \"ok\" }\n";
        std::fs::write(&path, next).unwrap();
        let out = cli_ok(&path, &["plan"]);
        assert!(out.contains("+ route health: priority 0"), "{out}");
        assert!(
            out.contains(&format!(
                "~ service shop › group green › targets: +{}",
                green2.addr
            )),
            "{out}"
        );
        assert!(
            out.contains("~ service shop › split: blue=100% → blue=90% green=10%"),
            "{out}"
        );
        // Settings the hand-written plan never compared: a threshold, a command for the host.
        assert!(
            out.contains("~ service shop › guard › max_error_rate: 5 → 10"),
            "{out}"
        );
        assert!(
            out.contains("+ service shop › hooks › on_rollback: command=./page.sh"),
            "{out}"
        );
        let c = client();
        assert_eq!(
            get(&c, &format!("http://{web}/lb"), &[])
                .await
                .unwrap()
                .status,
            200,
            "the catch-all route"
        );
        assert_eq!(blue.hits(), 1, "plan changed nothing");

        let out = cli_ok(&path, &["apply"]);
        assert!(out.contains("applied: generation"), "{out}");
        let r = get(&c, &format!("http://{web}/lb"), &[]).await.unwrap();
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "ok"));
        let mut greens = 0;
        for _ in 0..1000 {
            if get(&c, &format!("http://{web}/"), &[])
                .await
                .unwrap()
                .backend()
                == "green"
            {
                greens += 1;
            }
        }
        assert!(
            (60..=140).contains(&greens),
            "{greens} of 1000 on green at 10%"
        );
        assert!(green2.hits() > 0, "the added target serves");

        // An invalid file: plan says where, nothing changes.
        let broken = std::fs::read_to_string(&path)
            .unwrap()
            .replace("priority = 0", "priority = \"zero\"");
        let line = 1 + broken.lines().position(|l| l == "priority = \"zero\"").unwrap();
        std::fs::write(&path, broken).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["plan", "-c"])
            .arg(&path)
            .args(["--admin", &admin.to_string(), "--token", "t0ken"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("422") && err.contains(&format!("sy.toml:{line}:12: route[1].priority")),
            "{err}"
        );
    }
}

/// Runs `switchyard demo` with `args` to its successful end; what it printed.
/// `switchyard demo` with short phases (the walk-through is the same; the suite's time is not).
fn demo(args: &[&str]) -> String {
    let (code, out, err) = switchyard(["demo", "--phase", "700ms"].iter().chain(args));
    assert_eq!(code, 0, "{out}\n{err}");
    out
}

#[test]
fn the_demo_runs_to_the_end_without_a_failed_request() {
    let text = demo(&[]);
    let phases: Vec<&str> = text.lines().filter(|l| l.contains(" requests: ")).collect();
    assert_eq!(phases.len(), 8, "{text}");
    assert!(phases.iter().all(|l| l.ends_with("failed 0")), "{text}");
    assert!(
        text.contains("after the switch") && text.contains("green-v2 100.0%"),
        "{text}"
    );
    // Measured by the demo: requests sent after a switch was acknowledged that reached
    // the previous version.
    let done = text
        .lines()
        .find(|l| l.starts_with("done: of "))
        .unwrap_or_else(|| panic!("{text}"));
    let numbers: Vec<u64> = done
        .split(' ')
        .filter_map(|w| w.trim_end_matches(',').parse().ok())
        .collect();
    assert!(matches!(numbers[..], [checked, 0] if checked > 0), "{text}");
}

#[test]
fn the_faulty_demo_is_rolled_back_automatically() {
    let text = demo(&["--faulty"]);
    // Whichever judged first: the guard ("… error rate … exceeds stable blue's …") or the canary's
    // analysis step ("check error-rate failed …") — the sequential guard needs ~1–2 s of
    // evidence at the demo's traffic, and the analysis step runs within that.
    assert!(
        text.contains("rolled back")
            && (text.contains("error rate") || text.contains("check error-rate failed")),
        "{text}"
    );
    let after = text
        .lines()
        .find(|l| l.contains("after the rollback"))
        .unwrap();
    assert!(
        after.contains("green-v2   0.0%") && after.ends_with("failed 0"),
        "{text}"
    );
}

bounded_test! {
    async fn analysis_run_prints_each_checks_value_and_verdict() {
        let bin = Binary::setup().await;
        let (path, web, admin) = (bin.path.clone(), bin.web, bin.admin);
        let extra = "[[analysis]]\nname = \"health\"\nmin_requests = 5\n[[analysis.check]]\nname = \"errors\"\nmetric = \"error-rate\"\nmax = 1\n[[analysis.check]]\nname = \"gate\"\ncommand = \"exit 1\"\n";
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replacen("[[service]]", &format!("{extra}[[service]]"), 1)
            .replacen(
                "forward = \"shop\"",
                "forward = \"shop\"\n[[route.override]]\ngroup_from_header = \"x-switchyard-group\"",
                1,
            );
        std::fs::write(&path, text).unwrap();
        let _sy = run_binary(&path, admin).await;
        let c = client();
        for _ in 0..20 {
            get(
                &c,
                &format!("http://{web}/"),
                &[("x-switchyard-group", "green")],
            )
            .await
            .unwrap();
        }
        let (code, out, err) = cli(
            &path,
            &[
                "analysis",
                "run",
                "shop",
                "--analysis",
                "health",
                "--candidate",
                "green",
            ],
        );
        assert_eq!(code, 3, "a failing check exits 3: {out}{err}");
        assert!(
            out.contains("shop: candidate green against stable blue"),
            "{out}"
        );
        assert!(
            out.contains("errors") && out.contains("pass") && out.contains("error rate of green 0.00%"),
            "{out}"
        );
        assert!(
            out.contains("gate") && out.contains("fail") && out.contains("`exit 1` exited 1"),
            "{out}"
        );
        let err = cli_fails(&path, &["analysis", "run", "shop"]);
        assert!(
            err.contains("422") && err.contains("name a `candidate`"),
            "{err}"
        );
    }
}

/// `demo --fleet`: a real etcd and three instances; the leader is stopped mid-canary without
/// resigning, another leads, the rollout completes, and no client request failed.
#[test]
fn the_fleet_demo_loses_its_leader_mid_canary_and_the_rollout_completes() {
    let text = demo(&["--fleet"]);
    let took: u64 = text
        .lines()
        .find_map(|l| l.split(" leads after ").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no new leader:\n{text}"));
    // The demo's lease is 2 s: the others take over once it ran out, not before, and soon.
    assert!((1000..=3500).contains(&took), "took {took} ms:\n{text}");
    assert!(text.contains("done: the rollout completed"), "{text}");
    let per_instance: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" requests answered, "))
        .collect();
    assert_eq!(per_instance.len(), 3, "{text}");
    // A request in flight to the stopped one may fail, as in a crash; none to the others.
    let survivors: Vec<&&str> = per_instance
        .iter()
        .filter(|l| !l.contains("stopped mid-rollout"))
        .collect();
    assert_eq!(survivors.len(), 2, "{text}");
    assert!(survivors.iter().all(|l| l.contains(", 0 failed")), "{text}");
}
