//! Fleet-wide judgement: the leader's guard and built-in checks judge the sum of every
//! instance's traffic, pulled from the peers' admin API (`GET /api/v1/fleet/seconds`).
//!
//! Three in-process instances share one configuration, each with its own state in memory;
//! peers are set by hand (`Controller::set_peers`). The "leader" A runs the rollout and gets
//! no client traffic at all; B and C are pinned by `weights` to send 10 % to the candidate.

mod common;

use std::time::{Duration, Instant};

use common::raw::RefusingPort;
use common::release::*;
use common::*;
use serde_json::{json, Value};
use switchyard::control::Peer;
use switchyard::metrics::now_second;

/// The guard judges 1 s (plus the current second) every 250 ms, once 20 candidate requests are in.
const GUARD: &str = "[service.guard]\ninterval = \"250ms\"\nwindow = \"1s\"\nmin_requests = 20";

/// A built-in check over the candidate's error rate.
const ERRORS: &str = r#"
[[analysis]]
name = "errors"
interval = "100ms"
count = 1
min_requests = 20
[[analysis.check]]
name = "error-rate"
metric = "error-rate"
max_over_stable = 1.0
window = "5s"
"#;

struct Fleet {
    blue: TestBackend,
    green: TestBackend,
    leader: Server,
    others: Vec<Server>,
}

impl Fleet {
    /// The leader and `others` instances of one configuration; the others send 10 % of
    /// their traffic to `green`; the leader follows them, and `extra` peers besides.
    async fn start(others: usize, extra: Vec<Peer>) -> Fleet {
        let (blue, green) = TestBackend::pair().await;
        let toml = blue_green(blue.addr, green.addr)
            .top(ERRORS)
            .service(GUARD)
            .build();
        let leader = start(&toml).await;
        let mut servers = Vec::new();
        for _ in 0..others {
            let sy = start(&toml).await;
            admin(&sy)
                .put(
                    "/api/v1/services/shop/weights",
                    json!({ "weights": { "blue": 90, "green": 10 } }),
                )
                .await
                .unwrap();
            servers.push(sy);
        }
        let mut peers: Vec<Peer> = servers
            .iter()
            .enumerate()
            .map(|(i, sy)| Peer {
                name: format!("peer-{i}"),
                admin: sy.admin_addr.to_string(),
            })
            .collect();
        peers.extend(extra);
        leader.control.set_peers(peers);
        Fleet {
            blue,
            green,
            leader,
            others: servers,
        }
    }

    /// Steady load on every instance but the leader.
    async fn load(&self) -> Vec<Load> {
        let mut loads = Vec::new();
        for sy in &self.others {
            loads.push(Load::start(web_url(sy).await, 3, &[]));
        }
        loads
    }

    /// Waits until the leader judges, over the guard's window, at least twice the guard's
    /// `min_requests` of candidate traffic from every other instance (none is its own).
    async fn judging_peers(&self) {
        let windows = self.leader.control.windows("shop", "blue", "green");
        let instances = 1 + self.others.len();
        eventually(
            Duration::from_secs(10),
            "the leader judges candidate traffic from every peer",
            || {
                let seen = windows(Duration::from_secs(1), 0).unwrap();
                async move { seen.instances == instances && seen.candidate.requests >= 40 }
            },
        )
        .await;
    }

    /// The onset: every answer of the candidate becomes a 500. Waits for the leader's
    /// rollout to be aborted, stops the load, and asserts that it came within 1.5 s of the
    /// onset (with the testkit's slack for a loaded machine); prints the time it took.
    async fn failing_until_rolled_back(
        &self,
        api: &switchyard::client::AdminClient,
        loads: Vec<Load>,
    ) -> Value {
        self.green.set_errors(1000);
        let onset = Instant::now();
        let r = wait_status(api, 10, |r| r["status"] == "aborted").await;
        let took = onset.elapsed();
        stop(loads).await;
        eprintln!("rolled back {took:?} after the onset: {}", reason(&r));
        fired_between(
            took,
            Duration::ZERO,
            Duration::from_millis(1500),
            "fleet rollback",
        );
        r
    }
}

/// Waits until the window clock (whole seconds) reaches `second`.
async fn until_second(second: u64) {
    while now_second() < second {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn stop(loads: Vec<Load>) {
    for l in loads {
        l.stop().await;
    }
}

bounded_test! {
    /// A candidate behind two instances, while the leader serves none of its traffic: kept
    /// while healthy, and rolled back by the leader's guard within 1.5 s of the onset of its
    /// failures (with slack for a loaded machine); the reason counts three instances.
    async fn a_candidate_behind_two_peers_is_kept_while_healthy_and_rolled_back_within_1_5_s_of_failing() {
        let fleet = Fleet::start(2, Vec::new()).await;
        let api = admin(&fleet.leader);
        start_held(&api, 10.0).await;
        let loads = fleet.load().await;
        fleet.judging_peers().await;
        // A few guard windows of healthy candidate traffic, judged over the fleet.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_status(&api, "paused", "a healthy candidate is kept").await;

        let r = fleet.failing_until_rolled_back(&api, loads).await;
        let why = reason(&r);
        assert!(
            why.starts_with("aborted by guard: candidate green error rate") && why.contains(", 3 instances)"),
            "{why}"
        );
        let local = fleet.leader.control.snapshot().services["shop"]
            .group("green")
            .unwrap()
            .stats
            .window
            .summary(0, now_second());
        assert_eq!(local.requests, 0, "the leader served none of it");
        assert!(fleet.blue.hits() > 0);
    }
}

/// A peer that accepts connections and never answers: the pulls to it time out.
async fn silent_peer() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    addr
}

bounded_test! {
    /// A peer that refuses connections and one that never answers are shown stale with the
    /// error and counted as failed pulls; neither holds up the guard, which judges the
    /// other peer's traffic and rolls back within 1.5 s of the onset (with load slack).
    async fn a_peer_that_is_down_or_silent_shows_stale_and_the_guard_judges_the_others_in_time() {
        let down = RefusingPort::new();
        let silent = silent_peer().await;
        let fleet = Fleet::start(
            1,
            vec![
                Peer {
                    name: "down".into(),
                    admin: down.addr.to_string(),
                },
                Peer {
                    name: "silent".into(),
                    admin: silent.to_string(),
                },
            ],
        )
        .await;
        let api = admin(&fleet.leader);
        let begun = now_second();
        start_held(&api, 10.0).await;
        let loads = fleet.load().await;
        fleet.judging_peers().await;
        // The guard judges from the second after its attempt began.
        until_second(begun + 2).await;
        let r = fleet.failing_until_rolled_back(&api, loads).await;
        assert!(reason(&r).contains(", 2 instances)"), "{}", reason(&r));

        let views = fleet.leader.control.peer_views();
        let view = |name: &str| views.iter().find(|v| v.name == name).unwrap().clone();
        let (up, gone, mute) = (view("peer-0"), view("down"), view("silent"));
        assert!(up.stale.is_none() && up.last_pull_unix_ms.is_some(), "{up:?}");
        let error = gone.stale.clone().unwrap_or_default();
        assert!(error.contains(&down.addr.to_string()), "{gone:?}");
        assert!(gone.last_pull_unix_ms.is_none() && gone.observed.is_empty(), "{gone:?}");
        let error = mute.stale.clone().unwrap_or_default();
        assert!(error.contains("no answer within 1s"), "{mute:?}");
        let text = metrics_text(&fleet.leader).await;
        let pulls = |peer: &str, result: &str| {
            metric(
                &text,
                "switchyard_peer_pulls_total",
                &[&format!("peer=\"{peer}\""), &format!("result=\"{result}\"")],
            )
            .unwrap_or(0.0)
        };
        assert!(pulls("down", "failed") >= 1.0 && pulls("silent", "failed") >= 1.0, "{text}");
        assert!(pulls("peer-0", "ok") >= 1.0 && pulls("peer-0", "failed") == 0.0, "{text}");
    }
}

bounded_test! {
    /// A dry run of a built-in check on the leader judges the peers' requests too (and says
    /// over how many instances); once the peers are removed it judges the leader's own
    /// window alone, which saw nothing.
    async fn a_builtin_check_on_the_leader_judges_the_peers_requests_until_they_are_removed() {
        let fleet = Fleet::start(2, Vec::new()).await;
        let loads = fleet.load().await;
        fleet.judging_peers().await;
        fleet.green.set_errors(1000);
        let control = fleet.leader.control.clone();
        let api = admin(&fleet.leader);
        let failed = |res: &Value| res["results"][0]["measurement"]["outcome"] == "fail";
        let started = Instant::now();
        let res = loop {
            let res = dry_run(&api, "errors").await;
            if failed(&res) || started.elapsed() > Duration::from_secs(10) {
                break res;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        stop(loads).await;
        let m = &res["results"][0]["measurement"];
        assert!(failed(&res), "{m}");
        assert!(m["detail"].as_str().unwrap().ends_with(", 3 instances"), "{m}");

        control.set_peers(Vec::new());
        assert!(control.peer_views().is_empty());
        let m = &dry_run(&api, "errors").await["results"][0]["measurement"];
        assert_eq!(m["outcome"], "inconclusive", "{m}");
        assert!(m["detail"].as_str().unwrap().contains("candidate had 0 requests"), "{m}");
    }
}

bounded_test! {
    /// `GET /api/v1/fleet/seconds?from=S`: the instance's clock, and per service and group
    /// the seconds from S that saw anything, with counters by class and a sparse latency
    /// histogram; nothing before S; `seconds=1` a page of one; read scope.
    async fn the_fleet_seconds_endpoint_answers_each_groups_seconds_from_the_asked_one() {
        let (blue, green) = TestBackend::pair().await;
        let sy = start(&blue_green(blue.addr, green.addr).build()).await;
        let from = now_second();
        for path in ["", "", "status/503"] {
            get_web(&sy, &format!("/{path}")).await;
        }
        let api = admin(&sy);
        let v = api.get(&format!("/api/v1/fleet/seconds?from={from}")).await.unwrap();
        let now = v["now_second"].as_u64().unwrap();
        assert!(now >= from && v["now_ms"].as_u64().unwrap() / 1000 == now, "{v}");
        let seconds = v["services"]["shop"]["blue"].as_array().unwrap();
        let total = |key: &str, i: usize| -> u64 {
            seconds.iter().map(|s| s[key][i].as_u64().unwrap()).sum()
        };
        assert!(seconds.iter().all(|s| s["second"].as_u64().unwrap() >= from), "{v}");
        let requests: u64 = seconds.iter().map(|s| s["requests"].as_u64().unwrap()).sum();
        assert_eq!((requests, total("classes", 1), total("classes", 4)), (3, 2, 1), "{v}");
        let in_buckets: u64 = seconds
            .iter()
            .flat_map(|s| s["latency"].as_array().unwrap().clone())
            .map(|pair| pair[1].as_u64().unwrap())
            .sum();
        assert_eq!(in_buckets, 3, "{v}");
        assert_eq!(v["services"]["shop"]["green"], json!([]), "an idle group sends nothing");

        assert_eq!(v["to"], v["now_second"], "{v}");
        let page = api
            .get(&format!("/api/v1/fleet/seconds?from={from}&seconds=1"))
            .await
            .unwrap();
        assert_eq!(page["to"], from, "{page}");
        let first = page["services"]["shop"]["blue"].as_array().unwrap();
        assert!(first.iter().all(|s| s["second"] == from), "{page}");
        let later = api.get(&format!("/api/v1/fleet/seconds?from={}", now + 5)).await.unwrap();
        assert_eq!(later["services"]["shop"]["blue"], json!([]), "{later}");
        let url = format!("http://{}/api/v1/fleet/seconds", sy.admin_addr);
        assert_eq!(get(&client(), &url, &[]).await.unwrap().status, 401);
        let token = [("authorization", "Bearer t0ken")];
        let bad = get(&client(), &format!("{url}?since=1"), &token).await.unwrap();
        assert_eq!(bad.status, 422, "{}", bad.body);
    }
}
