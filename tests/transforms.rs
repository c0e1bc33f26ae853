//! Route transforms end to end: a raw target that answers with the request line and `Host`
//! it received (and a `Server` header of its own), behind a route that rewrites the path and
//! the host and edits the answer's headers; a rewrite that makes no path is switchyard's 500;
//! a bad transform is refused at its line and column.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A target that answers every request with `<path and query> <host>` in its body, a
/// `Server: echo/1` and a `Vary: accept` header, and closes the connection.
async fn echo_target() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let head = common::raw::read_head(&mut s).await;
                let target = head.split(' ').nth(1).unwrap_or("").to_string();
                let host = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("host").then(|| v.trim().to_string())
                    })
                    .unwrap_or_default();
                let body = format!("{target} {host}");
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nserver: echo/1\r\nvary: accept\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
                let mut rest = [0u8; 64];
                let _ = tokio::time::timeout(Duration::from_millis(200), s.read(&mut rest)).await;
            });
        }
    });
    addr
}

const TRANSFORM: &str = r#"
[route.transform]
path = { regex = "^/v1/(?P<rest>.*)$", replace = "/api/${rest}" }
host = { regex = "^(\\w+)\\.old\\.test$", replace = "$1.new.test" }
[route.transform.response_headers]
set = { "strict-transport-security" = "max-age=63072000", "access-control-allow-origin" = "*" }
add = { "vary" = "origin" }
remove = ["server"]
"#;

/// `GET path` with `Host: host` on a fresh connection: status, head (lower case) and body.
async fn call(web: SocketAddr, path: &str, host: &str) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(web).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let (text, _) = common::raw::read_to_close(&mut s, Duration::from_secs(10)).await;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        common::raw::status_of(head),
        head.to_ascii_lowercase(),
        body.to_string(),
    )
}

bounded_test! {
    /// The target sees the rewritten path (query kept) and host; the client's answer has the
    /// set, added and removed headers; a path the pattern does not match goes as it came.
    async fn a_route_rewrites_path_and_host_and_edits_the_answers_headers() {
        let target = echo_target().await;
        let sy = start(&Cfg::new().active("blue").group("blue", &[target]).route(TRANSFORM).build()).await;
        let web = sy.listener_addr("web").await;

        let (status, head, body) = call(web, "/v1/items?page=2", "shop.old.test").await;
        assert_eq!(status, 200, "{head}{body}");
        assert_eq!(body, "/api/items?page=2 shop.new.test");
        assert!(head.contains("\r\nstrict-transport-security: max-age=63072000"), "{head}");
        assert!(head.contains("\r\naccess-control-allow-origin: *"), "{head}");
        assert!(!head.contains("\r\nserver:"), "{head}");
        assert!(head.contains("\r\nvary: accept\r\n") && head.contains("\r\nvary: origin"), "{head}");

        let (status, _, body) = call(web, "/health", "other.test").await;
        assert_eq!(status, 200);
        assert_eq!(body, "/health other.test", "unmatched patterns change nothing");
    }
}

bounded_test! {
    /// A rewrite that makes no path (here: one without its leading `/`) is switchyard's own
    /// 500 with its error code, and never reaches the target.
    async fn a_rewrite_that_makes_no_path_is_answered_500_without_reaching_the_target() {
        let (blue, _green) = TestBackend::pair().await;
        let sy = start(
            &blue_green(blue.addr, _green.addr)
                .route("[route.transform]\npath = { regex = \"^/(.*)$\", replace = \"$1\" }")
                .build(),
        )
        .await;
        let (status, head, _) = call(sy.listener_addr("web").await, "/x", "a.test").await;
        assert_eq!(status, 500, "{head}");
        assert!(head.contains("x-switchyard-error: route_rewrite_invalid"), "{head}");
        assert_eq!(blue.hits(), 0);
    }
}

/// Why `toml` (a whole config) is refused.
fn refusal(toml: &str) -> String {
    match switchyard::config::parse(toml, "t.toml", Path::new(".")) {
        Ok(_) => panic!("accepted:\n{toml}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_transforms_are_refused_where_they_are_written() {
    let target: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let with = |t: &str| {
        Cfg::new()
            .active("blue")
            .group("blue", &[target])
            .route(t)
            .build()
    };
    let e = refusal(&with(
        "[route.transform]\npath = { regex = \"^/(v1\", replace = \"/\" }",
    ));
    assert!(
        e.contains("route[0].transform.path.regex: not a regular expression"),
        "{e}"
    );
    let e = refusal(&with(
        "[route.transform]\npath = { regex = \"^/v1/(.*)$\", replace = \"/$2\" }",
    ));
    assert!(
        e.contains("route[0].transform.path.replace: $2 names no group of the pattern (it has 1)"),
        "{e}"
    );
    let e = refusal(&with(
        "[route.transform.response_headers]\nremove = [\"content-length\"]",
    ));
    assert!(e.contains("frames the message or the connection"), "{e}");
    let e = refusal(&with(
        "[route.transform.response_headers]\nset = { \"bad name\" = \"x\" }",
    ));
    assert!(e.contains("is not a valid header name"), "{e}");
    let fixed = format!(
        "{}[[route]]\nname = \"f\"\npriority = 1\nfixed_response = {{ status = 200 }}\n[route.transform]\npath = {{ regex = \"a\", replace = \"/b\" }}\n",
        Cfg::new().head()
    );
    let e = refusal(&fixed);
    assert!(
        e.contains("route[0].transform: host and path rewrites apply to what a route forwards"),
        "{e}"
    );
    // Each at its line and column: `t.toml:LINE:COL: …`.
    assert!(
        e.starts_with("t.toml:")
            && e.split(':')
                .nth(1)
                .is_some_and(|l| l.parse::<u32>().is_ok()),
        "{e}"
    );
}
