//! `[store]` and `[instance]`: where the state lives (one SQLite file, or etcd shared by a
//! fleet) and this instance's name and address among the fleet's.

use std::ops::RangeInclusive;
use std::path::Path;
use std::time::Duration;

use super::fields::{duration_or, name, socket_addr, Problems};
use super::load::Loaded;
use super::model::{EtcdConfig, InstanceConfig, StoreConfig};
use super::raw::{RawInstance, RawStore};
use crate::path;

/// A leader is replaced after its lease runs out: long enough to ride out a pause of the
/// process or of etcd, short enough that a dead leader's rollouts wait only seconds.
const LEASE_TTL: RangeInclusive<Duration> = Duration::from_secs(2)..=Duration::from_secs(60);
const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(5);

pub(super) fn store(
    raw: &RawStore,
    loaded: &Loaded,
    base_dir: &Path,
    p: &mut Problems,
) -> StoreConfig {
    let etcd_only = [
        ("endpoints", raw.endpoints.is_some()),
        ("prefix", raw.prefix.is_some()),
        ("username", raw.username.is_some()),
        ("password", raw.password.is_some()),
        ("password_env", raw.password_env.is_some()),
        ("lease_ttl", raw.lease_ttl.is_some()),
    ];
    match raw.kind.as_deref().unwrap_or("sqlite") {
        "sqlite" => {
            for (key, _) in etcd_only.iter().filter(|(_, set)| *set) {
                p.add(
                    path!["store", *key],
                    format!("\"{key}\" is for kind = \"etcd\"; this store is SQLite (set kind = \"etcd\" or remove it)"),
                );
            }
            StoreConfig::Sqlite {
                path: match raw.path.as_deref() {
                    None => base_dir.join("switchyard.db"),
                    Some(":memory:") => ":memory:".into(),
                    Some(path) => base_dir.join(path),
                },
            }
        }
        "etcd" => {
            if raw.path.is_some() {
                p.add(
                    path!["store", "path"],
                    "\"path\" is for kind = \"sqlite\"; an etcd store is named by endpoints and prefix",
                );
            }
            StoreConfig::Etcd(etcd(raw, loaded, p))
        }
        other => {
            p.add(
                path!["store", "kind"],
                format!("unknown store kind \"{other}\": use \"sqlite\" (one instance) or \"etcd\" (a fleet)"),
            );
            StoreConfig::memory()
        }
    }
}

fn etcd(raw: &RawStore, loaded: &Loaded, p: &mut Problems) -> EtcdConfig {
    let endpoints = raw.endpoints.clone().unwrap_or_default();
    if endpoints.is_empty() {
        p.add(
            path!["store", "endpoints"],
            "an etcd store needs endpoints, such as [\"http://127.0.0.1:2379\"]",
        );
    }
    for (i, e) in endpoints.iter().enumerate() {
        if let Err(why) = endpoint(e) {
            p.add(path!["store", "endpoints", i], why);
        }
    }
    let prefix = raw.prefix.clone().unwrap_or_else(|| "/switchyard".into());
    let prefix = prefix.trim_end_matches('/').to_string();
    if !prefix.starts_with('/') || prefix.len() < 2 || prefix.contains("//") {
        p.add(
            path!["store", "prefix"],
            format!("\"{prefix}\" is not a key prefix: use a path such as \"/switchyard/prod\" (one fleet per prefix)"),
        );
    }
    let password = match (&raw.password, &raw.password_env) {
        (Some(_), Some(_)) => {
            p.add(
                path!["store", "password_env"],
                "set either password or password_env, not both",
            );
            None
        }
        (Some(pw), None) => Some(pw.clone()),
        (None, Some(var)) => {
            let value = loaded.env(var).map(str::to_string);
            if value.is_none() {
                p.add(
                    path!["store", "password_env"],
                    format!("environment variable {var} is not set or empty"),
                );
            }
            value
        }
        (None, None) => None,
    };
    if password.is_some() != raw.username.is_some() {
        p.add(
            path!["store", "username"],
            "etcd authentication needs both username and password (or password_env)",
        );
    }
    let lease_ttl = duration_or(
        raw.lease_ttl.as_ref(),
        path!["store", "lease_ttl"],
        DEFAULT_LEASE_TTL,
        &LEASE_TTL,
        p,
    );
    EtcdConfig {
        endpoints,
        prefix,
        username: raw.username.clone(),
        password,
        lease_ttl,
    }
}

/// An etcd client URL: `http://host:port` (TLS to etcd is not supported yet).
fn endpoint(e: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "\"{e}\" is not an etcd endpoint: use http://HOST:PORT such as http://127.0.0.1:2379"
        )
    };
    let uri: http::Uri = e.parse().map_err(|_| bad())?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http"), Some(a)) if a.port_u16().is_some() && matches!(uri.path(), "" | "/") => Ok(()),
        (Some("https"), _) => Err(format!(
            "\"{e}\": TLS to etcd is not supported yet; reach etcd over http:// on a trusted network"
        )),
        _ => Err(bad()),
    }
}

/// `listeners`: the names of the configured listeners, which `listen` may override.
pub(super) fn instance(
    raw: &RawInstance,
    listeners: &[String],
    p: &mut Problems,
) -> InstanceConfig {
    if let Some(n) = &raw.name {
        name(n, path!["instance", "name"], p);
    }
    if let Some(a) = &raw.advertise {
        let ok = a.parse::<std::net::SocketAddr>().is_ok()
            || a.rsplit_once(':')
                .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok());
        if !ok {
            p.add(
                path!["instance", "advertise"],
                format!("\"{a}\" is not an address: use HOST:PORT of this instance's admin API, such as 10.0.0.5:9901"),
            );
        }
    }
    let mut listen = std::collections::BTreeMap::new();
    for (l, addr) in &raw.listen {
        if !listeners.contains(l) {
            p.add(
                path!["instance", "listen", l.as_str()],
                format!(
                    "no listener named \"{l}\" (listeners: {})",
                    listeners.join(", ")
                ),
            );
        }
        listen.insert(
            l.clone(),
            socket_addr(addr, path!["instance", "listen", l.as_str()], p),
        );
    }
    InstanceConfig {
        name: raw.name.clone(),
        advertise: raw.advertise.clone(),
        listen,
    }
}
