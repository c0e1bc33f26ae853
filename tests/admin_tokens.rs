//! What a token lets through, beyond the route's scope: a request body that carries a shell
//! command needs `config`; no body is read before the token is checked; the client's
//! on-behalf-of header is a name, not free text; token secrets are unique and checked in
//! constant time. (The admin plane's connection limits are in `admin_plane.rs`.)

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::raw::*;
use common::*;
use serde_json::json;
use switchyard::client::AdminClient;

fn cfg(blue: SocketAddr, admin_extra: &str) -> String {
    Cfg::new()
        .admin(&format!("header_read_timeout = \"5s\"\n{admin_extra}"))
        .active("blue")
        .group("blue", &[blue])
        .group("green", &[blue])
        .build()
}

const TOKENS: &str = r#"[[admin.tokens]]
name = "deploy-bot"
token = "b0t"
[[admin.tokens]]
name = "ops"
token = "0ps"
scopes = ["release", "config"]"#;

bounded_test! {
    async fn a_release_token_cannot_start_a_rollout_whose_strategy_runs_a_command() {
        let blue = TestBackend::start("blue").await;
        let sy = start(&cfg(blue.addr, TOKENS)).await;
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let start = json!({
            "service": "shop",
            "candidate": "green",
            "strategy": {
                "kind": "blue-green",
                "scale_down_delay": "0s",
                "teardown": format!("touch {}", marker.display()),
            },
        });
        let e = post_err(&as_client(&sy, "b0t"), "/api/v1/rollouts", start.clone()).await;
        assert!(
            e.contains("403") && e.contains("\"config\" scope") && e.contains("teardown"),
            "{e}"
        );
        // Nothing was started by the refused call.
        let status = as_client(&sy, "b0t")
            .get("/api/v1/services/shop/rollout")
            .await;
        assert!(status.is_err(), "{status:?}");
        // A strategy without a command is a release matter.
        let plain = json!({
            "service": "shop",
            "candidate": "green",
            "strategy": { "kind": "canary", "steps": [{ "weight": 10 }, { "pause": "until-promoted" }] },
        });
        as_client(&sy, "b0t")
            .post("/api/v1/rollouts", plain)
            .await
            .unwrap();
        as_client(&sy, "b0t")
            .post(
                "/api/v1/services/shop/rollout/abort",
                json!({ "reason": "make room" }),
            )
            .await
            .unwrap();
        // `config` grants shell access, so a config token may.
        let view = as_client(&sy, "0ps")
            .post("/api/v1/rollouts", start)
            .await
            .unwrap();
        assert_eq!(view["candidate"], "green", "{view}");
        assert_eq!(view["created_by"], "ops", "{view}");
    }
}

bounded_test! {
    async fn a_request_without_a_token_is_refused_before_its_body_is_read() {
        let blue = TestBackend::start("blue").await;
        let sy = start(&cfg(blue.addr, "")).await;
        // 2 MiB announced, none sent: the token check must not wait for the body (it would
        // wait header_read_timeout, 5 s, and answer 408).
        for auth in ["", "Authorization: Bearer wrong\r\n"] {
            let started = Instant::now();
            let answer = raw(
                sy.admin_addr,
                &format!(
                    "POST /api/v1/reload HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: 2097152\r\n\r\n"
                ),
                Duration::from_secs(4),
            )
            .await;
            assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
            assert!(started.elapsed() < Duration::from_secs(4));
        }
        // With the token, the body is still awaited (bounded): 408 once the bound passes.
        let answer = raw(
            sy.admin_addr,
            "POST /api/v1/reload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t0ken\r\nContent-Length: 10\r\n\r\n",
            Duration::from_secs(30),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
}

bounded_test! {
    async fn on_behalf_of_is_a_name_and_is_recorded_apart() {
        let blue = TestBackend::start("blue").await;
        let sy = start(&cfg(blue.addr, TOKENS)).await;
        for bad in [
            "alice on behalf of bob",
            "a b",
            "x\"y",
            "<script>",
            &"a".repeat(65),
        ] {
            let e = as_client(&sy, "b0t")
                .with_actor(bad)
                .post("/api/v1/services/shop/switch", json!({ "group": "green" }))
                .await
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("422") && e.contains("x-switchyard-actor"),
                "{bad}: {e}"
            );
        }
        as_client(&sy, "b0t")
            .with_actor("cli:alice@example.com")
            .post("/api/v1/services/shop/switch", json!({ "group": "green" }))
            .await
            .unwrap();
        let found = Mutex::new(None);
        eventually(Duration::from_secs(5), "the switch's event", || {
            let (api, found) = (admin(&sy), &found);
            async move {
                let events = api.get("/api/v1/events?service=shop").await.unwrap();
                let first = events.as_array().and_then(|a| a.first().cloned());
                let there = first.is_some();
                *found.lock().unwrap() = first;
                there
            }
        })
        .await;
        let e = found.into_inner().unwrap().unwrap();
        assert_eq!(e["actor"], "deploy-bot", "{e}");
        assert_eq!(e["on_behalf_of"], "cli:alice@example.com", "{e}");
    }
}

/// The reason of the first event whose reason contains `needle`, once there is one.
async fn event_reason(api: &AdminClient, needle: &str) -> String {
    let found = Mutex::new(None);
    eventually(Duration::from_secs(5), "an event with the reason", || {
        let found = &found;
        async move {
            let events = api.get("/api/v1/events?service=shop").await.unwrap();
            let reason = events.as_array().unwrap().iter().find_map(|e| {
                e["reason"]
                    .as_str()
                    .filter(|r| r.contains(needle))
                    .map(str::to_string)
            });
            let there = reason.is_some();
            *found.lock().unwrap() = reason;
            there
        }
    })
    .await;
    found.into_inner().unwrap().unwrap()
}

bounded_test! {
    async fn an_abort_reason_is_cleaned_and_capped_before_it_is_recorded() {
        let blue = TestBackend::start("blue").await;
        let sy = start(&cfg(blue.addr, "")).await;
        let api = admin(&sy);
        api.post(
            "/api/v1/rollouts",
            json!({
                "service": "shop",
                "candidate": "green",
                "strategy": { "kind": "canary", "steps": [{ "weight": 10 }, { "pause": "until-promoted" }] },
            }),
        )
        .await
        .unwrap();
        let reason = format!("bad\u{1b}[31m red\r\nFAKE: line\u{7}{}", "x".repeat(2000));
        api.post(
            "/api/v1/services/shop/rollout/abort",
            json!({ "reason": reason }),
        )
        .await
        .unwrap();
        // The abort's event is written by the rollout's driver, perhaps after the answer.
        let recorded = event_reason(&api, "bad").await;
        assert!(!recorded.chars().any(char::is_control), "{recorded:?}");
        assert!(
            recorded.contains("bad [31m red FAKE: line x"),
            "{recorded:?}"
        );
        assert!(recorded.chars().count() < 700, "{}", recorded.len());
    }
}

#[test]
fn token_names_and_secrets_are_checked_at_validation() {
    let blue: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let parse = |extra: &str| {
        switchyard::config::parse(&cfg(blue, extra), "t.toml", Path::new("."))
            .map_err(|e| e.to_string())
    };
    // Reserved names, whatever their case.
    let e = parse("[[admin.tokens]]\nname = \"Guard\"\ntoken = \"x\"").unwrap_err();
    assert!(e.contains("records for itself"), "{e}");
    // Two tokens with one secret: whoever holds it could act as either.
    let e = parse(
        "[[admin.tokens]]\nname = \"a\"\ntoken = \"same\"\n[[admin.tokens]]\nname = \"b\"\ntoken = \"same\"",
    )
    .unwrap_err();
    assert!(
        e.contains("admin.tokens[1]") && e.contains("\"a\"") && e.contains("\"b\""),
        "{e}"
    );
    let e = parse("[[admin.tokens]]\nname = \"a\"\ntoken = \"t0ken\"").unwrap_err();
    assert!(e.contains("\"admin\"") && e.contains("\"a\""), "{e}");
    let e = parse("max_connections = 5000").unwrap_err();
    assert!(
        e.contains("admin.max_connections") && e.contains("1 to 1024"),
        "{e}"
    );
    // Debug output never shows a secret, the unnamed token's included.
    let c = parse(TOKENS).unwrap();
    let shown = format!("{:?}", c.admin);
    for secret in ["t0ken", "b0t", "0ps"] {
        assert!(!shown.contains(secret), "{shown}");
    }
}
