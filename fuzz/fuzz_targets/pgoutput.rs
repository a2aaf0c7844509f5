//! The PostgreSQL source's decoder and mapping on arbitrary bytes: a transaction's pgoutput
//! messages, length-prefixed. The harness and its invariants live in
//! `clickpulse_components::fuzzing`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = clickpulse_components::fuzzing::fuzz_pgoutput(data);
});
