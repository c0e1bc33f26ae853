//! Backtests end to end: a rollout runs over real sockets with a candidate that turns bad, its
//! seconds are recorded in the state store (SQLite, and etcd for a fleet), and an analysis
//! replayed over them decides as the live one did — or, tuned looser, passes. The stores'
//! side (batches kept per rollout, old rollouts pruned) against both stores.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::etcd::Etcd;
use common::fleet::Fleet;
use common::release::*;
use common::*;
use serde_json::{json, Value};
use switchyard::analysis::backtest::{RecordedSecond, Recording, StepMark};
use switchyard::client::{AdminClient, ClientError};
use switchyard::metrics::Second;
use switchyard::store::seconds::{Batch, KEEP_ROLLOUTS};
use switchyard::store::{Commit, EtcdStore, SqliteStore, Store};

/// `errors` runs as the strategy's analysis step: three measurements, failed only if all
/// three fail (so that a replay with another bound has as many seconds to judge as the live
/// run had); `errors-loose` is the same check with a bound the bad candidate stays under.
/// The guard is off: the analysis decides.
fn analyses(max_over_stable: f64) -> String {
    let check = |name: &str, max: f64| {
        format!(
            "[[analysis]]\nname = \"{name}\"\ninterval = \"1s\"\ncount = 3\nmin_requests = 20\nwindow = \"2s\"\n\
             [[analysis.check]]\nname = \"error-rate\"\nmetric = \"error-rate\"\nmax_over_stable = {max}\nfailure_limit = 2\n"
        )
    };
    format!(
        "{}\n{}",
        check("errors", max_over_stable),
        check("errors-loose", 60.0)
    )
}

const STRATEGY: &str = "[service.guard]\nenabled = false\n[service.strategy]\nkind = \"canary\"\nsteps = [{ weight = 30 }, { pause = \"3s\" }, { analysis = \"errors\" }, { weight = 60 }]";

fn cfg(blue: &TestBackend, green: &TestBackend, max_over_stable: f64) -> Cfg {
    blue_green(blue.addr, green.addr)
        .top(&analyses(max_over_stable))
        .service(STRATEGY)
}

/// Starts the rollout under load, turns the candidate bad (30 % 5xx) as its pause before the
/// analysis begins and waits for the analysis to take it back: the rollout as it ended.
async fn rolled_back_by_analysis(api: &AdminClient, web: String, green: &TestBackend) -> Value {
    let load = Load::start(web, 4, &[]);
    start_green(api).await;
    wait_status(api, 10, |r| r["step"] == 1).await;
    green.set_errors(300);
    let r = wait_status(api, 20, |r| r["status"] != "progressing").await;
    load.stop().await;
    assert_eq!(r["status"], "aborted", "{r:#}");
    assert!(
        reason(&r).contains("check error-rate failed 3 of 3 times (limit 2)"),
        "{}",
        reason(&r)
    );
    r
}

/// The backtest of rollout 1, once its last batch is in the store (it is written a couple
/// of seconds after the attempt ended, once the fleet's share of its last seconds came): the
/// only one with the second the rollout ended in, which had traffic.
async fn backtest(api: &AdminClient, body: Value) -> Value {
    let answer = std::sync::Mutex::new(Value::Null);
    eventually(
        Duration::from_secs(10),
        "the rollout's last seconds recorded",
        || {
            let (body, answer) = (body.clone(), &answer);
            async move {
                let Ok(v) = api
                    .post("/api/v1/services/shop/analysis/backtest", body)
                    .await
                else {
                    return false;
                };
                let done = v["outcome"]["at_ms"].as_i64().unwrap_or(i64::MAX);
                let recorded = v["ended_ms"].as_i64().unwrap_or(0) > done;
                *answer.lock().unwrap() = v;
                recorded
            }
        },
    )
    .await;
    answer.into_inner().unwrap()
}

/// The analysis replayed as it ran decides as it did: a failure of the same check after as
/// many measurements, by the time the rollout was taken back. (Replayed from when its step
/// began; live, an analysis that a wake-up of the driver interrupted began again later, so
/// the live decision may come later — seen once in a fleet on a loaded machine, 5.8 s.)
fn assert_same_verdict(bt: &Value, rollout: &Value) {
    let replay = &bt["replays"][0];
    assert_eq!(
        (&replay["analysis"], &replay["step"], &replay["verdict"]),
        (&json!("errors"), &json!(3), &json!("fail")),
        "{bt:#}"
    );
    let detail = replay["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("errors: check error-rate failed 3 of 3 times (limit 2)"),
        "{detail}"
    );
    let decided = replay["decided_at_ms"].as_i64().unwrap();
    let ended = bt["outcome"]["at_ms"].as_i64().unwrap();
    assert!(
        decided <= ended + 1000,
        "decided at {decided}, the rollout ended at {ended}: {bt:#}"
    );
    eprintln!(
        "replay decided {} ms before the rollout ended",
        ended - decided
    );
    assert_eq!(bt["outcome"]["status"], "aborted");
    assert_eq!(bt["outcome"]["reason"], rollout["reason"]);
    eprintln!("live: {}\nreplayed: {detail}", reason(rollout));
}

bounded_test! {
    async fn a_rollout_rolled_back_by_its_analysis_backtests_to_the_same_failure_and_a_looser_bound_passes() {
        let (blue, green) = TestBackend::pair().await;
        let conf = cfg(&blue, &green, 5.0).build();
        let sy = start(&conf).await;
        let api = admin(&sy);
        let rollout = rolled_back_by_analysis(&api, web_url(&sy).await, &green).await;

        let bt = backtest(&api, json!({ "rollout": 1 })).await;
        assert_same_verdict(&bt, &rollout);
        assert_documented(&api, &bt).await;
        assert_eq!((bt["attempt"].as_u64(), bt["missing_seconds"].as_u64()), (Some(0), Some(0)));
        assert!(bt["seconds"].as_u64().unwrap() >= 5, "{bt:#}");

        // The same seconds judged by a looser bound, named.
        let loose = backtest(&api, json!({ "rollout": 1, "analysis": "errors-loose" })).await;
        let replay = &loose["replays"][0];
        assert_eq!(replay["verdict"], "pass", "{loose:#}");
        assert_eq!(replay["step"], Value::Null, "not the strategy's: from the attempt's beginning");
        assert_eq!(replay["checks"][0]["measurements"].as_array().unwrap().len(), 3);

        // Or the analysis the strategy ran, changed in the running configuration.
        let tuned = cfg(&blue, &green, 60.0).build();
        api.post("/api/v1/config/apply", json!({ "path": "test.toml", "content": tuned }))
            .await
            .unwrap();
        let bt = backtest(&api, json!({ "rollout": 1 })).await;
        assert_eq!(bt["replays"][0]["verdict"], "pass", "{bt:#}");
        assert_eq!(bt["replays"][0]["step"], 3);
        assert_eq!(bt["outcome"]["status"], "aborted", "what really happened is unchanged");
    }
}

bounded_test! {
    async fn the_cli_prints_each_measurement_the_decision_and_the_actual_outcome_with_an_exit_code_per_verdict() {
        let (blue, green) = TestBackend::pair().await;
        let sy = start(&cfg(&blue, &green, 5.0).build()).await;
        let api = admin(&sy);
        rolled_back_by_analysis(&api, web_url(&sy).await, &green).await;
        backtest(&api, json!({ "rollout": 1 })).await;
        let admin_addr = sy.admin_addr.to_string();
        let run = |extra: &[&str]| {
            let base = ["analysis", "backtest", "shop", "--rollout", "1", "--admin", &admin_addr, "--token", "t0ken"];
            let args: Vec<String> = base.iter().chain(extra).map(ToString::to_string).collect();
            tokio::task::spawn_blocking(move || common::bin::switchyard(args))
        };
        let (code, out, err) = run(&[]).await.unwrap();
        assert_eq!(code, 3, "a failure is exit code 3: {out}{err}");
        assert!(out.starts_with("shop: rollout #1 attempt 0, blue -> green, recorded from "), "{out}");
        assert!(out.contains("\nactual: aborted at +"), "{out}");
        let decision = out.lines().find(|l| l.starts_with("errors (step 3, from +")).unwrap_or_else(|| panic!("{out}"));
        assert!(decision.contains("): fail — errors: check error-rate failed 3 of 3 times"), "{decision}");
        let measured = out.lines().filter(|l| l.contains(" error-rate ") && l.trim_start().starts_with('+')).count();
        assert_eq!(measured, 3, "each measurement's line: {out}");
        let (code, out, _) = run(&["--analysis", "errors-loose", "--json"]).await.unwrap();
        assert_eq!(code, 0, "a pass is exit code 0: {out}");
        assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["replays"][0]["verdict"], "pass");
    }
}

/// The answer has exactly the fields `/openapi.json` documents for it, at each level (the
/// schema's `required` lists every property of these objects).
async fn assert_documented(api: &AdminClient, answer: &Value) {
    let doc = api.get("/openapi.json").await.unwrap();
    let op = &doc["paths"]["/api/v1/services/{service}/analysis/backtest"]["post"];
    let top = &op["responses"]["200"]["content"]["application/json"]["schema"];
    let replay = &top["properties"]["replays"]["items"];
    let check = &replay["properties"]["checks"]["items"];
    let measurement = &check["properties"]["measurements"]["items"];
    let keys = |v: &Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    let required = |s: &Value| -> Vec<String> {
        let mut k: Vec<String> = s["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        k.sort();
        k
    };
    let r = &answer["replays"][0];
    let c = &r["checks"][0];
    for (value, schema) in [
        (answer, top),
        (&answer["outcome"], &top["properties"]["outcome"]),
        (r, replay),
        (c, check),
        (&c["measurements"][0], measurement),
    ] {
        assert_eq!(keys(value), required(schema), "{value:#}");
        assert_eq!(keys(&schema["properties"]), required(schema));
    }
}

/// How the API refused a backtest: (status, code, message).
async fn refused(api: &AdminClient, service: &str, body: Value) -> (u16, String, String) {
    let path = format!("/api/v1/services/{service}/analysis/backtest");
    match api.post(&path, body).await {
        Err(ClientError::Api {
            status,
            code,
            message,
        }) => (status.as_u16(), code, message),
        other => panic!("POST {path}: {other:?}"),
    }
}

bounded_test! {
    async fn a_backtest_of_an_unknown_rollout_is_a_404_and_of_an_unknown_analysis_a_422_naming_the_field() {
        let (blue, green) = TestBackend::pair().await;
        let sy = start(&cfg(&blue, &green, 5.0).build()).await;
        let api = admin(&sy);
        let (status, code, message) = refused(&api, "shop", json!({ "rollout": 7 })).await;
        assert_eq!((status, code.as_str()), (404, "unknown_rollout"), "{message}");
        assert_eq!(message, "service \"shop\" has no rollout #7");
        let (status, code, _) = refused(&api, "nope", json!({ "rollout": 1 })).await;
        assert_eq!((status, code.as_str()), (404, "unknown_service"));
        let (status, _, message) = refused(&api, "shop", json!({ "analysis": "errors" })).await;
        assert_eq!(status, 422);
        assert!(message.contains("missing field `rollout`"), "{message}");

        // A rollout just started: nothing recorded yet (the first batch comes after 4 s).
        start_green(&api).await;
        let (status, code, message) = refused(&api, "shop", json!({ "rollout": 1 })).await;
        assert_eq!((status, code.as_str()), (404, "not_recorded"), "{message}");
        assert!(message.starts_with("rollout #1 of shop has no recorded seconds"), "{message}");
        // Once its first batch (without traffic: the step marks) is in, the analysis is checked.
        let last = std::sync::Mutex::new((0, String::new(), String::new()));
        eventually(Duration::from_secs(10), "the first batch recorded", || async {
            let answer = refused(&api, "shop", json!({ "rollout": 1, "analysis": "nope" })).await;
            let recorded = answer.0 != 404;
            *last.lock().unwrap() = answer;
            recorded
        })
        .await;
        let (status, code, message) = last.into_inner().unwrap();
        assert_eq!((status, code.as_str()), (422, "unknown_analysis"), "{message}");
        assert_eq!(message, "analysis: no analysis named \"nope\" in the running configuration");
    }
}

bounded_test! {
    async fn while_the_database_is_locked_the_seconds_wait_for_it_and_the_rollout_goes_on() {
        let (blue, green) = TestBackend::pair().await;
        let dir = tempfile::tempdir().unwrap();
        let conf = blue_green(blue.addr, green.addr)
            .top(&analyses(5.0))
            .top("[store]\npath = \"state.db\"")
            .service("[service.strategy]\nkind = \"canary\"\nsteps = [{ weight = 30 }, { pause = \"until-promoted\" }]")
            .build();
        let sy = start_in(&conf, dir.path()).await;
        let api = admin(&sy);
        let load = Load::start(web_url(&sy).await, 2, &[]);
        start_green(&api).await;
        wait_status(&api, 10, |r| r["status"] == "paused").await;
        // The pause is a write of its own, in the API before it is in the file.
        eventually(Duration::from_secs(10), "the pause recorded", || async {
            let st = api.get("/api/v1/status").await.unwrap();
            st["store"]["pending_writes"] == 0 && st["store"]["last_error"].is_null()
        })
        .await;
        let lock = DbLock::hold(&dir.path().join("state.db"));
        // Nothing else writes while paused: the error is a batch of seconds refused.
        eventually(Duration::from_secs(15), "a batch refused", || async {
            let st = api.get("/api/v1/status").await.unwrap();
            st["store"]["last_error"].is_string()
        })
        .await;
        lock.release();
        verb(&api, "promote", json!({})).await;
        wait_status(&api, 10, |r| r["status"] == "completed").await;
        load.stop().await;
        let bt = backtest(&api, json!({ "rollout": 1, "analysis": "errors-loose" })).await;
        // The refused batch was written with the next: no second of the outage is missing.
        let span = (bt["ended_ms"].as_i64().unwrap() - bt["began_ms"].as_i64().unwrap()) / 1000;
        let seconds = bt["seconds"].as_i64().unwrap();
        assert_eq!(bt["missing_seconds"], 0, "{bt:#}");
        assert!(seconds >= span - 1, "{seconds} seconds recorded over {span}: {bt:#}");
    }
}

bounded_test! {
    async fn in_a_fleet_the_seconds_are_kept_in_etcd_and_the_backtest_decides_as_the_rollout_did() {
        let etcd = Etcd::start().await;
        let (blue, green) = TestBackend::pair().await;
        let fleet = Fleet::start(&etcd, "/sy/backtest", &cfg(&blue, &green, 5.0), 1).await;
        let sy = &fleet.servers[0];
        let api = admin(sy);
        let rollout = rolled_back_by_analysis(&api, web_url(sy).await, &green).await;
        let bt = backtest(&api, json!({ "rollout": 1 })).await;
        assert_same_verdict(&bt, &rollout);
        // Read back from etcd by another client: the seconds are there, not in memory.
        let store = connect(&etcd, "/sy/backtest").await;
        let kept = tokio::task::spawn_blocking(move || store.recorded_seconds("shop", 1)).await.unwrap().unwrap();
        assert_eq!(kept[&0].seconds.len() as u64, bt["seconds"].as_u64().unwrap());
        let bytes = switchyard::store::seconds::encode(&kept[&0]).len();
        eprintln!("{bytes} bytes for {} seconds of candidate and stable", kept[&0].seconds.len());
    }
}

async fn connect(etcd: &Etcd, prefix: &str) -> Arc<EtcdStore> {
    let cfg = switchyard::config::EtcdConfig {
        endpoints: vec![etcd.endpoint()],
        prefix: prefix.into(),
        username: None,
        password: None,
        lease_ttl: Duration::from_secs(2),
    };
    EtcdStore::connect(&cfg, "reader", Duration::from_secs(2))
        .await
        .unwrap()
}

/// A batch of `n` seconds of rollout `id` from `start_ms`, the first of its attempt or not.
fn batch(id: u64, start_ms: i64, n: i64, first: bool) -> Batch {
    let second = |at: i64| Second {
        second: at as u64 / 1000,
        requests: 10,
        classes: [0, 9, 0, 0, 1],
        failures: [0; 3],
        client_errors: 0,
        mirror: [0; 2],
        latency: vec![(40, 10)],
    };
    Batch {
        service: "shop".into(),
        rollout: id,
        attempt: 0,
        first,
        recording: Recording {
            seconds: (0..n)
                .map(|i| RecordedSecond {
                    start_ms: start_ms + i * 1000,
                    instances: 1,
                    candidate: second(start_ms + i * 1000),
                    stable: second(start_ms + i * 1000),
                })
                .collect(),
            marks: first
                .then_some(StepMark {
                    step: 0,
                    at_ms: start_ms,
                })
                .into_iter()
                .collect(),
            dropped: 0,
        },
    }
}

/// The contract: an attempt's batches read back as one recording, in order; a new rollout's
/// first batch prunes the service's rollouts beyond the latest `KEEP_ROLLOUTS`.
async fn keeps_batches_and_prunes_old_rollouts(store: Arc<dyn Store>) {
    let s = store.clone();
    tokio::task::spawn_blocking(move || {
        s.record_seconds(&batch(1, 10_000, 5, true)).unwrap();
        s.record_seconds(&batch(1, 15_000, 5, false)).unwrap();
        let kept = s.recorded_seconds("shop", 1).unwrap();
        assert_eq!(kept.len(), 1);
        let r = &kept[&0];
        assert_eq!(r.seconds.len(), 10);
        assert!(r
            .seconds
            .windows(2)
            .all(|w| w[0].start_ms + 1000 == w[1].start_ms));
        assert_eq!(
            r.marks,
            [StepMark {
                step: 0,
                at_ms: 10_000
            }]
        );
        assert!(s.recorded_seconds("shop", 2).unwrap().is_empty());
        assert!(s.recorded_seconds("other", 1).unwrap().is_empty());
        for id in 2..=KEEP_ROLLOUTS as u64 + 1 {
            s.record_seconds(&batch(id, 10_000, 1, true)).unwrap();
        }
        assert!(
            s.recorded_seconds("shop", 1).unwrap().is_empty(),
            "the oldest pruned"
        );
        for id in 2..=KEEP_ROLLOUTS as u64 + 1 {
            assert_eq!(
                s.recorded_seconds("shop", id).unwrap()[&0].seconds.len(),
                1,
                "#{id} kept"
            );
        }
        // Recorded seconds are no state: they leave the rest of the store as it was.
        assert!(s.load().unwrap().rollouts.is_empty());
        s.commit(&Commit::default()).unwrap();
    })
    .await
    .unwrap();
}

bounded_test! {
    async fn sqlite_keeps_an_attempts_batches_in_order_and_prunes_rollouts_beyond_the_latest() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("state.db")).unwrap();
        keeps_batches_and_prunes_old_rollouts(Arc::new(store)).await;
    }
}

bounded_test! {
    async fn etcd_keeps_an_attempts_batches_in_order_and_prunes_rollouts_beyond_the_latest() {
        let etcd = Etcd::start().await;
        keeps_batches_and_prunes_old_rollouts(connect(&etcd, "/sy/seconds").await).await;
    }
}
