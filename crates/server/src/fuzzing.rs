//! The harness shared by the `collector_json` fuzz target (`fuzz/fuzz_targets/`) and the
//! regression test that replays its corpus under plain `cargo test`
//! (`crates/server/tests/fuzz_regressions.rs`). Not part of the stable API.

use clickpulse_engine::click::Click;

use crate::collector::{MAX_BATCH, parse_body};

/// The server time the harness stamps clicks with.
pub const FUZZ_TS_MS: i64 = 1_330_588_819_000;
/// The request IP the harness passes.
pub const FUZZ_IP: &str = "192.0.2.1";
/// The request user agent the harness passes.
pub const FUZZ_USER_AGENT: &str = "fuzz-agent";

/// Parses `data` as a `POST /collect` body, checking that an accepted body holds 1 to
/// [`MAX_BATCH`] valid clicks stamped with the server's time, and that a rejected one gets a
/// reason (the 400 answer's `error`).
/// A batch whose clicks are all invalid is refused like the 400 answer does (`Err` with the
/// first click's reason); otherwise the valid clicks are returned, and every click of the body
/// is either accepted or rejected with a reason.
pub fn fuzz_collector_body(data: &[u8]) -> Result<Vec<Click>, String> {
    let result = parse_body(data, FUZZ_TS_MS, FUZZ_IP, FUZZ_USER_AGENT).and_then(|parsed| {
        for r in &parsed.rejected {
            assert!(
                r.reason.starts_with(&format!("click {}: ", r.index)),
                "a rejected click names itself: {r:?}"
            );
        }
        let mut indices: Vec<usize> = parsed.rejected.iter().map(|r| r.index).collect();
        indices.dedup();
        assert_eq!(indices.len(), parsed.rejected.len(), "each click once");
        assert!(parsed.clicks.len() + parsed.rejected.len() <= MAX_BATCH);
        match parsed.rejected.first() {
            Some(first) if parsed.clicks.is_empty() => Err(first.reason.clone()),
            _ => Ok(parsed.clicks),
        }
    });
    match &result {
        Ok(clicks) => {
            assert!(
                (1..=MAX_BATCH).contains(&clicks.len()),
                "{} clicks accepted",
                clicks.len()
            );
            for click in clicks {
                if let Err(e) = click.validate() {
                    panic!("an invalid click was accepted ({e}): {click:?}");
                }
                assert_eq!(click.ts_ms, FUZZ_TS_MS, "the server stamps the time");
                // What goes on the topics and into dumps reads back as it went in.
                let binary = clickpulse_engine::codec::encode(click);
                let decoded: Click =
                    clickpulse_engine::codec::decode(&binary).unwrap_or_else(|e| {
                        panic!("an accepted click does not decode ({e}): {click:?}")
                    });
                assert_eq!(&decoded, click, "the binary form round-trips");
                let json = serde_json::to_string(click).expect("a click serializes");
                let parsed: Click = serde_json::from_str(&json)
                    .unwrap_or_else(|e| panic!("a dumped click does not read back ({e}): {json}"));
                assert_eq!(&parsed, click, "the JSON form round-trips");
                assert_eq!(
                    click.visitor,
                    click.visitor.trim(),
                    "the visitor is trimmed"
                );
            }
        }
        Err(reason) => assert!(!reason.is_empty(), "a rejected body gets a reason"),
    }
    result
}
