//! One instance per state database. SQLite's own locks are per transaction, so two
//! processes on one file would both run rollouts from it (and before ids came from the
//! database, both allocated the same ids). The first instance takes an advisory `flock` on
//! `<database>.lock` for its whole life and writes who it is into the file; the kernel drops
//! the lock when the process dies, even by SIGKILL, so a crash never leaves a stale lock.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use super::StoreError;

/// Held for the life of the store; the lock goes with the file descriptor.
#[derive(Debug)]
pub(super) struct InstanceLock {
    _file: File,
}

impl InstanceLock {
    /// Takes the lock next to `db`, or says which instance holds it.
    pub(super) fn acquire(db: &Path) -> Result<InstanceLock, StoreError> {
        let mut name = canonical(db).into_os_string();
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
        let locked = crate::sys::try_lock_exclusive(&file)
            .map_err(|e| err(format!("cannot lock {}: {e}", path.display())))?;
        if !locked {
            let holder = read_holder(&mut file);
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
            crate::sys::unix_ms()
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

/// The database's real path, so that a symlink to it (or a path through a symlinked
/// directory) takes the same lock. The file may not exist yet: then its directory's real
/// path with its name; failing that, the path as given.
fn canonical(db: &Path) -> PathBuf {
    if let Ok(p) = std::fs::canonicalize(db) {
        return p;
    }
    let dir = match db.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match (std::fs::canonicalize(dir), db.file_name()) {
        (Ok(d), Some(name)) => d.join(name),
        _ => db.to_path_buf(),
    }
}

/// Who holds the lock, as the holder wrote it. Read only after failing to take the lock;
/// the winner truncates and writes it just after taking it, so a read in between finds it
/// empty or naming a dead predecessor: read again a few times before settling for that.
fn read_holder(file: &mut File) -> String {
    let mut holder = String::new();
    for _ in 0..5 {
        holder.clear();
        let _ = file.rewind().and_then(|_| file.read_to_string(&mut holder));
        if holder_alive(&holder) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    holder
}

/// Whether the record names a live process (on this host; another host's is taken as is).
fn holder_alive(holder: &str) -> bool {
    let mut words = holder.split_whitespace();
    let pid = words
        .position(|w| w == "pid")
        .and_then(|_| words.next())
        .and_then(|p| p.parse::<libc::pid_t>().ok());
    let Some(pid) = pid else {
        return false;
    };
    let host = holder
        .split_whitespace()
        .skip_while(|w| *w != "host")
        .nth(1)
        .map(|h| h.trim_end_matches(','));
    if host.is_some_and(|h| h != hostname()) {
        return true;
    }
    crate::sys::process_exists(pid)
}

fn hostname() -> String {
    crate::sys::hostname().unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_to_the_database_takes_the_same_lock() {
        let dir = tempfile_dir("sy-lock");
        let db = dir.join("state.db");
        std::fs::write(&db, b"").unwrap();
        let link = dir.join("link.db");
        std::os::unix::fs::symlink(&db, &link).unwrap();
        let held = InstanceLock::acquire(&db).unwrap();
        let err = InstanceLock::acquire(&link).expect_err("same file, same lock");
        let text = err.to_string();
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        drop(held);
        InstanceLock::acquire(&link).expect("free again");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_dead_holder_is_not_alive() {
        assert!(holder_alive(&format!(
            "switchyard pid {} on host {}, since unix ms 1",
            std::process::id(),
            hostname()
        )));
        assert!(!holder_alive(""));
        // Beyond pid_max on any Linux.
        assert!(!holder_alive(&format!(
            "switchyard pid 2147483000 on host {}, since unix ms 1",
            hostname()
        )));
    }

    fn tempfile_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
