//! `GET /metrics` scraped by a real Prometheus server (Debian's package, started by the test
//! with a scrape config pointed at the demo): its HTTP API then returns the pipeline's series
//! with the values the pipeline reports itself.

mod common;

use common::prometheus::Prometheus;
use common::*;

#[test]
fn a_real_prometheus_scrapes_the_demo_s_stages_requests_and_offers() {
    let tmp = tempfile::tempdir().unwrap();
    let log = log_slice(tmp.path(), 20_000);
    let report = run_json(&["backtest", "--json", "--log", log.to_str().unwrap()]);
    let (events, offers) = (
        report["events"].as_u64().unwrap(),
        report["offers"].as_u64().unwrap(),
    );
    assert!(offers > 0, "the seed patterns fire on the slice");
    let dir = tmp.path().join("data");
    let demo = Demo::start(
        dir.to_str().unwrap(),
        &["--log", log.to_str().unwrap(), "--speed", "max"],
    );
    demo.wait_replay_done();
    let prometheus = Prometheus::start(&[format!("127.0.0.1:{}", demo.port)]);
    prometheus.wait_for(r#"up{job="clickpulse"}"#, |v| v == 1.0);
    // Every stage's events, as the pipeline committed them, once everything is through.
    for stage in ["replay", "enrich", "detect"] {
        prometheus.wait_for(
            &format!(r#"clickpulse_stage_events_total{{stage="{stage}"}}"#),
            |v| v == events as f64,
        );
    }
    prometheus.wait_for(r#"sum(clickpulse_offers_total{stage="detect"})"#, |v| {
        v == offers as f64
    });
    prometheus.wait_for(r#"clickpulse_offer_latency_seconds_count"#, |v| {
        v == offers as f64
    });
    prometheus.wait_for(
        r#"clickpulse_stage_dead_letters_total{stage="enrich"}"#,
        |v| v == 0.0,
    );
    // Histograms: every enrich batch was committed, and counted in a bucket.
    prometheus.wait_for(
        r#"clickpulse_stage_commit_duration_seconds_bucket{stage="enrich",le="+Inf"}"#,
        |v| v > 0.0,
    );
    prometheus.wait_for(r#"clickpulse_stage_lag_records{stage="enrich"}"#, |v| {
        v == 0.0
    });
    // Its own scrapes are requests of route /metrics; a path no route has counts as unmatched.
    let status = ureq::get(&format!("http://127.0.0.1:{}/no/such/page", demo.port))
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .unwrap()
        .status();
    assert_eq!(status, 404);
    prometheus.wait_for(
        r#"clickpulse_http_requests_total{route="/metrics",status="200",method="GET"}"#,
        |v| v >= 1.0,
    );
    prometheus.wait_for(
        r#"clickpulse_http_requests_total{route="unmatched",status="404"}"#,
        |v| v >= 1.0,
    );
    assert!(
        prometheus
            .query(r#"clickpulse_http_requests_total{route="/no/such/page"}"#)
            .is_empty()
    );
}
