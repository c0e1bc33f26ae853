//! A new leader of the fleet decides from the fleet's state as etcd has it when it takes
//! over, not from what its watch has brought so far: the watch may lag behind what the last
//! leader wrote, and some of a leader's decisions (a hold, an abort, a hook run before any
//! write) are not refused by etcd when made on an old view.
//!
//! The lag is made for real: `lb-1` reaches etcd through a proxy that stops forwarding its
//! watch's stream (and nothing else), so its lease, its reads and its writes work while its
//! view of the state stays old until the watch is found silent and reopened (5 s). The last
//! leader is stopped and its lease revoked (what etcd does when it runs out), so that `lb-1`
//! leads at once, within that lag.

mod common;

use std::time::Duration;

use common::etcd::Etcd;
use common::fleet::{one_behind_a_proxy, watch_reopened};
use common::release::*;
use common::*;

/// The fleet's prefix in etcd.
const PREFIX: &str = "/sy/takeover";

/// Whether the last request of a connection opened the fleet's watch: a watch of a range (the
/// prefix), where the election's watch of the leader key is of one key.
fn state_watch(request: &str) -> bool {
    request.starts_with("/v3/watch") && request.contains("range_end")
}

/// The shop of blue and green whose hook at `point` writes `start`, sleeps a second, then
/// writes `end` to `runs`; a guard that judges a window of one second.
fn hooked(backends: &(TestBackend, TestBackend), point: &str, runs: &std::path::Path) -> Cfg {
    blue_green(backends.0.addr, backends.1.addr)
        .service("[service.guard]\ninterval = \"250ms\"\nwindow = \"1s\"\n")
        .service(&format!(
            "[service.hooks.{point}]\ncommand = \"echo start >> {0}; sleep 1; echo end >> {0}\"\ntimeout = \"20s\"\n",
            runs.display()
        ))
}

/// The leader (`servers[0]`, lb-0) is lost — stopped, its lease revoked — and lb-1, whose
/// watch the caller froze, leads at once, its watch still frozen; returns once that watch
/// was reopened and a second more has passed (what lb-1 decided meanwhile is in the fleet's
/// state by then, and in lb-1's view).
async fn hand_over(etcd: &Etcd, servers: &mut Vec<Server>) {
    servers.remove(0).shutdown().await;
    etcd.revoke_leader_lease(PREFIX).await;
    let revoked = std::time::Instant::now();
    let far = admin(&servers[0]);
    eventually(Duration::from_secs(5), "lb-1 leads", || async {
        far.get("/api/v1/status").await.unwrap()["fleet"]["leading"] == true
    })
    .await;
    println!(
        "lb-1 leads {:?} after the last leader's lease was revoked",
        revoked.elapsed()
    );
    assert_eq!(
        watch_reopened(&servers[0]).await,
        0,
        "lb-1's watch caught up before it took over: the test made no lag"
    );
    // Its drivers move once their guard has judged one window (1 s), end work at once;
    // past that, and past the watch's reopening.
    eventually(Duration::from_secs(15), "lb-1's watch reopened", || async {
        watch_reopened(&servers[0]).await >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
}

bounded_test! {
    limit = LOAD_LIMIT;
    /// The last leader ran a rollout's `before_traffic` hook (recorded as begun, then done)
    /// and went on to 10 %, paused until promoted; the next leader's watch still shows the
    /// hook begun and not done. Deciding from that, it would take the hook for one the last
    /// leader was running when it was lost and hold the rollout back at the hook for a person
    /// (a hold always lands: it moves toward stable), and `resume` would run the hook a second
    /// time. It reads the fleet's state when it takes over instead: the rollout stays at
    /// 10 %, paused until promoted, not held, and the hook ran once.
    async fn a_new_leader_whose_watch_lags_decides_from_the_fleets_state_not_from_its_old_view() {
        let etcd = Etcd::start().await;
        let backends = TestBackend::pair().await;
        let dir = tempfile::tempdir().unwrap();
        let runs = dir.path().join("hook-runs");
        let cfg = hooked(&backends, "before_traffic", &runs);
        let (proxy, mut servers, _files) = one_behind_a_proxy(&etcd, PREFIX, &cfg).await;
        let (near, far) = (admin(&servers[0]), admin(&servers[1]));
        start_rollout(
            &near,
            serde_json::json!({ "kind": "canary", "steps": [{ "weight": 10 }, { "pause": "until-promoted" }] }),
        )
        .await;
        // lb-1 sees the hook begun (step 0), then its watch stops while the hook runs.
        wait_rollout(&far, "lb-1 sees the hook begun", |r| {
            r["step"] == 0 && r["hook_started"] == 0
        })
        .await;
        assert!(proxy.freeze_streams(state_watch) >= 1, "lb-1's watch stream was not found");
        // The leader finishes the hook, records it, and goes on to 10 %.
        wait_status(&near, 10, paused_at(1000)).await;
        assert_eq!(lines_of(&runs, "end"), 1, "the hook ended");
        let stale = rollout(&far).await;
        assert_eq!((stale["step"].as_u64(), stale["weight"].as_u64()), (Some(0), Some(0)), "lb-1's view lags: {stale}");

        hand_over(&etcd, &mut servers).await;
        let r = rollout(&far).await;
        assert!(
            paused_at(1000)(&r) && r["step"] == 2 && r["held"] == false,
            "the new leader changed the rollout the last leader left at 10 %: {r}"
        );
        assert!(!reason(&r).contains("running on the last leader"), "{r}");
        assert_eq!(lines_of(&runs, "start"), 1, "the hook ran again");
        // The fleet's record says the same (read from etcd by a fresh look).
        let history = events(&far, "service=shop&limit=100").await;
        assert!(
            history.iter().all(|e| !reason(e).contains("running on the last leader")),
            "a hold was recorded: {history:#?}"
        );
    }
}

bounded_test! {
    limit = LOAD_LIMIT;
    /// The last leader ran an aborted rollout's `on_rollback` hook (its end work, recorded as
    /// begun, then done); the next leader's watch still shows it begun and not done. Deciding
    /// from that, it would record in the fleet's history that the hook was running on the
    /// last leader when it was lost and "may or may not have run" — wrong, and an event lands
    /// whatever the rollout's state. It reads the fleet's state when it takes over instead:
    /// no such event, the end work done, the hook run once.
    async fn a_new_leader_whose_watch_lags_does_not_report_an_end_hook_the_last_leader_finished() {
        let etcd = Etcd::start().await;
        let backends = TestBackend::pair().await;
        let dir = tempfile::tempdir().unwrap();
        let runs = dir.path().join("hook-runs");
        let cfg = hooked(&backends, "on_rollback", &runs);
        let (proxy, mut servers, _files) = one_behind_a_proxy(&etcd, PREFIX, &cfg).await;
        let (near, far) = (admin(&servers[0]), admin(&servers[1]));
        start_rollout(
            &near,
            serde_json::json!({ "kind": "canary", "steps": [{ "weight": 10 }, { "pause": "until-promoted" }] }),
        )
        .await;
        wait_status(&far, 10, paused_at(1000)).await;
        near.post("/api/v1/services/shop/rollout/abort", serde_json::json!({})).await.unwrap();
        // lb-1 sees the end work begun, then its watch stops while the hook runs.
        wait_rollout(&far, "lb-1 sees the end work begun", |r| r["end_work"]["begun"] == true).await;
        assert!(proxy.freeze_streams(state_watch) >= 1, "lb-1's watch stream was not found");
        // The leader finishes the hook and records its end work done.
        wait_rollout(&near, "the end work done", |r| r.get("end_work").is_none()).await;
        assert_eq!(lines_of(&runs, "end"), 1, "the hook ended");
        let stale = rollout(&far).await;
        assert_eq!(stale["end_work"]["begun"], true, "lb-1's view lags: {stale}");

        hand_over(&etcd, &mut servers).await;
        let r = rollout(&far).await;
        assert!(r.get("end_work").is_none() && r["status"] == "aborted", "{r}");
        let told = events(&far, "service=shop&kind=hook_failed").await;
        assert!(told.is_empty(), "the new leader reported the finished hook as lost: {told:#?}");
        assert_eq!(lines_of(&runs, "start"), 1, "the on_rollback hook ran again");
    }
}
