//! `sh -c COMMAND` for hooks, analysis checks and teardowns, bounded in time and output.
//!
//! The shell runs in a process group of its own. When it times out — or its caller gives
//! up on it (a progress deadline, an interrupted analysis) — the whole group is killed, not
//! just the shell: killing only `sh` left `sleep 100 & sleep 100` running as orphans. When
//! the shell exits by itself, what it left running in its group is killed too, so a
//! command never outlives its own check or hook (a program meant to outlive it must detach
//! deliberately, e.g. with `setsid`). Only the last [`MAX_OUTPUT_BYTES`] of stdout and
//! stderr are kept: a chatty command cannot grow memory. Cancelling a run (dropping its
//! future) kills the group and its output readers too.
//!
//! Commands inherit switchyard's environment less the variables that hold admin tokens
//! ([`secret_env`]).

use std::collections::BTreeSet;
use std::io;
use std::process::{ExitStatus, Stdio};
use std::sync::Mutex;
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
    /// The last `chars` characters of stderr (of stdout when stderr is empty), trimmed and
    /// cleaned (see [`crate::audit::clean`]): what a command said about its result, short
    /// enough for an event or a check's detail.
    pub fn said(&self, chars: usize) -> String {
        if self.stderr.is_empty() {
            tail(&self.stdout, chars)
        } else {
            tail(&self.stderr, chars)
        }
    }

    /// As [`said`](Self::said), from stderr only: for what goes into the audit history,
    /// where a command's stdout (its data, perhaps secrets it printed) does not belong.
    pub fn said_on_stderr(&self, chars: usize) -> String {
        tail(&self.stderr, chars)
    }
}

fn tail(bytes: &[u8], chars: usize) -> String {
    let s = String::from_utf8_lossy(bytes);
    let s = crate::audit::clean(s.trim(), usize::MAX);
    s.chars()
        .skip(s.chars().count().saturating_sub(chars))
        .collect()
}

/// Environment variables that are never passed to a command: the ones that hold admin
/// tokens by default (the server's and the CLI's).
const ALWAYS_HIDDEN: [&str; 2] = ["SWITCHYARD_ADMIN_TOKEN", "SWITCHYARD_TOKEN"];

/// Every variable a configuration has read a secret from (`token_env`), since the process
/// started. Only ever grows: a variable that held a token once is not handed to a hook
/// after a reload drops it from the configuration either.
static HIDDEN: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Reads a secret from the environment, and marks the variable as one no command sees:
/// hooks, checks and teardowns inherit switchyard's environment (PATH, cloud credentials,
/// proxies they need), but not the admin tokens, which a script that logs its environment
/// would leak.
pub fn secret_env(var: &str) -> Result<String, std::env::VarError> {
    HIDDEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(var.to_string());
    std::env::var(var)
}

fn hidden_env() -> Vec<String> {
    let mut names: Vec<String> = ALWAYS_HIDDEN
        .iter()
        .map(std::string::ToString::to_string)
        .collect();
    names.extend(
        HIDDEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .cloned(),
    );
    names
}

/// Runs `sh -c cmd` with `env` added to switchyard's environment (less the variables that
/// hold admin tokens, see [`secret_env`]); stdin is empty.
///
/// Cancelling the returned future (dropping it) kills the command's process group and
/// stops reading its output.
pub async fn run_shell(
    cmd: &str,
    env: &[(&str, String)],
    timeout: Duration,
) -> Result<CommandOutput, CommandError> {
    let spawn_err = |source| CommandError::Spawn {
        cmd: cmd.to_string(),
        source,
    };
    let mut command = tokio::process::Command::new("sh");
    command.arg("-c").arg(cmd);
    for name in hidden_env() {
        command.env_remove(name);
    }
    let mut child = command
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_err)?;
    // Declared after `child`, so dropped before it: a cancelled run kills the group while
    // the shell is unreaped (its pid, and so the group id, cannot have been reused).
    let mut group = Group(child.id().and_then(|p| i32::try_from(p).ok()));
    let stdout = Reader(tokio::spawn(keep_tail(child.stdout.take())));
    let stderr = Reader(tokio::spawn(keep_tail(child.stderr.take())));
    let ended = match group.0 {
        Some(pid) => tokio::time::timeout(timeout, exited(pid)).await.is_ok(),
        None => true,
    };
    // The shell has ended (not reaped yet) or timed out: either way its group id is still
    // ours. What it left running in the group is killed, then the shell is reaped.
    group.kill();
    let status = child.wait().await.map_err(spawn_err)?;
    if !ended {
        return Err(CommandError::TimedOut {
            cmd: cmd.to_string(),
            timeout,
        });
    }
    Ok(CommandOutput {
        status,
        stdout: stdout.finish().await,
        stderr: stderr.finish().await,
    })
}

/// Waits until the child `pid` has exited, without reaping it (`waitid` with `WNOWAIT`):
/// until it is reaped its pid, which is its process group's id, stays ours to kill.
/// Woken by SIGCHLD; a slow poll backs that up (signals coalesce, other code may take
/// them).
async fn exited(pid: i32) {
    let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()).ok();
    loop {
        if crate::sys::child_has_exited(pid) {
            return;
        }
        let poll = tokio::time::sleep(Duration::from_millis(100));
        match sigchld.as_mut() {
            Some(s) => {
                tokio::select! {
                    _ = s.recv() => {}
                    _ = poll => {}
                }
            }
            None => poll.await,
        }
    }
}

/// A process group to kill once: when the command ends, times out, or is dropped.
struct Group(Option<i32>);

impl Group {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            crate::sys::kill_group(pgid);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A task reading one of the command's pipes, aborted when dropped: a cancelled run must
/// not leave a reader behind on a pipe that a detached process holds open.
struct Reader(JoinHandle<Vec<u8>>);

impl Reader {
    /// What the reader kept, once the pipe ends or [`OUTPUT_GRACE`] passes.
    async fn finish(mut self) -> Vec<u8> {
        match tokio::time::timeout(OUTPUT_GRACE, &mut self.0).await {
            Ok(Ok(kept)) => kept,
            _ => Vec::new(),
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.0.abort();
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

    /// Whether `pid` runs no more: absent, or a zombie that is not ours to reap (a killed
    /// orphan waits for its reaper; one of ours unreaped would be a leak, so not gone).
    fn gone(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => {
                let rest: Vec<&str> = stat
                    .rsplit_once(')')
                    .map_or(vec![], |(_, r)| r.split_whitespace().collect());
                rest.first() == Some(&"Z")
                    && rest.get(1) != Some(&std::process::id().to_string().as_str())
            }
        }
    }

    async fn pid_in(file: &std::path::Path) -> u32 {
        for _ in 0..1000 {
            if let Some(pid) = std::fs::read_to_string(file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                return pid;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no pid in {}", file.display());
    }

    async fn until_gone(pid: u32) {
        for _ in 0..500 {
            if gone(pid) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("process {pid} still runs");
    }

    /// A run whose caller gives up (a rollout aborted during a hook) takes its process
    /// group with it, the shell's background children included.
    #[tokio::test]
    async fn a_dropped_run_kills_its_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bg.pid");
        let cmd = format!("sleep 30 & echo $! > {}; sleep 30", file.display());
        let run = tokio::spawn(async move { run_shell(&cmd, &[], Duration::from_secs(60)).await });
        let bg = pid_in(&file).await;
        run.abort();
        assert!(run.await.unwrap_err().is_cancelled());
        until_gone(bg).await;
    }

    /// A shell that exits at once leaves its background children killed, not running on.
    #[tokio::test]
    async fn children_left_by_a_finished_command_are_killed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bg.pid");
        let cmd = format!("sleep 30 & echo $! > {}; echo done >&2", file.display());
        let out = run_shell(&cmd, &[], Duration::from_secs(20)).await.unwrap();
        assert!(out.status.success());
        assert_eq!(out.said_on_stderr(100), "done");
        until_gone(pid_in(&file).await).await;
    }
}
