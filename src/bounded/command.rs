//! `sh -c COMMAND` for hooks, analysis checks and teardowns, bounded in time and output.
//!
//! The shell runs in a process group of its own. When it times out — or its caller gives
//! up on it (a progress deadline, an interrupted analysis) — the whole group is killed, not
//! just the shell: killing only `sh` left `sleep 100 & sleep 100` running as orphans. When
//! the shell exits by itself, what it left running in its group is killed too, so a
//! command never outlives its own check or hook (a program meant to outlive it must detach
//! deliberately, e.g. with `setsid`). Only the last [`MAX_OUTPUT_BYTES`] of stdout and
//! stderr are kept: a chatty command cannot grow memory.

use std::io;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinHandle;

/// How much of each of stdout and stderr is kept (the end of it: the last lines say why).
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// How long the output is still read after the group has ended: a process that left the
/// group (`setsid`) may hold the pipes open, and is not waited for.
const OUTPUT_GRACE: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("`{cmd}` could not run: {source}")]
    Spawn { cmd: String, source: io::Error },
    #[error("`{cmd}` did not finish within {}; its process group was killed", humantime::format_duration(*.timeout))]
    TimedOut { cmd: String, timeout: Duration },
}

#[derive(Debug)]
pub struct CommandOutput {
    pub status: ExitStatus,
    /// The last [`MAX_OUTPUT_BYTES`] written to stdout.
    pub stdout: Vec<u8>,
    /// The last [`MAX_OUTPUT_BYTES`] written to stderr.
    pub stderr: Vec<u8>,
}

impl CommandOutput {
    /// The last `chars` characters of stderr (of stdout when stderr is empty), trimmed: what
    /// a command said about its result, short enough for an event.
    pub fn said(&self, chars: usize) -> String {
        let bytes = if self.stderr.is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        let s = String::from_utf8_lossy(bytes);
        let s = s.trim();
        s.chars()
            .skip(s.chars().count().saturating_sub(chars))
            .collect()
    }
}

/// Runs `sh -c cmd` with `env` added to switchyard's environment; stdin is empty.
pub async fn run_shell(
    cmd: &str,
    env: &[(&str, String)],
    timeout: Duration,
) -> Result<CommandOutput, CommandError> {
    let spawn_err = |source| CommandError::Spawn {
        cmd: cmd.to_string(),
        source,
    };
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_err)?;
    // Declared after `child`, so dropped before it: a cancelled run kills the group first.
    let mut group = Group(child.id().and_then(|p| i32::try_from(p).ok()));
    let stdout = tokio::spawn(keep_tail(child.stdout.take()));
    let stderr = tokio::spawn(keep_tail(child.stderr.take()));
    let waited = tokio::time::timeout(timeout, child.wait()).await;
    match waited {
        Err(_) => {
            // Killed while the shell is unreaped, so the group id is still ours.
            group.kill();
            let _ = child.wait().await;
            stdout.abort();
            stderr.abort();
            Err(CommandError::TimedOut {
                cmd: cmd.to_string(),
                timeout,
            })
        }
        Ok(Err(source)) => {
            group.kill();
            Err(spawn_err(source))
        }
        Ok(Ok(status)) => {
            // Leftovers of the shell keep the group (and its id) alive, so this reaches
            // them; with none left it finds no group.
            group.kill();
            Ok(CommandOutput {
                status,
                stdout: finish(stdout).await,
                stderr: finish(stderr).await,
            })
        }
    }
}

/// A process group to kill once: when the command ends, times out, or is dropped.
struct Group(Option<i32>);

impl Group {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            // SAFETY: killpg has no memory effects; an absent group is ESRCH, ignored.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn finish(task: JoinHandle<Vec<u8>>) -> Vec<u8> {
    let mut task = task;
    match tokio::time::timeout(OUTPUT_GRACE, &mut task).await {
        Ok(Ok(kept)) => kept,
        _ => {
            task.abort();
            Vec::new()
        }
    }
}

/// Reads a pipe to its end, keeping only the last [`MAX_OUTPUT_BYTES`].
async fn keep_tail<R: AsyncRead + Unpin>(pipe: Option<R>) -> Vec<u8> {
    let Some(mut pipe) = pipe else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                // Trim in batches: at most twice the bound is ever held.
                if kept.len() > 2 * MAX_OUTPUT_BYTES {
                    kept.drain(..kept.len() - MAX_OUTPUT_BYTES);
                }
            }
        }
    }
    if kept.len() > MAX_OUTPUT_BYTES {
        kept.drain(..kept.len() - MAX_OUTPUT_BYTES);
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_keeps_only_its_end() {
        let out = run_shell(
            "head -c 300000 /dev/zero | tr '\\0' a; echo end",
            &[],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout.len(), MAX_OUTPUT_BYTES);
        assert!(out.stdout.ends_with(b"aend\n"));
        assert_eq!(out.said(3), "end");
    }

    #[tokio::test]
    async fn environment_and_exit_status() {
        let out = run_shell(
            "echo \"$X\" >&2; exit 3",
            &[("X", "hello".into())],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.said(100), "hello");
    }
}
