//! Listeners: accept loops that hand each connection (after TLS, when the listener has
//! certificates) to hyper with HTTP/1.1 and HTTP/2 (h2c by preface, or h2 by ALPN). Each
//! connection enforces header-read and idle timeouts; stopping a listener stops accepting and
//! lets open connections finish within the shutdown bound.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::proxy::{self, ConnInfo};

mod handshake;
mod serve;
use crate::activity::{Activity, TrackedIo};
use crate::snapshot::Snapshot;
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
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = socket.accept() => a,
        };
        match accepted {
            Ok((stream, client)) => {
                let conn = Connection {
                    listener: name.clone(),
                    tls,
                    snapshots: snapshots.clone(),
                    handshakes: handshakes.clone(),
                };
                tokio::spawn(conn.serve(stream, client, drain.join()));
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
}

impl Connection {
    async fn serve(self, stream: TcpStream, client: SocketAddr, member: Member) {
        let _ = stream.set_nodelay(true);
        let Ok(local) = stream.local_addr() else {
            return;
        };
        let snap = self.snapshots.load_full();
        let activity = Arc::new(Activity::default());
        let io = TrackedIo::new(stream, activity.clone());
        let mut info = ConnInfo::new(
            self.listener.clone(),
            client,
            local,
            self.tls,
            snap.config.timeouts.idle,
        );
        if self.tls {
            let Some(config) = snap.tls.get(&*self.listener).cloned() else {
                return;
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let handshake =
                tokio::time::timeout(snap.config.timeouts.header_read, acceptor.accept(io));
            match handshake.await {
                Ok(Ok(tls)) => {
                    let session = tls.get_ref().1;
                    activity.handshake_done(session.alpn_protocol() == Some(b"h2"));
                    let listener = snap
                        .config
                        .listeners
                        .iter()
                        .find(|l| *l.name == *self.listener);
                    if let Some(auth) = listener.and_then(|l| l.client_auth.as_ref()) {
                        info.client_cert = Some(auth.for_connection(session.peer_certificates()));
                    }
                    self.http(tls, Arc::new(info), &snap, activity, member)
                        .await;
                }
                // Counted, and logged at most once per 10 s per listener: any client can
                // make a handshake fail.
                Ok(Err(e)) => self.handshakes.failed_with(&self.listener, &e),
                Err(_) => self.handshakes.timed_out(&self.listener),
            }
        } else {
            self.http(io, Arc::new(info), &snap, activity, member).await;
        }
    }

    async fn http<I>(
        &self,
        io: I,
        info: Arc<ConnInfo>,
        snap: &Snapshot,
        activity: Arc<Activity>,
        member: Member,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let timeouts = snap.config.timeouts;
        let limits = snap.config.limits;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .keep_alive(true)
            // Ours starts with a request's first byte (see `activity`); hyper's would also
            // time the gap between requests, which is the idle timeout's.
            .header_read_timeout(None)
            .max_headers(limits.max_headers)
            .max_buf_size(limits.max_header_bytes);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(limits.max_header_bytes as u32)
            .max_concurrent_streams(256);
        let snapshots = self.snapshots.clone();
        let requests = activity.clone();
        let service = service_fn(move |req| {
            let open = requests.request_begins();
            proxy::handle(req, info.clone(), snapshots.clone(), open)
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        let limits = serve::Limits {
            idle: timeouts.idle,
            header_read: timeouts.header_read,
        };
        Serve::new(conn.into_owned(), member, activity, limits).await;
    }
}
