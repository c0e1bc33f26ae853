//! HTTPS targets (issue 16, point 1): TLS to a group's targets with a CA bundle and SNI, an
//! opt-out of verification only when named, client certificates (mTLS), HTTP/2 by ALPN,
//! health checks over TLS, resumed sessions, and the refusals that say what and where. Each
//! target is a real TLS server written here (tokio-rustls + hyper) with rcgen certificates,
//! recording what every request arrived with.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::HandshakeKind;

/// A certificate authority made for the test.
struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
    der: CertificateDer<'static>,
}

/// A certificate issued by a [`Ca`], with its key.
struct Leaf {
    der: CertificateDer<'static>,
    pem: String,
    key_pem: String,
    key_der: Vec<u8>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            der: cert.der().clone(),
            params,
            key,
        }
    }

    fn issue(&self, names: &[&str]) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(ToString::to_string).collect();
        let params = CertificateParams::new(names).unwrap();
        let cert = params
            .signed_by(&key, &Issuer::from_params(&self.params, &self.key))
            .unwrap();
        Leaf {
            der: cert.der().clone(),
            pem: cert.pem(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        }
    }
}

/// What one request arrived with.
#[derive(Debug, Clone)]
struct Seen {
    sni: Option<String>,
    resumed: bool,
    alpn: Option<Vec<u8>>,
    client_cert: Option<CertificateDer<'static>>,
    version: http::Version,
    /// The request's scheme as the target saw it (HTTP/2's `:scheme`).
    scheme: Option<String>,
    user_agent: String,
}

/// How a [`TlsTarget`] behaves.
#[derive(Default)]
struct Options<'a> {
    /// Require a client certificate issued by this CA.
    client_ca: Option<&'a Ca>,
    /// Close the connection after each answer (a new handshake per request).
    close_each: bool,
    /// ALPN offered (default h2 and http/1.1).
    alpn: Option<Vec<Vec<u8>>>,
}

struct TlsTarget {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Handshakes that failed on the target's side.
    refused: Arc<std::sync::atomic::AtomicU64>,
}

impl TlsTarget {
    async fn start(leaf: &Leaf, o: Options<'_>) -> TlsTarget {
        let provider = Arc::new(switchyard::tls::provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match o.client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca.der.clone()).unwrap();
                let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .unwrap();
                builder.with_client_cert_verifier(v)
            }
            None => builder.with_no_client_auth(),
        };
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key_der.clone()));
        let mut cfg = builder
            .with_single_cert(vec![leaf.der.clone()], key)
            .unwrap();
        cfg.alpn_protocols = o
            .alpn
            .unwrap_or_else(|| vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (seen2, refused2, close_each) = (seen.clone(), refused.clone(), o.close_each);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, seen, refused) = (acceptor.clone(), seen2.clone(), refused2.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        return;
                    };
                    let c = tls.get_ref().1;
                    let base = Seen {
                        sni: c.server_name().map(str::to_string),
                        resumed: c.handshake_kind() == Some(HandshakeKind::Resumed),
                        alpn: c.alpn_protocol().map(<[u8]>::to_vec),
                        client_cert: c.peer_certificates().map(|p| p[0].clone().into_owned()),
                        version: http::Version::HTTP_11,
                        scheme: None,
                        user_agent: String::new(),
                    };
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let mut s = base.clone();
                        s.version = req.version();
                        s.scheme = req.uri().scheme_str().map(str::to_string);
                        s.user_agent = req
                            .headers()
                            .get(http::header::USER_AGENT)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        seen.lock().unwrap().push(s);
                        async move {
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                Bytes::from_static(b"over tls"),
                            )))
                        }
                    });
                    let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    b.http1().keep_alive(!close_each);
                    let _ = b.serve_connection(TokioIo::new(tls), svc).await;
                });
            }
        });
        TlsTarget {
            addr,
            seen,
            refused,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// What proxied requests (not health checks) arrived with.
    fn proxied(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.user_agent != "switchyard-health-check")
            .collect()
    }
}

/// Writes `files` (name, text) into `dir`.
fn write(dir: &Path, files: &[(&str, &str)]) {
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

/// `shop` with one group `blue` on `target`, `extra` appended to the group's table, a fast
/// health check, started with `dir` as the configuration's folder.
async fn proxy_to(target: SocketAddr, extra: &str, dir: &Path) -> Server {
    let toml = Cfg::new()
        .active("blue")
        .service("[service.health_check]\npath = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"200ms\"")
        .group_with("blue", &[target], extra)
        .build();
    start_in(&toml, dir).await
}

/// The answer to a request through a proxy like [`proxy_to`]'s without a health check (so
/// the request itself meets the refusal): a 502 that says why.
async fn refused_through(target: SocketAddr, extra: &str, dir: &Path) -> String {
    let toml = Cfg::new()
        .active("blue")
        .group_with("blue", &[target], extra)
        .build();
    let sy = start_in(&toml, dir).await;
    let r = get_web(&sy, "/").await;
    assert_eq!(r.status.as_u16(), 502, "{extra}: {}", r.body);
    r.body
}

async fn health(sy: &Server) -> String {
    let s = admin(sy).get("/api/v1/status").await.unwrap();
    s["services"][0]["groups"][0]["targets"][0]["health"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

async fn wait_health(sy: &Server, want: &str) {
    eventually(Duration::from_secs(5), want, || async {
        health(sy).await == want
    })
    .await;
}

bounded_test! {
    /// A target with a certificate from a private CA, for a name that is not its address:
    /// trusted through `ca`, reached with `sni`; health checks go over TLS too.
    async fn an_https_target_is_reached_with_the_ca_bundle_and_the_configured_sni() {
        let ca = Ca::new("internal CA");
        let target = TlsTarget::start(&ca.issue(&["api.internal"]), Options::default()).await;
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &[("ca.pem", &ca.pem)]);
        let sy = proxy_to(
            target.addr,
            "tls = { ca = \"ca.pem\", sni = \"api.internal\" }",
            dir.path(),
        )
        .await;
        wait_health(&sy, "healthy").await;
        let status = admin(&sy).get("/api/v1/status").await.unwrap();
        assert_eq!(
            status["services"][0]["groups"][0]["tls"],
            "TLS, trusting ca.pem, SNI api.internal",
            "{status}"
        );
        let r = get_web(&sy, "/orders").await;
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "over tls"));
        let p = target.proxied();
        assert_eq!(p[0].sni.as_deref(), Some("api.internal"), "{p:?}");
        assert_eq!(p[0].alpn.as_deref(), Some(&b"http/1.1"[..]), "{p:?}");
        assert!(
            target.seen().iter().any(|s| s.user_agent == "switchyard-health-check"),
            "health checks arrive over TLS"
        );
    }
}

bounded_test! {
    /// A certificate the group does not trust (another CA, or the wrong name) is refused:
    /// 502 and the target unhealthy. Only `insecure_skip_verify = true` accepts it.
    async fn an_untrusted_certificate_is_refused_unless_verification_is_skipped_by_name() {
        let (ca, other) = (Ca::new("internal CA"), Ca::new("someone else"));
        let target = TlsTarget::start(&other.issue(&["api.internal"]), Options::default()).await;
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &[("ca.pem", &ca.pem), ("other.pem", &other.pem)]);
        for extra in [
            "tls = { ca = \"ca.pem\", sni = \"api.internal\" }",
            "tls = { ca = \"other.pem\", sni = \"shop.internal\" }",
        ] {
            let sy = proxy_to(target.addr, extra, dir.path()).await;
            wait_health(&sy, "unhealthy").await;
            assert_eq!(get_web(&sy, "/").await.status, 503, "{extra}");
            let why = refused_through(target.addr, extra, dir.path()).await;
            assert!(
                why.contains("TLS handshake failed: invalid peer certificate")
                    && (why.contains("UnknownIssuer") || why.contains("not valid for name")),
                "{extra}: {why}"
            );
        }
        assert!(target.proxied().is_empty());
        let sy = proxy_to(target.addr, "tls = { insecure_skip_verify = true }", dir.path()).await;
        wait_health(&sy, "healthy").await;
        let r = get_web(&sy, "/").await;
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "over tls"));
    }
}

bounded_test! {
    /// A target that requires a client certificate from its CA: a group without one is
    /// refused; with `cert` and `key` it is served, and the target saw that certificate.
    async fn a_target_that_requires_a_client_certificate_gets_the_configured_one() {
        let (ca, clients) = (Ca::new("internal CA"), Ca::new("client CA"));
        let options = Options {
            client_ca: Some(&clients),
            ..Options::default()
        };
        let target = TlsTarget::start(&ca.issue(&["127.0.0.1"]), options).await;
        let me = clients.issue(&["switchyard.internal"]);
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            &[("ca.pem", &ca.pem), ("me.pem", &me.pem), ("me.key", &me.key_pem)],
        );
        let sy = proxy_to(target.addr, "tls = { ca = \"ca.pem\" }", dir.path()).await;
        wait_health(&sy, "unhealthy").await;
        assert_eq!(get_web(&sy, "/").await.status, 503);
        refused_through(target.addr, "tls = { ca = \"ca.pem\" }", dir.path()).await;
        assert!(target.proxied().is_empty());
        let sy = proxy_to(
            target.addr,
            "tls = { ca = \"ca.pem\", cert = \"me.pem\", key = \"me.key\" }",
            dir.path(),
        )
        .await;
        wait_health(&sy, "healthy").await;
        assert_eq!(get_web(&sy, "/").await.status, 200);
        let p = target.proxied();
        assert_eq!(p[0].client_cert.as_ref(), Some(&me.der), "{p:?}");
        // An IP address as the target: verified against the certificate's IP, no SNI sent.
        assert_eq!(p[0].sni, None, "{p:?}");
    }
}

bounded_test! {
    /// `protocol = "http2"` over TLS agrees on h2 by ALPN; a target that offers only
    /// http/1.1, or takes no part in ALPN, is refused (and unhealthy) rather than spoken to
    /// in the wrong protocol.
    async fn http2_over_tls_is_agreed_by_alpn_and_refused_without_it() {
        let ca = Ca::new("internal CA");
        let leaf = ca.issue(&["127.0.0.1"]);
        let target = TlsTarget::start(&leaf, Options::default()).await;
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &[("ca.pem", &ca.pem)]);
        let tls = "protocol = \"http2\"\ntls = { ca = \"ca.pem\" }";
        let sy = proxy_to(target.addr, tls, dir.path()).await;
        wait_health(&sy, "healthy").await;
        assert_eq!(get_web(&sy, "/").await.status, 200);
        let p = target.proxied();
        assert_eq!(p[0].version, http::Version::HTTP_2, "{p:?}");
        assert_eq!(p[0].scheme.as_deref(), Some("https"), "{p:?}");
        assert_eq!(p[0].alpn.as_deref(), Some(&b"h2"[..]), "{p:?}");

        let only_h1 = Options {
            alpn: Some(vec![b"http/1.1".to_vec()]),
            ..Options::default()
        };
        let old = TlsTarget::start(&leaf, only_h1).await;
        let sy = proxy_to(old.addr, tls, dir.path()).await;
        wait_health(&sy, "unhealthy").await;
        assert_eq!(get_web(&sy, "/").await.status, 503);
        let why = refused_through(old.addr, tls, dir.path()).await;
        assert!(why.contains("NoApplicationProtocol"), "{why}");
        // A target that takes no part in ALPN at all is not assumed to speak h2 either.
        let deaf = Options {
            alpn: Some(Vec::new()),
            ..Options::default()
        };
        let deaf = TlsTarget::start(&leaf, deaf).await;
        let why = refused_through(deaf.addr, tls, dir.path()).await;
        assert!(why.contains("did not agree to HTTP/2 by ALPN"), "{why}");
        assert!(deaf.proxied().is_empty());
        assert!(old.proxied().is_empty());
    }
}

bounded_test! {
    /// A target that closes each connection makes every request a new handshake: after the
    /// first, they resume the session the group's client kept (abbreviated handshakes).
    async fn new_connections_to_a_target_resume_the_tls_session() {
        let ca = Ca::new("internal CA");
        let options = Options {
            close_each: true,
            ..Options::default()
        };
        let target = TlsTarget::start(&ca.issue(&["127.0.0.1"]), options).await;
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &[("ca.pem", &ca.pem)]);
        let toml = Cfg::new()
            .active("blue")
            .group_with("blue", &[target.addr], "tls = { ca = \"ca.pem\" }")
            .build();
        let sy = start_in(&toml, dir.path()).await;
        for _ in 0..4 {
            assert_eq!(get_web(&sy, "/").await.status, 200);
        }
        let p = target.proxied();
        assert_eq!(p.len(), 4);
        assert!(!p[0].resumed, "the first is a full handshake: {p:?}");
        assert!(p[1..].iter().all(|s| s.resumed), "{p:?}");
        assert_eq!(target.refused.load(std::sync::atomic::Ordering::SeqCst), 0);
    }
}

bounded_test! {
    /// A pooled connection made under the old settings is not used once the group's TLS
    /// changes: after `apply` makes the group trust only a CA that did not sign the target,
    /// the next request is refused instead of riding the connection kept alive from before.
    async fn a_changed_tls_setting_applies_to_the_next_request_not_to_a_pooled_connection() {
        let (ca, other) = (Ca::new("internal CA"), Ca::new("someone else"));
        let target = TlsTarget::start(&other.issue(&["127.0.0.1"]), Options::default()).await;
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &[("ca.pem", &ca.pem)]);
        let with = |tls: &str| Cfg::new().active("blue").group_with("blue", &[target.addr], tls).build();
        let sy = start_in(&with("tls = { insecure_skip_verify = true }"), dir.path()).await;
        assert_eq!(get_web(&sy, "/").await.status.as_u16(), 200);
        admin(&sy)
            .post(
                "/api/v1/config/apply",
                serde_json::json!({
                    "path": dir.path().join("t.toml").display().to_string(),
                    "content": with("tls = { ca = \"ca.pem\" }"),
                }),
            )
            .await
            .unwrap();
        let r = get_web(&sy, "/").await;
        assert_eq!(r.status.as_u16(), 502, "{}", r.body);
        assert!(r.body.contains("UnknownIssuer"), "{}", r.body);
        assert_eq!(target.proxied().len(), 1, "only the request before the change arrived");
    }
}

#[test]
fn tls_settings_that_cannot_work_are_refused_at_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("internal CA");
    write(
        dir.path(),
        &[("ca.pem", &ca.pem), ("junk.pem", "not a certificate")],
    );
    let target: SocketAddr = "127.0.0.1:8443".parse().unwrap();
    for (extra, at, why) in [
        (
            "tls = { cert = \"me.pem\" }",
            "tls.cert",
            "`cert` needs `key`",
        ),
        (
            "tls = { key = \"me.key\" }",
            "tls.key",
            "`key` needs `cert`",
        ),
        (
            "tls = { ca = \"ca.pem\", insecure_skip_verify = true }",
            "tls.ca",
            "exclude each other",
        ),
        ("tls = { ca = \"missing.pem\" }", "tls.ca", "missing.pem"),
        (
            "tls = { ca = \"junk.pem\" }",
            "tls.ca",
            "no PEM certificate",
        ),
        (
            "tls = { ca = \"ca.pem\", sni = \"not a name\" }",
            "tls.sni",
            "not a server name",
        ),
        (
            "tls = { ca = \"ca.pem\", verify = false }",
            "tls",
            "unknown field `verify`",
        ),
    ] {
        let toml = Cfg::new()
            .active("blue")
            .group_with("blue", &[target], extra)
            .build();
        let e = match switchyard::config::parse(&toml, "t.toml", dir.path()) {
            Ok(_) => panic!("accepted: {extra}"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(at) && e.contains(why), "{extra}: {e}");
        assert!(e.contains("t.toml:"), "located: {e}");
    }
}
