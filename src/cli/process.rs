//! The instance itself: `run` (serve until a signal), `validate`, and the options of a
//! process that serves (worker threads, the log's format and colour).

use std::path::Path;
use std::process::ExitCode;

use switchyard::config;
use switchyard::server::Server;

use crate::output::outln;

/// Options of a process that serves: `run`, `demo` (and the hidden test backend).
#[derive(clap::Args, Clone, Copy)]
pub(crate) struct Process {
    /// Tokio worker threads, 1 to 1024 (1 runs single-threaded; default: one per core).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,
    /// The log's format on standard error.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogFormat {
    /// One line per event, for people (coloured on a terminal).
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// `default`: the level when `SWITCHYARD_LOG` does not say. Colour only when the log goes
/// to a terminal: a log file or journal gets no escape codes.
pub(super) fn init_logging(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(crate::output::stderr_is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

pub(super) fn validate(path: &Path) -> anyhow::Result<ExitCode> {
    match config::load(path) {
        Ok(c) => {
            outln!(
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

pub(super) async fn serve(path: &Path) -> anyhow::Result<ExitCode> {
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
