//! An instance that does not lead keeps the fleet's state as etcd has it, whatever it wrote
//! itself: its own write's late answer never takes its view back behind what its watch
//! already brought. With a real etcd; `lb-1` reaches it through a proxy that holds back the
//! answer to one write (the write lands, the watches bring it, the writer still waits).

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::etcd::Etcd;
use common::fleet::one_behind_a_proxy;
use common::release::*;
use common::*;
use serde_json::{json, Value};

/// The fleet's prefix in etcd.
const PREFIX: &str = "/sy/follower";

/// The longest a follower's view may stay behind etcd while etcd answers: the fleet's watch
/// is reopened once it was silent for 5 s (`store::etcd::watch::SILENT`), and every instance
/// rewrites its record each second, so any change reaches it within that, and a second more.
const CATCH_UP: Duration = Duration::from_secs(6);

/// How long the held answer may wait: under `control::persist::FORWARD_WAIT` (2 s), after
/// which the write would be reported as not landed and nothing applied — the case this test
/// is not about.
const HELD_AT_MOST: Duration = Duration::from_millis(1500);

/// What two instances must agree on of a rollout's view.
fn essentials(r: &Value) -> Value {
    json!([
        r["id"],
        r["status"],
        r["step"],
        r["weight"],
        r["updated_at"],
        r["split"]
    ])
}

bounded_test! {
    /// A rollout started through a follower whose write's answer comes late: meanwhile the
    /// leader took the rollout from etcd and made its first step (10 %, then a pause until
    /// promoted), and the follower's watch brought both. The follower keeps that — it does
    /// not go back to the step-0 rollout it wrote (which nothing would ever correct: the
    /// leader, paused, writes nothing more). The flake of `fleet_failover`'s end-hook test:
    /// lb-1 answered "step 0, progressing, blue=100%" for 10 s after lb-0 paused at 10 %.
    async fn a_follower_whose_start_of_a_rollout_is_answered_after_the_leaders_first_step_keeps_that_step() {
        let etcd = Etcd::start().await;
        let (blue, green) = TestBackend::pair().await;
        let (proxy, servers, _dir) =
            one_behind_a_proxy(&etcd, PREFIX, &blue_green(blue.addr, green.addr)).await;
        // The start's transaction is the one that moves the rollout ids' sequence.
        let seq = base64::engine::general_purpose::STANDARD.encode(format!("{PREFIX}/seq/rollout"));
        proxy.hold_answers(move |request| request.starts_with("/v3/kv/txn") && request.contains(&seq));
        let (leader, follower) = (admin(&servers[0]), admin(&servers[1]));
        let through = admin(&servers[1]);
        let started = tokio::spawn(async move {
            start_rollout(
                &through,
                json!({ "kind": "canary", "steps": [{ "weight": 10 }, { "pause": "until-promoted" }] }),
            )
            .await
        });
        let held = tokio::time::Instant::now();
        wait_rollout_for(&leader, HELD_AT_MOST, "the leader made the first step", paused_at(1000)).await;
        let left = HELD_AT_MOST.saturating_sub(held.elapsed());
        wait_rollout_for(&follower, left, "the follower's watch brought the first step", paused_at(1000)).await;
        proxy.release();
        let answer = started.await.unwrap();
        println!("the start was answered {:?} after it was sent: {answer}", held.elapsed());
        eventually(CATCH_UP, "the follower shows the fleet's state: the rollout paused at 10 %", || async {
            paused_at(1000)(&rollout(&follower).await)
        })
        .await;
        let (l, f) = (rollout(&leader).await, rollout(&follower).await);
        assert_eq!(essentials(&f), essentials(&l), "follower {f}\nleader {l}");
    }
}

bounded_test! {
    /// A follower aborts a rollout; its record of the abort lands, but the answer comes late.
    /// Meanwhile the leader took the abort from etcd, ran the `on_rollback` hook and recorded
    /// it done, and the follower's watch brought all of it while the follower still waited on
    /// its own write — and so set it aside (a write of its own not yet answered is newer than
    /// anything the watch brings). Once the answer comes, the follower reads the fleet's state
    /// again: the end work done. Else it kept "end work due, not begun" for good (nothing more
    /// is written about an ended rollout) and, leading next, ran the hook a second time — the
    /// flake of `fleet_failover`'s end-hook test, where the instance that aborted led next.
    async fn a_follower_whose_abort_is_answered_after_the_leader_ran_the_end_hook_keeps_that() {
        abort_answered_late(Late::AnsweredThenLeads).await;
    }
}

bounded_test! {
    /// The same, but the follower leads before the answer comes: taking over, it reads the
    /// fleet's state again although its own is at a later revision (what it set aside is not
    /// in it), and does not run the hook the last leader finished.
    async fn a_follower_that_leads_while_its_abort_is_unanswered_does_not_run_the_finished_end_hook() {
        abort_answered_late(Late::LeadsThenAnswered).await;
    }
}

/// Whether the follower's late answer comes before or after it leads.
#[derive(PartialEq)]
enum Late {
    AnsweredThenLeads,
    LeadsThenAnswered,
}

/// The follower (lb-1) aborts a rollout whose abort's answer the proxy holds while the
/// leader (lb-0) runs the `on_rollback` hook; then lb-0 is lost and lb-1 leads, the answer
/// coming before or after that. The hook ran once, and no one says it may not have.
async fn abort_answered_late(late: Late) {
    let etcd = Etcd::start().await;
    let (blue, green) = TestBackend::pair().await;
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("hook-runs");
    let cfg = blue_green(blue.addr, green.addr).service(&format!(
        "[service.hooks.on_rollback]\ncommand = \"echo start >> {0}; sleep 1; echo end >> {0}\"\ntimeout = \"20s\"\n",
        runs.display()
    ));
    let (proxy, mut servers, _files) = one_behind_a_proxy(&etcd, PREFIX, &cfg).await;
    let (leader, follower) = (admin(&servers[0]), admin(&servers[1]));
    let canary =
        json!({ "kind": "canary", "steps": [{ "weight": 10 }, { "pause": "until-promoted" }] });
    // A first rollout aborted through the follower, its hook run: the follower's first
    // durable write, whose first try is refused as guessed wrong (no write of its own landed
    // before) and tried again — the hold below is for one that lands at once.
    start_rollout(&leader, canary.clone()).await;
    wait_status(&follower, 10, paused_at(1000)).await;
    follower
        .post("/api/v1/services/shop/rollout/abort", json!({}))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "the first abort's hook ran",
        || async {
            lines_of(&runs, "end") == 1 && rollout(&follower).await.get("end_work").is_none()
        },
    )
    .await;

    start_rollout(&leader, canary).await;
    wait_status(&follower, 10, |r| r["id"] == 2 && paused_at(1000)(r)).await;
    // The abort's transaction is the one that marks attempt 0 of rollout 2 ended.
    let ended =
        base64::engine::general_purpose::STANDARD.encode(format!("{PREFIX}/ended/{:020}/0", 2));
    proxy
        .hold_answers(move |request| request.starts_with("/v3/kv/txn") && request.contains(&ended));
    follower
        .post("/api/v1/services/shop/rollout/abort", json!({}))
        .await
        .unwrap();
    let done = |r: &Value| r["id"] == 2 && r["status"] == "aborted" && r.get("end_work").is_none();
    wait_rollout_for(
        &leader,
        Duration::from_secs(3),
        "the leader ran the end hook and recorded it done",
        done,
    )
    .await;
    assert_eq!(lines_of(&runs, "end"), 2, "the hook ended");
    let stale = rollout(&follower).await;
    assert_eq!(
        stale["end_work"]["begun"], false,
        "the follower took the leader's record while its own was unanswered: {stale}"
    );
    if late == Late::AnsweredThenLeads {
        proxy.release();
        eventually(CATCH_UP, "the follower shows the end work done", || async {
            done(&rollout(&follower).await)
        })
        .await;
    }

    servers.remove(0).shutdown().await;
    etcd.revoke_leader_lease(PREFIX).await;
    eventually(Duration::from_secs(5), "lb-1 leads", || async {
        follower.get("/api/v1/status").await.unwrap()["fleet"]["leading"] == true
    })
    .await;
    if late == Late::LeadsThenAnswered {
        let r = rollout(&follower).await;
        assert!(
            done(&r),
            "lb-1 leads from a state without the end work done: {r}"
        );
        proxy.release();
    }
    // Past the hook's own second: it did not run again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        lines_of(&runs, "start"),
        2,
        "the on_rollback hook ran again"
    );
    let told = events(&follower, "service=shop&kind=hook_failed").await;
    assert!(
        told.is_empty(),
        "the new leader reported the finished hook as lost: {told:#?}"
    );
}
