//! `/metrics`, built at scrape time from the data plane's atomics (scrapes are rare; the hot
//! path never touches a registry). OpenMetrics by default (what Prometheus asks for first);
//! the Prometheus text format 0.0.4 to a client that asks for `text/plain` and not for
//! OpenMetrics (`Format::from_accept`), converted from the OpenMetrics encoding in one place
//! (`text_format`), where the two formats differ.

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::Api;
use crate::group::Health;
use crate::metrics::now_ms;

type Labels = Vec<(String, String)>;

/// A histogram whose numbers come from switchyard's own atomics, encoded at scrape time.
#[derive(Debug, Default)]
struct Snapshotted(std::sync::Mutex<HistogramValues>);

/// (sum, count, (upper bound, count in that bucket) …)
type HistogramValues = (f64, u64, Vec<(f64, u64)>);

impl prometheus_client::metrics::TypedMetric for Snapshotted {
    const TYPE: prometheus_client::metrics::MetricType =
        prometheus_client::metrics::MetricType::Histogram;
}

impl prometheus_client::encoding::EncodeMetric for Snapshotted {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = &*self.0.lock().expect("histogram");
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            *sum, *count, buckets, None,
        )
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Histogram
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The two exposition formats `/metrics` speaks.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    OpenMetrics,
    Text,
}

impl Format {
    /// The text format only for a client that accepts `text/plain` and not OpenMetrics (such
    /// as `Accept: text/plain;version=0.0.4`); OpenMetrics for everyone else, as always.
    fn from_accept(headers: &HeaderMap) -> Format {
        let accept = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",")
            .to_ascii_lowercase();
        if accept.contains("text/plain") && !accept.contains("application/openmetrics-text") {
            Format::Text
        } else {
            Format::OpenMetrics
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// OpenMetrics text to the Prometheus text format 0.0.4. Where they differ for what we
/// expose: a counter's HELP and TYPE name its sample (`x_total`), not its family (`x`), and
/// there is no `# EOF` and no `# UNIT`.
fn text_format(open_metrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| Some((p, line.strip_prefix(p)?)));
        match meta {
            Some((prefix, rest)) => {
                let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
                let total = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                out.push_str(&format!("{prefix}{name}{total} {text}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

pub(super) async fn metrics(State(api): State<Api>, headers: HeaderMap) -> impl IntoResponse {
    let format = Format::from_accept(&headers);
    let snap = api.control.snapshot();
    let mut registry = Registry::with_prefix("switchyard");
    let requests = Family::<Labels, Counter>::default();
    let responses = Family::<Labels, Counter>::default();
    let failures = Family::<Labels, Counter>::default();
    let client_errors = Family::<Labels, Counter>::default();
    let route_client_errors = Family::<Labels, Counter>::default();
    let weight = Family::<Labels, Gauge>::default();
    let tunnels = Family::<Labels, Gauge>::default();
    let tunnels_cut = Family::<Labels, Counter>::default();
    let healthy = Family::<Labels, Gauge>::default();
    let info = Family::<Labels, Gauge>::default();
    registry.register("requests", "Requests sent to a group", requests.clone());
    registry.register(
        "responses",
        "Answers by status class, from targets or from switchyard",
        responses.clone(),
    );
    registry.register(
        "upstream_failures",
        "Failed exchanges with targets by kind",
        failures.clone(),
    );
    registry.register(
        "client_errors",
        "Requests failed by the client (stalled, aborted or too large upload); not in responses",
        client_errors.clone(),
    );
    registry.register(
        "route_client_errors",
        "Requests failed by the client, by listener and route",
        route_client_errors.clone(),
    );
    registry.register(
        "tunnels_open",
        "Open WebSocket / Upgrade tunnels to a group",
        tunnels.clone(),
    );
    registry.register(
        "tunnels_cut",
        "Tunnels cut because their group had no traffic for drain_timeout",
        tunnels_cut.clone(),
    );
    registry.register(
        "weight_basis_points",
        "Configured share of a group, in basis points",
        weight.clone(),
    );
    registry.register(
        "target_healthy",
        "1 when a target may take requests",
        healthy.clone(),
    );
    registry.register("build_info", "switchyard's version", info.clone());
    info.get_or_create(&labels(&[("version", env!("CARGO_PKG_VERSION"))]))
        .set(1);
    if let Some(log) = &snap.access_log {
        let lines = Family::<Labels, Counter>::default();
        registry.register(
            "access_log_lines",
            "Access log lines written or dropped (writer behind)",
            lines.clone(),
        );
        lines
            .get_or_create(&labels(&[("outcome", "written")]))
            .inc_by(log.written.load(std::sync::atomic::Ordering::Relaxed));
        lines
            .get_or_create(&labels(&[("outcome", "dropped")]))
            .inc_by(log.dropped.load(std::sync::atomic::Ordering::Relaxed));
    }
    let latency = Family::<Labels, Snapshotted>::default();
    let target_requests = Family::<Labels, Counter>::default();
    let route_responses = Family::<Labels, Counter>::default();
    let observed = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let rollout = Family::<Labels, Gauge>::default();
    let rollout_step = Family::<Labels, Gauge>::default();
    let rollout_weight = Family::<Labels, Gauge>::default();
    let rollbacks = Family::<Labels, Counter>::default();
    let analyses = Family::<Labels, Counter>::default();
    registry.register(
        "latency_seconds",
        "Time to the response headers, per group",
        latency.clone(),
    );
    registry.register(
        "target_requests",
        "Requests sent to a target",
        target_requests.clone(),
    );
    registry.register(
        "route_responses",
        "Answers by listener, route and status class (route \"\" = no route matched)",
        route_responses.clone(),
    );
    registry.register(
        "observed_share",
        "Share of a service's requests a group got over the last 5 s (0-1)",
        observed.clone(),
    );
    registry.register(
        "rollout",
        "1 for the latest rollout of a service, labelled with its status and strategy",
        rollout.clone(),
    );
    registry.register(
        "rollout_step",
        "Index of the current step of the latest rollout",
        rollout_step.clone(),
    );
    registry.register(
        "rollout_weight_basis_points",
        "The candidate's weight in the latest rollout",
        rollout_weight.clone(),
    );
    registry.register(
        "rollbacks",
        "Rollouts rolled back, by cause (guard, analysis, hook, deadline, manual, undo)",
        rollbacks.clone(),
    );
    registry.register(
        "analysis_verdicts",
        "Analysis verdicts (pass, fail, inconclusive)",
        analyses.clone(),
    );
    for (listener, routes) in &snap.routes {
        for r in routes {
            for (i, n) in r.stats.responses().into_iter().enumerate() {
                let class = format!("{}xx", i + 1);
                route_responses
                    .get_or_create(&labels(&[
                        ("listener", listener),
                        ("route", &r.name),
                        ("class", &class),
                    ]))
                    .inc_by(n);
            }
            route_client_errors
                .get_or_create(&labels(&[("listener", listener), ("route", &r.name)]))
                .inc_by(
                    r.stats
                        .client_errors
                        .load(std::sync::atomic::Ordering::Relaxed),
                );
        }
    }
    for (listener, s) in &snap.unmatched {
        for (i, v) in s.responses().into_iter().enumerate() {
            if v > 0 {
                let class = format!("{}xx", i + 1);
                route_responses
                    .get_or_create(&labels(&[
                        ("listener", listener),
                        ("route", ""),
                        ("class", &class),
                    ]))
                    .inc_by(v);
            }
        }
    }
    for svc in snap.services.keys() {
        if let Some(shares) = api.control.observed(svc, 5_000) {
            for (g, s) in shares {
                observed
                    .get_or_create(&labels(&[("service", svc), ("group", &g)]))
                    .set(s);
            }
        }
        if let Ok(view) = api.control.rollout(svc).await {
            let r = &view.rollout;
            let status = serde_json::to_value(r.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let id = r.id.to_string();
            rollout
                .get_or_create(&labels(&[
                    ("service", svc),
                    ("rollout", &id),
                    ("status", &status),
                    ("strategy", &r.strategy.name),
                    ("candidate", &r.candidate),
                ]))
                .set(1);
            rollout_step
                .get_or_create(&labels(&[("service", svc)]))
                .set(r.step as i64);
            rollout_weight
                .get_or_create(&labels(&[("service", svc)]))
                .set(r.weight as i64);
        }
    }
    let pending = Gauge::<i64>::default();
    registry.register(
        "store_pending_writes",
        "Changes applied to traffic (rollbacks, holds) but not yet recorded in the state database",
        pending.clone(),
    );
    pending.set(api.control.store_health().pending_writes as i64);
    if let Some(f) = api.control.fleet_status() {
        let gauges = [
            ("fleet_connected", "1 while this instance reaches the fleet's etcd (0: degraded, serving its last state)", i64::from(f.store.connected)),
            ("fleet_leader", "1 while this instance leads the fleet (runs rollout drivers, guard, analyses, hooks)", i64::from(f.leading)),
            ("fleet_revision", "The fleet state revision this instance has applied", f.store.revision),
            ("fleet_instances", "Live instances of the fleet, as this instance last saw them", f.instances.len() as i64),
        ];
        for (name, help, value) in gauges {
            let g = Gauge::<i64>::default();
            registry.register(name, help, g.clone());
            g.set(value);
        }
        let reopened = Counter::<u64>::default();
        registry.register(
            "fleet_watch_reopened",
            "Times the fleet's etcd watch was silent longer than a healthy one can be and was reopened",
            reopened.clone(),
        );
        reopened.inc_by(f.store.watch_reopened);
    }
    let peer_pulls = Family::<Labels, Counter>::default();
    registry.register(
        "peer_pulls",
        "Pulls of a peer's per-second summaries for fleet-wide judgement, by result (ok, failed)",
        peer_pulls.clone(),
    );
    for ((peer, result), n) in api.control.peer_pulls() {
        peer_pulls
            .get_or_create(&labels(&[("peer", &peer), ("result", result)]))
            .inc_by(n);
    }
    let counts = api.control.counts.lock().expect("counts").clone();
    for ((svc, cause), n) in counts.rollbacks {
        rollbacks
            .get_or_create(&labels(&[("service", &svc), ("cause", &cause)]))
            .inc_by(n);
    }
    let synthetic = Family::<Labels, Counter>::default();
    registry.register(
        "synthetic_requests",
        "Synthetic requests to a candidate during analysis steps, by result",
        synthetic.clone(),
    );
    for ((svc, result), n) in counts.synthetic {
        synthetic
            .get_or_create(&labels(&[("service", &svc), ("result", &result)]))
            .inc_by(n);
    }
    mirrors(&mut registry, &snap);
    let handshakes = Family::<Labels, Counter>::default();
    registry.register(
        "tls_handshake_failures",
        "TLS handshakes that failed on a listener, by reason (timeout, closed, protocol, incompatible, certificate, alert, other)",
        handshakes.clone(),
    );
    let expiry = Family::<Labels, Gauge>::default();
    registry.register(
        "tls_certificate_not_after_seconds",
        "When a listener's certificate expires (unix seconds)",
        expiry.clone(),
    );
    let reads = Family::<Labels, Counter>::default();
    registry.register(
        "tls_certificate_reads",
        "Changed certificate files read by `[certificates] watch`, by result (swapped, unchanged, rejected: the running ones stayed)",
        reads.clone(),
    );
    for (result, n) in &counts.certificate_reads {
        reads
            .get_or_create(&labels(&[("result", result)]))
            .inc_by(*n);
    }
    let stapled = Family::<Labels, Gauge>::default();
    registry.register(
        "tls_ocsp_next_update_seconds",
        "When the OCSP response stapled to a listener's certificate goes stale (unix seconds)",
        stapled.clone(),
    );
    for l in &snap.config.listeners {
        for c in &l.certificates {
            let cert = c.cert.display().to_string();
            let at = labels(&[("listener", &l.name), ("cert", &cert)]);
            let leaf = c.loaded.0.cert.first();
            if let Some(t) = leaf.and_then(crate::tls::not_after) {
                expiry.get_or_create(&at).set(t);
            }
            if let Some(t) = c.loaded.ocsp_next_update() {
                stapled.get_or_create(&at).set(t);
            }
        }
    }
    for (listener, counts) in api.control.handshake_failures().await {
        for (reason, n) in counts {
            handshakes
                .get_or_create(&labels(&[("listener", &listener), ("reason", reason)]))
                .inc_by(n);
        }
    }
    for ((svc, verdict), n) in counts.analyses {
        analyses
            .get_or_create(&labels(&[("service", &svc), ("verdict", &verdict)]))
            .inc_by(n);
    }
    let now = now_ms();
    for svc in snap.services.values() {
        for (g, w) in svc.groups.iter().zip(&svc.weights) {
            let base = [("service", svc.name.as_str()), ("group", g.name.as_str())];
            let c = g.stats.snapshot();
            requests.get_or_create(&labels(&base)).inc_by(c.requests);
            for (i, n) in c.responses.iter().enumerate() {
                let class = format!("{}xx", i + 1);
                responses
                    .get_or_create(&labels(&[base[0], base[1], ("class", &class)]))
                    .inc_by(*n);
            }
            for (kind, n) in [
                ("connect", c.connect_failures),
                ("timeout", c.timeouts),
                ("reset", c.resets),
            ] {
                failures
                    .get_or_create(&labels(&[base[0], base[1], ("kind", kind)]))
                    .inc_by(n);
            }
            client_errors
                .get_or_create(&labels(&base))
                .inc_by(c.client_errors);
            weight.get_or_create(&labels(&base)).set(*w as i64);
            tunnels
                .get_or_create(&labels(&base))
                .set(g.stats.tunnels.open() as i64);
            tunnels_cut
                .get_or_create(&labels(&base))
                .inc_by(g.stats.tunnels.cut_total());
            {
                let (per, sum_us) = g.stats.latency();
                let mut buckets: Vec<(f64, u64)> = crate::group::LATENCY_BOUNDS
                    .iter()
                    .copied()
                    .zip(per.iter().copied())
                    .collect();
                buckets.push((f64::INFINITY, per[per.len() - 1]));
                let count = per.iter().sum();
                let sum = sum_us as f64 / 1e6;
                *latency
                    .get_or_create(&labels(&base))
                    .0
                    .lock()
                    .expect("histogram") = (sum, count, buckets);
            }
            for t in &g.targets {
                let addr = t.addr.to_string();
                target_requests
                    .get_or_create(&labels(&[base[0], base[1], ("target", &addr)]))
                    .inc_by(t.requests.sum());
                let up = t.routable(now) && t.health() != Health::Unhealthy;
                healthy
                    .get_or_create(&labels(&[base[0], base[1], ("target", &addr)]))
                    .set(i64::from(up));
            }
        }
    }
    let mut body = String::new();
    encode(&mut body, &registry).expect("metrics encode into a String");
    if format == Format::Text {
        body = text_format(&body);
    }
    ([(header::CONTENT_TYPE, format.content_type())], body)
}

/// Each service's mirror: copies by outcome, differences by kind, copies waiting.
fn mirrors(registry: &mut Registry, snap: &crate::snapshot::Snapshot) {
    use std::sync::atomic::Ordering::Relaxed;
    let copies = Family::<Labels, Counter>::default();
    registry.register(
        "mirror_copies",
        "Mirrored copies of requests, by outcome (compared, dropped, too_large, no_target, copy_failed, real_incomplete)",
        copies.clone(),
    );
    let mismatches = Family::<Labels, Counter>::default();
    registry.register(
        "mirror_mismatches",
        "Mirrored copies whose answer differed from the real one, by kind (status, headers, body, latency, no_answer)",
        mismatches.clone(),
    );
    let waiting = Family::<Labels, Gauge>::default();
    registry.register(
        "mirror_waiting",
        "Mirrored copies waiting to be sent",
        waiting.clone(),
    );
    for (svc, m) in snap.mirrors() {
        let group = m.group.name.as_str();
        for (outcome, n) in m.lane.counts.outcomes() {
            copies
                .get_or_create(&labels(&[
                    ("service", svc),
                    ("group", group),
                    ("outcome", outcome),
                ]))
                .inc_by(n);
        }
        for (kind, n) in crate::mirror::KINDS.iter().zip(&m.lane.counts.kinds) {
            mismatches
                .get_or_create(&labels(&[
                    ("service", svc),
                    ("group", group),
                    ("kind", kind),
                ]))
                .inc_by(n.load(Relaxed));
        }
        waiting
            .get_or_create(&labels(&[("service", svc), ("group", group)]))
            .set(m.lane.waiting() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, v.parse().unwrap());
        h
    }

    #[test]
    fn the_text_format_only_for_a_client_that_asks_for_it_and_not_for_openmetrics() {
        assert_eq!(Format::from_accept(&HeaderMap::new()), Format::OpenMetrics);
        assert_eq!(Format::from_accept(&accept("*/*")), Format::OpenMetrics);
        assert_eq!(
            Format::from_accept(&accept("text/plain;version=0.0.4")),
            Format::Text
        );
        // What Prometheus sends: OpenMetrics first.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(
            Format::from_accept(&accept(prometheus)),
            Format::OpenMetrics
        );
    }

    #[test]
    fn a_counters_help_and_type_name_its_total_sample_in_the_text_format() {
        let om = "# HELP sy_requests Requests \"quoted\".\n# TYPE sy_requests counter\nsy_requests_total{a=\"b\"} 3\n# HELP sy_up Up.\n# TYPE sy_up gauge\nsy_up 1\n# EOF\n";
        assert_eq!(
            text_format(om),
            "# HELP sy_requests_total Requests \"quoted\".\n# TYPE sy_requests_total counter\nsy_requests_total{a=\"b\"} 3\n# HELP sy_up Up.\n# TYPE sy_up gauge\nsy_up 1\n"
        );
    }
}
