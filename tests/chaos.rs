//! `clickpulse chaos`: twenty `kill -9`s at seeded random moments during an embedded run of
//! the real log, then the same offers, events and dashboard as an uninterrupted backtest.

mod common;

use common::*;
use serde_json::Value;

/// A pattern that fires a few hundred times on the bundled log.
const PATTERNS: &str = "tests/data/offer-patterns";

fn data_path(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn twenty_kills_of_the_embedded_pipeline_change_nothing() {
    let work = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin())
        .args([
            "chaos",
            "--kills",
            "20",
            "--seed",
            "7",
            "--json",
            "--patterns",
        ])
        .arg(data_path(PATTERNS))
        .arg("--work-dir")
        .arg(work.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "chaos failed: {}\n{stdout}\n{stderr}",
        out.status
    );
    let report: Value = serde_json::from_str(stdout.trim()).unwrap();
    println!("{report}");
    assert_eq!(report["ok"], true);
    assert_eq!(report["kills"], 20);
    assert_eq!(report["events"], 116_607);
    assert_eq!(report["lost_events"], 0);
    assert_eq!(report["duplicate_events"], 0);
    assert_eq!(report["duplicate_offers"], 0);
    assert_eq!(report["snapshot_equal"], true);
    assert_eq!(report["store_checks"], 20);
    let expected = report["offers_expected"].as_u64().unwrap();
    assert!(expected > 0, "the test pattern fires on the real log");
    assert_eq!(report["offers_delivered"].as_u64(), Some(expected));
    // The kills landed at many different points of the replay, all before its end.
    let points: Vec<u64> = report["kill_points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    assert_eq!(points.len(), 20);
    assert!(points.iter().all(|p| *p < 116_607), "{points:?}");
    let distinct: std::collections::BTreeSet<_> = points.iter().collect();
    assert!(distinct.len() >= 10, "{points:?}");
    // A passing run leaves nothing behind.
    assert_eq!(std::fs::read_dir(work.path()).unwrap().count(), 0);
}

#[test]
fn twenty_kills_of_distributed_workers_plus_broker_and_redis_restarts_change_nothing() {
    let work = tempfile::tempdir().unwrap();
    let log = log_slice(work.path(), 20_000);
    let out = std::process::Command::new(bin())
        .args([
            "chaos",
            "--mode",
            "distributed",
            "--kills",
            "20",
            "--seed",
            "11",
        ])
        // The broker is restarted after the 7th kill, Redis killed and restarted after the 14th.
        .args(["--json", "--patterns"])
        .arg(data_path(PATTERNS))
        .arg("--log")
        .arg(&log)
        .arg("--work-dir")
        .arg(work.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "chaos failed: {}\n{stdout}\n{stderr}",
        out.status
    );
    let report: Value = serde_json::from_str(stdout.trim()).unwrap();
    println!("{report}");
    assert_eq!(report["ok"], true);
    assert_eq!(report["mode"], "distributed");
    assert_eq!(report["kills"], 20);
    assert_eq!(report["events"], 20_000);
    assert_eq!(report["lost_events"], 0);
    assert_eq!(report["duplicate_events"], 0);
    assert_eq!(report["duplicate_offers"], 0);
    assert_eq!(report["snapshot_equal"], true);
    assert_eq!(
        report["service_restarts"],
        serde_json::json!(["broker", "redis"])
    );
    let expected = report["offers_expected"].as_u64().unwrap();
    assert!(expected > 0);
    assert_eq!(report["offers_delivered"].as_u64(), Some(expected));
}
