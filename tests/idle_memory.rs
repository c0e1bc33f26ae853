//! What an idle keep-alive client connection costs the real binary in memory (issue 17
//! point 1, issue 19 point 3). hyper's HTTP/1 connection keeps an 8 KiB read and an 8 KiB
//! write buffer for its whole life; held per idle connection with the rest of its state,
//! that was ~40 KB (TLS ~46 KB) where nginx and HAProxy need 1–2 KB (15 KB with TLS). The
//! listener now drops hyper's connection while an HTTP/1.1 connection waits for its next
//! request (`listener::conn`). bench/idle.sh measures it against the peers; here the binary's
//! RSS (/proc/PID/status) must grow by less than a bound per connection that today's figure
//! (~2 KB plain, ~13 KB TLS, release build) passes with a wide margin and the old one fails.
//! Each connection is also used again after its idle time, so the parked state serves on.

mod common;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use common::bin::*;
use common::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connections held at once: enough that a per-connection cost dwarfs the noise of the
/// process's own allocations (a few hundred KB), few enough for a test's descriptors.
const CONNS: usize = 500;

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// One request on `s` and its whole answer, which must be a 200.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) {
    s.write_all(b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    // The backend answers with a content-length body: the head, then that many bytes.
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "closed before the answer ended");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(str::to_string)
            })
            .expect("a content-length")
            .trim()
            .parse()
            .unwrap();
        if body.len() >= len {
            return;
        }
    }
}

/// Reads from `s` until `n` whole answers (content-length bodies) have come; their heads.
async fn answers<S: AsyncRead + Unpin>(s: &mut S, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let mut heads = Vec::new();
        let mut rest = &got[..];
        while let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&rest[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_string)
                })
                .map_or(0, |v| v.trim().parse().unwrap());
            if rest.len() < end + 4 + len {
                break;
            }
            rest = &rest[end + 4 + len..];
            heads.push(head);
        }
        if heads.len() >= n {
            return heads;
        }
        let r = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
        let k = r.expect("the answers in time").unwrap();
        assert!(k > 0, "closed after {} of {n} answers", heads.len());
        got.extend_from_slice(&buf[..k]);
    }
}

/// Holds `CONNS` connections made by `open`, each after one exchange, and waits until the
/// binary's RSS has grown by less than `bound_kb` per connection over `before` (at most 35 s:
/// an idle connection is parked 0.1–0.2 s after its answer). Then every held connection must
/// serve a second request.
async fn hold<S, F, Fut>(pid: u32, bound_kb: u64, open: F) -> Vec<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = S>,
{
    // Warm up what the first requests set up once (the pool to the target, lazy state).
    for _ in 0..20 {
        let mut s = open().await;
        exchange(&mut s).await;
    }
    let before = rss_kb(pid);
    let mut held = Vec::with_capacity(CONNS);
    for _ in 0..CONNS {
        let mut s = open().await;
        exchange(&mut s).await;
        held.push(s);
    }
    settle_under(pid, before, bound_kb).await;
    for s in &mut held {
        exchange(s).await;
    }
    held
}

/// Waits until the binary's RSS is less than `bound_kb` per held connection over `before`,
/// and fails the test if it is not within 35 s.
async fn settle_under(pid: u32, before: u64, bound_kb: u64) {
    let per_conn = || rss_kb(pid).saturating_sub(before) as f64 / CONNS as f64;
    let mut seen = per_conn();
    // Long enough for a starved host (CI: 24.8 KB still held at 10 s once, the process's
    // workers busy or parked late); a passing run stops waiting as soon as it is under.
    let (first, start) = (seen, tokio::time::Instant::now());
    let deadline = start + Duration::from_secs(35);
    while seen >= bound_kb as f64 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        seen = per_conn();
    }
    println!(
        "idle connections: {seen:.1} KB each after {:?} ({first:.1} KB at first; bound {bound_kb} KB; RSS {before} KB before)",
        start.elapsed()
    );
    assert!(
        seen < bound_kb as f64,
        "{CONNS} idle keep-alive connections cost {seen:.1} KB each; under {bound_kb} KB expected"
    );
}

/// An HTTP/2 client connection (h2c, prior knowledge) and the task driving it.
struct H2 {
    send: hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    _conn: tokio::task::JoinHandle<()>,
}

impl H2 {
    async fn open(addr: std::net::SocketAddr) -> H2 {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .unwrap();
        let _conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        H2 { send, _conn }
    }

    /// One GET and its whole answer, which must be a 200.
    async fn exchange(&mut self) {
        use http_body_util::BodyExt;
        let req = http::Request::get("http://shop.test/")
            .body(http_body_util::Empty::new())
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(10), async {
            let r = self.send.send_request(req).await.unwrap();
            assert_eq!(r.status(), 200);
            r.into_body().collect().await.unwrap();
        });
        answer.await.expect("an answer in time");
    }
}

bounded_test! {
    /// Plain HTTP/1.1: 500 idle keep-alive connections must cost under 12 KB each (measured
    /// ~2 KB in the debug build the tests run, ~40 KB before the listener parked them).
    async fn idle_keep_alive_connections_cost_a_few_kilobytes_each() {
        let b = Binary::setup().await;
        let sy = run_binary(&b.path, b.admin).await;
        let web = b.web;
        hold(sy.child.id(), 12, || async move { TcpStream::connect(web).await.unwrap() }).await;
    }
}

bounded_test! {
    /// h2c: 500 idle HTTP/2 connections, each after one stream, must cost under 8 KB each
    /// (issue 17's target; ~1 KB in the debug build the tests run, 6 KB in bench/idle.sh's
    /// release run; 32 KB here while the `h2` crate held its 16 KiB write, 8 KiB read and
    /// 4 KiB HPACK buffers and its stream slots for a connection's whole life — see
    /// vendor/h2/SWITCHYARD.md). Each connection then serves a second stream.
    async fn idle_http2_connections_hold_no_frame_buffers() {
        let b = Binary::setup().await;
        let sy = run_binary(&b.path, b.admin).await;
        let pid = sy.child.id();
        for _ in 0..20 {
            H2::open(b.web).await.exchange().await;
        }
        let before = rss_kb(pid);
        let mut held = Vec::with_capacity(CONNS);
        for _ in 0..CONNS {
            let mut c = H2::open(b.web).await;
            c.exchange().await;
            held.push(c);
        }
        settle_under(pid, before, 8).await;
        for c in &mut held {
            c.exchange().await;
        }
    }
}

bounded_test! {
    /// HTTP/1.1 over TLS: under 24 KB each (the peers: ~15 KB; before: ~46 KB). What stays
    /// is the TLS session: keys, and rustls's 4 KiB read buffer.
    async fn idle_tls_connections_cost_less_than_before() {
        let b = Binary::setup().await;
        let c = rcgen::generate_simple_self_signed(vec!["shop.test".to_string()]).unwrap();
        std::fs::write(b.dir.path().join("shop.pem"), c.cert.pem()).unwrap();
        std::fs::write(b.dir.path().join("shop.key"), c.signing_key.serialize_pem()).unwrap();
        let cfg = blue_green(b.blue.addr, b.green.addr)
            .bound_to(b.web, b.admin)
            .listener("[[listener.certificate]]\ncert = \"shop.pem\"\nkey = \"shop.key\"")
            .build();
        std::fs::write(&b.path, cfg).unwrap();
        let sy = run_binary(&b.path, b.admin).await;
        let connector = tls_client(&c, b"http/1.1");
        let web = b.web;
        hold(sy.child.id(), 24, || {
            let connector = connector.clone();
            async move {
                let tcp = TcpStream::connect(web).await.unwrap();
                let name = rustls::pki_types::ServerName::try_from("shop.test").unwrap();
                connector.connect(name, tcp).await.unwrap()
            }
        })
        .await;
    }
}

bounded_test! {
    /// What a parked connection must still get right: two requests in one write, a request
    /// with a body and the next one after it, a head that comes in two parts around a pause
    /// — all answered, in order, on one connection with idle gaps between.
    async fn a_parked_connection_serves_pipelined_split_and_body_requests() {
        let b = Binary::setup().await;
        let _sy = run_binary(&b.path, b.admin).await;
        let mut s = TcpStream::connect(b.web).await.unwrap();
        let get = "GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n";
        s.write_all(format!("{get}{get}").as_bytes()).await.unwrap();
        let two = answers(&mut s, 2).await;
        assert!(two.iter().all(|h| h.starts_with("HTTP/1.1 200")), "{two:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.write_all(b"POST / HTTP/1.1\r\nHost: shop.test\r\ncontent-length: 5\r\n\r\nhello")
            .await
            .unwrap();
        assert!(answers(&mut s, 1).await[0].starts_with("HTTP/1.1 200"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.write_all(b"st: shop.test\r\n\r\n").await.unwrap();
        assert!(answers(&mut s, 1).await[0].starts_with("HTTP/1.1 200"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        exchange(&mut s).await;
    }
}

/// A client stream that sends its first write at once and keeps every later one until
/// `release`: the TLS client's last handshake flight and its first request then reach the
/// proxy in one segment, so the proxy's handshake ends with the request already decrypted.
struct Coalesce {
    tcp: TcpStream,
    first: bool,
    holding: bool,
    held: Vec<u8>,
}

impl AsyncRead for Coalesce {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Coalesce {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.first || !self.holding {
            self.first = false;
            return Pin::new(&mut self.tcp).poll_write(cx, buf);
        }
        self.held.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.holding {
            return Poll::Ready(Ok(()));
        }
        while !self.held.is_empty() {
            let this = &mut *self;
            let n = std::task::ready!(Pin::new(&mut this.tcp).poll_write(cx, &this.held))?;
            this.held.drain(..n);
        }
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

bounded_test! {
    /// A request that arrives with the TLS handshake's last flight is decrypted by the
    /// handshake itself: the connection must serve it rather than wait for the socket to be
    /// readable again (it would wait forever).
    async fn a_request_sent_with_the_tls_handshake_finish_is_answered() {
        let b = Binary::setup().await;
        let c = rcgen::generate_simple_self_signed(vec!["shop.test".to_string()]).unwrap();
        std::fs::write(b.dir.path().join("shop.pem"), c.cert.pem()).unwrap();
        std::fs::write(b.dir.path().join("shop.key"), c.signing_key.serialize_pem()).unwrap();
        let cfg = blue_green(b.blue.addr, b.green.addr)
            .bound_to(b.web, b.admin)
            .listener("[[listener.certificate]]\ncert = \"shop.pem\"\nkey = \"shop.key\"")
            .build();
        std::fs::write(&b.path, cfg).unwrap();
        let _sy = run_binary(&b.path, b.admin).await;
        let connector = tls_client(&c, b"http/1.1");
        let tcp = TcpStream::connect(b.web).await.unwrap();
        let held = Coalesce { tcp, first: true, holding: true, held: Vec::new() };
        let name = rustls::pki_types::ServerName::try_from("shop.test").unwrap();
        let mut tls = connector.connect(name, held).await.unwrap();
        tls.write_all(b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n").await.unwrap();
        tls.get_mut().0.holding = false;
        tls.flush().await.unwrap();
        assert!(answers(&mut tls, 1).await[0].starts_with("HTTP/1.1 200"));
    }
}

/// A TLS client trusting `c`, offering `alpn`.
fn tls_client(c: &rcgen::CertifiedKey<rcgen::KeyPair>, alpn: &[u8]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(c.cert.der().clone()).unwrap();
    let provider = Arc::new(switchyard::tls::provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}
