//! `clickpulse backtest` on the real acme.com log.

mod common;

use common::*;

#[test]
fn real_log_counts_are_exact() {
    let part1 = data("omniture/Omniture.1.tsv.gz");
    let part4 = data("omniture/Omniture.4.tsv.gz");
    let report = run_json(&[
        "backtest",
        "--log",
        part1.to_str().unwrap(),
        "--log",
        part4.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(report["events"], 116_607);
    assert_eq!(report["visitors"], 12_569);
    assert_eq!(report["known_visitors"], 7_965);
    assert_eq!(report["malformed"], 0);
    assert!(report["events_per_second"].as_f64().unwrap() > 0.0);
    // Without --log the bundled copies are used: the same log.
    let bundled = run_json(&["backtest", "--json"]);
    assert_eq!(bundled["events"], report["events"]);
    assert_eq!(
        bundled["unknown_product_events"],
        report["unknown_product_events"]
    );
}

#[test]
fn bad_rows_are_counted_and_written_as_dead_letters() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("bad.tsv");
    let good = {
        let mut cols = vec![String::new(); 178];
        cols[0] = "1330588819".into();
        cols[12] = "http://www.acme.com/SH55126545/VD55177927".into();
        cols[13] = "{V1}".into();
        cols.join("\t")
    };
    std::fs::write(&log, format!("{good}\nnot\ta\trow\n{good}\n")).unwrap();
    let dead = tmp.path().join("dead.jsonl");
    let report = run_json(&[
        "backtest",
        "--log",
        log.to_str().unwrap(),
        "--json",
        "--dead-letters-out",
        dead.to_str().unwrap(),
    ]);
    assert_eq!(report["events"], 2);
    assert_eq!(report["malformed"], 1);
    let letters = std::fs::read_to_string(dead).unwrap();
    let letter: serde_json::Value = serde_json::from_str(letters.lines().next().unwrap()).unwrap();
    assert_eq!(letter["position"], 2);
    assert_eq!(letter["reason"], "too few columns: 3, need at least 53");
}
