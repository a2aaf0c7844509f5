//! The TOML pattern parser (and the compiled machine) on arbitrary bytes.
//! The harness and its invariants live in `clickpulse_engine::fuzzing`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = clickpulse_engine::fuzzing::fuzz_pattern_parser(data);
});
