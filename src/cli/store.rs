//! `switchyard store export|import`: moving a fleet's state between stores (SQLite and
//! etcd) as one JSON `Dump`. Both open the store the config file names directly, with no
//! instance running: SQLite's one-instance lock would refuse them otherwise, and an import
//! into a live etcd prefix would race the instances writing there.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use switchyard::config::{self, StoreConfig};
use switchyard::store::{Dump, EtcdStore, SqliteStore, Store};

/// How long to wait for etcd to answer.
const CONNECT: Duration = Duration::from_secs(5);

#[derive(Subcommand)]
pub(super) enum StoreCommand {
    /// Write everything the store holds (traffic, rollouts, events) as JSON. Stop the
    /// instance first when the store is SQLite: this opens the database itself.
    Export {
        /// The configuration file whose [store] is read.
        #[arg(short, long, default_value = "switchyard.toml")]
        config: PathBuf,
        /// Where to write (default: standard output).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Read a dump (from `store export`) into the store, ids kept; refused if the store
    /// holds any state. Stop the instance first when the store is SQLite.
    Import {
        /// The configuration file whose [store] is written.
        #[arg(short, long, default_value = "switchyard.toml")]
        config: PathBuf,
        /// The dump to read (from `store export`).
        file: PathBuf,
    },
}

pub(super) async fn run(command: StoreCommand) -> anyhow::Result<ExitCode> {
    match command {
        StoreCommand::Export { config, output } => {
            let store = open(&config).await?;
            let dump = tokio::task::spawn_blocking(move || store.export()).await??;
            let mut json = serde_json::to_string_pretty(&dump)?;
            json.push('\n');
            match output {
                Some(path) => std::fs::write(&path, json)
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None => std::io::stdout().write_all(json.as_bytes())?,
            }
            eprintln!("{}", summary("exported", &dump));
        }
        StoreCommand::Import { config, file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let dump: Dump = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a store export", file.display()))?;
            let store = open(&config).await?;
            let said = summary("imported", &dump);
            tokio::task::spawn_blocking(move || store.import(&dump)).await??;
            eprintln!("{said}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The store the configuration file names.
async fn open(path: &Path) -> anyhow::Result<Arc<dyn Store>> {
    let config = config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(match &config.store {
        StoreConfig::Sqlite { path } => Arc::new(SqliteStore::open(path).context(
            "store export/import opens the database itself: stop the instance that uses it first",
        )?),
        StoreConfig::Etcd(etcd) => EtcdStore::connect(etcd, "store-cli", CONNECT).await?,
    })
}

fn summary(what: &str, d: &Dump) -> String {
    format!(
        "{what}: {} services' traffic, {} rollouts, {} events",
        d.traffic.len(),
        d.rollouts.len(),
        d.events.len()
    )
}
