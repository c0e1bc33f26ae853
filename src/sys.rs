//! The operating system, behind small safe functions: the one module that reads the wall
//! clock and the one with `unsafe` code. Each `unsafe` block says why it holds.

// The one module allowed `unsafe` (the crate denies it everywhere else, in Cargo.toml).
#![allow(unsafe_code)]

/// Wall-clock milliseconds since the Unix epoch, for timestamps people read (the store, the
/// event history, the lock file). The control plane reads it through its `Clock`, which a
/// test can replace; 0 on a clock set before 1970.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// Takes an exclusive `flock` on `file` without waiting: `Ok(false)` when another open file
/// description holds it. Released when every descriptor of this one is closed.
pub fn try_lock_exclusive(file: &impl AsFd) -> io::Result<bool> {
    let fd = file.as_fd().as_raw_fd();
    // SAFETY: `fd` is open for as long as the borrow of `file` lasts, which spans the call;
    // flock reads no memory of ours.
    let rc = unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EWOULDBLOCK) => Ok(false),
        _ => Err(e),
    }
}

/// Whether a process with this id exists (signal 0: nothing is sent). A process of another
/// user (`EPERM`) exists too.
pub fn process_exists(pid: i32) -> bool {
    // SAFETY: kill with signal 0 sends nothing and touches no memory of ours.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// This host's name, `None` when it cannot be read.
pub fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid and writable for its whole length, which is what we pass;
    // gethostname writes within it (NUL-terminated, or truncated: we stop at the first NUL
    // or the end either way).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// The name of the user this process runs as (the password database's entry for the
/// effective uid), `None` when there is none: who acts when `$USER` is not set.
pub fn login_name() -> Option<String> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: all-zero is a valid `passwd` (null pointers, zero ids); getpwuid_r fills it.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call: `pwd` and `found` are ours, and the buffer's
    // length is what we pass; the strings `pwd` points to live in `buf`, read before it drops.
    let rc = unsafe {
        libc::getpwuid_r(
            libc::geteuid(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() || pwd.pw_name.is_null() {
        return None;
    }
    // SAFETY: on success pw_name is a NUL-terminated string inside `buf`.
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
    Some(name.to_string_lossy().into_owned()).filter(|n| !n.is_empty())
}

/// Puts `file` back in blocking mode (it was opened with `O_NONBLOCK` so that opening a
/// FIFO could not block).
pub fn clear_nonblocking(file: &impl AsFd) -> io::Result<()> {
    let fd = file.as_fd().as_raw_fd();
    // SAFETY: `fd` is open for the borrow of `file`; F_GETFL passes no memory.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above; F_SETFL takes the flags by value.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether the child `pid` has exited (a zombie now), leaving it unreaped (`WNOWAIT`) for
/// its owner to reap. An error (no such child) counts as exited, so that the caller goes on
/// to reap and learns the truth there.
pub fn child_has_exited(pid: i32) -> bool {
    loop {
        // SAFETY: siginfo_t is plain data, for which all zeroes is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid, writable siginfo_t that outlives the call; waitid writes
        // at most one into it, and WNOWAIT leaves the child unreaped.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        if r == 0 {
            // SAFETY: waitid succeeded, so `info` is either filled in for an exited child
            // or still all zeroes (none has exited): si_pid reads a valid field either way.
            return unsafe { info.si_pid() } != 0;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return true;
        }
    }
}

/// Sends SIGKILL to process group `pgid`; a group that is gone already (`ESRCH`) is fine.
pub fn kill_group(pgid: i32) {
    // SAFETY: killpg touches no memory of ours; its only failure worth knowing, ESRCH,
    // means there is nothing left to kill.
    unsafe {
        libc::killpg(pgid, libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_exists_and_has_a_host_name() {
        assert!(process_exists(std::process::id() as i32));
        assert!(hostname().is_some_and(|h| !h.is_empty()));
    }

    #[test]
    fn a_second_lock_on_the_same_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let a = std::fs::File::create(&path).unwrap();
        let b = std::fs::File::open(&path).unwrap();
        assert!(try_lock_exclusive(&a).unwrap());
        assert!(!try_lock_exclusive(&b).unwrap());
        drop(a);
        assert!(try_lock_exclusive(&b).unwrap());
    }
}
