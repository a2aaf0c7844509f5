//! `clickpulse backtest` on the real acme.com log.

mod common;

use common::*;

use std::collections::BTreeMap;
use std::path::Path;

#[test]
fn real_log_counts_are_exact() {
    let part1 = data("omniture/Omniture.1.tsv.zst");
    let part4 = data("omniture/Omniture.4.tsv.zst");
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

/// The bundled logs carry no Zstandard checksum (verifying one was 4% of a backtest): git
/// guards their bytes, and this test that the TSV inside each is byte-for-byte the original, whose
/// sha256 `data/README.md` records.
#[test]
fn bundled_logs_inflate_to_the_original_tsv() {
    use sha2::Digest;
    use std::io::Read;
    let readme = std::fs::read_to_string(data("README.md")).unwrap();
    for (part, rows) in [("Omniture.1", 77_529), ("Omniture.4", 39_078)] {
        let mut tsv = Vec::new();
        zstd::Decoder::new(std::fs::File::open(data(&format!("omniture/{part}.tsv.zst"))).unwrap())
            .unwrap()
            .read_to_end(&mut tsv)
            .unwrap();
        assert_eq!(tsv.iter().filter(|&&b| b == b'\n').count(), rows, "{part}");
        let hex: String = sha2::Sha256::digest(&tsv)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let line = readme
            .lines()
            .find(|l| l.contains(&format!("`omniture/{part}.tsv.zst`")))
            .unwrap();
        assert!(
            line.contains(&format!("sha256 of the TSV {hex}")),
            "{part}: the TSV inside hashes to {hex}, not what data/README.md records"
        );
    }
}

/// An `identify` line links its visitor to a user of the bundled users lookup (F, born
/// 1984-04-08): the visitor's later events are that known user's, and the line itself is no
/// event downstream (as live: `tests/browser/segment.test.mjs`).
#[test]
fn identify_links_a_visitor_to_a_known_user_for_its_later_events() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("identify.jsonl");
    let view = |ts: i64| {
        format!(
            r#"{{"ts_ms": {ts}, "visitor": "seg-anon", "url": "http://www.acme.com/SH55126545/VD55177927"}}"#
        )
    };
    let identify = r#"{"ts_ms": 1330588820000, "visitor": "seg-anon", "url": "segment://server/", "type": "identify", "properties": {"user_id": "0001BDD9-EABF-4D0D-81BD-D9EABFCD0D7D"}}"#;
    std::fs::write(
        &log,
        format!(
            "{}\n{identify}\n{}\n{}\n",
            view(1_330_588_819_000),
            view(1_330_588_821_000),
            view(1_330_588_822_000)
        ),
    )
    .unwrap();
    let report = run_json(&["backtest", "--log", log.to_str().unwrap(), "--json"]);
    assert_eq!(report["events"], 3, "{report}");
    assert_eq!(
        report["known_visitor_events"], 2,
        "the two views after identify: {report}"
    );
    assert_eq!(report["malformed"], 0);
}

/// A Snowplow pipeline's enriched events (131-field TSV) read as a log: its page view, its
/// e-commerce add to cart, its transaction and its structured event reach the dashboard; the
/// page ping and the transaction item are skipped.
#[test]
fn snowplow_enriched_events_are_a_log() {
    let log = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus/tsv_reader/snowplow-enriched.tsv");
    let report = run_json(&["backtest", "--log", log.to_str().unwrap(), "--json"]);
    assert_eq!(report["events"], 4, "{report}");
    assert_eq!(report["malformed"], 0);
    let shop = &report["dashboard"]["shop"];
    assert_eq!(shop["conversions_1h"]["add_to_cart"], 1, "{shop}");
    assert_eq!(shop["conversions_1h"]["purchases"], 1, "{shop}");
    assert_eq!(shop["custom_events_1h"][0]["key"], "play_video", "{shop}");
    assert_eq!(shop["utm_sources_1h"][0]["key"], "news", "{shop}");
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

#[test]
fn generated_logs_are_deterministic_in_every_compression_and_follow_the_real_log() {
    let tmp = tempfile::tempdir().unwrap();
    let out = |name: &str, seed: &str| {
        let path = tmp.path().join(name);
        run_ok(&[
            "generate",
            "--visitors",
            "3000",
            "--days",
            "3",
            "--events",
            "20000",
            "--seed",
            seed,
            "--out",
            path.to_str().unwrap(),
        ]);
        path
    };
    let plain = out("a.tsv", "5");
    let again = out("b.tsv", "5");
    let other = out("c.tsv", "6");
    let gz = out("a.tsv.gz", "5");
    let zst = out("a.tsv.zst", "5");
    let bytes = std::fs::read(&plain).unwrap();
    assert_eq!(
        bytes,
        std::fs::read(&again).unwrap(),
        "same seed, same bytes"
    );
    assert_ne!(
        bytes,
        std::fs::read(&other).unwrap(),
        "another seed, another log"
    );
    let mut inflated = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::MultiGzDecoder::new(std::fs::File::open(&gz).unwrap()),
        &mut inflated,
    )
    .unwrap();
    assert_eq!(inflated, bytes, "the .gz holds the same rows");
    let unzstd = zstd::decode_all(std::fs::File::open(&zst).unwrap()).unwrap();
    assert_eq!(unzstd, bytes, "the .zst holds the same rows");
    assert!(std::fs::metadata(&zst).unwrap().len() < bytes.len() as u64 / 3);
    let report = |path: &std::path::Path| {
        let mut r = run_json(&["backtest", "--log", path.to_str().unwrap(), "--json"]);
        let o = r.as_object_mut().unwrap();
        o.remove("elapsed_ms");
        o.remove("events_per_second");
        r
    };
    let read = report(&plain);
    assert_eq!(read["events"], 20_000);
    assert_eq!(read["malformed"], 0);
    assert_eq!(read, report(&gz), "gzip reads back the same");
    assert_eq!(read, report(&zst), "Zstandard reads back the same");
    // Its statistics follow the real log's: about 63% of the visitors have a users record
    // (7,965 of 12,569) and about 1 view in 9 is of a page not in the catalogue.
    let share = |a: &str, b: &str| read[a].as_f64().unwrap() / read[b].as_f64().unwrap();
    let known = share("known_visitors", "visitors");
    assert!((0.5..0.75).contains(&known), "known visitor share {known}");
    let real = run_json(&["backtest", "--json"]);
    let real_unknown = real["unknown_product_events"].as_f64().unwrap() / 116_607.0;
    let unknown = share("unknown_product_events", "events");
    assert!(
        (unknown - real_unknown).abs() < 0.05,
        "unknown-product share {unknown}, real log {real_unknown}"
    );
}

#[test]
fn generated_logs_with_interactions_follow_the_published_rates_and_read_back_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("shop.jsonl");
    let generate = |path: &std::path::Path| {
        run_ok(&[
            "generate",
            "--interactions",
            "--visitors",
            "20000",
            "--days",
            "3",
            "--events",
            "200000",
            "--seed",
            "3",
            "--out",
            path.to_str().unwrap(),
        ]);
    };
    generate(&path);
    let again = tmp.path().join("again.jsonl");
    generate(&again);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        text,
        std::fs::read_to_string(&again).unwrap(),
        "same seed, same bytes"
    );
    // Sessions (30 minutes without an event) and what they did.
    let mut by_visitor: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    for line in text.lines() {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        by_visitor
            .entry(e["visitor"].as_str().unwrap().to_owned())
            .or_default()
            .push((
                e["ts_ms"].as_i64().unwrap(),
                e["type"].as_str().unwrap().to_owned(),
            ));
    }
    let (mut sessions, mut with) = (0u64, BTreeMap::<String, u64>::new());
    for events in by_visitor.values_mut() {
        events.sort();
        let mut kinds = std::collections::BTreeSet::new();
        for (i, (t, kind)) in events.iter().enumerate() {
            if i == 0 || t - events[i - 1].0 > 30 * 60_000 {
                sessions += 1;
                for k in std::mem::take(&mut kinds) {
                    *with.entry(k).or_default() += 1;
                }
            }
            kinds.insert(kind.clone());
        }
        for k in kinds {
            *with.entry(k).or_default() += 1;
        }
    }
    let share = |kind: &str| with.get(kind).copied().unwrap_or(0) as f64 / sessions as f64;
    for (kind, rate, within) in [
        ("add_to_cart", 0.052, 0.01),
        ("purchase", 0.014, 0.005),
        ("search", 0.054, 0.01),
    ] {
        let got = share(kind);
        assert!(
            (got - rate).abs() < within,
            "{kind} in {got} of {sessions} sessions, published {rate}"
        );
    }
    assert!(
        share("begin_checkout") > share("purchase")
            && share("add_to_cart") > share("begin_checkout")
    );
    // The backtest reads every line, and the cart-abandonment pattern finds carts left.
    let report = run_json(&["backtest", "--log", path.to_str().unwrap(), "--json"]);
    assert_eq!(report["events"], 200_000);
    assert_eq!(report["malformed"], 0);
    assert!(
        report["offers_by_pattern"]["cart-abandonment"]
            .as_u64()
            .unwrap()
            > 0,
        "{report}"
    );
}

#[test]
fn the_text_summary_shows_each_patterns_audience_and_share() {
    let patterns = format!("{}/patterns", env!("CARGO_MANIFEST_DIR"));
    let out = run_ok(&["backtest", "--patterns", &patterns]);
    let text = String::from_utf8_lossy(&out.stdout);
    for pattern in ["seed-5-step", "seed-clothes-shoes-clothes"] {
        let section: Vec<&str> = text
            .lines()
            .skip_while(|l| l.trim() != pattern)
            .take(4)
            .collect();
        assert_eq!(section.len(), 4, "no section for {pattern} in:\n{text}");
        assert!(
            section[1].contains("audience") && section[1].contains("1,601 visitors"),
            "{text}"
        );
        assert!(section[2].contains("% of the audience"), "{text}");
        assert!(section[3].contains("per day"), "{text}");
    }
}

/// `backtest --alerts`: a threshold rule (no purchase in 30 minutes) and a baseline rule (page
/// views far from their exponentially weighted mean) fire and resolve where a hand-made log
/// says they must, judged minute by minute of event time.
#[test]
fn a_threshold_and_a_baseline_alert_fire_and_resolve_in_the_backtest() {
    let tmp = tempfile::tempdir().unwrap();
    let (log_file, t0, alerts) = alerts_log(tmp.path());
    let minute = 60_000;
    let report = run_json(&[
        "backtest",
        "--json",
        "--log",
        log_file.to_str().unwrap(),
        "--alerts",
        alerts.to_str().unwrap(),
    ]);
    let events = report["alerts"].as_array().unwrap();
    let of = |name: &str| -> Vec<(String, i64, f64)> {
        events
            .iter()
            .filter(|e| e["alert"] == name)
            .map(|e| {
                (
                    e["state"].as_str().unwrap().to_owned(),
                    (e["ts_ms"].as_i64().unwrap() - t0) / minute,
                    e["value"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    // The last purchase before the gap is in minute 55: the 30 minutes ending with minute 85
    // hold none; minute 120's resolves it.
    assert_eq!(
        of("no-purchases"),
        [("firing".into(), 86, 0.0), ("resolved".into(), 121, 1.0)],
        "{events:?}"
    );
    // The drop fires at its first minute (150, judged at its end) and resolves after it.
    let drop = of("traffic-drop");
    assert_eq!(drop[0], ("firing".into(), 151, 1.0), "{drop:?}");
    assert!(
        drop.iter()
            .any(|(state, at, _)| state == "resolved" && *at > 151),
        "{drop:?}"
    );
    // The shipped rules parse and run.
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("alerts");
    let with_shipped = run_json(&[
        "backtest",
        "--json",
        "--log",
        log_file.to_str().unwrap(),
        "--alerts",
        shipped.to_str().unwrap(),
    ]);
    assert!(with_shipped["alerts"].is_array());
    // Without --alerts the report has none (and the run does no per-minute work).
    let plain = run_json(&["backtest", "--json", "--log", log_file.to_str().unwrap()]);
    assert!(plain.get("alerts").is_none());
    assert_eq!(
        plain["dashboard"], report["dashboard"],
        "judging changes no figure"
    );
}
