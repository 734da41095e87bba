//! `chaos_plan`: see `selfheal_fuzzing::chaos_plan` for the input and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| selfheal_fuzzing::chaos_plan(data));
