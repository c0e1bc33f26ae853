//! Active health checks: one task per (target, check settings), probing on an interval and
//! moving the target between healthy and unhealthy after the configured thresholds. The
//! result is an atomic on the target, which the hot path reads.
//!
//! Each probe opens a connection the way traffic does (`Upstream::stream`: TCP, then TLS
//! with the group's settings), so a target whose certificate the group would refuse, or
//! that does not speak h2 by ALPN, is unhealthy; and closes it after the answer, as
//! HAProxy's checks do (a resumed TLS session makes that cheap).

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use tokio::task::AbortHandle;

use crate::config::HealthCheck;
use crate::group::{Health, Target};
use crate::snapshot::Snapshot;
use crate::upstream::once::{self, Ask};
use crate::upstream::{Upstream, UpstreamProtocol};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CheckKey {
    service: String,
    group: String,
    target: String,
    check: HealthCheck,
    protocol: UpstreamProtocol,
    /// The group's TLS client by what it was built from: a changed one is a new check.
    tls: Option<String>,
}

/// The running checks, reconciled with each new snapshot.
#[derive(Debug, Default)]
pub struct HealthChecker {
    running: HashMap<CheckKey, (Arc<Target>, AbortHandle)>,
}

impl HealthChecker {
    pub fn reconcile(&mut self, snap: &Snapshot) {
        let mut wanted = HashMap::new();
        for s in &snap.config.services {
            let rt = &snap.services[&s.name];
            for g in &s.groups {
                let Some(check) = &g.health_check else {
                    continue;
                };
                let group = rt
                    .group(&g.name)
                    .expect("snapshot has every configured group");
                for t in &group.targets {
                    let key = CheckKey {
                        service: s.name.clone(),
                        group: g.name.clone(),
                        target: t.addr.0.clone(),
                        check: check.clone(),
                        protocol: g.protocol,
                        tls: group
                            .upstream
                            .tls
                            .as_ref()
                            .map(|t| t.fingerprint().to_string()),
                    };
                    // Probes reach the target the way traffic does (protocol, TLS).
                    wanted.insert(key, (t.clone(), group.upstream.clone()));
                }
            }
        }
        self.running.retain(|key, (target, task)| {
            let keep = wanted.get(key).is_some_and(|(t, _)| Arc::ptr_eq(t, target));
            if !keep {
                task.abort();
                // Without a check the target is trusted again; a new check decides afresh.
                target.set_health(Health::Unknown);
            }
            keep
        });
        for (key, (target, upstream)) in wanted {
            if self.running.contains_key(&key) {
                continue;
            }
            let task = tokio::spawn(run(key.clone(), target.clone(), upstream)).abort_handle();
            self.running.insert(key, (target, task));
        }
    }

    pub fn stop(&mut self) {
        for (_, (_, task)) in self.running.drain() {
            task.abort();
        }
    }
}

async fn run(key: CheckKey, target: Arc<Target>, upstream: Upstream) {
    let check = &key.check;
    // The whole probe — connect, handshake, answer — within the check's timeout.
    let upstream = Upstream {
        connect_timeout: check.timeout,
        ..upstream
    };
    let mut ticker = tokio::time::interval(check.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut successes, mut failures) = (0u32, 0u32);
    loop {
        ticker.tick().await;
        target.pool.sweep(crate::metrics::now_ms());
        let result = probe(&upstream, &target, check).await;
        match &result {
            Ok(()) => {
                successes += 1;
                failures = 0;
            }
            Err(_) => {
                failures += 1;
                successes = 0;
            }
        }
        let before = target.health();
        // The first result decides at once, so a fresh target is neither trusted nor
        // distrusted for a whole threshold's worth of intervals.
        let after = match before {
            Health::Unknown if result.is_ok() => Health::Healthy,
            Health::Unknown => Health::Unhealthy,
            Health::Healthy if failures >= check.unhealthy_threshold => Health::Unhealthy,
            Health::Unhealthy if successes >= check.healthy_threshold => Health::Healthy,
            h => h,
        };
        if after != before {
            target.set_health(after);
            match &result {
                Err(reason) => tracing::warn!(
                    service = %key.service, group = %key.group, target = %target.addr,
                    %reason, "target is unhealthy"
                ),
                Ok(()) => tracing::info!(
                    service = %key.service, group = %key.group, target = %target.addr,
                    "target is healthy"
                ),
            }
        }
    }
}

async fn probe(upstream: &Upstream, target: &Target, check: &HealthCheck) -> Result<(), String> {
    static UA: (HeaderName, HeaderValue) = (
        http::header::USER_AGENT,
        HeaderValue::from_static("switchyard-health-check"),
    );
    let ask = Ask {
        method: http::Method::GET,
        path: &check.path,
        headers: std::slice::from_ref(&UA),
        body_cap: 0,
    };
    let exchange = once::ask(upstream, &target.pool, &target.addr.0, &ask);
    match tokio::time::timeout(check.timeout, exchange).await {
        Err(_) => Err(format!(
            "no answer within {}",
            humantime::format_duration(check.timeout)
        )),
        Ok(Err(e)) => Err(e),
        Ok(Ok(status)) if check.success_codes.contains(status.as_u16()) => Ok(()),
        Ok(Ok(status)) => Err(format!("status {}", status.as_u16())),
    }
}
