//! `http_hints`: see `selfheal_fuzzing::http_hints` for the input and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| selfheal_fuzzing::http_hints(data));
