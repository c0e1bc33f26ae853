//! A tiny HTTP backend that answers with its own name: the demo's blue and green versions,
//! and the bench's targets. `/healthz` answers 200; `/status/NNN` answers that status;
//! `/sleep/MS` waits first; `POST /_faults?errors=PER_MILLE` makes that share of answers
//! 500s from then on (for the rollback demo and bench), `&delay=MS` adds that wait to every
//! answer (the bench's latency case); `/bytes/N` streams N bytes (at most 1 GiB) in 64 KiB
//! chunks made of one static buffer, and any request's body is read to its end and its size
//! answered (`received N`) — the bench's big downloads and uploads (`bench/bodies.sh`), which
//! cost the backend no memory per byte, so what grows is the proxy's; any other path echoes
//! the name.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Either, Full};
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

/// The chunk `/bytes/N` repeats: 64 KiB, the size a proxy would read or write at once.
static FILL: [u8; 64 * 1024] = [b'x'; 64 * 1024];

/// `/bytes/N`'s body: N bytes in chunks of [`FILL`], made as they are asked for.
pub struct Filler {
    left: u64,
}

impl Body for Filler {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(FILL.len() as u64) as usize;
        self.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&FILL[..n])))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

type Answer = Either<Full<Bytes>, Filler>;

fn text(s: String) -> Answer {
    Either::Left(Full::new(Bytes::from(s)))
}

async fn answer(
    req: Request<Incoming>,
    name: &'static str,
    errors: Arc<AtomicU32>,
) -> Result<Response<Answer>, Infallible> {
    let (head, mut body) = req.into_parts();
    let path = head.uri.path();
    let mut status = StatusCode::OK;
    if path == "/_faults" {
        let field = |name: &str| {
            head.uri
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
        return Ok(Response::new(text(format!("errors {per_mille}/1000\n"))));
    }
    // A body is read to its end, chunk by chunk and dropped, so an upload of any size costs
    // nothing here.
    let mut received = 0u64;
    if !body.is_end_stream() {
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => received += f.data_ref().map_or(0, |d| d.len() as u64),
                Err(_) => break,
            }
        }
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
    let body = match path
        .strip_prefix("/bytes/")
        .and_then(|s| s.parse::<u64>().ok())
    {
        Some(n) => Either::Right(Filler {
            left: n.min(1 << 30),
        }),
        None if received > 0 => text(format!("received {received}\n")),
        None => text(format!("{name}\n")),
    };
    Ok(Response::builder()
        .status(status)
        .header("x-backend", name)
        .body(body)
        .expect("valid response"))
}
