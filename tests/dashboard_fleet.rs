//! The dashboard's Fleet card in a real browser (Debian's Chromium driven by playwright-core,
//! as in `dashboard.rs`), on one instance of a real fleet: three in-process instances sharing
//! a real etcd, traffic through two of them. The card lists every instance with the state
//! revision it has, names the leader, shows the split the whole fleet observed and each
//! instance's (none on the one without traffic); once etcd is stopped it shows the DEGRADED
//! banner. The single-instance page has no Fleet card (`dashboard.rs`).

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use common::etcd::Etcd;
use common::fleet::Fleet;
use common::release::*;
use common::*;
use serde_json::json;
use switchyard::client::AdminClient;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

/// The fleet as an instance's status has it: each instance's state revision, and the leader.
struct View {
    revisions: BTreeMap<String, i64>,
    leader: Option<String>,
}

async fn view(api: &AdminClient) -> View {
    let st = api.get("/api/v1/status").await.unwrap();
    let revisions = st["fleet"]["instances"]
        .as_array()
        .unwrap_or_else(|| panic!("no fleet instances: {st}"))
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap().to_string(),
                i["revision"].as_i64().unwrap(),
            )
        })
        .collect();
    View {
        revisions,
        leader: st["fleet"]["leader"].as_str().map(str::to_string),
    }
}

/// The share (in %) of `group` in a "blue 80.1% · green 19.9%" text.
fn share(text: &str, group: &str) -> Option<f64> {
    text.split(" · ").find_map(|p| {
        p.strip_prefix(group)?
            .trim()
            .strip_suffix('%')?
            .parse()
            .ok()
    })
}

bounded_test! {
    limit = Duration::from_secs(120);
    async fn the_fleet_card_lists_each_instance_with_its_revision_the_leader_and_the_fleet_split_then_shows_degraded_without_etcd() {
    let mut etcd = Etcd::start().await;
    let (blue, green) = TestBackend::pair().await;
    let fleet = Fleet::start(&etcd, "/sy/dashboard", &blue_green(blue.addr, green.addr), 3).await;
    admin(&fleet.servers[0])
        .put("/api/v1/services/shop/weights", json!({ "weights": { "blue": 80, "green": 20 } }))
        .await
        .unwrap();
    for s in &fleet.servers {
        eventually(Duration::from_secs(5), "every instance serves 80/20", || async {
            let st = admin(s).get("/api/v1/status").await.unwrap();
            st["services"][0]["groups"][0]["weight"] == 8000
        })
        .await;
    }
    // Traffic through lb-0 and lb-1; lb-2 sees none. The page is lb-1's.
    let mut loads = Vec::new();
    for s in &fleet.servers[..2] {
        loads.push(Load::start(web_url(s).await, 2, &[]));
    }
    let page_of = admin(&fleet.servers[1]);
    // An instance's own record reaches its view through the watch, shortly after it started.
    eventually(Duration::from_secs(5), "lb-1 lists the three instances", || async {
        view(&page_of).await.revisions.len() == 3
    })
    .await;
    // And has seen the traffic: its own, and lb-0's as pulled from it (every 250 ms).
    eventually(Duration::from_secs(10), "lb-1 observed its traffic and lb-0's", || async {
        let st = page_of.get("/api/v1/status").await.unwrap();
        let peers = st["fleet"]["peers"].as_array().cloned().unwrap_or_default();
        st["services"][0]["observed"].is_object()
            && peers.iter().any(|p| p["name"] == "lb-0" && p["observed"]["shop"].is_object())
    })
    .await;
    let before = view(&page_of).await;

    let shots = std::env::var("SWITCHYARD_SCREENSHOTS")
        .unwrap_or_else(|_| std::env::temp_dir().display().to_string());
    let url = format!("http://{}/", fleet.servers[1].admin_addr);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/fleet.mjs");
    let mut node = tokio::process::Command::new("node")
        .arg(script)
        .args([&url, "t0ken", &shots])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs (./scripts/test installs node dependencies and chromium)");
    let mut lines = BufReader::new(node.stdout.take().unwrap()).lines();
    let mut said = String::new();
    let mut after = None;
    while let Some(line) = lines.next_line().await.unwrap() {
        said.push_str(&line);
        said.push('\n');
        if line == "fleet: waiting for degraded" {
            after = Some(view(&page_of).await);
            etcd.stop().await;
        }
    }
    let mut err = String::new();
    node.stderr.take().unwrap().read_to_string(&mut err).await.unwrap();
    let status = node.wait().await.unwrap();
    for l in loads {
        l.stop().await;
    }
    println!("{said}");
    assert!(status.success(), "{said}{err}");
    let shown = |prefix: &str| {
        said.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in:\n{said}"))
            .to_string()
    };

    // Every instance, with a revision between the ones the API gave before and after the page
    // read it; the leader the API named before or after (a slow etcd on a loaded machine can
    // move the lease meanwhile), marked on its row.
    let after = after.unwrap_or_else(|| panic!("{said}"));
    let leader = shown("fleet: leader ");
    assert!(
        [&before.leader, &after.leader].contains(&&Some(leader.clone())),
        "the page's leader {leader}, the API's {:?} before and {:?} after:\n{said}",
        before.leader,
        after.leader
    );
    for i in 0..3 {
        let name = format!("lb-{i}");
        let row = shown(&format!("fleet: instance {name} revision "));
        let revision: i64 = row.split(' ').next().unwrap().parse().unwrap_or_else(|_| panic!("{said}"));
        let (low, high) = (before.revisions.get(&name), after.revisions.get(&name));
        assert!(
            low.zip(high).is_some_and(|(l, h)| *l <= revision && revision <= *h),
            "{name}: shown revision {revision}, the API's {:?} before and {:?} after:\n{said}",
            before.revisions,
            after.revisions
        );
        assert_eq!(row.contains("leader"), name == leader, "{name}:\n{said}");
        assert_eq!(row.contains("this"), i == 1, "{name}:\n{said}");
    }

    // The whole fleet's split as configured; each loaded instance's too; none on lb-2.
    let whole = shown("fleet: whole fleet: ");
    let blue_share = share(&whole, "blue").unwrap_or_else(|| panic!("{said}"));
    assert!((75.0..=85.0).contains(&blue_share), "{said}");
    for i in 0..2 {
        let on = shown(&format!("fleet: on lb-{i}: "));
        assert!(share(&on, "blue").is_some_and(|b| (70.0..=90.0).contains(&b)), "lb-{i}: {on}\n{said}");
        assert!(!on.contains("stale"), "lb-{i}: {on}\n{said}");
    }
    assert_eq!(shown("fleet: on lb-2: "), "no traffic", "{said}");

    // Connected: no banner; etcd stopped: the banner says what the instance still does.
    assert!(said.contains("fleet: no degraded banner while etcd runs"), "{said}");
    let degraded = shown("fleet: degraded: ");
    assert!(
        degraded.starts_with("DEGRADED — etcd unreachable")
            && degraded.contains("serving the last state")
            && degraded.contains("no rollout moves"),
        "{said}"
    );
    assert!(said.contains("fleet: ok"), "{said}");
    }
}
