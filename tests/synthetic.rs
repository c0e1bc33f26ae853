//! Synthetic traffic for quiet services (issue 16, point 4): during an analysis step the
//! generator sends its requests (or recent idempotent ones replayed from the access log) to
//! the candidate's targets only, tagged, at no more than its rate, counted with the
//! candidate's traffic or apart, and stops with the step. Real sockets, recording backends.

mod common;

use std::time::Duration;

use common::release::*;
use common::*;
use serde_json::json;

const ANALYSIS: &str = r#"
[[analysis]]
name = "quiet"
interval = "1s"
count = 2
min_requests = 10
[[analysis.check]]
name = "error-rate"
metric = "error-rate"
max = 5
"#;

/// A canary that runs `quiet` at 10 % and then waits for promotion.
const STRATEGY: &str = "[service.strategy]\nkind = \"canary\"\nsteps = [{ weight = 10 }, { analysis = \"quiet\" }, { pause = \"until-promoted\" }]";

/// `shop` on two recording backends (blue active), `synthetic` as the service's table.
async fn rig(synthetic: &str, top: &str) -> (Receiver, Receiver, Server, tempfile::TempDir) {
    let (blue, green) = (
        Receiver::answering(200, "blue").await,
        Receiver::answering(200, "green").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = blue_green(blue.addr, green.addr)
        .top(&format!("{ANALYSIS}\n{top}"))
        .service(&format!("{STRATEGY}\n{synthetic}"))
        .build();
    let sy = start_in(&cfg, dir.path()).await;
    (blue, green, sy, dir)
}

fn synthetic_calls(r: &Receiver) -> Vec<Call> {
    r.calls()
        .into_iter()
        .filter(|c| c.headers.get("x-switchyard-synthetic").is_some())
        .collect()
}

bounded_test! {
    /// No client traffic at all: the generator's requests alone (counted together) give the
    /// analysis its evidence, so it passes; they went to green only, with the configured
    /// methods, paths and headers, at no more than the rate, and stopped with the step.
    async fn a_quiet_candidate_gets_synthetic_requests_that_its_analysis_counts() {
        let (blue, green, sy, _dir) = rig(
            "[service.synthetic]\nrate = 20\nrequests = [{ path = \"/items?page=1\" }, { method = \"HEAD\", path = \"/\", headers = { \"x-user\" = \"probe\" } }]",
            "",
        )
        .await;
        let api = admin(&sy);
        start_green(&api).await;
        let r = wait_status(&api, 20, |r| r["status"] == "paused").await;
        assert!(r["weight"] == 1000, "{r}");
        let events = events(&api, "service=shop&kind=analysis").await;
        assert!(
            events.iter().any(|e| e["reason"].as_str().is_some_and(|r| r.contains("analysis passed: quiet"))),
            "{events:?}"
        );
        let sent = synthetic_calls(&green);
        assert!(synthetic_calls(&blue).is_empty(), "synthetic requests reached stable");
        // Two measurements a second apart: ~2 s at 20/s, never more than the rate allows.
        assert!((20..=60).contains(&sent.len()), "{} synthetic requests", sent.len());
        assert!(sent.iter().any(|c| c.method == "GET" && c.path == "/items?page=1"));
        assert!(sent
            .iter()
            .any(|c| c.method == "HEAD" && c.headers.get("x-user").is_some_and(|v| v == "probe")));
        // The step is over: nothing more is sent.
        let after = green.calls().len();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(green.calls().len(), after, "the generator stopped with the step");
        let m = metrics_text(&sy).await;
        assert!(
            metric(&m, "switchyard_synthetic_requests_total", &["result=\"answered\""]).unwrap_or(0.0) >= 20.0,
            "{m}"
        );
    }
}

bounded_test! {
    /// Counted apart, the same requests are not the candidate's traffic: the analysis has
    /// no evidence and is inconclusive (the rollout pauses), while /metrics counts them.
    async fn synthetic_requests_counted_apart_are_not_evidence() {
        let (_blue, green, sy, _dir) = rig(
            "[service.synthetic]\nrate = 20\ncount = \"apart\"\nrequests = [{ path = \"/\" }]",
            "",
        )
        .await;
        let api = admin(&sy);
        start_green(&api).await;
        let r = wait_status(&api, 20, |r| r["status"] == "paused" && r["held"] == true).await;
        assert!(reason(&r).contains("inconclusive"), "{r}");
        assert!(!synthetic_calls(&green).is_empty());
    }
}

bounded_test! {
    /// `replay`: recent GET requests the service answered, as the access log has them, go
    /// to the candidate; a POST is never replayed.
    async fn replay_sends_recent_idempotent_requests_from_the_access_log() {
        let (_blue, green, sy, _dir) = rig(
            "[service.synthetic]\nrate = 20\nreplay = true",
            "[access_log]\npath = \"access.log\"",
        )
        .await;
        let url = web_url(&sy).await.trim_end_matches('/').to_string();
        let c = client();
        for path in ["/orders/1", "/orders/2", "/cart"] {
            assert_eq!(get(&c, &format!("{url}{path}"), &[]).await.unwrap().status, 200);
        }
        // A POST, over a raw connection (the testkit's client sends bodiless GETs).
        let addr = sy.listener_addr("web").await;
        let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        raw.write_all(b"POST /checkout HTTP/1.1\r\nhost: shop\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
            .await
            .unwrap();
        let mut answer = String::new();
        raw.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let api = admin(&sy);
        // The writer thread has seen them.
        eventually(Duration::from_secs(3), "the access log has the requests", || async {
            std::fs::read_to_string(_dir.path().join("access.log")).is_ok_and(|l| l.lines().count() >= 4)
        })
        .await;
        api.post("/api/v1/rollouts", json!({ "service": "shop", "candidate": "green" }))
            .await
            .unwrap();
        wait_status(&api, 20, |r| r["status"] == "paused").await;
        let paths: std::collections::BTreeSet<String> =
            synthetic_calls(&green).into_iter().map(|c| format!("{} {}", c.method, c.path)).collect();
        assert!(paths.contains("GET /orders/1") && paths.contains("GET /cart"), "{paths:?}");
        assert!(paths.iter().all(|p| p.starts_with("GET ")), "{paths:?}");
    }
}

#[test]
fn synthetic_settings_that_cannot_work_are_refused_at_their_key() {
    let (a, b) = (
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
    );
    for (synthetic, want) in [
        (
            "rate = 0\nrequests = [{ path = \"/\" }]",
            "synthetic.rate: 0 is out of range",
        ),
        (
            "rate = 500\nrequests = [{ path = \"/\" }]",
            "synthetic.rate: 500 is out of range",
        ),
        (
            "requests = [{ method = \"POST\", path = \"/\" }]",
            "synthetic.requests[0].method: POST is not a safe method",
        ),
        (
            "requests = [{ path = \"items\" }]",
            "synthetic.requests[0].path: \"items\" is not a path",
        ),
        (
            "replay = true",
            "synthetic.replay: `replay` sends recent requests from the access log",
        ),
        (
            "rate = 5",
            "synthetic traffic needs `requests`, or `replay = true`",
        ),
        (
            "count = \"both\"\nrequests = [{ path = \"/\" }]",
            "synthetic.count: \"both\"",
        ),
    ] {
        let toml = blue_green(a, b)
            .service(&format!("[service.synthetic]\n{synthetic}"))
            .build();
        let e = config_error(&toml);
        assert!(e.contains(want), "{synthetic}\n→ {e}");
    }
}
