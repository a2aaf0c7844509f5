//! The harnesses shared by the `collector_json`, `snowplow_tp2` and `segment` fuzz targets
//! (`fuzz/fuzz_targets/`) and the regression tests that replay their corpora under plain
//! `cargo test` (`crates/server/tests/fuzz_regressions.rs`). Not part of the stable API.

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
            check_accepted(clicks);
        }
        Err(reason) => assert!(!reason.is_empty(), "a rejected body gets a reason"),
    }
    result
}

/// What every accepted click must be: valid, stamped with the server's time, trimmed, and the
/// same after the topics' binary form and the dumps' JSON.
fn check_accepted(clicks: &[Click]) {
    for click in clicks {
        if let Err(e) = click.validate() {
            panic!("an invalid click was accepted ({e}): {click:?}");
        }
        assert_eq!(click.ts_ms, FUZZ_TS_MS, "the server stamps the time");
        // What goes on the topics and into dumps reads back as it went in.
        let binary = clickpulse_engine::codec::encode(click);
        let decoded: Click = clickpulse_engine::codec::decode(&binary)
            .unwrap_or_else(|e| panic!("an accepted click does not decode ({e}): {click:?}"));
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

/// Parses `data` as a Snowplow `tp2` POST body and as a `GET /i` query string: every event of
/// an accepted body is a valid click, counted as ignored, or rejected with a reason naming it,
/// once; a refused body gets a reason.
pub fn fuzz_snowplow(data: &[u8]) -> Result<Vec<Click>, String> {
    use crate::collector::snowplow::{parse_post, parse_query};
    let (sender, identity) = tracker_request();
    let query = parse_query(
        &String::from_utf8_lossy(data),
        FUZZ_TS_MS,
        &sender,
        Some(&identity),
    );
    assert_eq!(
        query.body.clicks.len()
            + query.body.rejected.len()
            + query.ignored.values().sum::<u64>() as usize,
        1,
        "a query string is one event"
    );
    check_accepted(&query.body.clicks);
    let result = parse_post(data, FUZZ_TS_MS, &sender, Some(&identity))
        .map(|parsed| check_parsed(parsed, "event"));
    if let Err(reason) = &result {
        assert!(!reason.is_empty(), "a refused body gets a reason");
    }
    result
}

/// An untrusted sender without a token, and the identity rules the harnesses check against.
fn tracker_request() -> (
    crate::collector::Sender<'static>,
    crate::collector::Identity,
) {
    let sender = crate::collector::Sender {
        ip: FUZZ_IP,
        user_agent: FUZZ_USER_AGENT,
        trusted: false,
        token: None,
    };
    let identity = crate::collector::Identity::new(crate::offers::OfferTokens::new(b"fuzz"));
    (sender, identity)
}

/// A tracker's parsed request: 1 to [`MAX_BATCH`] events, each accepted as a valid click,
/// counted as ignored, or rejected once with a reason naming it (`{noun} {index}: …`).
fn check_parsed(parsed: crate::collector::ParsedEvents, noun: &str) -> Vec<Click> {
    let ignored = parsed.ignored.values().sum::<u64>() as usize;
    let events = parsed.body.clicks.len() + parsed.body.rejected.len() + ignored;
    assert!((1..=MAX_BATCH).contains(&events), "{events} events");
    let mut indices: Vec<usize> = parsed.body.rejected.iter().map(|r| r.index).collect();
    for r in &parsed.body.rejected {
        assert!(
            r.reason.starts_with(&format!("{noun} {}: ", r.index)),
            "a rejected event names itself: {r:?}"
        );
    }
    indices.dedup();
    assert_eq!(indices.len(), parsed.body.rejected.len(), "each event once");
    check_accepted(&parsed.body.clicks);
    parsed.body.clicks
}

/// The Segment endpoints on arbitrary bytes: the first byte picks the endpoint (`batch`,
/// `track`, `page`, `identify`, `screen`, `t`, …), the rest is the body. An accepted body's
/// messages are valid clicks, counted as ignored, or rejected with a reason naming them, once;
/// a refused body gets a reason.
pub fn fuzz_segment(data: &[u8]) -> Result<Vec<Click>, String> {
    const PATHS: [&str; 8] = [
        "batch", "track", "page", "identify", "screen", "b", "t", "p",
    ];
    let Some((&pick, body)) = data.split_first() else {
        return Err("no input".to_owned());
    };
    let path = PATHS[usize::from(pick) % PATHS.len()];
    let (sender, identity) = tracker_request();
    let result = crate::collector::segment::parse(path, body, FUZZ_TS_MS, &sender, Some(&identity))
        .map(|parsed| check_parsed(parsed, "message"));
    if let Err(reason) = &result {
        assert!(!reason.is_empty(), "a refused body gets a reason");
    }
    result
}
