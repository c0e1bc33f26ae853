//! `/metrics` in the Prometheus text format, built at scrape time from the data plane's
//! atomics (scrapes are rare; the hot path never touches a registry).

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::Api;
use crate::group::{now_ms, Health};

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub(super) async fn metrics(State(api): State<Api>) -> impl IntoResponse {
    let snap = api.control.snapshot();
    let mut registry = Registry::with_prefix("switchyard");
    let requests = Family::<Labels, Counter>::default();
    let responses = Family::<Labels, Counter>::default();
    let failures = Family::<Labels, Counter>::default();
    let weight = Family::<Labels, Gauge>::default();
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
            weight.get_or_create(&labels(&base)).set(*w as i64);
            for t in &g.targets {
                let addr = t.addr.to_string();
                let up = t.routable(now) && t.health() != Health::Unhealthy;
                healthy
                    .get_or_create(&labels(&[base[0], base[1], ("target", &addr)]))
                    .set(i64::from(up));
            }
        }
    }
    let mut body = String::new();
    encode(&mut body, &registry).expect("metrics encode into a String");
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}
