//! Raw TCP for tests that must see bytes: answer heads, whole answers, closes, a stalled
//! upload.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads an answer's head (and whatever came with it) and returns it as text.
pub(crate) async fn read_head(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("an answer in time");
    String::from_utf8_lossy(&buf).into_owned()
}

pub(crate) fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {answer:?}"))
}

/// A client that announces 100 bytes, sends 3, and then sends nothing more.
pub(crate) async fn stalled_upload(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nabc")
        .await
        .unwrap();
    read_head(&mut s).await
}

/// Reads until EOF (or error); returns what was read and how long it took.
pub(crate) async fn read_to_close(s: &mut TcpStream, limit: Duration) -> (String, Duration) {
    let t = Instant::now();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut buf))
        .await
        .expect("connection closed in time");
    (String::from_utf8_lossy(&buf).into_owned(), t.elapsed())
}

/// One whole answer with a `content-length` body (however many reads it takes), as text.
pub(crate) async fn read_answer(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let whole = |got: &[u8]| {
        let text = String::from_utf8_lossy(got);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            return false;
        };
        let len = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(str::to_string)
            })
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        body.len() >= len
    };
    while !whole(&got) {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Reads until the peer closes (Ok) or `limit` passes (Err); what was read either way.
pub(crate) async fn closed_within(s: &mut TcpStream, limit: Duration) -> Result<String, String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return Err(String::from_utf8_lossy(&got).into_owned()),
            Ok(Ok(0) | Err(_)) => return Ok(String::from_utf8_lossy(&got).into_owned()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Sends `head` on a raw connection and returns what came back within `limit`.
pub(crate) async fn raw(addr: SocketAddr, head: &str, limit: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n{") {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Connects to `addr` and sends `bytes`.
pub(crate) async fn send(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    s
}

/// A loopback port that refuses connections and stays reserved while this lives: a socket
/// bound to it that never listens. A port taken and freed instead (`bin::free_port`) can
/// be handed to another test's backend meanwhile, and then it answers.
pub(crate) struct RefusingPort {
    _socket: tokio::net::TcpSocket,
    pub addr: SocketAddr,
}

impl RefusingPort {
    pub(crate) fn new() -> RefusingPort {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("bind");
        let addr = socket.local_addr().expect("local address");
        RefusingPort {
            _socket: socket,
            addr,
        }
    }

    /// Frees the port for a backend to start on it at once; its address.
    pub(crate) fn release(self) -> SocketAddr {
        self.addr
    }
}
