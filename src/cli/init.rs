//! `switchyard init`: a commented starter configuration for one service with its groups,
//! so that the README's bare `switchyard switch …` works in a fresh directory (the verbs
//! read `./switchyard.toml` by default).

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};

#[derive(clap::Args)]
pub(super) struct Init {
    /// The service's name (routes forward to it).
    #[arg(long)]
    service: String,
    /// A group as NAME=HOST:PORT[,HOST:PORT…]; give it twice or more (the first takes the
    /// traffic).
    #[arg(long = "group", required = true, value_name = "NAME=TARGETS")]
    groups: Vec<String>,
    /// Where the balancer accepts traffic.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Where the admin API listens (keep it on localhost).
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin: SocketAddr,
    /// The file to write.
    #[arg(short, long, default_value = "switchyard.toml")]
    output: PathBuf,
    /// Overwrite the file if it exists.
    #[arg(long)]
    force: bool,
}

pub(super) fn run(init: &Init) -> anyhow::Result<()> {
    let groups = init
        .groups
        .iter()
        .map(|g| parse_group(g))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if groups.len() < 2 {
        bail!("give two groups or more (--group blue=HOST:PORT --group green=HOST:PORT): a release moves traffic from one to another");
    }
    if init.output.exists() && !init.force {
        bail!(
            "{} exists: use --force to overwrite it",
            init.output.display()
        );
    }
    let text = render(init, &groups, &token()?);
    std::fs::write(&init.output, text)
        .with_context(|| format!("cannot write {}", init.output.display()))?;
    crate::output::outln!(
        "wrote {}: service {} with groups {}; check it with `switchyard validate -c {}`",
        init.output.display(),
        init.service,
        groups
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        init.output.display()
    );
    Ok(())
}

/// `blue=127.0.0.1:8081,127.0.0.1:8082` → ("blue", its targets).
fn parse_group(given: &str) -> anyhow::Result<(String, Vec<SocketAddr>)> {
    let (name, targets) = given
        .split_once('=')
        .with_context(|| format!("--group {given:?}: give NAME=HOST:PORT"))?;
    let targets = targets
        .split(',')
        .map(|t| {
            t.trim().parse::<SocketAddr>().with_context(|| {
                format!("--group {given:?}: {t:?} is not HOST:PORT (an IP address and a port)")
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((name.to_string(), targets))
}

/// A fresh admin token: 128 random bits as hex.
fn token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom for the admin token")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn render(init: &Init, groups: &[(String, Vec<SocketAddr>)], token: &str) -> String {
    let quoted = |targets: &[SocketAddr]| {
        targets
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut groups_text = String::new();
    for (name, targets) in groups {
        groups_text.push_str(&format!(
            "\n[[service.group]]\nname = \"{name}\"\ntargets = [{}]\n",
            quoted(targets)
        ));
    }
    format!(
        r#"# switchyard starter configuration, written by `switchyard init`.
# Check it with `switchyard validate`, run it with `switchyard run`; the other verbs
# (`switchyard switch {service} {second}`, `switchyard status`, …) read this file from the
# current directory for the admin API's address and token. Every setting, with comments:
# examples/switchyard.toml in switchyard's source. Durations are strings ("5s", "2m").

[admin]
# The admin API (CLI, dashboard at /dashboard). Keep it on localhost.
bind = "{admin}"
# Full access (every scope). Keep this file private, or use `token_env = "VAR"` instead.
token = "{token}"

[store]
# Traffic, rollouts and the audit history; relative to this file.
path = "switchyard.db"

[[listener]]
name = "web"
bind = "{listen}"

# No conditions: every request on every listener goes to the service. Routes can match
# host, path, method, header, query, cookie and source address.
[[route]]
name = "all"
priority = 100
forward = "{service}"

[[service]]
name = "{service}"
# The group that takes all traffic at start; `switchyard switch` and rollouts move it.
active = "{first}"
# A canary: 10 %, wait, 50 %, wait, then all (`switchyard rollout start {service} {second}`).
[service.strategy]
kind = "canary"
steps = [{{ weight = 10 }}, {{ pause = "5m" }}, {{ weight = 50 }}, {{ pause = "5m" }}]

# Health checks (targets are taken as healthy without them):
# [service.health_check]
# path = "/healthz"
# interval = "5s"
{groups_text}"#,
        service = init.service,
        first = groups[0].0,
        second = groups[1].0,
        admin = init.admin,
        listen = init.listen,
    )
}
