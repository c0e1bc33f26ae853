//! HTTP/2 (h2c and over TLS with ALPN), TLS with SNI, WebSocket, and HTTP/2 upstream with
//! gRPC-style trailers — all through switchyard over real sockets.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, ServerName};

/// Service `shop` with one group `blue` of `target`.
fn shop_to(target: std::net::SocketAddr) -> Cfg {
    Cfg::new().group("blue", &[target])
}

bounded_test! {
    current_thread;
    async fn h2c_clients_are_served_and_proxied_to_http1_targets() {
        let b = TestBackend::start("blue").await;
        let sy = start(&shop_to(b.addr).build()).await;
        let h2: hyper_util::client::legacy::Client<_, Empty<Bytes>> =
            hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http();
        let resp = h2
            .get(
                format!("http://{}/echo", sy.listener_addr("web").await)
                    .parse()
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(seen["version"], "HTTP/1.1", "the target speaks HTTP/1.1");
        assert!(
            seen["headers"]["host"]
                .as_str()
                .unwrap()
                .starts_with("127.0.0.1:"),
            "host from :authority: {seen}"
        );
    }
}

bounded_test! {
    current_thread;
    async fn http2_targets_get_grpc_requests_with_trailers_end_to_end() {
        let b = TestBackend::start("grpc").await;
        let sy = start(
            &Cfg::new()
                .group_with("blue", &[b.addr], "protocol = \"http2\"")
                .build(),
        )
        .await;
        let h2: hyper_util::client::legacy::Client<_, Full<Bytes>> =
            hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http();
        let req = http::Request::post(format!("http://{}/grpc", sy.listener_addr("web").await))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from_static(b"\x00\x00\x00\x00\x00")))
            .unwrap();
        let resp = h2.request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/grpc");
        let collected = resp.into_body().collect().await.unwrap();
        let trailers = collected
            .trailers()
            .cloned()
            .expect("trailers passed through");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(&collected.to_bytes()[..], b"\x00\x00\x00\x00\x02hi");

        // And the target really was spoken to over HTTP/2, with `te: trailers` kept and the
        // proxy's fields in place of the client's (an HTTP/2 target gets them from the map).
        let r = get(
            &client(),
            &format!("http://{}/echo", sy.listener_addr("web").await),
            &[
                ("te", "trailers"),
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-proto", "https"),
            ],
        )
        .await
        .unwrap();
        let h = &r.json()["headers"];
        assert_eq!(r.json()["version"], "HTTP/2.0");
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(
            h["x-request-id"],
            r.headers["x-request-id"].to_str().unwrap()
        );
    }
}

struct Cert {
    der: CertificateDer<'static>,
    pem: String,
    key: String,
}

fn cert(name: &str) -> Cert {
    let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    Cert {
        der: c.cert.der().clone(),
        pem: c.cert.pem(),
        key: c.signing_key.serialize_pem(),
    }
}

async fn tls_connect(
    addr: std::net::SocketAddr,
    sni: &str,
    roots: &[&Cert],
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut store = rustls::RootCertStore::empty();
    for c in roots {
        store.add(c.der.clone()).unwrap();
    }
    let mut cfg =
        rustls::ClientConfig::builder_with_provider(Arc::new(switchyard::tls::provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(store)
            .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
        .unwrap()
}

bounded_test! {
    current_thread;
    async fn tls_picks_the_certificate_by_sni_and_speaks_h2_or_http1_by_alpn() {
        let b = TestBackend::start("blue").await;
        let dir = tempfile::tempdir().unwrap();
        let (shop, api) = (cert("shop.test"), cert("api.test"));
        for (n, c) in [("shop", &shop), ("api", &api)] {
            std::fs::write(dir.path().join(format!("{n}.pem")), &c.pem).unwrap();
            std::fs::write(dir.path().join(format!("{n}.key")), &c.key).unwrap();
        }
        let certs = "[[listener.certificate]]\ncert = \"shop.pem\"\nkey = \"shop.key\"\n[[listener.certificate]]\ncert = \"api.pem\"\nkey = \"api.key\"";
        let sy = start_in(
            &shop_to(b.addr).listener(certs).build(),
            dir.path(),
        )
        .await;
        let addr = sy.listener_addr("web").await;

        // SNI api.test gets the api certificate (verified against it alone), over h2.
        let tls = tls_connect(addr, "api.test", &[&api], &[b"h2", b"http/1.1"]).await;
        assert_eq!(tls.get_ref().1.peer_certificates().unwrap()[0], api.der);
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = http::Request::get("https://api.test/echo")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let seen: serde_json::Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
        assert_eq!(seen["headers"]["host"], "api.test");

        // SNI shop.test gets the shop certificate, over HTTP/1.1.
        let tls = tls_connect(addr, "shop.test", &[&shop], &[b"http/1.1"]).await;
        assert_eq!(tls.get_ref().1.peer_certificates().unwrap()[0], shop.der);
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = http::Request::get("/")
            .header("host", "shop.test")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.headers()["x-backend"], "blue");

        // An unknown name gets the first certificate.
        let tls = tls_connect(addr, "shop.test", &[&shop], &[]).await;
        assert_eq!(tls.get_ref().1.peer_certificates().unwrap()[0], shop.der);
    }
}

bounded_test! {
    current_thread;
    async fn websocket_upgrades_pass_through() {
        let ws_addr = ws_echo().await;
        let sy = start(&shop_to(ws_addr).build()).await;
        let url = format!("ws://{}/chat", sy.listener_addr("web").await);
        let (mut ws, resp) = tokio_tungstenite::connect_async(url).await.unwrap();
        assert_eq!(resp.status(), 101);
        for i in 0..3 {
            let text = format!("hello {i}");
            ws.send(tokio_tungstenite::tungstenite::Message::text(text.clone()))
                .await
                .unwrap();
            let echo = ws.next().await.unwrap().unwrap();
            assert_eq!(echo.into_text().unwrap().as_str(), text);
        }
        ws.close(None).await.unwrap();
    }
}

bounded_test! {
    current_thread;
    async fn an_upgraded_connection_closes_after_the_idle_timeout_but_not_while_in_use() {
        use tokio_tungstenite::tungstenite::Message;
        let ws_addr = ws_echo().await;
        let cfg = shop_to(ws_addr).top("[timeouts]\nidle = \"400ms\"").build();
        let sy = start(&cfg).await;
        let url = format!("ws://{}/chat", sy.listener_addr("web").await);
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        // In use for twice the idle timeout: stays open.
        for i in 0..8 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            ws.send(Message::text(format!("ping {i}"))).await.unwrap();
            let echo = ws.next().await.unwrap().unwrap();
            assert_eq!(echo.into_text().unwrap().as_str(), format!("ping {i}"));
        }
        // Then silent: closed by switchyard between 1 and 1.25 times the limit later.
        let t = std::time::Instant::now();
        let end = tokio::time::timeout(std::time::Duration::from_secs(5), ws.next())
            .await
            .expect("the idle tunnel was closed");
        assert!(
            !matches!(end, Some(Ok(Message::Text(_)))),
            "nothing but the end: {end:?}"
        );
        fired_between(
            t.elapsed(),
            std::time::Duration::from_millis(400),
            std::time::Duration::from_millis(500),
            "the tunnel's idle timeout",
        );
    }
}
