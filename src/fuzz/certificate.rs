//! What switchyard reads from certificates and OCSP responses with its own DER walk
//! (`tls::der`, `tls::ocsp`): the listener certificate's names and expiry, a verified client
//! certificate's facts sent upstream, a stapled response's check. Their inputs are the
//! operator's files or certificates rustls verified, but a walk over bytes must never
//! panic, and what goes into a request field must be a valid field value.

use rustls_pki_types::CertificateDer;

use crate::tls::client_auth::{ClientAuth, ClientCerts, Field};
use crate::tls::{ocsp, CertFacts};

/// The input is a two-byte big-endian length, that many bytes of certificate DER, and the
/// rest as an OCSP response about it.
pub fn certificate(data: &[u8]) {
    let n = data
        .get(..2)
        .map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
    let rest = data.get(2..).unwrap_or_default();
    let (cert, response) = rest.split_at(n.min(rest.len()));
    let cert = CertificateDer::from(cert.to_vec());
    let facts = CertFacts::of(&cert);
    if facts.is_some() {
        assert!(
            crate::tls::not_after(&cert).is_some(),
            "facts read without a validity"
        );
    }
    let auth = ClientAuth::new(
        "ca.pem".into(),
        Vec::new(),
        true,
        "x-client-cert-".into(),
        Field::ALL.to_vec(),
    );
    let sent = auth.for_connection(Some(std::slice::from_ref(&cert)));
    let certs = ClientCerts::of([("edge", &auth)]).expect("one listener");
    let mut h = http::HeaderMap::new();
    certs
        .apply("edge", Some(&sent), &mut h)
        .expect("verified under these settings");
    if let Some(f) = facts {
        // Every fact made it into its field: none was dropped as an invalid value.
        assert_eq!(h["x-client-cert-subject"], f.subject.as_str());
        assert_eq!(h["x-client-cert-issuer"], f.issuer.as_str());
        assert_eq!(h["x-client-cert-validity"], f.validity.as_str());
    }
    let _ = ocsp::check(response, &cert);
}
