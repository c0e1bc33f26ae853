//! `switchyard demo --fleet`: etcd (when its binary is found), three switchyard instances
//! sharing their state in it, clients spread over the three, a canary — and the leader
//! stopped mid-rollout without resigning, as in a crash: another instance takes over once
//! the lease runs out and the rollout goes on where it was.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::output::sayln;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use switchyard::backend::Backend;
use switchyard::client::AdminClient;
use switchyard::server::Server;
use tokio_util::sync::CancellationToken;

/// The leader's lease: how long the others wait for a leader that stopped answering.
const LEASE: &str = "2s";
const INSTANCES: usize = 3;

/// An etcd started for the demo, in a temporary folder; stopped and removed on drop.
struct Etcd {
    child: Child,
    dir: PathBuf,
    endpoint: String,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `etcd` on the PATH (Debian's `etcd-server` puts it in /usr/bin).
fn find_etcd() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
}

async fn start_etcd() -> anyhow::Result<Etcd> {
    let Some(bin) = find_etcd() else {
        bail!(
            "demo --fleet runs a real etcd and found none on the PATH: install it \
             (Debian/Ubuntu: apt-get install etcd-server) and run the demo again"
        );
    };
    let (client, peer) = (free_port()?, free_port()?);
    let dir = std::env::temp_dir().join(format!("switchyard-demo-etcd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let endpoint = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new(&bin)
        .arg("--name=demo")
        .arg(format!("--data-dir={}", dir.display()))
        .arg(format!("--listen-client-urls={endpoint}"))
        .arg(format!("--advertise-client-urls={endpoint}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=demo={peer_url}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let etcd = Etcd {
        child,
        dir,
        endpoint,
    };
    let health = format!("{}/health", etcd.endpoint);
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let since = Instant::now();
    loop {
        if let Ok(r) = client.get(health.parse()?).await {
            if r.status().is_success() {
                return Ok(etcd);
            }
        }
        if since.elapsed() > Duration::from_secs(10) {
            bail!("etcd at {} did not answer within 10 s", etcd.endpoint);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn instance_config(
    name: &str,
    token: &str,
    etcd: &str,
    blue: SocketAddr,
    green: SocketAddr,
) -> String {
    format!(
        r#"
[admin]
bind = "127.0.0.1:0"
token = "{token}"

[store]
kind = "etcd"
endpoints = ["{etcd}"]
prefix = "/switchyard/demo-{pid}"
lease_ttl = "{LEASE}"

[instance]
name = "{name}"
listen = {{ web = "127.0.0.1:0" }}

[[listener]]
name = "web"
bind = "127.0.0.1:0"

[[route]]
name = "shop"
priority = 10
forward = "shop"

[[service]]
name = "shop"
active = "blue"

[service.guard]
interval = "250ms"
window = "1s"

[[service.group]]
name = "blue"
targets = ["{blue}"]

[[service.group]]
name = "green"
targets = ["{green}"]
"#,
        pid = std::process::id()
    )
}

/// Answers per instance and backend, and failures per instance.
#[derive(Default)]
struct Counts {
    answers: BTreeMap<(usize, String), u64>,
    failed: BTreeMap<usize, u64>,
}

/// The instances clients send to, by index: one leaves the list before it is stopped, as a
/// DNS name or an anycast address stops leading to a host that is gone.
type Targets = Arc<Mutex<Vec<(usize, SocketAddr)>>>;

async fn clients(webs: Targets, counts: Arc<Mutex<Counts>>, stop: CancellationToken) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut n = 0;
    while !stop.is_cancelled() {
        n += 1;
        let (i, addr) = {
            let w = webs.lock().expect("targets");
            w[n % w.len()]
        };
        let uri: http::Uri = format!("http://{addr}/").parse().expect("uri");
        let backend = super::backend_of(&client, uri).await;
        let mut c = counts.lock().expect("counts");
        match backend {
            Some(b) => *c.answers.entry((i, b)).or_default() += 1,
            None => *c.failed.entry(i).or_default() += 1,
        }
    }
}

async fn leader_of(api: &AdminClient) -> Option<String> {
    let s = api.get("/api/v1/status").await.ok()?;
    s["fleet"]["leader"].as_str().map(str::to_string)
}

fn describe(r: &Value) -> String {
    let steps = r["steps"].as_array().map_or(0, Vec::len) as u64;
    format!(
        "step {} of {steps}, green at {}{}",
        (r["step"].as_u64().unwrap_or(0) + 1).min(steps),
        switchyard::split::format_percent(r["weight"].as_u64().unwrap_or(0) as u32),
        match r["pause_elapsed_ms"].as_u64() {
            Some(ms) if ms > 0 => format!(", {:.1} s of the pause done", ms as f64 / 1000.0),
            _ => String::new(),
        }
    )
}

pub(crate) async fn run(phase_length: Duration) -> anyhow::Result<()> {
    let etcd = start_etcd().await?;
    let blue = Backend::start("127.0.0.1:0".parse()?, "blue-v1").await?;
    let green = Backend::start("127.0.0.1:0".parse()?, "green-v2").await?;
    let token = format!("demo-{:016x}", fastrand::u64(..));
    sayln!("switchyard demo --fleet");
    sayln!("  etcd on {}", etcd.endpoint);
    let mut servers = Vec::new();
    for i in 0..INSTANCES {
        let name = format!("lb-{i}");
        let text = instance_config(&name, &token, &etcd.endpoint, blue.addr, green.addr);
        let config = switchyard::config::parse(&text, &format!("{name}.toml"), Path::new("."))?;
        let server = Server::start(config, None).await?;
        let web = server.listener_addr("web").await;
        sayln!(
            "  instance {name}: traffic on http://{web}, admin API on http://{}",
            server.admin_addr
        );
        servers.push(Some((name, server, web)));
    }
    let api_of = |s: &Server| AdminClient::new(&s.admin_addr.to_string(), Some(token.clone()));
    let api0 = api_of(&servers[0].as_ref().context("instance 0")?.1);
    let since = Instant::now();
    let leader = loop {
        if let Some(l) = leader_of(&api0).await {
            break l;
        }
        if since.elapsed() > Duration::from_secs(10) {
            bail!("the fleet elected no leader within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    sayln!(
        "  leader: {leader} (an etcd lease of {LEASE}); it drives rollouts, the others follow\n"
    );

    let counts = Arc::new(Mutex::new(Counts::default()));
    let stop = CancellationToken::new();
    let webs: Targets = Arc::new(Mutex::new(
        servers
            .iter()
            .flatten()
            .map(|(_, _, w)| *w)
            .enumerate()
            .collect(),
    ));
    let load: Vec<_> = (0..4)
        .map(|_| tokio::spawn(clients(webs.clone(), counts.clone(), stop.clone())))
        .collect();

    let pause = humantime::format_duration(phase_length * 3).to_string();
    let steps = json!({ "kind": "canary", "steps": [
        { "weight": 20 }, { "pause": pause }, { "weight": 50 }, { "pause": pause }, { "weight": 100 }
    ]});
    super::start_green(&api0, steps, "through lb-0; ").await?;
    sayln!("  canary: green 20% -> 50% -> 100%, pausing {pause} at each step");

    // Into the first pause, then stop the leader the way a crash would: no resignation.
    let r = loop {
        let r = api0.get("/api/v1/services/shop/rollout").await?;
        if r["step"] == 1 && r["pause_elapsed_ms"].as_u64().unwrap_or(0) >= 1000 {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    sayln!("  {}", describe(&r));
    let dead = servers
        .iter()
        .position(|s| s.as_ref().is_some_and(|(n, ..)| *n == leader))
        .context("the leader is one of the instances")?;
    let (_, server, _) = servers[dead].take().expect("leader");
    webs.lock().expect("targets").retain(|(i, _)| *i != dead);
    server.shutdown().await;
    let stopped = Instant::now();
    sayln!("\n✗ {leader} stopped without resigning (as in a crash)");
    let survivor = servers.iter().flatten().next().context("a survivor")?;
    let api = api_of(&survivor.1);
    let next = loop {
        match leader_of(&api).await {
            Some(l) if l != leader => break l,
            _ => {}
        }
        if stopped.elapsed() > Duration::from_secs(15) {
            bail!("no instance took over within 15 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    sayln!(
        "→ {next} leads after {} ms (the lease ran out); the rollout goes on where it was:",
        stopped.elapsed().as_millis()
    );
    let r = api.get("/api/v1/services/shop/rollout").await?;
    sayln!("  {}", describe(&r));
    let mut last = r["weight"].as_u64();
    let done = loop {
        let r = api.get("/api/v1/services/shop/rollout").await?;
        if r["weight"].as_u64() != last {
            last = r["weight"].as_u64();
            sayln!("  {}", describe(&r));
        }
        if r["status"] != "progressing" && r["status"] != "paused" {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    sayln!("  rollout {}\n", done["status"].as_str().unwrap_or("?"));

    stop.cancel();
    for l in load {
        l.await.context("clients")?;
    }
    let c = std::mem::take(&mut *counts.lock().expect("counts"));
    for i in 0..INSTANCES {
        let name = format!("lb-{i}");
        let answered: u64 = c
            .answers
            .iter()
            .filter(|((j, _), _)| *j == i)
            .map(|(_, n)| n)
            .sum();
        let failed = c.failed.get(&i).copied().unwrap_or(0);
        let note = if i == dead {
            "  (stopped mid-rollout)"
        } else {
            ""
        };
        sayln!("  {name}: {answered} requests answered, {failed} failed{note}");
    }
    for (_, server, _) in servers.into_iter().flatten() {
        server.shutdown().await;
    }
    sayln!(
        "\ndone: the rollout {} after the leader was lost",
        done["status"].as_str().unwrap_or("?")
    );
    drop(etcd);
    Ok(())
}
