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
