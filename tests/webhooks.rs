//! Offers out to a shop's own systems by webhook, embedded: a receiver that verifies every
//! message with the Standard Webhooks spec's npm library fails on purpose (a 500, a timeout, a
//! 429 with `Retry-After`), is stopped and restarted, and the demo is killed with `kill -9` and
//! restarted; every offer still arrives, signed, at least once, with its offer id as its
//! `webhook-id`. An endpoint that answers 400 dead-letters each offer after its attempts and one
//! that answers 410 is disabled; `clickpulse webhooks replay` sends them again once they mend.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::receiver::{Receiver, replay};
use common::*;
use serde_json::{Value, json};

fn config(receiver: &Receiver) -> String {
    // Patient enough to outlast the receiver's stop and the demo's restart on a slow machine
    // (20 retries, about a minute), never waiting long once the receiver is back.
    let patient = format!(
        "retry_schedule = [\"1s\", \"2s\", {}]",
        vec!["\"3s\""; 18].join(", ")
    );
    let crm = format!(
        "patterns = [\"cart-abandonment\"]\ntimeout_ms = 1000\nmax_in_flight = 8\n{patient}"
    );
    format!(
        "[webhooks]\nallow_loopback = true\n\n{}\n{}\n{}\n{}",
        receiver.endpoint("crm", "/crm", &crm),
        receiver.endpoint("bad", "/bad", "retry_schedule = [\"100ms\", \"100ms\"]"),
        receiver.endpoint("gone", "/gone", "patterns = [\"cart-abandonment\"]"),
        format_args!(
            "[[webhooks.slack]]\nname = \"ops\"\nurl = \"{}\"\nevents = [\"offer\"]\n\
             patterns = [\"cart-abandonment\"]\n{patient}\n",
            receiver.url("/slack")
        ),
    )
}

fn webhooks(demo: &Demo) -> Option<Value> {
    demo.get("/api/webhooks")
}

#[test]
fn offers_reach_a_verifying_receiver_through_failures_restarts_and_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let log = interactions_log(tmp.path(), 150, 1_500, 3);
    // The shipped patterns, in a directory of the test's own (the demo watches it).
    let patterns = tmp.path().join("patterns");
    std::fs::create_dir(&patterns).unwrap();
    for f in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("patterns")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, patterns.join(f.file_name().unwrap())).unwrap();
    }
    let offers = backtest_offers(&log, &patterns);
    let (all, carts) = (
        offer_ids(&offers, None),
        offer_ids(&offers, Some("cart-abandonment")),
    );
    assert!(carts.len() >= 2 && all.len() > carts.len(), "{all:?}");

    let plan = json!({
        "/crm": {"attempts": ["500", "timeout", "429:1"], "then": "ok"},
        "/bad": {"then": "400"},
        "/gone": {"then": "410"},
        "/slack": {"slack": true, "attempts": ["429:1"], "then": "ok"},
    });
    let mut receiver = Receiver::start(tmp.path(), &plan);
    let config_file = tmp.path().join("clickpulse.toml");
    std::fs::write(&config_file, config(&receiver)).unwrap();
    let dir = tmp.path().join("data");
    let (dir, config_path) = (dir.to_str().unwrap(), config_file.to_str().unwrap());
    let args = [
        "--config",
        config_path,
        "--log",
        log.to_str().unwrap(),
        "--patterns",
        patterns.to_str().unwrap(),
        "--speed",
        "max",
    ];
    let mut demo = Demo::start(dir, &args);
    let dir_path = tmp.path().join("data");

    // The receiver goes away while the first deliveries are being retried, and comes back.
    wait_until("the first attempts", || {
        (receiver
            .requests()
            .iter()
            .filter(|r| r["path"] == "/crm")
            .count()
            >= 2)
            .then_some(())
    });
    receiver.stop();
    wait_until("attempts to meet a closed port", || {
        let crm = &webhooks(&demo)?["endpoints"]["crm"];
        (crm["retried"].as_u64()? >= 4).then_some(())
    });
    receiver.restart(&plan);

    // The demo is killed with deliveries pending, and restarted on its data dir.
    wait_until("a first delivery", || {
        (!receiver.delivered("/crm").is_empty()).then_some(())
    });
    demo.child.kill().unwrap();
    demo.child.wait().unwrap();
    let demo = Demo::start(dir, &args);

    wait_until("every cart offer at the CRM", || {
        (receiver.delivered("/crm") == carts).then_some(())
    });
    wait_until("every offer dead-lettered at the broken endpoint", || {
        let bad = &webhooks(&demo)?["endpoints"]["bad"];
        (bad["dead_letters"].as_u64()? == all.len() as u64 && bad["pending"] == 0).then_some(())
    });
    let status = wait_until("the gone endpoint disabled", || {
        let gone = webhooks(&demo)?["endpoints"]["gone"].clone();
        (gone["disabled"] == true && gone["pending"] == 0).then_some(gone)
    });
    assert!(status["dead_letters"].as_u64().unwrap() >= 1);

    // Slack got digests of the cart offers, within its limits and without visitor ids.
    wait_until("every cart offer in a Slack digest", || {
        let got: BTreeSet<String> = receiver
            .requests()
            .iter()
            .filter(|r| r["path"] == "/slack" && r["answer"] == "ok")
            .flat_map(|r| r["items"].as_array().unwrap().clone())
            .map(|i| i.as_str().unwrap().to_owned())
            .collect();
        (got == carts).then_some(())
    });
    let requests = receiver.requests();
    for r in requests.iter().filter(|r| r["path"] == "/slack") {
        assert!(!r["body"].to_string().contains("\"visitor\""), "{r}");
    }
    assert!(
        requests.iter().all(|r| r["verified"] == true),
        "every message verifies with the spec's library"
    );
    for r in requests
        .iter()
        .filter(|r| r["answer"] == "ok" && r["path"] != "/slack")
    {
        // The body is the offer, and the webhook-id its offer id.
        assert_eq!(r["body"]["type"], "offer.created");
        assert_eq!(r["body"]["data"]["offer_id"], r["id"]);
        assert!(r["body"]["data"]["title"].is_string(), "{r}");
    }
    let crm_attempts = |id: &str| {
        requests
            .iter()
            .filter(|r| r["path"] == "/crm" && r["id"] == id)
            .count()
    };
    for id in &carts {
        assert!(crm_attempts(id) >= 4, "{id}: 500, timeout, 429, then ok");
    }
    // Every offer reached the broken endpoint (the others of its three attempts may have met
    // the stopped receiver); its dead letters are checked on the topic at the end.
    assert_eq!(
        requests
            .iter()
            .filter(|r| r["path"] == "/bad")
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect::<BTreeSet<_>>(),
        all
    );

    // Both endpoints mended: the replay sends their dead letters again, the same ids.
    let mended = json!({
        "/crm": {"then": "ok"},
        "/bad": {"then": "ok"},
        "/gone": {"then": "ok"},
        "/slack": {"slack": true},
    });
    receiver.restart(&mended);
    let url = format!("http://127.0.0.1:{}", demo.port);
    let printed = replay(&url, &["--endpoint", "bad"]);
    assert!(
        printed.contains(&format!("re-queued {} deliveries", all.len())),
        "{printed}"
    );
    wait_until("the replayed dead letters delivered", || {
        (receiver.delivered("/bad") == all).then_some(())
    });
    let enabled = replay(&url, &["--endpoint", "gone", "--enable"]);
    assert!(enabled.contains("re-enabled endpoint gone"), "{enabled}");
    wait_until("the gone endpoint's dead letters delivered", || {
        let delivered = receiver.delivered("/gone");
        (!delivered.is_empty() && delivered.is_subset(&carts)).then_some(())
    });
    // Prometheus sees the deliveries by endpoint and outcome.
    let metrics = ureq::get(&format!("{url}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let delivered_bad = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                r#"clickpulse_webhook_deliveries_total{endpoint="bad",outcome="delivered"} "#,
            )
        })
        .and_then(|v| v.parse::<u64>().ok());
    assert_eq!(delivered_bad, Some(all.len() as u64), "{metrics}");
    // A replay without the admin token is refused.
    let refused = std::process::Command::new(bin())
        .args([
            "webhooks",
            "replay",
            "--url",
            &url,
            "--admin-token",
            "wrong",
        ])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("401"),
        "{refused:?}"
    );

    // The dead letters on the topic: each offer's at the broken endpoint after its three
    // attempts, with the reason; the gone endpoint's with the 410.
    sigterm(&demo.child);
    let mut demo = demo;
    wait_exit(&mut demo.child, "the demo to stop");
    let dumped = run_ok(&[
        "topics",
        "dump",
        "dead-letters",
        "--data-dir",
        dir_path.to_str().unwrap(),
    ]);
    let letters: Vec<Value> = String::from_utf8(dumped.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let bad: BTreeSet<String> = letters
        .iter()
        .filter(|l| l["source"] == "webhooks/bad")
        .inspect(|l| {
            assert_eq!(l["position"], 3, "{l}");
            assert!(
                l["reason"].as_str().unwrap().contains("answered 400"),
                "{l}"
            );
        })
        .map(|l| {
            // "webhook <id> to <endpoint>: <why>"
            let reason = l["reason"].as_str().unwrap();
            reason["webhook ".len()..]
                .split(' ')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(bad, all);
    assert!(
        letters.iter().any(|l| l["source"] == "webhooks/gone"
            && l["reason"].as_str().unwrap().contains("410 Gone")),
        "{letters:?}"
    );
}

/// Alert rules judged live by the aggregation reach a receiver that takes alerts: the same
/// firings and resolutions, at the same event times, as `backtest --alerts` predicts.
#[test]
fn alert_transitions_reach_the_receiver_as_the_backtest_predicts() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _, alerts) = alerts_log(tmp.path());
    let report = run_json(&[
        "backtest",
        "--json",
        "--log",
        log.to_str().unwrap(),
        "--alerts",
        alerts.to_str().unwrap(),
    ]);
    let expected: BTreeSet<String> = report["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            format!(
                "alert-{}-{}-{}",
                a["alert"].as_str().unwrap(),
                a["state"].as_str().unwrap(),
                a["ts_ms"]
            )
        })
        .collect();
    assert!(expected.len() >= 3, "{expected:?}");
    let receiver = Receiver::start(tmp.path(), &json!({}));
    let config = Receiver::write_config(
        tmp.path(),
        &[receiver.endpoint("ops", "/ops", "events = [\"alert\"]")],
    );
    let dir = tmp.path().join("data");
    let _demo = Demo::start(
        dir.to_str().unwrap(),
        &[
            "--config",
            config.to_str().unwrap(),
            "--log",
            log.to_str().unwrap(),
            "--alerts",
            alerts.to_str().unwrap(),
            "--speed",
            "max",
            // A few minutes of the log per batch: each minute is judged from the windows.
            "--batch-size",
            "40",
        ],
    );
    wait_until("the alerts at the receiver", || {
        (receiver.delivered("/ops") == expected).then_some(())
    });
    for r in receiver.requests() {
        assert_eq!(r["verified"], true);
        let kind = r["body"]["type"].as_str().unwrap();
        assert_eq!(
            kind,
            format!("alert.{}", r["body"]["data"]["state"].as_str().unwrap())
        );
    }
}
