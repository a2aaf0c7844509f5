//! The log readers (Omniture TSV, JSON lines, gzip and format sniffing) on arbitrary bytes.
//! The harness and its invariants live in `clickpulse_engine::fuzzing`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    clickpulse_engine::fuzzing::fuzz_log_readers(data);
});
