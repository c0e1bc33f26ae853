//! Support for the release tests (rollouts, analyses, hooks, rollbacks): a bound on a whole
//! test, the rollout verbs of service `shop`, steady load, the split a run of requests saw,
//! and a recording HTTP peer that plays a hook target, a webhook check or the notification
//! receiver. Whole tests are bounded with `common::bounded`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use switchyard::client::AdminClient;

use super::{client, get, metric, metrics_text, wait_rollout_for, Server};

/// The bound (instead of `common::TEST_LIMIT`) of tests that send tens of thousands of requests (seen: 70 s on a 2-core box
/// shared with three parallel builds).
pub(crate) const LOAD_LIMIT: Duration = Duration::from_secs(300);

/// `POST /api/v1/services/shop/rollout/{verb}` with `body`; panics on an error answer.
pub(crate) async fn verb(api: &AdminClient, verb: &str, body: Value) -> Value {
    api.post(&format!("/api/v1/services/shop/rollout/{verb}"), body)
        .await
        .unwrap_or_else(|e| panic!("{verb} refused: {e}"))
}

/// The error a rollout verb is refused with.
pub(crate) async fn verb_err(api: &AdminClient, verb: &str, body: Value) -> String {
    match api
        .post(&format!("/api/v1/services/shop/rollout/{verb}"), body)
        .await
    {
        Ok(v) => panic!("{verb} was accepted: {v}"),
        Err(e) => e.to_string(),
    }
}

/// One dry run of `analysis` against candidate `green` (`POST …/analysis/run`); panics on an
/// error answer.
pub(crate) async fn dry_run(api: &AdminClient, analysis: &str) -> Value {
    api.post(
        "/api/v1/services/shop/analysis/run",
        json!({ "analysis": analysis, "candidate": "green" }),
    )
    .await
    .unwrap_or_else(|e| panic!("analysis run of {analysis} refused: {e}"))
}

pub(crate) async fn promote(api: &AdminClient) -> Value {
    verb(api, "promote", json!({})).await
}

/// A rollout's (or an event's) reason.
pub(crate) fn reason(r: &Value) -> &str {
    r["reason"].as_str().unwrap_or("")
}

/// Events matching `query` (e.g. `service=shop&kind=analysis`), newest first.
pub(crate) async fn events(api: &AdminClient, query: &str) -> Vec<Value> {
    let v = api.get(&format!("/api/v1/events?{query}")).await.unwrap();
    v.as_array().expect("events are a list").clone()
}

/// Waits up to `secs` for the rollout of `shop` to satisfy `f`.
pub(crate) async fn wait_status(api: &AdminClient, secs: u64, f: impl Fn(&Value) -> bool) -> Value {
    wait_rollout_for(
        api,
        Duration::from_secs(secs),
        "rollout did not get there",
        f,
    )
    .await
}

/// Asserts that the rollout of `shop` is in `status` now, without waiting (`why` says why it
/// must be); returns the rollout.
pub(crate) async fn assert_status(api: &AdminClient, status: &str, why: &str) -> Value {
    let r = super::rollout(api).await;
    assert_eq!(r["status"], status, "{why}: {r}");
    r
}

pub(crate) fn paused_at(weight: u64) -> impl Fn(&Value) -> bool {
    move |r| r["status"] == "paused" && r["weight"] == weight
}

/// Steady traffic from `workers` keep-alive clients until stopped; counts what failed
/// (anything but a 200).
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<u64>>,
}

impl Load {
    pub(crate) fn start(
        url: String,
        workers: usize,
        headers: &'static [(&'static str, &'static str)],
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..workers)
            .map(|_| {
                let (url, stop) = (url.clone(), stop.clone());
                tokio::spawn(async move {
                    let c = client();
                    let (mut n, mut failed) = (0u64, 0u64);
                    // A cap, so that a test that forgets to stop its load still ends.
                    while !stop.load(Ordering::SeqCst) && n < 200_000 {
                        n += 1;
                        if !get(&c, &url, headers).await.is_ok_and(|r| r.status == 200) {
                            failed += 1;
                        }
                    }
                    failed
                })
            })
            .collect();
        Load { stop, tasks }
    }

    /// Stops the clients; the number of requests that failed.
    pub(crate) async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        let mut failed = 0;
        for t in self.tasks {
            failed += t.await.unwrap();
        }
        failed
    }
}

/// Sends `n` requests over `workers` connections (each must be a 200); counts answers by
/// backend.
pub(crate) async fn measure(
    url: &str,
    n: usize,
    workers: usize,
    headers: &[(&str, &str)],
) -> BTreeMap<String, u64> {
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (url, headers) = (url.to_string(), headers.clone());
        let count = n / workers + usize::from(w < n % workers);
        tasks.push(tokio::spawn(async move {
            let c = client();
            let h: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let mut seen: BTreeMap<String, u64> = BTreeMap::new();
            for _ in 0..count {
                let r = get(&c, &url, &h).await.unwrap();
                assert_eq!(r.status, 200, "{}", r.body);
                *seen.entry(r.backend().to_string()).or_default() += 1;
            }
            seen
        }));
    }
    let mut total = BTreeMap::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            *total.entry(k).or_default() += v;
        }
    }
    total
}

/// The percentage of `seen` answered by `backend`.
pub(crate) fn share(seen: &BTreeMap<String, u64>, backend: &str) -> f64 {
    let total: u64 = seen.values().sum();
    100.0 * seen.get(backend).copied().unwrap_or(0) as f64 / total as f64
}

/// One request that reached a `Receiver`: when it arrived and its body (JSON, or the text).
#[derive(Clone, Debug)]
pub(crate) struct Call {
    pub at: Instant,
    pub body: Value,
    pub method: String,
    /// Path and query.
    pub path: String,
    pub headers: http::HeaderMap,
}

/// How a `Receiver` answers its `n`th request (from 0): after a delay, a status and a body.
pub(crate) type Answer = Arc<dyn Fn(usize) -> (Duration, u16, &'static str) + Send + Sync>;

/// An HTTP peer that records every request before it answers it: a hook target, a webhook
/// check or the notification receiver.
pub(crate) struct Receiver {
    pub addr: SocketAddr,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl Receiver {
    /// Answers every request at once with `status` and `body`.
    pub(crate) async fn answering(status: u16, body: &'static str) -> Receiver {
        Self::start(Arc::new(move |_| (Duration::ZERO, status, body))).await
    }

    pub(crate) async fn start(answer: Answer) -> Receiver {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
        let seen = calls.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let (seen, answer) = (seen.clone(), answer.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let (seen, answer) = (seen.clone(), answer.clone());
                            async move {
                                let (method, headers) =
                                    (req.method().to_string(), req.headers().clone());
                                let path = req
                                    .uri()
                                    .path_and_query()
                                    .map_or("/", |p| p.as_str())
                                    .to_string();
                                let b = req.into_body().collect().await.unwrap().to_bytes();
                                let body = serde_json::from_slice(&b).unwrap_or_else(|_| {
                                    Value::String(String::from_utf8_lossy(&b).into_owned())
                                });
                                let n = {
                                    let mut calls = seen.lock().unwrap();
                                    calls.push(Call {
                                        at: Instant::now(),
                                        body,
                                        method,
                                        path,
                                        headers,
                                    });
                                    calls.len() - 1
                                };
                                let (delay, status, text) = answer(n);
                                tokio::time::sleep(delay).await;
                                Ok::<_, std::convert::Infallible>(
                                    http::Response::builder()
                                        .status(status)
                                        .body(Full::new(Bytes::from_static(text.as_bytes())))
                                        .unwrap(),
                                )
                            }
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
                });
            }
        });
        Receiver { addr, calls }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub(crate) fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Waits (up to 10 s) until `n` requests have arrived; returns them all.
    pub(crate) async fn wait_calls(&self, n: usize) -> Vec<Call> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let calls = self.calls();
            if calls.len() >= n {
                return calls;
            }
            assert!(
                Instant::now() < deadline,
                "{n} calls expected, {} arrived: {calls:?}",
                calls.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Waits until `/metrics` counts `n` rollbacks of `cause`, and no other cause at all (a
/// rollback counted under the wrong cause fails here).
pub(crate) async fn wait_rollbacks(sy: &Server, cause: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics_text(sy).await;
        let ours = metric(
            &text,
            "switchyard_rollbacks_total",
            &[&format!("cause=\"{cause}\"")],
        );
        if ours == Some(n as f64) {
            let others: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("switchyard_rollbacks_total{"))
                .filter(|l| !l.contains(&format!("cause=\"{cause}\"")))
                .collect();
            assert!(
                others.is_empty(),
                "rollbacks under another cause: {others:?}"
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{n} rollbacks by {cause} expected, /metrics has {ours:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A canary strategy that sets the candidate to `percent` % and waits for promotion (no
/// weight step at 0).
pub(crate) fn held_at(percent: f64) -> Value {
    if percent == 0.0 {
        return json!({ "kind": "canary", "steps": [{ "pause": "until-promoted" }] });
    }
    json!({ "kind": "canary", "steps": [{ "weight": percent }, { "pause": "until-promoted" }] })
}

/// Starts a rollout of `shop` to `green` held at `percent` % and waits until it is paused
/// there; returns the rollout.
pub(crate) async fn start_held(api: &AdminClient, percent: f64) -> Value {
    super::start_rollout(api, held_at(percent)).await;
    let weight = (percent * 100.0).round() as u64;
    wait_status(api, 10, paused_at(weight)).await
}

/// Lines that `echo WORD >> file` hooks wrote, counted by word.
pub(crate) fn lines_of(path: &std::path::Path, word: &str) -> usize {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().filter(|l| *l == word).count()
}
