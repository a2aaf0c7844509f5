//! `clickpulse chaos`: twenty `kill -9`s at seeded random moments during an embedded run of
//! the real log, then the same offers, events and dashboard as an uninterrupted backtest.

mod common;

use common::receiver::Receiver;
use common::*;
use serde_json::{Value, json};

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

/// Runs `clickpulse chaos` (embedded) with `args`, returning its exit status and JSON report.
fn chaos(work: &std::path::Path, args: &[&str]) -> (std::process::ExitStatus, Value, String) {
    chaos_with(work, args, &data_path(PATTERNS))
}

/// [`chaos`] with the patterns of `patterns`.
fn chaos_with(
    work: &std::path::Path,
    args: &[&str],
    patterns: &std::path::Path,
) -> (std::process::ExitStatus, Value, String) {
    let out = std::process::Command::new(bin())
        .arg("chaos")
        .args(args)
        .args(["--json", "--patterns"])
        .arg(patterns)
        .arg("--work-dir")
        .arg(work)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("no JSON report ({e}): {stdout}\n{stderr}"));
    (out.status, report, stderr)
}

/// A sweep of seeds, as RELIABILITY.md's: every kill schedule finishes with the backtest's
/// result (seed 5 used to stall the aggregate for ever after its last restart).
#[test]
fn a_sweep_of_twelve_seeds_on_a_log_slice_each_match_the_backtest() {
    let work = tempfile::tempdir().unwrap();
    let log = log_slice(work.path(), 6_000);
    let runs = work.path().join("runs");
    std::fs::create_dir(&runs).unwrap();
    for seed in 1..=12 {
        let seed = seed.to_string();
        let (status, report, stderr) = chaos(
            &runs,
            &[
                "--kills",
                "6",
                "--seed",
                &seed,
                "--log",
                log.to_str().unwrap(),
            ],
        );
        assert!(status.success(), "seed {seed}: {report}\n{stderr}");
        assert_eq!(report["ok"], true, "seed {seed}: {report}");
        assert_eq!(report["events"], 6_000, "seed {seed}");
        assert_eq!(report["snapshot_equal"], true, "seed {seed}");
        assert_eq!(report["unfinished"], Value::Null, "seed {seed}");
    }
}

/// Kills on a log with interactions: sessions, conversions, the shop funnel and the
/// cart-abandonment offers (fired at their deadlines in event time) come out as the backtest's.
#[test]
fn kills_on_a_log_with_interactions_change_no_offer_and_no_dashboard_figure() {
    let work = tempfile::tempdir().unwrap();
    let log = interactions_log(work.path(), 1_000, 10_000, 6);
    let (_, patterns) = backtest_with_cart_offers(&log);
    let offers = offer_ids(&backtest_offers(&log, &patterns), None);
    // The webhooks stage is killed with the rest: every offer reaches the receiver or is
    // still in the outbox, none is lost.
    let receiver = Receiver::start(work.path(), &json!({"/crm": {"attempts": ["500"]}}));
    let config = Receiver::write_config(
        work.path(),
        &[receiver.endpoint("crm", "/crm", "retry_schedule = [\"200ms\"]")],
    );
    let runs = work.path().join("runs");
    std::fs::create_dir(&runs).unwrap();
    let (status, report, stderr) = chaos_with(
        &runs,
        &[
            "--kills",
            "8",
            "--seed",
            "7",
            "--log",
            log.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
        &patterns,
    );
    assert!(status.success(), "{report}\n{stderr}");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["snapshot_equal"], true, "{report}");
    assert_eq!(report["unfinished"], Value::Null, "{report}");
    let mut reached = receiver.delivered("/crm");
    assert!(!reached.is_empty());
    for pending in report["webhooks_pending"].as_array().unwrap() {
        reached.insert(
            pending
                .as_str()
                .unwrap()
                .strip_prefix("crm/")
                .unwrap()
                .to_owned(),
        );
    }
    let lost: Vec<&String> = offers.difference(&reached).collect();
    assert!(lost.is_empty(), "{} offers lost: {lost:?}", lost.len());
    assert!(reached.is_subset(&offers));
    assert!(receiver.requests().iter().all(|r| r["verified"] == true));
}

/// A run that cannot finish in time stops what it started, says which stages were not done,
/// keeps its work dir and exits 1 (it used to wait for ever).
#[test]
fn a_run_past_its_deadline_reports_what_was_not_done_and_fails() {
    let work = tempfile::tempdir().unwrap();
    let (status, report, stderr) = chaos(
        work.path(),
        &["--kills", "20", "--seed", "3", "--deadline", "1s"],
    );
    assert_eq!(status.code(), Some(1), "{report}\n{stderr}");
    assert_eq!(report["ok"], false);
    let unfinished = &report["unfinished"];
    assert!(
        unfinished["reason"]
            .as_str()
            .unwrap()
            .contains("did not finish within the deadline of 1s"),
        "{unfinished}"
    );
    assert!(unfinished["stages_not_done"].is_array(), "{unfinished}");
    assert!(
        stderr.contains("did not finish within the deadline"),
        "{stderr}"
    );
    // The work dir (data and logs) is kept for a look.
    let kept: Vec<_> = std::fs::read_dir(work.path()).unwrap().collect();
    assert_eq!(kept.len(), 1);
    // Nothing it started is left running.
    let data = kept[0].as_ref().unwrap().path().join("data");
    assert!(
        clickpulse_connectors::embedded::EmbeddedStore::open(&data, &[]).is_ok(),
        "the data dir is free (no process holds it) and readable"
    );
}
