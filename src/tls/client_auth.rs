//! Client certificates at the edge (mTLS, a listener's `client_auth`): which clients a
//! listener accepts (a certificate chaining to its CA bundle — required, or optional), and
//! what a verified certificate tells the target, in request fields named by a prefix, as
//! ALB's `X-Amzn-Mtls-Clientcert-*` do. Every field under any listener's prefix that a
//! client sent (`_` taken as `-`, as CGI-style targets read them) is removed first, on every
//! request of every listener, before routing reads the request, whether or not a
//! certificate was presented: a target — and a route — may trust those fields only because
//! switchyard wrote them. A connection verified under settings its listener no longer has
//! (a reload added `client_auth`, changed its CA, mode or prefix) is answered 421 and
//! closed, so that the client comes back through the listener's present handshake.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use rustls::server::danger::ClientCertVerifier;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use serde::Serialize;

use super::CertFacts;

/// The prefix of the fields sent upstream when the file names none.
pub const DEFAULT_PREFIX: &str = "x-client-cert-";

/// One fact about the client's certificate, sent upstream as `prefix + name()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Field {
    /// `SUCCESS` with a verified certificate, `NONE` without one (optional mode).
    Verified,
    Subject,
    Issuer,
    SerialNumber,
    /// The subject alternative names.
    San,
    /// SHA-256 of the leaf certificate's DER, lower-case hex.
    Fingerprint,
    Validity,
    /// The leaf certificate as URL-encoded PEM (ALB's `-Leaf`).
    Leaf,
}

impl Field {
    pub const ALL: [Field; 8] = [
        Field::Verified,
        Field::Subject,
        Field::Issuer,
        Field::SerialNumber,
        Field::San,
        Field::Fingerprint,
        Field::Validity,
        Field::Leaf,
    ];

    /// Sent when the file lists none: everything but the (long) leaf.
    pub const DEFAULT: [Field; 7] = [
        Field::Verified,
        Field::Subject,
        Field::Issuer,
        Field::SerialNumber,
        Field::San,
        Field::Fingerprint,
        Field::Validity,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Field::Verified => "verified",
            Field::Subject => "subject",
            Field::Issuer => "issuer",
            Field::SerialNumber => "serial-number",
            Field::San => "san",
            Field::Fingerprint => "fingerprint",
            Field::Validity => "validity",
            Field::Leaf => "leaf",
        }
    }

    pub fn parse(s: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.name() == s)
    }
}

/// A listener's `client_auth`, validated: the CA bundle as read by the load step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClientAuth {
    pub ca: PathBuf,
    /// The bundle's certificates (written out by a fingerprint: a rewritten file is a change).
    #[serde(serialize_with = "bundle")]
    pub roots: Vec<CertificateDer<'static>>,
    /// Refuse a handshake without a client certificate; else accept it and say `NONE`.
    pub required: bool,
    /// Lower-case; the fields are this plus [`Field::name`].
    pub header_prefix: String,
    pub fields: Vec<Field>,
    /// Of all the above: what a connection was verified under, compared per request.
    #[serde(skip)]
    pub fingerprint: u64,
}

fn bundle<S: serde::Serializer>(v: &[CertificateDer<'static>], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{} certificates, sha256 {}", v.len(), {
        let mut d = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        for c in v {
            d.update(c.as_ref());
        }
        hex(d.finish().as_ref())
    }))
}

impl ClientAuth {
    pub fn new(
        ca: PathBuf,
        roots: Vec<CertificateDer<'static>>,
        required: bool,
        header_prefix: String,
        fields: Vec<Field>,
    ) -> ClientAuth {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&ca, &roots, required, &header_prefix).hash(&mut h);
        fields.iter().map(|f| f.name()).for_each(|n| n.hash(&mut h));
        ClientAuth {
            ca,
            roots,
            required,
            header_prefix,
            fields,
            fingerprint: h.finish(),
        }
    }

    /// The verifier for the listener's server config. Checked when the configuration was
    /// (`check`), so this cannot fail on a validated one.
    pub fn verifier(&self) -> Result<Arc<dyn ClientCertVerifier>, String> {
        let mut store = RootCertStore::empty();
        for (i, c) in self.roots.iter().enumerate() {
            store.add(c.clone()).map_err(|e| {
                format!(
                    "certificate {} of the bundle is not a usable CA: {e}",
                    i + 1
                )
            })?;
        }
        let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(store),
            Arc::new(super::provider()),
        );
        let builder = if self.required {
            builder
        } else {
            builder.allow_unauthenticated()
        };
        builder.build().map_err(|e| e.to_string())
    }

    /// What one connection sends upstream on each of its requests: computed once, after
    /// the handshake, from the certificate rustls verified (`peer`: its chain, if any).
    pub fn for_connection(&self, peer: Option<&[CertificateDer<'_>]>) -> PeerFields {
        let leaf = peer.and_then(<[_]>::first);
        let facts = leaf.and_then(CertFacts::of);
        let mut values = Vec::with_capacity(self.fields.len());
        for &f in &self.fields {
            let value = match (f, leaf, &facts) {
                (Field::Verified, None, _) => Some("NONE".to_string()),
                (Field::Verified, Some(_), _) => Some("SUCCESS".to_string()),
                (Field::Fingerprint, Some(c), _) => Some(hex(aws_lc_rs::digest::digest(
                    &aws_lc_rs::digest::SHA256,
                    c.as_ref(),
                )
                .as_ref())),
                (Field::Leaf, Some(c), _) => Some(url_encoded_pem(c.as_ref())),
                (Field::Subject, _, Some(x)) => Some(x.subject.clone()),
                (Field::Issuer, _, Some(x)) => Some(x.issuer.clone()),
                (Field::SerialNumber, _, Some(x)) => Some(x.serial.clone()),
                (Field::San, _, Some(x)) if !x.alt_names.is_empty() => Some(x.alt_names.clone()),
                (Field::Validity, _, Some(x)) => Some(x.validity.clone()),
                _ => None,
            };
            let name =
                HeaderName::from_bytes(format!("{}{}", self.header_prefix, f.name()).as_bytes());
            if let (Some(v), Ok(name)) = (value, name) {
                if let Ok(v) = HeaderValue::from_str(&v) {
                    values.push((name, v));
                }
            }
        }
        PeerFields {
            verified_under: self.fingerprint,
            values,
        }
    }
}

/// A verifier that refuses every client: what a listener gets if its CA bundle ever failed
/// to give one after the configuration was checked — never one that lets every client in.
pub fn refuse_all() -> Arc<dyn ClientCertVerifier> {
    Arc::new(RefuseAll(super::provider()))
}

#[derive(Debug)]
struct RefuseAll(rustls::crypto::CryptoProvider);

impl ClientCertVerifier for RefuseAll {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Err(rustls::Error::General("no usable client CA bundle".into()))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
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
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A connection's client-certificate fields, and the settings it was verified under.
#[derive(Debug)]
pub struct PeerFields {
    verified_under: u64,
    values: Vec<(HeaderName, HeaderValue)>,
}

/// The client-certificate part of a snapshot: every listener's prefix (removed on every
/// listener) and what each mTLS listener's connections must have been verified under.
/// Present only when some listener has `client_auth`: other configurations pay one branch.
#[derive(Debug)]
pub struct ClientCerts {
    /// Lower-case, `_` as `-`.
    prefixes: Vec<Box<[u8]>>,
    by_listener: HashMap<String, u64>,
}

/// A request on a connection verified under settings its listener no longer has.
#[derive(Debug)]
pub struct SettingsChanged;

impl ClientCerts {
    pub fn of<'a>(
        listeners: impl IntoIterator<Item = (&'a str, &'a ClientAuth)>,
    ) -> Option<ClientCerts> {
        let mut out = ClientCerts {
            prefixes: Vec::new(),
            by_listener: HashMap::new(),
        };
        for (name, auth) in listeners {
            let prefix: Box<[u8]> = normalized(auth.header_prefix.as_bytes()).collect();
            if !out.prefixes.contains(&prefix) {
                out.prefixes.push(prefix);
            }
            out.by_listener.insert(name.to_string(), auth.fingerprint);
        }
        (!out.by_listener.is_empty()).then_some(out)
    }

    /// Removes every field under a prefix the client sent; on an mTLS listener, sets the
    /// connection's — or refuses a connection verified under other settings (or none).
    pub fn apply(
        &self,
        listener: &str,
        conn: Option<&PeerFields>,
        h: &mut HeaderMap,
    ) -> Result<(), SettingsChanged> {
        self.strip(h);
        let Some(under) = self.by_listener.get(listener) else {
            return Ok(());
        };
        match conn {
            Some(f) if f.verified_under == *under => {
                for (k, v) in &f.values {
                    h.insert(k.clone(), v.clone());
                }
                Ok(())
            }
            _ => Err(SettingsChanged),
        }
    }

    /// Removes every field under any listener's prefix: from a request's head, and from the
    /// trailers a client sends after its body.
    pub fn strip(&self, h: &mut HeaderMap) {
        let sent: Vec<HeaderName> = h
            .keys()
            .filter(|k| {
                let name = k.as_str().as_bytes();
                self.prefixes.iter().any(|p| {
                    name.len() >= p.len() && normalized(&name[..p.len()]).eq(p.iter().copied())
                })
            })
            .cloned()
            .collect();
        for k in sent {
            h.remove(k);
        }
    }
}

/// A field name's bytes as prefixes are compared: lower-case (field names already are),
/// `_` as `-`.
fn normalized(b: &[u8]) -> impl Iterator<Item = u8> + '_ {
    b.iter().map(|c| {
        if *c == b'_' {
            b'-'
        } else {
            c.to_ascii_lowercase()
        }
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// PEM with everything but RFC 3986's unreserved characters percent-encoded.
fn url_encoded_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    let mut out = String::with_capacity(pem.len() * 2);
    for b in pem.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(fields: &[Field]) -> ClientAuth {
        ClientAuth::new(
            "ca.pem".into(),
            Vec::new(),
            false,
            "x-mtls-".into(),
            fields.to_vec(),
        )
    }

    #[test]
    fn client_sent_fields_under_the_prefix_are_replaced_by_the_connections() {
        let c = rcgen::generate_simple_self_signed(vec!["client.test".into()]).unwrap();
        let all = auth(&Field::ALL);
        let certs = ClientCerts::of([("edge", &all)]).unwrap();
        let fields = all.for_connection(Some(&[c.cert.der().clone()]));
        let mut h = HeaderMap::new();
        h.insert("x-mtls-subject", HeaderValue::from_static("CN=admin"));
        h.insert("x-mtls-made-up", HeaderValue::from_static("1"));
        h.insert("x_mtls_role", HeaderValue::from_static("root"));
        h.insert("x-other", HeaderValue::from_static("kept"));
        certs.apply("edge", Some(&fields), &mut h).unwrap();
        assert!(
            h.get("x_mtls_role").is_none(),
            "underscores are dashes to CGI-style targets"
        );
        assert_eq!(h["x-mtls-subject"], "CN=rcgen self signed cert");
        assert_eq!(h["x-mtls-verified"], "SUCCESS");
        assert_eq!(h["x-mtls-san"], "DNS:client.test");
        assert!(h.get("x-mtls-made-up").is_none());
        assert_eq!(h["x-other"], "kept");
        let fp = h["x-mtls-fingerprint"].to_str().unwrap();
        assert_eq!(fp.len(), 64);
        let leaf = h["x-mtls-leaf"].to_str().unwrap();
        assert!(
            leaf.starts_with("-----BEGIN%20CERTIFICATE-----%0A"),
            "{leaf}"
        );

        // No certificate (optional mode): only `verified`, and the client's copies still go.
        let default = auth(&Field::DEFAULT);
        let certs = ClientCerts::of([("edge", &default)]).unwrap();
        let none = default.for_connection(None);
        let mut h = HeaderMap::new();
        h.insert("x-mtls-subject", HeaderValue::from_static("CN=admin"));
        certs.apply("edge", Some(&none), &mut h).unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-mtls-verified"], "NONE");

        // Another listener: removed, nothing set. Verified under other settings, or never:
        // refused.
        let mut h = HeaderMap::new();
        h.insert("x-mtls-subject", HeaderValue::from_static("CN=admin"));
        certs.apply("plain", None, &mut h).unwrap();
        assert!(h.is_empty());
        assert!(certs.apply("edge", None, &mut h).is_err());
        assert!(
            certs.apply("edge", Some(&fields), &mut h).is_err(),
            "verified under ALL"
        );
    }
}
