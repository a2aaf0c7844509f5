//! The collector's `POST /collect` body parser on arbitrary bytes.
//! The harness and its invariants live in `clickpulse_server::fuzzing`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = clickpulse_server::fuzzing::fuzz_collector_body(data);
});
