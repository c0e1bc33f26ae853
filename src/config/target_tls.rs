//! A group's `tls` (TLS to its targets): checked against what the load step read, and built
//! into the client every connection to the group's targets shares (`tls::client`).

use super::fields::Problems;
use super::load::TargetFiles;
use super::locate::KeyPath;
use super::model::TargetTls;
use super::raw::RawTargetTls;
use crate::tls::client::{ClientTls, ClientTlsError, Roots};
use crate::tls::TlsError;
use crate::upstream::UpstreamProtocol;

/// The group's TLS settings, or `None` with its problems recorded at their keys.
pub(super) fn target_tls(
    raw: &RawTargetTls,
    files: Option<&TargetFiles>,
    protocol: UpstreamProtocol,
    at: &KeyPath,
    p: &mut Problems,
) -> Option<TargetTls> {
    let before = p.0.len();
    let insecure = raw.insecure_skip_verify == Some(true);
    if insecure && raw.ca.is_some() {
        p.add(
            at.join("ca"),
            "`ca` and `insecure_skip_verify = true` exclude each other: trust the bundle, or nobody",
        );
    }
    match (&raw.cert, &raw.key) {
        (Some(_), None) => p.add(
            at.join("cert"),
            "`cert` needs `key`: the client certificate's private key",
        ),
        (None, Some(_)) => p.add(
            at.join("key"),
            "`key` needs `cert`: the client certificate chain",
        ),
        _ => {}
    }
    let roots = match files.and_then(|f| f.roots.as_ref()) {
        None => Roots::Unverified,
        Some(Ok(r)) => r.clone(),
        Some(Err(e)) => {
            let key = if raw.ca.is_some() {
                at.join("ca")
            } else {
                at.clone()
            };
            p.add(key, e.to_string());
            Roots::Unverified
        }
    };
    let client = match files.and_then(|f| f.client.as_ref()) {
        None => None,
        Some(c) => match &c.loaded {
            Ok(k) => Some(k),
            Err(e) => {
                let key = match e {
                    TlsError::Cert { .. } => "cert",
                    TlsError::Key { .. } => "key",
                    TlsError::Ocsp { .. } => "ocsp",
                };
                p.add(at.join(key), e.to_string());
                None
            }
        },
    };
    let built = ClientTls::new(
        &roots,
        raw.sni.as_deref(),
        client,
        protocol == UpstreamProtocol::Http2,
    );
    let client_tls = match built {
        Ok(c) => c,
        Err(e) => {
            let key = match e {
                ClientTlsError::Sni(_) => "sni",
                ClientTlsError::Ca(_) => "ca",
            };
            p.add(at.join(key), e.to_string());
            return None;
        }
    };
    (p.0.len() == before).then(|| TargetTls {
        sni: raw.sni.clone(),
        ca: raw.ca.as_ref().map(std::path::PathBuf::from),
        insecure_skip_verify: insecure,
        cert: raw.cert.as_ref().map(std::path::PathBuf::from),
        client: client_tls,
    })
}
