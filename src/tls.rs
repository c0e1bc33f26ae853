//! TLS termination: certificates chosen by SNI, ALPN offering h2 and http/1.1; and TLS to
//! targets (`client`).

pub mod client;

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
}

/// A certificate chain with its key, loaded once; equal when the chains are (a changed file
/// is a changed listener for `plan`).
#[derive(Debug, Clone)]
pub struct LoadedKey(pub Arc<CertifiedKey>);

impl PartialEq for LoadedKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.cert == other.0.cert
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
    certs: Vec<(Vec<String>, Arc<CertifiedKey>)>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = hello.server_name().and_then(|sni| {
            let sni = sni.to_ascii_lowercase();
            self.certs
                .iter()
                .find(|(names, _)| names.iter().any(|n| name_matches(n, &sni)))
        });
        chosen.or(self.certs.first()).map(|(_, k)| k.clone())
    }
}

fn name_matches(pattern: &str, sni: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => sni.split_once('.').is_some_and(|(_, rest)| rest == suffix),
        None => pattern == sni,
    }
}

/// DNS names in the leaf certificate's subjectAltName, read with a minimal DER walk so that
/// SNI selection needs no X.509 parsing dependency.
fn dns_names(cert: &CertificateDer<'_>) -> Vec<String> {
    // subjectAltName OID 2.5.29.17 followed by the extension's OCTET STRING.
    const SAN_OID: &[u8] = &[0x06, 0x03, 0x55, 0x1d, 0x11];
    let der = cert.as_ref();
    let Some(pos) = der.windows(SAN_OID.len()).position(|w| w == SAN_OID) else {
        return Vec::new();
    };
    let mut rest = &der[pos + SAN_OID.len()..];
    // Optional `critical` BOOLEAN.
    if rest.first() == Some(&0x01) {
        rest = rest.get(3..).unwrap_or(&[]);
    }
    let Some((0x04, octets, _)) = der_item(rest) else {
        return Vec::new();
    };
    let Some((0x30, mut names, _)) = der_item(octets) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    while let Some((tag, value, next)) = der_item(names) {
        if tag == 0x82 {
            out.push(String::from_utf8_lossy(value).to_ascii_lowercase());
        }
        names = next;
    }
    out
}

/// A certificate that expires within this many days is reported (`status`, `/metrics`).
pub const EXPIRES_SOON_DAYS: i64 = 30;

/// What `status` says of a listener's certificate: the names it covers and when it expires.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CertificateStatus {
    pub cert: String,
    pub names: Vec<String>,
    /// Unix seconds; absent when the certificate's validity could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<i64>,
    /// It expires within [`EXPIRES_SOON_DAYS`] (or has expired).
    #[serde(default)]
    pub expires_soon: bool,
}

impl CertificateStatus {
    pub fn of(path: &Path, key: &LoadedKey, now_s: i64) -> CertificateStatus {
        let leaf = key.0.cert.first();
        let not_after = leaf.and_then(not_after);
        CertificateStatus {
            cert: path.display().to_string(),
            names: leaf.map(dns_names).unwrap_or_default(),
            not_after,
            expires_soon: not_after.is_some_and(|t| t - now_s < EXPIRES_SOON_DAYS * 86_400),
        }
    }
}

/// When a certificate stops being valid (its `notAfter`), in unix seconds, read with the
/// same minimal DER walk: Certificate → tbsCertificate → [version], serial, signature,
/// issuer, validity → notAfter (UTCTime or GeneralizedTime).
pub fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    let (0x30, cert, _) = der_item(cert.as_ref())? else {
        return None;
    };
    let (0x30, tbs, _) = der_item(cert)? else {
        return None;
    };
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = der_item(rest)?.2;
    }
    for _ in 0..3 {
        rest = der_item(rest)?.2; // serial, signature, issuer
    }
    let (0x30, validity, _) = der_item(rest)? else {
        return None;
    };
    let after = der_item(der_item(validity)?.2)?;
    let text = std::str::from_utf8(after.1).ok()?;
    let (year, rest) = match after.0 {
        0x17 => {
            let yy: i64 = text.get(..2)?.parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, text.get(2..)?)
        }
        0x18 => (text.get(..4)?.parse().ok()?, text.get(4..)?),
        _ => return None,
    };
    let field = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (month, day) = (field(0)?, field(2)?);
    let (h, m, sec) = (field(4)?, field(6)?, field(8)?);
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + sec)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (tag, value, rest) of one DER item.
fn der_item(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let first = *b.get(1)? as usize;
    let (len, hdr) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let value = b.get(hdr..hdr + len)?;
    Some((tag, value, &b[hdr + len..]))
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
/// building it reads no file) under its policy: versions, suites, groups, ALPN.
pub fn server_config<'a>(
    keys: impl IntoIterator<Item = &'a LoadedKey>,
    policy: &Policy,
) -> Arc<rustls::ServerConfig> {
    let loaded = keys
        .into_iter()
        .map(|k| {
            let names = k.0.cert.first().map(dns_names).unwrap_or_default();
            (names, k.0.clone())
        })
        .collect();
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
    let mut config = builder
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { certs: loaded }));
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
    fn a_certificates_not_after_is_read_from_its_der() {
        let mut params = rcgen_params();
        params.not_after = rcgen::date_time_ymd(2031, 7, 9);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        // 2031-07-09T00:00:00Z
        assert_eq!(not_after(cert.der()), Some(1_941_321_600));
        params.not_after = rcgen::date_time_ymd(2061, 2, 28); // GeneralizedTime after 2049
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(not_after(cert.der()), Some(2_876_774_400));
        assert_eq!(not_after(&CertificateDer::from(vec![0x30, 0x00])), None);
        assert_eq!(days_from_civil(1970, 1, 1), 0);
    }

    fn rcgen_params() -> rcgen::CertificateParams {
        rcgen::CertificateParams::new(vec!["shop.test".to_string()]).unwrap()
    }

    #[test]
    fn wildcard_names_cover_one_label() {
        assert!(name_matches("*.example.com", "a.example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(name_matches("api.example.com", "api.example.com"));
    }
}
