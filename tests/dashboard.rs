//! The web dashboard in a real browser: Debian's Chromium driven by playwright-core (both
//! installed by ./scripts/test). A single instance's page has no Fleet card
//! (`dashboard_fleet.rs` has one). The page sees the split change while a rollout steps (a
//! click on Promote moves it past its first pause), shows the observed split and draws its
//! charts; Pause and Resume hold and release the rollout (checked in the API), a click on
//! Abort rolls back, and the timeline shows it. The rollout waits for a person at each step,
//! so nothing races the browser's start.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::json;

bounded_test! {
    limit = Duration::from_secs(90);
    async fn the_dashboard_shows_the_configured_and_observed_split_and_charts_and_its_buttons_act() {
    let (blue, green) = (
        TestBackend::start("blue").await,
        TestBackend::start("green").await,
    );
    let sy = start(&config(
        &[("blue", &[blue.addr]), ("green", &[green.addr])],
        "active = \"blue\"\n[service.strategy]\nkind = \"canary\"\nsteps = [{ weight = 10 }, { pause = \"until-promoted\" }, { weight = 50 }, { pause = \"until-promoted\" }]",
    ))
    .await;
    let web = web_url(&sy).await;
    let load = tokio::spawn(async move {
        let c = client();
        for _ in 0..100_000 {
            if get(&c, &web, &[]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let api = admin(&sy);
    api.post(
        "/api/v1/rollouts",
        json!({ "service": "shop", "candidate": "green" }),
    )
    .await
    .unwrap();

    let shots = std::env::var("SWITCHYARD_SCREENSHOTS")
        .unwrap_or_else(|_| std::env::temp_dir().display().to_string());
    let url = format!("http://{}/", sy.admin_addr);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/dashboard.mjs");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .args([&url, "t0ken", &shots])
            .output()
    })
    .await
    .unwrap()
    .expect("node runs (./scripts/test installs node dependencies and chromium)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    load.abort();
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("split at the second step: blue 50% · green 50%"),
        "{said}"
    );
    // The observed split the page showed, as measured: green within 5 points of 50 %.
    let observed = said
        .lines()
        .find_map(|l| l.strip_prefix("dashboard: observed: "))
        .unwrap_or_else(|| panic!("{said}"));
    let green: f64 = observed
        .split(" · ")
        .find_map(|p| p.strip_prefix("green "))
        .and_then(|p| p.trim_end_matches('%').parse().ok())
        .unwrap_or_else(|| panic!("{said}"));
    assert!((45.0..=55.0).contains(&green), "{said}");
    assert!(said.contains("fleet cards: 0"), "{said}");
    assert!(said.contains("chart lines: success rate 2, p99 2"), "{said}");
    assert!(said.contains("after pause: held"), "{said}");
    assert!(said.contains("after resume: not held"), "{said}");

    let r = api.get("/api/v1/services/shop/rollout").await.unwrap();
    assert_eq!(r["status"], "aborted");
    assert_eq!(r["reason"], "aborted by admin on behalf of dashboard");
    assert_eq!(r["split"], json!({ "blue": 10000 }));
    }
}
