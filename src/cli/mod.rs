//! Command-line verbs. Those that act on a running instance go through its admin API.

mod rollout;
mod show;
mod status;
mod store;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use serde_json::json;
use switchyard::client::AdminClient;
use switchyard::config;
use switchyard::server::Server;
use switchyard::split;

use show::str_of;

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Layer-7 load balancer and release manager"
)]
pub(crate) struct Cli {
    /// Tokio worker threads (1 runs single-threaded).
    #[arg(long, global = true)]
    pub workers: Option<usize>,
    /// Log format: text or json.
    #[arg(long, global = true, default_value = "text")]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct Target {
    /// Configuration file; its [admin] section says where the API is and its token.
    #[arg(short, long, default_value = "switchyard.toml", global = true)]
    config: PathBuf,
    /// Admin API address (overrides the config file).
    #[arg(long, env = "SWITCHYARD_ADMIN", global = true)]
    admin: Option<String>,
    /// Admin token (overrides the config file).
    #[arg(long, env = "SWITCHYARD_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the load balancer.
    Run {
        #[arg(short, long, default_value = "switchyard.toml")]
        config: PathBuf,
    },
    /// Check a configuration file and print every problem with its line and column.
    Validate {
        #[arg(short, long, default_value = "switchyard.toml")]
        config: PathBuf,
    },
    /// Send all traffic of SERVICE to GROUP at once (blue-green switch), or --back.
    Switch {
        service: String,
        group: Option<String>,
        /// Restore the split before the last change.
        #[arg(long, conflicts_with = "group")]
        back: bool,
        /// Switch even if the group has no healthy target.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Set a weighted split, e.g. `switchyard weights shop blue=90 green=10`.
    Weights {
        service: String,
        #[arg(required = true)]
        weights: Vec<String>,
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Show what applying the file (-c) would change on the running instance.
    Plan {
        #[command(flatten)]
        target: Target,
    },
    /// Apply the file (-c) to the running instance, printing what changed.
    Apply {
        #[command(flatten)]
        target: Target,
    },
    /// Make the running instance re-read its configuration file.
    Reload {
        #[command(flatten)]
        target: Target,
    },
    /// Show services, groups, target health and weights.
    Status {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Rollouts: start, status, promote, pause, resume, abort, retry, undo, history.
    Rollout {
        #[command(subcommand)]
        command: rollout::RolloutCommand,
        #[command(flatten)]
        target: Target,
    },
    /// Analyses: `analysis run SERVICE` measures every check once, now, and prints the verdicts.
    Analysis {
        #[command(subcommand)]
        command: AnalysisCommand,
        #[command(flatten)]
        target: Target,
    },
    /// The audit history, oldest first, with filters.
    Events {
        #[arg(long)]
        service: Option<String>,
        #[arg(long)]
        rollout: Option<u64>,
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        actor: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        target: Target,
    },
    /// Move the state between stores: `store export` / `store import` (instance stopped).
    #[command(subcommand)]
    Store(store::StoreCommand),
    /// A self-contained walk-through: two backends, the balancer, traffic, switches, a canary.
    Demo {
        /// Instead: a canary whose new version fails, rolled back automatically.
        #[arg(long, conflicts_with = "fleet")]
        faulty: bool,
        /// Instead: etcd and three instances sharing their state; the leader is lost
        /// mid-rollout and another takes over (needs etcd: apt-get install etcd-server).
        #[arg(long)]
        fleet: bool,
        /// How long each phase (and each canary pause) lasts.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        phase: std::time::Duration,
    },
    /// A small test backend that answers with its name (for benchmarks and trials).
    #[command(hide = true)]
    Backend {
        #[arg(long)]
        bind: std::net::SocketAddr,
        #[arg(long)]
        name: String,
        /// Answers per thousand that are 500s.
        #[arg(long, default_value_t = 0)]
        errors_per_mille: u32,
    },
}

#[derive(Subcommand)]
enum AnalysisCommand {
    /// Measure every check once against live traffic (exit 0 all pass, 1 inconclusive, 2 fail).
    Run {
        service: String,
        /// One analysis (default: those the service's strategy names).
        #[arg(long)]
        analysis: Option<String>,
        /// The group to judge (default: the candidate of the rollout in progress).
        #[arg(long)]
        candidate: Option<String>,
    },
}

pub(crate) async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // The demo narrates itself; its instances' own warnings (a leader lost on purpose)
    // would only interleave with that.
    let level = match cli.command {
        Command::Run { .. } | Command::Backend { .. } => "info",
        Command::Demo { .. } => "error",
        _ => "warn",
    };
    init_logging(&cli.log_format, level);
    match cli.command {
        Command::Run { config } => serve(&config).await,
        Command::Validate { config } => validate(&config),
        Command::Switch {
            service,
            group,
            back,
            force,
            target,
        } => {
            let body = match (group, back) {
                (Some(g), false) => json!({ "group": g, "force": force }),
                (None, true) => json!({ "back": true, "force": force }),
                _ => bail!("give a GROUP to switch to, or --back"),
            };
            let res = admin(&target)?
                .post(&format!("/api/v1/services/{service}/switch"), body)
                .await?;
            print_traffic_change(&service, &res);
            Ok(ExitCode::SUCCESS)
        }
        Command::Weights {
            service,
            weights,
            force,
            target,
        } => {
            let mut percents = Vec::new();
            for w in &weights {
                let (g, pct) = w
                    .split_once('=')
                    .with_context(|| format!("\"{w}\" is not GROUP=PERCENT"))?;
                let pct: f64 = pct
                    .parse()
                    .with_context(|| format!("\"{pct}\" in \"{w}\" is not a number"))?;
                percents.push((g.to_string(), pct));
            }
            // The same rule as the file and the API, checked before anything is sent.
            let split = split::Split::from_percents(percents.iter().cloned())?;
            let map: serde_json::Map<String, serde_json::Value> = percents
                .into_iter()
                .filter(|(g, _)| split.groups().any(|s| s == g))
                .map(|(g, pct)| (g, json!(pct)))
                .collect();
            let res = admin(&target)?
                .put(
                    &format!("/api/v1/services/{service}/weights"),
                    json!({ "weights": map, "force": force }),
                )
                .await?;
            print_traffic_change(&service, &res);
            Ok(ExitCode::SUCCESS)
        }
        Command::Plan { target } => {
            let res = admin(&target)?
                .post("/api/v1/config/plan", config_body(&target.config)?)
                .await?;
            print_plan(&res);
            Ok(ExitCode::SUCCESS)
        }
        Command::Apply { target } => {
            let res = admin(&target)?
                .post("/api/v1/config/apply", config_body(&target.config)?)
                .await?;
            print_plan(&res);
            println!("applied: generation {}", res["generation"]);
            Ok(ExitCode::SUCCESS)
        }
        Command::Reload { target } => {
            let res = admin(&target)?.post("/api/v1/reload", json!({})).await?;
            println!("reloaded: generation {}", res["generation"]);
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json, target } => {
            let api = admin(&target)?;
            let mut res = api.get("/api/v1/status").await?;
            // Each service's latest rollout, if it has one.
            if let Some(services) = res["services"].as_array_mut() {
                for svc in services {
                    let name = str_of(&svc["name"]).to_string();
                    svc["rollout"] = api
                        .get(&format!("/api/v1/services/{name}/rollout"))
                        .await
                        .unwrap_or(serde_json::Value::Null);
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&res)?);
            } else {
                status::print_status(&res);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Rollout { command, target } => {
            rollout::run(&admin(&target)?, command).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Events {
            service,
            rollout,
            kind,
            actor,
            limit,
            target,
        } => {
            let filters = [
                ("service", service),
                ("rollout", rollout.map(|r| r.to_string())),
                ("kind", kind),
                ("actor", actor),
                ("limit", Some(limit.to_string())),
            ];
            rollout::events(&admin(&target)?, &filters).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Analysis {
            command:
                AnalysisCommand::Run {
                    service,
                    analysis,
                    candidate,
                },
            target,
        } => {
            let body = json!({ "analysis": analysis, "candidate": candidate });
            let res = admin(&target)?
                .post(&format!("/api/v1/services/{service}/analysis/run"), body)
                .await?;
            println!(
                "{service}: candidate {} against stable {}",
                str_of(&res["candidate"]),
                str_of(&res["stable"])
            );
            let mut worst = 0;
            for r in res["results"].as_array().into_iter().flatten() {
                let m = &r["measurement"];
                let outcome = str_of(&m["outcome"]);
                worst = worst.max(match outcome {
                    "pass" => 0,
                    "fail" => 2,
                    _ => 1,
                });
                println!(
                    "  {:<14} {:<16} {:<13} {}",
                    str_of(&r["analysis"]),
                    str_of(&m["check"]),
                    outcome,
                    str_of(&m["detail"])
                );
            }
            Ok(ExitCode::from(worst))
        }
        Command::Store(command) => store::run(command).await,
        Command::Demo {
            fleet: true, phase, ..
        } => crate::demo::fleet(phase).await.map(|_| ExitCode::SUCCESS),
        Command::Demo {
            faulty: false,
            phase,
            ..
        } => crate::demo::run(phase).await.map(|_| ExitCode::SUCCESS),
        Command::Demo {
            faulty: true,
            phase,
            ..
        } => crate::demo::faulty(phase).await.map(|_| ExitCode::SUCCESS),
        Command::Backend {
            bind,
            name,
            errors_per_mille,
        } => {
            let name: &'static str = Box::leak(name.into_boxed_str());
            let b = switchyard::backend::Backend::start(bind, name).await?;
            b.errors_per_mille.store(
                errors_per_mille.min(1000),
                std::sync::atomic::Ordering::Relaxed,
            );
            tracing::info!(addr = %b.addr, name, "backend listening");
            std::future::pending::<()>().await;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `default`: the level when `SWITCHYARD_LOG` does not say.
fn init_logging(format: &str, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn validate(path: &Path) -> anyhow::Result<ExitCode> {
    match config::load(path) {
        Ok(c) => {
            println!(
                "{}: ok ({} listeners, {} routes, {} services)",
                path.display(),
                c.listeners.len(),
                c.routes.len(),
                c.services.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(ExitCode::from(1))
        }
    }
}

async fn serve(path: &Path) -> anyhow::Result<ExitCode> {
    let config = config::load(path)?;
    let server = Server::start(config, Some(path.to_path_buf())).await?;
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // Reloads run in a task of their own, one at a time, so that SIGTERM never waits for
    // one (a reload may wait on a slow store or file). SIGHUPs that arrive during a reload
    // are folded into one more reload after it: the file may have changed meanwhile.
    let wanted = std::sync::Arc::new(tokio::sync::Notify::new());
    let reloader = {
        let (wanted, control) = (wanted.clone(), server.control.clone());
        tokio::spawn(async move {
            loop {
                wanted.notified().await;
                match control.reload("signal:SIGHUP").await {
                    Ok(generation) => tracing::info!(generation, "reloaded on SIGHUP"),
                    Err(e) => {
                        tracing::error!(error = %e, "reload on SIGHUP rejected; the running configuration stays");
                    }
                }
            }
        })
    };
    loop {
        tokio::select! {
            _ = hup.recv() => wanted.notify_one(),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    // A reload still running is dropped: the process is stopping, and the file is read
    // again at the next start.
    reloader.abort();
    tracing::info!("shutting down: no new connections, finishing in-flight requests");
    server.shutdown().await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// The admin client for a CLI call: flags and environment first, then the config file.
fn admin(t: &Target) -> anyhow::Result<AdminClient> {
    let from_file = if t.admin.is_none() || t.token.is_none() {
        match config::load(&t.config) {
            Ok(c) => Some(c.admin),
            Err(config::ConfigError::Read { .. }) if t.admin.is_some() => None,
            Err(config::ConfigError::Read { .. }) => None,
            Err(e) => return Err(e).context("reading the admin address and token"),
        }
    } else {
        None
    };
    let addr = t
        .admin
        .clone()
        .or_else(|| from_file.as_ref().map(|a| a.bind.to_string()))
        .unwrap_or_else(|| "127.0.0.1:9901".into());
    let token = t.token.clone().or_else(|| from_file.and_then(|a| a.token));
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    Ok(AdminClient::new(&addr, token).with_actor(format!("cli:{user}")))
}

fn config_body(path: &Path) -> anyhow::Result<serde_json::Value> {
    let content =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    Ok(json!({ "path": abs.display().to_string(), "content": content }))
}

fn print_plan(res: &serde_json::Value) {
    let changes = res["changes"].as_array().cloned().unwrap_or_default();
    if changes.is_empty() {
        println!("no changes");
    }
    for c in changes {
        let detail = str_of(&c["detail"]);
        let sep = if detail.is_empty() { "" } else { ": " };
        println!(
            "{} {}{sep}{detail}",
            c["op"].as_str().unwrap_or("?"),
            str_of(&c["what"])
        );
    }
}

/// What a switch or a weights change did: `shop: blue=100% -> green=100% (generation 4)`.
fn print_traffic_change(service: &str, res: &serde_json::Value) {
    println!(
        "{service}: {} -> {} (generation {})",
        split_text(&res["from"]),
        split_text(&res["to"]),
        res["generation"]
    );
}

fn split_text(v: &serde_json::Value) -> String {
    let Some(map) = v.as_object() else {
        return "?".into();
    };
    let parts: Vec<String> = map
        .iter()
        .filter_map(|(g, w)| {
            w.as_u64()
                .filter(|w| *w > 0)
                .map(|w| format!("{g}={}", split::format_percent(w as u32)))
        })
        .collect();
    parts.join(" ")
}
