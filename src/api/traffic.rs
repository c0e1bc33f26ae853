//! Traffic endpoints: status, switch, weights, reload.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::{bad_request, Actor, Api, ApiError};
use crate::control::ControlError;
use crate::group::{GroupCounts, Health};
use crate::metrics::now_ms;
use crate::split::{format_percent, Split};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SwitchRequest {
    group: Option<String>,
    #[serde(default)]
    back: bool,
    #[serde(default)]
    force: bool,
}

pub(super) async fn switch(
    State(api): State<Api>,
    Actor(actor): Actor,
    Path(service): Path<String>,
    body: Result<Json<SwitchRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<crate::control::TrafficChange>, ApiError> {
    let Json(req) = body.map_err(bad_request)?;
    let change = match (req.group, req.back) {
        (Some(g), false) => api.control.switch(&service, &g, req.force, &actor).await?,
        (None, true) => api.control.switch_back(&service, req.force, &actor).await?,
        _ => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "bad_request",
                "give either `group` or `back: true`",
            ))
        }
    };
    Ok(Json(change))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WeightsRequest {
    /// Percent by group, e.g. {"blue": 90, "green": 10}; 0.01 % resolution.
    weights: BTreeMap<String, f64>,
    #[serde(default)]
    force: bool,
}

pub(super) async fn weights(
    State(api): State<Api>,
    Actor(actor): Actor,
    Path(service): Path<String>,
    body: Result<Json<WeightsRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<crate::control::TrafficChange>, ApiError> {
    let Json(req) = body.map_err(bad_request)?;
    let split = Split::from_percents(req.weights).map_err(|e| {
        let field = match e.group() {
            Some(g) => format!("weights.{g}"),
            None => "weights".into(),
        };
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_weights",
            format!("{field}: {e}"),
        )
    })?;
    Ok(Json(
        api.control
            .set_split(
                &service,
                split,
                req.force,
                &actor,
                crate::audit::EventKind::Weights,
            )
            .await?,
    ))
}

pub(super) async fn reload(
    State(api): State<Api>,
    Actor(actor): Actor,
) -> Result<Json<serde_json::Value>, ApiError> {
    match api.control.reload(&actor).await {
        Ok(generation) => Ok(Json(serde_json::json!({ "generation": generation }))),
        Err(ControlError::Config(e)) => {
            let mut err = ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_config",
                e.to_string(),
            );
            if let crate::config::ConfigError::Read { .. } = e {
                err.code = "unreadable_config";
            }
            tracing::error!(error = %err.message, "reload rejected; the running configuration stays");
            Err(err)
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub generation: u64,
    pub listeners: Vec<ListenerStatus>,
    pub services: Vec<ServiceStatus>,
    /// Writes published but not yet in the state database (a rollback during an outage).
    #[serde(default)]
    pub store: crate::control::StoreHealth,
    /// The fleet, when the state is shared in etcd: instances, leader, this one's contact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<crate::control::FleetStatus>,
    /// Who asked: the token's name and scopes (absent when the API is read-only, without
    /// tokens). The dashboard shows whom it is signed in as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<CallerStatus>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CallerStatus {
    pub name: String,
    pub scopes: Vec<String>,
}

/// The strategy a rollout of the service uses unless its start names another.
#[derive(Debug, Serialize, Deserialize)]
pub struct StrategyStatus {
    pub name: String,
    /// Blue-green: all traffic moves at once, by a switch or the rollout's promotion.
    pub blue_green: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ListenerStatus {
    pub name: String,
    pub addr: String,
    pub tls: bool,
    /// A TLS listener's certificates: names, expiry, whether it is soon.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<crate::tls::CertificateStatus>,
    /// With `client_auth`: `required` or `optional` client certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificates: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    /// Basis points by group.
    pub split: BTreeMap<String, u32>,
    pub split_text: String,
    pub previous: Option<BTreeMap<String, u32>>,
    pub stable: Option<String>,
    pub candidate: Option<String>,
    /// Share of requests per group over the last seconds (0–1), when there was traffic.
    pub observed: Option<BTreeMap<String, f64>>,
    #[serde(default)]
    pub strategy: Option<StrategyStatus>,
    /// Copies of requests going to a group and how their answers compare, while any do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorStatus>,
    pub groups: Vec<GroupStatus>,
}

/// A service's mirror (`crate::mirror`): where copies go, how many, what became of them.
#[derive(Debug, Serialize, Deserialize)]
pub struct MirrorStatus {
    pub group: String,
    /// Basis points of the eligible requests copied.
    pub share: u32,
    pub share_text: String,
    /// Copies waiting to be sent now, and the most that may wait.
    pub waiting: usize,
    pub queue: usize,
    /// Counts since the mirror began: compared, dropped (queue full), too_large, no_target,
    /// copy_failed, real_incomplete.
    pub outcomes: BTreeMap<String, u64>,
    /// Compared copies that differed, by how: status, headers, body, latency, no_answer.
    pub mismatches: BTreeMap<String, u64>,
    /// Percent of the copies compared in the last minute whose answers differed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mismatch_rate: Option<f64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct GroupStatus {
    pub name: String,
    pub weight: u32,
    pub weight_text: String,
    pub healthy_targets: usize,
    /// How traffic reaches the targets over TLS, in words; absent for plain TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
    /// Open WebSocket / Upgrade tunnels, those cut by a drain so far, and when the drain
    /// under way cuts the open ones (unix ms; after a switch took all traffic away).
    #[serde(default)]
    pub tunnels: u64,
    #[serde(default)]
    pub tunnels_cut: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnels_draining_until: Option<i64>,
    pub targets: Vec<TargetStatus>,
    pub counts: serde_json::Value,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TargetStatus {
    pub addr: String,
    pub health: String,
    pub ejected: bool,
    pub in_flight: u32,
    /// Under slow start: the share of its full traffic the target takes now (0–1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow_start: Option<f64>,
}

pub(super) async fn status(
    State(api): State<Api>,
    caller: Option<Extension<super::auth::Caller>>,
) -> Json<Status> {
    let snap = api.control.snapshot();
    let traffic = api.control.traffic().await;
    let now = now_ms();
    let mut listeners = Vec::new();
    for l in &snap.config.listeners {
        let addr = api.control.listener_addr(&l.name).await.unwrap_or(l.bind);
        let now_s = crate::sys::unix_ms() / 1000;
        listeners.push(ListenerStatus {
            name: l.name.clone(),
            addr: addr.to_string(),
            tls: l.is_tls(),
            certificates: l
                .certificates
                .iter()
                .map(|c| {
                    let warn = snap.config.certificate_warn_before;
                    crate::tls::CertificateStatus::of(&c.cert, &c.loaded, now_s, warn)
                })
                .collect(),
            client_certificates: l.client_auth.as_ref().map(|a| {
                let mode = if a.required { "required" } else { "optional" };
                mode.to_string()
            }),
        });
    }
    let services = snap
        .services
        .values()
        .map(|s| {
            let previous = traffic
                .get(&s.name)
                .and_then(|(_, p, _)| p.clone())
                .map(|p| p.basis_points().clone());
            let stable = traffic.get(&s.name).and_then(|(_, _, st)| st.clone());
            ServiceStatus {
                name: s.name.clone(),
                split: s.split().basis_points().clone(),
                split_text: s.split().to_string(),
                previous,
                stable,
                candidate: s.candidate.map(|i| s.groups[i].name.clone()),
                observed: api.control.observed(&s.name, 5_000),
                strategy: snap.config.service(&s.name).map(|c| StrategyStatus {
                    name: c.strategy.name.clone(),
                    blue_green: c.strategy.blue_green,
                }),
                mirror: s.mirror.as_ref().map(mirror_status),
                groups: s
                    .groups
                    .iter()
                    .zip(&s.weights)
                    .map(|(g, w)| GroupStatus {
                        name: g.name.clone(),
                        weight: *w,
                        weight_text: format_percent(*w),
                        healthy_targets: g.healthy_count(now),
                        tls: snap
                            .config
                            .service(&s.name)
                            .and_then(|c| c.group(&g.name))
                            .and_then(|c| c.tls.as_ref())
                            .map(crate::config::model::TargetTls::describe),
                        tunnels: g.stats.tunnels.open(),
                        tunnels_cut: g.stats.tunnels.cut_total(),
                        tunnels_draining_until: g.stats.tunnels.draining_until(),
                        targets: g
                            .targets
                            .iter()
                            .map(|t| TargetStatus {
                                addr: t.addr.to_string(),
                                health: match t.health() {
                                    Health::Unknown => "unknown",
                                    Health::Healthy => "healthy",
                                    Health::Unhealthy => "unhealthy",
                                }
                                .into(),
                                ejected: t.ejected(now),
                                in_flight: t.outstanding(),
                                slow_start: Some(t.warmth(g.slow_start, now)).filter(|w| *w < 1.0),
                            })
                            .collect(),
                        counts: counts_json(g.stats.snapshot()),
                    })
                    .collect(),
            }
        })
        .collect();
    Json(Status {
        generation: snap.generation,
        listeners,
        services,
        store: api.control.store_health(),
        fleet: api.control.fleet_status(),
        caller: caller.map(|Extension(c)| CallerStatus {
            name: c.name,
            scopes: c.scopes.0.iter().map(|s| s.name().to_string()).collect(),
        }),
    })
}

fn mirror_status(m: &crate::mirror::Mirror) -> MirrorStatus {
    use std::sync::atomic::Ordering::Relaxed;
    let c = &m.lane.counts;
    let minute = m
        .group
        .stats
        .window
        .last(std::time::Duration::from_secs(60));
    MirrorStatus {
        group: m.group.name.clone(),
        share: m.share,
        share_text: format_percent(m.share),
        waiting: m.lane.waiting(),
        queue: m.lane.queue,
        outcomes: c
            .outcomes()
            .iter()
            .map(|(k, n)| (k.to_string(), *n))
            .collect(),
        mismatches: crate::mirror::KINDS
            .iter()
            .zip(&c.kinds)
            .map(|(k, n)| (k.to_string(), n.load(Relaxed)))
            .collect(),
        mismatch_rate: minute.mirror_mismatch_rate(),
    }
}

fn counts_json(c: GroupCounts) -> serde_json::Value {
    serde_json::json!({
        "requests": c.requests,
        "1xx": c.responses[0], "2xx": c.responses[1], "3xx": c.responses[2],
        "4xx": c.responses[3], "5xx": c.responses[4],
        "connect_failures": c.connect_failures, "timeouts": c.timeouts, "resets": c.resets,
    })
}

/// A configuration file sent by the CLI: its text and where it lives (relative certificate
/// paths are resolved from there).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConfigRequest {
    path: String,
    content: String,
}

/// Parses a sent configuration off the runtime: it names certificate files, which are read.
async fn parse_request(req: ConfigRequest) -> Result<crate::config::Config, ApiError> {
    let path = std::path::Path::new(&req.path);
    let base = path
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .to_path_buf();
    crate::config::parse_async(req.content, req.path, &base)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_config",
                e.to_string(),
            )
        })
}

pub(super) async fn plan(
    State(api): State<Api>,
    body: Result<Json<ConfigRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(req) = body.map_err(bad_request)?;
    let config = parse_request(req).await?;
    let changes = api.control.plan(&config).await;
    Ok(Json(serde_json::json!({ "changes": changes })))
}

pub(super) async fn apply(
    State(api): State<Api>,
    Actor(actor): Actor,
    body: Result<Json<ConfigRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(req) = body.map_err(bad_request)?;
    let config = parse_request(req).await?;
    let applied = api.control.apply_config(config, &actor).await?;
    Ok(Json(
        serde_json::json!({ "changes": applied.changes, "generation": applied.generation }),
    ))
}
