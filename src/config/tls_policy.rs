//! A listener's `tls = { … }`: its TLS policy, checked once here against what the crypto
//! provider has — a version, cipher suites and key exchange groups by their names, and the
//! protocols ALPN may offer — so that building the server config later cannot fail.

use super::fields::Problems;
use super::locate::KeyPath;
use super::raw::RawTlsPolicy;
use crate::tls::Policy;

/// What switchyard serves over TLS.
const ALPN: [&str; 2] = ["h2", "http/1.1"];

pub(super) fn policy(raw: &RawTlsPolicy, at: &KeyPath, p: &mut Problems) -> Policy {
    let mut out = Policy::default();
    match raw.min_version.as_deref() {
        None | Some("1.2") => {}
        Some("1.3") => out.tls13_only = true,
        Some(other) => p.add(
            at.join("min_version"),
            format!("\"{other}\": use \"1.2\" or \"1.3\" (older versions are not offered)"),
        ),
    }
    let suites = crate::tls::suites();
    if let Some(names) = &raw.cipher_suites {
        for (i, n) in names.iter().enumerate() {
            match suites.iter().find(|(s, _)| s.eq_ignore_ascii_case(n)) {
                Some((s, _)) => out.cipher_suites.push(s.to_string()),
                None => p.add(
                    at.join("cipher_suites").join(i),
                    format!(
                        "\"{n}\" is not a cipher suite switchyard has: use {}",
                        suites
                            .iter()
                            .map(|(s, _)| *s)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ),
            }
        }
        let usable = |tls13: bool| {
            out.cipher_suites
                .iter()
                .any(|n| suites.iter().any(|(s, t)| s == n && *t == tls13))
        };
        if names.is_empty() || (!usable(true) && (out.tls13_only || !usable(false))) {
            p.add(
                at.join("cipher_suites"),
                "no cipher suite left for the versions allowed: a TLS 1.3 one is needed (and a TLS 1.2 one for 1.2 clients)",
            );
        }
    }
    let groups = crate::tls::groups();
    if let Some(names) = &raw.groups {
        for (i, n) in names.iter().enumerate() {
            match groups.iter().find(|g| g.eq_ignore_ascii_case(n)) {
                Some(g) => out.groups.push(g.to_string()),
                None => p.add(
                    at.join("groups").join(i),
                    format!(
                        "\"{n}\" is not a key exchange group switchyard has: use {}",
                        groups.join(", ")
                    ),
                ),
            }
        }
        if names.is_empty() {
            p.add(
                at.join("groups"),
                "no key exchange group: no handshake could complete",
            );
        }
    }
    if let Some(names) = &raw.alpn {
        out.alpn.clear();
        for (i, n) in names.iter().enumerate() {
            if !ALPN.contains(&n.as_str()) {
                p.add(
                    at.join("alpn").join(i),
                    format!("\"{n}\": switchyard speaks \"h2\" and \"http/1.1\""),
                );
            } else if out.alpn.contains(n) {
                p.add(at.join("alpn").join(i), format!("\"{n}\" is listed twice"));
            } else {
                out.alpn.push(n.clone());
            }
        }
    }
    out
}
