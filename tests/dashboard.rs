//! The web dashboard in a real browser: Debian's Chromium driven by playwright-core (both
//! installed by ./scripts/test), against one instance with paced traffic to `shop` (a canary
//! of five steps: 10 %, a 1 min pause, 50 %, an analysis, a pause until promoted) and a
//! blue-green service `site`. The scripts in tests/browser click and check each effect in the
//! API themselves; these tests run them and check what they say they saw. A single
//! instance's page has no Fleet card (`dashboard_fleet.rs` has one). Every rollout step
//! waits for a person or a short analysis, so nothing races the browser's start. And what
//! the page reads that the API gained for it: the rollout's `step_began` and `deadline`,
//! `/series` `recent`, and the status's `caller` and `strategy`.

mod common;

use std::time::Duration;

use common::*;

const STEPS: &str = r#"steps = [{ weight = 10 }, { pause = "1m" }, { weight = 50 }, { analysis = "quick" }, { pause = "until-promoted" }]"#;

/// Passes after four looks a second apart: long enough for the page to show the deadline.
const QUICK: &str = r#"[[analysis]]
name = "quick"
interval = "1s"
count = 4
min_requests = 1
[[analysis.check]]
name = "errors"
metric = "error-rate"
max = 5
"#;

/// `shop` (canary, on every path) and `site` (blue-green, host site.test), both on the same
/// two backends, blue active; the admin token `t0ken` and a read-only one `v1ew`.
fn two_services(blue: &TestBackend, green: &TestBackend) -> String {
    let head = Cfg::new()
        .admin("[[admin.tokens]]\nname = \"viewer\"\ntoken = \"v1ew\"\nscopes = [\"read\"]")
        .head();
    let groups = format!(
        "[[service.group]]\nname = \"blue\"\ntargets = [\"{}\"]\n[[service.group]]\nname = \"green\"\ntargets = [\"{}\"]\n",
        blue.addr, green.addr
    );
    format!(
        "{head}[[route]]\nname = \"site\"\npriority = 5\nmatch.host = [\"site.test\"]\nforward = \"site\"\n\n\
         [[route]]\nname = \"all\"\npriority = 1\nforward = \"shop\"\n\n{QUICK}\n\
         [[service]]\nname = \"shop\"\nactive = \"blue\"\nprogress_deadline = \"2m\"\n\
         [service.strategy]\nkind = \"canary\"\n{STEPS}\n{groups}\n\
         [[service]]\nname = \"site\"\nactive = \"blue\"\n[service.strategy]\nkind = \"blue-green\"\n{groups}"
    )
}

/// Requests to `shop` every 5 ms until aborted: enough for the figures, the guard and the
/// analysis, without taking the CPU the browser needs.
fn paced_load(url: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let c = client();
        loop {
            let _ = get(&c, &url, &[]).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

/// Starts the two services with paced traffic to `shop` and runs a script of tests/browser
/// with node on the page (`ADMIN_URL t0ken MORE… SCREENSHOT_DIR`): the instance and its
/// backends, still running, and all the script printed, once it succeeded.
async fn drive(script: &str, more: &[&str]) -> (Server, (TestBackend, TestBackend), String) {
    let (blue, green) = TestBackend::pair().await;
    let sy = start(&two_services(&blue, &green)).await;
    let load = paced_load(web_url(&sy).await);
    let shots = std::env::var("SWITCHYARD_SCREENSHOTS")
        .unwrap_or_else(|_| std::env::temp_dir().display().to_string());
    let mut args = vec![format!("http://{}/", sy.admin_addr), "t0ken".into()];
    args.extend(more.iter().map(ToString::to_string));
    args.push(shots);
    let said = common::browser::run(script, &args).await;
    load.abort();
    (sy, (blue, green), said)
}

/// Checks that the script said each `(line, text)`: a line `{who}{line}…` containing `text`.
fn says(said: &str, who: &str, expected: &[(&str, &str)]) {
    for (line, text) in expected {
        let start = format!("{who}{line}");
        assert!(
            said.lines()
                .any(|l| l.starts_with(&start) && l[start.len()..].contains(text)),
            "no line {start:?}… with {text:?} in:\n{said}"
        );
    }
}

bounded_test! {
    limit = Duration::from_secs(90);
    async fn at_desktop_size_every_rollout_action_acts_as_the_api_shows_and_the_page_shows_figures_timers_verdicts_and_a_filtered_timeline() {
        let (sy, _backends, said) = drive("dashboard.mjs", &[]).await;

        says(&said, "dashboard: ", &[
            ("after a wrong token: ", "The admin API refused the token (the bearer token is wrong). Enter the admin token again."),
            ("", "signed in as admin"),
            ("fleet cards: ", "0"),
            ("figures of blue as /series says: ", "over \"Last 10 s\""),
            ("observed label: ", "Observed, last 5 s"),
            ("start asked: ", "Start a rollout of shop: green as candidate, from blue, with the configured strategy canary?"),
            ("pause left: ", " in this step"),
            ("held: ", "Resume shown, "),
            ("promote past the pause asked: ", "nothing"),
            ("during the analysis: ", "progress deadline 2m: aborts at "),
            ("verdict: ", "analysis passed: quick: check errors"),
            ("guard: ", "guard watching"),
            ("promote on the last step asked: ", "Promote shop past its last step? green takes all traffic (100%) and the rollout completes; blue gets none."),
            ("undo asked: ", "Undo rollout #1 of shop? All traffic goes back to blue"),
            ("abort asked: ", "Abort rollout #2 of shop? All traffic goes back to blue at once."),
            ("retry asked: ", "(attempt 2)"),
            ("promote fully asked: ", "green takes all traffic (100%) at once"),
            ("chart strokes: ", "success rate: 2.5/solid, 1.5/6 3; p99: 2.5/solid, 1.5/6 3"),
            ("chart axes: ", "100 % 80 % -5 min -2.5 min now"),
            ("timeline: ", "(aborted,rolled_back)"),
            ("actor filter: ", "no events match the filters"),
            ("", "ok"),
        ]);

        let r = admin(&sy).get("/api/v1/services/shop/rollout").await.unwrap();
        assert_eq!((r["status"].as_str(), r["attempt"].as_u64()), (Some("completed"), Some(1)), "{r}");
        assert_eq!(r["id"], 2, "{r}");
    }
}

bounded_test! {
    limit = Duration::from_secs(90);
    async fn at_phone_size_a_refusal_shows_beside_its_button_sign_out_returns_to_the_form_every_action_acts_and_nothing_is_wider_than_the_screen() {
        let (sy, _backends, said) = drive("dashboard-phone.mjs", &["v1ew"]).await;

        says(&said, "phone: ", &[
            ("", "signed in as viewer"),
            ("switch as viewer: ", "needs the \"release\" scope"),
            ("signed out: ", "Signed out: the token is forgotten."),
            ("switch asked: ", "Switch site: all traffic to green at once (now blue=100%)?"),
            ("start asked: ", "Start a rollout of shop: green as candidate"),
            ("abort asked: ", "Abort rollout #1 of shop? All traffic goes back to blue at once."),
            ("held rollout: ", "nothing wider than the screen"),
            ("undo asked: ", "Undo rollout #1 of shop? All traffic goes back to blue"),
            ("undone rollout: ", "nothing wider than the screen"),
            ("", "ok"),
        ]);

        let api = admin(&sy);
        let st = api.get("/api/v1/status").await.unwrap();
        let site = st["services"].as_array().unwrap().iter().find(|s| s["name"] == "site").unwrap();
        assert_eq!(site["split"]["green"], 10000, "{st}");
        let r = api.get("/api/v1/services/shop/rollout").await.unwrap();
        assert_eq!((r["status"].as_str(), r["attempt"].as_u64()), (Some("rolled_back"), Some(1)), "{r}");
    }
}

bounded_test! {
    async fn the_rollout_says_when_its_step_began_which_a_hold_keeps_and_when_an_analysis_step_runs_out_of_time() {
        let (blue, green) = TestBackend::pair().await;
        let sy = start(&two_services(&blue, &green)).await;
        let load = paced_load(web_url(&sy).await);
        let api = admin(&sy);
        let wall = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64
        };
        let before = wall();
        start_green(&api).await;
        let r = wait_rollout(&api, "in the timed pause", |r| r["step"] == 1).await;
        let began = r["step_began"].clone();
        assert_eq!((began["step"].as_u64(), began["attempt"].as_u64()), (Some(1), Some(0)), "{r}");
        let at = began["at"].as_i64().unwrap();
        assert!((before..=wall()).contains(&at), "began at {at}, the test began at {before}: {r}");
        assert!(r.get("deadline").is_none(), "a pause has no progress deadline: {r}");

        api.post("/api/v1/services/shop/rollout/pause", serde_json::json!({})).await.unwrap();
        api.post("/api/v1/services/shop/rollout/resume", serde_json::json!({})).await.unwrap();
        assert_eq!(rollout(&api).await["step_began"], began, "a hold and a resume keep it");

        let promoted = wall();
        api.post("/api/v1/services/shop/rollout/promote", serde_json::json!({})).await.unwrap();
        let r = wait_rollout(&api, "in the analysis step", |r| r["step"] == 3).await;
        load.abort();
        let at = r["step_began"]["at"].as_i64().unwrap();
        assert!(at >= promoted, "{r}");
        assert_eq!(
            r["deadline"],
            serde_json::json!({ "at": at + 120_000, "after_ms": 120_000 }),
            "progress_deadline = \"2m\" after the step began: {r}"
        );
    }
}

bounded_test! {
    async fn series_gives_each_groups_requests_per_second_5xx_share_and_p50_and_p99_over_the_last_ten_complete_seconds() {
        let (blue, green) = TestBackend::pair().await;
        let sy = start(&two_services(&blue, &green)).await;
        let (web, c) = (web_url(&sy).await, client());
        for _ in 0..20 {
            get(&c, &web, &[]).await.unwrap();
        }
        let api = admin(&sy);
        // The second the requests were made in counts once it is over.
        eventually(Duration::from_secs(3), "the 20 requests are in the last complete seconds", || async {
            api.get("/api/v1/series").await.unwrap()["recent"]["services"]["shop"]["blue"]["requests"] == 20
        })
        .await;
        let s = api.get("/api/v1/series").await.unwrap();
        assert_eq!(s["recent"]["seconds"], 10, "{s}");
        let blue = &s["recent"]["services"]["shop"]["blue"];
        assert_eq!((blue["requests_per_s"].as_f64(), blue["error_pct"].as_f64()), (Some(2.0), Some(0.0)), "{s}");
        let (p50, p99) = (blue["p50_ms"].as_f64().unwrap(), blue["p99_ms"].as_f64().unwrap());
        assert!(0.0 < p50 && p50 <= p99, "{s}");
        let green = &s["recent"]["services"]["shop"]["green"];
        assert_eq!(
            *green,
            serde_json::json!({ "requests": 0, "requests_per_s": 0.0, "error_pct": null, "p50_ms": null, "p99_ms": null }),
            "{s}"
        );
    }
}

bounded_test! {
    async fn status_names_the_token_that_asked_and_each_services_configured_strategy() {
        let (blue, green) = TestBackend::pair().await;
        let sy = start(&two_services(&blue, &green)).await;
        let st = as_client(&sy, "v1ew").get("/api/v1/status").await.unwrap();
        assert_eq!(st["caller"], serde_json::json!({ "name": "viewer", "scopes": ["read"] }), "{st}");
        let st = admin(&sy).get("/api/v1/status").await.unwrap();
        assert_eq!(st["caller"]["name"], "admin", "{st}");
        let strategies: Vec<_> = st["services"].as_array().unwrap().iter().map(|s| (s["name"].clone(), s["strategy"].clone())).collect();
        assert_eq!(
            strategies,
            [
                (serde_json::json!("shop"), serde_json::json!({ "name": "canary", "blue_green": false })),
                (serde_json::json!("site"), serde_json::json!({ "name": "blue-green", "blue_green": true })),
            ],
            "{st}"
        );
    }
}
