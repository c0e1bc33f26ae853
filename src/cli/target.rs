//! Which instance a CLI verb talks to, and the admin API's errors in the CLI's words.
//!
//! Flags and the environment come first and are enough on their own: during an incident
//! `rollout abort --admin ADDR --token T` must work whatever the local file says. The file
//! (`-c`, default `./switchyard.toml`) is read only for what the flags did not give, and
//! errors say where the address came from, so that a wrong one is found at once.

use std::fmt;
use std::path::PathBuf;

use anyhow::bail;
use switchyard::client::{AdminClient, ClientError};
use switchyard::config;

/// The admin API's address and token, flattened into every verb that calls it.
#[derive(clap::Args, Clone)]
pub(super) struct Target {
    /// Configuration file; its [admin] section says where the API is and its token.
    #[arg(short, long, default_value = "switchyard.toml", global = true)]
    pub config: PathBuf,
    /// Admin API address, HOST:PORT or a port on 127.0.0.1 (overrides the config file).
    #[arg(long, env = "SWITCHYARD_ADMIN", global = true)]
    pub admin: Option<String>,
    /// Admin token (overrides the config file).
    #[arg(long, env = "SWITCHYARD_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
}

/// Where the address came from: said with an error that may be the address's fault.
enum Source {
    Flag,
    File(PathBuf),
    /// No file and no flag: the default address.
    Default(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag => f.write_str("from --admin or SWITCHYARD_ADMIN"),
            Source::File(p) => write!(f, "from [admin] bind in {}", p.display()),
            Source::Default(p) => write!(f, "the default: no {} here and no --admin", p.display()),
        }
    }
}

/// An admin API error as the CLI shows it.
#[derive(Debug, thiserror::Error)]
#[error("{text}")]
pub(super) struct CliError {
    text: String,
    /// Nothing answered (as opposed to an answer that refused).
    pub unreachable: bool,
}

/// The admin API, with errors explained in the CLI's words.
pub(super) struct Api {
    client: AdminClient,
    addr: String,
    source: Source,
}

impl Api {
    pub(super) async fn get(&self, path: &str) -> Result<serde_json::Value, CliError> {
        self.client.get(path).await.map_err(|e| self.explain(e))
    }

    pub(super) async fn post(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, CliError> {
        self.client
            .post(path, body)
            .await
            .map_err(|e| self.explain(e))
    }

    pub(super) async fn put(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, CliError> {
        self.client
            .put(path, body)
            .await
            .map_err(|e| self.explain(e))
    }

    /// The API speaks to every client; the CLI's user types flags. Its messages name what to
    /// type: `--force`, `--token`.
    fn explain(&self, e: ClientError) -> CliError {
        let text = match e {
            ClientError::Unreachable { reason, .. } => {
                return CliError {
                    text: format!(
                        "cannot reach the admin API at {} ({}): {reason}\n  is switchyard running there? pass -c FILE (its [admin] bind) or --admin ADDR",
                        self.addr, self.source
                    ),
                    unreachable: true,
                }
            }
            ClientError::Api {
                status,
                code,
                message,
            } => format!("{status}: {}", in_cli_words(&code, &message)),
            other => other.to_string(),
        };
        CliError {
            text,
            unreachable: false,
        }
    }
}

/// An API error's message as the CLI's user acts on it: the flags to type, not the HTTP
/// request to make. The API's words stay the API's (other clients read them).
fn in_cli_words(code: &str, message: &str) -> String {
    match code {
        "no_token" => "the admin API needs a token: pass --token TOKEN (or SWITCHYARD_TOKEN), or -c FILE whose [admin] has it".into(),
        "bad_token" => "the admin API refused the token (from --token, SWITCHYARD_TOKEN or the file's [admin] token)".into(),
        _ => message.replace("use force", "use --force"),
    }
}

/// The admin client for a CLI call: flags and environment first, then the config file.
pub(super) fn admin(t: &Target) -> anyhow::Result<Api> {
    let flag_addr = t.admin.as_deref().map(admin_address).transpose()?;
    let file = if flag_addr.is_some() && t.token.is_some() {
        None
    } else {
        match config::load(&t.config) {
            Ok(c) => Some(c.admin),
            Err(config::ConfigError::Read { .. }) => None,
            Err(e) if flag_addr.is_some() => {
                eprintln!(
                    "note: {} is not valid ({} problem(s); see `switchyard validate -c {}`): going on without its token",
                    t.config.display(),
                    e.diagnostics().len(),
                    t.config.display()
                );
                None
            }
            Err(e) => bail!(
                "reading the admin address and token from {}:\n{e}\n  pass --admin ADDR and --token TOKEN (or SWITCHYARD_ADMIN, SWITCHYARD_TOKEN) to act without it",
                t.config.display()
            ),
        }
    };
    let (addr, source) = match (flag_addr, &file) {
        (Some(a), _) => (a, Source::Flag),
        (None, Some(f)) => (f.bind.to_string(), Source::File(t.config.clone())),
        (None, None) => {
            let source = Source::Default(t.config.clone());
            eprintln!("note: admin API at 127.0.0.1:9901, {source}");
            ("127.0.0.1:9901".to_string(), source)
        }
    };
    let token = t.token.clone().or_else(|| file.and_then(|a| a.token));
    let client = AdminClient::new(&addr, token).with_actor(format!("cli:{}", user()));
    Ok(Api {
        client,
        addr,
        source,
    })
}

/// `--admin` as people type it: `HOST:PORT`, `http://HOST:PORT`, or a bare port on
/// 127.0.0.1. Anything else is refused saying what is expected.
fn admin_address(given: &str) -> anyhow::Result<String> {
    if let Ok(port) = given.parse::<u16>() {
        return Ok(format!("127.0.0.1:{port}"));
    }
    if given.starts_with("https://") {
        bail!("--admin {given:?}: the admin API speaks plain HTTP (keep it on localhost or reach it through a tunnel): give HOST:PORT");
    }
    let rest = given.strip_prefix("http://").unwrap_or(given);
    let port_ok = rest
        .trim_end_matches('/')
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !port_ok {
        bail!("--admin {given:?}: give HOST:PORT (e.g. 127.0.0.1:9901) or a port on 127.0.0.1");
    }
    Ok(given.to_string())
}

/// Who acts, for the audit history: `$USER`, else the login name of the process's user.
fn user() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(switchyard::sys::login_name)
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::{admin_address, in_cli_words};

    #[test]
    fn api_messages_name_the_cli_flags() {
        let m = in_cli_words(
            "unhealthy",
            "group \"green\" of service \"shop\" has no healthy target (use force to go ahead anyway)",
        );
        assert!(m.ends_with("(use --force to go ahead anyway)"), "{m}");
        let m = in_cli_words(
            "no_token",
            "send the admin token as `Authorization: Bearer TOKEN`",
        );
        assert!(m.contains("--token TOKEN") && !m.contains("Bearer"), "{m}");
        assert!(in_cli_words("bad_token", "the bearer token is wrong").contains("--token"));
    }

    #[test]
    fn admin_addresses_are_taken_as_typed_or_refused_saying_what_is_expected() {
        assert_eq!(admin_address("9602").unwrap(), "127.0.0.1:9602");
        assert_eq!(admin_address("10.0.0.5:9901").unwrap(), "10.0.0.5:9901");
        assert_eq!(
            admin_address("http://lb-1:9901").unwrap(),
            "http://lb-1:9901"
        );
        let err = admin_address("lb-1").unwrap_err().to_string();
        assert!(err.contains("give HOST:PORT"), "{err}");
        assert!(admin_address("99999").is_err());
        let err = admin_address("https://lb-1:9901").unwrap_err().to_string();
        assert!(err.contains("plain HTTP"), "{err}");
    }
}
