//! The access log: JSON lines with the request's route, group, target and timings; request ids
//! passed upstream; a writer that falls behind drops lines (counted) rather than slow requests.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn logged(path: &std::path::Path, backend: std::net::SocketAddr, buffer: usize) -> String {
    config(&[("blue", &[backend])], "").replacen(
        "[[listener]]",
        &format!(
            "[access_log]\npath = \"{}\"\nbuffer = {buffer}\n\n[[listener]]",
            path.display()
        ),
        1,
    )
}

fn lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not a JSON line: {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_logged_as_json_lines_with_their_request_id() {
    let b = TestBackend::start("blue").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let sy = start(&logged(&log, b.addr, 1024)).await;
    let base = format!("http://{}", sy.listener_addr("web").await);
    let c = client();

    let r = get(
        &c,
        &format!("{base}/echo"),
        &[("x-request-id", "req-42"), ("host", "shop.test")],
    )
    .await
    .unwrap();
    assert_eq!(r.headers["x-request-id"], "req-42");
    assert_eq!(
        r.json()["headers"]["x-request-id"],
        "req-42",
        "passed upstream"
    );
    let r = get(&c, &format!("{base}/"), &[]).await.unwrap();
    let generated = r.headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(generated.len(), 16, "a generated id: {generated}");

    let deadline = Instant::now() + Duration::from_secs(5);
    while lines(&log).len() < 2 {
        assert!(Instant::now() < deadline, "lines not written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let l = lines(&log);
    let first = &l[0];
    assert_eq!(first["request_id"], "req-42");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["host"], "shop.test");
    assert_eq!(first["path"], "/echo");
    assert_eq!(first["route"], "all");
    assert_eq!(first["service"], "shop");
    assert_eq!(first["group"], "blue");
    assert_eq!(first["target"], b.addr.to_string());
    assert_eq!(first["status"], 200);
    assert!(
        first["bytes"].as_u64().unwrap() > 50,
        "the echo body's size: {first}"
    );
    assert!(first["upstream_ms"].as_f64().unwrap() <= first["total_ms"].as_f64().unwrap());
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
    assert!(first["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(l[1]["request_id"], generated.as_str());

    // Switchyard's own answers are logged too.
    let r = get(&c, &format!("{base}/status/404"), &[]).await.unwrap();
    assert_eq!(r.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_drops_lines_and_counts_them_instead_of_waiting() {
    let b = TestBackend::start("blue").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let sy = start(&logged(&log, b.addr, 1)).await;
    let url = format!("http://{}/", sy.listener_addr("web").await);
    const N: u64 = 3000;
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let c = client();
            for _ in 0..N / 30 {
                assert_eq!(get(&c, &url, &[]).await.unwrap().status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let metrics = |text: &str, outcome: &str| -> u64 {
        text.lines()
            .find(|l| {
                l.starts_with("switchyard_access_log_lines_total")
                    && l.contains(&format!("outcome=\"{outcome}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = metrics_text(&sy).await;
        let (written, dropped) = (metrics(&text, "written"), metrics(&text, "dropped"));
        if written + dropped == N {
            assert_eq!(
                lines(&log).len() as u64,
                written,
                "every counted line is in the file"
            );
            eprintln!("{written} written, {dropped} dropped");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "written {written} + dropped {dropped} != {N}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
