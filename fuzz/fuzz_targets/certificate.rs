//! Target `certificate`: see `switchyard::fuzz` for what it feeds and which properties it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    switchyard::fuzz::certificate(data);
});
