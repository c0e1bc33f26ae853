//! /metrics: the series an operator needs, with values that follow the traffic and rollouts,
//! in a format `promtool` (from Debian's prometheus package) accepts.

mod common;

use std::time::Duration;

use common::*;

bounded_test! {
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
        eventually(Duration::from_secs(10), "the guard rolled back", || async {
            for _ in 0..20 {
                get(&c, &format!("{web}/"), &[]).await.unwrap();
            }
            rollout(&api).await["status"] == "aborted"
        })
        .await;
        for _ in 0..10 {
            get(&c, &format!("{web}/sleep/2"), &[]).await.unwrap();
        }
        // Counters only grow: once the last answers are counted and a split observed, a
        // later scrape holds them too.
        eventually(
            Duration::from_secs(5),
            "answers counted, split observed",
            || async {
                let text = metrics_text(&sy).await;
                metric(&text, "switchyard_observed_share", &["group=\"blue\""]).is_some()
                    && metric(
                        &text,
                        "switchyard_latency_seconds_count",
                        &["group=\"blue\""],
                    )
                    .is_some_and(|n| n >= 10.0)
            },
        )
        .await;
        let text = metrics_text(&sy).await;

        let blue_2xx = metric(
            &text,
            "switchyard_responses_total",
            &["group=\"blue\"", "class=\"2xx\""],
        )
        .unwrap();
        assert!(blue_2xx >= 10.0, "{text}");
        assert!(
            metric(
                &text,
                "switchyard_responses_total",
                &["group=\"green\"", "class=\"5xx\""]
            )
            .unwrap()
                > 0.0
        );
        assert!(
            metric(
                &text,
                "switchyard_route_responses_total",
                &["route=\"all\"", "class=\"2xx\""]
            )
            .unwrap()
                >= 10.0
        );
        assert!(
            metric(
                &text,
                "switchyard_target_requests_total",
                &[&format!("target=\"{}\"", blue.addr)]
            )
            .unwrap()
                >= 10.0
        );
        let count = metric(
            &text,
            "switchyard_latency_seconds_count",
            &["group=\"blue\""],
        )
        .unwrap();
        let inf = metric(
            &text,
            "switchyard_latency_seconds_bucket",
            &["group=\"blue\"", "le=\"+Inf\""],
        )
        .unwrap();
        assert_eq!(count, inf, "the +Inf bucket holds every observation");
        assert!(
            metric(
                &text,
                "switchyard_latency_seconds_bucket",
                &["group=\"blue\"", "le=\"0.001\""]
            )
            .unwrap()
                < count
        );
        assert_eq!(
            metric(&text, "switchyard_weight_basis_points", &["group=\"blue\""]),
            Some(10000.0)
        );
        assert_eq!(
            metric(
                &text,
                "switchyard_rollout",
                &["status=\"aborted\"", "candidate=\"green\""]
            ),
            Some(1.0)
        );
        assert_eq!(
            metric(
                &text,
                "switchyard_rollbacks_total",
                &["service=\"shop\"", "cause=\"guard\""]
            ),
            Some(1.0)
        );
        assert!(metric(&text, "switchyard_observed_share", &["group=\"blue\""]).is_some());
        assert_eq!(
            metric(&text, "switchyard_target_healthy", &["group=\"green\""]),
            Some(1.0)
        );
        assert!(text.contains("switchyard_build_info{version=\""));

        // The same scrape in the text format, for a client that asks for it: promtool
        // lints it without a single warning (every metric has its HELP, named as sampled).
        let text = scrape(&sy, "text/plain;version=0.0.4").await;
        promtool_accepts(&text);
        assert!(text.contains("# HELP switchyard_requests_total "), "{text}");
    }
}

/// `/metrics` asked for with `accept`; the answer's content type must be the one that
/// format has, and its body is returned.
async fn scrape(sy: &Server, accept: &str) -> String {
    let r = get(
        &client(),
        &format!("http://{}/metrics", sy.admin_addr),
        &[("accept", accept)],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let want = if accept.starts_with("text/plain") {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    };
    assert_eq!(r.headers["content-type"], want, "for {accept}");
    r.body
}

bounded_test! {
    async fn metrics_answer_openmetrics_unless_the_text_format_is_asked_for() {
        let (_blue, _green, sy) = serve_pair(|b, g| blue_green(b, g).build()).await;
        let om = scrape(&sy, "*/*").await;
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(om.contains("# TYPE switchyard_requests counter"), "{om}");
        let prometheus = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(scrape(&sy, prometheus).await.ends_with("# EOF\n"));
        let text = scrape(&sy, "text/plain;version=0.0.4").await;
        assert!(!text.contains("# EOF"), "{text}");
        assert!(text.contains("# TYPE switchyard_requests_total counter"), "{text}");
        // Every sample's family has HELP and TYPE in the text format, under the sample's name
        // (or, for a histogram, its base name).
        for sample in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
            let name = sample.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| text.contains(&format!("# TYPE {f} histogram"))))
                .unwrap_or(name);
            assert!(text.contains(&format!("# HELP {family} ")), "no HELP for {name}: {text}");
            assert!(text.contains(&format!("# TYPE {family} ")), "no TYPE for {name}: {text}");
        }
    }
}

/// promtool (Debian's prometheus package; `./scripts/test` installs it) parses the text
/// format and lints it: it must run, pass, and say nothing (no lint warning at all).
fn promtool_accepts(text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs (apt-get install prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool exited {:?}: {said}",
        out.status.code()
    );
}
