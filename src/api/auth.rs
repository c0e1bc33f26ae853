//! Bearer tokens, their scopes, and who acts.
//!
//! Tokens are looked up in the configuration in force at each request, so a reload, SIGHUP
//! or apply that changes them takes effect at once (the old token stops working). Each
//! route needs one scope (`read`, `release`, `config`); a token without it gets 403 naming
//! the scope. The actor recorded for a change is the token's name — never the client's
//! `x-switchyard-actor`, which is recorded beside it as "on behalf of".

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{Api, ApiError};
use crate::config::admin::INTERNAL_ACTORS;
use crate::config::{Scope, Scopes};

/// The token a request was let in with (set by [`auth`]).
#[derive(Debug, Clone)]
pub(super) struct Caller {
    pub name: String,
    pub scopes: Scopes,
}

impl Caller {
    /// Refuses (403 `insufficient_scope`) what needs `scope` beyond the route's own: a
    /// request body that carries a shell command needs `config`, whatever the route.
    pub(super) fn require(&self, scope: Scope, what: &str) -> Result<(), ApiError> {
        if self.scopes.allows(scope) {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            format!(
                "{what} needs the \"{scope}\" scope; token \"{}\" has {}",
                self.name, self.scopes
            ),
        ))
    }
}

/// The scope a call under /api/v1 needs. Anything not listed needs `config`: a new
/// mutating route is closed until it is placed here.
pub(super) fn needed_scope(method: &Method, path: &str) -> Scope {
    if method == Method::GET || method == Method::HEAD {
        return Scope::Read;
    }
    let path = path.strip_prefix("/api/v1").unwrap_or(path);
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method.as_str(), segs.as_slice()) {
        (
            "POST",
            ["services", _, "switch"]
            | ["rollouts"]
            | ["services", _, "rollout", _]
            | ["services", _, "analysis", "run"],
        )
        | ("PUT", ["services", _, "weights"]) => Scope::Release,
        // A backtest replays stored seconds: it changes nothing and calls nothing outside.
        ("POST", ["services", _, "analysis", "backtest"]) => Scope::Read,
        _ => Scope::Config,
    }
}

pub(super) async fn auth(State(api): State<Api>, mut req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let needed = needed_scope(req.method(), req.uri().path());
    let snap = api.control.snapshot();
    let admin = &snap.config.admin;
    // Compare with every token, so timing does not tell which is near; see `same_secret`.
    let matched = given.as_ref().and_then(|g| {
        let given = digest(g);
        admin.tokens.iter().fold(None, |found, t| {
            if same_secret(&digest(&t.secret), &given) {
                Some(t)
            } else {
                found
            }
        })
    });
    let refused = match (admin.read_only(), given.is_some(), matched) {
        (false, true, Some(t)) if t.scopes.allows(needed) => {
            req.extensions_mut().insert(Caller {
                name: t.name.clone(),
                scopes: t.scopes.clone(),
            });
            None
        }
        (false, true, Some(t)) => Some(ApiError::new(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            format!(
                "{} {} needs the \"{needed}\" scope; token \"{}\" has {}",
                req.method(),
                req.uri().path(),
                t.name,
                t.scopes
            ),
        )),
        (false, true, None) => Some(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "bad_token",
            "the bearer token is wrong",
        )),
        (false, false, _) => Some(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "no_token",
            "send the admin token as `Authorization: Bearer TOKEN`",
        )),
        (true, _, _) if needed == Scope::Read => None,
        (true, _, _) => Some(ApiError::new(
            StatusCode::FORBIDDEN,
            "read_only",
            "no admin token is configured ([admin] token or SWITCHYARD_ADMIN_TOKEN), so the API is read-only",
        )),
    };
    drop(snap);
    match refused {
        None => next.run(req).await,
        Some(e) => e.into_response(),
    }
}

type Digest = [u8; 32];

/// SHA-256 of a secret: what is compared, so that the comparison always runs over 32 bytes
/// and neither its time nor an early length check tells how long a token is.
fn digest(secret: &str) -> Digest {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Equal digests, in time that does not depend on where they differ.
fn same_secret(a: &Digest, b: &Digest) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The header a client names whom it acts for with.
const ACTOR_HEADER: &str = "x-switchyard-actor";

/// The longest `x-switchyard-actor` accepted (as a token name).
const MAX_ON_BEHALF_OF: usize = 64;

/// Checks a client's `x-switchyard-actor`: empty is none; otherwise 1-64 characters of
/// letters, digits and `-_.:@` (`cli:alice`, `alice@example.com`), never one of
/// switchyard's own actors. Refused rather than cleaned: the value goes into the audit
/// history and reasons as is, where spaces could forge " on behalf of " and control
/// characters could forge log lines.
fn on_behalf_of(raw: &[u8]) -> Result<Option<String>, ApiError> {
    let s = String::from_utf8_lossy(raw);
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let ok = s.len() <= MAX_ON_BEHALF_OF
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:@".contains(c));
    if !ok {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_actor",
            format!(
                "{ACTOR_HEADER} must be 1-{MAX_ON_BEHALF_OF} characters of letters, digits and -_.:@ (e.g. cli:alice)"
            ),
        ));
    }
    if INTERNAL_ACTORS.contains(&s.to_ascii_lowercase().as_str()) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "reserved_actor",
            format!(
                "{ACTOR_HEADER}: \"{s}\" is a name switchyard records for itself; say whom you act for, e.g. cli:alice"
            ),
        ));
    }
    Ok(Some(s.to_string()))
}

/// Who acts, for the audit history: the token's name, with the client's
/// `x-switchyard-actor` (the CLI sends `cli:USER`) as "on behalf of". A client naming one of
/// switchyard's own actors (`guard`, `analysis`, …) is refused with 422.
pub(super) struct Actor(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Actor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let said = match parts.headers.get(ACTOR_HEADER) {
            None => None,
            Some(v) => on_behalf_of(v.as_bytes())?,
        };
        // Routes that take an `Actor` are mutating, so `auth` has let a token in.
        let token = parts
            .extensions
            .get::<Caller>()
            .map_or("api", |c| c.name.as_str());
        Ok(Actor(crate::audit::compose(token, said.as_deref())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_by_route() {
        let post = Method::POST;
        assert_eq!(needed_scope(&Method::GET, "/status"), Scope::Read);
        assert_eq!(needed_scope(&post, "/reload"), Scope::Config);
        assert_eq!(needed_scope(&post, "/config/apply"), Scope::Config);
        assert_eq!(needed_scope(&post, "/api/v1/config/plan"), Scope::Config);
        assert_eq!(needed_scope(&post, "/services/shop/switch"), Scope::Release);
        assert_eq!(
            needed_scope(&Method::PUT, "/services/shop/weights"),
            Scope::Release
        );
        assert_eq!(needed_scope(&post, "/rollouts"), Scope::Release);
        assert_eq!(
            needed_scope(&post, "/services/shop/rollout/abort"),
            Scope::Release
        );
        assert_eq!(
            needed_scope(&post, "/services/shop/analysis/run"),
            Scope::Release
        );
        assert_eq!(needed_scope(&post, "/something/new"), Scope::Config);
        assert_eq!(needed_scope(&Method::DELETE, "/rollouts"), Scope::Config);
    }
}
