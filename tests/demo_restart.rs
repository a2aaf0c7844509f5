//! The embedded pipeline survives `kill -9`: a demo killed mid-replay and restarted ends with
//! exactly the per-stage counts and topic contents of an uninterrupted run.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// Every state key (`status` alone prints a summary).
fn status(dir: &str) -> Value {
    run_json(&["status", "--keys", "--data-dir", dir])
}

/// What must be equal between two runs: every stage's persisted counters and positions, and
/// the number of records in every topic. (Per-visitor pattern state is left out: when expired
/// matches get swept depends on batch boundaries, and an expired match is discarded on the
/// visitor's next view anyway; the offers it leads to are compared separately.)
fn comparable(status: &Value) -> Value {
    let mut s = status.clone();
    let map = s.as_object_mut().unwrap();
    map.remove("data_dir");
    map["state"].as_object_mut().unwrap().retain(|key, _| {
        // The window state in its parts (its head, panes, minutes, half hours, offers): the
        // snapshot made from it is compared instead.
        !key.starts_with("op/detect/v/")
            && (!key.starts_with("op/aggregate/") || key == "op/aggregate/snapshot")
    });
    s
}

fn offers(dir: &str) -> Vec<String> {
    let out = run_ok(&["topics", "dump", "special-offers", "--data-dir", dir]);
    let mut lines: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

#[test]
fn kill_9_mid_replay_then_restart_equals_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = tmp.path().join("reference");
    let crashed = tmp.path().join("crashed");
    let (reference, crashed) = (reference.to_str().unwrap(), crashed.to_str().unwrap());

    demo_to_end(reference, &[]);
    let expected = status(reference);
    assert_eq!(expected["topics"]["click-data"]["records"], 116_607);
    assert_eq!(
        expected["topics"]["enriched-click-data"]["records"],
        116_607
    );
    assert_eq!(expected["state"]["replay/state"]["events"], 116_607);
    assert_eq!(expected["state"]["runner/enrich"]["events"], 116_607);

    // Small batches make the replay take long enough to be killed in the middle.
    let mut child = Demo::start(crashed, &["--speed", "max", "--batch-size", "50"]);
    let port = child.port;
    let at_kill = wait_for(
        Duration::from_secs(60),
        "the replay to be under way",
        || {
            let stats = get_json(port, "/api/stats")?;
            let replayed = stats["stages"]["replay"]["events"].as_u64()?;
            let enriched = stats["stages"]["enrich"]["events"].as_u64()?;
            (replayed > 5_000 && enriched > 0).then_some(replayed)
        },
    );
    child.child.kill().unwrap(); // SIGKILL
    child.child.wait().unwrap();
    let after_kill = status(crashed);
    let replayed_at_kill = after_kill["state"]["replay/state"]["events"]
        .as_u64()
        .unwrap();
    assert!(
        replayed_at_kill < 116_607,
        "the kill must land mid-replay (stats said {at_kill}, disk says {replayed_at_kill})"
    );

    demo_to_end(crashed, &[]);
    assert_eq!(comparable(&status(crashed)), comparable(&expected));
    assert_eq!(offers(crashed), offers(reference));
}

#[test]
fn malformed_rows_go_to_the_dead_letter_topic_once_and_the_rest_flows() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("mixed.jsonl");
    std::fs::write(
        &log,
        concat!(
            "{\"ts_ms\":1330588819000,\"visitor\":\"A\",\"url\":\"http://www.acme.com/SH55126545/VD55177927\"}\n",
            "{\"ts_ms\":1330588820000,\"visitor\":\"\",\"url\":\"http://www.acme.com/\"}\n",
            "garbage\n",
            "{\"ts_ms\":1330588821000,\"visitor\":\"B\",\"url\":\"http://www.acme.com/\"}\n",
        ),
    )
    .unwrap();
    let dir = tmp.path().join("data");
    let dir = dir.to_str().unwrap();
    let log = log.to_str().unwrap();
    demo_to_end(dir, &["--log", log]);
    demo_to_end(dir, &["--log", log]); // a second start replays nothing again
    let s = status(dir);
    assert_eq!(s["topics"]["click-data"]["records"], 2);
    assert_eq!(s["topics"]["enriched-click-data"]["records"], 2);
    assert_eq!(s["topics"]["dead-letters"]["records"], 2);
    assert_eq!(s["state"]["replay/state"]["malformed"], 2);

    // The same data dir refuses another log instead of mixing two replays.
    let other = tmp.path().join("other.jsonl");
    std::fs::write(
        &other,
        "{\"ts_ms\":1,\"visitor\":\"C\",\"url\":\"http://x/\"}\n",
    )
    .unwrap();
    let output = std::process::Command::new(bin())
        .args(demo_to_end_args(dir, &["--log", other.to_str().unwrap()]))
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--reset"));
}
