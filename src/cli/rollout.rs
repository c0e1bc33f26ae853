//! `switchyard rollout …` and `switchyard events`: the rollout verbs and the live view.

use std::io::Write;
use std::time::Duration;

use anyhow::bail;
use clap::Subcommand;
use serde_json::{json, Value};
use switchyard::client::AdminClient;
use switchyard::split::format_percent;

use super::show::str_of;

#[derive(Subcommand)]
pub(super) enum RolloutCommand {
    /// Start a rollout of SERVICE to the CANDIDATE group.
    Start {
        service: String,
        candidate: String,
        /// canary, blue-green, all-at-once or a preset (canary-10pct-5m, linear-10pct-every-1m, …);
        /// default: the service's configured strategy.
        #[arg(long)]
        strategy: Option<String>,
        /// Start even if the candidate has no healthy target.
        #[arg(long)]
        force: bool,
    },
    /// Show the rollout of SERVICE: steps, weights and the observed split.
    Status {
        service: String,
        /// Redraw every second until the rollout ends.
        #[arg(long)]
        watch: bool,
        #[arg(long)]
        json: bool,
    },
    /// Move past the current pause or analysis step (--full: straight to all traffic).
    Promote {
        service: String,
        #[arg(long)]
        full: bool,
    },
    /// Hold the rollout where it is; timed pauses stop counting.
    Pause {
        service: String,
    },
    Resume {
        service: String,
    },
    /// All traffic back to the stable group at once.
    Abort {
        service: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Start an aborted rollout again from its first step.
    Retry {
        service: String,
        #[arg(long)]
        force: bool,
    },
    /// Roll back the last completed rollout.
    Undo {
        service: String,
        #[arg(long)]
        force: bool,
    },
    /// Past rollouts, newest first.
    History {
        service: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

pub(super) async fn run(api: &AdminClient, cmd: RolloutCommand) -> anyhow::Result<()> {
    match cmd {
        RolloutCommand::Start {
            service,
            candidate,
            strategy,
            force,
        } => {
            let mut body = json!({ "service": service, "candidate": candidate, "force": force });
            if let Some(s) = strategy {
                body["strategy"] = json!(s);
            }
            let r = api.post("/api/v1/rollouts", body).await?;
            println!(
                "rollout #{} of {}: {} -> {} ({}, {} steps)",
                r["id"],
                service,
                str_of(&r["stable"]),
                str_of(&r["candidate"]),
                str_of(&r["strategy"]["name"]),
                r["steps"].as_array().map_or(0, Vec::len)
            );
        }
        RolloutCommand::Status {
            service,
            watch,
            json,
        } => {
            let path = format!("/api/v1/services/{service}/rollout");
            if !watch {
                let r = api.get(&path).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&r)?);
                } else {
                    print!("{}", render(&r));
                }
                return Ok(());
            }
            // Bounded by the rollout itself: ends when it is no longer active.
            loop {
                let r = api.get(&path).await?;
                print!("\x1b[2J\x1b[H{}", render(&r));
                std::io::stdout().flush()?;
                let status = str_of(&r["status"]);
                if status != "progressing" && status != "paused" {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        RolloutCommand::History { service, limit } => {
            let mut path = format!("/api/v1/rollouts?limit={limit}");
            if let Some(s) = &service {
                path.push_str(&format!("&service={s}"));
            }
            let list = api.get(&path).await?;
            for r in list.as_array().into_iter().flatten() {
                println!(
                    "#{:<4} {:<16} {} -> {:<12} {:<22} {:<12} {}",
                    r["id"],
                    str_of(&r["service"]),
                    str_of(&r["stable"]),
                    str_of(&r["candidate"]),
                    str_of(&r["strategy"]["name"]),
                    str_of(&r["status"]),
                    str_of(&r["reason"])
                );
            }
        }
        verb => {
            let (service, name, body) = match verb {
                RolloutCommand::Promote { service, full } => {
                    (service, "promote", json!({ "full": full }))
                }
                RolloutCommand::Pause { service } => (service, "pause", json!({})),
                RolloutCommand::Resume { service } => (service, "resume", json!({})),
                RolloutCommand::Abort { service, reason } => {
                    (service, "abort", json!({ "reason": reason }))
                }
                RolloutCommand::Retry { service, force } => {
                    (service, "retry", json!({ "force": force }))
                }
                RolloutCommand::Undo { service, force } => {
                    (service, "undo", json!({ "force": force }))
                }
                _ => bail!("unreachable"),
            };
            let r = api
                .post(&format!("/api/v1/services/{service}/rollout/{name}"), body)
                .await?;
            print!("{}", render(&r));
        }
    }
    Ok(())
}

pub(super) async fn events(
    api: &AdminClient,
    filters: &[(&str, Option<String>)],
) -> anyhow::Result<()> {
    let query: Vec<String> = filters
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
        .collect();
    let list = api
        .get(&format!("/api/v1/events?{}", query.join("&")))
        .await?;
    for e in list.as_array().into_iter().flatten().rev() {
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
        println!(
            "{when}  {:<12} {:<12} {:<14}{rollout}  {}",
            str_of(&e["service"]),
            who,
            str_of(&e["kind"]),
            str_of(&e["reason"])
        );
    }
    Ok(())
}

/// The status view: steps with a progress bar, the weights and the split observed.
fn render(r: &Value) -> String {
    let mut out = String::new();
    let steps: Vec<&str> = r["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str())
        .collect();
    let current = r["step"].as_u64().unwrap_or(0) as usize;
    out.push_str(&format!(
        "rollout #{} of {}: {} -> {} ({}, attempt {})  status: {}\n",
        r["id"],
        str_of(&r["service"]),
        str_of(&r["stable"]),
        str_of(&r["candidate"]),
        str_of(&r["strategy"]["name"]),
        r["attempt"].as_u64().unwrap_or(0) + 1,
        str_of(&r["status"])
    ));
    if let Some(reason) = r["reason"].as_str() {
        out.push_str(&format!("  {reason}\n"));
    }
    let done = current.min(steps.len());
    let width = 30;
    let filled = if steps.is_empty() {
        width
    } else {
        done * width / steps.len()
    };
    out.push_str(&format!(
        "  [{}{}] {done}/{} steps\n",
        "#".repeat(filled),
        "-".repeat(width - filled),
        steps.len()
    ));
    let status = str_of(&r["status"]);
    for (i, s) in steps.iter().enumerate() {
        let mark = if i < current || status == "completed" {
            "x"
        } else if i == current && (status == "progressing" || status == "paused") {
            ">"
        } else {
            " "
        };
        let mut line = format!("  [{mark}] {}. {s}", i + 1);
        if mark == ">" && s.starts_with("pause ") && !s.contains("until") {
            let elapsed = r["pause_elapsed_ms"].as_u64().unwrap_or(0);
            line.push_str(&format!("  ({}s elapsed)", elapsed / 1000));
        }
        out.push_str(&line);
        out.push('\n');
    }
    let weights: Vec<String> = r["split"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(g, w)| format!("{g} {}", format_percent(w.as_u64().unwrap_or(0) as u32)))
        .collect();
    out.push_str(&format!("  weights:  {}\n", weights.join("  ")));
    match r["observed"].as_object() {
        Some(obs) => {
            let o: Vec<String> = obs
                .iter()
                .map(|(g, s)| format!("{g} {:.1}%", s.as_f64().unwrap_or(0.0) * 100.0))
                .collect();
            out.push_str(&format!("  observed: {}  (last 5 s)\n", o.join("  ")));
        }
        None => out.push_str("  observed: no traffic in the last 5 s\n"),
    }
    out
}
