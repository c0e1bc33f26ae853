//! A config file's text: it parses, or its diagnostics point into it — never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    switchyard::config::fuzz(data);
});
