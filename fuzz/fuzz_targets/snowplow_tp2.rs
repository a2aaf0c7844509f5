//! The Snowplow endpoints' parsers on arbitrary bytes: as a `tp2` POST body and as a `GET /i`
//! query string. The harness and its invariants live in `clickpulse_server::fuzzing`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = clickpulse_server::fuzzing::fuzz_snowplow(data);
});
