//! Client-side timeouts and limits, least-outstanding balancing, and draining of a removed
//! target — each observed on real sockets.

mod common;

use std::time::{Duration, Instant};

use common::raw::*;
use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn with_timeouts(backend: std::net::SocketAddr, timeouts: &str) -> String {
    config(&[("blue", &[backend])], "").replacen(
        "[[listener]]",
        &format!("[timeouts]\n{timeouts}\n[limits]\nmax_header_bytes = 8192\n\n[[listener]]"),
        1,
    )
}

/// A backend `blue` behind a switchyard with `timeouts`, and the address of its listener.
async fn blue_behind(timeouts: &str) -> (TestBackend, Server, std::net::SocketAddr) {
    let b = TestBackend::start("blue").await;
    let sy = start(&with_timeouts(b.addr, timeouts)).await;
    let web = sy.listener_addr("web").await;
    (b, sy, web)
}

bounded_test! {
    current_thread;
    async fn an_idle_client_connection_is_closed_after_the_idle_timeout() {
        let (_b, _sy, web) = blue_behind("idle = \"300ms\"").await;
        let mut s = send(web, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
        let (text, took) = read_to_close(&mut s, Duration::from_secs(5)).await;
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        // Between 1 and 1.25 times the limit after the answer's last byte.
        fired_between(
            took,
            Duration::from_millis(300),
            Duration::from_millis(375),
            "idle",
        );
    }
}

bounded_test! {
    current_thread;
    async fn a_client_that_does_not_finish_its_headers_is_cut_off() {
        let (b, _sy, web) = blue_behind("header_read = \"300ms\"").await;
        let mut s = send(web, b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: ").await;
        let (_, took) = read_to_close(&mut s, Duration::from_secs(5)).await;
        let limit = Duration::from_millis(300);
        fired_between(took, limit, limit, "header_read");
        assert_eq!(b.hits(), 0);
    }
}

bounded_test! {
    current_thread;
    async fn headers_over_the_size_limit_are_refused() {
        let (b, _sy, web) = blue_behind("").await;
        let big = "v".repeat(20_000);
        let r = get(&client(), &format!("http://{}/", web), &[("x-big", &big)]).await;
        assert_eq!(r.unwrap().status, 431);
        assert_eq!(b.hits(), 0);
    }
}

/// Share of 200 requests (8 concurrent clients) that the fast target got, when the other
/// target takes 30 ms per answer.
async fn fast_share(balance: &str) -> f64 {
    let slow = TestBackend::start_with_delay(
        "127.0.0.1:0".parse().unwrap(),
        "slow",
        Duration::from_millis(30),
    )
    .await;
    let fast = TestBackend::start("fast").await;
    let sy = start(&config(
        &[("blue", &[slow.addr, fast.addr])],
        &format!("balance = \"{balance}\""),
    ))
    .await;
    let url = web_url(&sy).await;
    let mut workers = Vec::new();
    for _ in 0..8 {
        let url = url.clone();
        workers.push(tokio::spawn(async move {
            let c = client();
            for _ in 0..25 {
                assert_eq!(get(&c, &url, &[]).await.unwrap().status, 200);
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    fast.hits() as f64 / (fast.hits() + slow.hits()) as f64
}

bounded_test! {
    async fn least_outstanding_sends_most_requests_to_the_target_that_answers_fastest() {
        let lor = fast_share("least-outstanding").await;
        let rr = fast_share("round-robin").await;
        assert!(
            lor > 0.8,
            "least-outstanding gave the fast target only {:.0}%",
            lor * 100.0
        );
        assert!(
            (0.4..=0.6).contains(&rr),
            "round-robin should split evenly, got {:.0}%",
            rr * 100.0
        );
    }
}

bounded_test! {
    async fn a_removed_target_finishes_its_in_flight_request_and_gets_no_new_ones() {
        let old = TestBackend::start("old").await;
        let new = TestBackend::start("new").await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sy.toml");
        std::fs::write(
            &path,
            config(&[("blue", &[old.addr])], "deregistration_delay = \"5s\""),
        )
        .unwrap();
        let cfg = switchyard::config::load(&path).unwrap();
        let sy = Server::start(cfg, Some(path.clone())).await.unwrap();
        let base = format!("http://{}", sy.listener_addr("web").await);

        let url = format!("{base}/sleep/600");
        let in_flight = tokio::spawn(async move { get(&client(), &url, &[]).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        std::fs::write(
            &path,
            config(&[("blue", &[new.addr])], "deregistration_delay = \"5s\""),
        )
        .unwrap();
        admin(&sy).post("/api/v1/reload", json!({})).await.unwrap();

        for _ in 0..10 {
            assert_eq!(backend_of(&format!("{base}/")).await, "new");
        }
        let r = in_flight.await.unwrap().unwrap();
        assert_eq!(
            (r.status.as_u16(), r.backend()),
            (200, "old"),
            "the in-flight request finished on the removed target"
        );
    }
}

bounded_test! {
    current_thread;
    async fn a_graceful_stop_closes_idle_connections_at_once_and_lets_a_request_finish() {
        let (_b, sy, web) = blue_behind("shutdown = \"20s\"").await;
        let addr = web;
        // One kept-alive connection that sits idle, one with a slow request in flight.
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        assert!(idle.read(&mut buf).await.unwrap() > 0);
        let mut busy = TcpStream::connect(addr).await.unwrap();
        busy.write_all(b"GET /sleep/400 HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;

        let t = Instant::now();
        let stop = tokio::spawn(sy.shutdown());
        let (text, _) = read_to_close(&mut idle, Duration::from_secs(2)).await;
        assert_eq!(text, "", "the idle connection is closed without a word");
        let (text, _) = read_to_close(&mut busy, Duration::from_secs(5)).await;
        assert!(
            text.starts_with("HTTP/1.1 200"),
            "the request in flight finished: {text}"
        );
        stop.await.unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "stopped when the last request was done, not at the 20 s bound: {:?}",
            t.elapsed()
        );
    }
}

bounded_test! {
    current_thread;
    async fn a_kept_alive_connection_waits_idle_not_header_read_between_requests() {
        let (_b, _sy, web) = blue_behind("header_read = \"300ms\"\nidle = \"5s\"").await;
        let mut s = TcpStream::connect(web).await.unwrap();
        for i in 0..2 {
            if i > 0 {
                // Well past header_read, well within idle.
                tokio::time::sleep(Duration::from_millis(1200)).await;
            }
            s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .unwrap();
            let text = read_answer(&mut s).await;
            assert!(text.starts_with("HTTP/1.1 200"), "request {i}: {text:?}");
        }
    }
}

bounded_test! {
    current_thread;
    async fn a_head_sent_a_byte_at_a_time_is_cut_at_header_read() {
        let (b, _sy, web) = blue_behind("header_read = \"500ms\"\nidle = \"30s\"").await;
        let s = TcpStream::connect(web).await.unwrap();
        // A slowloris: every byte resets no timer, so the head is cut 500 ms after its first
        // byte, long before it ends (a head of this size would take 20 s at this pace). The
        // bytes go out from a task of their own while the test watches for the close.
        let head = format!(
            "GET / HTTP/1.1\r\nhost: x\r\nx-slow: {}\r\n\r\n",
            "y".repeat(170)
        );
        let (mut rx, mut tx) = s.into_split();
        let t = Instant::now();
        let writer = tokio::spawn(async move {
            for byte in head.as_bytes() {
                if tx.write_all(std::slice::from_ref(byte)).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let mut text = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), rx.read_to_end(&mut text))
            .await
            .expect("the connection was cut");
        let took = t.elapsed();
        writer.abort();
        let limit = Duration::from_millis(500);
        fired_between(took, limit, limit, "header_read of a slow head");
        let text = String::from_utf8_lossy(&text);
        assert!(!text.contains("200"), "{text}");
        assert_eq!(b.hits(), 0);
    }
}

bounded_test! {
    current_thread;
    async fn header_read_starts_with_the_first_byte_of_a_later_request() {
        let (b, _sy, web) = blue_behind("header_read = \"300ms\"\nidle = \"10s\"").await;
        let mut s = send(web, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
        let mut buf = [0u8; 4096];
        assert!(s.read(&mut buf).await.unwrap() > 0);
        tokio::time::sleep(Duration::from_millis(500)).await;
        // A second head begins and stalls: cut off by header_read, long before idle.
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: ")
            .await
            .unwrap();
        let (_, took) = read_to_close(&mut s, Duration::from_secs(8)).await;
        // Not before header_read (300 ms) from the second head's first byte: a timer that ran
        // from the end of the first answer would have closed the connection during the sleep.
        let limit = Duration::from_millis(300);
        fired_between(took, limit, limit, "header_read of a later head");
        assert_eq!(b.hits(), 1);
    }
}

bounded_test! {
    current_thread;
    async fn an_idle_h2c_connection_is_not_cut_by_header_read() {
        let (_b, _sy, web) = blue_behind("header_read = \"300ms\"\nidle = \"5s\"").await;
        // One connection, by hand: a client that reconnected would hide a closed one.
        let stream = TcpStream::connect(web).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        for i in 0..2 {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(1200)).await;
            }
            let req = http::Request::get("http://x/")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            let resp = send
                .send_request(req)
                .await
                .expect("the connection is open");
            assert_eq!(resp.status(), 200, "request {i}");
        }
    }
}

/// The testkit's bound itself: a test stuck reading from a peer that never answers fails
/// at its bound instead of hanging the suite.
#[tokio::test]
#[should_panic(expected = "the test did not finish within 200ms")]
async fn bounded_fails_a_test_stuck_on_a_silent_peer() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    bounded(Duration::from_millis(200), async {
        let mut s = send(addr, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
        let mut buf = [0u8; 16];
        let _ = s.read(&mut buf).await;
    })
    .await;
}
