//! TLS to targets (a group's `tls`): whom to trust (a CA bundle, the system's roots, or —
//! only when named `insecure_skip_verify` — nobody checked), which name to send and verify
//! (SNI: the configured one or the target's host), a client certificate for targets that
//! ask for one (mTLS), and ALPN by the group's protocol (`h2` or `http/1.1`).
//!
//! One `rustls::ClientConfig` per group, built once with the configuration and shared by
//! every connection to its targets: its session cache is what lets a new connection resume
//! an earlier session (an abbreviated handshake) instead of doing a full one.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;

use super::{LoadedKey, TlsError};
use crate::bounded::{read_file, MAX_FILE_BYTES};

/// Whom a group's connections trust.
#[derive(Debug, Clone)]
pub enum Roots {
    /// The certificates of a PEM bundle (a private CA).
    Bundle(Vec<CertificateDer<'static>>),
    /// The operating system's trusted roots.
    System(Arc<Vec<CertificateDer<'static>>>),
    /// No verification of the target's certificate (its signatures on the handshake are
    /// still checked): for targets with self-signed certificates, named as such in the file.
    Unverified,
}

/// Why a client could not be built (the key it is reported at follows from the variant).
#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    #[error("not a server name: \"{0}\"")]
    Sni(String),
    #[error("a CA certificate is not usable: {0}")]
    Ca(String),
}

/// A group's TLS client, ready to connect.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    /// The name sent as SNI and verified, when configured; else the target's host.
    sni: Option<ServerName<'static>>,
    /// SHA-256 of everything it was built from: two are equal when that is.
    fingerprint: String,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("sni", &self.sni)
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

impl PartialEq for ClientTls {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }
}

impl Eq for ClientTls {}

impl serde::Serialize for ClientTls {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.fingerprint)
    }
}

impl std::hash::Hash for ClientTls {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.fingerprint.hash(state);
    }
}

impl ClientTls {
    /// A client for `roots`, sending `sni` (else each target's host), presenting `client`
    /// when the target asks for a certificate, offering `h2` or `http/1.1` by ALPN.
    pub fn new(
        roots: &Roots,
        sni: Option<&str>,
        client: Option<&LoadedKey>,
        h2: bool,
    ) -> Result<ClientTls, ClientTlsError> {
        let sni = sni
            .map(|s| ServerName::try_from(s.to_string()).map_err(|_| ClientTlsError::Sni(s.into())))
            .transpose()?;
        let provider = Arc::new(super::provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the provider supports the default protocol versions");
        let mut hash = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let builder = match roots {
            Roots::Bundle(certs) => {
                hash.update(b"bundle");
                builder.with_root_certificates(store(certs, &mut hash)?)
            }
            Roots::System(certs) => {
                hash.update(b"system");
                builder.with_root_certificates(store(certs, &mut hash)?)
            }
            Roots::Unverified => {
                hash.update(b"unverified");
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
            }
        };
        let mut config = match client {
            Some(k) => {
                for c in &k.0.cert {
                    hash.update(c.as_ref());
                }
                builder.with_client_cert_resolver(Arc::new(Always(k.0.clone())))
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![if h2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        hash.update(if h2 { b"h2" as &[u8] } else { b"h1" });
        if let Some(s) = &sni {
            hash.update(s.to_str().as_bytes());
        }
        let fingerprint = hash
            .finish()
            .as_ref()
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(ClientTls {
            config: Arc::new(config),
            sni,
            fingerprint,
        })
    }

    /// A short digest of what it was built from (shown by `plan`: a changed CA file is a
    /// changed group).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The TLS handshake over a connected `tcp` to the target at `addr` (`host:port`).
    pub async fn connect(
        &self,
        addr: &str,
        tcp: TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = match &self.sni {
            Some(n) => n.clone(),
            None => host_name(addr)?,
        };
        tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await
    }
}

/// The name of the target's host: a DNS name, or an IP address (verified against the
/// certificate's IP addresses; rustls sends no SNI for one).
fn host_name(addr: &str) -> std::io::Result<ServerName<'static>> {
    let host = match addr.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
        None => addr,
    };
    ServerName::try_from(host.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{host}: {e}")))
}

fn store(
    certs: &[CertificateDer<'static>],
    hash: &mut aws_lc_rs::digest::Context,
) -> Result<RootCertStore, ClientTlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs {
        hash.update(c.as_ref());
        roots
            .add(c.clone())
            .map_err(|e| ClientTlsError::Ca(e.to_string()))?;
    }
    Ok(roots)
}

/// Reads a PEM bundle of CA certificates. Blocking (the configuration's load step).
pub fn load_bundle(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let shown = path.display().to_string();
    let err = |reason: String| TlsError::Cert {
        path: shown.clone(),
        reason,
    };
    let pem = read_file(path, MAX_FILE_BYTES).map_err(|e| err(e.to_string()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

/// The system's trusted roots, read once per process. Blocking (the load step).
pub fn system_roots() -> Result<Arc<Vec<CertificateDer<'static>>>, TlsError> {
    static ROOTS: OnceLock<Arc<Vec<CertificateDer<'static>>>> = OnceLock::new();
    if let Some(r) = ROOTS.get() {
        return Ok(r.clone());
    }
    let found = rustls_native_certs::load_native_certs();
    if found.certs.is_empty() {
        return Err(TlsError::Cert {
            path: "the system's trusted roots".into(),
            reason: match found.errors.first() {
                Some(e) => format!("none found ({e}); name a bundle with `ca`"),
                None => "none found; name a bundle with `ca`".into(),
            },
        });
    }
    Ok(ROOTS.get_or_init(|| Arc::new(found.certs)).clone())
}

/// The client certificate, whatever the target's hints (it is the only one there is).
#[derive(Debug)]
struct Always(Arc<CertifiedKey>);

impl ResolvesClientCert for Always {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Accepts any certificate chain, but checks the handshake's signatures with it (so the
/// target still proves it holds the key of the certificate it sent).
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_of_an_address_is_its_server_name() {
        assert_eq!(
            host_name("api.internal:8443").unwrap(),
            ServerName::try_from("api.internal").unwrap()
        );
        assert!(matches!(
            host_name("127.0.0.1:443").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            host_name("[::1]:443").unwrap(),
            ServerName::IpAddress(_)
        ));
    }

    #[test]
    fn clients_built_from_the_same_settings_are_equal_and_differ_by_alpn_or_sni() {
        let a = ClientTls::new(&Roots::Unverified, Some("x.internal"), None, false).unwrap();
        let b = ClientTls::new(&Roots::Unverified, Some("x.internal"), None, false).unwrap();
        let h2 = ClientTls::new(&Roots::Unverified, Some("x.internal"), None, true).unwrap();
        let other = ClientTls::new(&Roots::Unverified, Some("y.internal"), None, false).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, h2);
        assert_ne!(a, other);
        assert!(ClientTls::new(&Roots::Unverified, Some("bad name!"), None, false).is_err());
    }
}
