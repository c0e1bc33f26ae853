//! Switchyard's own HTTP/1 client against targets that do the less common things HTTP/1
//! allows: bodies both ways (streamed at once), chunked answers with trailers, answers
//! delimited by the close, HEAD/204/304, 100 Continue, keep-alive connections the target
//! closes, and broken answers. Scripted targets speak raw HTTP over real loopback sockets;
//! the echo target is a real hyper server.
//!
//! Over 600 lines: one scripted target per framing case, each short; they share the raw
//! target helpers and one binary (another would link the crate once more).

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{bounded, config, get, start, Server, TEST_LIMIT};
use http::{Request, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a scripted target does with the n-th request (from 0) on its c-th connection.
enum Act {
    Send(Vec<u8>),
    SendThenClose(Vec<u8>),
    /// Answers, then closes the connection after a pause (an idle keep-alive timeout).
    SendThenCloseAfter(Vec<u8>, Duration),
    Close,
}

struct Scripted {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

/// A target that reads each request (head and any Content-Length body) and acts as `script`
/// says, given (connection number, request number on it, request head).
async fn scripted<F>(script: F) -> Scripted
where
    F: Fn(usize, usize, &str) -> Act + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let (count, script) = (connections.clone(), Arc::new(script));
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let c = count.fetch_add(1, SeqCst);
            let script = script.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for n in 0.. {
                    let Some(head) = read_request(&mut s, &mut buf).await else {
                        return;
                    };
                    match script(c, n, &head) {
                        Act::Send(b) => {
                            if s.write_all(&b).await.is_err() {
                                return;
                            }
                        }
                        Act::SendThenClose(b) => {
                            let _ = s.write_all(&b).await;
                            return;
                        }
                        Act::SendThenCloseAfter(b, pause) => {
                            let _ = s.write_all(&b).await;
                            tokio::time::sleep(pause).await;
                            return;
                        }
                        Act::Close => return,
                    }
                }
            });
        }
    });
    Scripted { addr, connections }
}

/// Reads one request head and its Content-Length body; `None` at the close.
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + length {
                let mut chunk = [0u8; 4096];
                let n = s.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.drain(..end + 4 + length);
            return Some(head);
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn proxy_to(target: SocketAddr) -> (Server, String) {
    let server = start(&config(&[("blue", &[target])], "")).await;
    let url = format!("http://{}", server.listener_addr("web").await);
    (server, url)
}

fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

type Body = BoxBody<Bytes, Infallible>;

fn body_client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A real hyper server that streams every request body straight back as it reads it.
async fn echo_target() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let framing = if req.headers().contains_key("content-length") {
                        "length"
                    } else {
                        "chunked"
                    };
                    let resp = hyper::Response::builder()
                        .header("x-request-framing", framing)
                        .body(req.into_body())
                        .unwrap();
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

#[tokio::test]
async fn request_bodies_stream_to_the_target_while_its_answer_streams_back() {
    bounded(TEST_LIMIT, async {
        let (_server, url) = proxy_to(echo_target().await).await;
        let client = body_client();

        // A known length goes as is.
        let data = pattern(1 << 20);
        let req = Request::post(format!("{url}/up"))
            .body(Full::new(Bytes::from(data.clone())).boxed())
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.headers()["x-request-framing"], "length");
        let got = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(got == data, "1 MiB body came back changed");

        // A body of unknown length, bigger than the socket buffers, that the target echoes as
        // it reads: sending all of it before reading the answer would deadlock.
        let chunks = 128;
        let piece = Bytes::from(pattern(64 * 1024));
        let stream = futures_util::stream::iter(
            (0..chunks).map(move |_| Ok::<_, Infallible>(Frame::data(piece.clone()))),
        );
        let req = Request::post(format!("{url}/stream"))
            .body(StreamBody::new(stream).boxed())
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(20), async {
            let resp = client.request(req).await.unwrap();
            let framing = resp.headers()["x-request-framing"].clone();
            (
                framing,
                resp.into_body().collect().await.unwrap().to_bytes(),
            )
        })
        .await
        .expect("an 8 MiB full-duplex exchange finishes");
        assert_eq!(resp.0, "chunked");
        assert_eq!(resp.1.len(), chunks * 64 * 1024);
        assert!(resp
            .1
            .chunks(64 * 1024)
            .all(|c| c == &pattern(64 * 1024)[..]));
    })
    .await;
}

#[tokio::test]
async fn a_client_expecting_100_continue_gets_it_and_its_answer() {
    bounded(TEST_LIMIT, async {
        let (_server, url) = proxy_to(echo_target().await).await;
        let addr = url.trim_start_matches("http://");
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            b"POST /x HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n",
        )
        .await
        .unwrap();
        let mut buf = vec![0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        assert!(
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100 Continue"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
        s.write_all(b"hello").await.unwrap();
        let mut answer = Vec::new();
        while !String::from_utf8_lossy(&answer).ends_with("hello") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&buf[..n]);
        }
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(
            !answer.contains("100 Continue"),
            "the target's own 100 is not passed on: {answer}"
        );
    })
    .await;
}

#[tokio::test]
async fn chunked_answers_keep_their_trailers_and_the_connection() {
    bounded(TEST_LIMIT, async {
        let target = scripted(|_, _, _| {
            Act::Send(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n\
              5\r\nhello\r\n7;note=x\r\n, world\r\n0\r\nx-checksum: 42\r\n\r\n"
                    .to_vec(),
            )
        })
        .await;
        let (_server, url) = proxy_to(target.addr).await;
        let client = common::client();
        for _ in 0..3 {
            let req = Request::get(format!("{url}/t"))
                .header("te", "trailers")
                .body(Empty::new())
                .unwrap();
            let resp = client.request(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let collected = resp.into_body().collect().await.unwrap();
            assert_eq!(collected.trailers().unwrap()["x-checksum"], "42");
            assert_eq!(collected.to_bytes(), "hello, world");
        }
        assert_eq!(
            target.connections.load(SeqCst),
            1,
            "one kept-alive connection"
        );
    })
    .await;
}

#[tokio::test]
async fn an_answer_delimited_by_the_close_arrives_whole_and_its_connection_is_not_reused() {
    bounded(TEST_LIMIT, async {
        let target = scripted(|_, _, _| {
            Act::SendThenClose(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end".to_vec(),
            )
        })
        .await;
        let (_server, url) = proxy_to(target.addr).await;
        let client = common::client();
        for _ in 0..3 {
            let r = get(&client, &format!("{url}/c"), &[]).await.unwrap();
            assert_eq!(
                (r.status, r.body.as_str()),
                (StatusCode::OK, "until the end")
            );
        }
        assert_eq!(target.connections.load(SeqCst), 3);
    })
    .await;
}

#[tokio::test]
async fn head_204_and_304_answers_have_no_body_and_keep_the_connection() {
    bounded(TEST_LIMIT, async {
        let target = scripted(|_, _, head| {
            let line = head.lines().next().unwrap_or("");
            Act::Send(if line.starts_with("HEAD") {
                b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n".to_vec()
            } else if line.contains("/204") {
                b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()
            } else if line.contains("/304") {
                b"HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\n\r\n".to_vec()
            } else {
                ok("body")
            })
        })
        .await;
        let (_server, url) = proxy_to(target.addr).await;
        let client = common::client();
        let head = client
            .request(
                Request::head(format!("{url}/h"))
                    .body(Empty::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(head.headers()["content-length"], "1000");
        for (path, status) in [("/204", 204), ("/304", 304), ("/", 200), ("/204", 204)] {
            let r = get(&client, &format!("{url}{path}"), &[]).await.unwrap();
            assert_eq!(r.status, status, "{path}");
        }
        assert_eq!(target.connections.load(SeqCst), 1);
    })
    .await;
}

#[tokio::test]
async fn interim_answers_are_skipped() {
    bounded(TEST_LIMIT, async {
        let target = scripted(|_, _, _| {
            let mut b =
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n"
                    .to_vec();
            b.extend(ok("final"));
            Act::Send(b)
        })
        .await;
        let (_server, url) = proxy_to(target.addr).await;
        let r = get(&common::client(), &format!("{url}/"), &[])
            .await
            .unwrap();
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "final"));
    })
    .await;
}

#[tokio::test]
async fn a_kept_alive_connection_the_target_closed_costs_no_request() {
    bounded(TEST_LIMIT, async {
        // The target answers one request per connection and then closes it, though it said
        // nothing about closing: the pooled connection must be found dead, not used. POSTs,
        // because they may not be sent twice: only finding the dead connection saves them.
        let target = scripted(|_, _, _| Act::SendThenClose(ok("fresh"))).await;
        let (_server, url) = proxy_to(target.addr).await;
        let client = common::client();
        for i in 0..20 {
            let req = Request::post(format!("{url}/order"))
                .body(Empty::<Bytes>::new())
                .unwrap();
            let resp = client.request(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK, "request {i}");
            // Let the close reach us before the next request, as it would after a pause.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(target.connections.load(SeqCst), 20);
    })
    .await;
}

#[tokio::test]
async fn a_connection_closed_as_the_request_arrives_is_retried_only_when_that_is_safe() {
    bounded(TEST_LIMIT, async {
        // The first request on a connection is answered; the second is read and then the
        // connection is closed without an answer, as a target shutting down an idle
        // keep-alive connection at that very moment does.
        let target = scripted(|_, n, _| {
            if n == 0 {
                Act::Send(ok("answered"))
            } else {
                Act::Close
            }
        })
        .await;
        let (_server, url) = proxy_to(target.addr).await;
        let client = common::client();
        let r = get(&client, &format!("{url}/"), &[]).await.unwrap();
        assert_eq!(r.body, "answered");
        // An idempotent GET goes again on a new connection.
        let r = get(&client, &format!("{url}/"), &[]).await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "answered"));
        assert_eq!(target.connections.load(SeqCst), 2);
        // A POST may have been acted on: it is not sent twice.
        let req = Request::post(format!("{url}/order"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(resp.headers()["x-switchyard-error"], "upstream_reset");
        assert_eq!(target.connections.load(SeqCst), 2);
    })
    .await;
}

#[tokio::test]
async fn broken_answers_are_502_protocol_errors() {
    bounded(TEST_LIMIT, async {
        let target = scripted(|_, _, head| {
            let line = head.lines().next().unwrap_or("");
            if line.contains("/garbage") {
                Act::SendThenClose(b"SSH-2.0-OpenSSH_9.2\r\n\r\n".to_vec())
            } else if line.contains("/huge") {
                let mut b = b"HTTP/1.1 200 OK\r\n".to_vec();
                for i in 0..100 {
                    b.extend(format!("x-filler-{i}: {}\r\n", "a".repeat(1000)).into_bytes());
                }
                b.extend(b"\r\n");
                Act::SendThenClose(b)
            } else if line.contains("/badchunk") {
                Act::SendThenClose(
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n".to_vec(),
                )
            } else {
                // Promises 100 bytes and closes after 5.
                Act::SendThenClose(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort".to_vec())
            }
        })
        .await;
        let (_server, url) = proxy_to(target.addr).await;
        let client = common::client();
        for path in ["/garbage", "/huge"] {
            let r = get(&client, &format!("{url}{path}"), &[]).await.unwrap();
            assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{path}");
            assert_eq!(
                r.headers["x-switchyard-error"], "upstream_protocol_error",
                "{path}"
            );
            assert!(
                r.body.contains("bad response from target"),
                "{path}: {}",
                r.body
            );
        }
        // A body that breaks off after its head went out cannot become a 502 any more: the
        // client sees its response end in an error rather than a short body taken as whole.
        for path in ["/badchunk", "/short"] {
            let result = get(&client, &format!("{url}{path}"), &[]).await;
            assert!(result.is_err(), "{path}: {:?}", result.map(|r| r.body));
        }
        let r = get(&client, &format!("{url}/garbage"), &[]).await.unwrap();
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "still serving");
    })
    .await;
}

#[tokio::test]
async fn idle_connections_the_target_closed_are_swept_from_the_pool() {
    bounded(TEST_LIMIT, async {
        // Every connection is closed by the target 100 ms after its answer, as a server with a
        // short keep-alive timeout does; then no more traffic comes.
        let target =
            scripted(|_, _, _| Act::SendThenCloseAfter(ok("x"), Duration::from_millis(100))).await;
        let health =
        "[service.health_check]\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\n";
        let server = start(&config(&[("blue", &[target.addr])], health)).await;
        let url = format!("http://{}", server.listener_addr("web").await);
        let client = body_client();
        let requests = (0..8).map(|_| {
            let req = Request::get(format!("{url}/"))
                .body(Empty::new().boxed())
                .unwrap();
            client.request(req)
        });
        for resp in futures_util::future::join_all(requests).await {
            assert_eq!(resp.unwrap().status(), StatusCode::OK);
        }
        let pool_size = || {
            let snap = server.control.snapshot();
            snap.services["shop"].groups[0].targets[0].pool.idle_count()
        };
        assert!(
            pool_size() >= 2,
            "several connections were pooled: {}",
            pool_size()
        );
        common::eventually(
            Duration::from_secs(3),
            "closed connections leave the pool",
            || async { pool_size() == 0 },
        )
        .await;
    })
    .await;
}

/// The group's answers by class (index 1 = 2xx, 4 = 5xx) as /metrics and the judge see them.
fn group_counts(server: &Server) -> switchyard::group::GroupCounts {
    let snap = server.control.snapshot();
    snap.services["shop"].groups[0].stats.snapshot()
}

#[tokio::test]
async fn a_101_to_a_request_without_upgrade_is_a_502_and_its_connection_is_dropped() {
    bounded(TEST_LIMIT, async {
        // The first connection switches protocols unasked and then speaks something else; a
        // request written into it later would get that instead of an answer.
        let target = scripted(|c, _, _| {
            if c == 0 {
                Act::Send(
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: other\r\nconnection: upgrade\r\n\r\n\
                  HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nswitched"
                    .to_vec(),
            )
            } else {
                Act::Send(ok("fresh"))
            }
        })
        .await;
        let (server, url) = proxy_to(target.addr).await;
        let client = common::client();
        let r = get(&client, &format!("{url}/"), &[]).await.unwrap();
        assert_eq!(r.status, StatusCode::BAD_GATEWAY);
        assert_eq!(r.headers["x-switchyard-error"], "upstream_protocol_error");
        for _ in 0..3 {
            let r = get(&client, &format!("{url}/"), &[]).await.unwrap();
            assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "fresh"));
        }
        assert_eq!(
            target.connections.load(SeqCst),
            2,
            "the switched one was not reused"
        );
        assert_eq!(group_counts(&server).responses[4], 1);
    })
    .await;
}

#[tokio::test]
async fn an_answer_whose_length_cannot_be_known_is_a_502_counted_as_5xx() {
    bounded(TEST_LIMIT, async {
        let target = scripted(|_, _, head| {
            let line = head.lines().next().unwrap_or("");
            let length = if line.contains("/conflict") {
                "content-length: 5\r\ncontent-length: 6"
            } else if line.contains("/junk") {
                "content-length: 5x"
            } else if line.contains("/overflow") {
                "content-length: 99999999999999999999999"
            } else if line.contains("/list") {
                "content-length: 5, 6"
            } else {
                "transfer-encoding: chunked, gzip"
            };
            Act::SendThenClose(format!("HTTP/1.1 200 OK\r\n{length}\r\n\r\nhello").into_bytes())
        })
        .await;
        let (server, url) = proxy_to(target.addr).await;
        let client = common::client();
        let paths = ["/conflict", "/junk", "/overflow", "/list", "/gzip"];
        for path in paths {
            let r = get(&client, &format!("{url}{path}"), &[]).await.unwrap();
            assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{path}: {}", r.body);
            assert_eq!(
                r.headers["x-switchyard-error"], "upstream_protocol_error",
                "{path}"
            );
        }
        let counts = group_counts(&server);
        assert_eq!(counts.responses[1], 0, "no 2xx recorded");
        assert_eq!(counts.responses[4], paths.len() as u64);
    })
    .await;
}

/// RFC 9112 §6.3: two Content-Length fields that disagree leave the body's end unknown, so
/// the proxy answers 502 rather than guessing (reading to the close would pass on whatever
/// the target sends next); the same length written twice is one length, as the RFC allows.
#[tokio::test]
async fn two_different_content_lengths_are_a_502_and_the_same_one_twice_is_read() {
    bounded(TEST_LIMIT, async {
        let target = scripted(|_, _, head| {
            let second = if head.starts_with("GET /differ") {
                7
            } else {
                5
            };
            let head =
                format!("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: {second}\r\n\r\n");
            Act::Send([head.as_bytes(), b"hello"].concat())
        })
        .await;
        let (server, url) = proxy_to(target.addr).await;
        let client = common::client();
        let r = get(&client, &format!("{url}/differ"), &[]).await.unwrap();
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.body);
        assert_eq!(r.headers["x-switchyard-error"], "upstream_protocol_error");
        let r = get(&client, &format!("{url}/same"), &[]).await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "hello"));
        let counts = group_counts(&server);
        assert_eq!((counts.responses[1], counts.responses[4]), (1, 1));
    })
    .await;
}

#[tokio::test]
async fn a_length_next_to_chunked_is_ignored_and_not_forwarded_and_the_connection_closed() {
    bounded(TEST_LIMIT, async {
        let target = scripted(|_, _, _| {
            Act::Send(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n\
              5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
                    .to_vec(),
            )
        })
        .await;
        let (_server, url) = proxy_to(target.addr).await;
        let client = common::client();
        for _ in 0..2 {
            let r = get(&client, &format!("{url}/"), &[]).await.unwrap();
            assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "hello world"));
            assert!(r.headers.get("content-length").is_none_or(|v| v == "11"));
        }
        assert_eq!(target.connections.load(SeqCst), 2, "not reused");
    })
    .await;
}

#[tokio::test]
async fn an_http_1_0_chunked_answer_is_read_and_its_connection_closed() {
    bounded(TEST_LIMIT, async {
        let target = scripted(|_, _, _| {
            Act::Send(
                b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n\
              5\r\nhello\r\n0\r\n\r\n"
                    .to_vec(),
            )
        })
        .await;
        let (_server, url) = proxy_to(target.addr).await;
        let client = common::client();
        for _ in 0..2 {
            let r = get(&client, &format!("{url}/"), &[]).await.unwrap();
            assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "hello"));
        }
        assert_eq!(target.connections.load(SeqCst), 2, "not reused");
    })
    .await;
}

/// A config for one target with the access log written to `log`.
fn logged_config(target: SocketAddr, log: &std::path::Path) -> String {
    config(&[("blue", &[target])], "").replacen(
        "[[listener]]",
        &format!("[access_log]\npath = \"{}\"\n\n[[listener]]", log.display()),
        1,
    )
}

/// The access log's lines, once there are `n`.
async fn log_lines(path: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    let read = || {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect::<Vec<serde_json::Value>>()
    };
    common::eventually(Duration::from_secs(10), "access log lines", || async {
        read().len() >= n
    })
    .await;
    read()
}

#[tokio::test]
async fn an_answer_that_breaks_off_after_its_head_is_a_failure_for_the_group_and_the_log() {
    bounded(TEST_LIMIT, async {
        let target = scripted(|_, _, head| {
            let line = head.lines().next().unwrap_or("");
            if line.contains("/badchunk") {
                Act::SendThenClose(
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"
                        .to_vec(),
                )
            } else {
                Act::SendThenClose(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort".to_vec())
            }
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("access.log");
        let server = start(&logged_config(target.addr, &log)).await;
        let url = format!("http://{}", server.listener_addr("web").await);
        let client = common::client();
        for path in ["/badchunk", "/short"] {
            let result = get(&client, &format!("{url}{path}"), &[]).await;
            assert!(result.is_err(), "{path}: the client's response is reset");
        }
        common::eventually(Duration::from_secs(5), "two failures counted", || async {
            group_counts(&server).responses[4] == 2
        })
        .await;
        let counts = group_counts(&server);
        assert_eq!(counts.responses[1], 0, "not counted as 2xx");
        assert_eq!(counts.resets, 2);
        let snap = server.control.snapshot();
        let window = snap.services["shop"].groups[0]
            .stats
            .window
            .last(Duration::from_secs(30));
        assert_eq!(
            (window.requests, window.classes[4]),
            (2, 2),
            "the guard sees them"
        );
        let lines = log_lines(&log, 2).await;
        let mut errors: Vec<_> = lines
            .iter()
            .map(|l| {
                (
                    l["status"].as_u64().unwrap(),
                    l["upstream_error"].as_str().unwrap(),
                )
            })
            .collect();
        errors.sort();
        assert_eq!(
            errors,
            [(502, "upstream_protocol_error"), (502, "upstream_reset")]
        );
    })
    .await;
}

#[tokio::test]
async fn te_trailers_is_not_sent_to_an_http_1_target() {
    bounded(TEST_LIMIT, async {
        // The target answers with the request head it got.
        let target = scripted(|_, _, head| Act::Send(ok(head))).await;
        let (_server, url) = proxy_to(target.addr).await;
        let r = get(
            &common::client(),
            &format!("{url}/"),
            &[("te", "trailers"), ("connection", "te")],
        )
        .await
        .unwrap();
        let head = r.body.to_ascii_lowercase();
        assert!(head.starts_with("get / http/1.1"), "{head}");
        assert!(
            !head.contains("\r\nte:"),
            "te went to an HTTP/1 target: {head}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_target_that_stalls_mid_body_is_a_timeout_not_a_success() {
    bounded(TEST_LIMIT, async {
        // 5 of 100 bytes, then nothing for far longer than the request timeout.
        let target = scripted(|_, _, _| {
            Act::SendThenCloseAfter(
                b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhello".to_vec(),
                Duration::from_secs(60),
            )
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("access.log");
        let toml = logged_config(target.addr, &log).replacen(
            "[[listener]]",
            "[timeouts]\nrequest = \"1s\"\nidle = \"60s\"\n\n[[listener]]",
            1,
        );
        let server = start(&toml).await;
        let url = format!("http://{}", server.listener_addr("web").await);
        let result = get(&common::client(), &format!("{url}/"), &[]).await;
        assert!(result.is_err(), "the client's response is reset");
        common::eventually(Duration::from_secs(5), "a timeout counted", || async {
            group_counts(&server).timeouts == 1
        })
        .await;
        let counts = group_counts(&server);
        assert_eq!(
            (counts.timeouts, counts.responses[1], counts.responses[4]),
            (1, 0, 1),
            "{counts:?}"
        );
        let lines = log_lines(&log, 1).await;
        assert_eq!(
            (&lines[0]["status"], &lines[0]["upstream_error"]),
            (
                &serde_json::json!(504),
                &serde_json::json!("upstream_timeout")
            ),
            "{lines:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_5xx_whose_body_breaks_off_is_one_strike_toward_ejection_and_one_answer_per_route() {
    bounded(TEST_LIMIT, async {
        let target = scripted(|_, _, head| {
            let status = if head.starts_with("GET /ok") {
                "200 OK"
            } else {
                "500 Oops"
            };
            Act::SendThenClose(
                format!("HTTP/1.1 {status}\r\ncontent-length: 100\r\n\r\nshort").into_bytes(),
            )
        })
        .await;
        // Ejected at the fourth failure: three broken answers are three strikes (a 5xx head
        // and its broken body are one), not five.
        let server = start(&config(
            &[("blue", &[target.addr])],
            "passive = { consecutive_failures = 4, eject_on_5xx = true }",
        ))
        .await;
        let url = format!("http://{}", server.listener_addr("web").await);
        let client = common::client();
        for path in ["/a", "/b", "/ok"] {
            assert!(get(&client, &format!("{url}{path}"), &[]).await.is_err());
        }
        common::eventually(Duration::from_secs(5), "three failures counted", || async {
            group_counts(&server).responses[4] == 3
        })
        .await;
        let snap = server.control.snapshot();
        let target_state = &snap.services["shop"].groups[0].targets[0];
        assert!(
            !target_state.ejected(switchyard::metrics::now_ms()),
            "ejected after three failed answers"
        );
        // The route counts what the group counts: three 502s, not the heads' 500s and 200.
        let route = &snap.routes["web"][0].stats;
        assert_eq!(route.responses(), [0, 0, 0, 0, 3]);
    })
    .await;
}

#[tokio::test]
async fn an_answer_that_takes_long_to_deliver_counts_in_the_second_it_ends() {
    bounded(TEST_LIMIT, async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(2500)).await;
            s.write_all(b"world").await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let server = start(&config(&[("blue", &[addr])], "")).await;
        let mut c = TcpStream::connect(server.listener_addr("web").await)
            .await
            .unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let mut head_second = None;
        while !got.ends_with(b"helloworld") {
            let n = tokio::time::timeout(Duration::from_secs(20), c.read(&mut buf))
                .await
                .expect("the answer in time")
                .unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
            if head_second.is_none() && got.windows(4).any(|w| w == b"\r\n\r\n") {
                head_second = Some(switchyard::metrics::now_second());
            }
        }
        // At least two seconds after the head: counted after the head's second.
        let head_second = head_second.unwrap();
        let stats = &server.control.snapshot().services["shop"].groups[0].stats;
        common::eventually(Duration::from_secs(5), "the answer counted", || async {
            stats.snapshot().responses[1] == 1
        })
        .await;
        let now = switchyard::metrics::now_second();
        let later = stats.window.summary(head_second + 1, now);
        assert_eq!(later.requests, 1, "counted when the body ended");
    })
    .await;
}
