//! `session_bytes`: see `selfheal_fuzzing::session_bytes` for the input and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| selfheal_fuzzing::session_bytes(data));
