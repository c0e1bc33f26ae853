//! One instance per state database. SQLite's own locks are per transaction, so two
//! processes on one file would both run rollouts from it (and before ids came from the
//! database, both allocated the same ids). The first instance takes an advisory `flock` on
//! `<database>.lock` for its whole life and writes who it is into the file; the kernel drops
//! the lock when the process dies, even by SIGKILL, so a crash never leaves a stale lock.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::StoreError;

/// Held for the life of the store; the lock goes with the file descriptor.
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
}

impl InstanceLock {
    /// Takes the lock next to `db`, or says which instance holds it.
    pub fn acquire(db: &Path) -> Result<InstanceLock, StoreError> {
        let mut name = db.as_os_str().to_owned();
        name.push(".lock");
        let path = PathBuf::from(name);
        let err = |reason: String| StoreError::Open {
            path: db.display().to_string(),
            reason,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| err(format!("cannot open lock file {}: {e}", path.display())))?;
        // SAFETY: flock on a descriptor we own; no memory is shared with the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(err(format!("cannot lock {}: {e}", path.display())));
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(StoreError::InUse {
                path: db.display().to_string(),
                holder: if holder.is_empty() {
                    "another process".into()
                } else {
                    holder.to_string()
                },
                lock: path.display().to_string(),
            });
        }
        let me = format!(
            "switchyard pid {} on host {}, since unix ms {}\n",
            std::process::id(),
            hostname(),
            crate::rollout::unix_ms()
        );
        let written = file
            .set_len(0)
            .and_then(|_| file.rewind())
            .and_then(|_| file.write_all(me.as_bytes()))
            .and_then(|_| file.flush());
        if let Err(e) = written {
            // The lock is what matters; the holder record only helps the message.
            tracing::warn!(lock = %path.display(), error = %e, "cannot record the holder in the lock file");
        }
        Ok(InstanceLock { _file: file })
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or
    // truncates, and we stop at the first NUL either way.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
