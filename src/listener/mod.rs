//! Listeners: accept loops that hand each connection (after TLS, when the listener has
//! certificates) to hyper with HTTP/1.1 and HTTP/2 (h2c by preface, or h2 by ALPN), its HTTP
//! state built only when bytes come and dropped while an HTTP/1.1 connection is idle
//! (`conn`). Each connection enforces header-read and idle timeouts; stopping a listener
//! stops accepting and lets open connections finish within the shutdown bound.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Request, Response};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::proxy::{self, ConnInfo};

mod conn;
mod handshake;
mod serve;
use crate::activity::{Activity, Guarded, TrackedIo};
use crate::config::model::Limits;
use crate::snapshot::Snapshot;
use conn::{Alpn, Http, Protocols};
pub use handshake::Handshakes;
use serve::{Drain, Member, Serve};

/// A running listener.
#[derive(Debug)]
pub struct Listener {
    pub name: Arc<str>,
    pub configured: SocketAddr,
    pub local: SocketAddr,
    pub tls: bool,
    stop: CancellationToken,
    task: JoinHandle<()>,
    drain: Arc<Drain>,
    /// TLS handshakes that failed here, by reason.
    pub handshakes: Arc<Handshakes>,
}

impl Listener {
    /// Sends HTTP/2 clients a GOAWAY (see `serve::Drain::goaway`).
    pub fn goaway(&self) {
        self.drain.goaway();
    }

    pub fn signal_stop(&self) {
        self.stop.cancel();
    }

    /// Stops accepting and waits (at most the shutdown timeout) for open connections.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

pub fn spawn(
    name: &str,
    configured: SocketAddr,
    socket: TcpListener,
    tls: bool,
    snapshots: Arc<ArcSwap<Snapshot>>,
) -> io::Result<Listener> {
    let local = socket.local_addr()?;
    let stop = CancellationToken::new();
    let name: Arc<str> = Arc::from(name);
    let drain = Arc::new(Drain::default());
    let handshakes = Arc::new(Handshakes::default());
    let task = tokio::spawn(accept_loop(
        socket,
        (name.clone(), tls),
        snapshots,
        stop.clone(),
        drain.clone(),
        handshakes.clone(),
    ));
    Ok(Listener {
        name,
        configured,
        local,
        tls,
        stop,
        task,
        drain,
        handshakes,
    })
}

async fn accept_loop(
    socket: TcpListener,
    (name, tls): (Arc<str>, bool),
    snapshots: Arc<ArcSwap<Snapshot>>,
    stop: CancellationToken,
    drain: Arc<Drain>,
    handshakes: Arc<Handshakes>,
) {
    let mut cached = None;
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = socket.accept() => a,
        };
        match accepted {
            Ok((stream, client)) => {
                let limits = snapshots.load().config.limits;
                let conn = Connection {
                    listener: name.clone(),
                    tls,
                    snapshots: snapshots.clone(),
                    handshakes: handshakes.clone(),
                    protocols: protocols(limits, &mut cached),
                };
                if tls {
                    tokio::spawn(conn.serve_tls(stream, client, drain.join()));
                } else {
                    tokio::spawn(conn.serve_plain(stream, client, drain.join()));
                }
            }
            Err(e) => {
                // Out of descriptors or similar: back off instead of spinning.
                tracing::warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(socket);
    let bound = snapshots.load().config.timeouts.shutdown;
    let open = drain.count();
    if tokio::time::timeout(bound, drain.drain()).await.is_err() {
        tracing::warn!(listener = %name, open, "connections still open after the shutdown bound; closing them");
    }
}

struct Connection {
    listener: Arc<str>,
    tls: bool,
    snapshots: Arc<ArcSwap<Snapshot>>,
    handshakes: Arc<Handshakes>,
    protocols: Arc<Protocols>,
}

impl Connection {
    /// What both kinds of connection start with; `None` when the socket is already gone.
    fn begin(&self, stream: TcpStream, client: SocketAddr) -> Option<Begun> {
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().ok()?;
        let snap = self.snapshots.load();
        let timeouts = snap.config.timeouts;
        let activity = Arc::new(Activity::default());
        let info = Arc::new(ConnInfo::new(
            self.listener.clone(),
            client,
            local,
            self.tls,
            timeouts.idle,
        ));
        let requests = Requests {
            info,
            snapshots: self.snapshots.clone(),
            activity: activity.clone(),
        };
        let limits = serve::Limits {
            idle: timeouts.idle,
            header_read: timeouts.header_read,
        };
        Some(Begun {
            io: TrackedIo::new(stream, activity.clone()),
            activity,
            requests,
            limits,
        })
    }

    /// A plain connection: HTTP/1.1, or h2c by its preface. A future of its own (not one
    /// with the TLS handshake's states), so that its task is no bigger than it needs.
    async fn serve_plain(self, stream: TcpStream, client: SocketAddr, member: Member) {
        let Some(b) = self.begin(stream, client) else {
            return;
        };
        let http = Http::new(
            b.io,
            b.requests,
            Alpn::Unknown,
            self.protocols,
            b.activity.clone(),
        );
        Serve::new(http, member, b.activity, b.limits).await;
    }

    async fn serve_tls(self, stream: TcpStream, client: SocketAddr, member: Member) {
        let Some(b) = self.begin(stream, client) else {
            return;
        };
        let snap = self.snapshots.load_full();
        let Some(config) = snap.tls.get(&*self.listener).cloned() else {
            return;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let handshake = tokio::time::timeout(b.limits.header_read, acceptor.accept(b.io));
        match handshake.await {
            Ok(Ok(tls)) => {
                let session = tls.get_ref().1;
                let alpn = match session.alpn_protocol() {
                    Some(b"h2") => Alpn::H2,
                    Some(_) => Alpn::H1,
                    None => Alpn::Unknown,
                };
                b.activity.handshake_done(alpn == Alpn::H2);
                let mut requests = b.requests;
                // What the client's certificate says, under the settings of the snapshot
                // whose server config verified it.
                let listener = snap
                    .config
                    .listeners
                    .iter()
                    .find(|l| *l.name == *self.listener);
                if let Some(auth) = listener.and_then(|l| l.client_auth.as_ref()) {
                    if let Some(info) = Arc::get_mut(&mut requests.info) {
                        info.client_cert = Some(auth.for_connection(session.peer_certificates()));
                    }
                }
                let http = Http::new(tls, requests, alpn, self.protocols, b.activity.clone());
                Serve::new(http, member, b.activity, b.limits).await;
            }
            // Counted, and logged at most once per 10 s per listener: any client can
            // make a handshake fail.
            Ok(Err(e)) => self.handshakes.failed_with(&self.listener, &e),
            Err(_) => self.handshakes.timed_out(&self.listener),
        }
    }
}

struct Begun {
    io: TrackedIo<TcpStream>,
    activity: Arc<Activity>,
    requests: Requests,
    limits: serve::Limits,
}

/// hyper's builders for the listener's current limits: made once and shared by its
/// connections (kept by each, they would cost it a few hundred bytes), again when a reload
/// changes the limits.
fn protocols(limits: Limits, cached: &mut Option<(Limits, Arc<Protocols>)>) -> Arc<Protocols> {
    if let Some((l, p)) = cached {
        if *l == limits {
            return p.clone();
        }
    }
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        .keep_alive(true)
        // Ours starts with a request's first byte (see `activity`); hyper's would also
        // time the gap between requests, which is the idle timeout's.
        .header_read_timeout(None)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_header_bytes);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32)
        .max_concurrent_streams(256);
    let p = Arc::new(Protocols { h1, h2 });
    *cached = Some((limits, p.clone()));
    p
}

/// The proxy as hyper's service on one connection.
pub(super) struct Requests {
    info: Arc<ConnInfo>,
    snapshots: Arc<ArcSwap<Snapshot>>,
    activity: Arc<Activity>,
}

type Answer = Response<Guarded<proxy::ResponseBody>>;

impl Service<Request<Incoming>> for Requests {
    type Response = Answer;
    type Error = Infallible;
    /// Boxed: hyper's HTTP/1 dispatcher keeps a slot the size of the service's future for
    /// as long as it lives; boxed, the slot is a pointer and the future exists only while
    /// its request does.
    type Future = Pin<Box<dyn Future<Output = Result<Answer, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let open = self.activity.request_begins(!req.body().is_end_stream());
        let (head, body) = req.into_parts();
        let head = Box::new(head);
        let fut = proxy::in_place(Box::new_uninit(), || {
            proxy::handle(
                (head, body),
                self.info.clone(),
                self.snapshots.clone(),
                open,
            )
        });
        Box::into_pin(fut)
    }
}
