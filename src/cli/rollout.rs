//! `switchyard rollout …`: the rollout verbs and the live view.

use std::time::Duration;

use anyhow::bail;
use clap::Subcommand;
use serde_json::{json, Value};
use switchyard::split::format_percent;

use super::show::{new_errors_lines, observed_text, step_of, str_of};
use super::target::Api;
use crate::output::{self, out, outln};

#[derive(Subcommand)]
pub(super) enum RolloutCommand {
    /// Start a rollout of SERVICE to the CANDIDATE group.
    Start {
        /// The service to release.
        service: String,
        /// The group that runs the new version.
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
        /// The service whose rollout is shown.
        service: String,
        /// Follow it until it ends: redrawn every second on a terminal, else one line per
        /// change.
        #[arg(long)]
        watch: bool,
        /// Print the API's answer as JSON (`step` and `attempt` count from 0 there).
        #[arg(long, conflicts_with = "watch")]
        json: bool,
    },
    /// Move past the current pause or analysis step (--full: straight to all traffic).
    Promote {
        /// The service whose rollout moves on.
        service: String,
        /// Skip the remaining steps: all traffic to the candidate.
        #[arg(long)]
        full: bool,
    },
    /// Hold the rollout where it is; timed pauses stop counting.
    Pause {
        /// The service whose rollout is held.
        service: String,
    },
    /// Let a paused rollout go on (a timed pause counts on from where it stopped).
    Resume {
        /// The service whose rollout goes on.
        service: String,
    },
    /// All traffic back to the stable group at once.
    Abort {
        /// The service whose rollout is aborted.
        service: String,
        /// Why, for the audit history.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Start an aborted rollout again from its first step.
    Retry {
        /// The service whose rollout starts again.
        service: String,
        /// Even if the candidate has no healthy target.
        #[arg(long)]
        force: bool,
    },
    /// Roll back the last completed rollout: all traffic straight back within the service's
    /// `rollback_window` after it completed, later a new rollout back through the steps.
    Undo {
        /// The service whose last rollout is undone.
        service: String,
        /// Even if the old stable group has no healthy target.
        #[arg(long)]
        force: bool,
        /// All traffic straight back even past the rollback window.
        #[arg(long)]
        immediate: bool,
    },
    /// Past rollouts, newest first.
    History {
        /// Only this service's rollouts.
        service: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print the API's answer as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub(super) async fn run(api: &Api, cmd: RolloutCommand) -> anyhow::Result<()> {
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
            outln!(
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
            if watch {
                return follow(api, &path).await;
            }
            let r = api.get(&path).await?;
            if json {
                output::json(&r);
            } else {
                out!("{}", render(&r));
            }
        }
        RolloutCommand::History {
            service,
            limit,
            json,
        } => {
            let mut path = format!("/api/v1/rollouts?limit={limit}");
            if let Some(s) = &service {
                path.push_str(&format!("&service={s}"));
            }
            let list = api.get(&path).await?;
            if json {
                output::json(&list);
                return Ok(());
            }
            for r in list.as_array().into_iter().flatten() {
                outln!(
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
                RolloutCommand::Undo {
                    service,
                    force,
                    immediate,
                } => (
                    service,
                    "undo",
                    json!({ "force": force, "immediate": immediate }),
                ),
                _ => bail!("unreachable"),
            };
            let mut r = api
                .post(&format!("/api/v1/services/{service}/rollout/{name}"), body)
                .await?;
            // Past its last step a rollout is completed by its driver a moment after the
            // answer: the state shown is the one after that (bounded: a driver held up by
            // a hook or the store leaves the answer as it was).
            let until = tokio::time::Instant::now() + FINISHING;
            while finishing(&r) && tokio::time::Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(100)).await;
                r = api
                    .get(&format!("/api/v1/services/{service}/rollout"))
                    .await?;
            }
            // The state after the change. A verb's answer has no observed split (that is
            // measured over seconds, not at a command's moment); a status read has.
            out!("{}", render(&r));
        }
    }
    Ok(())
}

/// How long a verb's output waits for a rollout past its last step to be completed.
const FINISHING: Duration = Duration::from_secs(3);

/// Whether every step ran and the driver is yet to complete the rollout.
fn finishing(r: &Value) -> bool {
    let steps = r["steps"].as_array().map_or(0, Vec::len) as u64;
    r["status"] == "progressing" && r["step"].as_u64().unwrap_or(0) >= steps
}

/// `status --watch`: until the rollout is no longer active. On a terminal the view is
/// redrawn every second; otherwise (a pipe, a log) one line is written per change, and no
/// screen-clearing escapes.
async fn follow(api: &Api, path: &str) -> anyhow::Result<()> {
    let redraw = output::stdout_is_terminal();
    let mut last = String::new();
    loop {
        let r = api.get(path).await?;
        if redraw {
            out!("\x1b[2J\x1b[H{}", render(&r));
        } else {
            let line = one_line(&r);
            if line != last {
                outln!("{line}");
                last = line;
            }
        }
        let status = str_of(&r["status"]);
        if status != "progressing" && status != "paused" {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A rollout in one line, for `--watch` to a pipe: what changes when it moves (not the
/// observed split or the time left, which change every second).
fn one_line(r: &Value) -> String {
    let reason = r["reason"]
        .as_str()
        .map(|s| format!(" — {s}"))
        .unwrap_or_default();
    format!(
        "rollout #{} of {}: {}, {}, weights {}{reason}",
        r["id"],
        str_of(&r["service"]),
        str_of(&r["status"]),
        step_of(r),
        weights_text(r)
    )
}

fn weights_text(r: &Value) -> String {
    let weights: Vec<String> = r["split"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(g, w)| format!("{g} {}", format_percent(w.as_u64().unwrap_or(0) as u32)))
        .collect();
    weights.join("  ")
}

/// What is left of the timed pause step `i` is running: `(40s left of 1m)`.
fn pause_left(r: &Value, i: usize) -> Option<String> {
    let total = r["strategy"]["steps"][i]["pause"]["duration_ms"].as_u64()?;
    let elapsed = r["pause_elapsed_ms"].as_u64().unwrap_or(0);
    let left = Duration::from_secs(total.saturating_sub(elapsed).div_ceil(1000));
    let total = Duration::from_secs(total / 1000);
    let stopped = if r["status"] == "paused" {
        ", stopped while paused"
    } else {
        ""
    };
    Some(format!(
        "  ({} left of {}{stopped})",
        humantime::format_duration(left),
        humantime::format_duration(total)
    ))
}

/// The status view: steps with a progress bar, the weights, the split observed and the
/// candidate's failed answers by fingerprint.
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
    if let Some(b) = r["strategy"]["baseline"].as_str() {
        out.push_str(&format!(
            "  baseline {b}: the candidate's weight beside it, and judged against it\n"
        ));
    }
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
        "  [{}{}] {}\n",
        "#".repeat(filled),
        "-".repeat(width - filled),
        step_of(r)
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
        if mark == ">" {
            line.push_str(&pause_left(r, i).unwrap_or_default());
        }
        out.push_str(&line);
        out.push('\n');
    }
    out.push_str(&format!("  weights:  {}\n", weights_text(r)));
    // The status answer measures it (null: no traffic); a verb's answer does not have it.
    match &r["observed"] {
        Value::Null if r.get("observed").is_some() => {
            out.push_str("  observed (last 5 s): no traffic\n");
        }
        obs if obs.is_object() => {
            out.push_str(&format!("  observed (last 5 s): {}\n", observed_text(obs)));
        }
        _ => {}
    }
    for line in new_errors_lines(r, "  ") {
        out.push_str(&line);
        out.push('\n');
    }
    out
}
