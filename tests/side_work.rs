//! Side work is bounded: commands that time out take their whole process group with them,
//! answers from Prometheus and webhooks are read up to a cap, and files named by the
//! configuration are read only when they are regular files (never a FIFO that blocks).
//! Misbehaving peers are raw TCP servers written here; commands are real processes.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::release::*;
use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn cfg(blue: SocketAddr, green: SocketAddr, top: &str, service: &str) -> String {
    blue_green(blue, green).top(top).service(service).build()
}

/// Whether a killed process is gone: no such pid, or a zombie whose parent is not this
/// process. A killed orphan is reparented to PID 1 (or a subreaper), which in a container
/// may reap lazily or never; it runs nothing. A zombie whose parent is this test process
/// (switchyard runs in-process here) would be one switchyard failed to reap: not gone.
fn gone(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // After the command name in parentheses: state, then the parent's pid.
    let mut fields = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace())
        .into_iter()
        .flatten();
    let (state, parent) = (fields.next(), fields.next());
    state == Some("Z") && parent != Some(std::process::id().to_string().as_str())
}

async fn background_pid(pidfile: &Path) -> u32 {
    let mut pid = None;
    eventually(Duration::from_secs(5), "the command wrote its pid", || {
        let found = std::fs::read_to_string(pidfile)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        pid = found;
        async move { found.is_some() }
    })
    .await;
    pid.unwrap()
}

fn read_pid(pidfile: &Path) -> Option<u32> {
    std::fs::read_to_string(pidfile)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
}

/// Runs `attempt(n)` — which ends once the command was killed — until the command had
/// written its background child's pid first (5 runs at most): on a loaded box the kill at a
/// short timeout may come before the shell forked, and then there is nothing to check yet.
/// So the timeouts stay short and the test waits for the state it needs, not for a margin.
async fn forked<F, Fut>(pidfile: &Path, mut attempt: F) -> u32
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for n in 0..5 {
        attempt(n).await;
        if let Some(pid) = read_pid(pidfile) {
            return pid;
        }
    }
    panic!("the command was killed before it forked its background child, 5 times");
}

/// Starts the rollout (attempt 0) or retries it, and waits until that attempt is aborted.
async fn aborted_attempt(api: &switchyard::client::AdminClient, n: u32) {
    if n == 0 {
        start_green(api).await;
    } else {
        verb(api, "retry", json!({})).await;
    }
    wait_rollout(api, "the attempt is aborted", |r| {
        r["status"] == "aborted" && r["attempt"] == n
    })
    .await;
}

/// Backends, and a switchyard whose analysis `cmd` has one check, also `cmd`, that runs
/// `command` with `timeout`.
async fn command_check(command: &str, timeout: &str) -> (TestBackend, TestBackend, Server) {
    let analysis = format!(
        "[[analysis]]\nname = \"cmd\"\n[[analysis.check]]\nname = \"cmd\"\ncommand = {command:?}\ntimeout = \"{timeout}\"\n"
    );
    serve_pair(|b, g| cfg(b, g, &analysis, "")).await
}

/// `sleep 30 & echo $! > PIDFILE; sleep 30`: a background child and a foreground one.
fn orphan_maker(pidfile: &Path) -> String {
    format!("sleep 30 & echo $! > {}; sleep 30", pidfile.display())
}

bounded_test! {
    async fn a_check_command_that_times_out_is_killed_with_its_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("bg.pid");
        let (_blue, _green, sy) = command_check(&orphan_maker(&pidfile), "2s").await;
        let api = admin(&sy);
        let pid = forked(&pidfile, |_| async {
            let started = Instant::now();
            let res = dry_run(&api, "cmd").await;
            assert!(started.elapsed() < Duration::from_secs(10));
            let m = &res["results"][0]["measurement"];
            assert_eq!(m["outcome"], "error", "{m}");
            assert!(
                m["detail"].as_str().unwrap().contains("did not finish"),
                "{m}"
            );
        })
        .await;
        eventually(
            Duration::from_secs(3),
            "the background child of the timed-out check is gone",
            || async move { gone(pid) },
        )
        .await;
    }
}

/// A before_traffic hook that leaves a background child, run with `settings` (a service's
/// `progress_deadline` and the hook's `timeout`) until its attempt is aborted: the child is
/// gone with the hook's process group.
async fn hook_killed_with_its_group(progress_deadline: &str, hook_timeout: &str) {
    let (blue, green) = TestBackend::pair().await;
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("bg.pid");
    let service = format!(
        "progress_deadline = \"{progress_deadline}\"\n[service.strategy]\nkind = \"all-at-once\"\n[service.hooks.before_traffic]\ncommand = {:?}\ntimeout = \"{hook_timeout}\"\nretries = 0\n",
        orphan_maker(&pidfile)
    );
    let sy = start(&cfg(blue.addr, green.addr, "", &service)).await;
    let api = admin(&sy);
    let pid = forked(&pidfile, |n| aborted_attempt(&api, n)).await;
    eventually(
        Duration::from_secs(5),
        "the background child of the killed hook is gone",
        || async move { gone(pid) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_command_that_times_out_is_killed_with_its_whole_process_group() {
    bounded(TEST_LIMIT, hook_killed_with_its_group("10m", "2s")).await;
}

/// A hook cut off by the progress deadline (the driver drops it) takes its process group
/// with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_cut_off_by_the_progress_deadline_is_killed_with_its_process_group() {
    bounded(TEST_LIMIT, hook_killed_with_its_group("2s", "60s")).await;
}

/// A raw HTTP server that answers every connection with `head` and then `body_bytes` of
/// filler (or, with `None`, filler until the peer goes away), and never closes by itself.
async fn flood_server(head: &'static str, body_bytes: Option<usize>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut req = [0u8; 4096];
                let _ = s.read(&mut req).await;
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b'7'; 64 * 1024];
                let mut sent = 0usize;
                // At most 64 MiB in any case: a broken cap must fail the test, not the host.
                while sent < body_bytes.unwrap_or(64 << 20) {
                    let framed = if head.contains("chunked") {
                        let mut c = format!("{:x}\r\n", chunk.len()).into_bytes();
                        c.extend_from_slice(&chunk);
                        c.extend_from_slice(b"\r\n");
                        c
                    } else {
                        chunk.clone()
                    };
                    if s.write_all(&framed).await.is_err() {
                        return;
                    }
                    sent += chunk.len();
                }
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
        }
    });
    addr
}

bounded_test! {
    async fn huge_prometheus_and_webhook_answers_are_cut_at_the_cap_and_are_errors() {
        let (blue, green) = TestBackend::pair().await;
        let endless = flood_server(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
        None,
    )
    .await;
        let declared = flood_server(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 314572800\r\n\r\n",
        None,
    )
    .await;
        let analysis = format!(
            r#"[[analysis]]
name = "big"
[[analysis.check]]
name = "prom-endless"
prometheus = {{ url = "http://{endless}", query = "up" }}
max = 1.0
timeout = "8s"
[[analysis.check]]
name = "prom-declared"
prometheus = {{ url = "http://{declared}", query = "up" }}
max = 1.0
timeout = "8s"
[[analysis.check]]
name = "hook-endless"
webhook = {{ url = "http://{endless}/" }}
timeout = "8s"
[[analysis.check]]
name = "hook-declared"
webhook = {{ url = "http://{declared}/" }}
timeout = "8s"
"#
        );
        let sy = start(&cfg(blue.addr, green.addr, &analysis, "")).await;
        let res = dry_run(&admin(&sy), "big").await;
        let results = res["results"].as_array().unwrap();
        assert_eq!(results.len(), 4);
        for r in results {
            let m = &r["measurement"];
            assert_eq!(m["outcome"], "error", "{m}");
            // Cut at the cap, not left to run into the timeout.
            assert!(
                m["detail"]
                    .as_str()
                    .unwrap()
                    .contains("larger than 1048576 bytes"),
                "{m}"
            );
        }
    }
}

fn mkfifo(path: &Path) {
    let ok = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(ok.success());
}

/// If a FIFO was opened after all (the bug), a writer lets the blocked reader go so that
/// the test fails instead of hanging.
fn release(fifo: &Path) {
    let fifo = fifo.to_path_buf();
    std::thread::spawn(move || {
        let _ = std::fs::OpenOptions::new().write(true).open(fifo);
    });
}

/// The error `call` (which names `fifo`) is refused with, within 5 s, saying the file is not
/// a regular file. A call that blocks (the FIFO opened after all) lets the reader go and
/// fails the test.
async fn refused_at_once<T: std::fmt::Debug>(
    what: &str,
    fifo: &Path,
    call: impl std::future::Future<Output = Result<T, switchyard::client::ClientError>>,
) -> String {
    let Ok(answer) = tokio::time::timeout(Duration::from_secs(5), call).await else {
        release(fifo);
        panic!("{what} blocked on the FIFO");
    };
    let e = answer.unwrap_err().to_string();
    assert!(e.contains("not a regular file"), "{e}");
    e
}

/// The proxy still answers, from the stable group.
async fn still_serving(web: SocketAddr) {
    let r = get(&client(), &format!("http://{web}/"), &[])
        .await
        .unwrap();
    assert_eq!(r.backend(), "blue");
}

bounded_test! {
    async fn a_fifo_as_certificate_or_config_file_is_refused_at_once_and_the_proxy_keeps_serving() {
        let (blue, green) = TestBackend::pair().await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchyard.toml");
        let text = cfg(blue.addr, green.addr, "", "");
        std::fs::write(&path, &text).unwrap();
        let mut config = switchyard::config::load(&path).unwrap();
        config.store = switchyard::config::StoreConfig::memory();
        let sy = Server::start(config, Some(path.clone())).await.unwrap();
        let web = sy.listener_addr("web").await;
        let api = admin(&sy);

        // A TLS listener whose certificate and key are FIFOs, sent by `plan` / `apply`.
        let fifo = dir.path().join("cert.pem");
        mkfifo(&fifo);
        let with_tls = text.replace(
            "[[route]]",
            &format!(
                "[[listener]]\nname = \"tls\"\nbind = \"127.0.0.1:0\"\n[[listener.certificate]]\ncert = {:?}\nkey = {:?}\n[[route]]",
                fifo.display().to_string(),
                fifo.display().to_string()
            ),
        );
        for endpoint in ["/api/v1/config/plan", "/api/v1/config/apply"] {
            let call = api.post(
                endpoint,
                json!({ "path": path.display().to_string(), "content": with_tls }),
            );
            let e = refused_at_once(endpoint, &fifo, call).await;
            assert!(e.contains("422"), "{e}");
            assert!(e.contains("cert.pem"), "{e}");
        }
        // The configuration file itself replaced by a FIFO: the reload is refused, not stuck.
        std::fs::remove_file(&path).unwrap();
        mkfifo(&path);
        let e = refused_at_once("reload", &path, api.post("/api/v1/reload", json!({}))).await;
        assert!(e.contains("switchyard.toml"), "{e}");
        still_serving(web).await;
    }
}

bounded_test! {
    async fn a_check_command_that_exits_has_what_it_left_running_killed() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("bg.pid");
        let leaver = format!("sleep 30 & echo $! > {}; exit 0", pidfile.display());
        let (_blue, _green, sy) = command_check(&leaver, "20s").await;
        let started = Instant::now();
        let res = dry_run(&admin(&sy), "cmd").await;
        // Not held until the background child ends (it keeps the output pipes open).
        assert!(started.elapsed() < Duration::from_secs(15), "{res}");
        let m = &res["results"][0]["measurement"];
        assert_ne!(m["outcome"], "error", "{m}");
        let pid = background_pid(&pidfile).await;
        eventually(
            Duration::from_secs(5),
            "the background child of the finished check is gone",
            || async move { gone(pid) },
        )
        .await;
    }
}

bounded_test! {
    /// A FIFO as the access log's path: opening it for writing would wait for a reader, on the
    /// runtime, under the control locks. The apply is refused at once, naming the file.
    async fn a_fifo_as_access_log_is_refused_at_once_and_the_proxy_keeps_serving() {
        let (blue, green) = TestBackend::pair().await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchyard.toml");
        let text = cfg(blue.addr, green.addr, "", "");
        std::fs::write(&path, &text).unwrap();
        let sy = server_from_file(&path).await;
        let web = sy.listener_addr("web").await;
        let fifo = dir.path().join("access.log");
        mkfifo(&fifo);
        let with_log = format!(
            "[access_log]\npath = {:?}\n{text}",
            fifo.display().to_string()
        );
        let api = admin(&sy);
        let call = api.post(
            "/api/v1/config/apply",
            json!({ "path": path.display().to_string(), "content": with_log }),
        );
        let e = refused_at_once("apply", &fifo, call).await;
        assert!(e.contains("422"), "{e}");
        assert!(e.contains("access.log"), "{e}");
        still_serving(web).await;
    }
}

bounded_test! {
    /// Commands do not inherit the variables that hold admin tokens (the server's, the CLI's,
    /// every `token_env`), and do inherit the rest. The real binary, so that the environment
    /// is its own and not this test process's.
    async fn commands_do_not_see_the_admin_tokens_in_their_environment() {
        let blue = TestBackend::start("blue").await;
        let dir = tempfile::tempdir().unwrap();
        let (web, admin_addr) = (common::bin::free_port(), common::bin::free_port());
        let path = dir.path().join("switchyard.toml");
        let seen = dir.path().join("env.txt");
        let analysis = format!(
            "[[analysis]]\nname = \"env\"\n[[analysis.check]]\nname = \"env\"\ncommand = {:?}\ntimeout = \"10s\"\n",
            format!("env > {}", seen.display())
        );
        let text = cfg(blue.addr, blue.addr, &analysis, "")
            .replace("bind = \"127.0.0.1:0\"\ntoken = \"t0ken\"", &format!(
                "bind = \"{admin_addr}\"\ntoken_env = \"SY_TEST_MAIN_TOKEN\"\n[[admin.tokens]]\nname = \"bot\"\ntoken_env = \"SY_TEST_BOT_TOKEN\"\n[store]\npath = \":memory:\""
            ))
            .replace("bind = \"127.0.0.1:0\"", &format!("bind = \"{web}\""));
        std::fs::write(&path, text).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["run", "-c"])
            .arg(&path)
            .env("SY_TEST_MAIN_TOKEN", "main-s3cret")
            .env("SY_TEST_BOT_TOKEN", "bot-s3cret")
            .env("SWITCHYARD_ADMIN_TOKEN", "unused-s3cret")
            .env("SWITCHYARD_TOKEN", "cli-s3cret")
            .env("SY_TEST_PLAIN", "visible")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let _running = common::bin::Running { child };
        let api =
            switchyard::client::AdminClient::new(&admin_addr.to_string(), Some("bot-s3cret".into()));
        eventually(Duration::from_secs(10), "the admin API answers", || {
            let api = &api;
            async move { api.get("/api/v1/status").await.is_ok() }
        })
        .await;
        dry_run(&api, "env").await;
        let env = std::fs::read_to_string(&seen).unwrap();
        assert!(env.contains("SY_TEST_PLAIN=visible"), "{env}");
        assert!(env.contains("PATH="), "{env}");
        for secret in ["main-s3cret", "bot-s3cret", "unused-s3cret", "cli-s3cret"] {
            assert!(!env.contains(secret), "{secret} leaked:\n{env}");
        }
    }
}
