//! The load step: what a configuration names outside its own text — the environment
//! variables that hold admin tokens, the certificate files — read once, before validation.
//! Validation is then a function of the text and these values alone: it reads nothing, so
//! the same text with the same values always gives the same answer, and a value that could
//! not be read is a problem like any other, reported at the key that named it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::raw::RawConfig;
use crate::tls::client::{self, Roots};
use crate::tls::{LoadedKey, TlsError};

/// The variable the unnamed admin token is taken from when the file sets neither `token`
/// nor `token_env`.
pub const DEFAULT_TOKEN_ENV: &str = "SWITCHYARD_ADMIN_TOKEN";

/// A PEM bundle's certificates.
type Bundle = Vec<rustls_pki_types::CertificateDer<'static>>;

/// What the file names outside itself, as read.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Every variable a `token_env` or the store's `password_env` names, and [`DEFAULT_TOKEN_ENV`]: its value, if set.
    env: BTreeMap<String, Option<String>>,
    /// Per `[[listener]]`, per `[[listener.certificate]]`, in file order.
    certificates: Vec<Vec<Certificate>>,
    /// Per `[[listener]]` with a `client_auth`: what its CA bundle gave.
    client_ca: BTreeMap<usize, (PathBuf, Result<Bundle, TlsError>)>,
    /// Per (service, group) index with a `tls` table: what its files gave.
    target_tls: BTreeMap<(usize, usize), TargetFiles>,
}

/// What a group's `tls` names, as read.
#[derive(Debug)]
pub struct TargetFiles {
    /// The `ca` bundle, or the system's roots without one; `None` with
    /// `insecure_skip_verify`.
    pub roots: Option<Result<Roots, TlsError>>,
    /// The client certificate, when both `cert` and `key` are given.
    pub client: Option<Certificate>,
}

/// One certificate's files, resolved against the configuration's folder, and what reading
/// them gave.
#[derive(Debug)]
pub struct Certificate {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ocsp: Option<PathBuf>,
    pub loaded: Result<LoadedKey, TlsError>,
}

/// Reads what `raw` names. Blocking (certificate files): callers on the runtime go through
/// `load_async` / `parse_async`. Variables are read through `secret_env`, which also keeps
/// them out of the environment of commands switchyard runs.
pub fn load(raw: &RawConfig, base_dir: &Path) -> Loaded {
    let named = raw.admin.token_env.iter();
    let named = named.chain(raw.admin.tokens.iter().filter_map(|t| t.token_env.as_ref()));
    let named = named.chain(raw.store.password_env.iter());
    let env = named
        .map(String::as_str)
        .chain([DEFAULT_TOKEN_ENV])
        .map(|var| {
            let value = crate::bounded::command::secret_env(var).ok();
            (var.to_string(), value)
        })
        .collect();
    let certificates = raw
        .listener
        .iter()
        .map(|l| {
            l.certificate
                .iter()
                .map(|c| {
                    let (cert, key) = (base_dir.join(&c.cert), base_dir.join(&c.key));
                    let ocsp = c.ocsp.as_ref().map(|o| base_dir.join(o));
                    let loaded = crate::tls::load_certified_key(&cert, &key)
                        .and_then(|k| k.with_ocsp(ocsp.as_deref()));
                    Certificate {
                        cert,
                        key,
                        ocsp,
                        loaded,
                    }
                })
                .collect()
        })
        .collect();
    let client_ca = raw
        .listener
        .iter()
        .enumerate()
        .filter_map(|(i, l)| {
            let ca = base_dir.join(&l.client_auth.as_ref()?.ca);
            let read = client::load_bundle(&ca);
            Some((i, (ca, read)))
        })
        .collect();
    let mut target_tls = BTreeMap::new();
    for (i, s) in raw.service.iter().enumerate() {
        for (j, g) in s.group.iter().enumerate() {
            let Some(t) = &g.tls else { continue };
            let roots = match (&t.ca, t.insecure_skip_verify) {
                (_, Some(true)) => None,
                (Some(ca), _) => Some(client::load_bundle(&base_dir.join(ca)).map(Roots::Bundle)),
                (None, _) => Some(client::system_roots().map(Roots::System)),
            };
            let client = match (&t.cert, &t.key) {
                (Some(c), Some(k)) => {
                    let (cert, key) = (base_dir.join(c), base_dir.join(k));
                    let loaded = crate::tls::load_certified_key(&cert, &key);
                    Some(Certificate {
                        cert,
                        key,
                        ocsp: None,
                        loaded,
                    })
                }
                _ => None,
            };
            target_tls.insert((i, j), TargetFiles { roots, client });
        }
    }
    Loaded {
        env,
        certificates,
        client_ca,
        target_tls,
    }
}

impl Loaded {
    /// A variable's value when it is set and not empty.
    pub fn env(&self, var: &str) -> Option<&str> {
        let value = self.env.get(var);
        debug_assert!(value.is_some(), "{var} was not read by the load step");
        value.and_then(Option::as_deref).filter(|v| !v.is_empty())
    }

    /// What the `tls` of group `j` of service `i` names, as read.
    pub fn target_tls(&self, service: usize, group: usize) -> Option<&TargetFiles> {
        self.target_tls.get(&(service, group))
    }

    /// What the `i`-th `[[listener]]`'s `client_auth.ca` bundle gave.
    pub fn client_ca(&self, listener: usize) -> Option<&(PathBuf, Result<Bundle, TlsError>)> {
        self.client_ca.get(&listener)
    }

    /// The certificates of the `i`-th `[[listener]]`.
    pub fn certificates(&self, listener: usize) -> &[Certificate] {
        self.certificates.get(listener).map_or(&[], Vec::as_slice)
    }

    /// As if the load step had read `value` from `var`.
    #[cfg(test)]
    pub fn with_env(mut self, var: &str, value: &str) -> Loaded {
        self.env.insert(var.into(), Some(value.into()));
        self
    }
}

impl super::Config {
    /// The listeners' TLS files: certificates, keys, OCSP responses, client CA bundles.
    pub fn certificate_files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for l in &self.listeners {
            for c in &l.certificates {
                files.extend([c.cert.clone(), c.key.clone()]);
                files.extend(c.ocsp.clone());
            }
            files.extend(l.client_auth.as_ref().map(|a| a.ca.clone()));
        }
        files
    }

    /// The same configuration with the listeners' TLS files read again (what a renewal
    /// changes), checked as the load step and validation check them; the first problem if
    /// one is not usable — a key that does not match its new certificate while a renewal
    /// is half written, say. Blocking, like [`load`].
    pub fn reread_certificates(&self) -> Result<super::Config, String> {
        let mut next = self.clone();
        for l in &mut next.listeners {
            let name = &l.name;
            for c in &mut l.certificates {
                c.loaded = crate::tls::load_certified_key(&c.cert, &c.key)
                    .and_then(|k| k.with_ocsp(c.ocsp.as_deref()))
                    .map_err(|e| format!("listener {name}: {e}"))?;
            }
            if let Some(a) = &mut l.client_auth {
                a.roots = client::load_bundle(&a.ca)
                    .map_err(|e| format!("listener {name}: client_auth.ca: {e}"))?;
                a.verifier()
                    .map_err(|e| format!("listener {name}: client_auth.ca: {e}"))?;
            }
        }
        Ok(next)
    }
}
