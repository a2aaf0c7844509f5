//! Helpers shared by the integration tests: running the real `clickpulse` binary.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

pub mod postgres;
pub mod prometheus;
pub mod receiver;

/// The binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_clickpulse"))
}

/// The repository's bundled data folder.
pub fn data(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join(path)
}

pub use clickpulse_chaos::get_json;

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    clickpulse_chaos::free_port().unwrap()
}

/// Runs `clickpulse args…` to completion and returns its output, failing on a non-zero exit.
pub fn run_ok(args: &[&str]) -> Output {
    let output = Command::new(bin())
        .args(args)
        .output()
        .expect("run clickpulse");
    assert!(
        output.status.success(),
        "clickpulse {args:?} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs `clickpulse args…` and parses its standard output as JSON.
pub fn run_json(args: &[&str]) -> Value {
    let output = run_ok(args);
    serde_json::from_slice(&output.stdout).expect("stdout is JSON")
}

/// Starts `clickpulse args…` in the background.
pub fn spawn(args: &[&str]) -> Child {
    Command::new(bin())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn clickpulse")
}

/// How long a test waits for something that must happen before it gives up. Only a guard
/// against a test hanging forever on a broken build, never a measure of speed: a slow or busy
/// machine must not fail a test, so minutes. (Tests assert order and causes, not durations.)
pub const HANG_GUARD: Duration = Duration::from_secs(300);

/// Polls `check` every few milliseconds until it returns `Some`; panics only after the
/// [`HANG_GUARD`].
pub fn wait_until<T>(what: &str, check: impl FnMut() -> Option<T>) -> T {
    wait_for(HANG_GUARD, what, check)
}

/// Polls `check` every few milliseconds until it returns `Some`. `timeout` is a hang guard only:
/// it is raised to at least [`HANG_GUARD`], and running out of it panics as one.
pub fn wait_for<T>(timeout: Duration, what: &str, check: impl FnMut() -> Option<T>) -> T {
    clickpulse_chaos::poll(timeout.max(HANG_GUARD), what, check)
        .unwrap_or_else(|e| panic!("hang guard: {e}"))
}

/// Waits for `child` to exit (up to the [`HANG_GUARD`]) and returns how it exited.
pub fn wait_exit(child: &mut Child, what: &str) -> ExitStatus {
    wait_until(what, || child.try_wait().expect("poll the child process"))
}

/// Sends SIGTERM to `child`.
pub fn sigterm(child: &Child) {
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -TERM {}: {sent}", child.id());
}

/// The arguments that run `clickpulse demo` on data dir `dir` as fast as possible until every
/// stage has caught up, on a free port, followed by `extra`.
pub fn demo_to_end_args(dir: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "demo",
        "--original-time",
        "--data-dir",
        dir,
        "--speed",
        "max",
        "--exit-when-done",
        "--idle-timeout-ms",
        "300",
        "--listen",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("127.0.0.1:{}", free_port()));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Runs the demo on `dir` to the end of its input (see [`demo_to_end_args`]).
pub fn demo_to_end(dir: &str, extra: &[&str]) -> Output {
    let args = demo_to_end_args(dir, extra);
    run_ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// A `clickpulse demo` running in the background on a free port (killed when dropped).
/// The admin token [`Demo::start`] gives a demo (unless the test passes its own): a request
/// with it is a trusted server-side sender, which may name any visitor on `POST /collect`.
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// `POST http://127.0.0.1:{port}{path}` as a trusted server-side sender (the admin token as
/// bearer); returns the status and the JSON body (`Null` if none).
pub fn post_as_server(port: u16, path: &str, body: &str) -> (u16, Value) {
    let mut response = ureq::post(&format!("http://127.0.0.1:{port}{path}"))
        .header("authorization", &format!("Bearer {ADMIN_TOKEN}"))
        .config()
        .http_status_as_error(false)
        .build()
        .send(body)
        .expect("the demo answers");
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// `GET http://127.0.0.1:{port}{path}` as JSON with the admin token, which sees visitor ids and
/// addresses unpseudonymised; `None` while the server is not up.
pub fn get_json_in_full(port: u16, path: &str) -> Option<Value> {
    let mut response = ureq::get(&format!("http://127.0.0.1:{port}{path}"))
        .header("authorization", &format!("Bearer {ADMIN_TOKEN}"))
        .call()
        .ok()?;
    serde_json::from_str(&response.body_mut().read_to_string().ok()?).ok()
}

/// A new visitor identity from `POST /api/identity`: (visitor id, its token).
pub fn new_identity(port: u16) -> (String, String) {
    let mut response = ureq::post(&format!("http://127.0.0.1:{port}/api/identity"))
        .send("")
        .expect("an identity");
    let body: Value = serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    (
        body["visitor"].as_str().unwrap().to_owned(),
        body["token"].as_str().unwrap().to_owned(),
    )
}

pub struct Demo {
    /// Its HTTP port.
    pub port: u16,
    /// The process.
    pub child: Child,
}

impl Demo {
    /// Starts `demo --original-time --data-dir DIR --listen 127.0.0.1:PORT EXTRA…` and waits
    /// until it answers `/api/health`.
    pub fn start(dir: &str, extra: &[&str]) -> Demo {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec![
            "demo",
            "--original-time",
            "--data-dir",
            dir,
            "--listen",
            &listen,
        ];
        if !extra.contains(&"--admin-token") {
            args.extend_from_slice(&["--admin-token", ADMIN_TOKEN]);
        }
        args.extend_from_slice(extra);
        let child = spawn(&args);
        let demo = Demo { port, child };
        wait_until("the demo to serve HTTP", || get_json(port, "/api/health"));
        demo
    }

    /// Waits until the replay has reached the end of its log. From then on the event-time
    /// clock that stamps collected clicks runs at its own pace instead of following (at max
    /// speed: leaping with) every replayed batch.
    pub fn wait_replay_done(&self) {
        let port = self.port;
        wait_until("the replay to reach the end of its log", || {
            let stats = get_json(port, "/api/stats")?;
            stats["stages"]["replay"]["done"].as_bool()?.then_some(())
        });
    }

    /// `GET path` as JSON.
    pub fn get(&self, path: &str) -> Option<Value> {
        get_json(self.port, path)
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first `n` rows of the bundled log, as a file in `dir`.
pub fn log_slice(dir: &Path, n: usize) -> PathBuf {
    use std::io::Write;
    let zst = zstd::Decoder::new(std::fs::File::open(data("omniture/Omniture.1.tsv.zst")).unwrap())
        .unwrap();
    let path = dir.join("slice.tsv");
    let mut out = std::fs::File::create(&path).unwrap();
    for line in BufReader::new(zst).lines().take(n) {
        writeln!(out, "{}", line.unwrap()).unwrap();
    }
    path
}

/// Opens a visitor's offer stream; offers arrive on the returned channel. Returns once the
/// response head is in, which the server sends after subscribing the stream: no offer delivered
/// from then on is missed.
pub fn subscribe(port: u16, visitor: &str, token: &str) -> mpsc::Receiver<Value> {
    let (tx, rx) = mpsc::channel();
    let url = format!("http://127.0.0.1:{port}/api/offers/stream?visitor={visitor}&token={token}");
    let response = ureq::get(&url).call().unwrap();
    std::thread::spawn(move || {
        let reader = BufReader::new(response.into_body().into_reader());
        for line in reader.lines() {
            let Ok(line) = line else { return };
            if let Some(data) = line.strip_prefix("data: ")
                && tx.send(serde_json::from_str(data).unwrap()).is_err()
            {
                return;
            }
        }
    });
    rx
}

/// The next offer on `offers` (waiting up to the [`HANG_GUARD`]).
pub fn next_offer(offers: &mpsc::Receiver<Value>, what: &str) -> Value {
    offers
        .recv_timeout(HANG_GUARD)
        .unwrap_or_else(|_| panic!("hang guard: no {what} after {HANG_GUARD:?}"))
}

/// Sends a page view of `product` through the collector as `visitor` with its `token` (202
/// expected).
pub fn collect_view(port: u16, visitor: &str, token: &str, product: &str) {
    let click = format!(
        r#"{{"visitor":"{visitor}","token":"{token}","url":"http://www.acme.com/SH55126545/{product}"}}"#
    );
    let status = ureq::post(&format!("http://127.0.0.1:{port}/collect"))
        .send(click.as_str())
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 202);
}

/// A generated log with interactions (`clickpulse generate --interactions`) in `dir`, and an
/// hour after its last event one home-page view by every visitor: every partition's event time
/// then passes every cart's 15-minute deadline, so the offers a backtest fires by event time
/// are all due in a live run too.
pub fn interactions_log(dir: &Path, visitors: usize, events: usize, seed: u64) -> PathBuf {
    let raw = dir.join("generated.jsonl");
    run_ok(&[
        "generate",
        "--interactions",
        "--visitors",
        &visitors.to_string(),
        "--days",
        "1",
        "--events",
        &events.to_string(),
        "--seed",
        &seed.to_string(),
        "--out",
        raw.to_str().unwrap(),
    ]);
    let mut text = std::fs::read_to_string(&raw).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = lines
        .iter()
        .map(|e| e["ts_ms"].as_i64().unwrap())
        .max()
        .unwrap();
    let ids: std::collections::BTreeSet<&str> = lines
        .iter()
        .map(|e| e["visitor"].as_str().unwrap())
        .collect();
    for v in &ids {
        let tail = serde_json::json!({"ts_ms": last + 3_600_000, "visitor": v, "url": "http://www.acme.com/"});
        text.push_str(&format!("{tail}\n"));
    }
    let log = dir.join("shop.jsonl");
    std::fs::write(&log, text).unwrap();
    log
}

/// `clickpulse backtest --json` of `log` with the bundled patterns (`patterns/`), checked to fire
/// cart-abandonment offers (what a run on a log with interactions must reproduce); returns the
/// report and the pattern directory.
pub fn backtest_with_cart_offers(log: &Path) -> (Value, PathBuf) {
    let patterns = Path::new(env!("CARGO_MANIFEST_DIR")).join("patterns");
    let report = run_json(&[
        "backtest",
        "--json",
        "--log",
        log.to_str().unwrap(),
        "--patterns",
        patterns.to_str().unwrap(),
    ]);
    assert!(
        report["offers_by_pattern"]["cart-abandonment"].as_u64() > Some(0),
        "{}",
        report["offers_by_pattern"]
    );
    (report, patterns)
}

/// The aggregate of a finished demo on the bundled log (as `status --json` reports it) read
/// every one of the log's 116,607 clicks and every offer (the shipped browse-abandonment
/// pattern finds a few); returns the offers.
pub fn assert_aggregate_read_the_log_and_its_offers(status: &Value) -> u64 {
    let offers = status["topics"]["special-offers"]["records"]
        .as_u64()
        .expect("a special-offers topic");
    assert_eq!(
        status["state"]["runner/aggregate"]["events"],
        116_607 + offers
    );
    offers
}

/// A JSON-lines log whose views all fall twelve hours of the day away from now: the live replay
/// neither warms up with them nor reaches them during the test, so the windows hold live clicks
/// only.
pub fn far_away_log(dir: &Path) -> std::path::PathBuf {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    const DAY_MS: i64 = 86_400_000;
    let day = now - now.rem_euclid(DAY_MS) - 30 * DAY_MS;
    let at = day + (now + DAY_MS / 2).rem_euclid(DAY_MS);
    let path = dir.join("far.jsonl");
    let mut out = std::fs::File::create(&path).unwrap();
    use std::io::Write;
    for i in 0..20 {
        writeln!(
            out,
            r#"{{"ts_ms":{},"visitor":"replayed-{i}","url":"http://www.acme.com/SH55126545/VD55149415"}}"#,
            at + i * 1_000
        )
        .unwrap();
    }
    path
}

/// Sends an add to cart of one product through the collector as `visitor` with its `token`
/// (202 expected).
pub fn collect_add_to_cart(port: u16, visitor: &str, token: &str) {
    let body = serde_json::json!({
        "type": "add_to_cart", "visitor": visitor, "token": token,
        "url": "http://www.acme.com/SH55126545/VD55177927",
        "product": {"id": "VD55177927", "price": 25.0, "quantity": 1},
    });
    let status = ureq::post(&format!("http://127.0.0.1:{port}/collect"))
        .send(body.to_string().as_str())
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 202);
}

/// Every offer `clickpulse backtest` makes on `log` with the patterns of `patterns`, as JSON
/// (its `--offers-out` lines).
pub fn backtest_offers(log: &Path, patterns: &Path) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("offers.jsonl");
    run_ok(&[
        "backtest",
        "--log",
        log.to_str().unwrap(),
        "--patterns",
        patterns.to_str().unwrap(),
        "--offers-out",
        file.to_str().unwrap(),
    ]);
    std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The ids of `offers` (of `pattern` only, when given).
pub fn offer_ids(offers: &[Value], pattern: Option<&str>) -> std::collections::BTreeSet<String> {
    offers
        .iter()
        .filter(|o| pattern.is_none_or(|p| o["pattern"] == p))
        .map(|o| o["offer_id"].as_str().unwrap().to_owned())
        .collect()
}

/// A hand-made shop log for alert rules, and a directory with two rules for it; returns the
/// log, its first minute (2026-03-16 00:00 UTC) and the directory. Four hours: ten views a
/// minute (one a minute in minutes 150 to 169) and a purchase every five minutes (none in
/// minutes 60 to 119). `no-purchases` (none in 30 minutes) then fires at the end of minute 85
/// and resolves at the end of minute 120; `traffic-drop` (page views far from their
/// exponentially weighted mean) fires at the end of minute 150.
pub fn alerts_log(dir: &Path) -> (PathBuf, i64, PathBuf) {
    use std::fmt::Write as _;
    let t0: i64 = 1_773_619_200_000;
    let minute = 60_000;
    let mut log = String::new();
    for m in 0..240i64 {
        let views = if (150..170).contains(&m) { 1 } else { 10 };
        for k in 0..views {
            let line = serde_json::json!({
                "ts_ms": t0 + m * minute + k * 1_000,
                "visitor": format!("v-{m}-{k}"),
                "url": "http://www.acme.com/",
            });
            writeln!(log, "{line}").unwrap();
        }
        if m % 5 == 0 && !(60..120).contains(&m) {
            let line = serde_json::json!({
                "type": "purchase",
                "ts_ms": t0 + m * minute + 30_000,
                "visitor": format!("v-{m}-0"),
                "url": "http://www.acme.com/checkout/done",
                "order": {"id": format!("o-{m}"), "revenue": 20.0, "currency": "USD", "items": []},
            });
            writeln!(log, "{line}").unwrap();
        }
    }
    let log_file = dir.join("alerting-shop.jsonl");
    std::fs::write(&log_file, log).unwrap();
    let alerts = dir.join("alerts");
    std::fs::create_dir_all(&alerts).unwrap();
    std::fs::write(
        alerts.join("no-purchases.toml"),
        "name = \"no-purchases\"\nmetric = \"purchases\"\nover = \"30m\"\n\
         condition = { below = { value = 1 } }\n",
    )
    .unwrap();
    std::fs::write(
        alerts.join("traffic-drop.toml"),
        "name = \"traffic-drop\"\nmetric = \"page_views\"\n\
         condition = { deviates = { deviations = 4, resolve = 2, alpha = 0.1, warmup = 30 } }\n",
    )
    .unwrap();
    (log_file, t0, alerts)
}
