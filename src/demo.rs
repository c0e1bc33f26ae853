//! `switchyard demo`: two built-in backends (blue = v1, green = v2), the balancer in front,
//! a light traffic generator, and the switches driven through the real admin API, printing
//! what happens and the split actually observed. Ends by itself.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;

use crate::output::sayln;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use switchyard::backend::Backend;
use switchyard::client::AdminClient;
use switchyard::server::Server;
use tokio_util::sync::CancellationToken;

mod fleet;

pub(crate) use fleet::run as fleet;

const WORKERS: usize = 4;

/// The demo's world: two backends, the balancer in front of them, and an admin client.
struct Demo {
    blue: Backend,
    green: Backend,
    server: Server,
    web: std::net::SocketAddr,
    api: AdminClient,
}

/// Starts the backends (green answering `green_errors` per thousand with 500) and a
/// balancer with one service `shop` (blue active), plus `analyses` and `service` settings.
async fn setup(green_errors: u32, analyses: &str, service: &str) -> anyhow::Result<Demo> {
    let blue = Backend::start("127.0.0.1:0".parse()?, "blue-v1").await?;
    let green = Backend::start("127.0.0.1:0".parse()?, "green-v2").await?;
    green
        .errors_per_mille
        .store(green_errors, std::sync::atomic::Ordering::Relaxed);
    let token = format!("demo-{:016x}", fastrand::u64(..));
    let toml = format!(
        r#"
[admin]
bind = "127.0.0.1:0"
token = "{token}"

[store]
path = ":memory:"

[[listener]]
name = "web"
bind = "127.0.0.1:0"

[[route]]
name = "shop"
priority = 10
forward = "shop"
{analyses}
[[service]]
name = "shop"
active = "blue"
{service}

[[service.group]]
name = "blue"
targets = ["{blue}"]

[[service.group]]
name = "green"
targets = ["{green}"]
"#,
        blue = blue.addr,
        green = green.addr
    );
    let config = switchyard::config::parse(&toml, "demo.toml", Path::new("."))?;
    let server = Server::start(config, None).await?;
    let web = server.listener_addr("web").await;
    let api = AdminClient::new(&server.admin_addr.to_string(), Some(token));
    Ok(Demo {
        blue,
        green,
        server,
        web,
        api,
    })
}

pub(crate) async fn run(phase_length: Duration) -> anyhow::Result<()> {
    let service =
        "[service.health_check]\npath = \"/healthz\"\ninterval = \"500ms\"\ntimeout = \"250ms\"";
    let Demo {
        blue,
        green,
        server,
        web,
        api,
    } = setup(0, "", service).await?;

    sayln!("switchyard demo");
    sayln!("  backend blue  (v1) on {}", blue.addr);
    sayln!("  backend green (v2) on {}", green.addr);
    sayln!(
        "  balancer on http://{web}, admin API on http://{}",
        server.admin_addr
    );
    sayln!(
        "  {WORKERS} clients send requests without pause; each phase lasts {}\n",
        humantime::format_duration(phase_length)
    );

    let tally = Arc::new(Mutex::new(Tally::default()));
    let switched = Arc::new(Mutex::new(Switched::default()));
    let stop = CancellationToken::new();
    let mut load = Vec::new();
    for _ in 0..WORKERS {
        load.push(tokio::spawn(traffic(
            web,
            tally.clone(),
            switched.clone(),
            stop.clone(),
        )));
    }

    phase(&tally, "all traffic on blue", phase_length).await;
    let r = api
        .post("/api/v1/services/shop/switch", json!({ "group": "green" }))
        .await?;
    expect(&switched, Some("green-v2"));
    sayln!(
        "→ switchyard switch shop green   (generation {})",
        r["generation"]
    );
    phase(&tally, "after the switch", phase_length).await;
    expect(&switched, None);
    let r = api
        .post("/api/v1/services/shop/switch", json!({ "back": true }))
        .await?;
    expect(&switched, Some("blue-v1"));
    sayln!(
        "→ switchyard switch shop --back  (generation {})",
        r["generation"]
    );
    phase(&tally, "after switching back", phase_length).await;
    expect(&switched, None);
    let r = api
        .put(
            "/api/v1/services/shop/weights",
            json!({ "weights": { "blue": 90, "green": 10 } }),
        )
        .await?;
    sayln!(
        "→ switchyard weights shop blue=90 green=10  (generation {})",
        r["generation"]
    );
    phase(&tally, "weighted 90/10", phase_length).await;
    expect(&switched, None);
    api.post("/api/v1/services/shop/switch", json!({ "group": "blue" }))
        .await?;
    expect(&switched, Some("blue-v1"));
    tokio::time::sleep(phase_length / 4).await;
    expect(&switched, None);

    let pause = humantime::format_duration(phase_length).to_string();
    sayln!("\ncanary: green goes 5% -> 25% -> 50% -> 100%, pausing {pause} at each step");
    let steps = json!({ "kind": "canary", "steps": [
        { "weight": 5 }, { "pause": pause }, { "weight": 25 }, { "pause": pause }, { "weight": 50 }, { "pause": pause }
    ]});
    start_green(&api, steps, "").await?;
    let mut last_weight = None;
    loop {
        let r = api.get("/api/v1/services/shop/rollout").await?;
        let weight = r["weight"].as_u64().unwrap_or(0);
        let done = r["status"] == "completed";
        // The driver takes the first step just after `start` answers; a read in
        // between sees 0 %, which is not a phase of the canary.
        if last_weight.is_none() && weight == 0 && !done {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        if last_weight != Some(weight) {
            if last_weight.is_some() {
                let t = tally.lock().expect("tally").take();
                print_tally(
                    &format!(
                        "at {}",
                        switchyard::split::format_percent(last_weight.unwrap_or(0) as u32)
                    ),
                    &t,
                );
            } else {
                tally.lock().expect("tally").restart();
            }
            last_weight = Some(weight);
        }
        if done {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let t = tally.lock().expect("tally").take();
            print_tally("completed (100%)", &t);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    stop.cancel();
    for l in load {
        l.await.context("traffic generator")?;
    }
    server.shutdown().await;
    let s = switched.lock().expect("switched");
    sayln!(
        "\ndone: of {} requests sent after a switch was acknowledged, {} reached the previous version",
        s.checked, s.stale
    );
    Ok(())
}

/// What the switches are measured by: the version every request sent after a switch was
/// acknowledged must reach (`expected`, none while no switch is being measured), how many
/// such requests were sent (`checked`) and how many reached another version (`stale`). A
/// request is measured only if no other change began before its answer (`generation`
/// unchanged): measuring stops (`expect(None)`) before each change is sent.
#[derive(Default)]
struct Switched {
    expected: Option<&'static str>,
    generation: u64,
    checked: u64,
    stale: u64,
}

/// From now on, every request sent must reach `backend` (or, with `None`, is not measured).
fn expect(switched: &Mutex<Switched>, backend: Option<&'static str>) {
    let mut s = switched.lock().expect("switched");
    s.expected = backend;
    s.generation += 1;
}

/// Answers counted since the last `restart`. Only requests sent after it count: one sent to
/// the failing version just before a rollback and answered just after would otherwise show
/// as a failure "after the rollback".
#[derive(Default)]
struct Tally {
    by_backend: BTreeMap<String, u64>,
    failed: u64,
    epoch: u64,
}

impl Tally {
    fn restart(&mut self) {
        self.take();
    }

    /// The counts so far; counting starts again.
    fn take(&mut self) -> Tally {
        let next = Tally {
            epoch: self.epoch + 1,
            ..Tally::default()
        };
        std::mem::replace(self, next)
    }
}

async fn phase(tally: &Mutex<Tally>, what: &str, length: Duration) {
    tally.lock().expect("tally").restart();
    tokio::time::sleep(length).await;
    let t = tally.lock().expect("tally").take();
    print_tally(what, &t);
}

fn print_tally(what: &str, t: &Tally) {
    let total: u64 = t.by_backend.values().sum::<u64>() + t.failed;
    let split: Vec<String> = ["blue-v1", "green-v2"]
        .iter()
        .map(|b| {
            let n = t.by_backend.get(*b).copied().unwrap_or(0);
            format!("{b} {:5.1}%", 100.0 * n as f64 / total.max(1) as f64)
        })
        .collect();
    sayln!(
        "  {what:<24} {total:>6} requests: {}   failed {}",
        split.join("  "),
        t.failed
    );
}

/// `switchyard rollout start shop green` with `strategy`, said as the demo says commands
/// (`via`: which instance took it, in a fleet).
async fn start_green(
    api: &AdminClient,
    strategy: serde_json::Value,
    via: &str,
) -> anyhow::Result<()> {
    let r = api
        .post(
            "/api/v1/rollouts",
            json!({ "service": "shop", "candidate": "green", "strategy": strategy }),
        )
        .await?;
    sayln!(
        "→ switchyard rollout start shop green   ({via}rollout #{})",
        r["id"]
    );
    Ok(())
}

/// Which backend answered a GET of `uri` with a success (`x-backend`); `None` for a failure.
async fn backend_of(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    uri: http::Uri,
) -> Option<String> {
    match client.get(uri).await {
        Ok(r) if r.status().is_success() => {
            let b = r
                .headers()
                .get("x-backend")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let _ = r.into_body().collect().await;
            b
        }
        _ => None,
    }
}

async fn traffic(
    addr: std::net::SocketAddr,
    tally: Arc<Mutex<Tally>>,
    switched: Arc<Mutex<Switched>>,
    stop: CancellationToken,
) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri: http::Uri = format!("http://{addr}/").parse().expect("uri");
    while !stop.is_cancelled() {
        // Read before the request goes out: a switch acknowledged after this point may
        // rightly miss it.
        let (expected, generation) = {
            let s = switched.lock().expect("switched");
            (s.expected, s.generation)
        };
        let epoch = tally.lock().expect("tally").epoch;
        let backend = backend_of(&client, uri.clone()).await;
        let mut s = switched.lock().expect("switched");
        if let Some(want) = expected.filter(|_| s.generation == generation) {
            s.checked += 1;
            if backend.as_deref() != Some(want) {
                s.stale += 1;
            }
        }
        drop(s);
        let mut t = tally.lock().expect("tally");
        if t.epoch != epoch {
            continue;
        }
        match backend {
            Some(b) => *t.by_backend.entry(b).or_default() += 1,
            None => t.failed += 1,
        }
    }
}

/// `switchyard demo --faulty`: the new version answers 30 % of requests with 500s; the
/// canary is rolled back automatically and the reason printed.
pub(crate) async fn faulty(phase_length: Duration) -> anyhow::Result<()> {
    let analyses = r#"
[[analysis]]
name = "errors"
interval = "1s"
count = 3
min_requests = 20
[[analysis.check]]
name = "error-rate"
metric = "error-rate"
max_over_stable = 1.0
"#;
    let service = r#"
[service.strategy]
kind = "canary"
steps = [{ weight = 10 }, { analysis = "errors" }, { weight = 50 }, { pause = "10s" }]
[service.guard]
interval = "250ms"
window = "1s"
max_error_rate = 5
"#;
    // Named bindings keep the backends alive (dropping a Backend stops it).
    let Demo {
        server,
        web,
        api,
        blue: _blue,
        green: _green,
    } = setup(300, analyses, service).await?;
    sayln!("switchyard demo --faulty");
    sayln!("  blue (v1) is healthy; green (v2) answers 30% of requests with 500");
    sayln!(
        "  the canary: 10% -> analysis \"errors\" -> 50% -> pause; the guard checks every 250 ms\n"
    );

    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = CancellationToken::new();
    let mut load = Vec::new();
    let unmeasured = Arc::new(Mutex::new(Switched::default()));
    for _ in 0..WORKERS {
        load.push(tokio::spawn(traffic(
            web,
            tally.clone(),
            unmeasured.clone(),
            stop.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = tokio::time::Instant::now();
    // No strategy: the service's own (`null` is the field left out).
    start_green(&api, serde_json::Value::Null, "").await?;
    let r = loop {
        let r = api.get("/api/v1/services/shop/rollout").await?;
        if r["status"] != "progressing" && r["status"] != "paused" {
            break r;
        }
        if started.elapsed() > Duration::from_secs(30) {
            anyhow::bail!("the faulty canary was not rolled back within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    sayln!(
        "  rolled back {} ms after the start: {}",
        started.elapsed().as_millis(),
        r["reason"].as_str().unwrap_or("")
    );
    tally.lock().expect("tally").restart();
    tokio::time::sleep(phase_length).await;
    let t = tally.lock().expect("tally").take();
    print_tally("after the rollback", &t);
    stop.cancel();
    for l in load {
        l.await.context("traffic generator")?;
    }
    server.shutdown().await;
    sayln!(
        "\ndone: the failing version was rolled back automatically; all traffic is on blue again."
    );
    Ok(())
}
