//! TLS at the edge (issue 19, points 6 and 7): client certificates (mTLS) verified against a
//! listener's CA bundle — required or optional — with what they say passed to the target in
//! fields no client can forge; and an OCSP response stapled for every client that asks,
//! made by openssl's real responder and checked when it is read. Real sockets, real
//! handshakes: rustls clients with and without certificates.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use common::raw::{read_answer, send, status_of};
use common::*;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A CA for clients, and a certificate it issued for `client-7`; a server certificate for
/// shop.test; all written to `dir`.
struct Pki {
    server: CertificateDer<'static>,
    client_chain: Vec<CertificateDer<'static>>,
    client_key: PrivateKeyDer<'static>,
    /// Issued by a CA the listener does not trust.
    stranger_chain: Vec<CertificateDer<'static>>,
    stranger_key: PrivateKeyDer<'static>,
}

fn ca(cn: &str) -> (rcgen::CertificateParams, rcgen::KeyPair, rcgen::Certificate) {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    (p, key, cert)
}

fn client_cert(
    ca: &(rcgen::CertificateParams, rcgen::KeyPair, rcgen::Certificate),
    cn: &str,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let mut p = rcgen::CertificateParams::new(vec![format!("{cn}.shop.test")]).unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(rcgen::DnType::OrganizationName, "Shop");
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.subject_alt_names.push(rcgen::SanType::URI(
        format!("spiffe://shop/{cn}").try_into().unwrap(),
    ));
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let issuer = rcgen::Issuer::from_params(&ca.0, &ca.1);
    let cert = p.signed_by(&key, &issuer).unwrap();
    let der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    (vec![cert.der().clone()], der)
}

fn pki(dir: &Path) -> Pki {
    let server = rcgen::generate_simple_self_signed(vec!["shop.test".to_string()]).unwrap();
    std::fs::write(dir.join("shop.pem"), server.cert.pem()).unwrap();
    std::fs::write(dir.join("shop.key"), server.signing_key.serialize_pem()).unwrap();
    let clients = ca("Shop Clients CA");
    std::fs::write(dir.join("clients-ca.pem"), clients.2.pem()).unwrap();
    let (client_chain, client_key) = client_cert(&clients, "client-7");
    let (stranger_chain, stranger_key) = client_cert(&ca("Someone Else's CA"), "client-7");
    Pki {
        server: server.cert.der().clone(),
        client_chain,
        client_key,
        stranger_chain,
        stranger_key,
    }
}

/// A listener on shop.test with `client_auth` set to `auth`.
async fn mtls_rig(auth: &str) -> (Server, Pki, tempfile::TempDir, TestBackend) {
    let b = TestBackend::start("blue").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let cfg = blue_green(b.addr, b.addr)
        .listener(&format!(
            "client_auth = {auth}\n[[listener.certificate]]\ncert = \"shop.pem\"\nkey = \"shop.key\""
        ))
        .build();
    let sy = start_in(&cfg, dir.path()).await;
    (sy, pki, dir, b)
}

/// Records the OCSP response the server stapled, and trusts one root.
#[derive(Debug)]
struct Recording {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    ocsp: Mutex<Option<Vec<u8>>>,
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.ocsp.lock().unwrap() = Some(ocsp.to_vec());
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// One `GET /echo` over a new TLS connection, presenting `identity` if given, with `extra`
/// request fields: the target's view of the request (JSON), or the error. Also returns
/// the OCSP response the server stapled (empty: none).
/// A TLS client trusting `root`, presenting `identity` if given.
fn connector(
    root: &CertificateDer<'static>,
    identity: Option<(&[CertificateDer<'static>], &PrivateKeyDer<'static>)>,
) -> tokio_rustls::TlsConnector {
    connector_recording(root, identity).0
}

/// [`connector`], and the verifier that records the OCSP response the server stapled.
fn connector_recording(
    root: &CertificateDer<'static>,
    identity: Option<(&[CertificateDer<'static>], &PrivateKeyDer<'static>)>,
) -> (tokio_rustls::TlsConnector, Arc<Recording>) {
    let provider = Arc::new(switchyard::tls::provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let verifier = Arc::new(Recording {
        inner: rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap(),
        ocsp: Mutex::new(None),
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone());
    let cfg = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain.to_vec(), key.clone_key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    (tokio_rustls::TlsConnector::from(Arc::new(cfg)), verifier)
}

async fn echo(
    sy: &Server,
    root: &CertificateDer<'static>,
    identity: Option<(&[CertificateDer<'static>], &PrivateKeyDer<'static>)>,
    extra: &str,
) -> (Result<serde_json::Value, String>, Vec<u8>) {
    let (connector, verifier) = connector_recording(root, identity);
    let result = async {
        let tcp = tokio::net::TcpStream::connect(sy.listener_addr("web").await)
            .await
            .map_err(|e| e.to_string())?;
        let name = ServerName::try_from("shop.test").unwrap();
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let req =
            format!("GET /echo HTTP/1.1\r\nhost: shop.test\r\n{extra}connection: close\r\n\r\n");
        tls.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        // TLS 1.3: a refused client certificate shows on the first read.
        let mut answer = Vec::new();
        tls.read_to_end(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let (head, body) = answer.split_once("\r\n\r\n").ok_or("no answer")?;
        if !head.starts_with("HTTP/1.1 200") {
            return Err(head.to_string());
        }
        serde_json::from_str(body).map_err(|e| format!("{e}: {body}"))
    }
    .await;
    let ocsp = verifier.ocsp.lock().unwrap().take().unwrap_or_default();
    (result, ocsp)
}

bounded_test! {
    /// `mode = "required"`: a client with a certificate from the listener's CA is served and
    /// the target sees who it is, in fields the client could not forge; a client without one,
    /// or with one from another CA, is refused at the handshake and counted.
    async fn a_listener_requiring_client_certificates_verifies_them_and_tells_the_target() {
        let (sy, pki, _dir, _b) = mtls_rig("{ ca = \"clients-ca.pem\" }").await;
        let me = Some((pki.client_chain.as_slice(), &pki.client_key));
        let forged = "x-client-cert-subject: CN=admin\r\nx-client-cert-role: root\r\n";
        let (seen, _) = echo(&sy, &pki.server, me, forged).await;
        let seen = seen.unwrap();
        let h = &seen["headers"];
        assert_eq!(h["x-client-cert-verified"], "SUCCESS", "{seen}");
        assert_eq!(h["x-client-cert-subject"], "CN=client-7,O=Shop", "not the forged one: {seen}");
        assert_eq!(h["x-client-cert-issuer"], "CN=Shop Clients CA");
        assert_eq!(
            h["x-client-cert-san"],
            "DNS:client-7.shop.test, URI:spiffe://shop/client-7"
        );
        let fp = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, pki.client_chain[0].as_ref());
        let fp: String = fp.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(h["x-client-cert-fingerprint"], fp.as_str());
        assert!(h["x-client-cert-validity"].as_str().unwrap().starts_with("NotBefore="));
        assert!(h["x-client-cert-serial-number"].as_str().is_some_and(|s| !s.is_empty()));
        assert!(h.get("x-client-cert-role").is_none(), "client-sent fields under the prefix go: {seen}");
        assert!(h.get("x-client-cert-leaf").is_none(), "not sent unless listed");

        let (refused, _) = echo(&sy, &pki.server, None, "").await;
        assert!(refused.is_err(), "no certificate: {refused:?}");
        let stranger = Some((pki.stranger_chain.as_slice(), &pki.stranger_key));
        let (refused, _) = echo(&sy, &pki.server, stranger, "").await;
        assert!(refused.is_err(), "another CA's certificate: {refused:?}");
        let m = metrics_text(&sy).await;
        let failed = metric(&m, "switchyard_tls_handshake_failures_total", &["reason=\"certificate\""]);
        assert_eq!(failed, Some(2.0), "{m}");
        let status = admin(&sy).get("/api/v1/status").await.unwrap();
        assert_eq!(status["listeners"][0]["client_certificates"], "required", "{status}");
    }
}

bounded_test! {
    /// `mode = "optional"`: a client without a certificate is served as `NONE` — and what it
    /// sent under the prefix still goes; one with a certificate is verified as before; the
    /// prefix and the fields are the file's.
    async fn an_optional_client_certificate_is_said_to_be_missing_and_never_forged() {
        let (sy, pki, _dir, _b) = mtls_rig(
            "{ ca = \"clients-ca.pem\", mode = \"optional\", header_prefix = \"X-Amzn-Mtls-Clientcert-\", fields = [\"verified\", \"subject\", \"leaf\"] }",
        )
        .await;
        let forged = "x-amzn-mtls-clientcert-subject: CN=admin\r\n";
        let (seen, _) = echo(&sy, &pki.server, None, forged).await;
        let seen = seen.unwrap();
        let h = &seen["headers"];
        assert_eq!(h["x-amzn-mtls-clientcert-verified"], "NONE", "{seen}");
        assert!(h.get("x-amzn-mtls-clientcert-subject").is_none(), "{seen}");

        let me = Some((pki.client_chain.as_slice(), &pki.client_key));
        let (seen, _) = echo(&sy, &pki.server, me, forged).await;
        let seen = seen.unwrap();
        let h = &seen["headers"];
        assert_eq!(h["x-amzn-mtls-clientcert-subject"], "CN=client-7,O=Shop", "{seen}");
        assert!(h["x-amzn-mtls-clientcert-leaf"].as_str().unwrap().starts_with("-----BEGIN%20CERTIFICATE"));
        assert!(h.get("x-amzn-mtls-clientcert-issuer").is_none(), "not listed");
        let stranger = Some((pki.stranger_chain.as_slice(), &pki.stranger_key));
        let (refused, _) = echo(&sy, &pki.server, stranger, "").await;
        assert!(refused.is_err(), "a certificate that does not verify is refused even when optional");
    }
}

#[test]
fn client_auth_that_cannot_work_is_refused_at_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path();
    let _ = pki(pki_dir);
    std::fs::write(pki_dir.join("junk.pem"), "not a certificate").unwrap();
    let (a, b) = (
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
    );
    let cert = "\n[[listener.certificate]]\ncert = \"shop.pem\"\nkey = \"shop.key\"";
    for (auth, with_cert, want) in [
        (
            "{ ca = \"clients-ca.pem\" }",
            false,
            "listener[0].client_auth: client certificates need TLS",
        ),
        (
            "{ ca = \"clients-ca.pem\", mode = \"maybe\" }",
            true,
            "listener[0].client_auth.mode: \"maybe\": use \"required\"",
        ),
        (
            "{ ca = \"clients-ca.pem\", header_prefix = \"x-forwarded-\" }",
            true,
            "listener[0].client_auth.header_prefix: \"x-forwarded-\" would remove fields",
        ),
        (
            "{ ca = \"clients-ca.pem\", header_prefix = \"bad prefix\" }",
            true,
            "listener[0].client_auth.header_prefix: \"bad prefix\": a field name prefix",
        ),
        (
            "{ ca = \"clients-ca.pem\", fields = [\"subject\", \"email\"] }",
            true,
            "listener[0].client_auth.fields[1]: \"email\" is not a fact switchyard sends",
        ),
        (
            "{ ca = \"clients-ca.pem\", fields = [\"san\", \"san\"] }",
            true,
            "listener[0].client_auth.fields[1]: \"san\" is listed twice",
        ),
        (
            "{ ca = \"missing.pem\" }",
            true,
            "listener[0].client_auth.ca: certificate",
        ),
        (
            "{ ca = \"junk.pem\" }",
            true,
            "listener[0].client_auth.ca: certificate",
        ),
    ] {
        let listener = format!("client_auth = {auth}{}", if with_cert { cert } else { "" });
        let toml = blue_green(a, b).listener(&listener).build();
        let e = config_error_in(&toml, pki_dir);
        assert!(e.contains(want), "{auth}\n→ {e}");
    }
}

/// openssl, run in `dir`; panics with its output when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (scripts/test installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a certificate for shop.test it issued (serial 0x1234), and an OCSP response about
/// that certificate from openssl's responder saying `status` (`V` valid, `R` revoked, `E`
/// not in its index: unknown) — `resp.der`.
fn ocsp_pki(dir: &Path, ca: &str, status: char) {
    let subject = format!("/CN={ca}");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            &subject,
            "-days",
            "30",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "shop.key",
            "-out",
            "shop.csr",
            "-subj",
            "/CN=shop.test",
        ],
    );
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=DNS:shop.test\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "shop.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            "0x1234",
            "-days",
            "30",
            "-out",
            "shop.pem",
            "-extfile",
            "ext.cnf",
        ],
    );
    let revoked = if status == 'R' { "260101000000Z" } else { "" };
    let (status, serial) = if status == 'E' {
        ('V', "99")
    } else {
        (status, "1234")
    };
    std::fs::write(
        dir.join("index.txt"),
        format!("{status}\t351231000000Z\t{revoked}\t{serial}\tunknown\t/CN=shop.test\n"),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "ocsp",
            "-issuer",
            "ca.pem",
            "-cert",
            "shop.pem",
            "-no_nonce",
            "-reqout",
            "req.der",
        ],
    );
    openssl(
        dir,
        &[
            "ocsp",
            "-index",
            "index.txt",
            "-rsigner",
            "ca.pem",
            "-rkey",
            "ca.key",
            "-CA",
            "ca.pem",
            "-reqin",
            "req.der",
            "-respout",
            "resp.der",
            "-ndays",
            "2",
        ],
    );
}

bounded_test! {
    /// A certificate's `ocsp` response is stapled: a client that asks (rustls always does)
    /// gets the very bytes openssl's responder made; `status` and `/metrics` say when it goes
    /// stale. A response that says revoked, or is about another certificate, is refused
    /// at its key — stapling it would make clients refuse the handshake.
    async fn an_ocsp_response_is_stapled_and_a_wrong_one_refused() {
        let b = TestBackend::start("blue").await;
        let dir = tempfile::tempdir().unwrap();
        ocsp_pki(dir.path(), "Test CA", 'V');
        let first = &dir;
        let cfg = blue_green(b.addr, b.addr)
            .listener("[[listener.certificate]]\ncert = \"shop.pem\"\nkey = \"shop.key\"\nocsp = \"resp.der\"")
            .build();
        let sy = start_in(&cfg, dir.path()).await;
        let ca_pem = std::fs::read(dir.path().join("ca.pem")).unwrap();
        let root = rustls::pki_types::pem::PemObject::from_pem_slice(&ca_pem).unwrap();
        let (seen, stapled) = echo(&sy, &root, None, "").await;
        assert!(seen.is_ok(), "{seen:?}");
        let want = std::fs::read(dir.path().join("resp.der")).unwrap();
        assert_eq!(stapled, want, "the client got the response file's bytes");
        let status = admin(&sy).get("/api/v1/status").await.unwrap();
        let next = status["listeners"][0]["certificates"][0]["ocsp_next_update"].as_i64();
        let now = switchyard::sys::unix_ms() / 1000;
        assert!(next.is_some_and(|t| t > now + 86_400 && t <= now + 2 * 86_400 + 60), "{status}");
        let m = metrics_text(&sy).await;
        assert!(metric(&m, "switchyard_tls_ocsp_next_update_seconds", &[]).is_some(), "{m}");

        for (status, want) in [
            ('R', "says the certificate is revoked"),
            ('E', "status is unknown"),
            ('V', "about another certificate"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            ocsp_pki(dir.path(), "Test CA 2", status);
            if want.contains("another") {
                // The same serial from another CA: this directory's response, the first's
                // certificate.
                for f in ["shop.pem", "shop.key"] {
                    std::fs::copy(first.path().join(f), dir.path().join(f)).unwrap();
                }
            }
            let e = config_error_in(&cfg, dir.path());
            assert!(e.contains("listener[0].certificate[0].ocsp: OCSP response"), "{e}");
            assert!(e.contains(want), "{e}");
        }
    }
}

/// A `GET path` on an open TLS stream, keep-alive: the answer's status line and body.
async fn keep_alive_get<S>(tls: &mut S, path: &str, extra: &str) -> (String, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let req = format!("GET {path} HTTP/1.1\r\nhost: shop.test\r\n{extra}\r\n");
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(
            tls.read(&mut byte).await.unwrap(),
            1,
            "the answer's head ended early"
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    tls.read_exact(&mut body).await.unwrap();
    (head, String::from_utf8_lossy(&body).into_owned())
}

bounded_test! {
    /// The client's copies go before routing reads the request — a route on the verified
    /// subject cannot be reached with a forged one — and on every listener, not only the
    /// mTLS one.
    async fn forged_certificate_fields_reach_neither_a_route_nor_another_listeners_target() {
        let b = TestBackend::start("blue").await;
        let dir = tempfile::tempdir().unwrap();
        let pki = pki(dir.path());
        let cfg = blue_green(b.addr, b.addr)
            .listener("client_auth = { ca = \"clients-ca.pem\", mode = \"optional\" }\n[[listener.certificate]]\ncert = \"shop.pem\"\nkey = \"shop.key\"")
            .top("[[route]]\nname = \"ops\"\npriority = 0\nmatch.header = { \"x-client-cert-subject\" = [\"CN=client-7*\"] }\nfixed_response = { status = 200, body = \"ops console\" }\n[[listener]]\nname = \"plain\"\nbind = \"127.0.0.1:0\"")
            .build();
        let sy = start_in(&cfg, dir.path()).await;
        let forged = "x-client-cert-subject: CN=client-7,O=Shop\r\n";
        let (seen, _) = echo(&sy, &pki.server, None, forged).await;
        let seen = seen.expect("routed to the service, not the ops route");
        assert_eq!(seen["headers"]["x-client-cert-verified"], "NONE", "{seen}");
        let me = Some((pki.client_chain.as_slice(), &pki.client_key));
        let tcp = tokio::net::TcpStream::connect(sy.listener_addr("web").await).await.unwrap();
        let mut tls = connector(&pki.server, me).connect(ServerName::try_from("shop.test").unwrap(), tcp).await.unwrap();
        let (_, body) = keep_alive_get(&mut tls, "/echo", "").await;
        assert_eq!(body, "ops console", "the verified subject routes");

        // The plain listener: no certificate, and forged fields are removed all the same.
        let url = format!("http://{}/echo", sy.listener_addr("plain").await);
        let req = http::Request::get(&url)
            .header("x-client-cert-subject", "CN=client-7,O=Shop")
            .header("X_Client_Cert_Verified", "SUCCESS")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = client().request(req).await.unwrap();
        let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
        let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let h = seen["headers"].as_object().unwrap();
        assert!(
            !h.keys().any(|k| k.replace('_', "-").starts_with("x-client-cert-")),
            "{seen}"
        );
    }
}

bounded_test! {
    /// A reload that adds `client_auth` to a listener: a connection made before it, without
    /// a certificate, is answered 421 and closed — never served as if verified, nor with
    /// fields it could forge — and a new one goes through the new handshake.
    async fn a_connection_from_before_client_auth_changed_is_sent_to_reconnect() {
        let b = TestBackend::start("blue").await;
        let dir = tempfile::tempdir().unwrap();
        let pki = pki(dir.path());
        let base = blue_green(b.addr, b.addr);
        let tls = "[[listener.certificate]]\ncert = \"shop.pem\"\nkey = \"shop.key\"";
        let path = dir.path().join("sy.toml");
        std::fs::write(&path, base.clone().listener(tls).build()).unwrap();
        let sy = server_from_file(&path).await;
        let tcp = tokio::net::TcpStream::connect(sy.listener_addr("web").await).await.unwrap();
        let mut old = connector(&pki.server, None).connect(ServerName::try_from("shop.test").unwrap(), tcp).await.unwrap();
        let (head, _) = keep_alive_get(&mut old, "/echo", "").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");

        let mtls = format!("client_auth = {{ ca = \"clients-ca.pem\" }}\n{tls}");
        std::fs::write(&path, base.listener(&mtls).build()).unwrap();
        admin(&sy).post("/api/v1/reload", serde_json::json!({})).await.unwrap();
        let (head, _) = keep_alive_get(&mut old, "/echo", "x-client-cert-subject: CN=admin\r\n").await;
        assert!(head.starts_with("HTTP/1.1 421"), "{head}");
        assert!(head.contains("client_certificate_settings_changed"), "{head}");
        let mut rest = Vec::new();
        let _ = old.read_to_end(&mut rest).await;
        assert!(rest.is_empty(), "closed after the 421");

        let me = Some((pki.client_chain.as_slice(), &pki.client_key));
        let (seen, _) = echo(&sy, &pki.server, me, "").await;
        assert_eq!(seen.unwrap()["headers"]["x-client-cert-verified"], "SUCCESS");
        let (refused, _) = echo(&sy, &pki.server, None, "").await;
        assert!(refused.is_err(), "{refused:?}");
    }
}

/// A target that answers every request `200 ok` and closes, and hands over the raw bytes of
/// each POST it read (up to the end of a chunked body's trailer section).
async fn recording_target() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let complete = |b: &[u8]| {
                    let text = String::from_utf8_lossy(b);
                    match text.split_once("\r\n\r\n") {
                        Some((head, rest)) if head.starts_with("POST") => rest
                            .find("\r\n0\r\n")
                            .or(rest.starts_with("0\r\n").then_some(0))
                            .is_some_and(|at| rest[at..].ends_with("\r\n\r\n")),
                        Some(_) => true,
                        None => false,
                    }
                };
                while !complete(&buf) {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&buf).into_owned();
                if text.starts_with("POST") {
                    let _ = tx.send(text);
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    (addr, rx)
}

bounded_test! {
    /// Trailers are the client's word as much as its head: fields under the prefix that a
    /// client sends after a chunked body are removed too (on any listener once one has
    /// `client_auth`), and its other trailers go on to the target.
    async fn forged_certificate_fields_in_trailers_do_not_reach_the_target() {
        let (target, seen) = recording_target().await;
        forged_trailers_are_stripped_on_the_way_to(target, "", seen).await;
    }
}

/// A chunked upload to the plain listener of an instance with an mTLS listener, whose trailers
/// forge client-certificate fields beside a real `x-checksum`: the target (group `blue` of
/// `target`, with `group_extra`) gets the body and the checksum, and none of the forged fields.
async fn forged_trailers_are_stripped_on_the_way_to(
    target: std::net::SocketAddr,
    group_extra: &str,
    mut seen: tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let dir = tempfile::tempdir().unwrap();
    let _pki = pki(dir.path());
    let cfg = Cfg::new()
        .active("blue")
        .group_with("blue", &[target], group_extra)
        .listener("client_auth = { ca = \"clients-ca.pem\", mode = \"optional\" }\n[[listener.certificate]]\ncert = \"shop.pem\"\nkey = \"shop.key\"")
        .top("[[listener]]\nname = \"plain\"\nbind = \"127.0.0.1:0\"")
        .build();
    let sy = start_in(&cfg, dir.path()).await;
    let upload = "POST /upload HTTP/1.1\r\nhost: shop.test\r\ntransfer-encoding: chunked\r\n\
        trailer: x-checksum\r\n\r\n5\r\nhello\r\n0\r\nx-checksum: 42\r\n\
        x-client-cert-subject: CN=admin\r\nX_Client_Cert_Verified: SUCCESS\r\n\r\n";
    let mut client = send(sy.listener_addr("plain").await, upload.as_bytes()).await;
    let answer = read_answer(&mut client).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    let got = seen.recv().await.expect("the target saw the upload");
    let lower = got.to_ascii_lowercase();
    assert!(
        lower.contains("hello") && lower.contains("x-checksum: 42"),
        "{got}"
    );
    assert!(!lower.replace('_', "-").contains("x-client-cert-"), "{got}");
}

/// An HTTP/2 (h2c) target that sends what each request carried — its body and its
/// trailers, as `name: value` lines — to the returned receiver, and answers 200.
async fn recording_h2_target() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    use http_body_util::BodyExt;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let tx = tx.clone();
            let serve =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let got = req.into_body().collect().await?;
                        let trailers = got.trailers().cloned().unwrap_or_default();
                        let mut seen = String::from_utf8_lossy(&got.to_bytes()).into_owned();
                        for (name, value) in &trailers {
                            seen += &format!("\n{name}: {}", value.to_str().unwrap_or("?"));
                        }
                        let _ = tx.send(seen);
                        Ok::<_, hyper::Error>(http::Response::new(http_body_util::Empty::<
                            bytes::Bytes,
                        >::new()))
                    }
                });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(s), serve),
            );
        }
    });
    (addr, rx)
}

bounded_test! {
    /// The same with an HTTP/2 target, where trailers go as a HEADERS frame after the body
    /// (`upstream::BodySide` filters them on that path too).
    async fn forged_certificate_fields_in_trailers_do_not_reach_an_http2_target() {
        let (target, seen) = recording_h2_target().await;
        forged_trailers_are_stripped_on_the_way_to(target, "protocol = \"http2\"", seen).await;
    }
}
