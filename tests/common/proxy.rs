//! A TCP proxy that can freeze the connections it carries: after `freeze`, bytes stop moving
//! both ways on every connection open at that moment, which stays open — as a half-open
//! connection or a middlebox that stopped forwarding would — while new connections work;
//! after `cut`, new ones freeze too until `heal` (a partition). `freeze_streams` freezes only
//! the connections whose last request matches: one long-lived stream (an etcd watch) stops
//! while everything else goes on.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

/// The last bytes a client sent on a connection (its last request, for `freeze_streams`).
type Sent = Arc<Mutex<Vec<u8>>>;
/// Each connection open: whether it is frozen, and what its client sent last.
type Open = Arc<Mutex<Vec<(Arc<AtomicBool>, Sent)>>>;
/// How much of what a client sent is kept.
const SENT_KEPT: usize = 8 * 1024;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub(crate) struct FreezingProxy {
    pub(crate) addr: SocketAddr,
    open: Open,
    /// While set, new connections are frozen from the start too: a partition.
    cut: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl FreezingProxy {
    /// A proxy on an ephemeral loopback port to `upstream`.
    pub(crate) async fn start(upstream: SocketAddr) -> FreezingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Open::default();
        let cut = Arc::new(AtomicBool::new(false));
        let (conns, cutting) = (open.clone(), cut.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let frozen = Arc::new(AtomicBool::new(cutting.load(Ordering::SeqCst)));
                let sent = Sent::default();
                conns.lock().unwrap().push((frozen.clone(), sent.clone()));
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pipe(cr, sw, frozen.clone(), Some(sent)));
                tokio::spawn(pipe(sr, cw, frozen, None));
            }
        });
        FreezingProxy {
            addr,
            open,
            cut,
            task,
        }
    }

    /// Freezes every connection, open now or made until `heal`.
    pub(crate) fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.freeze();
    }

    /// New connections are carried again (those frozen stay frozen).
    pub(crate) fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    /// Stops every connection open now; later ones are carried as usual.
    pub(crate) fn freeze(&self) {
        for (f, _) in self.open.lock().unwrap().drain(..) {
            f.store(true, Ordering::SeqCst);
        }
    }

    /// Stops the connections open now whose last request (from its `POST`) `matches`: a
    /// stream such a request opened stops moving, as one a middlebox stopped forwarding
    /// would; the others, and later ones, are carried as usual. How many it froze.
    pub(crate) fn freeze_streams(&self, matches: impl Fn(&str) -> bool) -> usize {
        let mut open = self.open.lock().unwrap();
        let mut n = 0;
        open.retain(|(f, sent)| {
            let sent = String::from_utf8_lossy(&sent.lock().unwrap()).into_owned();
            let last = sent.rsplit("POST ").next().unwrap_or_default();
            if sent.contains("POST ") && matches(last) {
                f.store(true, Ordering::SeqCst);
                n += 1;
                return false;
            }
            true
        });
        n
    }
}

impl Drop for FreezingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to` until either ends; once `frozen`, holds both open and moves nothing.
/// Keeps the last bytes copied in `sent`, when given.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
    sent: Option<Sent>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if frozen.load(Ordering::SeqCst) {
            // Bounded like every test peer: the test ends well before.
            tokio::time::sleep(std::time::Duration::from_secs(120)).await;
            return;
        }
        if let Some(sent) = &sent {
            let mut kept = sent.lock().unwrap();
            kept.extend_from_slice(&buf[..n]);
            let extra = kept.len().saturating_sub(SENT_KEPT);
            kept.drain(..extra);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
}
