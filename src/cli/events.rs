//! `switchyard events`: the audit history, oldest first.

use std::time::Duration;

use anyhow::bail;

use super::show::str_of;
use super::target::Api;
use crate::output::{self, outln};

/// Which events: the API's query parameters.
#[derive(clap::Args)]
pub(super) struct Filters {
    /// Only this service's events.
    #[arg(long)]
    service: Option<String>,
    /// Only this rollout's events (its number, as in `rollout history`).
    #[arg(long)]
    rollout: Option<u64>,
    /// Only events of this kind (switch, weights, started, promoted, rolled_back, …).
    #[arg(long)]
    kind: Option<String>,
    /// Only events by this actor (a token's name, or guard, driver, …).
    #[arg(long)]
    actor: Option<String>,
    /// At most this many, the newest.
    #[arg(long, default_value_t = 50)]
    limit: usize,
}

pub(super) async fn run(api: &Api, f: &Filters, json: bool) -> anyhow::Result<()> {
    let query: Vec<String> = [
        ("service", f.service.clone()),
        ("rollout", f.rollout.map(|r| r.to_string())),
        ("kind", f.kind.clone()),
        ("actor", f.actor.clone()),
        ("limit", Some(f.limit.to_string())),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| format!("{k}={v}")))
    .collect();
    let list = api
        .get(&format!("/api/v1/events?{}", query.join("&")))
        .await?;
    let events = list.as_array().cloned().unwrap_or_default();
    // The API filters by name and answers an unknown one with nothing: say which it is.
    if let (true, Some(service)) = (events.is_empty(), &f.service) {
        known_service(api, service).await?;
    }
    if json {
        output::json(&list);
        return Ok(());
    }
    for e in events.iter().rev() {
        let at = e["at"].as_i64().unwrap_or(0);
        let when = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + Duration::from_millis(at as u64),
        );
        let rollout = e["rollout"]
            .as_u64()
            .map(|r| format!(" #{r}"))
            .unwrap_or_default();
        let who = match e["on_behalf_of"].as_str() {
            Some(c) => format!("{} for {c}", str_of(&e["actor"])),
            None => str_of(&e["actor"]).to_string(),
        };
        outln!(
            "{when}  {:<12} {:<12} {:<14}{rollout}  {}",
            str_of(&e["service"]),
            who,
            str_of(&e["kind"]),
            str_of(&e["reason"])
        );
    }
    Ok(())
}

/// Fails unless the running configuration has a service named `service`.
async fn known_service(api: &Api, service: &str) -> anyhow::Result<()> {
    let status = api.get("/api/v1/status").await?;
    let names: Vec<&str> = status["services"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| str_of(&s["name"]))
        .collect();
    if !names.contains(&service) {
        bail!(
            "no service named \"{service}\" (services: {})",
            names.join(", ")
        );
    }
    Ok(())
}
