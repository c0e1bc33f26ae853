//! TLS termination: certificates chosen by SNI, ALPN offering h2 and http/1.1; and TLS to
//! targets (`client`).

pub mod client;
pub mod client_auth;
mod der;
pub mod ocsp;

use der::dns_names;
pub use der::{not_after, CertFacts};

use std::path::Path;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::bounded::{read_file, MAX_FILE_BYTES};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate {path}: {reason}")]
    Cert { path: String, reason: String },
    #[error("key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("OCSP response {path}: {reason}")]
    Ocsp { path: String, reason: String },
}

/// A certificate chain with its key, loaded once; equal when the chains are (a changed file
/// is a changed listener for `plan`).
#[derive(Debug, Clone)]
pub struct LoadedKey(pub Arc<CertifiedKey>);

impl PartialEq for LoadedKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.cert == other.0.cert && self.0.ocsp == other.0.ocsp
    }
}

impl LoadedKey {
    /// The same key stapling the OCSP response in `path` (DER), checked against the leaf
    /// (see `ocsp::check`). Blocking, like [`load_certified_key`].
    pub fn with_ocsp(self, path: Option<&Path>) -> Result<LoadedKey, TlsError> {
        let Some(path) = path else {
            return Ok(self);
        };
        let err = |reason: String| TlsError::Ocsp {
            path: path.display().to_string(),
            reason,
        };
        let der = read_file(path, MAX_FILE_BYTES).map_err(|e| err(e.to_string()))?;
        let leaf = self
            .0
            .cert
            .first()
            .ok_or_else(|| err("no certificate".into()))?;
        let now_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let stapled = ocsp::check(&der, leaf).map_err(err)?;
        if stapled.next_update.is_some_and(|t| t <= now_s) {
            // Kept (status shows it), never stapled (see `Served`): a failed fetch of a
            // fresh response must not stop a start or a reload.
            tracing::warn!(path = %path.display(), "the OCSP response is stale: not stapled until a fresh one is read");
        }
        let mut key = CertifiedKey::clone(&self.0);
        key.ocsp = Some(der);
        Ok(LoadedKey(Arc::new(key)))
    }

    /// When the stapled OCSP response's `nextUpdate` is, if one is stapled and says.
    pub fn ocsp_next_update(&self) -> Option<i64> {
        let (der, leaf) = (self.0.ocsp.as_ref()?, self.0.cert.first()?);
        ocsp::check(der, leaf).ok()?.next_update
    }
}

/// Reads and checks a certificate chain and its key. Blocking: only regular files of
/// bounded size are read (see `bounded::file`), and callers on the runtime use
/// `spawn_blocking` (the configuration's load step, `config::load`, is the one caller).
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<LoadedKey, TlsError> {
    let cert_path = cert.display().to_string();
    let key_path = key.display().to_string();
    let cert_pem = read_file(cert, MAX_FILE_BYTES).map_err(|e| TlsError::Cert {
        path: cert_path.clone(),
        reason: e.to_string(),
    })?;
    let key_pem = read_file(key, MAX_FILE_BYTES).map_err(|e| TlsError::Key {
        path: key_path.clone(),
        reason: e.to_string(),
    })?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Cert {
            path: cert_path.clone(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Cert {
            path: cert_path,
            reason: "no PEM certificate in the file".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Key {
        path: key_path.clone(),
        reason: e.to_string(),
    })?;
    let loaded = CertifiedKey::from_der(certs, key, &provider()).map_err(|e| TlsError::Key {
        path: key_path,
        reason: e.to_string(),
    })?;
    Ok(LoadedKey(Arc::new(loaded)))
}

/// Picks a certificate by the client's SNI name among the names each certificate covers
/// (exact or one-label wildcard), falling back to the first certificate.
#[derive(Debug)]
struct SniResolver {
    certs: Vec<Served>,
}

/// One certificate as handshakes get it: with its OCSP response until that goes stale,
/// then without (a stale staple is worse than none: strict clients refuse it).
#[derive(Debug)]
struct Served {
    names: Vec<String>,
    key: Arc<CertifiedKey>,
    /// The same without its staple, and from when (unix seconds) it is served instead.
    unstapled: Option<(Arc<CertifiedKey>, i64)>,
}

impl Served {
    fn of(k: &LoadedKey) -> Served {
        let unstapled = k.ocsp_next_update().map(|t| {
            let mut bare = CertifiedKey::clone(&k.0);
            bare.ocsp = None;
            (Arc::new(bare), t)
        });
        Served {
            names: k.0.cert.first().map(dns_names).unwrap_or_default(),
            key: k.0.clone(),
            unstapled,
        }
    }

    fn key_at(&self, now_s: i64) -> Arc<CertifiedKey> {
        match &self.unstapled {
            Some((bare, stale_from)) if now_s >= *stale_from => bare.clone(),
            _ => self.key.clone(),
        }
    }
}

impl SniResolver {
    fn pick(&self, sni: Option<&str>, now_s: i64) -> Option<Arc<CertifiedKey>> {
        let chosen = sni.and_then(|sni| {
            let sni = sni.to_ascii_lowercase();
            self.certs
                .iter()
                .find(|c| c.names.iter().any(|n| name_matches(n, &sni)))
        });
        chosen.or(self.certs.first()).map(|c| c.key_at(now_s))
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name(), crate::sys::unix_ms() / 1000)
    }
}

fn name_matches(pattern: &str, sni: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => sni.split_once('.').is_some_and(|(_, rest)| rest == suffix),
        None => pattern == sni,
    }
}

/// A certificate that expires sooner than this is reported (`status`), unless
/// `[certificates] warn_before` says otherwise.
pub const EXPIRES_SOON: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

/// What `status` says of a listener's certificate: the names it covers and when it expires.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CertificateStatus {
    pub cert: String,
    pub names: Vec<String>,
    /// Unix seconds; absent when the certificate's validity could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<i64>,
    /// It expires within `[certificates] warn_before` (or has expired).
    #[serde(default)]
    pub expires_soon: bool,
    /// When the stapled OCSP response goes stale (unix seconds), if one is stapled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ocsp_next_update: Option<i64>,
}

impl CertificateStatus {
    pub fn of(
        path: &Path,
        key: &LoadedKey,
        now_s: i64,
        warn_before: std::time::Duration,
    ) -> CertificateStatus {
        let leaf = key.0.cert.first();
        let not_after = leaf.and_then(not_after);
        CertificateStatus {
            cert: path.display().to_string(),
            names: leaf.map(dns_names).unwrap_or_default(),
            not_after,
            expires_soon: not_after.is_some_and(|t| t - now_s < warn_before.as_secs() as i64),
            ocsp_next_update: key.ocsp_next_update(),
        }
    }
}

/// A listener's TLS policy, as ALB names its parts: the lowest version, the cipher suites
/// and key exchange groups (rustls's names, in order of preference; only secure ones exist
/// in it), and the application protocols offered by ALPN.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Policy {
    /// TLS 1.3 only; else 1.2 and 1.3.
    pub tls13_only: bool,
    /// Empty: all the provider's, the client's preference deciding; else in this order of
    /// preference, the server's.
    pub cipher_suites: Vec<String>,
    /// Empty: all the provider's, in its order.
    pub groups: Vec<String>,
    pub alpn: Vec<String>,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            tls13_only: false,
            cipher_suites: Vec::new(),
            groups: Vec::new(),
            alpn: vec!["h2".into(), "http/1.1".into()],
        }
    }
}

/// The cipher suites and key exchange groups the provider has, by the names a policy uses
/// (rustls's: `TLS13_AES_128_GCM_SHA256`, `X25519`, `secp256r1`), each suite with whether
/// it is a TLS 1.3 one.
pub fn suites() -> Vec<(&'static str, bool)> {
    provider()
        .cipher_suites
        .into_iter()
        .filter_map(|s| Some((s.suite().as_str()?, s.tls13().is_some())))
        .collect()
}

pub fn groups() -> Vec<&'static str> {
    provider()
        .kx_groups
        .into_iter()
        .filter_map(|g| g.name().as_str())
        .collect()
}

/// The crypto provider of every TLS config — listeners, targets, loaded keys, the tests'
/// clients — chosen here alone, on measurement (`bench/tls.sh`): with aws-lc-rs a full
/// RSA-2048 handshake costs about two thirds of the CPU it did with `ring` (the one figure
/// that was behind nginx and HAProxy), RSA-3072 less than half, ECDSA a little less. It
/// builds from crates with only a C compiler on x86_64 and aarch64 Linux and macOS (its cc
/// builder and pregenerated bindings: no cmake, Go or libclang). Its default key exchange
/// groups end with the hybrid post-quantum X25519MLKEM768, after X25519.
pub fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

/// The provider a policy allows: its suites and groups in the policy's order (all, in the
/// provider's, when it names none). Names were checked when the configuration was.
fn allowed(policy: &Policy) -> rustls::crypto::CryptoProvider {
    let mut p = provider();
    let named = |n: Option<&str>, list: &[String]| {
        n.and_then(|n| list.iter().position(|x| x.eq_ignore_ascii_case(n)))
    };
    if !policy.cipher_suites.is_empty() {
        let mut kept: Vec<_> = p
            .cipher_suites
            .iter()
            .filter_map(|s| Some((named(s.suite().as_str(), &policy.cipher_suites)?, *s)))
            .collect();
        kept.sort_by_key(|(i, _)| *i);
        p.cipher_suites = kept.into_iter().map(|(_, s)| s).collect();
    }
    if !policy.groups.is_empty() {
        let mut kept: Vec<_> = p
            .kx_groups
            .iter()
            .filter_map(|g| Some((named(g.name().as_str(), &policy.groups)?, *g)))
            .collect();
        kept.sort_by_key(|(i, _)| *i);
        p.kx_groups = kept.into_iter().map(|(_, g)| g).collect();
    }
    p
}

/// A server config for a listener's certificates (loaded with the configuration, so that
/// building it reads no file) under its policy: versions, suites, groups, ALPN; and which
/// client certificates it asks for and accepts.
pub fn server_config<'a>(
    keys: impl IntoIterator<Item = &'a LoadedKey>,
    policy: &Policy,
    client_auth: Option<&client_auth::ClientAuth>,
) -> Arc<rustls::ServerConfig> {
    let loaded = keys.into_iter().map(Served::of).collect();
    let versions: &[&rustls::SupportedProtocolVersion] = if policy.tls13_only {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let builder = rustls::ServerConfig::builder_with_provider(Arc::new(allowed(policy)))
        .with_protocol_versions(versions)
        // Checked with the configuration: a suite for a version allowed, a group.
        .unwrap_or_else(|_| {
            rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
                .with_safe_default_protocol_versions()
                .expect("the provider supports the default protocol versions")
        });
    // Checked with the configuration (`config::client_auth`): the bundle gives a verifier.
    // Were it ever not so, every client would be refused, never every one let in.
    let builder = match client_auth {
        Some(a) => builder
            .with_client_cert_verifier(a.verifier().unwrap_or_else(|_| client_auth::refuse_all())),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(SniResolver { certs: loaded }));
    config.alpn_protocols = policy.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    // A policy that lists suites orders them (as ALB's do); without one the client's
    // preference stands.
    config.ignore_client_order = !policy.cipher_suites.is_empty();
    Arc::new(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_ocsp_response_is_no_longer_stapled() {
        let c = rcgen::generate_simple_self_signed(vec!["shop.test".into()]).unwrap();
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(c.signing_key.serialize_der().into());
        let provider = provider();
        let mut certified =
            CertifiedKey::from_der(vec![c.cert.der().clone()], key, &provider).unwrap();
        let (serial, issuer) = der::serial_and_issuer(c.cert.der()).unwrap();
        // nextUpdate 2027-01-20T00:00:00Z = 1_800_403_200
        let response = ocsp::tests::response(serial, issuer, 0x80, Some("20270120000000Z"));
        certified.ocsp = Some(response.clone());
        let resolver = SniResolver {
            certs: vec![Served::of(&LoadedKey(Arc::new(certified)))],
        };
        let before = resolver.pick(Some("shop.test"), 1_800_403_199).unwrap();
        assert_eq!(before.ocsp.as_deref(), Some(&response[..]));
        let after = resolver.pick(None, 1_800_403_200).unwrap();
        assert_eq!(after.ocsp, None, "stale from its nextUpdate on");
        assert_eq!(after.cert, before.cert);
    }

    #[test]
    fn wildcard_names_cover_one_label() {
        assert!(name_matches("*.example.com", "a.example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(name_matches("api.example.com", "api.example.com"));
    }
}
