//! The live dashboard is an exact event-time computation: the embedded pipeline's snapshot
//! equals the backtest's at the same watermark, whatever the replay speed.

mod common;

use common::*;
use serde_json::Value;

#[test]
fn end_of_log_snapshot_at_max_speed_equals_the_backtest() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    demo_to_end(dir, &[]);
    let status = run_json(&["status", "--json", "--data-dir", dir]);
    let live = &status["state"]["op/aggregate/snapshot"];
    let backtest = run_json(&["backtest", "--json"]);
    assert_eq!(
        live["now_ms"], 1_331_881_176_000i64,
        "now is the newest event time"
    );
    assert_eq!(live, &backtest["dashboard"]);
    assert_aggregate_read_the_log_and_its_offers(&status);
}

/// The replay with the shop interactions the demo adds to the bundled log on the real clock
/// (forced on here, with the original timestamps, to be reproducible): the same events as
/// `backtest --interactions`, so the same carts, orders, funnel and cart-abandonment offers.
#[test]
fn with_shop_interactions_the_end_of_log_snapshot_equals_the_backtest_s() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    demo_to_end(dir, &["--interactions", "on"]);
    let status = run_json(&["status", "--json", "--data-dir", dir]);
    let live = &status["state"]["op/aggregate/snapshot"];
    let backtest = run_json(&["backtest", "--interactions", "--json"]);
    let events = backtest["events"].as_u64().unwrap();
    assert!(events > 116_607, "interactions were added: {events}");
    assert_eq!(status["topics"]["enriched-click-data"]["records"], events);
    let funnel = &backtest["funnels"][0];
    assert!(
        funnel["steps"][3]["visitors"].as_u64() > Some(0),
        "visitors who bought: {funnel}"
    );
    assert!(backtest["offers_by_pattern"]["cart-abandonment"].as_u64() > Some(0));
    assert_eq!(live, &backtest["dashboard"]);
    assert_eq!(
        status["topics"]["special-offers"]["records"],
        backtest["offers"]
    );
}

#[test]
fn snapshot_at_speed_3600_equals_the_backtest_at_the_same_watermark() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    let demo = Demo::start(dir, &["--speed", "3600", "--idle-timeout-ms", "60000"]);
    let port = demo.port;
    // Let a few hours of event time pass, then take the live snapshot.
    let snapshot: Value = wait_until("six hours of event time on the dashboard", || {
        // In full (the admin token): the backtest's snapshot names visitors too.
        let s = get_json_in_full(port, "/api/dashboard")?;
        let now = s["now_ms"].as_i64()?;
        (now > 1_330_588_819_000 + 6 * 3_600_000).then_some(s)
    });
    drop(demo);
    let now = snapshot["now_ms"].as_i64().unwrap();
    let backtest = run_json(&["backtest", "--json", "--until", &now.to_string()]);
    assert_eq!(snapshot, backtest["dashboard"]);
    assert!(
        snapshot["page_views_per_minute"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["views"].as_u64() > Some(0))
    );
}
