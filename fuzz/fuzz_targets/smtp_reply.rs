//! libFuzzer entry for `fuzz_checks::smtp_reply`; the property lives there, shared
//! with the test suite's bounded smoke run.
#![no_main]

#[path = "../../crates/mamoru/tests/it/fuzz_checks.rs"]
#[allow(dead_code)]
mod fuzz_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::smtp_reply(data));
