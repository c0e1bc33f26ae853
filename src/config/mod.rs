//! The configuration file: parsed once, validated into `model` types, and rejected as a whole
//! when anything is wrong, with every problem located by file, line, column and field.

pub mod admin;
pub mod analysis;
mod client_auth;
pub mod diff;
mod fields;
mod guard;
pub mod hooks;
mod listeners;
pub mod load;
pub mod locate;
mod mirror;
pub mod model;
pub mod raw;
mod release;
mod routes;
mod ser;
mod store;
mod synthetic;
mod target_tls;
mod tls_policy;
mod transform;
mod validate;

use std::fmt;
use std::path::Path;

pub use admin::{AdminConfig, AdminLimits, AdminToken, Scope, Scopes};
pub use fields::target_addr;
pub use model::*;

/// Validates a strategy given in an API request; errors read `strategy.steps[1].pause: …`.
pub fn strategy_from_request(
    raw: &raw::RawStrategy,
    analyses: &[String],
) -> Result<crate::rollout::Strategy, String> {
    let mut p = fields::Problems::new();
    match release::strategy(raw, analyses, &crate::path!["strategy"], &mut p) {
        Some(s) if p.is_empty() => Ok(s),
        _ => Err(p
            .into_unique()
            .into_iter()
            .map(|(at, msg)| format!("{at}: {msg}"))
            .collect::<Vec<_>>()
            .join("; ")),
    }
}

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub field: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.line, self.column, self.field, self.message
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The cause is in the text, not a `source`: printed once however the error is shown.
    #[error("{file}: cannot read: {cause}")]
    Read {
        file: String,
        cause: crate::bounded::FileError,
    },
    #[error("{}", .0.iter().map(std::string::ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Diagnostic>),
}

impl ConfigError {
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Invalid(d) => d,
            ConfigError::Read { .. } => &[],
        }
    }
}

/// Reads and validates a file. Relative certificate paths are taken from the file's folder.
/// Blocking (the file and its certificates are read): on the runtime, use [`load_async`].
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let bytes =
        crate::bounded::read_file(path, crate::bounded::MAX_FILE_BYTES).map_err(|source| {
            ConfigError::Read {
                file: file.clone(),
                cause: source,
            }
        })?;
    let src = text(bytes, &file)?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&src, &file, base)
}

/// The file's bytes as text, or the place where they stop being UTF-8 (a file cut inside a
/// multi-byte character, a stray Latin-1 byte) as a located diagnostic like any other.
pub fn text(bytes: Vec<u8>, file: &str) -> Result<String, ConfigError> {
    String::from_utf8(bytes).map_err(|e| {
        let bytes = e.as_bytes();
        let e = e.utf8_error();
        let good = std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default();
        let (line, column) = locate::Locator::new(good).line_col(good.len());
        let message = match e.error_len() {
            None => "the file ends inside a multi-byte character: it is cut short or not UTF-8",
            Some(_) => "invalid UTF-8 here: the file must be UTF-8 text",
        };
        ConfigError::Invalid(vec![Diagnostic {
            file: file.to_string(),
            line,
            column,
            field: "syntax".to_string(),
            message: message.to_string(),
        }])
    })
}

/// How long loading a configuration off the runtime may take before the caller gives up on
/// it (the blocking thread is left to finish on its own).
pub const LOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// [`load`] on a blocking thread, bounded by [`LOAD_TIMEOUT`]: a reload never holds up the
/// proxy or the admin API on the file system.
pub async fn load_async(path: &Path) -> Result<Config, ConfigError> {
    let owned = path.to_path_buf();
    off_runtime(path, move || load(&owned)).await
}

/// [`parse`] (which reads the certificates the text names) on a blocking thread, bounded by
/// [`LOAD_TIMEOUT`].
pub async fn parse_async(
    src: String,
    file: String,
    base_dir: &Path,
) -> Result<Config, ConfigError> {
    let base = base_dir.to_path_buf();
    let shown = std::path::PathBuf::from(&file);
    off_runtime(&shown, move || parse(&src, &file, &base)).await
}

async fn off_runtime<F>(path: &Path, f: F) -> Result<Config, ConfigError>
where
    F: FnOnce() -> Result<Config, ConfigError> + Send + 'static,
{
    match tokio::time::timeout(LOAD_TIMEOUT, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(res)) => res,
        Ok(Err(e)) => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(ConfigError::Read {
            file: path.display().to_string(),
            cause: crate::bounded::FileError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "reading it and its certificates took longer than {}",
                    humantime::format_duration(LOAD_TIMEOUT)
                ),
            )),
        }),
    }
}

/// The text to a configuration in three steps: TOML into `raw` types, the load step
/// (`load`: token variables and certificate files, relative paths from `base_dir`), then
/// validation, which reads nothing. Blocking (certificates): on the runtime, use
/// [`parse_async`].
pub fn parse(src: &str, file: &str, base_dir: &Path) -> Result<Config, ConfigError> {
    let locator = locate::Locator::new(src);
    let diag = |offset: usize, field: String, message: String| {
        let (line, column) = locator.line_col(offset);
        Diagnostic {
            file: file.to_string(),
            line,
            column,
            field,
            message,
        }
    };
    let raw: raw::RawConfig = match toml::from_str(src) {
        Ok(raw) => raw,
        Err(e) => {
            let offset = e.span().map_or(0, |s| s.start);
            let field = locator.path_at(offset);
            let field = if field.0.is_empty() {
                "syntax".to_string()
            } else {
                field.to_string()
            };
            let message = e.message().trim().replace('\n', " ");
            return Err(ConfigError::Invalid(vec![diag(offset, field, message)]));
        }
    };
    let loaded = load::load(&raw, base_dir);
    let mut config = validate::validate(raw, &loaded, base_dir).map_err(|problems| {
        let mut out: Vec<Diagnostic> = problems
            .into_unique()
            .into_iter()
            .map(|(at, msg)| diag(locator.offset_of(&at), at.to_string(), msg))
            .collect();
        out.sort_by_key(|d| (d.line, d.column));
        ConfigError::Invalid(out)
    })?;
    config.source = Some(src.into());
    Ok(config)
}
