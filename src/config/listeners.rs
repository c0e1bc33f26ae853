//! The listeners (`[[listener]]`: address, certificates, TLS policy, client certificates)
//! and the `[certificates]` table (watching their files, when to call one expiring), from
//! raw values to domain types.

use std::collections::HashMap;
use std::time::Duration;

use super::fields::*;
use super::load::Loaded;
use super::locate::KeyPath;
use super::model::*;
use super::raw::*;
use crate::path;
use crate::tls::TlsError;

pub(super) fn listeners(
    raw: &[RawListener],
    loaded: &Loaded,
    p: &mut Problems,
) -> Vec<ListenerConfig> {
    if raw.is_empty() {
        p.add(
            KeyPath::default(),
            "no [[listener]]: at least one listener is needed",
        );
    }
    let mut names = Unique::new("listener");
    let mut binds = HashMap::new();
    let mut out = Vec::new();
    for (i, l) in raw.iter().enumerate() {
        name(&l.name, path!["listener", i, "name"], p);
        names.check(&l.name, path!["listener", i, "name"], p);
        let bind = socket_addr(&l.bind, path!["listener", i, "bind"], p);
        if let Some(other) = binds.insert(bind, l.name.clone()) {
            if bind.port() != 0 {
                p.add(
                    path!["listener", i, "bind"],
                    format!("{bind} is already bound by listener \"{other}\""),
                );
            }
        }
        let mut certificates = Vec::new();
        for (j, c) in loaded.certificates(i).iter().enumerate() {
            match &c.loaded {
                Ok(chain) => certificates.push(CertificateConfig {
                    cert: c.cert.clone(),
                    key: c.key.clone(),
                    ocsp: c.ocsp.clone(),
                    loaded: chain.clone(),
                }),
                // Located at the key that names the file that could not be used.
                Err(e) => {
                    let file = match e {
                        TlsError::Cert { .. } => "cert",
                        TlsError::Key { .. } => "key",
                        TlsError::Ocsp { .. } => "ocsp",
                    };
                    p.add(path!["listener", i, "certificate", j, file], e.to_string());
                }
            }
        }
        let tls = match &l.tls {
            None => crate::tls::Policy::default(),
            Some(raw) => {
                let at = path!["listener", i, "tls"];
                if l.certificate.is_empty() {
                    p.add(
                        at.clone(),
                        "a TLS policy needs the listener's [[listener.certificate]]",
                    );
                }
                super::tls_policy::policy(raw, &at, p)
            }
        };
        let client_auth = l.client_auth.as_ref().and_then(|raw| {
            let at = path!["listener", i, "client_auth"];
            super::client_auth::client_auth(raw, i, !l.certificate.is_empty(), loaded, &at, p)
        });
        out.push(ListenerConfig {
            name: l.name.clone(),
            bind,
            certificates,
            tls,
            client_auth,
        });
    }
    out
}

/// `[certificates]`: how often the listeners' TLS files are watched (off without `watch`),
/// and how soon before its expiry a certificate is reported.
pub(super) fn certificates(
    raw: &RawCertificates,
    p: &mut Problems,
) -> (Option<Duration>, Duration) {
    let watch = raw.watch.as_ref().and_then(|w| {
        let at = path!["certificates", "watch"];
        duration(
            w,
            at,
            &(Duration::from_millis(100)..=Duration::from_secs(86_400)),
            p,
        )
    });
    let warn_before = duration_or(
        raw.warn_before.as_ref(),
        path!["certificates", "warn_before"],
        crate::tls::EXPIRES_SOON,
        &(Duration::from_secs(3600)..=Duration::from_secs(3650 * 86_400)),
        p,
    );
    (watch, warn_before)
}
