//! Connections to targets, pooled per target and kept alive. We open connections ourselves
//! (rather than through a generic client) so that the proxy knows exactly what happened: a
//! connect failure leaves the request untouched for another target, and a pooled connection
//! that turns out dead lets a request without a body go again on a fresh one. HTTP/1 is our
//! own client (`h1`); HTTP/2 (gRPC) targets use hyper's. Either runs over plain TCP or TLS
//! (`stream::Stream`, `tls::client`).

mod body;
mod clock;
pub mod error;
mod fields;
pub mod h1;
pub mod h2;
mod head;
pub mod once;
pub mod stream;

pub use body::{BodySide, Tee};
pub use fields::SetFields;
pub use stream::Stream;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::tls::client::ClientTls;

/// Idle HTTP/1 connections kept per target; more are closed when returned.
const MAX_IDLE: usize = 512;
/// An idle connection older than this is closed rather than reused: servers commonly drop
/// idle keep-alive connections after 60–75 s, and reusing one just as it closes fails.
const IDLE_TIMEOUT_MS: u64 = 55_000;

/// The protocol a group's targets speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum UpstreamProtocol {
    Http1,
    /// Prior-knowledge HTTP/2 (h2c), as gRPC backends speak it.
    Http2,
}

/// How a group talks to its targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub protocol: UpstreamProtocol,
    /// For the TCP connect and the TLS handshake together.
    pub connect_timeout: Duration,
    /// TLS to the targets (`tls` on the group); plain TCP without.
    pub tls: Option<ClientTls>,
}

/// A target's connections: where to open them, a LIFO stack of idle HTTP/1 ones (the most
/// recently used is the least likely to have been closed by the server), and one shared
/// HTTP/2 connection. It holds the address itself so that this module needs nothing of the
/// target it belongs to (`group::Target` holds a pool).
#[derive(Debug)]
pub struct Pool {
    /// `host:port` as written, resolved per connection when it is not an IP literal.
    addr: Box<str>,
    /// The address when it is an IP literal: no resolver call per connection.
    socket_addr: Option<SocketAddr>,
    idle: Mutex<Vec<(h1::Conn, u64)>>,
    h2: Mutex<Option<http2::SendRequest<h2::RequestBody>>>,
}

impl Pool {
    /// An empty pool for the target at `addr` (`host:port`).
    pub fn new(addr: &str) -> Pool {
        Pool {
            addr: addr.into(),
            socket_addr: addr.parse().ok(),
            idle: Mutex::default(),
            h2: Mutex::default(),
        }
    }

    /// Returns an HTTP/1 connection whose last response is complete; `used_ms` is when it
    /// was taken (a little early is safe: it only makes the connection expire sooner).
    pub fn put(&self, conn: h1::Conn, used_ms: u64) {
        let now = used_ms;
        let mut idle = self.idle.lock().expect("pool lock");
        // The oldest are at the bottom of the stack.
        let stale = idle
            .iter()
            .take_while(|(_, t)| now.saturating_sub(*t) > IDLE_TIMEOUT_MS)
            .count();
        idle.drain(..stale);
        // The oldest idle connection is the likeliest to have been closed by the target:
        // one look per return (no syscall unless its socket turned readable) keeps closed
        // ones from piling up in CLOSE_WAIT under traffic.
        if idle.first_mut().is_some_and(|(c, _)| !c.is_alive()) {
            idle.remove(0);
        }
        if idle.len() < MAX_IDLE {
            idle.push((conn, now));
        }
    }

    /// Closes the idle connections the target has closed or that aged out (the health
    /// checker calls this on its ticks, for targets without traffic).
    pub fn sweep(&self, now: u64) {
        let mut idle = self.idle.lock().expect("pool lock");
        idle.retain_mut(|(c, t)| now.saturating_sub(*t) <= IDLE_TIMEOUT_MS && c.is_alive());
    }

    fn take_idle(&self, now: u64) -> Option<h1::Conn> {
        let mut idle = self.idle.lock().expect("pool lock");
        while let Some((conn, t)) = idle.pop() {
            if now.saturating_sub(t) <= IDLE_TIMEOUT_MS {
                return Some(conn);
            }
        }
        None
    }

    pub fn idle_count(&self) -> usize {
        self.idle.lock().expect("pool lock").len()
    }

    async fn connect_tcp(&self) -> io::Result<TcpStream> {
        match self.socket_addr {
            Some(addr) => TcpStream::connect(addr).await,
            None => TcpStream::connect(&*self.addr).await,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect timed out after {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("handshake failed: {0}")]
    Handshake(#[from] hyper::Error),
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
    #[error("the target did not agree to HTTP/2 by ALPN")]
    NoH2,
}

/// A connection ready to carry one request.
pub enum Sender {
    Http1(h1::Conn),
    Http2(http2::SendRequest<h2::RequestBody>),
}

impl Upstream {
    /// A new connection to the target, TLS handshake done: within `connect_timeout` in all.
    /// An HTTP/2 group's TLS target must choose `h2` by ALPN.
    pub async fn stream(&self, pool: &Pool) -> Result<Stream, ConnectError> {
        let open = async {
            let tcp = pool.connect_tcp().await?;
            let _ = tcp.set_nodelay(true);
            match &self.tls {
                None => Ok(Stream::Plain(tcp)),
                Some(tls) => {
                    let s = tls
                        .connect(&pool.addr, tcp)
                        .await
                        .map_err(ConnectError::Tls)?;
                    let s = Stream::Tls(Box::new(s));
                    if self.protocol == UpstreamProtocol::Http2 && s.alpn() != Some(b"h2") {
                        return Err(ConnectError::NoH2);
                    }
                    Ok(s)
                }
            }
        };
        tokio::time::timeout(self.connect_timeout, open)
            .await
            .map_err(|_| ConnectError::Timeout(self.connect_timeout))?
    }

    /// A pooled connection if one is alive and ready (`true`), else a new one (`false`).
    pub async fn checkout(&self, pool: &Pool, now_ms: u64) -> Result<(Sender, bool), ConnectError> {
        match self.protocol {
            UpstreamProtocol::Http1 => {
                while let Some(mut conn) = pool.take_idle(now_ms) {
                    if conn.is_alive() {
                        return Ok((Sender::Http1(conn), true));
                    }
                }
                Ok((self.connect(pool).await?, false))
            }
            UpstreamProtocol::Http2 => {
                let shared = pool.h2.lock().expect("pool lock").clone();
                if let Some(s) = shared.filter(|s| !s.is_closed()) {
                    return Ok((Sender::Http2(s), true));
                }
                Ok((self.connect(pool).await?, false))
            }
        }
    }

    /// A new connection to the target (an HTTP/2 one becomes the target's shared one).
    ///
    /// Boxed: connecting is rare next to reusing a pooled connection, and its state (TCP
    /// connect, HTTP/2 handshake) would otherwise sit inline in every request's future,
    /// which hyper moves as a whole when a request arrives.
    pub fn connect<'a>(
        &'a self,
        pool: &'a Pool,
    ) -> Pin<Box<dyn Future<Output = Result<Sender, ConnectError>> + Send + 'a>> {
        Box::pin(self.open(pool))
    }

    async fn open(&self, pool: &Pool) -> Result<Sender, ConnectError> {
        let stream = self.stream(pool).await?;
        match self.protocol {
            UpstreamProtocol::Http1 => Ok(Sender::Http1(h1::Conn::new(stream))),
            UpstreamProtocol::Http2 => {
                let io = TokioIo::new(stream);
                let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .keep_alive_interval(Duration::from_secs(30))
                    .handshake(io)
                    .await?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "upstream h2 connection ended with an error");
                    }
                });
                *pool.h2.lock().expect("pool lock") = Some(sender.clone());
                Ok(Sender::Http2(sender))
            }
        }
    }
}
