//! /metrics: the series an operator needs, with values that follow the traffic and rollouts,
//! in a format `promtool` (from Debian's prometheus package) accepts.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn value(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_cover_routes_groups_targets_rollouts_and_rollbacks() {
    let (blue, green) = TestBackend::pair().await;
    green.set_errors(500);
    let sy = start(&config(
        &[("blue", &[blue.addr]), ("green", &[green.addr])],
        "active = \"blue\"\n[service.guard]\ninterval = \"200ms\"\nwindow = \"1s\"\n[service.strategy]\nkind = \"canary\"\nsteps = [{ weight = 50 }, { pause = \"1h\" }]",
    ))
    .await;
    let api = admin(&sy);
    let web = format!("http://{}", sy.listener_addr("web").await);
    let c = client();
    start_green(&api).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while api.get("/api/v1/services/shop/rollout").await.unwrap()["status"] != "aborted" {
        assert!(Instant::now() < deadline, "not rolled back");
        for _ in 0..20 {
            get(&c, &format!("{web}/"), &[]).await.unwrap();
        }
    }
    for _ in 0..10 {
        get(&c, &format!("{web}/sleep/2"), &[]).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = metrics_text(&sy).await;

    let blue_2xx = value(
        &text,
        "switchyard_responses_total",
        &["group=\"blue\"", "class=\"2xx\""],
    )
    .unwrap();
    assert!(blue_2xx >= 10.0, "{text}");
    assert!(
        value(
            &text,
            "switchyard_responses_total",
            &["group=\"green\"", "class=\"5xx\""]
        )
        .unwrap()
            > 0.0
    );
    assert!(
        value(
            &text,
            "switchyard_route_responses_total",
            &["route=\"all\"", "class=\"2xx\""]
        )
        .unwrap()
            >= 10.0
    );
    assert!(
        value(
            &text,
            "switchyard_target_requests_total",
            &[&format!("target=\"{}\"", blue.addr)]
        )
        .unwrap()
            >= 10.0
    );
    let count = value(
        &text,
        "switchyard_latency_seconds_count",
        &["group=\"blue\""],
    )
    .unwrap();
    let inf = value(
        &text,
        "switchyard_latency_seconds_bucket",
        &["group=\"blue\"", "le=\"+Inf\""],
    )
    .unwrap();
    assert_eq!(count, inf, "the +Inf bucket holds every observation");
    assert!(
        value(
            &text,
            "switchyard_latency_seconds_bucket",
            &["group=\"blue\"", "le=\"0.001\""]
        )
        .unwrap()
            < count
    );
    assert_eq!(
        value(&text, "switchyard_weight_basis_points", &["group=\"blue\""]),
        Some(10000.0)
    );
    assert_eq!(
        value(
            &text,
            "switchyard_rollout",
            &["status=\"aborted\"", "candidate=\"green\""]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "switchyard_rollbacks_total",
            &["service=\"shop\"", "cause=\"guard\""]
        ),
        Some(1.0)
    );
    assert!(value(&text, "switchyard_observed_share", &["group=\"blue\""]).is_some());
    assert_eq!(
        value(&text, "switchyard_target_healthy", &["group=\"green\""]),
        Some(1.0)
    );
    assert!(text.contains("switchyard_build_info{version=\""));

    // promtool parses the exposition (Debian's prometheus package ships it).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("metrics.txt");
    std::fs::write(&file, &text).unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("promtool check metrics < {}", file.display()))
        .output()
        .expect("promtool runs");
    let said =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    // promtool reads the text format, where a counter's HELP names the sample
    // (`x_total`); OpenMetrics, which we serve, names the family (`x`), so promtool's
    // "no help text" lint is expected for counters. Anything else it says is a defect.
    let problems: Vec<&str> = said
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.ends_with("_total no help text"))
        .collect();
    assert!(problems.is_empty(), "promtool: {said}");
}
