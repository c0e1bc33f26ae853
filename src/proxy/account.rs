//! Where a forwarded request is counted, decided in one place once its outcome is known:
//! the group's stats (what the rollback guard and analyses judge), the route's, the target's
//! passive health and the access log line all get the same final outcome. For a proxied
//! body that is when the body ends (a body that breaks off is a 502, a target that stalls
//! mid-body a 504, a client that breaks its upload a client error), in the second it ends;
//! the latency stays the time to the response head. A request whose future is dropped
//! before its response is ready (`Open`) is the client's: `client_closed`.
//!
//! A failed answer of the version (a 5xx, or an exchange the target failed) is also recorded
//! by its fingerprint (`crate::fingerprint`): the target's 5xx with the first bytes of its
//! body, switchyard's own 502/503/504 with its cause. A client's failure never is.
//!
//! The account reaches its route and group through the request's snapshot (held anyway for
//! the whole request) and two indices, rather than through `Arc` clones of their stats: each
//! clone is two contended atomic operations per request on the same cache line.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::access_log::Entry;
use crate::error::{ProxyError, ERROR_HEADER};
use crate::fingerprint::Failed;
use crate::group::{Group, Target};
use crate::metrics::Failure as Seen;
use crate::service::Service;
use crate::snapshot::Route;
use crate::snapshot::{RouteAction, RouteStats, Snapshot};

use super::{ConnInfo, Served};

/// How a proxied answer ended.
pub(super) enum End {
    /// The body came whole, or the client stopped reading it: the head's status counts.
    Delivered,
    /// The target failed the body after its head: `status` (502 or 504) and what failed.
    Upstream {
        status: u16,
        failure: Seen,
        code: &'static str,
    },
    /// The client failed its own upload after the head (`code` for the access log).
    Client(&'static str),
}

/// A proxied answer's count, made once, when its body ends (or is dropped).
pub(super) struct Account {
    snap: Arc<Snapshot>,
    conn: Arc<ConnInfo>,
    /// The route's index among its listener's routes.
    route: usize,
    /// The group's index among its service's groups.
    group: usize,
    /// The head's status, and the time to it (the latency counted).
    pub(super) status: u16,
    pub(super) took: Duration,
    entry: Option<Box<Entry>>,
    started: Instant,
}

impl Account {
    pub(super) fn new(
        snap: Arc<Snapshot>,
        conn: Arc<ConnInfo>,
        (route, group): (usize, usize),
        (status, took): (u16, Duration),
        entry: Option<Box<Entry>>,
        started: Instant,
    ) -> Account {
        Account {
            snap,
            conn,
            route,
            group,
            status,
            took,
            entry,
            started,
        }
    }

    fn place(&self) -> Option<(&Route, &Service, &Group)> {
        let route = self
            .snap
            .routes
            .get(&*self.conn.listener)?
            .get(self.route)?;
        let RouteAction::Forward(svc) = &route.action else {
            return None;
        };
        Some((route, svc, svc.groups.get(self.group)?))
    }

    /// Counts the answer as `end` says, now, in the group, the route, the target's passive
    /// health, and writes its access log line with `bytes` sent. `prefix`: the first bytes
    /// of the body of a 5xx answer (empty otherwise), for its fingerprint.
    pub(super) fn finish(mut self, end: End, target: &Target, bytes: u64, prefix: &[u8]) {
        let now = Instant::now();
        let Some((named, svc, group)) = self.place() else {
            return;
        };
        let (route, stats): (&RouteStats, _) = (&named.stats, &group.stats);
        let second = crate::metrics::ms_at(now) / 1000;
        let failed = |status, cause, kind, body| {
            let f = Failed {
                route: &named.name,
                status,
                cause,
                kind,
                body,
            };
            stats.fingerprints.record(second, &f);
        };
        let (status, client_error, upstream_error) = match end {
            End::Delivered => {
                let passive = svc.passive;
                stats.record(self.status, self.took, now, None);
                route.record(self.status);
                if self.status >= 500 {
                    failed(self.status, None, None, prefix);
                }
                if self.status >= 500 && passive.eject_on_5xx {
                    strike(svc, group, target);
                } else {
                    target.record_success();
                }
                (self.status, None, None)
            }
            End::Upstream {
                status,
                failure,
                code,
            } => {
                match failure {
                    Seen::Timeout => &stats.timeouts,
                    Seen::Connect => &stats.connect_failures,
                    Seen::Reset => &stats.resets,
                }
                .fetch_add(1, Relaxed);
                stats.record(status, self.took, now, Some(failure));
                failed(status, Some(code), Some(failure), &[]);
                route.record(status);
                strike(svc, group, target);
                (status, None, Some(code))
            }
            End::Client(code) => {
                stats.record_client_error(now);
                route.client_errors.fetch_add(1, Relaxed);
                (self.status, Some(code), None)
            }
        };
        if let (Some(log), Some(mut e)) = (&self.snap.access_log, self.entry.take()) {
            e.status = status;
            e.client_error = client_error;
            e.upstream_error = upstream_error;
            e.bytes = bytes;
            e.total_ms = crate::access_log::millis(now.saturating_duration_since(self.started));
            log.log(*e);
        }
    }
}

/// A request being served, until its response is ready. If its future is dropped before
/// that — hyper drops it when an HTTP/1 client closes its connection while the request
/// waits, or an HTTP/2 client resets the stream — the request is counted as the client's
/// (`client_closed`, 499 in the access log as nginx has it): a client error for its route
/// and group, never an answer, a failure or a strike against the target.
pub(super) struct Open<'s> {
    pub(super) snap: &'s Snapshot,
    pub(super) served: Served<'s>,
    pub(super) entry: Option<Box<Entry>>,
    pub(super) started: Instant,
    pub(super) done: bool,
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let s = &self.served;
        if let Some((_, route)) = s.route {
            route.stats.client_errors.fetch_add(1, Relaxed);
        }
        if let Some(g) = s.group {
            g.stats.record_client_error(Instant::now());
        }
        if let (Some(log), Some(mut e)) = (&self.snap.access_log, self.entry.take()) {
            fill(&mut e, s);
            e.status = 499;
            e.client_error = Some("client_closed");
            e.total_ms = crate::access_log::millis(self.started.elapsed());
            log.log(*e);
        }
    }
}

/// An answer switchyard made itself for a group's request (its 502/503/504 before any
/// head: no healthy target, the target unreachable, reset or silent): its fingerprint, with
/// the cause its `x-switchyard-error` names and the failure kind that cause is. Not for a
/// client's failure, nor for an answer no group was chosen for.
pub(super) fn own_answer(s: &Served<'_>, resp: &http::Response<super::ResponseBody>) {
    let (Some((_, route)), Some(group), None) = (s.route, s.group, s.client_error) else {
        return;
    };
    let status = resp.status().as_u16();
    if status < 500 || !matches!(resp.body(), http_body_util::Either::Right(_)) {
        return;
    }
    let cause = resp
        .headers()
        .get(ERROR_HEADER)
        .and_then(|v| v.to_str().ok());
    let kind = [
        (ProxyError::UpstreamConnect, Seen::Connect),
        (ProxyError::UpstreamTimeout, Seen::Timeout),
        (ProxyError::UpstreamReset, Seen::Reset),
        (ProxyError::UpstreamProtocol, Seen::Reset),
    ]
    .into_iter()
    .find(|(e, _)| Some(e.code()) == cause)
    .map(|(_, kind)| kind);
    fingerprint_own(group, route, status, cause, kind);
}

/// A request of `group` that could reach none of its targets and went to the split's other
/// group: the client never sees this 502, but it is the group's failed answer all the same
/// (counted in its seconds by the caller), so the group's fingerprints have it too — the
/// `new_errors` check must see what the error rate sees.
pub(super) fn fell_back(s: &Served<'_>, group: &Group) {
    if let Some((_, route)) = s.route {
        let cause = Some(ProxyError::UpstreamConnect.code());
        fingerprint_own(group, route, 502, cause, Some(Seen::Connect));
    }
}

/// An answer switchyard made (or would have made) for `group` on `route`, in the group's
/// fingerprints: no body to hash, its cause and failure kind instead.
fn fingerprint_own(
    group: &Group,
    route: &Route,
    status: u16,
    cause: Option<&str>,
    kind: Option<Seen>,
) {
    let f = Failed {
        route: &route.name,
        status,
        cause,
        kind,
        body: &[],
    };
    group
        .stats
        .fingerprints
        .record(crate::metrics::now_second(), &f);
}

/// The access log fields that say what served the request.
pub(super) fn fill(e: &mut Entry, s: &Served<'_>) {
    e.route = s.route.map(|(_, r)| r.name.clone());
    e.service = s.service.map(|x| x.name.clone());
    e.group = s.group.map(|g| g.name.clone());
    e.target = s.target.map(str::to_string);
    e.upstream_ms = s.upstream.map(crate::access_log::millis);
    e.client_error = s.client_error;
}

/// One failure of `target` toward its passive ejection.
pub(super) fn strike(svc: &Service, group: &Group, target: &Target) {
    if target.record_failure(svc.passive.consecutive_failures, svc.passive.ejection_time) {
        tracing::warn!(
            service = %svc.name, group = %group.name, target = %target.addr,
            failures = svc.passive.consecutive_failures,
            "target ejected after consecutive failures"
        );
    }
}
