//! The web dashboard in a real browser: Debian's Chromium driven by playwright-core (both
//! installed by ./scripts/test), against one instance with paced traffic to `shop` (a canary
//! of five steps: 10 %, a 1 min pause, 50 %, an analysis, a pause until promoted) and a
//! blue-green service `site`. The scripts in tests/browser click and check each effect in the
//! API themselves; these tests run them and check what they say they saw. A single
//! instance's page has no Fleet card (`dashboard_fleet.rs` has one). Every rollout step
//! waits for a person or a short analysis, so nothing races the browser's start.

mod common;

use std::time::Duration;

use common::*;
use tokio::process::Command;

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

/// Runs a script of tests/browser with node: whether it succeeded, and all it printed.
async fn browse(script: &str, args: &[&str]) -> (bool, String) {
    let path = format!("{}/tests/browser/{script}", env!("CARGO_MANIFEST_DIR"));
    let shots = std::env::var("SWITCHYARD_SCREENSHOTS")
        .unwrap_or_else(|_| std::env::temp_dir().display().to_string());
    let out = Command::new("node")
        .arg(path)
        .args(args)
        .arg(shots)
        .kill_on_drop(true)
        .output()
        .await
        .expect("node runs (./scripts/test installs node dependencies and chromium)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{said}");
    (out.status.success(), said)
}

/// The text after `prefix` on the line that starts with it.
fn shown<'a>(said: &'a str, prefix: &str) -> &'a str {
    said.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in:\n{said}"))
}

bounded_test! {
    limit = Duration::from_secs(90);
    async fn at_desktop_size_every_rollout_action_acts_as_the_api_shows_and_the_page_shows_figures_timers_verdicts_and_a_filtered_timeline() {
        let (blue, green) = TestBackend::pair().await;
        let sy = start(&two_services(&blue, &green)).await;
        let load = paced_load(web_url(&sy).await);
        let url = format!("http://{}/", sy.admin_addr);
        let (ok, said) = browse("dashboard.mjs", &[&url, "t0ken"]).await;
        load.abort();
        assert!(ok, "{said}");

        assert_eq!(
            shown(&said, "dashboard: after a wrong token: "),
            "The admin API refused the token (the bearer token is wrong). Enter the admin token again.",
            "{said}"
        );
        assert!(said.contains("dashboard: signed in as admin\n"), "{said}");
        assert!(shown(&said, "dashboard: figures of blue as /series says: ").ends_with("over \"Last 10 s\""), "{said}");
        assert_eq!(shown(&said, "dashboard: observed label: "), "Observed, last 5 s", "{said}");
        assert_eq!(
            shown(&said, "dashboard: start asked: "),
            "Start a rollout of shop: green as candidate, from blue, with the configured strategy canary?",
            "{said}"
        );
        assert!(shown(&said, "dashboard: pause left: ").contains(" in this step"), "{said}");
        assert!(said.contains("dashboard: held: Resume shown, "), "{said}");
        assert_eq!(shown(&said, "dashboard: promote past the pause asked: "), "nothing", "{said}");
        assert!(shown(&said, "dashboard: verdict: ").contains("passed"), "{said}");
        assert!(shown(&said, "dashboard: guard: ").starts_with("guard watching"), "{said}");
        assert_eq!(
            shown(&said, "dashboard: promote on the last step asked: "),
            "Promote shop past its last step? green takes all traffic (100%) and the rollout completes; blue gets none.",
            "{said}"
        );
        assert!(shown(&said, "dashboard: undo asked: ").contains("All traffic goes back to blue"), "{said}");
        assert!(shown(&said, "dashboard: retry asked: ").contains("(attempt 2)"), "{said}");
        assert!(shown(&said, "dashboard: abort asked: ").contains("All traffic goes back to blue at once"), "{said}");
        assert!(shown(&said, "dashboard: promote fully asked: ").contains("green takes all traffic (100%) at once"), "{said}");
        assert_eq!(
            shown(&said, "dashboard: chart strokes: "),
            "success rate: 2.5/solid, 1.5/6 3; p99: 2.5/solid, 1.5/6 3",
            "{said}"
        );
        assert!(shown(&said, "dashboard: chart axes: ").contains("100 % 80 % -5 min -2.5 min now"), "{said}");
        let timeline = shown(&said, "dashboard: timeline: ");
        assert!(timeline.contains("(aborted,rolled_back)"), "{said}");
        assert_eq!(shown(&said, "dashboard: actor filter: "), "no events match the filters", "{said}");
        assert!(said.contains("dashboard: fleet cards: 0"), "{said}");
        assert!(said.contains("dashboard: ok"), "{said}");

        let r = admin(&sy).get("/api/v1/services/shop/rollout").await.unwrap();
        assert_eq!((r["status"].as_str(), r["attempt"].as_u64()), (Some("completed"), Some(1)), "{r}");
        assert_eq!(r["id"], 2, "{r}");
    }
}

bounded_test! {
    limit = Duration::from_secs(90);
    async fn at_phone_size_a_refusal_shows_beside_its_button_sign_out_returns_to_the_form_switch_and_start_act_and_nothing_is_wider_than_the_screen() {
        let (blue, green) = TestBackend::pair().await;
        let sy = start(&two_services(&blue, &green)).await;
        let load = paced_load(web_url(&sy).await);
        let url = format!("http://{}/", sy.admin_addr);
        let (ok, said) = browse("dashboard-phone.mjs", &[&url, "t0ken", "v1ew"]).await;
        load.abort();
        assert!(ok, "{said}");

        assert!(said.contains("phone: signed in as viewer\n"), "{said}");
        assert!(shown(&said, "phone: switch as viewer: ").contains("needs the \"release\" scope"), "{said}");
        assert!(shown(&said, "phone: signed out: ").starts_with("Signed out"), "{said}");
        assert_eq!(
            shown(&said, "phone: switch asked: "),
            "Switch site: all traffic to green at once (now blue=100%)?",
            "{said}"
        );
        assert!(shown(&said, "phone: abort asked: ").starts_with("Abort rollout #"), "{said}");
        assert!(said.contains("phone: held rollout: nothing wider than the screen"), "{said}");
        assert!(said.contains("phone: aborted rollout: nothing wider than the screen"), "{said}");

        let api = admin(&sy);
        let st = api.get("/api/v1/status").await.unwrap();
        let site = st["services"].as_array().unwrap().iter().find(|s| s["name"] == "site").unwrap();
        assert_eq!(site["split"]["green"], 10000, "{st}");
        let r = api.get("/api/v1/services/shop/rollout").await.unwrap();
        assert_eq!(r["status"], "aborted", "{r}");
        assert_eq!(r["reason"], "aborted by admin on behalf of dashboard", "{r}");
    }
}
