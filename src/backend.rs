//! A tiny HTTP backend that answers with its own name: the demo's blue and green versions,
//! and the bench's targets. `/healthz` answers 200; `/status/NNN` answers that status;
//! `/sleep/MS` waits first; `POST /_faults?errors=PER_MILLE` makes that share of answers
//! 500s from then on (for the rollback demo and bench), `&delay=MS` adds that wait to every
//! answer (the bench's latency case); any other path echoes the name.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub struct Backend {
    pub addr: SocketAddr,
    /// Answers per thousand that are 500s.
    pub errors_per_mille: Arc<AtomicU32>,
    task: JoinHandle<()>,
}

impl Backend {
    pub async fn start(bind: SocketAddr, name: &'static str) -> std::io::Result<Backend> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let errors_per_mille = Arc::new(AtomicU32::new(0));
        let errors = errors_per_mille.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let errors = errors.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| answer(req, name, errors.clone()));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Backend {
            addr,
            errors_per_mille,
            task,
        })
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The wait `/_faults?delay=MS` set, for every backend of the process (the bench runs one
/// backend per process).
static DELAY_MS: AtomicU32 = AtomicU32::new(0);

async fn answer(
    req: Request<Incoming>,
    name: &'static str,
    errors: Arc<AtomicU32>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path();
    let mut status = StatusCode::OK;
    if path == "/_faults" {
        let field = |name: &str| {
            req.uri()
                .query()
                .into_iter()
                .flat_map(|q| q.split('&'))
                .find_map(|kv| {
                    kv.strip_prefix(name)?
                        .strip_prefix('=')?
                        .parse::<u32>()
                        .ok()
                })
        };
        let per_mille = field("errors").unwrap_or(0).min(1000);
        errors.store(per_mille, Relaxed);
        DELAY_MS.store(field("delay").unwrap_or(0).min(60_000), Relaxed);
        return Ok(Response::new(Full::new(Bytes::from(format!(
            "errors {per_mille}/1000\n"
        )))));
    }
    if path != "/healthz" && fastrand::u32(0..1000) < errors.load(Relaxed) {
        status = StatusCode::INTERNAL_SERVER_ERROR;
    }
    let delay = DELAY_MS.load(Relaxed);
    if delay > 0 && path != "/healthz" {
        tokio::time::sleep(Duration::from_millis(delay.into())).await;
    }
    if let Some(ms) = path.strip_prefix("/sleep/").and_then(|s| s.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(code) = path.strip_prefix("/status/").and_then(|s| s.parse().ok()) {
        status = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    }
    Ok(Response::builder()
        .status(status)
        .header("x-backend", name)
        .body(Full::new(Bytes::from(format!("{name}\n"))))
        .expect("valid response"))
}
