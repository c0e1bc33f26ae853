//! A TCP proxy that can freeze the connections it carries: after `freeze`, bytes stop moving
//! both ways on every connection open at that moment, which stays open — as a half-open
//! connection or a middlebox that stopped forwarding would — while new connections work;
//! after `cut`, new ones freeze too until `heal` (a partition). `freeze_streams` freezes only
//! the connections whose last request matches: one long-lived stream (an etcd watch) stops
//! while everything else goes on. `hold_answers` delays instead of stopping: the answer to a
//! matching request (an etcd write) waits until `release`, its request having reached the
//! server — a write that landed while its answer is late.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

/// The last bytes a client sent on a connection (its last request, for `freeze_streams`).
type Sent = Arc<Mutex<Vec<u8>>>;
/// What a request must match for its answer to be held back (`hold_answers`).
type Matches = Arc<dyn Fn(&str) -> bool + Send + Sync>;
/// While set, the requests that match it have their answers held until `release`.
type Holding = Arc<Mutex<Option<Matches>>>;
/// Each connection open: whether it is frozen, what its client sent last, and whether its
/// answers are held (true) until `release`.
type Open = Arc<Mutex<Vec<(Arc<AtomicBool>, Sent, Held)>>>;
type Held = Arc<tokio::sync::watch::Sender<bool>>;
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
    holding: Holding,
    task: tokio::task::JoinHandle<()>,
}

impl FreezingProxy {
    /// A proxy on an ephemeral loopback port to `upstream`.
    pub(crate) async fn start(upstream: SocketAddr) -> FreezingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Open::default();
        let cut = Arc::new(AtomicBool::new(false));
        let holding = Holding::default();
        let (conns, cutting, hold) = (open.clone(), cut.clone(), holding.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let frozen = Arc::new(AtomicBool::new(cutting.load(Ordering::SeqCst)));
                let sent = Sent::default();
                let held = Held::new(tokio::sync::watch::channel(false).0);
                conns
                    .lock()
                    .unwrap()
                    .push((frozen.clone(), sent.clone(), held.clone()));
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let asks = Asks {
                    sent,
                    holding: hold.clone(),
                    held: held.clone(),
                };
                tokio::spawn(pipe(cr, sw, frozen.clone(), Side::Asks(asks)));
                tokio::spawn(pipe(sr, cw, frozen, Side::Answers(held)));
            }
        });
        FreezingProxy {
            addr,
            open,
            cut,
            holding,
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
        for (f, _, _) in self.open.lock().unwrap().drain(..) {
            f.store(true, Ordering::SeqCst);
        }
    }

    /// Stops the connections open now whose last request (from its `POST`) `matches`: a
    /// stream such a request opened stops moving, as one a middlebox stopped forwarding
    /// would; the others, and later ones, are carried as usual. How many it froze.
    pub(crate) fn freeze_streams(&self, matches: impl Fn(&str) -> bool) -> usize {
        let mut open = self.open.lock().unwrap();
        let mut n = 0;
        open.retain(|(f, sent, _)| {
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

impl FreezingProxy {
    /// From now until `release`, a connection whose last request (from its `POST`) `matches`
    /// carries that request on to the server but holds back every answer: the server acts
    /// on it (an etcd write lands, the others' watches bring it) while its client still
    /// waits. Checked before each piece of the request is passed on, so that the server
    /// cannot answer before the hold is set.
    pub(crate) fn hold_answers(&self, matches: impl Fn(&str) -> bool + Send + Sync + 'static) {
        *self.holding.lock().unwrap() = Some(Arc::new(matches));
    }

    /// The answers held since `hold_answers` go on, and no more are held.
    pub(crate) fn release(&self) {
        *self.holding.lock().unwrap() = None;
        for (_, _, held) in self.open.lock().unwrap().iter() {
            held.send_replace(false);
        }
    }
}

/// What a client sends on one connection: kept (`sent`), and whether its answers are to be
/// held (`holding` matched: `held` set).
struct Asks {
    sent: Sent,
    holding: Holding,
    held: Held,
}

/// The direction a `pipe` copies.
enum Side {
    Asks(Asks),
    /// Waits while its connection's answers are held.
    Answers(Held),
}

impl Drop for FreezingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to` until either ends; once `frozen`, holds both open and moves nothing.
/// A client's side keeps the last bytes copied and holds its connection's answers when they
/// match what `hold_answers` set; the answers' side waits while they are held.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
    side: Side,
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
        match &side {
            Side::Asks(asks) => {
                let mut kept = asks.sent.lock().unwrap();
                kept.extend_from_slice(&buf[..n]);
                let extra = kept.len().saturating_sub(SENT_KEPT);
                kept.drain(..extra);
                let text = String::from_utf8_lossy(&kept);
                let last = text.rsplit("POST ").next().unwrap_or_default();
                let holding = asks.holding.lock().unwrap().clone();
                if holding.is_some_and(|matches| text.contains("POST ") && matches(last)) {
                    asks.held.send_replace(true);
                }
            }
            Side::Answers(held) => {
                let mut released = held.subscribe();
                let wait = released.wait_for(|held| !held);
                // Bounded like every test peer: the test ends well before.
                let _ = tokio::time::timeout(std::time::Duration::from_secs(120), wait).await;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
}
