//! A target's HTTP/1 answer, as bytes off the wire, read by the proxy's own client
//! (`upstream::h1::Conn::send` and its `ResponseBody`) over an in-memory stream: no panic,
//! no hang, and the same meaning whole or cut into reads with the reader made to wait
//! between them.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use http::header::HeaderMap;
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::upstream::h1::{Conn, Limits};
use crate::upstream::SetFields;

/// What reading an answer came to; errors compare equal whatever their message.
#[derive(Debug, PartialEq)]
pub enum Answer {
    Complete {
        status: u16,
        body: Vec<u8>,
        trailers: Option<HeaderMap>,
    },
    Failed,
}

/// How the answer reaches the reader.
#[derive(Debug, Clone, Copy)]
pub struct Pieces {
    /// Bytes per read at most.
    pub step: usize,
    /// Whether each read first finds nothing (`Pending`, woken at once), as on a socket
    /// whose next segment is still on its way: the read loop must keep its place.
    pub stall: bool,
}

impl Pieces {
    pub const WHOLE: Pieces = Pieces {
        step: usize::MAX,
        stall: false,
    };
}

/// Reads `data` as a target's answer, first in one piece and then in pieces whose size and
/// stalls the first byte chooses (its top bit makes the request a HEAD), and checks that
/// both readings agree.
pub fn h1_answer(data: &[u8]) {
    let Some((first, data)) = data.split_first() else {
        return;
    };
    let head_request = first & 0x80 != 0;
    let pieces = Pieces {
        step: (*first as usize & 0x0f) + 1,
        stall: first & 0x40 != 0,
    };
    let whole = read_answer(data, Pieces::WHOLE, head_request);
    let cut = read_answer(data, pieces, head_request);
    assert_eq!(whole, cut, "read whole vs in {pieces:?}");
}

/// Sends a GET (or HEAD) for `/` over a connection whose target answers `data`, then
/// closes, and reads the answer to its end as the proxy would.
pub fn read_answer(data: &[u8], pieces: Pieces, head_request: bool) -> Answer {
    let method = if head_request {
        http::Method::HEAD
    } else {
        http::Method::GET
    };
    let req = http::Request::builder()
        .method(method)
        .uri("/")
        .body(())
        .expect("a plain request")
        .into_parts()
        .0;
    let limits = Limits {
        request: Duration::from_secs(1),
        client_body: Duration::from_secs(1),
        max_body: None,
    };
    let wire = Wire {
        answer: data,
        pieces,
        stalled: false,
    };
    run(async move {
        let sent = Conn::new(wire)
            .send(
                &req,
                &SetFields::default(),
                None,
                Default::default(),
                &limits,
            )
            .await;
        let Ok((parts, mut body)) = sent else {
            return Answer::Failed;
        };
        let (mut bytes, mut trailers) = (Vec::new(), None);
        while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            let Ok(frame) = frame else {
                return Answer::Failed;
            };
            match frame.into_data() {
                Ok(d) => bytes.extend_from_slice(&d),
                Err(f) => trailers = f.into_trailers().ok(),
            }
        }
        Answer::Complete {
            status: parts.status.as_u16(),
            body: bytes,
            trailers,
        }
    })
}

/// The target's end of the connection: takes the request, gives the answer as `pieces`
/// says, then end of file.
#[derive(Debug)]
struct Wire<'a> {
    answer: &'a [u8],
    pieces: Pieces,
    stalled: bool,
}

impl AsyncRead for Wire<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pieces.stall && !this.stalled && !this.answer.is_empty() {
            this.stalled = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.stalled = false;
        let n = this.pieces.step.min(this.answer.len()).min(buf.remaining());
        buf.put_slice(&this.answer[..n]);
        this.answer = &this.answer[n..];
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Wire<'_> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Notes a wake-up.
struct Woken(AtomicBool);

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Polls `f` to its end on this thread. Everything it waits on is the in-memory [`Wire`],
/// which wakes it at once, so a `Pending` that nothing woke is a hang — with a socket the
/// proxy would wait for the request timeout on a target that has said all it will.
fn run<F: Future>(f: F) -> F::Output {
    let woken = Arc::new(Woken(AtomicBool::new(false)));
    let waker = Waker::from(woken.clone());
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    loop {
        if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
        assert!(
            woken.0.swap(false, Ordering::SeqCst),
            "the read loop waits for more after the target closed: a hang"
        );
    }
}
