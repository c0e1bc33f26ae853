//! Side work is bounded: commands that time out take their whole process group with them,
//! answers from Prometheus and webhooks are read up to a cap, and files named by the
//! configuration are read only when they are regular files (never a FIFO that blocks).
//! Misbehaving peers are raw TCP servers written here; commands are real processes.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn cfg(blue: SocketAddr, green: SocketAddr, top: &str, service: &str) -> String {
    format!(
        r#"
[admin]
bind = "127.0.0.1:0"
token = "t0ken"
[[listener]]
name = "web"
bind = "127.0.0.1:0"
[[route]]
name = "all"
priority = 1
forward = "shop"
{top}
[[service]]
name = "shop"
active = "blue"
{service}
[[service.group]]
name = "blue"
targets = ["{blue}"]
[[service.group]]
name = "green"
targets = ["{green}"]
"#
    )
}

/// Whether a process is gone: no such pid, or a zombie nobody has reaped yet (in a
/// container the reaper may be lazy; a zombie runs nothing).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
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

/// `sleep 30 & echo $! > PIDFILE; sleep 30`: a background child and a foreground one.
fn orphan_maker(pidfile: &Path) -> String {
    format!("sleep 30 & echo $! > {}; sleep 30", pidfile.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_command_that_times_out_is_killed_with_its_whole_process_group() {
    let (blue, green) = (
        TestBackend::start("blue").await,
        TestBackend::start("green").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("bg.pid");
    let analysis = format!(
        "[[analysis]]\nname = \"slow\"\n[[analysis.check]]\nname = \"orphans\"\ncommand = {:?}\ntimeout = \"300ms\"\n",
        orphan_maker(&pidfile)
    );
    let sy = start(&cfg(blue.addr, green.addr, &analysis, "")).await;
    let started = Instant::now();
    let res = admin(&sy)
        .post(
            "/api/v1/services/shop/analysis/run",
            json!({ "analysis": "slow", "candidate": "green" }),
        )
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    let m = &res["results"][0]["measurement"];
    assert_eq!(m["outcome"], "error", "{m}");
    assert!(
        m["detail"].as_str().unwrap().contains("did not finish"),
        "{m}"
    );
    let pid = background_pid(&pidfile).await;
    eventually(
        Duration::from_secs(3),
        "the background child of the timed-out check is gone",
        || async move { gone(pid) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_command_that_times_out_is_killed_with_its_whole_process_group() {
    let (blue, green) = (
        TestBackend::start("blue").await,
        TestBackend::start("green").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("bg.pid");
    let service = format!(
        "[service.strategy]\nkind = \"all-at-once\"\n[service.hooks.before_traffic]\ncommand = {:?}\ntimeout = \"300ms\"\nretries = 0\n",
        orphan_maker(&pidfile)
    );
    let sy = start(&cfg(blue.addr, green.addr, "", &service)).await;
    let api = admin(&sy);
    api.post(
        "/api/v1/rollouts",
        json!({ "service": "shop", "candidate": "green" }),
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r: Value = api.get("/api/v1/services/shop/rollout").await.unwrap();
        if r["status"] == "aborted" {
            break;
        }
        assert!(Instant::now() < deadline, "the failed hook aborts: {r:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = background_pid(&pidfile).await;
    eventually(
        Duration::from_secs(3),
        "the background child of the timed-out hook is gone",
        || async move { gone(pid) },
    )
    .await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_prometheus_and_webhook_answers_are_cut_at_the_cap_and_are_errors() {
    let (blue, green) = (
        TestBackend::start("blue").await,
        TestBackend::start("green").await,
    );
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
    let res = admin(&sy)
        .post(
            "/api/v1/services/shop/analysis/run",
            json!({ "analysis": "big", "candidate": "green" }),
        )
        .await
        .unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_as_certificate_or_config_file_is_refused_at_once_and_the_proxy_keeps_serving() {
    let (blue, green) = (
        TestBackend::start("blue").await,
        TestBackend::start("green").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    let text = cfg(blue.addr, green.addr, "", "");
    std::fs::write(&path, &text).unwrap();
    let mut config = switchyard::config::load(&path).unwrap();
    config.store.path = ":memory:".into();
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
        let Ok(answer) = tokio::time::timeout(Duration::from_secs(5), call).await else {
            release(&fifo);
            panic!("{endpoint} blocked on the FIFO");
        };
        let e = answer.unwrap_err().to_string();
        assert!(e.contains("422"), "{e}");
        assert!(e.contains("not a regular file"), "{e}");
        assert!(e.contains("cert.pem"), "{e}");
    }
    // The configuration file itself replaced by a FIFO: the reload is refused, not stuck.
    std::fs::remove_file(&path).unwrap();
    mkfifo(&path);
    let Ok(answer) = tokio::time::timeout(
        Duration::from_secs(5),
        api.post("/api/v1/reload", json!({})),
    )
    .await
    else {
        release(&path);
        panic!("reload blocked on the FIFO");
    };
    let e = answer.unwrap_err().to_string();
    assert!(e.contains("not a regular file"), "{e}");
    assert!(e.contains("switchyard.toml"), "{e}");
    let r = get(&client(), &format!("http://{web}/"), &[])
        .await
        .unwrap();
    assert_eq!(r.backend(), "blue");
}
