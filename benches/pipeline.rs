//! End-to-end benchmarks of the running product (`cargo bench --bench pipeline`), each against
//! a real `clickpulse demo` process on loopback. They print figures and a one-line summary per
//! benchmark (`bench <name>: key=value …`); nothing here asserts on time.
//!
//! - `live`: the embedded pipeline at `--speed max` over a generated log — replay, enrich,
//!   detect, aggregate and deliver, every batch durable (fsync) — events/s until every stage has
//!   caught up, with both cores.
//! - `latency`: click → offer. A visitor's third view goes to `POST /collect`; the clock stops
//!   when the offer arrives on the visitor's SSE stream. Idle, and with ~10,000 events/s of
//!   background replay.
//! - peak RSS of the demo process in each run.
//!
//! `CLICKPULSE_BENCH_EVENTS` sets the live benchmark's log size (default 1,000,000);
//! `CLICKPULSE_BENCH_BATCH` the demo's `--batch-size` (default 10,000, the demo's default);
//! `CLICKPULSE_BENCH_DEMO_ARGS` adds options to the demo's command line (split on spaces), e.g.
//! `--sync-interval-ms 0` to make every commit wait for the disk; `CLICKPULSE_BENCH_BIN` runs
//! another `clickpulse` binary than this build's (an A/B comparison of two builds, alternating
//! runs).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

fn bin() -> String {
    std::env::var("CLICKPULSE_BENCH_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_clickpulse").to_owned())
}

fn free_port() -> u16 {
    clickpulse_chaos::free_port().expect("a free loopback port")
}

fn get(port: u16, path: &str) -> Option<Value> {
    let mut r = ureq::get(&format!("http://127.0.0.1:{port}{path}"))
        .call()
        .ok()?;
    serde_json::from_str(&r.body_mut().read_to_string().ok()?).ok()
}

fn post(port: u16, path: &str, body: &str) -> Value {
    let mut r = ureq::post(&format!("http://127.0.0.1:{port}{path}"))
        .send(body)
        .unwrap();
    serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap_or(Value::Null)
}

fn peak_rss_kib(child: &Child) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

fn demo(dir: &Path, port: u16, extra: &[&str]) -> Child {
    let batch = std::env::var("CLICKPULSE_BENCH_BATCH").unwrap_or_else(|_| "10000".to_owned());
    Command::new(bin())
        .args([
            "demo",
            "--data-dir",
            dir.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--original-time",
        ])
        .args(["--batch-size", &batch])
        .args(
            std::env::var("CLICKPULSE_BENCH_DEMO_ARGS")
                .unwrap_or_default()
                .split_whitespace(),
        )
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn generate(path: &Path, events: u64) {
    let status = Command::new(bin())
        .args([
            "generate",
            "--events",
            &events.to_string(),
            "--visitors",
            &(events / 10).max(1000).to_string(),
            "--out",
            path.to_str().unwrap(),
        ])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

fn live(tmp: &Path) {
    let events: u64 = std::env::var("CLICKPULSE_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let log = tmp.join("live.tsv");
    generate(&log, events);
    let port = free_port();
    let mut child = demo(
        &tmp.join("live-data"),
        port,
        &[
            "--log",
            log.to_str().unwrap(),
            "--speed",
            "max",
            "--idle-timeout-ms",
            "200",
        ],
    );
    wait("the server", Duration::from_secs(120), || {
        get(port, "/api/health")
    });
    // The clock starts when the replay has published its first events (the log is read and
    // sorted before that) and stops when every stage has consumed everything.
    let started = wait("the replay to start", Duration::from_secs(120), || {
        let s = get(port, "/api/stats")?;
        (s["stages"]["replay"]["events"].as_u64()? > 0).then(Instant::now)
    });
    wait(
        "every stage to catch up",
        Duration::from_secs(1_800),
        || {
            let s = get(port, "/api/stats")?;
            let st = &s["stages"];
            let all = ["enrich", "detect", "aggregate"]
                .iter()
                .all(|n| st[n]["events"].as_u64() >= Some(events));
            (all && st["replay"]["done"].as_bool()? && st["web"]["lag"].as_u64()? == 0)
                .then_some(())
        },
    );
    let secs = started.elapsed().as_secs_f64();
    let rss = peak_rss_kib(&child);
    child.kill().unwrap();
    child.wait().unwrap();
    let eps = events as f64 / secs;
    println!(
        "live embedded pipeline: {events} events through replay → enrich → detect → aggregate (+ web), durable, in {secs:.1} s = {eps:.0} events/s; peak RSS {} MiB",
        rss / 1024
    );
    println!(
        "bench live: events={events} seconds={secs:.2} events_per_second={eps:.0} peak_rss_mib={}",
        rss / 1024
    );
}

/// Sends views and measures click → offer on the visitor's stream, `samples` times.
fn latency_samples(port: u16, samples: usize) -> Vec<f64> {
    let mut out = Vec::new();
    for _ in 0..samples {
        let id = post(port, "/api/identity", "");
        let (visitor, token) = (
            id["visitor"].as_str().unwrap().to_owned(),
            id["token"].as_str().unwrap().to_owned(),
        );
        let (tx, rx) = mpsc::channel();
        let response = ureq::get(&format!(
            "http://127.0.0.1:{port}/api/offers/stream?visitor={visitor}&token={token}"
        ))
        .call()
        .unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(response.into_body().into_reader()).lines() {
                let Ok(line) = line else { return };
                if line.starts_with("data: ") {
                    let _ = tx.send(Instant::now());
                    return;
                }
            }
        });
        let view = |p: &str| {
            let body = json!({"visitor": visitor, "token": token, "url": format!("http://x/shop/product/{p}"), "gender": "F", "age": 30});
            post(port, "/collect", &body.to_string());
        };
        view("VD55177927");
        view("VD55179433");
        let sent = Instant::now();
        view("VD55156528");
        let arrived = rx.recv_timeout(Duration::from_secs(10)).expect("an offer");
        out.push(arrived.duration_since(sent).as_secs_f64() * 1000.0);
    }
    out
}

/// The replay speed at which the log's first `seconds` of wall time carry `rate` events/s on
/// average (traffic follows the time of day, so the log's average density would be wrong).
fn speed_for_rate(log: &Path, rate: f64, seconds: f64) -> f64 {
    let text = std::fs::read_to_string(log).unwrap();
    let mut ts: Vec<i64> = text
        .lines()
        .filter_map(|l| l.split('\t').next()?.parse().ok())
        .collect();
    ts.sort_unstable();
    let wanted = ((rate * seconds) as usize).min(ts.len() - 1);
    let span_s = (ts[wanted] - ts[0]).max(1) as f64;
    (span_s / seconds).round()
}

fn percentiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    (at(0.5), at(0.99), *v.last().unwrap())
}

fn latency(tmp: &Path) {
    // Idle: nothing else flows (an empty log).
    let empty = tmp.join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let port = free_port();
    let mut child = demo(
        &tmp.join("idle-data"),
        port,
        &["--log", empty.to_str().unwrap(), "--speed", "max"],
    );
    wait("the server", Duration::from_secs(60), || {
        get(port, "/api/health")
    });
    let (p50, p99, max) = percentiles(latency_samples(port, 200));
    child.kill().unwrap();
    child.wait().unwrap();
    println!(
        "click → offer, idle: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms (200 samples)"
    );
    println!("bench latency_idle: samples=200 p50_ms={p50:.2} p99_ms={p99:.2} max_ms={max:.2}");

    // Loaded: a generated log replayed at the speed that makes ~10,000 events/s.
    let log = tmp.join("background.tsv");
    let events = 2_000_000u64;
    generate(&log, events);
    let speed = speed_for_rate(&log, 10_000.0, 60.0);
    let port = free_port();
    let mut child = demo(
        &tmp.join("loaded-data"),
        port,
        &[
            "--log",
            log.to_str().unwrap(),
            "--speed",
            &speed.to_string(),
        ],
    );
    wait("the server", Duration::from_secs(120), || {
        get(port, "/api/health")
    });
    wait("the background replay", Duration::from_secs(120), || {
        let s = get(port, "/api/stats")?;
        (s["stages"]["replay"]["events_per_second"].as_f64()? > 1_000.0).then_some(())
    });
    let samples = latency_samples(port, 200);
    let rate = get(port, "/api/stats")
        .and_then(|s| s["stages"]["enrich"]["events_per_second"].as_f64())
        .unwrap_or(0.0);
    let rss = peak_rss_kib(&child);
    child.kill().unwrap();
    child.wait().unwrap();
    let (p50, p99, max) = percentiles(samples);
    println!(
        "click → offer with {rate:.0} events/s of background replay: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms (200 samples); peak RSS {} MiB",
        rss / 1024
    );
    println!(
        "bench latency_loaded: background_eps={rate:.0} samples=200 p50_ms={p50:.2} p99_ms={p99:.2} max_ms={max:.2} peak_rss_mib={}",
        rss / 1024
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it,
    // and a benchmark that takes minutes has no place in the test run.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmarks only run under `cargo bench --bench pipeline`");
        return;
    }
    let which: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let run = |name: &str| which.is_empty() || which.iter().any(|w| name.contains(w.as_str()));
    let tmp = tempfile::tempdir().unwrap();
    if run("latency") {
        latency(tmp.path());
    }
    if run("live") {
        live(tmp.path());
    }
}
