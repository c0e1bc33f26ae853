//! A listener's `client_auth` (mTLS): checked against what the load step read — the CA
//! bundle must give a verifier — and the fields' prefix and names, so that building the
//! listener's server config later cannot fail.

use super::fields::Problems;
use super::load::Loaded;
use super::locate::KeyPath;
use super::raw::RawClientAuth;
use crate::tls::client_auth::{ClientAuth, Field, DEFAULT_PREFIX};

pub(super) fn client_auth(
    raw: &RawClientAuth,
    listener: usize,
    tls: bool,
    loaded: &Loaded,
    at: &KeyPath,
    p: &mut Problems,
) -> Option<ClientAuth> {
    let before = p.0.len();
    if !tls {
        p.add(
            at.clone(),
            "client certificates need TLS: give the listener a [[listener.certificate]]",
        );
    }
    let required = match raw.mode.as_deref() {
        None | Some("required") => true,
        Some("optional") => false,
        Some(other) => {
            p.add(
                at.join("mode"),
                format!("\"{other}\": use \"required\" (refuse clients without a certificate) or \"optional\""),
            );
            true
        }
    };
    let prefix = raw.header_prefix.as_deref().unwrap_or(DEFAULT_PREFIX);
    let token = |c: u8| c.is_ascii_alphanumeric() || c == b'-';
    let lower = prefix.to_ascii_lowercase();
    // Fields HTTP or switchyard needs, which no prefix may remove.
    let taken = [
        "x-forwarded-",
        "x-request-id",
        "x-switchyard-",
        "host",
        "content-",
        "transfer-",
        "connection",
        "accept",
        "authorization",
        "cookie",
        "te",
        "trailer",
        "upgrade",
        "sec-",
        "forwarded",
        "via",
        "grpc-",
        "proxy-",
        "keep-alive",
    ];
    if prefix.len() < 3 || !prefix.bytes().all(token) || !prefix.ends_with('-') {
        p.add(
            at.join("header_prefix"),
            format!("\"{prefix}\": a field name prefix of letters, digits and '-', at least 3 long, ending in '-' (every client field starting with it is removed)"),
        );
    } else if taken
        .iter()
        .any(|t| t.starts_with(&lower) || lower.starts_with(t))
    {
        p.add(
            at.join("header_prefix"),
            format!("\"{prefix}\" would remove fields HTTP or switchyard needs: choose a prefix of its own, e.g. \"{DEFAULT_PREFIX}\""),
        );
    }
    let mut fields = Vec::new();
    match &raw.fields {
        None => fields.extend(Field::DEFAULT),
        Some(names) => {
            for (i, n) in names.iter().enumerate() {
                match Field::parse(n) {
                    Some(f) if fields.contains(&f) => {
                        p.add(
                            at.join("fields").join(i),
                            format!("\"{n}\" is listed twice"),
                        );
                    }
                    Some(f) => fields.push(f),
                    None => p.add(
                        at.join("fields").join(i),
                        format!(
                            "\"{n}\" is not a fact switchyard sends: use {}",
                            Field::ALL.map(Field::name).join(", ")
                        ),
                    ),
                }
            }
        }
    }
    let (ca, roots) = match loaded.client_ca(listener) {
        Some((path, Ok(certs))) => (path.clone(), certs.clone()),
        Some((path, Err(e))) => {
            p.add(at.join("ca"), e.to_string());
            (path.clone(), Vec::new())
        }
        None => (raw.ca.clone().into(), Vec::new()),
    };
    let auth = ClientAuth::new(ca, roots, required, prefix.to_ascii_lowercase(), fields);
    if p.0.len() == before {
        if let Err(e) = auth.verifier() {
            p.add(at.join("ca"), e);
        }
    }
    (p.0.len() == before).then_some(auth)
}
