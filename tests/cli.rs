//! The CLI as an operator uses it, through the real binary against a real instance: closed
//! pipes, the incident path (flags over a broken file), errors that say what to do, `--json`,
//! `--watch` into a pipe, what verbs print, input as people type it, `init`, `--version`.

mod common;

use std::io::{BufRead, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::bin::*;
use common::*;
use serde_json::json;

/// Runs `switchyard ARGS -c path` with standard output a pipe that is closed after one line
/// was read (`| head -1`): its exit status and standard error.
async fn into_head(path: &Path, args: &[&str]) -> (std::process::ExitStatus, String) {
    let path = path.to_str().unwrap();
    let (status, err, _) = head(&[args, &["-c", path]].concat(), 1).await;
    (status, err)
}

/// Runs `switchyard ARGS` with standard output a pipe that is closed after `lines` lines
/// were read (`| head -N`): its exit status, standard error and the lines.
async fn head(args: &[&str], lines: usize) -> (std::process::ExitStatus, String, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).ok();
        text
    });
    let mut read = Vec::new();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    for _ in 0..lines {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "the output ended after {read:?}");
        read.push(line);
    }
    // The reader is dropped here: the pipe's read end is closed, as `head` does.
    drop(out);
    let (status, _) = exit_of(&mut child, Instant::now(), TEST_LIMIT).await;
    (status, err.join().unwrap(), read)
}

fn assert_quiet_end(what: &str, status: std::process::ExitStatus, err: &str) {
    assert_ne!(status.code(), Some(101), "{what} panicked: {err}");
    assert!(
        status.success() || status.code().is_none(),
        "{what}: {status:?} {err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{what}: {err}"
    );
}

/// An admin client for the instance, once it started a rollout of `shop` to `green`.
async fn rollout_started(admin: std::net::SocketAddr) -> switchyard::client::AdminClient {
    let api = admin_at(admin);
    api.post(
        "/api/v1/rollouts",
        json!({"service": "shop", "candidate": "green"}),
    )
    .await
    .unwrap();
    api
}

bounded_test! {
    /// `demo | head -2` and `demo --fleet | head -3` end quietly and soon (exit 0, no panic),
    /// and the fleet demo's etcd goes with it (its port refuses connections afterwards).
    async fn demos_into_a_pipe_closed_early_end_quietly_and_stop_their_etcd() {
        let began = Instant::now();
        let (status, err, _) = head(&["demo", "--phase", "300ms"], 2).await;
        assert_quiet_end("demo | head -2", status, &err);
        let (status, err, lines) = head(&["demo", "--fleet", "--phase", "300ms"], 3).await;
        assert_quiet_end("demo --fleet | head -3", status, &err);
        let etcd = lines[1]
            .trim()
            .strip_prefix("etcd on http://")
            .unwrap_or_else(|| panic!("no etcd line in {lines:?}"));
        assert!(
            std::net::TcpStream::connect(etcd).is_err(),
            "the demo's etcd on {etcd} still answers"
        );
        println!("both demos ended in {:?}", began.elapsed());
    }
}

bounded_test! {
    /// The output (3000 targets, one line each: about 150 KiB) is far over a pipe's 64 KiB
    /// buffer, so the command is still writing when the reader goes away.
    async fn status_into_a_pipe_closed_after_one_line_ends_quietly() {
        let bin = Binary::setup().await;
        // Never connected to: no health checks.
        let many: Vec<std::net::SocketAddr> = (0..3000)
            .map(|i| format!("127.0.0.2:{}", 10_000 + i).parse().unwrap())
            .collect();
        let cfg = blue_green(bin.blue.addr, bin.green.addr)
            .group("many", &many)
            .bound_to(bin.web, bin.admin);
        std::fs::write(&bin.path, cfg.build()).unwrap();
        let _sy = run_binary(&bin.path, bin.admin).await;
        let (status, err) = into_head(&bin.path, &["status"]).await;
        assert_quiet_end("status | head -1", status, &err);
    }
}

bounded_test! {
    /// 150 aborts with a 500-character reason: about 80 KiB of events, far over a pipe's
    /// buffer.
    async fn events_into_a_pipe_closed_after_one_line_end_quietly() {
        let bin = Binary::setup().await;
        let _sy = run_binary(&bin.path, bin.admin).await;
        let api = rollout_started(bin.admin).await;
        let reason = "x".repeat(500);
        for _ in 0..150 {
            api.post("/api/v1/services/shop/rollout/abort", json!({ "reason": reason }))
                .await
                .unwrap();
            api.post("/api/v1/services/shop/rollout/retry", json!({}))
                .await
                .unwrap();
        }
        let (status, err) = into_head(&bin.path, &["events", "--limit", "1000"]).await;
        assert_quiet_end("events | head -1", status, &err);
    }
}

bounded_test! {
    async fn a_broken_config_file_stops_no_verb_given_admin_and_token_and_is_named_otherwise() {
        let bin = Binary::setup().await;
        let _sy = run_binary(&bin.path, bin.admin).await;
        rollout_started(bin.admin).await;
        let broken = bin.dir.path().join("my.toml");
        std::fs::write(&broken, "[admin]\nbind = \"127.0.0.1:1\"\nbindd = 3\n").unwrap();
        let admin = bin.admin.to_string();

        // Address by flag, token from the environment: the broken file is not needed.
        let (code, out, err) = switchyard_with(
            ["rollout", "abort", "shop", "--admin", &admin, "-c"]
                .map(std::ffi::OsStr::new)
                .into_iter()
                .chain([broken.as_os_str()]),
            |c| {
                c.env("SWITCHYARD_TOKEN", "t0ken");
            },
        );
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("status: aborted"), "{out}");

        // Without the address the file is needed: the error names it and says what to pass.
        let err = cli_fails(&broken, &["rollout", "abort", "shop"]);
        assert!(
            err.contains("my.toml")
                && err.contains("bindd")
                && err.contains("pass --admin ADDR and --token TOKEN"),
            "{err}"
        );

        // An address but no token: the file's problems are noted, and the API's refusal says
        // which flag gives one.
        let (code, _, err) = cli(&broken, &["status", "--admin", &admin]);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("my.toml is not valid"), "{err}");
        assert!(err.contains("401") && err.contains("pass --token TOKEN"), "{err}");
    }
}

#[test]
fn an_unreachable_admin_api_is_named_with_the_address_its_source_the_cause_and_the_fix() {
    let dead = free_port().to_string();
    let (code, _, err) = switchyard(["status", "--admin", &dead]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "cannot reach the admin API at {dead} (from --admin"
        )) && err.contains("connection refused")
            && err.contains("is switchyard running there? pass -c FILE"),
        "{err}"
    );

    // From the file: the file is named.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sy.toml");
    let (web, admin) = (free_port(), free_port());
    write_config(&path, web, admin, "blue", free_port(), free_port());
    let err = cli_fails(&path, &["status"]);
    assert!(
        err.contains(&format!(
            "at {admin} (from [admin] bind in {}",
            path.display()
        )),
        "{err}"
    );

    // No file and no --admin: said, not silently the default.
    let (_, _, err) = switchyard_with(["status"], |c| {
        c.current_dir(dir.path()).env_remove("SWITCHYARD_ADMIN");
    });
    assert!(
        err.contains("127.0.0.1:9901, the default: no switchyard.toml here and no --admin"),
        "{err}"
    );

    // `analysis run` tells "could not ask" from every verdict by its exit code.
    let (code, _, err) = switchyard(["analysis", "run", "shop", "--admin", &dead]);
    assert_eq!(code, 5, "{err}");
}

/// The API's answer for `path`, through the test's own client.
async fn api_get(admin: std::net::SocketAddr, path: &str) -> serde_json::Value {
    admin_at(admin).get(path).await.unwrap()
}

fn json_of(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

bounded_test! {
    async fn every_read_verb_prints_the_apis_own_answer_with_json() {
        let bin = Binary::setup().await;
        let text = std::fs::read_to_string(&bin.path).unwrap().replacen(
            "[[service]]",
            "[[analysis]]\nname = \"gate\"\n[[analysis.check]]\nname = \"ok\"\ncommand = \"exit 0\"\n[[service]]",
            1,
        );
        std::fs::write(&bin.path, text).unwrap();
        let _sy = run_binary(&bin.path, bin.admin).await;
        let path = &bin.path;
        cli_ok(path, &["rollout", "start", "shop", "green", "--strategy", "canary-50pct-1h"]);

        let events = json_of(&cli_ok(path, &["events", "--json"]));
        assert_eq!(events, api_get(bin.admin, "/api/v1/events?limit=50").await);
        let history = json_of(&cli_ok(path, &["rollout", "history", "--json"]));
        assert_eq!(history, api_get(bin.admin, "/api/v1/rollouts?limit=20").await);

        let mut status = json_of(&cli_ok(path, &["rollout", "status", "shop", "--json"]));
        let mut api = api_get(bin.admin, "/api/v1/services/shop/rollout").await;
        // Measured over the last seconds: equal only in its field names. The guard's first
        // look may come between the two readings (seen under a loaded suite).
        for v in [&mut status, &mut api] {
            for live in ["observed", "pause_elapsed_ms", "guard"] {
                v.as_object_mut().unwrap().remove(live);
            }
        }
        assert_eq!(status, api);
        assert_eq!(status["step"], 1, "JSON counts steps from 0");

        let status = json_of(&cli_ok(path, &["status", "--json"]));
        assert_eq!(status["services"][0]["split"]["green"], 5000, "{status}");

        let plan = json_of(&cli_ok(path, &["plan", "--json"]));
        assert_eq!(plan["changes"], json!([]), "{plan}");

        let (code, out, err) = cli(
            path,
            &["analysis", "run", "shop", "--analysis", "gate", "--candidate", "green", "--json"],
        );
        assert_eq!(code, 0, "every check passed: {out}{err}");
        let run = json_of(&out);
        assert_eq!(run["results"][0]["measurement"]["outcome"], "pass", "{run}");
    }
}

/// The service `shop` with a canary of two short pauses (its own `[service.strategy]`).
fn short_canary(bin: &Binary, pause: &str) {
    let cfg = blue_green(bin.blue.addr, bin.green.addr)
        .service(&format!(
            "[service.strategy]\nkind = \"canary\"\nsteps = [{{ weight = 20 }}, {{ pause = \"{pause}\" }}, {{ weight = 60 }}, {{ pause = \"{pause}\" }}]"
        ))
        .bound_to(bin.web, bin.admin)
        .top("[timeouts]\nshutdown = \"5s\"");
    std::fs::write(&bin.path, cfg.build()).unwrap();
}

bounded_test! {
    async fn watch_into_a_pipe_prints_one_plain_line_per_change_and_the_log_has_no_colour() {
        let bin = Binary::setup().await;
        short_canary(&bin, "1s");
        let _sy = run_binary(&bin.path, bin.admin).await;
        cli_ok(&bin.path, &["rollout", "start", "shop", "green"]);
        let out = cli_ok(&bin.path, &["rollout", "status", "shop", "--watch"]);
        assert!(!out.contains('\x1b'), "escapes in a pipe: {out:?}");
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines.len() >= 2, "{out}");
        assert!(lines.windows(2).all(|w| w[0] != w[1]), "a line repeated: {out}");
        assert!(
            lines.last().unwrap().contains("completed, step 4 of 4, weights green 100%"),
            "{out}"
        );
        let log = logged(&bin.path);
        assert!(!log.is_empty() && !log.contains('\x1b'), "{log:?}");
    }
}

bounded_test! {
    async fn rollout_views_count_steps_and_attempts_from_one_and_show_the_pause_left() {
        let bin = Binary::setup().await;
        short_canary(&bin, "1h");
        let _sy = run_binary(&bin.path, bin.admin).await;
        cli_ok(&bin.path, &["rollout", "start", "shop", "green"]);
        eventually(Duration::from_secs(5), "in the first pause", || async {
            cli_ok(&bin.path, &["rollout", "status", "shop"]).contains("[>] 2. pause 1h")
        })
        .await;
        let out = cli_ok(&bin.path, &["rollout", "status", "shop"]);
        assert!(out.contains("attempt 1)") && out.contains("] step 2 of 4"), "{out}");
        assert!(out.contains("[>] 2. pause 1h  (") && out.contains("left of 1h)"), "{out}");
        let out = cli_ok(&bin.path, &["status"]);
        assert!(out.contains("progressing, step 2 of 4, candidate at 20%"), "{out}");

        // A verb prints the state after it: no "observed" line it did not measure.
        let out = cli_ok(&bin.path, &["rollout", "abort", "shop"]);
        assert!(
            out.contains("status: aborted") && out.contains("weights:  blue 100%\n"),
            "{out}"
        );
        assert!(!out.contains("observed"), "{out}");
        let out = cli_ok(&bin.path, &["rollout", "retry", "shop"]);
        assert!(out.contains("attempt 2)"), "{out}");
        let out = cli_ok(&bin.path, &["rollout", "status", "shop", "--json"]);
        assert_eq!(json_of(&out)["attempt"], 1, "JSON counts attempts from 0");

        // A promote past the last step prints the rollout completed, not the weights before.
        cli_ok(&bin.path, &["rollout", "promote", "shop"]);
        eventually(Duration::from_secs(5), "in the last pause", || async {
            cli_ok(&bin.path, &["rollout", "status", "shop"]).contains("[>] 4. pause 1h")
        })
        .await;
        let out = cli_ok(&bin.path, &["rollout", "promote", "shop"]);
        assert!(
            out.contains("status: completed") && out.contains("weights:  green 100%"),
            "{out}"
        );
    }
}

bounded_test! {
    async fn input_is_taken_as_people_type_it_and_mistakes_are_said_plainly() {
        let bin = Binary::setup().await;
        let _sy = run_binary(&bin.path, bin.admin).await;
        let path = &bin.path;
        let out = cli_ok(path, &["weights", "shop", "blue=50%", "green=50%"]);
        assert!(out.contains("-> blue=50% green=50%"), "{out}");
        let err = cli_fails(path, &["weights", "shop", "blue=99.995", "green=0.005"]);
        assert!(err.contains("finer than 0.01"), "{err}");

        let port = bin.admin.port().to_string();
        let out = String::from_utf8(
            Command::new(env!("CARGO_BIN_EXE_switchyard"))
                .args(["status", "--admin", &port, "--token", "t0ken"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        assert!(out.contains("service shop: blue=50% green=50%"), "{out}");
        let (code, _, err) = switchyard(["status", "--admin", "lb-1"]);
        assert_eq!(code, 1);
        assert!(err.contains("--admin \"lb-1\": give HOST:PORT"), "{err}");

        let err = cli_fails(path, &["events", "--service", "nope"]);
        assert!(err.contains("no service named \"nope\" (services: shop)"), "{err}");

        // Without $USER the actor is the login name, as `id -un` says.
        let login = Command::new("id").arg("-un").output().unwrap();
        let login = String::from_utf8(login.stdout).unwrap().trim().to_string();
        let (code, out, err) = switchyard_with(
            ["switch", "shop", "green", "-c"]
                .map(std::ffi::OsStr::new)
                .into_iter()
                .chain([path.as_os_str()]),
            |c| {
                c.env_remove("USER");
            },
        );
        assert_eq!(code, 0, "{out}{err}");
        let events = api_get(bin.admin, "/api/v1/events?kind=switch").await;
        assert_eq!(events[0]["on_behalf_of"], format!("cli:{login}"), "{events}");
    }
}

bounded_test! {
    async fn init_writes_a_valid_file_that_the_bare_verbs_use_from_its_directory() {
        let (blue, green) = TestBackend::pair().await;
        let dir = tempfile::tempdir().unwrap();
        let (web, admin) = (free_port(), free_port());
        let in_dir = |c: &mut Command| {
            c.current_dir(dir.path())
                .env_remove("SWITCHYARD_ADMIN")
                .env_remove("SWITCHYARD_TOKEN");
        };
        let (blue_g, green_g) = (format!("blue={}", blue.addr), format!("green={}", green.addr));
        let (web_s, admin_s) = (web.to_string(), admin.to_string());
        let args = [
            "init", "--service", "shop", "--group", &blue_g, "--group", &green_g, "--listen",
            &web_s, "--admin", &admin_s,
        ];
        let (code, out, err) = switchyard_with(args, in_dir);
        assert_eq!(code, 0, "{out}{err}");
        let path = dir.path().join("switchyard.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# switchyard starter configuration"), "{text}");
        let (code, out, err) = switchyard_with(["validate"], in_dir);
        assert_eq!(code, 0, "{out}{err}");

        let (code, _, err) = switchyard_with(args, in_dir);
        assert_eq!(code, 1);
        assert!(err.contains("exists: use --force"), "{err}");

        let _sy = run_binary(&path, admin).await;
        assert_eq!(backend_of(&format!("http://{web}/")).await, "blue");
        let (code, out, err) = switchyard_with(["switch", "shop", "green"], in_dir);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("shop: blue=100% -> green=100%"), "{out}");
        assert_eq!(backend_of(&format!("http://{web}/")).await, "green");
    }
}

#[test]
fn version_names_the_git_commit_it_was_built_from() {
    let (code, out, _) = switchyard(["--version"]);
    assert_eq!(code, 0);
    let head = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    assert_eq!(
        out.trim(),
        format!("switchyard {} (commit {head})", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_for_every_verb_is_printed() {
    let (_, out, _) = switchyard(["--help"]);
    let verbs: Vec<String> = out
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    assert!(verbs.len() > 10, "{out}");
    for verb in verbs {
        let (code, out, err) = switchyard(["help", &verb]);
        assert_eq!(code, 0, "help {verb}: {err}");
        assert!(out.contains("Usage: switchyard"), "help {verb}: {out}");
    }
}

#[test]
fn zero_workers_is_refused_as_input_instead_of_panicking() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["run", "--workers", "0", "-c", "/nonexistent.toml"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("0 is not in 1..=1024") && !err.contains("panicked"),
        "{err}"
    );
}
