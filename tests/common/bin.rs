//! Running the real `switchyard` binary in tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{blue_green, client, eventually, get, TestBackend};

pub(crate) fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Writes the usual blue-green config (see `blue_green`) to `path`, bound to `web` and
/// `admin`, with `active` in force and a 5 s shutdown.
pub(crate) fn write_config(
    path: &Path,
    web: SocketAddr,
    admin: SocketAddr,
    active: &str,
    blue: SocketAddr,
    green: SocketAddr,
) {
    let cfg = blue_green(blue, green)
        .active(active)
        .bound_to(web, admin)
        .top("[timeouts]\nshutdown = \"5s\"");
    std::fs::write(path, cfg.build()).unwrap();
}

/// What a binary test starts from: backends `blue` and `green`, a temporary directory with
/// `sy.toml` written by `write_config` (blue active), and the two ports it names.
pub(crate) struct Binary {
    pub blue: TestBackend,
    pub green: TestBackend,
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub web: SocketAddr,
    pub admin: SocketAddr,
}

impl Binary {
    pub(crate) async fn setup() -> Binary {
        let blue = TestBackend::start("blue").await;
        let green = TestBackend::start("green").await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sy.toml");
        let (web, admin) = (free_port(), free_port());
        write_config(&path, web, admin, "blue", blue.addr, green.addr);
        Binary {
            blue,
            green,
            dir,
            path,
            web,
            admin,
        }
    }
}

/// An admin client for a binary's admin address, with the test token.
pub(crate) fn admin_at(addr: SocketAddr) -> switchyard::client::AdminClient {
    switchyard::client::AdminClient::new(&addr.to_string(), Some("t0ken".into()))
}

pub(crate) struct Running {
    pub child: Child,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where `run_binary` appends the process's log (stderr) for the config at `path`.
pub(crate) fn log_path(path: &Path) -> PathBuf {
    path.with_extension("stderr")
}

/// What the binary started with the config at `path` has logged so far.
pub(crate) fn logged(path: &Path) -> String {
    std::fs::read_to_string(log_path(path)).unwrap_or_default()
}

/// Starts `switchyard run -c path` (its log appended to `log_path(path)`) and waits until
/// its admin API answers.
pub(crate) async fn run_binary(path: &Path, admin: SocketAddr) -> Running {
    run_binary_with_env(path, admin, &[]).await
}

/// `run_binary` with `env` added to the process's environment (the test's own is never
/// changed: other tests run beside it).
pub(crate) async fn run_binary_with_env(
    path: &Path,
    admin: SocketAddr,
    env: &[(&str, &str)],
) -> Running {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(path))
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["run", "-c"])
        .arg(path)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(log)
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

pub(crate) fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Runs `switchyard` with `args` to its end: exit code, stdout and stderr. Bounded like
/// every test (`TEST_LIMIT`): a command that hangs is killed and fails the test.
pub(crate) fn switchyard<S: AsRef<std::ffi::OsStr>>(
    args: impl IntoIterator<Item = S>,
) -> (i32, String, String) {
    switchyard_with(args, |_| {})
}

/// `switchyard`, with the command set up further first (its directory, its environment).
pub(crate) fn switchyard_with<S: AsRef<std::ffi::OsStr>>(
    args: impl IntoIterator<Item = S>,
    setup: impl FnOnce(&mut Command),
) -> (i32, String, String) {
    use std::io::Read;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    setup(&mut cmd);
    let mut child = cmd
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let read = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            r.read_to_end(&mut text).ok();
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let out = read(Box::new(child.stdout.take().unwrap()));
    let err = read(Box::new(child.stderr.take().unwrap()));
    let since = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if since.elapsed() > super::TEST_LIMIT {
            child.kill().ok();
            panic!("switchyard did not exit within {:?}", super::TEST_LIMIT);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    (status.code().unwrap_or(-1), out, err)
}

/// `switchyard ARGS -c path`.
pub(crate) fn cli(path: &Path, args: &[&str]) -> (i32, String, String) {
    let c = [std::ffi::OsStr::new("-c"), path.as_os_str()];
    switchyard(args.iter().map(std::ffi::OsStr::new).chain(c))
}

/// `cli`, which must succeed: its stdout.
pub(crate) fn cli_ok(path: &Path, args: &[&str]) -> String {
    let (code, out, err) = cli(path, args);
    assert_eq!(code, 0, "switchyard {args:?} failed:\n{out}{err}");
    out
}

/// `cli`, which must fail with exit code 1: its stderr.
pub(crate) fn cli_fails(path: &Path, args: &[&str]) -> String {
    let (code, out, err) = cli(path, args);
    assert_eq!(
        code, 1,
        "switchyard {args:?} exited with {code}:\n{out}{err}"
    );
    err
}

/// Waits for the process to exit (polling every 10 ms) and returns its status and when it
/// exited, measured from `since`; panics after `limit`.
pub(crate) async fn exit_of(
    child: &mut Child,
    since: std::time::Instant,
    limit: Duration,
) -> (std::process::ExitStatus, Duration) {
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, since.elapsed());
        }
        assert!(since.elapsed() < limit, "did not exit within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
