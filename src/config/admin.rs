//! The `[admin]` section: where the admin API listens, its bearer tokens with their scopes,
//! and the limits that keep its connections from starving the proxy.
//!
//! Scopes exist because the verbs are not equally dangerous: `release` moves traffic, while
//! `config` (reload, plan, apply) can define hooks and checks that are shell commands run on
//! the host — `config` is shell access, and is granted only when asked for.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use super::fields::*;
use super::load::{Loaded, DEFAULT_TOKEN_ENV};
use super::locate::KeyPath;
use super::raw::RawAdmin;
use crate::path;

/// The unnamed `[admin] token`'s name in the audit history.
pub const MAIN_TOKEN_NAME: &str = "admin";

/// Actors switchyard itself records (the guard, an analysis, the rollout schedule, …): no
/// token may be named so, and no client may claim one with `x-switchyard-actor`.
pub const INTERNAL_ACTORS: &[&str] = &[
    "admin",
    "analysis",
    "api",
    "config",
    "deadline",
    "driver",
    "guard",
    "hook",
    "schedule",
    "switchyard",
    "system",
];

/// What a token may do. Every token may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Status, rollouts, events, series: every GET.
    Read,
    /// Rollout verbs, start, switch, weights, analysis dry runs.
    Release,
    /// Reload, plan, apply: can define commands that run on the host, so shell access.
    Config,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Release, Scope::Config];

    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Release => "release",
            Scope::Config => "config",
        }
    }

    fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|sc| sc.name() == s)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of scopes; `read` is always in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Scopes(pub BTreeSet<Scope>);

impl Scopes {
    pub fn all() -> Scopes {
        Scopes(Scope::ALL.into_iter().collect())
    }

    /// A named token's scopes when it lists none: it may release, not reconfigure (shell).
    pub fn named_default() -> Scopes {
        Scopes([Scope::Read, Scope::Release].into_iter().collect())
    }

    pub fn allows(&self, s: Scope) -> bool {
        s == Scope::Read || self.0.contains(&s)
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|s| s.name()).collect();
        f.write_str(&names.join(", "))
    }
}

/// An accepted bearer token: its name is who acts in the audit history.
/// Serialized for `plan` with its secret, which `diff` never prints (see `diff::SECRET`).
#[derive(Clone, PartialEq, serde::Serialize)]
pub struct AdminToken {
    pub name: String,
    pub secret: String,
    pub scopes: Scopes,
}

impl fmt::Debug for AdminToken {
    /// Never the secret: configurations end up in logs and test output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminToken")
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// Bounds on the admin listener's connections: it shares the process's descriptors with the
/// proxy, so a client holding connections open must not starve the proxy of them.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct AdminLimits {
    /// A request's head must arrive within this, then its body within as long again
    /// (slowloris).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight and no bytes moving for this long is closed.
    pub idle_timeout: Duration,
    /// Open admin connections at most; one more is answered 503 and closed at once.
    pub max_connections: usize,
}

impl Default for AdminLimits {
    fn default() -> Self {
        AdminLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 64,
        }
    }
}

#[derive(Clone, PartialEq, serde::Serialize)]
pub struct AdminConfig {
    pub bind: SocketAddr,
    /// The unnamed token (`[admin] token`); `None` with no named tokens leaves the API
    /// read-only. The CLI sends it. Not serialized: it is `tokens`' `admin`.
    #[serde(skip)]
    pub token: Option<String>,
    /// Every accepted token: the unnamed one first (as `admin`, all scopes), then the named.
    pub tokens: Vec<AdminToken>,
    pub limits: AdminLimits,
}

impl fmt::Debug for AdminConfig {
    /// Never a secret (the unnamed token's neither): configurations end up in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("bind", &self.bind)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("tokens", &self.tokens)
            .field("limits", &self.limits)
            .finish()
    }
}

impl AdminConfig {
    /// No token at all: mutating calls are refused.
    pub fn read_only(&self) -> bool {
        self.tokens.is_empty()
    }
}

pub(super) fn admin(raw: &RawAdmin, loaded: &Loaded, p: &mut Problems) -> AdminConfig {
    let bind = match &raw.bind {
        None => SocketAddr::from(([127, 0, 0, 1], 9901)),
        Some(s) => socket_addr(s, path!["admin", "bind"], p),
    };
    let token = match (&raw.token, &raw.token_env) {
        (Some(_), Some(_)) => {
            p.add(
                path!["admin", "token_env"],
                "set `token` or `token_env`, not both",
            );
            None
        }
        (Some(t), None) if t.is_empty() => {
            p.add(path!["admin", "token"], "the token must not be empty");
            None
        }
        (Some(t), None) => Some(t.clone()),
        (None, Some(var)) => env_token(loaded, var, path!["admin", "token_env"], p),
        (None, None) => loaded.env(DEFAULT_TOKEN_ENV).map(String::from),
    };
    let mut tokens: Vec<AdminToken> = token
        .iter()
        .map(|t| AdminToken {
            name: MAIN_TOKEN_NAME.into(),
            secret: t.clone(),
            scopes: Scopes::all(),
        })
        .collect();
    let mut names = Unique::new("token");
    for (i, t) in raw.tokens.iter().enumerate() {
        let at = path!["admin", "tokens", i];
        name(&t.name, at.join("name"), p);
        if INTERNAL_ACTORS.contains(&t.name.to_ascii_lowercase().as_str()) {
            p.add(
                at.join("name"),
                format!(
                    "\"{}\" is a name switchyard records for itself; choose another",
                    t.name
                ),
            );
        }
        names.check(&t.name, at.join("name"), p);
        let scopes = scopes(t.scopes.as_deref(), at.join("scopes"), p);
        let value = match (&t.token, &t.token_env) {
            (Some(v), None) if !v.is_empty() => Some(v.clone()),
            (None, Some(var)) => env_token(loaded, var, at.join("token_env"), p),
            _ => {
                p.add(
                    at.clone(),
                    "a named token needs a non-empty `token` or `token_env`",
                );
                None
            }
        };
        if let Some(secret) = value {
            // One secret for two names would let its holder act as either, and the audit
            // history could not tell them apart.
            if let Some(other) = tokens.iter().find(|o| o.secret == secret) {
                p.add(
                    at.clone(),
                    format!(
                        "token \"{}\" has the same secret as token \"{}\"; give each its own",
                        t.name, other.name
                    ),
                );
            }
            tokens.push(AdminToken {
                name: t.name.clone(),
                secret,
                scopes,
            });
        }
    }
    AdminConfig {
        bind,
        token,
        tokens,
        limits: limits(raw, p),
    }
}

/// A token read from the environment by the load step; refused at `at` if not set or empty.
fn env_token(loaded: &Loaded, var: &str, at: KeyPath, p: &mut Problems) -> Option<String> {
    let value = loaded.env(var).map(String::from);
    if value.is_none() {
        p.add(
            at,
            format!("environment variable {var} is not set or empty"),
        );
    }
    value
}

fn scopes(raw: Option<&[String]>, at: KeyPath, p: &mut Problems) -> Scopes {
    let Some(raw) = raw else {
        return Scopes::named_default();
    };
    if raw.is_empty() {
        p.add(
            at.clone(),
            "list at least one scope: \"read\", \"release\" or \"config\"",
        );
    }
    let mut out = BTreeSet::from([Scope::Read]);
    for (j, s) in raw.iter().enumerate() {
        match Scope::parse(s) {
            Some(sc) => {
                out.insert(sc);
            }
            None => p.add(
                at.join(j),
                format!("unknown scope \"{s}\": use \"read\", \"release\" or \"config\""),
            ),
        }
    }
    Scopes(out)
}

/// The most `[admin] max_connections` may be: an operator's API needs a handful of
/// connections, and every one holds a descriptor out of the limit the proxy shares (often
/// 1024); more than this is a mistake, not a need.
pub const MAX_ADMIN_CONNECTIONS: usize = 1024;

fn limits(raw: &RawAdmin, p: &mut Problems) -> AdminLimits {
    let d = AdminLimits::default();
    let max_connections = count_or(
        raw.max_connections,
        1..=MAX_ADMIN_CONNECTIONS as i64,
        d.max_connections as u64,
        "each holds a file descriptor the proxy needs too",
        path!["admin", "max_connections"],
        p,
    ) as usize;
    AdminLimits {
        header_read_timeout: duration_or(
            raw.header_read_timeout.as_ref(),
            path!["admin", "header_read_timeout"],
            d.header_read_timeout,
            &TIMEOUT,
            p,
        ),
        idle_timeout: duration_or(
            raw.idle_timeout.as_ref(),
            path!["admin", "idle_timeout"],
            d.idle_timeout,
            &TIMEOUT,
            p,
        ),
        max_connections,
    }
}
