//! Driving one client connection: its HTTP (`conn::Http`), plus the idle and header-read
//! timeouts and the listener's drain on shutdown. All are checked without cost on the
//! request path: the idle timer is only looked at once it has fired (an atomic read of the
//! timer entry), the header-read timer is armed only for a head that does not arrive in one
//! read (see `activity`), and the drain is a flag — rather than a watch channel and a timer
//! polled on every wake-up, which cost about 3 % of the proxy's CPU.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio::time::Sleep;

use super::conn::{Http, Readable};
use crate::activity::{Activity, IdleWatch};

/// A listener's open connections, so that stopping it can tell each to finish its current
/// request and close, and wait for them.
#[derive(Debug, Default)]
pub(super) struct Drain {
    draining: AtomicBool,
    /// How many times a group lost all its traffic: HTTP/2 connections older than the
    /// latest get a GOAWAY (see [`Drain::goaway`]).
    goaways: AtomicU64,
    members: Mutex<Members>,
    empty: Notify,
}

#[derive(Debug, Default)]
struct Members {
    next: u64,
    wakers: HashMap<u64, Option<Waker>>,
}

impl Drain {
    /// A new connection's membership; it leaves when dropped.
    pub(super) fn join(self: &Arc<Self>) -> Member {
        let mut m = self.members.lock().expect("drain lock");
        let id = m.next;
        m.next += 1;
        m.wakers.insert(id, None);
        Member {
            drain: self.clone(),
            id,
            waker: None,
            goaways: self.goaways.load(Ordering::SeqCst),
        }
    }

    /// A switch or rollback took all traffic from a group: every HTTP/2 connection open now
    /// is told to take its next streams to a new connection (a graceful GOAWAY: streams in
    /// flight finish). Each stream is routed by the split in force anyway; the GOAWAY is for
    /// the clients — one that balances per connection (gRPC's) or holds one connection to
    /// one of several instances gets to choose again.
    pub(super) fn goaway(&self) {
        self.goaways.fetch_add(1, Ordering::SeqCst);
        let m = self.members.lock().expect("drain lock");
        for w in m.wakers.values().flatten() {
            w.wake_by_ref();
        }
    }

    pub(super) fn count(&self) -> usize {
        self.members.lock().expect("drain lock").wakers.len()
    }

    /// Tells every connection to finish and close, and resolves once all have.
    pub(super) async fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        loop {
            let empty = self.empty.notified();
            {
                let m = self.members.lock().expect("drain lock");
                if m.wakers.is_empty() {
                    return;
                }
                for w in m.wakers.values().flatten() {
                    w.wake_by_ref();
                }
            }
            empty.await;
        }
    }
}

/// One connection's place in its listener's [`Drain`].
#[derive(Debug)]
pub(super) struct Member {
    drain: Arc<Drain>,
    id: u64,
    /// The waker last registered, to register again only when the task's waker changes.
    waker: Option<Waker>,
    /// The drain's GOAWAY count this connection has seen.
    goaways: u64,
}

impl Member {
    /// Registers the task to be woken by a drain, then says whether one has begun. (In this
    /// order: a drain that starts after the check has seen the waker.)
    fn draining(&mut self, cx: &Context<'_>) -> bool {
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            let w = cx.waker().clone();
            let mut m = self.drain.members.lock().expect("drain lock");
            m.wakers.insert(self.id, Some(w.clone()));
            self.waker = Some(w);
        }
        self.drain.draining.load(Ordering::SeqCst)
    }

    /// Whether a GOAWAY was asked for since the last look (the waker is registered by
    /// [`Member::draining`], called first).
    fn goaway(&mut self) -> bool {
        let now = self.drain.goaways.load(Ordering::SeqCst);
        std::mem::replace(&mut self.goaways, now) != now
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let mut m = self.drain.members.lock().expect("drain lock");
        m.wakers.remove(&self.id);
        if m.wakers.is_empty() {
            self.drain.empty.notify_waiters();
        }
    }
}

/// A client connection's time limits.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// No byte moving either way (between requests, too).
    pub idle: Duration,
    /// From a request's first byte to the end of its head.
    pub header_read: Duration,
}

/// A client connection being served until it ends, idles out, is too slow to send a
/// request head, or is drained.
pub(super) struct Serve<I> {
    conn: Http<I>,
    member: Member,
    draining: bool,
    watch: IdleWatch,
    idle: Pin<Box<Sleep>>,
    armed: bool,
    activity: Arc<Activity>,
    header_read: Duration,
    /// The timer of the head being read, and which head it is for (heads read before it).
    head_timer: Option<(Pin<Box<Sleep>>, u64)>,
    /// While hyper's HTTP/1 connection is there: when to look whether it can be parked.
    park: Option<Pin<Box<Sleep>>>,
}

/// How often an HTTP/1.1 connection is looked at to be parked (`conn`): one found between
/// requests at a look is, so an idle one parks 0.1–0.2 s after its last answer. A busy one
/// costs ten timer wakes a second (with 64 busy connections, 640 against ~50,000 requests:
/// `bench/icount.sh` 1.00, `bench/ab.sh` CPU 1.01), where parking after each answer cost
/// ~5,000 instructions each. The longer the wait, the more clients that come back now and
/// then hold hyper's whole connection (~40 KB) meanwhile: 9,900 clients coming back every
/// 3.3 s (bench/clients.sh) peaked at 118 MB with 1 s, 81–114 MB with 0.5 s, 62 MB with 0.1 s
/// (steady 60 → 42 MB, a third of the page faults). A client coming back within 0.1 s never
/// finds its connection parked.
pub(super) const PARK_AFTER: Duration = Duration::from_millis(100);

impl<I> Serve<I>
where
    I: AsyncRead + AsyncWrite + Readable + Unpin + Send + 'static,
{
    pub(super) fn new(
        conn: Http<I>,
        member: Member,
        activity: Arc<Activity>,
        limits: Limits,
    ) -> Self {
        let watch = IdleWatch::new(activity.clone(), limits.idle);
        Serve {
            conn,
            member,
            draining: false,
            idle: Box::pin(tokio::time::sleep(watch.step())),
            watch,
            armed: false,
            activity,
            header_read: limits.header_read,
            head_timer: None,
            park: None,
        }
    }

    /// Parks the connection if its park timer is due and it is idle; else keeps looking.
    fn park_due(&mut self, cx: &mut Context<'_>) {
        let Some(timer) = &mut self.park else {
            return;
        };
        // Registered when armed (the task's waker does not change), so an atomic read tells
        // whether it fired; polling it on every wake of the connection cost ~120
        // instructions each, twice a request (bench/icount.sh).
        if !timer.is_elapsed() {
            return;
        }
        if self.conn.park_if_idle() {
            self.park = None;
        } else {
            timer
                .as_mut()
                .reset(tokio::time::Instant::now() + PARK_AFTER);
            let _ = timer.as_mut().poll(cx);
        }
    }

    /// Whether the request head being read has taken longer than `header_read` since its
    /// first byte. A head read in one go never gets here with a head pending: the service
    /// has marked it complete within the same poll.
    fn head_too_slow(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(head) = self.activity.head_pending() else {
            return false;
        };
        let limit = self.header_read;
        match &mut self.head_timer {
            Some((_, h)) if *h == head => {}
            Some((timer, h)) => {
                timer.as_mut().reset(tokio::time::Instant::now() + limit);
                *h = head;
            }
            None => self.head_timer = Some((Box::pin(tokio::time::sleep(limit)), head)),
        }
        let (timer, _) = self.head_timer.as_mut().expect("armed above");
        timer.as_mut().poll(cx).is_ready()
    }

    /// Whether the connection has been idle for its limit (looked at when the timer fires).
    fn idled_out(&mut self, cx: &mut Context<'_>) -> bool {
        if self.armed && !self.idle.is_elapsed() {
            return false;
        }
        if self.armed {
            if self.watch.look() {
                return true;
            }
            let next = tokio::time::Instant::now() + self.watch.step();
            self.idle.as_mut().reset(next);
        }
        self.armed = true;
        // Registers the timer (it cannot have fired yet).
        let _ = self.idle.as_mut().poll(cx);
        false
    }
}

impl<I> Future for Serve<I>
where
    I: AsyncRead + AsyncWrite + Readable + Unpin + Send + 'static,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if !this.draining && this.member.draining(cx) {
            this.draining = true;
            this.conn.graceful_shutdown();
        }
        if !this.draining && this.member.goaway() && this.activity.is_h2() {
            this.draining = true;
            this.conn.graceful_shutdown();
        }
        if !this.draining {
            this.park_due(cx);
        }
        if let Poll::Ready(res) = this.conn.poll(cx) {
            if let Err(e) = res {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            return Poll::Ready(());
        }
        if this.park.is_none() && this.conn.is_h1() {
            let mut timer = Box::pin(tokio::time::sleep(PARK_AFTER));
            let _ = timer.as_mut().poll(cx);
            this.park = Some(timer);
        }
        if this.idled_out(cx) {
            tracing::debug!("closing idle connection");
            return Poll::Ready(());
        }
        if this.head_too_slow(cx) {
            tracing::debug!("closing connection: request head not read within header_read");
            return Poll::Ready(());
        }
        Poll::Pending
    }
}
