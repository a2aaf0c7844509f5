//! `clickpulse bench collector`, short: every accepted event is in `click-data`, no 5xx but
//! 503 backpressure, and beyond capacity the collector answers 503 with `Retry-After`. Asserts
//! correctness only, never timing.

mod common;

use common::*;
use serde_json::Value;

fn bench(extra: &[&str]) -> Value {
    let mut args = vec![
        "bench",
        "collector",
        "--duration",
        "2s",
        "--batch",
        "10",
        "--json",
    ];
    args.extend_from_slice(extra);
    let output = std::process::Command::new(bin())
        .args(&args)
        .output()
        .unwrap();
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|_| {
        panic!(
            "no JSON summary: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    println!("{summary}");
    assert!(output.status.success(), "{summary}");
    summary
}

fn assert_nothing_lost(s: &Value) {
    assert!(s["accepted_events"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(s["accepted_events"], s["events_in_click_data"], "{s}");
    assert_eq!(s["server_errors"], 0, "{s}");
    assert_eq!(s["client_errors"], 0, "{s}");
    assert_eq!(s["unavailable_without_retry_after"], 0, "{s}");
    assert_eq!(s["ok"], true, "{s}");
}

#[test]
fn sustained_load_loses_nothing_accepted() {
    assert_nothing_lost(&bench(&["--connections", "8"]));
}

#[test]
fn snowplow_tracker_protocol_under_load_loses_nothing_accepted() {
    let s = bench(&["--connections", "8", "--protocol", "snowplow"]);
    assert_eq!(s["protocol"], "snowplow", "{s}");
    assert_nothing_lost(&s);
}

#[test]
fn segment_http_api_under_load_loses_nothing_accepted() {
    let s = bench(&["--connections", "8", "--protocol", "segment"]);
    assert_eq!(s["protocol"], "segment", "{s}");
    assert_nothing_lost(&s);
}

#[test]
fn over_capacity_answers_503_with_retry_after_and_loses_nothing() {
    let s = bench(&["--connections", "16", "--overload"]);
    assert_nothing_lost(&s);
    assert!(s["unavailable"].as_u64().unwrap() >= 1, "{s}");
}

/// The open-streams attack on top of the overload: 300 event streams held open (more than the
/// servers' budget of 256), and `/api/health`, asked ten times a second, answers every time.
#[test]
fn health_answers_beside_an_overload_and_more_open_streams_than_the_budget() {
    let s = bench(&["--connections", "16", "--overload", "--streams", "300"]);
    assert_nothing_lost(&s);
    let asked = s["health_asked"].as_u64().unwrap();
    assert!(asked > 0, "{s}");
    assert_eq!(s["health_answered"].as_u64(), Some(asked), "{s}");
    assert!(s["streams_held"].as_u64().unwrap() <= 256, "{s}");
    assert!(s["streams_refused"].as_u64().unwrap() >= 44, "{s}");
}
