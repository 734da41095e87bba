//! `config`: see `selfheal_fuzzing::config` for the input and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| selfheal_fuzzing::config(data));
