//! New errors: failed answers grouped by fingerprint per version, and the `new_errors` check
//! that fails on one only the candidate gives — end to end over loopback, with backends
//! written here that fail in a chosen way (a numbered 500 every n-th answer, a distinct body
//! every time, a reset in the middle of an answer).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::release::*;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::Value;
use switchyard::client::AdminClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A backend named `name` whose every `every`-th answer is a 500 with the body `body(n)`
/// (`n` counts its answers), the others 200s with its name. It lives as long as the test's
/// runtime.
async fn erring(name: &'static str, every: u64, body: fn(u64) -> String) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answers = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let answers = answers.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let n = if req.uri().path() == "/healthz" {
                        0
                    } else {
                        answers.fetch_add(1, Ordering::SeqCst) + 1
                    };
                    async move {
                        let (status, text) = if n > 0 && n % every == 0 {
                            (StatusCode::INTERNAL_SERVER_ERROR, body(n))
                        } else {
                            (StatusCode::OK, name.to_string())
                        };
                        let mut r = Response::new(Full::new(Bytes::from(text)));
                        *r.status_mut() = status;
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn db_pool(n: u64) -> String {
    format!("db pool exhausted after {n} waits\n")
}

/// An analysis of one `new_errors` check, measured every 300 ms.
const NEW_ERRORS: &str = r#"
[[analysis]]
name = "new"
interval = "300ms"
count = 8
min_requests = 20
[[analysis.check]]
name = "new-errors"
new_errors = { min_count = 5 }
"#;

/// `blue` and `green` at `blue`/`green`, the analysis above, and `steps` as the strategy.
fn cfg(blue: SocketAddr, green: SocketAddr, steps: &str) -> String {
    blue_green(blue, green)
        .top(NEW_ERRORS)
        .service(&format!(
            "[service.strategy]\nkind = \"canary\"\nsteps = {steps}"
        ))
        .build()
}

/// The fingerprints the instance shares with its fleet (`GET /api/v1/fleet/seconds`) of
/// group `group`.
async fn shared(api: &AdminClient, group: &str) -> Value {
    let v = api.get("/api/v1/fleet/seconds?from=0").await.unwrap();
    v["errors"]["shop"][group].clone()
}

/// A canary of `shop` to `green` (50 %, then the `new_errors` analysis) under steady load,
/// until it is no longer progressing: the instance, its admin client and the rollout.
async fn analysed(blue: SocketAddr, green: SocketAddr) -> (Server, AdminClient, Value) {
    let sy = start(&cfg(
        blue,
        green,
        "[{ weight = 50 }, { analysis = \"new\" }]",
    ))
    .await;
    let api = admin(&sy);
    let load = Load::start(web_url(&sy).await, 4, &[]);
    start_green(&api).await;
    let r = wait_status(&api, 20, |r| r["status"] != "progressing").await;
    load.stop().await;
    (sy, api, r)
}

bounded_test! {
    /// 2.5 % of green's answers are a 500 blue never gives, its number different every
    /// time: within the guard's error-rate bound, but one fingerprint (numbers normalised)
    /// seen more than `min_count` times — the analysis step fails and the rollout rolls back
    /// with the sentence, in the rollout's reason and the analysis event.
    async fn a_candidate_with_a_new_500_at_a_low_rate_fails_the_new_errors_step_and_rolls_back() {
        let blue = TestBackend::start("blue").await;
        let green = erring("green", 40, db_pool).await;
        let (_sy, api, r) = analysed(blue.addr, green).await;
        assert_eq!(r["status"], "aborted", "{r:#}");
        let why = reason(&r);
        eprintln!("rolled back: {why}");
        assert!(
            why.contains("green answered 500 'db pool exhausted after <n> waits' ")
                && why.contains(" times on route all since ")
                && why.contains("; blue never did"),
            "{why}"
        );
        let all = events(&api, "service=shop").await;
        let said = |e: &&Value| e["reason"].as_str().is_some_and(|r| r.contains("blue never did"));
        assert!(all.iter().any(|e| said(&e) && e["actor"] == "analysis"), "{all:?}");
        // One fingerprint for all the numbers.
        let seen = shared(&api, "green").await;
        assert_eq!(seen["fingerprints"].as_array().map(Vec::len), Some(1), "{seen}");
    }
}

bounded_test! {
    /// Blue gives the same failure (other numbers) more often than green: not new, and the
    /// analysis step passes.
    async fn the_same_error_in_both_versions_is_no_finding() {
        let blue = erring("blue", 10, db_pool).await;
        let green = erring("green", 40, db_pool).await;
        let (_sy, api, r) = analysed(blue, green).await;
        assert_eq!(r["status"], "completed", "{r:#}");
        let analysis = events(&api, "service=shop&kind=analysis").await;
        let detail = analysis[0]["reason"].as_str().unwrap_or("");
        assert!(detail.contains("no new errors: green's 1 fingerprints"), "{analysis:?}");
        assert!(!shared(&api, "green").await["fingerprints"].is_null());
    }
}

/// A rollout of `shop` paused at 50 % whose candidate gives a numbered 500 every tenth
/// answer, once the rollout view counts 5 of them: the instance, its stable backend (kept
/// running) and the view.
async fn paused_with_a_new_error() -> (Server, TestBackend, Value) {
    let blue = TestBackend::start("blue").await;
    let green = erring("green", 10, db_pool).await;
    let sy = start(&cfg(
        blue.addr,
        green,
        "[{ weight = 50 }, { pause = \"1h\" }]",
    ))
    .await;
    let api = admin(&sy);
    start_green(&api).await;
    wait_status(&api, 5, |r| r["weight"] == 5000).await;
    let load = Load::start(web_url(&sy).await, 2, &[]);
    let r = wait_status(&api, 10, |r| {
        r["new_errors"]["fingerprints"][0]["candidate"].as_u64() >= Some(5)
    })
    .await;
    load.stop().await;
    (sy, blue, r)
}

bounded_test! {
    /// While a rollout is in progress, `GET …/rollout` shows the candidate's fingerprints
    /// against stable's: the new one marked, with counts and when it was first seen.
    async fn the_rollout_view_shows_each_fingerprint_of_the_candidate_with_stable_s_count() {
        let (_sy, _blue, r) = paused_with_a_new_error().await;
        let f = &r["new_errors"]["fingerprints"][0];
        assert_eq!(f["sample"], "db pool exhausted after <n> waits", "{f}");
        assert_eq!((&f["status"], &f["route"], &f["stable"], &f["new"]), (&500.into(), &"all".into(), &0.into(), &true.into()), "{f}");
        // Seen in the second the rollout began or after (times are the window second's start).
        let (first, since) = (f["first_unix_ms"].as_i64().unwrap(), r["new_errors"]["since_unix_ms"].as_i64().unwrap());
        assert!(first + 1000 > since, "{r:#}");
        assert_eq!(r["new_errors"]["min_count"], 5);
    }
}

bounded_test! {
    /// A target giving a different body every time (letters, so nothing normalises them
    /// together): the group keeps 64 fingerprints and counts the rest as overflow.
    async fn a_group_keeps_at_most_64_fingerprints_under_many_distinct_bodies() {
        fn distinct(n: u64) -> String {
            (0..4).map(|k| (b'a' + ((n >> (4 * k)) & 15) as u8) as char).collect()
        }
        let blue = erring("blue", 1, distinct).await;
        let sy = start(&config(&[("blue", &[blue])], "")).await;
        let url = web_url(&sy).await;
        let c = client();
        for _ in 0..200 {
            assert_eq!(get(&c, &url, &[]).await.unwrap().status, 500);
        }
        let seen = shared(&admin(&sy), "blue").await;
        assert_eq!(seen["fingerprints"].as_array().map(Vec::len), Some(64), "{seen}");
        let overflow: u64 = seen["overflow"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| p[1].as_u64().unwrap())
            .sum();
        assert_eq!(overflow, 200 - 64);
    }
}

bounded_test! {
    /// A raw target that sends a head and part of the body, then resets: the answer is a
    /// 502 for the group, fingerprinted with switchyard's cause and the failure kind.
    async fn a_target_resetting_mid_answer_gives_a_fingerprint_with_the_upstream_failure_kind() {
        let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = target.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = target.accept().await else { continue };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhalf").await;
                    // Zero linger: the close is a reset (RST), at once, not a blocking drop.
                    #[allow(deprecated)]
                    let _ = s.set_linger(Some(Duration::ZERO));
                    drop(s);
                });
            }
        });
        let sy = start(&config(&[("blue", &[addr])], "")).await;
        let url = web_url(&sy).await;
        let _ = get(&client(), &url, &[]).await;
        let api = admin(&sy);
        eventually(Duration::from_secs(5), "the reset is fingerprinted", || async {
            shared(&api, "blue").await["fingerprints"].is_array()
        })
        .await;
        let seen = shared(&api, "blue").await;
        let f = &seen["fingerprints"][0]["fingerprint"];
        assert_eq!(
            (&f["status"], &f["cause"], &f["kind"], &f["sample"]),
            (&502.into(), &"upstream_reset".into(), &"reset".into(), &"".into()),
            "{seen}"
        );
    }
}

bounded_test! {
    /// Green's one target refuses connections: a request the split sends to green is
    /// answered by blue, and green's failed try — a 502 in green's seconds — is
    /// fingerprinted too (switchyard's cause, the connect kind), as the answer would have
    /// been had there been no group to fall back to.
    async fn a_request_that_falls_back_to_the_other_group_leaves_its_fingerprint_in_the_first() {
        let blue = TestBackend::start("blue").await;
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let refusing = closed.local_addr().unwrap();
        drop(closed);
        let sy = start(
            &Cfg::new()
                .service("weights = { blue = 50, green = 50 }")
                .group("blue", &[blue.addr])
                .group("green", &[refusing])
                .build(),
        )
        .await;
        let (url, api, c) = (web_url(&sy).await, admin(&sy), client());
        eventually(Duration::from_secs(10), "a request of green fell back", || async {
            let r = get(&c, &url, &[]).await.unwrap();
            assert_eq!((r.status.as_u16(), r.backend()), (200, "blue"));
            let v = api.get("/api/v1/fleet/seconds?from=0").await.unwrap();
            v["services"]["shop"]["green"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["classes"][4].as_u64() > Some(0)))
        })
        .await;
        let seen = shared(&api, "green").await;
        let f = &seen["fingerprints"][0]["fingerprint"];
        assert_eq!(
            (&f["status"], &f["cause"], &f["kind"], &f["route"]),
            (&502.into(), &"upstream_connect_failed".into(), &"connect".into(), &"all".into()),
            "{seen}"
        );
    }
}

bounded_test! {
    /// A client that closes while its request waits for a slow target fails through its
    /// own fault: counted as the group's client error, never fingerprinted.
    async fn a_client_closing_before_the_answer_makes_no_fingerprint() {
        let blue = TestBackend::start("blue").await;
        let sy = start(&config(&[("blue", &[blue.addr])], "")).await;
        let web = sy.listener_addr("web").await;
        let s = common::raw::send(web, b"GET /sleep/5000 HTTP/1.1\r\nhost: x\r\n\r\n").await;
        eventually(Duration::from_secs(5), "the request reached the target", || async {
            blue.hits() == 1
        })
        .await;
        drop(s);
        let api = admin(&sy);
        eventually(Duration::from_secs(5), "the client's close is counted", || async {
            let v = api.get("/api/v1/fleet/seconds?from=0").await.unwrap();
            v["services"]["shop"]["blue"][0]["client_errors"] == 1
        })
        .await;
        assert_eq!(shared(&api, "blue").await, Value::Null);
    }
}

bounded_test! {
    /// A fleet: the leader serves no traffic and follows two peers that send 10 % to green,
    /// whose new 500 only they see. The leader's `new_errors` step counts the peers'
    /// fingerprints (pulled with their seconds) and rolls back, naming the instances.
    async fn the_leader_counts_the_fingerprints_of_its_peers_answers() {
        let blue = TestBackend::start("blue").await;
        let green = erring("green", 40, db_pool).await;
        let toml = cfg(blue.addr, green, "[{ weight = 10 }, { analysis = \"new\" }]");
        let leader = start(&toml).await;
        let (mut peers, mut running, mut loads) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..2 {
            let sy = start(&toml).await;
            admin(&sy)
                .put("/api/v1/services/shop/weights", serde_json::json!({ "weights": { "blue": 90, "green": 10 } }))
                .await
                .unwrap();
            loads.push(Load::start(web_url(&sy).await, 3, &[]));
            peers.push(switchyard::control::Peer { name: format!("peer-{i}"), admin: sy.admin_addr.to_string() });
            running.push(sy);
        }
        leader.control.set_peers(peers);
        let api = admin(&leader);
        start_green(&api).await;
        let r = wait_status(&api, 20, |r| r["status"] != "progressing").await;
        for l in loads {
            l.stop().await;
        }
        assert_eq!(r["status"], "aborted", "{r:#}");
        let why = reason(&r);
        eprintln!("rolled back: {why}");
        assert!(why.contains("'db pool exhausted after <n> waits'") && why.contains("blue never did, 3 instances"), "{why}");
        // None of it was the leader's own.
        let own = leader.control.snapshot().services["shop"].group("green").unwrap().stats.fingerprints.export(0, u64::MAX);
        assert!(own.is_empty(), "{own:?}");
    }
}

bounded_test! {
    /// The dashboard lists the candidate's new error, marked new, with both groups' counts
    /// (tests/browser/new-errors.mjs in headless Chromium).
    async fn the_dashboard_lists_the_candidate_s_new_error_marked_new_with_both_counts() {
        let (sy, _blue, _) = paused_with_a_new_error().await;
        let args = [format!("http://{}/", sy.admin_addr), "t0ken".into()];
        let said = common::browser::run("new-errors.mjs", &args).await;
        assert!(said.contains("new errors: "), "{said}");
    }
}
