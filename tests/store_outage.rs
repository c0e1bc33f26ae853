//! The state database locked by another process: rollbacks (manual and the guard's) reach
//! the data plane at once and are recorded once the file can be written again; nothing moves
//! toward the candidate meanwhile; the pending write shows in status and /metrics; the
//! rollbacks counter takes its cause from the code path, not from the actor's name. Also:
//! shutdown with the file locked answers every caller and ends; a restart whose last record
//! is a step forward not yet confirmed holds at the weight before it until the guard judged
//! a window; a retry right after an abort is still watched by the guard.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::release::*;
use common::*;
use serde_json::{json, Value};

fn shop(blue: std::net::SocketAddr, green: std::net::SocketAddr, guard: &str) -> String {
    blue_green(blue, green)
        .top("[store]\npath = \"state.db\"")
        .service(&format!("[service.guard]\n{guard}"))
        .build()
}

/// The rollout row and the service's traffic as the database has them.
fn recorded(db: &Path) -> (String, String) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let status = conn
        .query_row(
            "SELECT status FROM rollouts WHERE service = 'shop' ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let traffic = conn
        .query_row(
            "SELECT state FROM traffic WHERE service = 'shop'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    (status, traffic)
}

async fn all_blue(url: &str, n: usize) -> bool {
    let c = client();
    for _ in 0..n {
        match get(&c, url, &[]).await {
            Ok(r) if r.backend() == "blue" => {}
            _ => return false,
        }
    }
    true
}

/// Sends traffic until the rollout is aborted (20 s at most).
async fn aborted_under_traffic(api: &switchyard::client::AdminClient, url: &str, what: &str) {
    let c = client();
    eventually(Duration::from_secs(20), what, || {
        let (c, url) = (c.clone(), url.to_string());
        async move {
            for _ in 0..10 {
                let _ = get(&c, &url, &[]).await;
            }
            rollout(api).await["status"] == "aborted"
        }
    })
    .await;
}

/// Blue and green, a directory with the state database `state.db` and a switchyard on it
/// whose guard is off.
async fn unguarded() -> (
    (TestBackend, TestBackend),
    tempfile::TempDir,
    std::path::PathBuf,
    Server,
) {
    let (blue, green) = TestBackend::pair().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let sy = start_in(&shop(blue.addr, green.addr, "enabled = false"), dir.path()).await;
    ((blue, green), dir, db, sy)
}

async fn pending(api: &switchyard::client::AdminClient) -> u64 {
    api.get("/api/v1/status").await.unwrap()["store"]["pending_writes"]
        .as_u64()
        .unwrap()
}

bounded_test! {
    async fn a_manual_abort_while_the_database_is_locked_moves_traffic_at_once_and_is_recorded_later() {
        let (_backends, _dir, db, sy) = unguarded().await;
        let api = admin(&sy);
        let url = web_url(&sy).await;
        start_rollout(&api, json!({ "kind": "canary", "steps": [
                { "weight": 50 }, { "pause": "until-promoted" }, { "weight": 90 }, { "pause": "until-promoted" }
            ]})).await;
        eventually(Duration::from_secs(10), "paused at 50%", || async {
            let r = rollout(&api).await;
            r["status"] == "paused" && r["weight"] == 5000
        })
        .await;
        // "paused" is a durable write: in the API before it is in the file.
        eventually(Duration::from_secs(10), "the pause recorded", || async {
            pending(&api).await == 0
        })
        .await;

        let lock = DbLock::hold(&db);
        // Forward: refused while the file cannot be written, and nothing moved.
        let e = api
            .post("/api/v1/services/shop/rollout/promote", json!({}))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, switchyard::client::ClientError::Api { status, code, .. }
                if status.as_u16() == 503 && code == "store_unavailable"),
            "{e}"
        );
        assert_eq!(rollout(&api).await["weight"], 5000);

        // Backward: answered at once; the data plane has it.
        let asked = Instant::now();
        let r = admin(&sy)
            .with_actor("cli:alice")
            .post(
                "/api/v1/services/shop/rollout/abort",
                json!({ "reason": "looks bad" }),
            )
            .await
            .expect("abort during the outage");
        assert!(
            asked.elapsed() < Duration::from_secs(3),
            "abort took {:?}",
            asked.elapsed()
        );
        assert_eq!(r["status"], "aborted");
        assert!(all_blue(&url, 40).await, "all traffic on stable at once");

        // The pending record shows in status, the rollout and /metrics; forward stays refused.
        assert!(pending(&api).await >= 1);
        let view = rollout(&api).await;
        assert!(
            view["waiting_for"]
                .as_str()
                .is_some_and(|w| w.contains("state database")),
            "{view}"
        );
        let metrics = metrics_text(&sy).await;
        assert!(
            metric(&metrics, "switchyard_store_pending_writes", &[]).unwrap() >= 1.0,
            "{metrics}"
        );
        assert_eq!(
            metric(
                &metrics,
                "switchyard_rollbacks_total",
                &["cause=\"manual\""]
            ),
            Some(1.0),
            "an abort by API is manual (the cause comes from the code path)"
        );
        assert_eq!(
            metric(&metrics, "switchyard_rollbacks_total", &["cause=\"guard\""]),
            None
        );
        let e = verb_err(&api, "retry", json!({})).await;
        assert!(e.contains("503"), "{e}");
        let (status, _) = recorded(&db);
        assert_eq!(status, "paused", "the database could not have it yet");

        lock.release();
        eventually(
            Duration::from_secs(10),
            "the abort recorded once the file is writable",
            || async { pending(&api).await == 0 },
        )
        .await;
        let (status, traffic) = recorded(&db);
        assert_eq!(status, "aborted");
        assert!(traffic.contains(r#""current":{"blue":10000}"#), "{traffic}");
        assert!(rollout(&api).await.get("waiting_for").is_none());
        // Writable again: a retry goes.
        verb(&api, "retry", json!({})).await;
    }
}

bounded_test! {
    async fn the_guard_rolls_back_while_the_database_is_locked() {
        let (blue, green) = TestBackend::pair().await;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        let sy = start_in(&shop(blue.addr, green.addr, GUARD), dir.path()).await;
        let api = admin(&sy);
        let url = web_url(&sy).await;
        start_rollout(&api, held_at(50.0)).await;
        paused_at(&api, 5000).await;

        // The database stays locked until the guard has rolled back: before the fix the guard's
        // abort failed on "database is locked" and the guard stopped for good.
        let lock = DbLock::hold(&db);
        green.set_errors(1000);
        aborted_under_traffic(&api, &url, "guard rolled back during the outage").await;
        assert!(all_blue(&url, 40).await, "all traffic on stable");
        assert!(pending(&api).await >= 1);
        let metrics = metrics_text(&sy).await;
        assert_eq!(
            metric(&metrics, "switchyard_rollbacks_total", &["cause=\"guard\""]),
            Some(1.0)
        );

        lock.release();
        eventually(Duration::from_secs(10), "recorded", || async {
            pending(&api).await == 0
        })
        .await;
        assert_eq!(recorded(&db).0, "aborted");
    }
}

async fn paused_at(api: &switchyard::client::AdminClient, weight: u64) {
    eventually(
        Duration::from_secs(10),
        &format!("paused at {weight}, recorded"),
        || async {
            let r = rollout(api).await;
            r["status"] == "paused" && r["weight"] == weight && pending(api).await == 0
        },
    )
    .await;
}

const GUARD: &str = "interval = \"100ms\"\nwindow = \"1s\"\nmin_requests = 5";

bounded_test! {
    async fn shutdown_with_the_database_locked_answers_every_caller_and_ends() {
        let (_backends, _dir, db, sy) = unguarded().await;
        let api = admin(&sy);
        start_rollout(&api, held_at(50.0)).await;
        paused_at(&api, 5000).await;
        let lock = DbLock::hold(&db);
        verb(&api, "abort", json!({})).await;
        assert!(pending(&api).await >= 1);

        let control = sy.control.clone();
        let stop = tokio::spawn(sy.shutdown());
        // Once the writer is closed a forward change is answered at once, not queued forever.
        eventually(
            Duration::from_secs(10),
            "forward writes refused because switchyard stops",
            || async {
                match control.switch("shop", "blue", true, "test").await {
                    Err(switchyard::control::ControlError::StoreUnavailable(m)) => {
                        m.contains("shutting down")
                    }
                    _ => false,
                }
            },
        )
        .await;
        tokio::time::timeout(Duration::from_secs(20), stop)
            .await
            .expect("shutdown ends while the file stays locked")
            .unwrap();
        lock.release();
        // The abort never reached the file: the next start resumes held (see rollout_binary).
        assert_eq!(recorded(&db).0, "paused");
    }
}

bounded_test! {
    async fn a_restart_after_an_unconfirmed_step_holds_at_the_weight_before_it_until_the_guard_judged() {
        let (blue, green) = TestBackend::pair().await;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        let config = shop(blue.addr, green.addr, GUARD);
        let sy = start_in(&config, dir.path()).await;
        let api = admin(&sy);
        start_rollout(&api, json!({ "kind": "canary", "steps": [
                { "weight": 10 }, { "pause": "until-promoted" }, { "weight": 50 }, { "pause": "until-promoted" }
            ]})).await;
        paused_at(&api, 1000).await;
        promote(&api).await;
        paused_at(&api, 5000).await;
        sy.shutdown().await;

        // What a step to 50 % leaves when a rollback was decided while it was being written and
        // the rollback's own record never landed: the step is the last record, unconfirmed.
        {
            let conn = rusqlite::Connection::open(&db).unwrap();
            let state: String = conn
                .query_row(
                    "SELECT state FROM traffic WHERE service = 'shop'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            let mut t: Value = serde_json::from_str(&state).unwrap();
            t["step_from"] = json!({ "blue": 9000, "green": 1000 });
            conn.execute(
                "UPDATE traffic SET state = ?1 WHERE service = 'shop'",
                [t.to_string()],
            )
            .unwrap();
        }

        let sy = start_in(&config, dir.path()).await;
        let api = admin(&sy);
        let r = rollout(&api).await;
        assert_eq!(r["weight"], 1000, "{r}");
        assert_eq!(r["split"], json!({ "blue": 9000, "green": 1000 }), "{r}");
        assert!(
            r["waiting_for"]
                .as_str()
                .is_some_and(|w| w.contains("guard") && w.contains("50%")),
            "{r}"
        );
        let e = verb_err(&api, "promote", json!({})).await;
        assert!(e.contains("409"), "{e}");
        eventually(
            Duration::from_secs(15),
            "back at the recorded 50% once the guard judged a window",
            || async {
                let r = rollout(&api).await;
                r["weight"] == 5000 && r["waiting_for"].is_null()
            },
        )
        .await;
        let events = api
            .get("/api/v1/events?service=shop&kind=restored")
            .await
            .unwrap();
        assert_eq!(events.as_array().unwrap().len(), 1, "{events}");
    }
}

bounded_test! {
    async fn a_retry_right_after_an_abort_is_still_watched_by_the_guard() {
        let (blue, green) = TestBackend::pair().await;
        let dir = tempfile::tempdir().unwrap();
        let sy = start_in(&shop(blue.addr, green.addr, GUARD), dir.path()).await;
        let api = admin(&sy);
        let url = web_url(&sy).await;
        start_rollout(&api, held_at(50.0)).await;
        paused_at(&api, 5000).await;
        // Back to back: the retry may come before the woken driver saw the abort (then its
        // guard had ended with the first attempt).
        verb(&api, "abort", json!({})).await;
        verb(&api, "retry", json!({})).await;
        paused_at(&api, 5000).await;
        assert_eq!(rollout(&api).await["attempt"], 1);

        green.set_errors(1000);
        aborted_under_traffic(&api, &url, "the guard rolled back the retried attempt").await;
        let metrics = metrics_text(&sy).await;
        assert_eq!(
            metric(&metrics, "switchyard_rollbacks_total", &["cause=\"guard\""]),
            Some(1.0)
        );
    }
}
