//! Active health checks: one task per (target, check settings), probing on an interval and
//! moving the target between healthy and unhealthy after the configured thresholds. The
//! result is an atomic on the target, which the hot path reads.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::task::AbortHandle;

use crate::config::HealthCheck;
use crate::group::{Health, Target};
use crate::snapshot::Snapshot;
use crate::upstream::UpstreamProtocol;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CheckKey {
    service: String,
    group: String,
    target: String,
    check: HealthCheck,
    protocol: UpstreamProtocol,
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
                    };
                    wanted.insert(key, t.clone());
                }
            }
        }
        self.running.retain(|key, (target, task)| {
            let keep = wanted.get(key).is_some_and(|t| Arc::ptr_eq(t, target));
            if !keep {
                task.abort();
                // Without a check the target is trusted again; a new check decides afresh.
                target.set_health(Health::Unknown);
            }
            keep
        });
        for (key, target) in wanted {
            if self.running.contains_key(&key) {
                continue;
            }
            let task = tokio::spawn(run(key.clone(), target.clone())).abort_handle();
            self.running.insert(key, (target, task));
        }
    }

    pub fn stop(&mut self) {
        for (_, (_, task)) in self.running.drain() {
            task.abort();
        }
    }
}

async fn run(key: CheckKey, target: Arc<Target>) {
    let check = &key.check;
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(check.timeout));
    connector.set_nodelay(true);
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_max_idle_per_host(1)
        .http2_only(key.protocol == UpstreamProtocol::Http2)
        .build(connector);
    let uri: Uri = format!("http://{}{}", target.addr, check.path)
        .parse()
        .expect("validated target and path");
    let mut ticker = tokio::time::interval(check.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut successes, mut failures) = (0u32, 0u32);
    loop {
        ticker.tick().await;
        target.pool.sweep(crate::metrics::now_ms());
        let result = probe(&client, &uri, check).await;
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

async fn probe(
    client: &Client<HttpConnector, Empty<Bytes>>,
    uri: &Uri,
    check: &HealthCheck,
) -> Result<(), String> {
    let req = Request::get(uri.clone())
        .header(http::header::USER_AGENT, "switchyard-health-check")
        .body(Empty::new())
        .expect("valid health check request");
    match tokio::time::timeout(check.timeout, client.request(req)).await {
        Err(_) => Err(format!(
            "no answer within {}",
            humantime::format_duration(check.timeout)
        )),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(resp)) if check.success_codes.contains(resp.status().as_u16()) => Ok(()),
        Ok(Ok(resp)) => Err(format!("status {}", resp.status().as_u16())),
    }
}
