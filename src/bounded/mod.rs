//! Side work bounded in time and size: shell commands (hooks, checks, teardowns), HTTP
//! answers from Prometheus, webhooks and hooks, and files named by the configuration.
//!
//! Each of these is driven by something outside switchyard — a script, a server, a path in
//! a file — and each has been seen to hurt the proxy when unbounded: a 300 MB Prometheus
//! answer kept for good in RSS, a timed-out `sleep 100 & sleep 100` leaving orphans, a FIFO
//! given as a certificate freezing the runtime. The helpers here are the one place these
//! bounds live, so every caller gets them.

pub mod command;
pub mod file;
pub mod http;

pub use command::{run_shell, CommandError, CommandOutput};
pub use file::{read_file, read_text, FileError, MAX_FILE_BYTES};
pub use http::{call, read_body, Answer, BodyError, CallError, ReadBody, MAX_ANSWER_BYTES};
