//! The `switchyard` binary: the CLI edge. Library errors become `anyhow` here.

mod cli;
mod demo;

use clap::Parser;

/// glibc malloc shows up at several percent of CPU on the proxy path; mimalloc's thread-local
/// free lists make the per-request allocations nearly free.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    let runtime = match args.workers {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    }
    .expect("tokio runtime");
    match runtime.block_on(cli::run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", causes(&e));
            std::process::ExitCode::from(1)
        }
    }
}

/// The error and its causes, `a: b: c`, each said once: an error whose text already says its
/// cause and that also gives it as its source (`cannot bind …: Address already in use`, a
/// control error wrapping the store's) does not print the cause twice.
fn causes(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain().map(ToString::to_string) {
        if out.contains(&cause) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&cause);
    }
    out
}
