//! Test support: real backends on loopback that record what reached them, a switchyard
//! started in-process from a TOML string (built with `Cfg`, in `cfg`), a keep-alive HTTP
//! client, and the waits (`eventually`, `bounded`, `bounded_test!`, in `wait`).
#![allow(dead_code)]

pub(crate) mod bin;
pub(crate) mod browser;
mod cfg;
pub(crate) mod etcd;
pub(crate) mod fleet;
pub(crate) mod proxy;
pub(crate) mod raw;
pub(crate) mod release;
mod wait;

pub(crate) use cfg::*;
pub(crate) use wait::*;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub(crate) use switchyard::server::Server;

/// A backend that counts requests, remembers the highest `x-seq` it saw, and can be killed
/// (listener and every open connection closed at once).
pub(crate) struct TestBackend {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
    pub max_seq: Arc<AtomicU64>,
    /// Answers per thousand that are 500s, and a delay before every answer: set at run time.
    pub errors_per_mille: Arc<std::sync::atomic::AtomicU32>,
    pub delay_ms: Arc<AtomicU64>,
    kill: CancellationToken,
    /// The backend's tasks still running (the accept loop and one per connection): `down`
    /// waits for none, so that a test acts on a backend that is really gone.
    tasks: Arc<AtomicU64>,
}

/// Counts a running task of a test backend while it lives.
struct LiveTask(Arc<AtomicU64>);

impl LiveTask {
    fn new(tasks: &Arc<AtomicU64>) -> LiveTask {
        tasks.fetch_add(1, Ordering::SeqCst);
        LiveTask(tasks.clone())
    }
}

impl Drop for LiveTask {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl TestBackend {
    pub(crate) async fn start(name: &'static str) -> TestBackend {
        Self::start_on("127.0.0.1:0".parse().unwrap(), name).await
    }

    /// The usual two: `blue` and `green`.
    pub(crate) async fn pair() -> (TestBackend, TestBackend) {
        (Self::start("blue").await, Self::start("green").await)
    }

    pub(crate) async fn start_on(addr: SocketAddr, name: &'static str) -> TestBackend {
        Self::start_with_delay(addr, name, Duration::ZERO).await
    }

    /// A backend that waits `delay` before every answer.
    pub(crate) async fn start_with_delay(
        addr: SocketAddr,
        name: &'static str,
        delay: Duration,
    ) -> TestBackend {
        let listener = TcpListener::bind(addr).await.expect("bind backend");
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let max_seq = Arc::new(AtomicU64::new(0));
        let kill = CancellationToken::new();
        let errors_per_mille = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let delay_ms = Arc::new(AtomicU64::new(delay.as_millis() as u64));
        let (faults, slow) = (errors_per_mille.clone(), delay_ms.clone());
        let (h, m, k) = (hits.clone(), max_seq.clone(), kill.clone());
        let tasks = Arc::new(AtomicU64::new(0));
        let (t, accepting) = (tasks.clone(), LiveTask::new(&tasks));
        tokio::spawn(async move {
            let _accepting = accepting;
            loop {
                let accepted = tokio::select! {
                    _ = k.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((stream, _)) = accepted else { continue };
                let (h, m, k) = (h.clone(), m.clone(), k.clone());
                let (faults, slow) = (faults.clone(), slow.clone());
                let serving = LiveTask::new(&t);
                tokio::spawn(async move {
                    let _serving = serving;
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (h, m, faults, slow) =
                            (h.clone(), m.clone(), faults.clone(), slow.clone());
                        async move {
                            let wait = slow.load(Ordering::SeqCst);
                            if wait > 0 {
                                tokio::time::sleep(Duration::from_millis(wait)).await;
                            }
                            let fail = req.uri().path() != "/healthz"
                                && fastrand::u32(0..1000) < faults.load(Ordering::SeqCst);
                            if fail {
                                h.fetch_add(1, Ordering::SeqCst);
                                return Ok(text(StatusCode::INTERNAL_SERVER_ERROR, name));
                            }
                            answer(req, name, h, m).await
                        }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = k.cancelled() => {}
                    }
                });
            }
        });
        TestBackend {
            name,
            addr,
            hits,
            max_seq,
            errors_per_mille,
            delay_ms,
            kill,
            tasks,
        }
    }

    pub(crate) fn set_errors(&self, per_mille: u32) {
        self.errors_per_mille.store(per_mille, Ordering::SeqCst);
    }

    pub(crate) fn set_delay(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::SeqCst);
    }

    pub(crate) fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    /// Closes the listener and every connection, like a crashed process.
    pub(crate) fn kill(&self) {
        self.kill.cancel();
    }

    /// [`TestBackend::kill`], then waits until its listener and connections are closed:
    /// the kill takes effect on the backend's own tasks, a moment later, and a request sent
    /// meanwhile could still be accepted and then reset.
    pub(crate) async fn down(&self) {
        self.kill();
        let tasks = self.tasks.clone();
        eventually(Duration::from_secs(5), "the backend's tasks ended", || {
            let tasks = tasks.clone();
            async move { tasks.load(Ordering::SeqCst) == 0 }
        })
        .await;
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.kill.cancel();
    }
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn answer(
    req: Request<Incoming>,
    name: &'static str,
    hits: Arc<AtomicU64>,
    max_seq: Arc<AtomicU64>,
) -> Result<Response<BoxBody>, Infallible> {
    if req.uri().path() == "/healthz" {
        return Ok(text(StatusCode::OK, "ok"));
    }
    hits.fetch_add(1, Ordering::SeqCst);
    if let Some(seq) = req
        .headers()
        .get("x-seq")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
    {
        max_seq.fetch_max(seq, Ordering::SeqCst);
    }
    let path = req.uri().path().to_string();
    if let Some(ms) = path.strip_prefix("/sleep/").and_then(|s| s.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(code) = path.strip_prefix("/status/").and_then(|s| s.parse().ok()) {
        return Ok(text(StatusCode::from_u16(code).unwrap(), name));
    }
    if path == "/echo" {
        // The request as the backend saw it, as JSON; lines of one field are joined with
        // ", ", so that a duplicated field shows.
        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in req.headers() {
            let v = v.to_str().unwrap_or("");
            headers
                .entry(k.to_string())
                .and_modify(|all| *all = format!("{all}, {v}"))
                .or_insert_with(|| v.to_string());
        }
        let version = format!("{:?}", req.version());
        let uri = req.uri().to_string();
        let method = req.method().to_string();
        let body = req
            .into_body()
            .collect()
            .await
            .map(http_body_util::Collected::to_bytes)
            .unwrap_or_default();
        let json = serde_json::json!({
            "backend": name, "headers": headers, "version": version, "uri": uri,
            "method": method, "body": String::from_utf8_lossy(&body),
        });
        return Ok(text(StatusCode::OK, &json.to_string()));
    }
    if path == "/grpc" {
        // A gRPC-shaped answer: data, then trailers with grpc-status.
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let frames = vec![
            Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"\x00\x00\x00\x00\x02hi"))),
            Ok(Frame::trailers(trailers)),
        ];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        return Ok(Response::builder()
            .header("content-type", "application/grpc")
            .header("x-backend", name)
            .body(BodyExt::boxed(body))
            .unwrap());
    }
    Ok(text(StatusCode::OK, name))
}

fn text(status: StatusCode, body: &str) -> Response<BoxBody> {
    let name = body.lines().next().unwrap_or("").to_string();
    Response::builder()
        .status(status)
        .header(
            "x-backend",
            if name.len() < 40 { name } else { "json".into() },
        )
        .body(BodyExt::boxed(Full::new(Bytes::from(body.to_string()))))
        .unwrap()
}

/// Starts switchyard in-process from a config text (paths relative to `dir`).
pub(crate) async fn start(toml: &str) -> Server {
    start_in(toml, Path::new(".")).await
}

/// Backends `blue` and `green`, and a switchyard from the config `cfg` writes for their
/// addresses: how most tests begin.
pub(crate) async fn serve_pair(
    cfg: impl FnOnce(SocketAddr, SocketAddr) -> String,
) -> (TestBackend, TestBackend, Server) {
    let (blue, green) = TestBackend::pair().await;
    let server = start(&cfg(blue.addr, green.addr)).await;
    (blue, green, server)
}

/// A switchyard started from a config file (so reload and SIGHUP re-read it), state in memory.
pub(crate) async fn server_from_file(path: &Path) -> Server {
    let mut config = switchyard::config::load(path).unwrap();
    config.store = switchyard::config::StoreConfig::memory();
    Server::start(config, Some(path.to_path_buf()))
        .await
        .unwrap()
}

/// State lives in memory unless the config names a `[store] path`.
pub(crate) async fn start_in(toml: &str, dir: &Path) -> Server {
    let mut config = switchyard::config::parse(toml, "test.toml", dir)
        .unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
    if !toml.contains("[store]") {
        config.store = switchyard::config::StoreConfig::memory();
    }
    Server::start(config, None)
        .await
        .expect("switchyard starts")
}

pub(crate) type HttpClient =
    Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

pub(crate) fn client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(64)
        .build_http()
}

pub(crate) struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub(crate) fn backend(&self) -> &str {
        self.headers
            .get("x-backend")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.body))
    }
}

pub(crate) async fn get(
    client: &HttpClient,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    let mut req = Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Empty::new()).unwrap())
        .await
        .map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Which backend answered a `GET url` on a fresh client.
pub(crate) async fn backend_of(url: &str) -> String {
    let reply = get(&client(), url, &[]).await.unwrap();
    reply.backend().to_string()
}

/// `GET path` through the server's listener `web` on a fresh client.
pub(crate) async fn get_web(server: &Server, path: &str) -> Reply {
    let url = format!("http://{}{path}", server.listener_addr("web").await);
    get(&client(), &url, &[]).await.unwrap()
}

/// The URL of the server's listener `web`, for clients the test makes itself.
pub(crate) async fn web_url(server: &Server) -> String {
    format!("http://{}/", server.listener_addr("web").await)
}

/// The admin plane's `/metrics` text.
pub(crate) async fn metrics_text(server: &Server) -> String {
    get(
        &client(),
        &format!("http://{}/metrics", server.admin_addr),
        &[],
    )
    .await
    .unwrap()
    .body
}

/// An admin client for the server with the token the test configs use.
pub(crate) fn admin(server: &Server) -> switchyard::client::AdminClient {
    switchyard::client::AdminClient::new(&server.admin_addr.to_string(), Some("t0ken".into()))
}

/// The error a POST of `body` to `path` is refused with; panics if it is accepted.
pub(crate) async fn post_err(
    api: &switchyard::client::AdminClient,
    path: &str,
    body: serde_json::Value,
) -> String {
    match api.post(path, body).await {
        Ok(v) => panic!("POST {path} was accepted: {v}"),
        Err(e) => e.to_string(),
    }
}

/// An admin client for the server with `token`.
pub(crate) fn as_client(server: &Server, token: &str) -> switchyard::client::AdminClient {
    switchyard::client::AdminClient::new(&server.admin_addr.to_string(), Some(token.into()))
}

/// The rollout of service `shop`.
pub(crate) async fn rollout(api: &switchyard::client::AdminClient) -> serde_json::Value {
    api.get("/api/v1/services/shop/rollout").await.unwrap()
}

/// Polls the rollout of `shop` every 20 ms until `f` holds (10 s at most).
pub(crate) async fn wait_rollout(
    api: &switchyard::client::AdminClient,
    what: &str,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    wait_rollout_for(api, Duration::from_secs(10), what, f).await
}

/// As `wait_rollout`, with its own limit.
pub(crate) async fn wait_rollout_for(
    api: &switchyard::client::AdminClient,
    limit: Duration,
    what: &str,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        // A fleet's instance that has not yet had the rollout from etcd answers 404: not
        // there yet, like any other state waited for (seen in tests/fleet under load).
        let r = match api.get("/api/v1/services/shop/rollout").await {
            Ok(r) => r,
            Err(switchyard::client::ClientError::Api { code, .. }) if code == "no_rollout" => {
                serde_json::Value::Null
            }
            Err(e) => panic!("{e}"),
        };
        if f(&r) {
            return r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not reached: {what}; rollout is {r:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts a rollout of `shop` to `green` with the service's own strategy.
pub(crate) async fn start_green(api: &switchyard::client::AdminClient) -> serde_json::Value {
    api.post(
        "/api/v1/rollouts",
        serde_json::json!({ "service": "shop", "candidate": "green" }),
    )
    .await
    .unwrap()
}

/// Starts a rollout of `shop` to `green` with `strategy`.
pub(crate) async fn start_rollout(
    api: &switchyard::client::AdminClient,
    strategy: serde_json::Value,
) -> serde_json::Value {
    api.post(
        "/api/v1/rollouts",
        serde_json::json!({ "service": "shop", "candidate": "green", "strategy": strategy }),
    )
    .await
    .unwrap()
}

/// Another process's hold on the state database, as in an outage: an exclusive SQLite
/// transaction on the file from another connection, until `release` (or 30 s at most).
pub(crate) struct DbLock {
    release: std::sync::mpsc::Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DbLock {
    pub(crate) fn hold(db: &Path) -> DbLock {
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let (taken, is_taken) = std::sync::mpsc::channel::<()>();
        let db = db.to_path_buf();
        let thread = std::thread::spawn(move || {
            let conn = rusqlite::Connection::open(&db).expect("open the state database");
            conn.busy_timeout(Duration::from_secs(10)).unwrap();
            conn.execute_batch("BEGIN EXCLUSIVE")
                .expect("lock the state database");
            taken.send(()).unwrap();
            // Until released, or until the `DbLock` is dropped (a test that panics).
            let _ = wait.recv();
            conn.execute_batch("ROLLBACK").unwrap();
        });
        is_taken
            .recv_timeout(Duration::from_secs(15))
            .expect("database locked");
        DbLock {
            release,
            thread: Some(thread),
        }
    }

    pub(crate) fn release(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.release.send(());
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for DbLock {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The value of a metric line from the Prometheus text whose labels include all `labels`.
pub(crate) fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.split(['{', ' ']).next() == Some(name) && labels.iter().all(|x| l.contains(x)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A WebSocket echo backend on an ephemeral loopback port.
pub(crate) async fn ws_echo() -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    ws_addr
}
