//! Entry points for fuzzing the parsers of outside input: one per target in `fuzz/` (run
//! coverage-guided there on the stable compiler, see `fuzz/README.md`) and all of them run
//! seeded in `tests/fuzz_seeded.rs`. Each takes arbitrary bytes, drives the real parsing
//! code with them — never a copy of it — and panics only when a property of that code breaks,
//! so a panic is a finding whichever runner saw it. Not part of the crate's API.

mod answer;
mod certificate;
mod config;
mod measure;
mod route;

pub use answer::{h1_answer, read_answer, Answer, Pieces};
pub use certificate::certificate;
pub use config::{config, config_line};
pub use measure::{prometheus, webhook};
pub use route::route;

/// An entry point: takes any bytes, panics only on a broken property.
pub type Entry = fn(&[u8]);

/// Every target by name: the names of `fuzz/fuzz_targets/*.rs` and of the seed corpus
/// folders `fuzz/corpus/<name>/`.
pub const TARGETS: &[(&str, Entry)] = &[
    ("h1_answer", h1_answer),
    ("config", config),
    ("config_line", config_line),
    ("prometheus", prometheus),
    ("webhook", webhook),
    ("route", route),
    ("certificate", certificate),
];
