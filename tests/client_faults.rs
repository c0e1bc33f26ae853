//! Failures the client causes — a stalled, aborted or too large upload — are answered
//! (408, 400, 413) and counted apart as client errors: never against the target (passive
//! ejection), nor in the group's answers that the guard and analyses judge. Uploads that flow
//! steadily are not cut by the request timeout, which is the target's time. Misbehaving
//! clients are raw TCP clients on loopback. (Over 600 lines: one fault per test, sharing
//! this file's proxy-and-log setup; splitting it would copy that setup.)

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::raw::*;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One group `blue` with `targets`, the given `[timeouts]` and `[limits]` lines, and the access
/// log written to `log`.
fn cfg(targets: &[SocketAddr], timeouts: &str, limits: &str, log: &std::path::Path) -> String {
    config(&[("blue", targets)], "").replacen(
        "[[listener]]",
        &format!(
            "[timeouts]\n{timeouts}\n[limits]\n{limits}\n[access_log]\npath = \"{}\"\n\n[[listener]]",
            log.display()
        ),
        1,
    )
}

fn counts(sy: &Server) -> switchyard::group::GroupCounts {
    sy.control.snapshot().services["shop"].groups[0]
        .stats
        .snapshot()
}

fn window(sy: &Server) -> switchyard::metrics::Summary {
    sy.control.snapshot().services["shop"].groups[0]
        .stats
        .window
        .last(Duration::from_secs(60))
}

fn log_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn logged(path: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    eventually(Duration::from_secs(10), "access log lines", || async {
        log_lines(path).len() >= n
    })
    .await;
    log_lines(path)
}

/// A proxy started from `cfg(targets, timeouts, limits, log)` with the log in a temporary
/// directory.
async fn proxy(
    targets: &[SocketAddr],
    timeouts: &str,
    limits: &str,
) -> (tempfile::TempDir, std::path::PathBuf, Server) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let sy = start(&cfg(targets, timeouts, limits, &log)).await;
    (dir, log, sy)
}

bounded_test! {
    async fn a_stalled_upload_is_a_408_that_neither_ejects_the_target_nor_counts_as_its_failure() {
        let b = TestBackend::start("blue").await;
        // The request timeout is the longer one: a stall must not be taken for the target's.
        let (_dir, log, sy) =
            proxy(&[b.addr], "client_body = \"300ms\"\nrequest = \"2s\"", "").await;
        let addr = sy.listener_addr("web").await;
        // More than the 5 consecutive failures that eject a target.
        for i in 0..6 {
            let answer = stalled_upload(addr).await;
            assert_eq!(status_of(&answer), 408, "upload {i}: {answer}");
            assert!(
                answer.contains("x-switchyard-error: client_body_timeout"),
                "{answer}"
            );
        }
        let r = get(&client(), &format!("http://{addr}/"), &[])
            .await
            .unwrap();
        assert_eq!(r.status, 200, "the target was not ejected: {}", r.body);
        let c = counts(&sy);
        assert_eq!((c.client_errors, c.timeouts, c.responses[4]), (6, 0, 0));
        let w = window(&sy);
        assert_eq!(
            (w.requests, w.classes[4], w.client_errors),
            (1, 0, 6),
            "the judge sees only the one real answer"
        );
        let text = metrics_text(&sy).await;
        let has = |line: &str| text.lines().any(|l| l == line);
        assert!(
            has("switchyard_client_errors_total{service=\"shop\",group=\"blue\"} 6"),
            "{text}"
        );
        assert!(has(
            "switchyard_route_client_errors_total{listener=\"web\",route=\"all\"} 6"
        ));
        assert!(has(
            "switchyard_responses_total{service=\"shop\",group=\"blue\",class=\"5xx\"} 0"
        ));
        let lines = logged(&log, 7).await;
        let stalled: Vec<_> = lines
            .iter()
            .filter(|l| l["client_error"] == "stalled")
            .collect();
        assert_eq!(stalled.len(), 6, "{lines:?}");
        assert!(stalled.iter().all(|l| l["status"] == 408));
    }
}

bounded_test! {
    async fn an_aborted_upload_is_counted_as_the_clients_error_only() {
        let b = TestBackend::start("blue").await;
        let (_dir, log, sy) = proxy(&[b.addr], "", "").await;
        let addr = sy.listener_addr("web").await;
        for _ in 0..6 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nabc")
                .await
                .unwrap();
            // Let the upload begin, then go away.
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(s);
        }
        eventually(Duration::from_secs(10), "six client errors", || async {
            counts(&sy).client_errors == 6
        })
        .await;
        let r = get(&client(), &format!("http://{addr}/"), &[])
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        let w = window(&sy);
        assert_eq!((w.requests, w.classes[3], w.classes[4]), (1, 0, 0));
        let lines = logged(&log, 7).await;
        assert_eq!(
            lines
                .iter()
                .filter(|l| l["client_error"] == "aborted")
                .count(),
            6,
            "{lines:?}"
        );
    }
}

bounded_test! {
    async fn a_steady_upload_that_outlasts_the_request_timeout_is_passed_on_whole() {
        let b = TestBackend::start("blue").await;
        let (_dir, _log, sy) = proxy(&[b.addr], "request = \"1s\"\nclient_body = \"3s\"", "").await;
        let mut s = TcpStream::connect(sy.listener_addr("web").await)
            .await
            .unwrap();
        // 12 pieces 200 ms apart: 2.4 s of upload, never a pause near either limit.
        let piece = "x".repeat(1000);
        s.write_all(
            format!(
                "POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
                12 * piece.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        for _ in 0..12 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if s.write_all(piece.as_bytes()).await.is_err() {
                break; // answered (wrongly) already: the assertion below says how
            }
        }
        let answer = read_head(&mut s).await;
        assert_eq!(status_of(&answer), 200, "{answer}");
        assert_eq!(counts(&sy).timeouts, 0);
    }
}

bounded_test! {
    async fn a_target_that_stops_reading_an_upload_still_times_out() {
        // Reads the request head, then nothing: the upload fills the socket buffers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut s, _)) = listener.accept().await {
                let mut head = [0u8; 512];
                let _ = s.read(&mut head).await;
                held.push(s);
            }
        });
        let (_dir, _log, sy) =
            proxy(&[target], "request = \"500ms\"\nclient_body = \"30s\"", "").await;
        let mut s = TcpStream::connect(sy.listener_addr("web").await)
            .await
            .unwrap();
        let len = 64 << 20;
        s.write_all(
            format!("POST /up HTTP/1.1\r\nhost: x\r\ncontent-length: {len}\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let writer = tokio::spawn(async move {
            let piece = vec![b'x'; 1 << 16];
            for _ in 0..(len / piece.len()) {
                if s.write_all(&piece).await.is_err() {
                    break;
                }
            }
            s
        });
        eventually(
            Duration::from_secs(20),
            "a timeout for the target",
            || async { counts(&sy).timeouts == 1 },
        )
        .await;
        assert_eq!(counts(&sy).client_errors, 0);
        writer.abort();
    }
}

bounded_test! {
    async fn bodies_over_max_body_bytes_are_refused_with_413_as_client_errors() {
        let b = TestBackend::start("blue").await;
        let (_dir, log, sy) = proxy(&[b.addr], "", "max_body_bytes = 1000").await;
        let addr = sy.listener_addr("web").await;

        // A stated length over the limit: refused before anything is forwarded.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5000\r\n\r\n")
            .await
            .unwrap();
        let answer = read_head(&mut s).await;
        assert_eq!(status_of(&answer), 413, "{answer}");
        assert!(answer.contains("x-switchyard-error: request_body_too_large"));
        assert_eq!(b.hits(), 0, "not forwarded");

        // A chunked body that grows past it: cut off, 413 (the target had not answered yet).
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        for _ in 0..3 {
            let piece = format!("{:x}\r\n{}\r\n", 600, "y".repeat(600));
            if s.write_all(piece.as_bytes()).await.is_err() {
                break;
            }
        }
        let answer = read_head(&mut s).await;
        assert_eq!(status_of(&answer), 413, "{answer}");

        // Within the limit: passed on.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello")
            .await
            .unwrap();
        assert_eq!(status_of(&read_head(&mut s).await), 200);

        let c = counts(&sy);
        assert_eq!((c.client_errors, c.responses[3], c.responses[4]), (2, 0, 0));
        let lines = logged(&log, 3).await;
        let too_large: Vec<_> = lines
            .iter()
            .filter(|l| l["client_error"] == "too_large")
            .map(|l| l["status"].as_u64().unwrap())
            .collect();
        assert_eq!(too_large, [413, 413]);
    }
}

bounded_test! {
    async fn uploads_to_an_http2_target_are_timed_the_same_way() {
        let b = TestBackend::start("blue").await;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("access.log");
        // Pieces 200 ms apart against a 2 s client_body: never near it on a loaded machine.
        let toml = cfg(
            &[b.addr],
            "client_body = \"2s\"\nrequest = \"1s\"",
            "",
            &log,
        )
        .replace(
            "name = \"blue\"\n",
            "name = \"blue\"\nprotocol = \"http2\"\n",
        );
        assert!(toml.contains("protocol = \"http2\""));
        let sy = start(&toml).await;
        let addr = sy.listener_addr("web").await;

        let answer = stalled_upload(addr).await;
        assert_eq!(status_of(&answer), 408, "{answer}");

        // 2 s of steady upload against a 1 s request timeout.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n")
            .await
            .unwrap();
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if s.write_all(b"z").await.is_err() {
                break;
            }
        }
        let answer = read_head(&mut s).await;
        assert_eq!(status_of(&answer), 200, "{answer}");

        let c = counts(&sy);
        assert_eq!((c.client_errors, c.timeouts, c.responses[4]), (1, 0, 0));
    }
}

/// A target that answers as soon as it has a request's head — a chunked `200` whose first
/// chunk goes out at once — and then reads the rest of the upload, giving up (closing the
/// connection) after `patience` without a byte, as servers with a read timeout do.
/// Also returns how many of its exchanges have ended (the target closed its side).
async fn streaming_target(
    patience: Duration,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let ended = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let done = ended.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let done = done.clone();
            tokio::spawn(async move {
                // Counted however the exchange ends, when `s` is dropped with this guard.
                let _ended = Ended(done);
                let mut got = Vec::new();
                let mut chunk = [0u8; 4096];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n";
                if s.write_all(head).await.is_err() {
                    return;
                }
                while let Ok(Ok(n)) = tokio::time::timeout(patience, s.read(&mut chunk)).await {
                    if n == 0 {
                        break;
                    }
                }
                // Gone: the proxy sees the connection end mid-body.
            });
        }
    });
    (addr, ended)
}

/// Counts an exchange of `streaming_target` as ended when dropped.
struct Ended(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A client that starts an upload of 100 bytes, sends 3, and reads the answer's head.
async fn upload_started(addr: SocketAddr) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nabc")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    (s, head)
}

bounded_test! {
    async fn a_client_that_stalls_its_upload_after_the_head_is_the_clients_error_not_the_targets() {
        // The target gives up on the upload after 3 s; the client's pause is cut at 1 s.
        let (target, _) = streaming_target(Duration::from_secs(3)).await;
        let (_dir, log, sy) = proxy(&[target], "client_body = \"1s\"\nrequest = \"10s\"", "").await;
        let (mut s, head) = upload_started(sy.listener_addr("web").await).await;
        assert_eq!(status_of(&head), 200, "{head}");
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut rest)).await;
        eventually(Duration::from_secs(10), "a client error", || async {
            counts(&sy).client_errors == 1
        })
        .await;
        let c = counts(&sy);
        assert_eq!((c.resets, c.timeouts, c.responses[4]), (0, 0, 0), "{c:?}");
        let lines = logged(&log, 1).await;
        assert_eq!(lines[0]["client_error"], "stalled", "{lines:?}");
        assert!(lines[0]["upstream_error"].is_null(), "{lines:?}");
    }
}

bounded_test! {
    async fn a_client_that_aborts_its_upload_after_the_head_is_the_clients_error_not_the_targets() {
        let (target, ended) = streaming_target(Duration::from_secs(2)).await;
        let (_dir, log, sy) =
            proxy(&[target], "client_body = \"30s\"\nrequest = \"30s\"", "").await;
        let (s, head) = upload_started(sy.listener_addr("web").await).await;
        assert_eq!(status_of(&head), 200, "{head}");
        drop(s);
        eventually(Duration::from_secs(10), "a client error", || async {
            counts(&sy).client_errors == 1
        })
        .await;
        // Once the target has closed its side (at the latest after its 2 s read timeout), and a
        // moment for the proxy to see it: that close must not be counted either.
        eventually(Duration::from_secs(10), "the target closed", || async {
            ended.load(std::sync::atomic::Ordering::SeqCst) == 1
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let c = counts(&sy);
        assert_eq!(
            (c.client_errors, c.resets, c.responses[1], c.responses[4]),
            (1, 0, 0, 0),
            "{c:?}"
        );
        let lines = logged(&log, 1).await;
        assert_eq!(lines[0]["client_error"], "aborted", "{lines:?}");
    }
}

bounded_test! {
    async fn a_client_that_closes_while_its_request_waits_is_counted_as_client_closed() {
        let b = TestBackend::start("blue").await;
        let (_dir, log, sy) = proxy(&[b.addr], "request = \"30s\"", "").await;
        let s = send(
            sy.listener_addr("web").await,
            b"GET /sleep/5000 HTTP/1.1\r\nhost: x\r\n\r\n",
        )
        .await;
        eventually(
            Duration::from_secs(10),
            "the request at the target",
            || async { b.hits() == 1 },
        )
        .await;
        drop(s);
        eventually(Duration::from_secs(10), "a client error", || async {
            counts(&sy).client_errors == 1
        })
        .await;
        let c = counts(&sy);
        assert_eq!((c.requests, c.timeouts, c.resets), (1, 0, 0), "{c:?}");
        assert_eq!(c.responses, [0; 5], "no answer counted");
        let w = window(&sy);
        assert_eq!((w.requests, w.client_errors), (0, 1));
        let lines = logged(&log, 1).await;
        assert_eq!(
            (&lines[0]["status"], &lines[0]["client_error"]),
            (&serde_json::json!(499), &serde_json::json!("client_closed")),
            "{lines:?}"
        );
        // The target was not struck: the next request goes there and is answered.
        let r = get_web(&sy, "/").await;
        assert_eq!(r.status, 200);
    }
}

bounded_test! {
    /// The scenario end to end: during a canary, stalled uploads sent to the candidate
    /// through the `group_from_header` override (anyone can send them) must not make the guard
    /// roll back a healthy candidate, nor eject its target. Before the fix each stall was a 504
    /// charged to the candidate, and 15 of them aborted the rollout.
    async fn stalled_uploads_aimed_at_the_candidate_do_not_make_the_guard_roll_back() {
        let (blue, green) = TestBackend::pair().await;
        let service = "active = \"blue\"\n[service.guard]\ninterval = \"100ms\"\nwindow = \"1s\"\nmin_requests = 5\n[service.strategy]\nkind = \"canary\"\nsteps = [{ weight = 10 }, { pause = \"1h\" }]";
        let toml = config(&[("blue", &[blue.addr]), ("green", &[green.addr])], service)
            .replacen(
                "forward = \"shop\"\n",
                "forward = \"shop\"\n[[route.override]]\ngroup_from_header = \"x-switchyard-group\"\n",
                1,
            )
            .replacen(
                "[[listener]]",
                "[timeouts]\nclient_body = \"300ms\"\nrequest = \"2s\"\n\n[[listener]]",
                1,
            );
        let sy = start(&toml).await;
        let api = admin(&sy);
        api.post(
            "/api/v1/rollouts",
            serde_json::json!({ "service": "shop", "candidate": "green" }),
        )
        .await
        .expect("rollout starts");
        let status = |api: switchyard::client::AdminClient| async move {
            api.get("/api/v1/services/shop/rollout")
                .await
                .expect("rollout view")
        };
        eventually(Duration::from_secs(10), "the canary at 10%", || async {
            let r = status(admin(&sy)).await;
            r["weight"] == 1000
        })
        .await;

        let addr = sy.listener_addr("web").await;
        let url = format!("http://{addr}/");
        let c = client();
        // Healthy answers from the candidate, so the guard has enough requests to judge, and
        // 15 stalled uploads at it, all within the guard's window.
        let stalls: Vec<_> = (0..15)
            .map(|_| {
                tokio::spawn(async move {
                    let mut s = TcpStream::connect(addr).await.unwrap();
                    s.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\nx-switchyard-group: green\r\ncontent-length: 100\r\n\r\nabc")
                        .await
                        .unwrap();
                    status_of(&read_head(&mut s).await)
                })
            })
            .collect();
        for _ in 0..20 {
            let r = get(&c, &url, &[("x-switchyard-group", "green")])
                .await
                .unwrap();
            assert_eq!((r.status.as_u16(), r.backend()), (200, "green"));
        }
        for s in stalls {
            assert_eq!(s.await.unwrap(), 408);
        }
        // The guard judges every 100 ms over the last second: give it several full windows in
        // which the stalls are inside, then check that it did not act.
        let since = std::time::Instant::now();
        while since.elapsed() < Duration::from_millis(2500) {
            let r = get(&c, &url, &[("x-switchyard-group", "green")])
                .await
                .unwrap();
            assert_eq!(r.status, 200, "the candidate's target was not ejected");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let r = status(admin(&sy)).await;
        assert_eq!(
            (r["status"].as_str(), r["weight"].as_u64()),
            (Some("progressing"), Some(1000)),
            "the guard left a healthy canary alone: {r}"
        );
    }
}

bounded_test! {
    async fn an_upload_broken_off_mid_stream_is_a_400_client_body_error_counted_and_logged_apart() {
        let b = TestBackend::start("blue").await;
        let (_dir, log, sy) = proxy(&[b.addr], "", "").await;
        let addr = sy.listener_addr("web").await;
        // A chunked upload whose second chunk's size line is not a number.
        let mut s = send(
            addr,
            b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
        )
        .await;
        let head = read_head(&mut s).await;
        assert_eq!(status_of(&head), 400, "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("x-switchyard-error: client_body_error"),
            "{head}"
        );
        eventually(Duration::from_secs(5), "one client error", || async {
            counts(&sy).client_errors == 1
        })
        .await;
        let w = window(&sy);
        assert_eq!(
            (w.classes[3], w.classes[4]),
            (0, 0),
            "not an answer of the version"
        );
        let text = metrics_text(&sy).await;
        assert_eq!(
            metric(&text, "switchyard_client_errors_total", &["group=\"blue\""]),
            Some(1.0),
            "{text}"
        );
        let line = &logged(&log, 1).await[0];
        // The access log's word for a body the client broke off (`access_log::Entry`).
        assert_eq!(line["client_error"], "aborted", "{line}");
        assert_eq!(line["status"], 400, "{line}");
    }
}
