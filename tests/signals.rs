//! The real `switchyard` binary's signals: SIGHUP re-reads the file (a broken one is logged
//! with its place and the running configuration stays), SIGTERM and SIGINT stop accepting at
//! once and let in-flight requests finish, bounded by `timeouts.shutdown`, then exit 0.

mod common;

use std::time::{Duration, Instant};

use common::bin::*;
use common::*;

bounded_test! {
    async fn sighup_applies_the_new_file_and_logs_a_broken_one_with_its_place_while_the_old_serves() {
        let bin = Binary::setup().await;
        let (path, web, admin) = (bin.path.clone(), bin.web, bin.admin);
        let sy = run_binary(&path, admin).await;
        let c = client();
        let url = format!("http://{web}/");
        assert_eq!(get(&c, &url, &[]).await.unwrap().backend(), "blue");

        write_config(&path, web, admin, "green", bin.blue.addr, bin.green.addr);
        signal(&sy.child, "-HUP");
        eventually(
            Duration::from_secs(5),
            "SIGHUP applied the new file",
            || async {
                get(&c, &url, &[])
                    .await
                    .is_ok_and(|r| r.backend() == "green")
            },
        )
        .await;

        // A broken file: the error is logged with file, line and column, and the running
        // configuration (green active) stays.
        let broken = std::fs::read_to_string(&path)
            .unwrap()
            .replace("forward = \"shop\"", "forward = \"x\"");
        std::fs::write(&path, broken).unwrap();
        signal(&sy.child, "-HUP");
        eventually(
            Duration::from_secs(5),
            "the rejected reload logged",
            || async { logged(&path).contains("reload on SIGHUP rejected") },
        )
        .await;
        let log = logged(&path);
        assert!(
            log.contains("sy.toml:12:11: route[0].forward: no service named \"x\""),
            "{log}"
        );
        for _ in 0..5 {
            assert_eq!(get(&c, &url, &[]).await.unwrap().backend(), "green");
        }
    }
}

/// A request to `path` sent through the binary's listener, once blue has it in hand.
async fn in_flight(bin: &Binary, path: &str) -> tokio::task::JoinHandle<Result<Reply, String>> {
    let url = format!("http://{}{path}", bin.web);
    let slow = tokio::spawn(async move { get(&client(), &url, &[]).await });
    eventually(
        Duration::from_secs(5),
        "the request reached blue",
        || async { bin.blue.hits() == 1 },
    )
    .await;
    slow
}

/// Sends `sig` while a 2 s request is in flight: new connections are refused while that
/// request still runs and the process is still alive; the request then completes with 200
/// and the process exits 0.
async fn stops_gracefully_on(sig: &str) {
    let bin = Binary::setup().await;
    let (path, web, admin) = (bin.path.clone(), bin.web, bin.admin);
    let mut sy = run_binary(&path, admin).await;
    let slow = in_flight(&bin, "/sleep/2000").await;
    let t = Instant::now();
    signal(&sy.child, sig);
    eventually(
        Duration::from_secs(1),
        "new connections refused",
        || async { tokio::net::TcpStream::connect(web).await.is_err() },
    )
    .await;
    assert!(
        sy.child.try_wait().unwrap().is_none() && !slow.is_finished(),
        "refusing was seen only after the in-flight request ended or the process exited"
    );
    let r = slow.await.unwrap().expect("the in-flight request finished");
    assert_eq!(r.status, 200);
    let (status, took) = exit_of(&mut sy.child, t, Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", logged(&path));
    assert!(
        took >= Duration::from_millis(1500),
        "exited {took:?} after {sig}, before the request in flight could end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_refuses_new_connections_finishes_the_request_in_flight_then_exits_0() {
    bounded(TEST_LIMIT, stops_gracefully_on("-TERM")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_like_sigterm() {
    bounded(TEST_LIMIT, stops_gracefully_on("-INT")).await;
}

bounded_test! {
    async fn a_request_longer_than_the_shutdown_bound_is_cut_and_the_process_exits_at_the_bound() {
        let bin = Binary::setup().await;
        let (path, admin) = (bin.path.clone(), bin.admin);
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("shutdown = \"5s\"", "shutdown = \"1s\"");
        std::fs::write(&path, text).unwrap();
        let mut sy = run_binary(&path, admin).await;
        let slow = in_flight(&bin, "/sleep/10000").await;
        let t = Instant::now();
        signal(&sy.child, "-TERM");
        let (status, took) = exit_of(&mut sy.child, t, Duration::from_secs(9)).await;
        assert_eq!(status.code(), Some(0), "{}", logged(&path));
        fired_between(
            took,
            Duration::from_secs(1),
            Duration::from_millis(1250),
            "the shutdown bound",
        );
        let cut = slow.await.unwrap();
        assert!(
            cut.as_ref().map_or(true, |r| r.status != 200),
            "the 10 s request was cut, not answered: {:?}",
            cut.map(|r| r.status)
        );
    }
}
