//! A TCP proxy that can freeze the connections it carries: after `freeze`, bytes stop moving
//! both ways on every connection open at that moment, which stays open — as a half-open
//! connection or a middlebox that stopped forwarding would — while new connections work;
//! after `cut`, new ones freeze too until `heal` (a partition).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub(crate) struct FreezingProxy {
    pub(crate) addr: SocketAddr,
    open: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
    /// While set, new connections are frozen from the start too: a partition.
    cut: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl FreezingProxy {
    /// A proxy on an ephemeral loopback port to `upstream`.
    pub(crate) async fn start(upstream: SocketAddr) -> FreezingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let cut = Arc::new(AtomicBool::new(false));
        let (conns, cutting) = (open.clone(), cut.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let frozen = Arc::new(AtomicBool::new(cutting.load(Ordering::SeqCst)));
                conns.lock().unwrap().push(frozen.clone());
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pipe(cr, sw, frozen.clone()));
                tokio::spawn(pipe(sr, cw, frozen));
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
        for f in self.open.lock().unwrap().drain(..) {
            f.store(true, Ordering::SeqCst);
        }
    }
}

impl Drop for FreezingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to` until either ends; once `frozen`, holds both open and moves nothing.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
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
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
}
