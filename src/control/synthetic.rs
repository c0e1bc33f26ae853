//! Synthetic traffic for quiet services (`[service.synthetic]`): while an analysis step
//! runs, requests at the configured rate go to the candidate's targets — the group's own,
//! as configured, never another host — each on a connection of its own (`upstream::once`),
//! tagged `x-switchyard-synthetic: 1`. Counted with the candidate's traffic (analyses and the
//! guard judge them) or apart, and always in `switchyard_synthetic_requests_total`.
//!
//! Bounded: never more than `rate` a second (missed ticks are skipped, not made up), at most
//! [`IN_FLIGHT`] at once (a slow candidate makes the generator skip, counted), each within
//! the service's request timeout, and only while the step runs (its progress deadline).

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::Controller;
use crate::config::model::{Synthetic, SyntheticRequest};
use crate::metrics::{now_ms, Failure};
use crate::upstream::once::{self, Ask};

/// Synthetic requests in flight at most; more are skipped.
const IN_FLIGHT: usize = 64;
/// Bytes of an answer read (and dropped) before its connection is let go.
const BODY_CAP: usize = 64 * 1024;

static TAG: HeaderName = HeaderName::from_static("x-switchyard-synthetic");

/// Sends `service`'s synthetic requests to `candidate` until `stop`.
pub(super) async fn generate(
    control: Arc<Controller>,
    service: String,
    candidate: String,
    stop: CancellationToken,
) {
    let Some(settings) = control
        .snapshot()
        .config
        .service(&service)
        .and_then(|s| s.synthetic.clone())
    else {
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / settings.rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut n: usize = 0;
    tracing::info!(%service, %candidate, rate = settings.rate, "synthetic traffic begins");
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        n = n.wrapping_add(1);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            control.count_synthetic(&service, "skipped");
            continue;
        };
        let Some(req) = pick(&control, &service, &settings, n) else {
            control.count_synthetic(&service, "nothing_to_send");
            continue;
        };
        let (control, service, candidate) = (control.clone(), service.clone(), candidate.clone());
        let together = settings.together;
        let stop = stop.clone();
        tokio::spawn(async move {
            // Given up when the step ends: nothing of it counts after.
            tokio::select! {
                result = send(&control, &service, &candidate, &req, together, &stop) => {
                    control.count_synthetic(&service, result);
                }
                _ = stop.cancelled() => {}
            }
            drop(slot);
        });
    }
    tracing::info!(%service, %candidate, "synthetic traffic ends");
}

/// The `n`th request: the configured ones and the replayed ones in turn (only the chosen
/// one is copied).
fn pick(control: &Controller, service: &str, s: &Synthetic, n: usize) -> Option<SyntheticRequest> {
    let snap = control.snapshot();
    let recent = snap
        .access_log
        .as_ref()
        .filter(|_| s.replay)
        .map(|log| &log.recent);
    let replayed = recent.map_or(0, |r| r.len(service));
    let all = s.requests.len() + replayed;
    if all == 0 {
        return None;
    }
    let i = n % all;
    match s.requests.get(i) {
        Some(r) => Some(r.clone()),
        None => {
            let (method, path) = recent?.get(service, i - s.requests.len())?;
            Some(SyntheticRequest {
                method,
                path,
                headers: Vec::new(),
            })
        }
    }
}

/// One request to one of the candidate's routable targets (in turn); what became of it.
async fn send(
    control: &Controller,
    service: &str,
    candidate: &str,
    req: &SyntheticRequest,
    together: bool,
    stop: &CancellationToken,
) -> &'static str {
    let snap = control.snapshot();
    let Some(svc) = snap.services.get(service) else {
        return "no_target";
    };
    let timeout = svc.request_timeout;
    let Some(group) = svc.group(candidate) else {
        return "no_target";
    };
    let now = now_ms();
    let routable: Vec<_> = group.targets.iter().filter(|t| t.routable(now)).collect();
    if routable.is_empty() {
        return "no_target";
    }
    let target = routable[fastrand::usize(..routable.len())];
    let mut headers: Vec<(HeaderName, HeaderValue)> = req
        .headers
        .iter()
        .filter_map(|(k, v)| {
            Some((
                HeaderName::from_bytes(k.as_bytes()).ok()?,
                HeaderValue::from_str(v).ok()?,
            ))
        })
        .collect();
    headers.push((TAG.clone(), HeaderValue::from_static("1")));
    let ask = Ask {
        method: Method::from_bytes(req.method.as_bytes()).unwrap_or(Method::GET),
        path: &req.path,
        headers: &headers,
        body_cap: BODY_CAP,
    };
    let started = std::time::Instant::now();
    let answer = tokio::time::timeout(
        timeout,
        once::ask(&group.upstream, &target.pool, &target.addr.0, &ask),
    )
    .await;
    let (status, failure, result) = match answer {
        Ok(Ok(s)) if s.is_server_error() => (s.as_u16(), None, "5xx"),
        Ok(Ok(s)) => (s.as_u16(), None, "answered"),
        Ok(Err(_)) => (502, Some(Failure::Connect), "failed"),
        Err(_) => (504, Some(Failure::Timeout), "timed_out"),
    };
    if together && !stop.is_cancelled() {
        let stats = &group.stats;
        stats.count_request();
        stats.record(
            status,
            started.elapsed(),
            std::time::Instant::now(),
            failure,
        );
    }
    result
}

impl Controller {
    /// One synthetic request's result, for `/metrics`.
    fn count_synthetic(&self, service: &str, result: &'static str) {
        let mut c = self.counts.lock().expect("counts");
        *c.synthetic
            .entry((service.to_string(), result.to_string()))
            .or_default() += 1;
    }
}
