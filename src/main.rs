//! The `switchyard` binary: the CLI edge. Library errors become `anyhow` here.

mod cli;
mod demo;
mod output;

use clap::Parser;

/// glibc malloc shows up at several percent of CPU on the proxy path; mimalloc's thread-local
/// free lists make the per-request allocations nearly free.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    let runtime = match args.process().workers {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(n))
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    }
    .expect("tokio runtime");
    match runtime.block_on(cli::run(args)) {
        Ok(code) => code,
        Err(e) => cli::fail(&e),
    }
}
