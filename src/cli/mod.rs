//! Command-line verbs. Those that act on a running instance go through its admin API
//! (`target`: which instance, and its errors in the CLI's words); output goes through
//! `output` (a closed pipe ends a command quietly; `--json` is the API's answer as it came).

mod analysis;
mod events;
mod init;
mod process;
mod rollout;
mod show;
mod status;
mod store;
mod target;
mod traffic;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::output::{self, outln};
use target::{admin, Target};

pub(crate) use process::Process;

#[derive(Parser)]
#[command(
    name = "switchyard",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("SWITCHYARD_GIT_COMMIT"), ")"),
    about = "Layer-7 load balancer and release manager"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// The options of a process that serves, for the verbs that serve (the others run on
    /// the default runtime and log warnings as text).
    pub(crate) fn process(&self) -> Process {
        match &self.command {
            Command::Run { process, .. }
            | Command::Demo { process, .. }
            | Command::Backend { process, .. } => *process,
            _ => Process {
                workers: None,
                log_format: process::LogFormat::Text,
            },
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the load balancer.
    Run {
        /// The configuration file.
        #[arg(short, long, default_value = "switchyard.toml")]
        config: PathBuf,
        #[command(flatten)]
        process: Process,
    },
    /// Check a configuration file and print every problem with its line and column.
    Validate {
        /// The configuration file.
        #[arg(short, long, default_value = "switchyard.toml")]
        config: PathBuf,
    },
    /// Write a commented starter configuration for one service and its groups.
    Init(init::Init),
    /// Send all traffic of SERVICE to GROUP at once (blue-green switch), or --back.
    Switch {
        /// The service whose traffic moves.
        service: String,
        /// The group that takes all traffic.
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
        /// The service whose split changes.
        service: String,
        /// GROUP=PERCENT for each group (`blue=90` or `blue=90%`; 0.01 resolution, sum 100).
        #[arg(required = true)]
        weights: Vec<String>,
        /// Even if a group given weight has no healthy target.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Show what applying the file (-c) would change on the running instance.
    Plan {
        /// Print the API's answer as JSON.
        #[arg(long)]
        json: bool,
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
        /// Print the API's answer as JSON (each service with its latest rollout).
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
        command: analysis::AnalysisCommand,
        #[command(flatten)]
        target: Target,
    },
    /// The audit history, oldest first, with filters.
    Events {
        #[command(flatten)]
        filters: events::Filters,
        /// Print the API's answer as JSON (newest first, as the API gives it).
        #[arg(long)]
        json: bool,
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
        #[command(flatten)]
        process: Process,
    },
    /// A small test backend that answers with its name (for benchmarks and trials).
    #[command(hide = true)]
    Backend {
        /// The address to listen on.
        #[arg(long)]
        bind: std::net::SocketAddr,
        /// The name it answers with.
        #[arg(long)]
        name: String,
        /// Answers per thousand that are 500s.
        #[arg(long, default_value_t = 0)]
        errors_per_mille: u32,
        #[command(flatten)]
        process: Process,
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
    process::init_logging(cli.process().log_format, level);
    let ok = |()| ExitCode::SUCCESS;
    match cli.command {
        Command::Run { config, .. } => process::serve(&config).await,
        Command::Validate { config } => process::validate(&config),
        Command::Init(init) => init::run(&init).map(ok),
        Command::Switch {
            service,
            group,
            back,
            force,
            target,
        } => traffic::switch(&admin(&target)?, &service, group, back, force)
            .await
            .map(ok),
        Command::Weights {
            service,
            weights,
            force,
            target,
        } => traffic::weights(&admin(&target)?, &service, &weights, force)
            .await
            .map(ok),
        Command::Plan { json, target } => {
            traffic::plan(&admin(&target)?, &target.config, false, json)
                .await
                .map(ok)
        }
        Command::Apply { target } => traffic::plan(&admin(&target)?, &target.config, true, false)
            .await
            .map(ok),
        Command::Reload { target } => {
            let res = admin(&target)?
                .post("/api/v1/reload", serde_json::json!({}))
                .await?;
            outln!("reloaded: generation {}", res["generation"]);
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json, target } => status::run(&admin(&target)?, json).await.map(ok),
        Command::Rollout { command, target } => {
            rollout::run(&admin(&target)?, command).await.map(ok)
        }
        Command::Events {
            filters,
            json,
            target,
        } => events::run(&admin(&target)?, &filters, json).await.map(ok),
        Command::Analysis { command, target } => analysis::run(&admin(&target)?, command).await,
        Command::Store(command) => store::run(command).await,
        Command::Demo {
            fleet,
            faulty,
            phase,
            ..
        } => {
            let demo = async {
                match (fleet, faulty) {
                    (true, _) => crate::demo::fleet(phase).await,
                    (false, false) => crate::demo::run(phase).await,
                    (false, true) => crate::demo::faulty(phase).await,
                }
            };
            // A reader that went away (`demo | head`) ends the demo quietly; dropping its
            // future stops its servers and its etcd and removes their files.
            tokio::select! {
                done = demo => done.map(|()| ExitCode::SUCCESS),
                () = output::closed().cancelled() => Ok(ExitCode::SUCCESS),
            }
        }
        Command::Backend {
            bind,
            name,
            errors_per_mille,
            ..
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

/// Ends the process for an error `run` returned: quietly when the reader of standard
/// output went away (`| head`), else the error with its causes and exit code 1.
pub(crate) fn fail(e: &anyhow::Error) -> ExitCode {
    if output::is_closed_pipe(e) {
        return ExitCode::SUCCESS;
    }
    eprintln!("error: {}", causes(e));
    ExitCode::from(1)
}

/// The error and its causes, `a: b: c`, each said once: an error whose text already says its
/// cause and that also gives it as its source (`cannot bind …: Address already in use`, a
/// control error wrapping the store's) does not print the cause twice.
fn causes(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain().map(ToString::to_string) {
        if out.contains(&cause) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&cause);
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every argument of every verb, however deep, says what it is for in `--help`.
    #[test]
    fn every_argument_of_every_verb_has_help_text() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        let cli = super::Cli::command();
        walk(&cli, "switchyard", &mut missing);
        assert!(missing.is_empty(), "arguments without help: {missing:?}");
        super::Cli::command().debug_assert();
    }

    /// `--workers` and `--log-format` are on the verbs that serve, and only there.
    #[test]
    fn process_options_are_only_on_the_verbs_that_serve() {
        let cli = super::Cli::command();
        for sub in cli.get_subcommands() {
            let has = sub.get_arguments().any(|a| a.get_id() == "workers");
            let serves = matches!(sub.get_name(), "run" | "demo" | "backend");
            assert_eq!(has, serves, "{}", sub.get_name());
        }
    }
}
