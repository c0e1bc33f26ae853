//! A target's HTTP/1 answer, as bytes off the wire: no panic, and the same meaning whole or
//! cut into reads.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    switchyard::upstream::fuzz::answer(data);
});
