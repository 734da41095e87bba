//! `session_json`: see `selfheal_fuzzing::session_json` for the input and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| selfheal_fuzzing::session_json(data));
