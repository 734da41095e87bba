//! `form`: see `selfheal_fuzzing::form` for the input and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| selfheal_fuzzing::form(data));
