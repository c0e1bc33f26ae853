//! The admin plane is isolated and tells the truth: its connections are bounded (header
//! read and idle timeouts, a connection cap) so they never starve the proxy; token changes
//! apply on reload and show in `plan`; the actor comes from the token; scopes limit tokens.
//! Misbehaving clients are raw TCP sockets written here.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::bin::{free_port, Running};
use common::raw::*;
use common::*;
use serde_json::json;
use switchyard::client::AdminClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn cfg(blue: SocketAddr, admin_extra: &str) -> String {
    Cfg::new()
        .admin(admin_extra)
        .active("blue")
        .group("blue", &[blue])
        .group("green", &[blue])
        .build()
}

bounded_test! {
    async fn slow_and_idle_admin_connections_are_closed() {
        let blue = TestBackend::start("blue").await;
        let sy = start(&cfg(
            blue.addr,
            "header_read_timeout = \"400ms\"\nidle_timeout = \"600ms\"",
        ))
        .await;
        let addr = sy.admin_addr;

        // Slowloris: a request head one byte at a time, never finished.
        let mut slow = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        let dripper = tokio::spawn(async move {
            for b in
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
            {
                if slow.write_all(&[*b]).await.is_err() {
                    return (slow, true);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (slow, false)
        });
        let (mut slow, cut_off) = dripper.await.unwrap();
        let r = closed_within(&mut slow, Duration::from_secs(5)).await;
        assert!(
            cut_off || r.is_ok(),
            "a client dripping its head was not closed: {r:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(4));
        assert!(!r.unwrap_or_default().contains("200 OK"));

        // A whole head, then a body a byte at a time: answered 408 at the bound.
        let mut slow_body = TcpStream::connect(addr).await.unwrap();
        slow_body
            .write_all(b"POST /api/v1/reload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t0ken\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{")
            .await
            .unwrap();
        let started = Instant::now();
        let (mut rd, mut wr) = slow_body.into_split();
        let drip = tokio::spawn(async move {
            for _ in 0..60 {
                if wr.write_all(b" ").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let mut said = Vec::new();
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&said).contains("\r\n\r\n") {
            match tokio::time::timeout(Duration::from_secs(5), rd.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => said.extend_from_slice(&buf[..n]),
                other => panic!("no answer to a slow body: {other:?}"),
            }
        }
        drip.abort();
        let said = String::from_utf8_lossy(&said);
        assert!(said.starts_with("HTTP/1.1 408"), "{said}");
        assert!(started.elapsed() < Duration::from_secs(2));

        // A connection that never sends anything.
        let mut idle = TcpStream::connect(addr).await.unwrap();
        closed_within(&mut idle, Duration::from_secs(5))
            .await
            .expect("an idle admin connection is closed");

        // A keep-alive connection idle after one answer.
        let mut kept = TcpStream::connect(addr).await.unwrap();
        kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let said = closed_within(&mut kept, Duration::from_secs(5))
            .await
            .expect("an idle keep-alive admin connection is closed");
        assert!(said.starts_with("HTTP/1.1 200"), "{said}");
    }
}

bounded_test! {
    async fn connections_beyond_the_cap_are_refused_while_the_proxy_keeps_accepting() {
        let blue = TestBackend::start("blue").await;
        let sy = start(&cfg(
            blue.addr,
            "max_connections = 4\nidle_timeout = \"30s\"\nheader_read_timeout = \"30s\"",
        ))
        .await;
        let web = sy.listener_addr("web").await;
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(TcpStream::connect(sy.admin_addr).await.unwrap());
        }
        // The fifth: refused at once, not served.
        let mut extra = TcpStream::connect(sy.admin_addr).await.unwrap();
        let _ = extra
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let said = closed_within(&mut extra, Duration::from_secs(5))
            .await
            .expect("the connection over the cap is closed at once");
        assert!(!said.contains("200 OK"), "{said}");
        // The answer arrives before the close (no reset in its place).
        assert!(
            said.starts_with("HTTP/1.1 503") && said.contains("too_many_connections"),
            "{said}"
        );
        // The proxy accepts all along.
        let c = client();
        for _ in 0..5 {
            let r = get(&c, &format!("http://{web}/"), &[]).await.unwrap();
            assert_eq!(r.backend(), "blue");
        }
        // A place freed is a place taken.
        held.pop();
        let api = admin(&sy);
        eventually(Duration::from_secs(5), "served again under the cap", || {
            let api = &api;
            async move { api.get("/api/v1/status").await.is_ok() }
        })
        .await;
    }
}

bounded_test! {
    /// 300 idle admin connections against a process allowed 256 descriptors: the proxy still
    /// accepts and forwards (before: "Too many open files").
    async fn idle_admin_connections_never_starve_the_proxy_of_descriptors() {
        let blue = TestBackend::start("blue").await;
        let dir = tempfile::tempdir().unwrap();
        let (web, admin_addr) = (free_port(), free_port());
        let path = dir.path().join("switchyard.toml");
        let cfg = Cfg::new()
            .bound_to(web, admin_addr)
            .top("[store]\npath = \":memory:\"")
            .group("blue", &[blue.addr]);
        std::fs::write(&path, cfg.build()).unwrap();
        let child = std::process::Command::new("prlimit")
            .arg("--nofile=256:256")
            .arg(env!("CARGO_BIN_EXE_switchyard"))
            .args(["run", "-c"])
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            // Never skipped: without prlimit the descriptor limit cannot be set, so say so.
            .unwrap_or_else(|e| {
                panic!("cannot run `prlimit` (util-linux; `apt-get install util-linux` on Debian): {e}")
            });
        // prlimit execs switchyard: the same pid, whose descriptors /proc shows.
        let fds = format!("/proc/{}/fd", child.id());
        let _running = Running { child };
        let c = client();
        eventually(Duration::from_secs(10), "the proxy answers", || {
            let c = c.clone();
            async move {
                get(&c, &format!("http://{web}/"), &[])
                    .await
                    .is_ok_and(|r| r.backend() == "blue")
            }
        })
        .await;
        let mut idle = Vec::new();
        for _ in 0..300 {
            if let Ok(s) = TcpStream::connect(admin_addr).await {
                idle.push(s);
            }
        }
        // Let the admin loop accept (and refuse) all it will: until the process's descriptor
        // count has not moved for half a second (a fixed wait could end before a loaded machine
        // accepted them, and the proxy would then be tried with descriptors to spare).
        let count = || std::fs::read_dir(&fds).map(std::iter::Iterator::count).unwrap_or(0);
        let (mut last, mut still) = (count(), 0);
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while still < 5 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = count();
            (still, last) = if now == last {
                (still + 1, now)
            } else {
                (0, now)
            };
        }
        for i in 0..20 {
            // A fresh connection each time: the proxy must accept.
            let fresh = client();
            let url = format!("http://{web}/");
            let call = get(&fresh, &url, &[("connection", "close")]);
            let r = tokio::time::timeout(Duration::from_secs(5), call)
                .await
                .unwrap_or_else(|_| panic!("request {i} through the proxy got no answer"))
                .unwrap_or_else(|e| panic!("request {i} through the proxy failed: {e}"));
            assert_eq!(r.backend(), "blue", "request {i}");
        }
        drop(idle);
    }
}

bounded_test! {
    async fn a_changed_token_is_shown_by_plan_and_applied_by_reload_and_apply() {
        let blue = TestBackend::start("blue").await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchyard.toml");
        let before = cfg(blue.addr, "");
        std::fs::write(&path, &before).unwrap();
        let sy = server_from_file(&path).await;

        let after = before.replace("token = \"t0ken\"", "token = \"n3w-secret\"");
        let plan = as_client(&sy, "t0ken")
            .post(
                "/api/v1/config/plan",
                json!({ "path": path.display().to_string(), "content": after }),
            )
            .await
            .unwrap();
        let text = plan["changes"].to_string();
        assert!(
            text.contains("admin › token admin › secret") && text.contains("secret changed"),
            "{text}"
        );
        assert!(
            !text.contains("n3w-secret") && !text.contains("t0ken"),
            "{text}"
        );

        std::fs::write(&path, &after).unwrap();
        as_client(&sy, "t0ken")
            .post("/api/v1/reload", json!({}))
            .await
            .unwrap();
        let old = as_client(&sy, "t0ken")
            .get("/api/v1/status")
            .await
            .unwrap_err()
            .to_string();
        assert!(old.contains("401"), "{old}");
        as_client(&sy, "n3w-secret")
            .get("/api/v1/status")
            .await
            .unwrap();

        // Apply adds a named token, usable at once.
        let with_ci = after.replacen(
            "[[listener]]",
            "[[admin.tokens]]\nname = \"ci\"\ntoken = \"c1\"\n[[listener]]",
            1,
        );
        let applied = as_client(&sy, "n3w-secret")
            .post(
                "/api/v1/config/apply",
                json!({ "path": path.display().to_string(), "content": with_ci }),
            )
            .await
            .unwrap();
        assert!(
            applied["changes"]
                .to_string()
                .contains("+\",\"what\":\"admin › token ci"),
            "{applied}"
        );
        as_client(&sy, "c1")
            .post("/api/v1/services/shop/switch", json!({ "group": "green" }))
            .await
            .unwrap();
    }
}

fn with_tokens(blue: SocketAddr) -> String {
    cfg(
        blue,
        r#"[[admin.tokens]]
name = "deploy-bot"
token = "b0t"
[[admin.tokens]]
name = "viewer"
token = "v1ew"
scopes = ["read"]
[[admin.tokens]]
name = "ops"
token = "0ps"
scopes = ["release", "config"]"#,
    )
}

bounded_test! {
    async fn the_actor_is_the_token_and_the_client_is_recorded_on_behalf_of() {
        let blue = TestBackend::start("blue").await;
        let sy = start(&with_tokens(blue.addr)).await;
        as_client(&sy, "b0t")
            .with_actor("cli:alice")
            .post("/api/v1/services/shop/switch", json!({ "group": "green" }))
            .await
            .unwrap();
        admin(&sy)
            .with_actor("dashboard")
            .post("/api/v1/services/shop/switch", json!({ "back": true }))
            .await
            .unwrap();
        // A client cannot claim to be switchyard's own guard (or analysis, schedule, …).
        for claimed in ["guard", "analysis", "schedule", "Deadline"] {
            let e = as_client(&sy, "b0t")
                .with_actor(claimed)
                .post("/api/v1/services/shop/switch", json!({ "group": "green" }))
                .await
                .unwrap_err()
                .to_string();
            assert!(e.contains("422") && e.contains("records for itself"), "{e}");
        }
        let events = admin(&sy).get("/api/v1/events?service=shop").await.unwrap();
        let who: Vec<(String, Option<String>)> = events
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .map(|e| {
                (
                    e["actor"].as_str().unwrap().to_string(),
                    e["on_behalf_of"].as_str().map(str::to_string),
                )
            })
            .collect();
        assert_eq!(
            who,
            [
                ("deploy-bot".to_string(), Some("cli:alice".to_string())),
                ("admin".to_string(), Some("dashboard".to_string())),
            ]
        );
        let bot = admin(&sy)
            .get("/api/v1/events?actor=deploy-bot")
            .await
            .unwrap();
        assert_eq!(bot.as_array().unwrap().len(), 1);
        let alice = admin(&sy)
            .get("/api/v1/events?actor=cli:alice")
            .await
            .unwrap();
        assert_eq!(alice.as_array().unwrap().len(), 0, "{alice}");

        // Token names cannot be switchyard's own actors.
        let e = config_error(&cfg(blue.addr, "[[admin.tokens]]\nname = \"guard\"\ntoken = \"x\""));
        assert!(
            e.contains("admin.tokens[0].name") && e.contains("records for itself"),
            "{e}"
        );
    }
}

bounded_test! {
    async fn token_scopes_decide_what_a_token_may_do() {
        let blue = TestBackend::start("blue").await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchyard.toml");
        let text = with_tokens(blue.addr);
        std::fs::write(&path, &text).unwrap();
        let sy = server_from_file(&path).await;
        let conf = json!({ "path": path.display().to_string(), "content": text });
        let switch = json!({ "group": "green" });
        let (viewer, bot, ops, main) = (
            as_client(&sy, "v1ew"),
            as_client(&sy, "b0t"),
            as_client(&sy, "0ps"),
            admin(&sy),
        );

        // read: every GET, nothing else.
        viewer.get("/api/v1/status").await.unwrap();
        viewer.get("/api/v1/events").await.unwrap();
        let e = post_err(&viewer, "/api/v1/services/shop/switch", switch.clone()).await;
        assert!(
            e.contains("403") && e.contains("\"release\" scope") && e.contains("viewer"),
            "{e}"
        );

        // A named token without `scopes`: read and release, not config (shell access).
        bot.post("/api/v1/services/shop/switch", switch.clone())
            .await
            .unwrap();
        bot.post(
            "/api/v1/rollouts",
            json!({ "service": "shop", "candidate": "blue", "force": true }),
        )
        .await
        .map(|_| ())
        .or_else(|e| {
            // The rollout may be refused for its own reasons, never for the scope.
            let e = e.to_string();
            if e.contains("403") {
                Err(e)
            } else {
                Ok(())
            }
        })
        .unwrap();
        for (endpoint, body) in [
            ("/api/v1/reload", json!({})),
            ("/api/v1/config/plan", conf.clone()),
            ("/api/v1/config/apply", conf.clone()),
        ] {
            let e = post_err(&bot, endpoint, body).await;
            assert!(
                e.contains("403") && e.contains("\"config\" scope"),
                "{endpoint}: {e}"
            );
        }

        // config (+ release) and the unnamed token: everything.
        ops.post("/api/v1/config/plan", conf.clone()).await.unwrap();
        ops.post("/api/v1/reload", json!({})).await.unwrap();
        main.post("/api/v1/config/apply", conf.clone())
            .await
            .unwrap();

        // Unknown scopes are configuration errors.
        let e = config_error(&cfg(blue.addr, "[[admin.tokens]]\nname = \"x\"\ntoken = \"x\"\nscopes = [\"root\"]"));
        assert!(
            e.contains("admin.tokens[0].scopes[0]") && e.contains("unknown scope"),
            "{e}"
        );
    }
}

bounded_test! {
    async fn a_token_changed_in_the_file_applies_on_sighup() {
        let blue = TestBackend::start("blue").await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchyard.toml");
        let (web, admin_addr) = (free_port(), free_port());
        common::bin::write_config(&path, web, admin_addr, "blue", blue.addr, blue.addr);
        let running = common::bin::run_binary(&path, admin_addr).await;
        let client_with = |t: &str| AdminClient::new(&admin_addr.to_string(), Some(t.into()));
        client_with("t0ken").get("/api/v1/status").await.unwrap();

        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("token = \"t0ken\"", "token = \"r0tated\"");
        std::fs::write(&path, text).unwrap();
        common::bin::signal(&running.child, "-HUP");
        eventually(Duration::from_secs(10), "the new token works", || async {
            client_with("r0tated").get("/api/v1/status").await.is_ok()
        })
        .await;
        let old = client_with("t0ken")
            .get("/api/v1/status")
            .await
            .unwrap_err()
            .to_string();
        assert!(old.contains("401"), "{old}");
    }
}

/// A database written before events had `on_behalf_of` opens, keeps its events, and
/// records the new field from then on (the column is added in place).
#[test]
fn an_events_table_from_before_on_behalf_of_gains_the_column_in_place() {
    use switchyard::store::{Commit, Event, EventQuery, SqliteStore, Store};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE events (
                 id        INTEGER PRIMARY KEY AUTOINCREMENT,
                 at        INTEGER NOT NULL,
                 service   TEXT NOT NULL,
                 rollout   INTEGER,
                 actor     TEXT NOT NULL,
                 kind      TEXT NOT NULL,
                 from_split TEXT,
                 to_split  TEXT,
                 reason    TEXT NOT NULL
             );
             INSERT INTO events (at, service, actor, kind, reason)
                 VALUES (1, 'shop', 'deploy-bot/cli:bob', 'switch', 'old');
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    for _ in 0..2 {
        // Opening twice: the second open finds the column there.
        let store = SqliteStore::open(&path).unwrap();
        drop(store);
    }
    let store = SqliteStore::open(&path).unwrap();
    store
        .commit(&Commit {
            events: vec![Event {
                id: 0,
                at: 2,
                service: "shop".into(),
                rollout: None,
                actor: "deploy-bot".into(),
                on_behalf_of: Some("cli:alice".into()),
                kind: "switch".into(),
                from: None,
                to: None,
                reason: "new".into(),
            }],
            ..Commit::default()
        })
        .unwrap();
    let events = store.events(&EventQuery::default()).unwrap();
    let got: Vec<(&str, Option<&str>, &str)> = events
        .iter()
        .map(|e| {
            (
                e.actor.as_str(),
                e.on_behalf_of.as_deref(),
                e.reason.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("deploy-bot", Some("cli:alice"), "new"),
            ("deploy-bot/cli:bob", None, "old")
        ]
    );
}
