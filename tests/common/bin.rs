//! Running the real `switchyard` binary in tests.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{client, eventually, get};

pub fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

pub fn write_config(
    path: &Path,
    web: SocketAddr,
    admin: SocketAddr,
    active: &str,
    blue: SocketAddr,
    green: SocketAddr,
) {
    let text = format!(
        r#"[admin]
bind = "{admin}"
token = "t0ken"
[timeouts]
shutdown = "5s"
[[listener]]
name = "web"
bind = "{web}"
[[route]]
name = "all"
priority = 1
forward = "shop"
[[service]]
name = "shop"
active = "{active}"
[[service.group]]
name = "blue"
targets = ["{blue}"]
[[service.group]]
name = "green"
targets = ["{green}"]
"#
    );
    std::fs::write(path, text).unwrap();
}

pub struct Running {
    pub child: Child,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn run_binary(path: &Path, admin: SocketAddr) -> Running {
    let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["run", "-c"])
        .arg(path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let c = client();
    eventually(Duration::from_secs(10), "admin API answers", || {
        let c = c.clone();
        async move {
            get(&c, &format!("http://{admin}/healthz"), &[])
                .await
                .is_ok()
        }
    })
    .await;
    Running { child }
}

pub fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

pub fn cli(path: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .arg("-c")
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
