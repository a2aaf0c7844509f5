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
fn over_capacity_answers_503_with_retry_after_and_loses_nothing() {
    let s = bench(&["--connections", "16", "--overload"]);
    assert_nothing_lost(&s);
    assert!(s["unavailable"].as_u64().unwrap() >= 1, "{s}");
}
