//! A fleet of in-process instances sharing one real etcd (`etcd::Etcd`): each started from
//! its own file (the shared configuration plus its fleet part), the first one's file being
//! the fleet's configuration; `one_behind_a_proxy`: two, one of them reaching etcd through a
//! proxy that can freeze its connections.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::etcd::Etcd;
use super::proxy::FreezingProxy;
use super::{admin, eventually, Cfg, Server};

/// The fleet's part of an instance's file: etcd under `prefix`, this instance's name, its
/// own listener port (the shared config's is per instance).
pub(crate) fn fleet_top(endpoint: &str, prefix: &str, name: &str) -> String {
    format!(
        "[store]\nkind = \"etcd\"\nendpoints = [\"{endpoint}\"]\nprefix = \"{prefix}\"\nlease_ttl = \"2s\"\n\n\
         [instance]\nname = \"{name}\"\nlisten = {{ web = \"127.0.0.1:0\" }}\n"
    )
}

/// `n` instances in this process, named `lb-0`, `lb-1`, …, each from its own file written
/// from `cfg` plus its fleet part.
pub(crate) struct Fleet {
    pub(crate) servers: Vec<Server>,
    _dir: tempfile::TempDir,
    pub(crate) paths: Vec<PathBuf>,
}

impl Fleet {
    /// Starts the instances one after the other and waits until they agree on a leader.
    pub(crate) async fn start(etcd: &Etcd, prefix: &str, cfg: &Cfg, n: usize) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let mut servers = Vec::new();
        let mut paths = Vec::new();
        for i in 0..n {
            let path = dir.path().join(format!("lb-{i}.toml"));
            let text = cfg
                .clone()
                .top(&fleet_top(&etcd.endpoint(), prefix, &format!("lb-{i}")))
                .build();
            std::fs::write(&path, text).unwrap();
            servers.push(start_file(&path).await);
            paths.push(path);
        }
        let fleet = Fleet {
            servers,
            _dir: dir,
            paths,
        };
        fleet.wait_for_leader().await;
        fleet
    }

    /// The name of the instance that leads, once every instance agrees on one.
    pub(crate) async fn wait_for_leader(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut names = Vec::new();
            for s in &self.servers {
                let st = admin(s).get("/api/v1/status").await.unwrap();
                names.push(st["fleet"]["leader"].as_str().map(str::to_string));
            }
            if let [Some(first), rest @ ..] = &names[..] {
                if rest.iter().all(|n| n.as_ref() == Some(first)) {
                    return first.clone();
                }
            }
            assert!(Instant::now() < deadline, "no agreed leader: {names:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// An instance started in this process from the file at `path`.
pub(crate) async fn start_file(path: &Path) -> Server {
    let config = switchyard::config::load(path).unwrap();
    Server::start(config, Some(path.to_path_buf()))
        .await
        .unwrap()
}

/// Two instances of a fleet under `prefix`: `lb-0` talks to etcd directly and leads (it is
/// started first, and `lb-1` once it leads), `lb-1` through a proxy that can freeze its
/// connections; once both follow `lb-0`.
pub(crate) async fn one_behind_a_proxy(
    etcd: &Etcd,
    prefix: &str,
    cfg: &Cfg,
) -> (FreezingProxy, Vec<Server>, tempfile::TempDir) {
    let target: std::net::SocketAddr = etcd
        .endpoint()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let proxy = FreezingProxy::start(target).await;
    let dir = tempfile::tempdir().unwrap();
    let mut servers = Vec::new();
    for (i, endpoint) in [etcd.endpoint(), format!("http://{}", proxy.addr)]
        .iter()
        .enumerate()
    {
        let path = dir.path().join(format!("lb-{i}.toml"));
        let text = cfg
            .clone()
            .top(&fleet_top(endpoint, prefix, &format!("lb-{i}")))
            .build();
        std::fs::write(&path, text).unwrap();
        servers.push(start_file(&path).await);
        eventually(
            Duration::from_secs(10),
            "every instance follows lb-0",
            || async {
                let mut leaders = Vec::new();
                for s in &servers {
                    let st = admin(s).get("/api/v1/status").await.unwrap();
                    leaders.push(st["fleet"]["leader"].clone());
                }
                leaders.iter().all(|l| l == "lb-0")
            },
        )
        .await;
    }
    (proxy, servers, dir)
}

/// How often an instance found its watch silent for longer than a healthy one can be and
/// reopened it (`/metrics`).
pub(crate) async fn watch_reopened(server: &Server) -> u64 {
    let text = super::metrics_text(server).await;
    text.lines()
        .find_map(|l| l.strip_prefix("switchyard_fleet_watch_reopened_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no reopen count in /metrics:\n{text}"))
}
