//! The Segment HTTP API's parser on arbitrary bytes: the first byte picks the endpoint, the rest
//! is the body. The harness and its invariants live in `clickpulse_server::fuzzing`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = clickpulse_server::fuzzing::fuzz_segment(data);
});
