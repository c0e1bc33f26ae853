//! Where the CLI's output goes: standard output written so that a reader that went away
//! (`switchyard events | head -1`) ends the command quietly, JSON exactly as the API
//! answered it, and colour only on a terminal.

use std::io::{IsTerminal, Write};

/// `println!` for the CLI's output: a closed pipe ends the process with exit 0 and no
/// message (the reader has what it wanted), where `println!` would panic.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` with `outln!`'s handling of a closed pipe.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_out(format_args!($($arg)*))
    };
}

/// `outln!` for the demos: a closed pipe ends the demo through [`closed`] instead of exiting
/// where it stands (a demo owns servers, child processes and temporary files: they go with
/// its future, as on a normal end).
macro_rules! sayln {
    ($($arg:tt)*) => {
        $crate::output::write_or_close(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) use {out, outln, sayln};

/// Cancelled once standard output's reader went away while a demo wrote to it.
pub(crate) fn closed() -> &'static tokio_util::sync::CancellationToken {
    static CLOSED: std::sync::OnceLock<tokio_util::sync::CancellationToken> =
        std::sync::OnceLock::new();
    CLOSED.get_or_init(tokio_util::sync::CancellationToken::new)
}

/// `write_out`, except that a closed pipe cancels [`closed`] (and writes nothing more).
pub(crate) fn write_or_close(args: std::fmt::Arguments<'_>) {
    if closed().is_cancelled() {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    match stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => closed().cancel(),
        Err(e) => {
            eprintln!("error: writing to standard output: {e}");
            std::process::exit(1);
        }
        Ok(()) => {}
    }
}

/// Writes to standard output and flushes (a watch or a pipe sees each line as it is made).
/// A closed pipe exits 0 at once: nothing the command still does is for anyone.
pub(crate) fn write_out(args: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        quit_on(&e);
        eprintln!("error: writing to standard output: {e}");
        std::process::exit(1);
    }
}

/// Ends the process quietly when `e` is a closed pipe.
pub(crate) fn quit_on(e: &std::io::Error) {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
}

/// Whether an error chain ends at a closed pipe (from a `write_all` the CLI made itself).
pub(crate) fn is_closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The API's answer as it came, pretty-printed: `--json` shows the API's own field names and
/// units, so the two cannot differ.
pub(crate) fn json(v: &serde_json::Value) {
    outln!(
        "{}",
        serde_json::to_string_pretty(v).expect("a JSON value serialises")
    );
}

/// Whether standard output is a terminal: redrawing the screen and colour only then.
pub(crate) fn stdout_is_terminal() -> bool {
    std::io::stdout().is_terminal()
}

/// Whether standard error is a terminal: the log is coloured only then.
pub(crate) fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}
