//! Distributed mode, for real: every stage a separate `clickpulse run` process over a
//! Kafka-protocol broker (tansu) and Redis, compared with `clickpulse backtest` on the same log.

#[path = "common/cluster.rs"]
mod cluster;
mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use clickpulse_engine::window::DashboardSnapshot;
use cluster::{Cluster, Storage};
use common::*;
use serde_json::Value;

const PATTERNS: &str = "tests/data/offer-patterns";

/// The backtest's end-of-log dashboard, offer ids and event count for `logs` (the bundled log
/// if empty).
fn backtest(logs: &[&Path]) -> (DashboardSnapshot, BTreeSet<String>, u64) {
    backtest_with(logs, &Path::new(env!("CARGO_MANIFEST_DIR")).join(PATTERNS))
}

/// [`backtest`] with the patterns of `patterns`.
fn backtest_with(logs: &[&Path], patterns: &Path) -> (DashboardSnapshot, BTreeSet<String>, u64) {
    let dir = tempfile::tempdir().unwrap();
    let offers = dir.path().join("offers.jsonl");
    let mut args: Vec<String> = vec!["backtest".into(), "--json".into(), "--patterns".into()];
    args.push(patterns.display().to_string());
    args.push("--offers-out".into());
    args.push(offers.display().to_string());
    for log in logs {
        args.push("--log".into());
        args.push(log.display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let report = run_json(&args);
    let ids = std::fs::read_to_string(&offers)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["offer_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    (
        serde_json::from_value(report["dashboard"].clone())
            .expect("the report's dashboard is a snapshot"),
        ids,
        report["events"].as_u64().unwrap(),
    )
}

fn assert_offers(cluster: &Cluster, expected: &BTreeSet<String>) {
    assert!(
        !expected.is_empty(),
        "the test pattern must fire on this log"
    );
    let delivered = cluster.delivered_offers();
    let unique: BTreeSet<String> = delivered.iter().cloned().collect();
    assert_eq!(
        delivered.len(),
        unique.len(),
        "an offer was delivered twice"
    );
    assert_eq!(
        &unique, expected,
        "the web stage's offers differ from the backtest's"
    );
}

fn web_duplicates(stats: &Value) -> u64 {
    stats["stages"]["web"]["details"]["duplicates"]
        .as_u64()
        .unwrap_or(0)
}

/// Starts one worker per stage and waits for the backtest's dashboard and offers; returns the
/// stats.
fn run_to_the_end(
    c: &mut Cluster,
    events: u64,
    dashboard: &DashboardSnapshot,
    offers: &BTreeSet<String>,
    timeout_s: u64,
) -> Value {
    for stage in ["web", "replay", "enrich", "detect", "aggregate"] {
        c.worker(stage, stage);
    }
    let stats = c.wait_until_done(events, dashboard, Duration::from_secs(timeout_s));
    assert_offers(c, offers);
    assert_eq!(web_duplicates(&stats), 0);
    stats
}

/// The lookups are in the original's key layout; returns the connection.
fn assert_lookup_layout(c: &Cluster) -> clickpulse_chaos::RedisConn {
    let mut r = c.redis();
    let user: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg("visitor:0001BDD9-EABF-4D0D-81BD-D9EABFCD0D7D")
        .query(&mut r)
        .unwrap();
    assert_eq!(user["gender"], "F");
    assert_eq!(user["birthday"], "1984-04-08");
    r
}

#[test]
fn separate_processes_equal_the_backtest() {
    let (dashboard, offers, events) = backtest(&[]);
    assert_eq!(events, 116_607);
    let mut c = Cluster::start("", "speed = \"max\"");
    let stats = run_to_the_end(&mut c, 116_607, &dashboard, &offers, 150);
    let mut r = assert_lookup_layout(&c);
    let cat: String = redis::cmd("HGET")
        .arg("product:VD55181667")
        .arg("cat")
        .query(&mut r)
        .unwrap();
    assert!(!cat.is_empty());
    let logged: u64 = redis::cmd("XLEN").arg("state_logs").query(&mut r).unwrap();
    assert!(logged > 0, "transitions reach the state_logs stream");
    // The web stage serves the detect workers' transitions from that stream.
    let log = get_json(c.web_port, "/api/patterns/log?limit=5").unwrap();
    assert_eq!(log["transitions"].as_array().unwrap().len(), 5, "{log}");
    // The enrichment's lookups came through its cache in pipelined round trips.
    let enrich = &stats["stages"]["enrich"]["details"];
    assert!(
        enrich["lookup_round_trips"].as_u64().unwrap() < 116_607 / 10,
        "{enrich}"
    );
}

#[test]
fn a_log_with_interactions_gives_the_backtest_s_cart_offers_and_dashboard() {
    let dir = tempfile::tempdir().unwrap();
    let log = interactions_log(dir.path(), 3_000, 30_000, 4);
    let (report, patterns) = backtest_with_cart_offers(&log);
    assert!(
        report["funnels"][0]["steps"][3]["visitors"].as_u64() > Some(0),
        "{}",
        report["funnels"]
    );
    let (dashboard, offers, events) = backtest_with(&[&log], &patterns);
    assert!(
        dashboard.shop.sessions_1h.started > 0,
        "{:?}",
        dashboard.shop
    );
    let mut c = Cluster::start_spec_with(
        clickpulse_chaos::Spec {
            replay: format!("speed = \"max\"\nlogs = [\"{}\"]", log.display()),
            ..clickpulse_chaos::Spec::default()
        },
        &patterns,
    );
    run_to_the_end(&mut c, events, &dashboard, &offers, 150);
}

#[test]
fn offers_reach_a_webhook_receiver_across_a_killed_sender_and_replay_from_its_standby() {
    use common::receiver::Receiver;
    let dir = tempfile::tempdir().unwrap();
    let log = interactions_log(dir.path(), 150, 1_500, 3);
    let (_, patterns) = backtest_with_cart_offers(&log);
    let (dashboard, offers, events) = backtest_with(&[&log], &patterns);
    // Slow answers, one at a time: the sender is killed with deliveries still to make.
    let plan = serde_json::json!({
        "/crm": {"attempts": ["500"], "then": "slow:150"},
        "/bad": {"then": "400"},
    });
    let mut receiver = Receiver::start(dir.path(), &plan);
    let extra = format!(
        "[webhooks]\nallow_loopback = true\n\n{}\n{}",
        receiver.endpoint(
            "crm",
            "/crm",
            "max_in_flight = 1\nretry_schedule = [\"500ms\"]"
        ),
        receiver.endpoint("bad", "/bad", "retry_schedule = [\"100ms\"]"),
    );
    let mut c = Cluster::start_spec_with(
        clickpulse_chaos::Spec {
            replay: format!("speed = \"max\"\nlogs = [\"{}\"]", log.display()),
            extra,
            ..clickpulse_chaos::Spec::default()
        },
        &patterns,
    );
    let sender = |c: &mut Cluster, id: &str| {
        let port = free_port();
        let args = [
            "--metrics-listen".to_owned(),
            format!("127.0.0.1:{port}"),
            "--admin-token".to_owned(),
            ADMIN_TOKEN.to_owned(),
        ];
        (c.worker_with("webhooks", id, &args), port)
    };
    let (a, _) = sender(&mut c, "webhooks-a");
    for stage in ["web", "replay", "enrich", "detect", "aggregate"] {
        c.worker(stage, stage);
    }
    wait_until("the first deliveries", || {
        (receiver.delivered("/crm").len() >= 3).then_some(())
    });
    // A standby waits for the lease; the active sender is killed mid-way.
    let (_, standby_port) = sender(&mut c, "webhooks-b");
    c.workers[a].kill();
    let before = receiver.delivered("/crm").len();
    assert!(before < offers.len(), "killed with deliveries to make");
    c.wait_until_done(events, &dashboard, Duration::from_secs(150));
    assert_offers(&c, &offers);
    wait_until("every offer at the receiver", || {
        (receiver.delivered("/crm") == offers).then_some(())
    });
    wait_until("the broken endpoint's dead letters at the standby", || {
        let status = get_json(standby_port, "/api/webhooks")?;
        let bad = &status["endpoints"]["bad"];
        (bad["dead_letters"].as_u64()? == offers.len() as u64).then_some(())
    });
    receiver.restart(&serde_json::json!({"/bad": {"then": "ok"}}));
    let url = format!("http://127.0.0.1:{standby_port}");
    let printed = common::receiver::replay(&url, &["--endpoint", "bad"]);
    assert!(
        printed.contains(&format!("re-queued {} deliveries", offers.len())),
        "{printed}"
    );
    wait_until("the replayed dead letters delivered", || {
        (receiver.delivered("/bad") == offers).then_some(())
    });
    assert!(
        receiver.requests().iter().all(|r| r["verified"] == true),
        "every message verifies with the spec's library"
    );
}

#[test]
fn a_killed_detect_worker_hands_its_partitions_over_without_duplicates() {
    let (dashboard, offers, events) = backtest(&[]);
    assert_eq!(events, 116_607);
    // 15 days of event time in about 30 s: the kill lands mid-stream.
    let mut c = Cluster::start("batch_size = 500", "speed = \"40000\"");
    for stage in ["web", "replay", "enrich", "aggregate"] {
        c.worker(stage, stage);
    }
    let a = c.worker("detect", "detect-a");
    c.worker("detect", "detect-b");
    // Both detect workers own partitions and are under way.
    wait_for(Duration::from_secs(90), "two busy detect workers", || {
        let stats = c.stats()?;
        let workers = stats["stages"]["detect"]["details"]["workers"]
            .as_array()?
            .clone();
        let busy = workers
            .iter()
            .filter(|w| {
                w["partitions"].as_array().is_some_and(|p| !p.is_empty())
                    && w["events"].as_u64() > Some(2_000)
            })
            .count();
        let replayed = stats["stages"]["replay"]["events"].as_u64()?;
        (busy == 2 && replayed < 90_000).then_some(())
    });
    c.workers[a].kill();
    let stats = c.wait_until_done(116_607, &dashboard, Duration::from_secs(240));
    assert_offers(&c, &offers);
    assert_eq!(
        web_duplicates(&stats),
        0,
        "the detect stage republished offers"
    );
    let workers = stats["stages"]["detect"]["details"]["workers"]
        .as_array()
        .unwrap();
    let survivor = workers.iter().find(|w| w["worker"] == "detect-b").unwrap();
    assert_eq!(
        survivor["partitions"].as_array().unwrap().len(),
        4,
        "{survivor}"
    );
}

#[test]
fn a_redis_restart_mid_stream_loses_nothing() {
    let (dashboard, offers, events) = backtest(&[]);
    let mut c = Cluster::start("batch_size = 500", "speed = \"40000\"");
    for stage in ["web", "replay", "enrich", "detect", "aggregate"] {
        c.worker(stage, stage);
    }
    wait_for(Duration::from_secs(120), "a third of the log", || {
        c.stats()?["stages"]["detect"]["events"]
            .as_u64()
            .filter(|n| *n > 40_000)
    });
    // Redis dies hard; its append-only file keeps what it acknowledged. The workers retry with
    // backoff and carry on.
    c.redis.as_mut().unwrap().kill();
    std::thread::sleep(Duration::from_secs(2));
    c.start_redis();
    let stats = c.wait_until_done(events, &dashboard, Duration::from_secs(240));
    assert_offers(&c, &offers);
    assert_eq!(web_duplicates(&stats), 0);
}

#[test]
fn a_broker_restart_mid_stream_loses_nothing() {
    let slice_dir = tempfile::tempdir().unwrap();
    let log = log_slice(slice_dir.path(), 20_000);
    let (dashboard, offers, events) = backtest(&[&log]);
    assert_eq!(events, 20_000);
    // tansu keeps topics on S3 (a local moto server) so they outlive the broker process. Its
    // idempotent-producer support records a batch's sequence number before the batch itself, so
    // a batch cut off by the restart is later answered "duplicate" (= acknowledged) though it
    // was never stored: these producers run without idempotence (and one request in flight, to
    // keep the order) — with Apache Kafka or Redpanda keep the default.
    let mut c = Cluster::start_with(
        Storage::S3,
        "properties = { \"enable.idempotence\" = \"false\", \"max.in.flight.requests.per.connection\" = \"1\" }",
        "batch_size = 500",
        &format!("speed = \"20000\"\nlogs = [\"{}\"]", log.display()),
    );
    for stage in ["web", "replay", "enrich", "detect", "aggregate"] {
        c.worker(stage, stage);
    }
    wait_for(
        Duration::from_secs(180),
        "a third of the log downstream",
        || {
            c.stats()?["stages"]["detect"]["events"]
                .as_u64()
                .filter(|n| *n > 6_000)
        },
    );
    let before = c.stats().unwrap();
    c.restart_broker();
    let inner: &clickpulse_chaos::Cluster = &c;
    let stats = match inner.wait_until_done(events, &dashboard, Duration::from_secs(600)) {
        Ok(stats) => stats,
        Err(e) => {
            let brokers = format!("127.0.0.1:{}", c.broker_port);
            panic!(
                "{e}\nclick-data: {}\nenriched-click-data: {}",
                census(&brokers, "click-data", events),
                census(&brokers, "enriched-click-data", u64::MAX)
            )
        }
    };
    // Mid-stream: some stage still had records to read or write when the broker went away. On
    // a slow day the replay (paced, 20,000× event time) can have published the whole log while
    // enrich still drains it through the broker: that is a restart mid-stream too.
    let still_flowing = |stage: &str| before["stages"][stage]["events"].as_u64() < Some(events);
    assert!(
        still_flowing("replay") || still_flowing("enrich"),
        "the restart came after the stream had passed enrich: {before}"
    );
    assert_offers(&c, &offers);
    assert_eq!(web_duplicates(&stats), 0);
}

/// What a topic holds, for a failure message: per partition the records, the offsets that hold
/// none, and the lineage headers seen twice; with `expected` lineages `0..expected`, those
/// missing from every partition.
fn census(brokers: &str, topic: &str, expected: u64) -> String {
    use rdkafka::ClientConfig;
    use rdkafka::Message;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::error::KafkaError;
    use rdkafka::message::Headers;

    let mut out = String::new();
    let mut all = BTreeSet::new();
    for p in 0..4 {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "test-census")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .create()
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let (mut records, mut holes, mut twice) = (0u64, Vec::new(), Vec::new());
        let mut next = 0i64;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            match consumer.poll(Duration::from_secs(1)) {
                Some(Ok(m)) => {
                    if m.offset() > next {
                        holes.push(next..m.offset());
                    }
                    next = next.max(m.offset() + 1);
                    records += 1;
                    let lineage = m.headers().and_then(|h| {
                        h.iter()
                            .find(|h| h.key == "clickpulse-src")
                            .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse::<u64>().ok())
                    });
                    if let Some(l) = lineage
                        // Replayed lineages are unique in the topic; a stage's (its input
                        // offsets) only within a partition.
                        && !all.insert((if expected == u64::MAX { p } else { 0 }, l))
                    {
                        twice.push((m.offset(), l));
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                _ => {}
            }
        }
        out.push_str(&format!(
            "\n  p{p}: {records} records, end {next}, offsets without a record {holes:?}, lineage seen twice (offset, lineage) {twice:?}"
        ));
    }
    if expected != u64::MAX {
        let missing: Vec<u64> = (0..expected).filter(|l| !all.contains(&(0, *l))).collect();
        out.push_str(&format!("\n  lineages missing: {missing:?}"));
    }
    out
}

/// Stores the first `n` records of `topic`/`partition` a second time, headers and all: what a
/// producer without idempotence does when the broker stored a batch but its acknowledgement was
/// lost (a broker restart) and the batch is retried.
fn store_twice(brokers: &str, topic: &str, partition: i32, n: usize) {
    use rdkafka::ClientConfig;
    use rdkafka::Message;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "test-store-twice")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, rdkafka::Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "false")
        .create()
        .unwrap();
    let mut copied = 0;
    while copied < n {
        let m = consumer
            .poll(Duration::from_secs(30))
            .expect("records to copy")
            .unwrap();
        let mut record = BaseRecord::to(topic)
            .partition(partition)
            .key(m.key().unwrap())
            .payload(m.payload().unwrap());
        if let Some(h) = m.headers() {
            record = record.headers(h.detach());
        }
        producer.send(record).map_err(|(e, _)| e).unwrap();
        copied += 1;
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

#[test]
fn a_batch_stored_twice_by_a_producer_retry_is_processed_once() {
    let slice_dir = tempfile::tempdir().unwrap();
    let log = log_slice(slice_dir.path(), 20_000);
    let (dashboard, offers, events) = backtest(&[&log]);
    let mut c = Cluster::start(
        "",
        &format!("speed = \"max\"\nlogs = [\"{}\"]", log.display()),
    );
    for stage in ["web", "replay"] {
        c.worker(stage, stage);
    }
    wait_for(Duration::from_secs(60), "the replay to finish", || {
        c.stats()?["stages"]["replay"]["events"]
            .as_u64()
            .filter(|n| *n == events)
    });
    let brokers = format!("127.0.0.1:{}", c.broker_port);
    store_twice(&brokers, "click-data", 0, 1_000);
    for stage in ["enrich", "detect", "aggregate"] {
        c.worker(stage, stage);
    }
    // Every stage counts the log's events once, and the dashboard and offers are the backtest's.
    let stats = c.wait_until_done(events, &dashboard, Duration::from_secs(120));
    assert_offers(&c, &offers);
    assert_eq!(
        stats["stages"]["enrich"]["details"]["duplicate_inputs"].as_u64(),
        Some(1_000),
        "{}",
        stats["stages"]["enrich"]
    );
    assert_eq!(web_duplicates(&stats), 0);
}

#[test]
fn redis_with_a_password_is_used_with_it_and_refused_without() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let port_arg = port.to_string();
    let mut redis = private_redis(
        dir.path(),
        port,
        &["--port", &port_arg, "--requirepass", "s3cret-pw"],
    );
    let load = |url: &str| {
        std::process::Command::new(bin())
            .args(["lookups", "load", "--redis", url])
            .output()
            .unwrap()
    };
    let ok = load(&format!("redis://:s3cret-pw@127.0.0.1:{port}/0"));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let refused = load(&format!("redis://127.0.0.1:{port}/0"));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("error:") && stderr.to_lowercase().contains("auth"),
        "{stderr}"
    );
    let wrong = load(&format!("redis://:wr0ng-pw-xyz@127.0.0.1:{port}/0"));
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(!wrong.status.success());
    assert!(
        !stderr.contains("wr0ng-pw-xyz"),
        "the password is not echoed: {stderr}"
    );
    let _ = redis.kill();
    let _ = redis.wait();
}

#[test]
fn the_pipeline_runs_on_a_redis_cluster() {
    let slice_dir = tempfile::tempdir().unwrap();
    let log = log_slice(slice_dir.path(), 20_000);
    let (dashboard, offers, events) = backtest(&[&log]);
    let mut c = Cluster::start_spec(clickpulse_chaos::Spec {
        redis_cluster: true,
        pipeline: "batch_size = 500".into(),
        replay: format!("speed = \"max\"\nlogs = [\"{}\"]", log.display()),
        ..Default::default()
    });
    assert_eq!(c.redis_nodes.len(), 3);
    run_to_the_end(&mut c, events, &dashboard, &offers, 180);
    // The keys are spread over the nodes, in the original layout.
    let mut r = assert_lookup_layout(&c);
    let logged: u64 = redis::cmd("XLEN").arg("state_logs").query(&mut r).unwrap();
    assert!(logged > 0);
    let ports: Vec<String> = c
        .redis_nodes
        .iter()
        .map(|n| n.name.trim_start_matches("redis-").to_owned())
        .collect();
    for port in ports {
        let mut node = redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .unwrap()
            .get_connection()
            .unwrap();
        let keys: u64 = redis::cmd("DBSIZE").query(&mut node).unwrap();
        assert!(keys > 0, "every node holds part of the keys");
    }
}

#[test]
fn redis_over_tls_is_verified_against_the_trusted_cas() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let port = free_port();
    let (port_arg, cert_arg, key_arg) = (
        port.to_string(),
        cert.display().to_string(),
        key.display().to_string(),
    );
    let mut redis = private_redis(
        dir.path(),
        port,
        &[
            "--port",
            "0",
            "--tls-port",
            &port_arg,
            "--tls-auth-clients",
            "no",
            "--tls-cert-file",
            &cert_arg,
            "--tls-key-file",
            &key_arg,
            "--tls-ca-cert-file",
            &cert_arg,
        ],
    );
    let url = format!("rediss://127.0.0.1:{port}/0");
    // Trusted (OpenSSL's SSL_CERT_FILE names the CA): loaded over TLS.
    let ok = std::process::Command::new(bin())
        .args(["lookups", "load", "--redis", &url])
        .env("SSL_CERT_FILE", &cert)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // Not trusted: a clear error at once, not endless retries.
    let refused = std::process::Command::new(bin())
        .args(["lookups", "load", "--redis", &url])
        .env("SSL_CERT_FILE", "/nonexistent")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(stderr.contains("certificate verify failed"), "{stderr}");
    let _ = redis.kill();
    let _ = redis.wait();
}

/// A throwaway redis-server (no persistence) in `dir` with `args`, once `port` accepts
/// connections.
fn private_redis(dir: &Path, port: u16, args: &[&str]) -> std::process::Child {
    let child = std::process::Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(args)
        .arg("--dir")
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(10), "redis", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    child
}

/// `POST` `body` to the cluster's HTTP port; returns the status and the answer's text.
fn post_raw(port: u16, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    let mut request = ureq::post(&format!("http://127.0.0.1:{port}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut response = request
        .config()
        .http_status_as_error(false)
        .build()
        .send(body)
        .expect("the collector answers");
    let status = response.status().as_u16();
    (
        status,
        response.body_mut().read_to_string().unwrap_or_default(),
    )
}

/// The other trackers' protocols in distributed mode: what the real Snowplow Node tracker sent
/// (a captured batch: page view, add to cart, order, structured event, page ping) and a Segment
/// batch (Product Added, Order Completed, identify) go through the collector into the brokers'
/// `click-data`, and the aggregate's dashboard (Redis) counts their conversions; identify's link
/// is enrichment's partition state.
#[test]
fn snowplow_and_segment_events_flow_through_the_distributed_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let log = one_view_log(dir.path());
    let mut c = Cluster::start(
        "",
        &format!("speed = \"max\"\nlogs = [\"{}\"]", log.display()),
    );
    c.worker("all", "all");
    let port = c.web_port;
    wait_for(Duration::from_secs(60), "the cluster serves", || {
        get_json(port, "/api/health")
    });
    let snowplow = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus/snowplow_tp2/node-tracker-base64-batch.json"),
    )
    .unwrap();
    let (status, body) = post_raw(
        port,
        "/com.snowplowanalytics.snowplow/tp2",
        &[("content-type", "application/json; charset=UTF-8")],
        &snowplow,
    );
    assert_eq!((status, body.as_str()), (200, "ok"));
    let segment = serde_json::json!({"writeKey": "any", "batch": [
        {"type": "identify", "anonymousId": "a-1", "userId": "0001BDD9-EABF-4D0D-81BD-D9EABFCD0D7D"},
        {"type": "track", "anonymousId": "a-1", "event": "Product Added",
         "properties": {"product_id": "VD55177927", "price": 20, "quantity": 1, "currency": "USD"}},
        {"type": "track", "anonymousId": "a-1", "event": "Order Completed",
         "properties": {"order_id": "seg-1", "revenue": 20, "currency": "USD",
                        "products": [{"product_id": "VD55177927", "price": 20, "quantity": 1}]}},
    ]});
    let (status, body) = post_raw(
        port,
        "/v1/batch",
        &[("content-type", "text/plain")],
        segment.to_string().as_bytes(),
    );
    assert_eq!(status, 200, "{body}");
    let stats = wait_for(
        Duration::from_secs(120),
        "both protocols' conversions on the dashboard",
        || {
            let d = get_json(
                port,
                &format!("/api/dashboard?viewer={}", clickpulse_chaos::VIEWER_TOKEN),
            )?;
            let c = &d["shop"]["conversions_1h"];
            (c["add_to_cart"] == 2 && c["purchases"] == 2).then_some(())?;
            get_json(port, "/api/stats")
        },
    );
    // The page ping was taken and counted; the Snowplow visitor is the tracker's domain id.
    assert_eq!(
        stats["collector_ignored"]["snowplow"]["page_ping"], 1,
        "{stats}"
    );
    let enrich = &stats["stages"]["enrich"]["details"];
    assert_eq!(enrich["linked_visitors"], 1, "{enrich}");
    // Everything the collector took reached enrichment once: 4 Snowplow events and 2 Segment
    // events besides the log's view (the identify stops at enrichment).
    assert_eq!(enrich["events"], 1 + 4 + 2, "{enrich}");
    assert_eq!(
        enrich["known_visitor_events"], 2,
        "the Segment visitor is linked: {enrich}"
    );
}

/// The PostgreSQL source in distributed mode: its events reach enrichment exactly once,
/// across `kill -9` of the source while a 20,000-row transaction streams in and a standby
/// taking over the slot (after the lease expires) from the saved position.
#[test]
fn postgres_changes_flow_through_the_distributed_pipeline_exactly_once_across_a_kill() {
    use common::postgres::{MAPPING, Postgres, SCHEMA};
    let pg = Postgres::start();
    pg.sql(SCHEMA);
    let dir = tempfile::tempdir().unwrap();
    let log = one_view_log(dir.path());
    let mut c = Cluster::start_spec(clickpulse_chaos::Spec {
        replay: format!("speed = \"max\"\nlogs = [\"{}\"]", log.display()),
        extra: format!("{}{MAPPING}", pg.config_table()),
        ..Default::default()
    });
    c.worker("replay,collector,enrich,detect,aggregate,web", "main");
    let first = c.worker("postgres", "pg-a");
    let port = c.web_port;
    wait_for(Duration::from_secs(60), "the cluster serves", || {
        get_json(port, "/api/health")
    });
    wait_until("the source to hold its slot", || {
        (pg.sql("SELECT count(*) FROM pg_replication_slots WHERE active") == "1").then_some(())
    });
    pg.sql(
        "BEGIN;
         INSERT INTO orders VALUES (1, 'pg-v1', 59.90, 'EUR', 'paid', '2012-03-01 08:01:00+00');
         INSERT INTO order_lines VALUES (1, 1, 'p-a', 19.95, 2), (1, 2, 'p-b', 20, 1);
         COMMIT;",
    );
    pg.sql("INSERT INTO cart_items (visitor_id, product_id, quantity) VALUES ('pg-v2', 'c-1', 1)");
    let enrich_events = |stats: &Value| stats["stages"]["enrich"]["details"]["events"].as_u64();
    wait_until("the first changes to reach enrichment", || {
        (enrich_events(&get_json(port, "/api/stats")?)? >= 3).then_some(())
    });
    pg.sql(
        "INSERT INTO cart_items (visitor_id, product_id, quantity) \
         SELECT 'pg-big' || (n % 50), 'big-' || n, 1 FROM generate_series(1, 20000) n",
    );
    // Killed once it has published part of the large transaction (or all of it).
    wait_until("the source to publish the large transaction", || {
        let stats = get_json(port, "/api/stats")?;
        (enrich_events(&stats)? > 3).then_some(())
    });
    c.workers[first].kill();
    c.worker("postgres", "pg-b");
    let total = 1 + 2 + 20_000;
    let stats = wait_until("every change to reach enrichment", || {
        let stats = get_json(port, "/api/stats")?;
        (enrich_events(&stats)? >= total).then_some(stats)
    });
    let enrich = &stats["stages"]["enrich"]["details"];
    assert_eq!(
        enrich_events(&stats),
        Some(total),
        "nothing twice: {enrich}"
    );
    assert_eq!(
        enrich["duplicate_inputs"].as_u64().unwrap_or(0),
        0,
        "{enrich}"
    );
    let purchases = wait_until("the purchase on the dashboard", || {
        let d = get_json(
            port,
            &format!("/api/dashboard?viewer={}", clickpulse_chaos::VIEWER_TOKEN),
        )?;
        let n = d["shop"]["conversions_1h"]["purchases"].as_u64()?;
        (n >= 1).then_some(n)
    });
    assert_eq!(purchases, 1);
}

/// A log of one page view at the start of the bundled log's day, in `dir`.
fn one_view_log(dir: &Path) -> std::path::PathBuf {
    let log = dir.join("one-view.jsonl");
    std::fs::write(
        &log,
        "{\"ts_ms\": 1330588819000, \"visitor\": \"quiet\", \"url\": \"http://www.acme.com/\"}\n",
    )
    .unwrap();
    log
}

/// A Snowplow pipeline's enriched events from its Kafka topic: every event kept reaches
/// enrichment exactly once across `kill -9` of the source mid-way and a standby's takeover.
#[test]
fn snowplow_enriched_events_from_a_topic_flow_exactly_once_across_a_kill() {
    use clickpulse_engine::reader::snowplow::{EnrichedLine, parse_line};
    use rdkafka::ClientConfig;
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

    let lines = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/tsv_reader/snowplow-enriched.tsv"),
    )
    .unwrap();
    let lines: Vec<&str> = lines.lines().collect();
    let kept = lines
        .iter()
        .filter(|l| matches!(parse_line(l.as_bytes()), EnrichedLine::Click(_)))
        .count() as u64;
    assert!(kept >= 2, "the seed has events to keep");
    let copies = 2_000u64;
    let dir = tempfile::tempdir().unwrap();
    let log = one_view_log(dir.path());
    let mut c = Cluster::start_spec(clickpulse_chaos::Spec {
        replay: format!("speed = \"max\"\nlogs = [\"{}\"]", log.display()),
        extra: "[snowplow]\nenriched_topic = \"snowplow-enriched-good\"\n".to_owned(),
        ..Default::default()
    });
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", format!("127.0.0.1:{}", c.broker_port))
        .create()
        .unwrap();
    for i in 0..copies {
        for (j, line) in lines.iter().enumerate() {
            let key = format!("{i}-{j}");
            let record = BaseRecord::to("snowplow-enriched-good")
                .key(&key)
                .payload(line.as_bytes());
            producer.send(record).map_err(|(e, _)| e).unwrap();
        }
    }
    producer.flush(Duration::from_secs(60)).unwrap();
    c.worker("replay,collector,enrich,detect,aggregate,web", "main");
    let first = c.worker("snowplow", "sp-a");
    let port = c.web_port;
    let source_events = |stats: &Value| stats["stages"]["snowplow"]["events"].as_u64();
    wait_until("the source to publish part of the topic", || {
        (source_events(&get_json(port, "/api/stats")?)? > 0).then_some(())
    });
    c.workers[first].kill();
    c.worker("snowplow", "sp-b");
    let total = 1 + kept * copies;
    let stats = wait_until("every kept event to reach enrichment", || {
        let stats = get_json(port, "/api/stats")?;
        // The source's own count once the standby's numbers replace the killed worker's.
        (stats["stages"]["enrich"]["details"]["events"].as_u64()? >= total
            && source_events(&stats)? == kept * copies)
            .then_some(stats)
    });
    let enrich = &stats["stages"]["enrich"]["details"];
    assert_eq!(
        enrich["events"].as_u64(),
        Some(total),
        "nothing twice: {enrich}"
    );
    let ignored = &stats["stages"]["snowplow"]["details"]["ignored"];
    let ignored: u64 = ignored
        .as_object()
        .unwrap()
        .values()
        .filter_map(Value::as_u64)
        .sum();
    assert_eq!(
        kept * copies + ignored,
        lines.len() as u64 * copies,
        "every record accounted for"
    );
}

/// A quiet shop, distributed: one visitor adds something to the cart and nothing else happens
/// anywhere. Detection's deadlines and the dashboard's windows follow the replay's published
/// clock (less the idle timeout) once their inputs are idle, so the cart-abandonment offer comes
/// when the clock passes its 15 minutes; it used to wait for the next event on every partition
/// (here: forever).
#[test]
fn in_a_quiet_distributed_shop_the_cart_abandonment_offer_comes_after_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let log = far_away_log(dir.path());
    let patterns = dir.path().join("patterns");
    std::fs::create_dir(&patterns).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("patterns/cart-abandonment.toml"),
        patterns.join("cart-abandonment.toml"),
    )
    .unwrap();
    // At 60× the 15 minutes pass in 15 s of wall time; the 2 s idle timeout is 2 minutes of
    // event time.
    let mut c = Cluster::start_spec_with(
        clickpulse_chaos::Spec {
            pipeline: "idle_timeout_ms = 2000".to_owned(),
            replay: format!(
                "speed = \"60\"\noriginal_time = false\nlogs = [\"{}\"]",
                log.display()
            ),
            ..clickpulse_chaos::Spec::default()
        },
        &patterns,
    );
    c.worker("all", "all");
    let port = c.web_port;
    let clock = || {
        wait_until("the event clock", || {
            get_json(port, "/api/stats")?["clock"]["now_ms"].as_i64()
        })
    };
    wait_until("the replay's clock at 60x", || {
        let stats = get_json(port, "/api/stats")?;
        (stats["clock"]["rate"].as_f64()? == 60.0).then_some(())
    });
    let (visitor, token) = new_identity(port);
    let offers = subscribe(port, &visitor, &token);
    collect_add_to_cart(port, &visitor, &token);
    let added_ms = clock();
    let offer = next_offer(&offers, "the cart-abandonment offer in a quiet shop");
    assert_eq!(offer["pattern"], "cart-abandonment", "{offer}");
    assert_eq!(offer["visitor"], visitor.as_str());
    assert!(
        clock() >= added_ms + 15 * 60_000 - 1_000,
        "not before the deadline (the add was stamped at most a second before {added_ms})"
    );
    // The dashboard's windows move on with the clock too: the aggregation's watermark passes
    // the deadline, where idleness alone would leave it at the add.
    wait_until("the aggregation's watermark past the deadline", || {
        let stats = get_json(port, "/api/stats")?;
        let watermark = stats["stages"]["aggregate"]["details"]["watermark_ms"].as_i64()?;
        (watermark >= added_ms + 15 * 60_000).then_some(())
    });
}

/// Every process of a distributed deployment serves `GET /metrics` (the web stage on its HTTP
/// port, the others with `--metrics-listen`), and a real Prometheus scraping all of them sums
/// each stage once: a process exports only the stages it hosts, not the web stage's cluster
/// view.
#[test]
fn a_real_prometheus_scrapes_every_process_of_a_deployment() {
    use common::prometheus::Prometheus;
    let dir = tempfile::tempdir().unwrap();
    let log = log_slice(dir.path(), 20_000);
    let (_, offers, events) = backtest(&[&log]);
    assert!(!offers.is_empty(), "the test pattern fires on the slice");
    let mut c = Cluster::start(
        "",
        &format!("speed = \"max\"\nlogs = [\"{}\"]", log.display()),
    );
    let mut targets = vec![format!("127.0.0.1:{}", c.web_port)];
    c.worker("web", "web");
    for stage in ["replay", "enrich", "detect", "aggregate"] {
        let address = format!("127.0.0.1:{}", free_port());
        c.worker_with(
            stage,
            stage,
            &["--metrics-listen".to_owned(), address.clone()],
        );
        targets.push(address);
    }
    let prometheus = Prometheus::start(&targets);
    prometheus.wait_for(r#"count(up{job="clickpulse"} == 1)"#, |v| v == 5.0);
    for stage in ["replay", "enrich", "detect", "aggregate"] {
        // One process exports each stage, with everything it processed.
        prometheus.wait_for(
            &format!(r#"count(clickpulse_stage_events_total{{stage="{stage}"}})"#),
            |v| v == 1.0,
        );
        // (The aggregation also counts the offers it reads.)
        prometheus.wait_for(
            &format!(r#"sum(clickpulse_stage_events_total{{stage="{stage}"}})"#),
            |v| v == events as f64 || (stage == "aggregate" && v >= events as f64),
        );
    }
    prometheus.wait_for(r#"sum(clickpulse_offers_total{stage="detect"})"#, |v| {
        v == offers.len() as f64
    });
    prometheus.wait_for(
        r#"sum(clickpulse_stage_batch_duration_seconds_count{stage="enrich"})"#,
        |v| v > 0.0,
    );
    prometheus.wait_for(r#"clickpulse_offer_latency_seconds_count"#, |v| {
        v == offers.len() as f64
    });
}
