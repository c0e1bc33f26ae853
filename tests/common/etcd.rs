//! A real etcd for tests: Debian's `etcd-server` (`/usr/bin/etcd`) on 127.0.0.1 with
//! ephemeral ports and a temporary data dir, stopped, restarted on the same ports and data,
//! paused and resumed as a test needs; killed when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::bin::{free_port, signal};
use super::eventually;

const ETCD: &str = "/usr/bin/etcd";

/// How long etcd may take to answer after it was started.
const READY: Duration = Duration::from_secs(20);

pub(crate) struct Etcd {
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts etcd and waits until it answers; a port taken between choosing and binding
    /// it is retried with new ones.
    pub(crate) async fn start() -> Etcd {
        assert!(
            std::path::Path::new(ETCD).exists(),
            "{ETCD} not found: install etcd: apt-get install etcd-server"
        );
        // On tmpfs when there is one: etcd syncs every write to disk, and a few dozen tests
        // doing that at once on a loaded 2-core machine made lease renewals late enough to
        // change leaders mid-test. What is tested is switchyard, not the disk.
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm).unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        let mut etcd = Etcd {
            child: None,
            client_port: 0,
            peer_port: 0,
            dir,
        };
        for _ in 0..5 {
            etcd.client_port = free_port().port();
            etcd.peer_port = free_port().port();
            if etcd.launch().await {
                return etcd;
            }
        }
        panic!("etcd did not start; its log:\n{}", etcd.log());
    }

    /// `http://127.0.0.1:<port>`.
    pub(crate) fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// SIGTERM, and waits until it exited.
    pub(crate) async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, "-TERM");
            let waited = tokio::task::spawn_blocking(move || child.wait()).await;
            waited.unwrap().unwrap();
        }
    }

    /// Starts again on the same ports and data (after `stop`).
    pub(crate) async fn start_again(&mut self) {
        assert!(
            self.launch().await,
            "etcd did not start again:\n{}",
            self.log()
        );
    }

    pub(crate) fn pause(&self) {
        signal(self.child.as_ref().expect("etcd runs"), "-STOP");
    }

    pub(crate) fn resume(&self) {
        signal(self.child.as_ref().expect("etcd runs"), "-CONT");
    }

    /// Runs etcd on the chosen ports; true once it answers, false when it exited (a port
    /// was taken meanwhile).
    async fn launch(&mut self) -> bool {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(ETCD)
            .args(["--name", "test", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("etcd starts");
        let pid = child.id() as i32;
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + READY;
        loop {
            if answers(&client).await {
                return true;
            }
            if switchyard::sys::child_has_exited(pid) {
                if let Some(mut gone) = self.child.take() {
                    let _ = gone.wait();
                }
                return false;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "etcd did not answer within {READY:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Waits until etcd answers (after `resume`).
    pub(crate) async fn wait_answers(&self) {
        let endpoint = self.endpoint();
        eventually(READY, "etcd answers", || answers(&endpoint)).await;
    }

    /// etcd's current revision.
    pub(crate) async fn revision(&self) -> i64 {
        let (v, text) = self.call("/v3/kv/range", r#"{"key":"AA=="}"#).await;
        v["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("{text}"))
    }

    /// Revokes the lease of the leader of the fleet under `prefix`, which deletes its leader
    /// key and instance record: what etcd does when that lease runs out, done now (a leader
    /// stopped in-process would otherwise hold the key for its lease's TTL).
    pub(crate) async fn revoke_leader_lease(&self, prefix: &str) {
        use base64::Engine as _;
        let key = format!("{}/leader", prefix.trim_end_matches('/'));
        let key = base64::engine::general_purpose::STANDARD.encode(key);
        let (v, text) = self
            .call("/v3/kv/range", &format!(r#"{{"key":"{key}"}}"#))
            .await;
        let lease = v["kvs"][0]["lease"]
            .as_str()
            .unwrap_or_else(|| panic!("no leader key with a lease: {text}"))
            .to_string();
        let (_, text) = self
            .call("/v3/lease/revoke", &format!(r#"{{"ID":"{lease}"}}"#))
            .await;
        assert!(text.starts_with("HTTP/1.1 200"), "revoke: {text}");
    }

    /// A POST to the JSON gateway that must answer: its JSON body and the whole answer.
    async fn call(&self, path: &str, body: &str) -> (serde_json::Value, String) {
        let (_, text) = post(&self.endpoint(), path, body)
            .await
            .expect("etcd answers");
        let json = text.split("\r\n\r\n").nth(1).unwrap_or_default();
        let v = serde_json::from_str(json).unwrap_or_else(|_| panic!("{text}"));
        (v, text)
    }

    /// Compacts etcd's history up to `revision`: older revisions can no longer be watched.
    pub(crate) async fn compact(&self, revision: i64) {
        let body = format!(r#"{{"revision":"{revision}","physical":true}}"#);
        let answer = post(&self.endpoint(), "/v3/kv/compaction", &body).await;
        assert!(
            answer.as_ref().is_some_and(|(status, _)| *status == 200),
            "compaction: {answer:?}"
        );
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// etcd answers a range (on a key that does not matter) within a second.
async fn answers(endpoint: &str) -> bool {
    post(endpoint, "/v3/kv/range", r#"{"key":"AA=="}"#)
        .await
        .is_some_and(|(status, _)| status == 200)
}

/// One POST to etcd's JSON gateway over a raw connection, bounded by a second: the
/// status and body, `None` when it did not answer.
pub(crate) async fn post(endpoint: &str, path: &str, body: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = endpoint.trim_start_matches("http://").to_string();
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await.ok()?;
        let text = String::from_utf8_lossy(&answer).into_owned();
        let status = text.get(9..12)?.parse().ok()?;
        Some((status, text))
    };
    tokio::time::timeout(Duration::from_secs(1), ask)
        .await
        .ok()
        .flatten()
}
