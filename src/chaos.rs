//! `clickpulse chaos`: fault injection that users can run themselves.
//!
//! The pipeline runs over a log as real child processes; the chaos driver kills them with
//! `kill -9` at random (seeded) moments, restarts them, and when the log is through compares
//! what the pipeline delivered with an uninterrupted in-process backtest of the same log:
//! the set of offer ids delivered to the web stage, the events that reached the end of the
//! pipeline, duplicate offers, and the end-of-log dashboard snapshot. Any difference is a
//! non-zero exit.
//!
//! Timing: the replay is paced (event-time speed) so that the planned kills fall inside the
//! log — `kills × mean interval × 1.5` of wall time covers the whole log's event time — and each
//! life between two kills lasts a seeded random time (uniform in 0.2–1.8 × the mean) after the
//! process accepts connections. A kill therefore lands anywhere: in a batch, in a commit, in a
//! checkpoint or in the recovery of the previous kill.

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clickpulse_connectors::embedded::EmbeddedStore;
use clickpulse_engine::codec::decode;
use clickpulse_engine::pattern::Offer;
use clickpulse_engine::topics;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::cli::{BacktestArgs, ChaosArgs, ChaosMode};
use clickpulse_chaos::{Cluster, Proc, Spec, Storage, Tools, free_port};

/// When the run must be over (`--deadline`): every wait checks it.
#[derive(Debug, Clone, Copy)]
struct Deadline(Instant);

impl Deadline {
    fn passed(self) -> bool {
        Instant::now() >= self.0
    }

    fn remaining(self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }
}

/// Why a run did not finish: the deadline passed while these stages still had work.
fn unfinished(deadline: Duration, stats: Option<&Value>) -> Value {
    let stages = stats.map(|s| &s["stages"]);
    let not_done: Vec<Value> = ["replay", "enrich", "detect", "aggregate", "web"]
        .iter()
        .filter_map(|name| {
            let stage = &stages?[*name];
            let details = &stage["details"];
            let pending = details["pending"].as_u64().unwrap_or(0);
            let lag = stage["lag"].as_u64().unwrap_or(0);
            let replay_running = *name == "replay" && stage["done"] != true;
            (replay_running || lag > 0 || pending > 0).then(|| {
                json!({
                    "stage": name,
                    "events": stage["events"],
                    "lag": lag,
                    "pending": pending,
                    "watermark_ms": details["watermark_ms"],
                })
            })
        })
        .collect();
    json!({
        "reason": format!("the pipeline did not finish within the deadline of {}", humantime::format_duration(deadline)),
        "stages_not_done": not_done,
        "stats_available": stats.is_some(),
    })
}

/// Whether a life answers `GET /api/health` (it is serving, not only bound).
fn answers_health(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    if stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .is_err()
        || stream
            .write_all(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

/// A running life's `/api/stats` (plain HTTP/1.1 over loopback; `None` if it does not answer).
fn life_stats(port: u16) -> Option<Value> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let start = response.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    serde_json::from_slice(&response[start..]).ok()
}

pub(crate) fn run(args: ChaosArgs) -> Result<ExitCode> {
    if args.kills == 0 {
        bail!("--kills must be at least 1");
    }
    stop_children_on_signal();
    let work = tempfile::Builder::new()
        .prefix("clickpulse-chaos-")
        .tempdir_in(args.work_dir.clone().unwrap_or_else(std::env::temp_dir))
        .context("cannot create the chaos work dir")?;
    info!(work_dir = %work.path().display(), kills = args.kills, seed = args.seed, "Chaos run.");
    let reference = Reference::compute(&args)?;
    let started = Instant::now();
    let deadline = Deadline(started + args.deadline);
    let outcome = match args.mode {
        ChaosMode::Embedded => embedded(&args, &reference, work.path(), deadline)?,
        ChaosMode::Distributed => distributed(&args, &reference, work.path(), deadline)?,
    };
    let report = outcome.report(&args, &reference, started.elapsed());
    let ok = report["ok"].as_bool() == Some(true);
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    if ok {
        Ok(ExitCode::SUCCESS)
    } else {
        let kept = work.keep();
        let what = if report["unfinished"].is_null() {
            "the pipeline differs from the backtest"
        } else {
            "the pipeline did not finish within the deadline"
        };
        eprintln!(
            "chaos: {what}; its data and logs are kept in {}",
            kept.display()
        );
        Ok(ExitCode::FAILURE)
    }
}

/// What an uninterrupted backtest of the log computes.
struct Reference {
    events: u64,
    offers: BTreeSet<String>,
    dashboard: Value,
    first_event_ms: i64,
    last_event_ms: i64,
}

impl Reference {
    fn compute(args: &ChaosArgs) -> Result<Reference> {
        let (report, offers) = crate::backtest::backtest(&BacktestArgs {
            logs: args.logs.clone(),
            data: None,
            until: None,
            patterns: args.patterns.clone(),
            offers_out: None,
            json: true,
            dead_letters_out: None,
        })
        .context("the reference backtest failed")?;
        let first_event_ms = report.first_event_ms.unwrap_or(0);
        Ok(Reference {
            events: report.events,
            offers: offers.into_iter().map(|o| o.offer_id).collect(),
            dashboard: report.dashboard,
            first_event_ms,
            last_event_ms: report.last_event_ms.unwrap_or(first_event_ms),
        })
    }

    /// The replay speed that spreads the log over `kills` lives of `mean` each, with half as
    /// much again to spare.
    fn speed_for(&self, kills: u32, mean: Duration) -> f64 {
        let span_ms = (self.last_event_ms - self.first_event_ms).max(1) as f64;
        let wall_ms = kills as f64 * mean.as_millis().max(1) as f64 * 1.5;
        (span_ms / wall_ms).max(1.0)
    }
}

/// What a chaos run observed.
struct Outcome {
    kills: u32,
    /// Where the replay stood at each kill (events it had made durable).
    kill_points: Vec<u64>,
    /// Events in the first and in the last topic of the pipeline.
    events_in: u64,
    events_out: u64,
    offers_delivered: BTreeSet<String>,
    offers_published: u64,
    dashboard: Value,
    /// Data-dir checks after every kill: opened and read cleanly (embedded).
    store_checks: u32,
    /// Offers that reached the web stage again and were dropped there (distributed).
    republished_offers: u64,
    /// Broker and Redis restarts (distributed).
    service_restarts: Vec<&'static str>,
    speed: f64,
    /// Set when the deadline passed first: why ([`unfinished`]).
    unfinished: Option<Value>,
}

impl Outcome {
    fn report(&self, args: &ChaosArgs, reference: &Reference, elapsed: Duration) -> Value {
        let lost_events = reference
            .events
            .saturating_sub(self.events_in.min(self.events_out));
        let duplicate_events = self
            .events_in
            .max(self.events_out)
            .saturating_sub(reference.events);
        let duplicate_offers = self
            .offers_published
            .saturating_sub(self.offers_delivered.len() as u64)
            + self.republished_offers;
        let missing: Vec<&String> = reference
            .offers
            .difference(&self.offers_delivered)
            .collect();
        let unexpected: Vec<&String> = self
            .offers_delivered
            .difference(&reference.offers)
            .collect();
        let snapshot_equal = self.dashboard == reference.dashboard;
        let ok = self.unfinished.is_none()
            && self.kills >= args.kills
            && lost_events == 0
            && duplicate_events == 0
            && duplicate_offers == 0
            && missing.is_empty()
            && unexpected.is_empty()
            && snapshot_equal;
        json!({
            "ok": ok,
            "mode": args.mode.name(),
            "seed": args.seed,
            "kills": self.kills,
            "events": reference.events,
            "offers_expected": reference.offers.len(),
            "offers_delivered": self.offers_delivered.len(),
            "lost_events": lost_events,
            "duplicate_events": duplicate_events,
            "duplicate_offers": duplicate_offers,
            "missing_offers": missing.iter().take(10).collect::<Vec<_>>(),
            "unexpected_offers": unexpected.iter().take(10).collect::<Vec<_>>(),
            "snapshot_equal": snapshot_equal,
            "store_checks": self.store_checks,
            "service_restarts": self.service_restarts,
            "kill_points": self.kill_points,
            "replay_speed": self.speed.round(),
            "elapsed_ms": elapsed.as_millis() as u64,
            "unfinished": self.unfinished,
        })
    }
}

/// On Ctrl-C or SIGTERM: kill every process this run started, then exit 130 (without this they
/// would outlive the run: the drops that stop them do not run on a signal).
fn stop_children_on_signal() {
    std::thread::spawn(|| {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(clickpulse_connectors::shutdown::signal());
        eprintln!("chaos: interrupted; stopping the processes it started");
        clickpulse_chaos::kill_all_children();
        std::process::exit(130);
    });
}

/// Starts `clickpulse ARGS` as one life of the pipeline, appending its output to
/// `{work}/pipeline.log`.
fn spawn(args: Vec<String>, work: &Path) -> Result<Proc> {
    let exe = std::env::current_exe().context("cannot find the clickpulse binary")?;
    Proc::start("pipeline", work, &exe, args, Vec::new()).context("cannot start a pipeline process")
}

/// How a wait for a life ended.
#[derive(Debug, PartialEq, Eq)]
enum Life {
    /// Still running (serving, or through its planned time).
    Running,
    /// It exited.
    Exited,
    /// The run's deadline passed first.
    OutOfTime,
}

/// Waits until `port` accepts connections, the child exits, or the deadline passes.
fn wait_serving(child: &mut Child, port: u16, deadline: Deadline) -> Result<Life> {
    while !deadline.passed() {
        if child.try_wait()?.is_some() {
            return Ok(Life::Exited);
        }
        // Serving, not only bound: the demo binds its port before its setup, and a life's
        // time counts from when its pipeline runs.
        if answers_health(port) {
            return Ok(Life::Running);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Life::OutOfTime)
}

/// Sleeps `d` unless the child exits or the deadline passes first.
fn sleep_while_running(child: &mut Child, d: Duration, deadline: Deadline) -> Result<Life> {
    let until = Instant::now() + d.min(deadline.remaining());
    while Instant::now() < until {
        if child.try_wait()?.is_some() {
            return Ok(Life::Exited);
        }
        std::thread::sleep(Duration::from_millis(5).min(until - Instant::now()));
    }
    Ok(if child.try_wait()?.is_some() {
        Life::Exited
    } else if deadline.passed() {
        Life::OutOfTime
    } else {
        Life::Running
    })
}

/// The tail of a log file, for error messages.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(20).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// The mean life between kills, by mode: a restarted distributed worker first rejoins its
/// consumer group (the broker waits out the killed member's session).
fn mean_interval(args: &ChaosArgs) -> Duration {
    let default = match args.mode {
        ChaosMode::Embedded => 400,
        ChaosMode::Distributed => 3_000,
    };
    Duration::from_millis(args.mean_interval_ms.unwrap_or(default).max(1))
}

/// The embedded pipeline (`clickpulse demo` on one data dir), killed and restarted.
fn embedded(
    args: &ChaosArgs,
    reference: &Reference,
    work: &Path,
    deadline: Deadline,
) -> Result<Outcome> {
    let data_dir = work.join("data");
    let log = work.join("pipeline.log");
    let mean = mean_interval(args);
    let speed = reference.speed_for(args.kills, mean);
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let life_args = |port: u16| -> Vec<String> {
        let mut a: Vec<String> = [
            "demo",
            "--original-time",
            "--exit-when-done",
            "--idle-timeout-ms",
            "300",
            "--batch-size",
            "500",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.push("--data-dir".into());
        a.push(data_dir.display().to_string());
        a.push("--listen".into());
        a.push(format!("127.0.0.1:{port}"));
        a.push("--speed".into());
        a.push(format!("{speed:.0}"));
        for l in &args.logs {
            a.push("--log".into());
            a.push(l.display().to_string());
        }
        if let Some(p) = &args.patterns {
            a.push("--patterns".into());
            a.push(p.display().to_string());
        }
        a
    };
    let mut kills = 0;
    let mut kill_points = Vec::new();
    let mut store_checks = 0;
    let mut finished = false;
    let mut out_of_time = None;
    let stop_late = |proc: &mut Proc, port: u16| {
        let stats = life_stats(port);
        proc.kill();
        Some(unfinished(args.deadline, stats.as_ref()))
    };
    while kills < args.kills {
        let port = free_port()?;
        let mut proc = spawn(life_args(port), work)?;
        let mut state = wait_serving(&mut proc.child, port, deadline)?;
        let planned = mean.mul_f64(rng.random_range(0.2..1.8));
        // Once a life has finished the log, the remaining kills land in the recovery of a
        // finished data dir: at once, before that life can finish again.
        let life = if finished { Duration::ZERO } else { planned };
        if state == Life::Running {
            state = sleep_while_running(&mut proc.child, life, deadline)?;
        }
        if state == Life::OutOfTime {
            out_of_time = stop_late(&mut proc, port);
            break;
        }
        if state == Life::Running {
            proc.kill(); // SIGKILL, then reaped
            kills += 1;
            // The data dir must open cleanly after every kill (redb recovers its last commit).
            let replayed = replayed_events(&data_dir)
                .with_context(|| format!("the data dir is unreadable after kill {kills}"))?;
            store_checks += 1;
            kill_points.push(replayed);
            info!(
                kill = kills,
                replayed,
                life_ms = life.as_millis() as u64,
                "kill -9"
            );
            continue;
        }
        let status = proc.child.wait()?;
        if !status.success() {
            bail!(
                "a pipeline process failed ({status}); its log ends with:\n{}",
                tail(&log)
            );
        }
        if !finished {
            warn!(
                kills,
                "The pipeline finished the log before all kills were made: the rest land in recoveries."
            );
        }
        finished = true;
    }
    if out_of_time.is_none() {
        // The last life runs to the end of the log (or, if one already did, through a recovery).
        let port = free_port()?;
        let mut proc = spawn(life_args(port), work)?;
        loop {
            if let Some(status) = proc.child.try_wait()? {
                if !status.success() {
                    bail!(
                        "the final pipeline process failed ({status}); its log ends with:\n{}",
                        tail(&log)
                    );
                }
                break;
            }
            if deadline.passed() {
                out_of_time = stop_late(&mut proc, port);
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let store = EmbeddedStore::open(&data_dir, &[])
        .with_context(|| format!("cannot open {}", data_dir.display()))?;
    let summary = store.topic_summary_on_disk()?;
    let records = |topic: &str| summary[topic]["records"].as_u64().unwrap_or(0);
    let mut offers_published = 0;
    for p in 0..store.partitions_on_disk(topics::SPECIAL_OFFERS)? {
        let mut next = 0;
        loop {
            let batch = store.fetch(topics::SPECIAL_OFFERS, p, next, 10_000)?;
            let Some(last) = batch.last() else { break };
            next = last.offset + 1;
            for record in &batch {
                decode::<Offer>(&record.value)
                    .map_err(|e| anyhow::anyhow!("an undecodable offer record: {e}"))?;
                offers_published += 1;
            }
        }
    }
    let offers_delivered = clickpulse_components::sinks::offer_hub::delivered_embedded(&store)?;
    let dashboard = clickpulse_components::sinks::dashboard_store::embedded_snapshot(&store)
        .context("the dashboard snapshot is unreadable")?
        .unwrap_or(Value::Null);
    Ok(Outcome {
        kills,
        kill_points,
        events_in: records(topics::CLICK_DATA),
        events_out: records(topics::ENRICHED_CLICK_DATA),
        offers_delivered,
        offers_published,
        dashboard,
        store_checks,
        republished_offers: 0,
        service_restarts: Vec::new(),
        speed,
        unfinished: out_of_time,
    })
}

/// The stages of the distributed pipeline, one worker each.
const STAGES: [&str; 5] = ["web", "replay", "enrich", "detect", "aggregate"];

/// The distributed pipeline: a local tansu broker (on S3 storage, so topics outlive a broker
/// restart), Redis with an fsync'ed append-only file, and one `clickpulse run` process per
/// stage. Each kill picks a worker at random and restarts it at once; a third of the way
/// through the broker restarts (SIGTERM), two thirds of the way Redis dies (`kill -9`) and
/// restarts.
fn distributed(
    args: &ChaosArgs,
    reference: &Reference,
    work: &Path,
    deadline: Deadline,
) -> Result<Outcome> {
    let mean = mean_interval(args);
    let speed = reference.speed_for(args.kills, mean);
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let patterns = match &args.patterns {
        Some(p) => std::path::absolute(p)?,
        None => {
            let dir = work.join("patterns");
            crate::patterns_cmd::seed_patterns(&clickpulse_engine::pattern::PatternDir::new(
                &dir,
            )?)?;
            dir
        }
    };
    let logs: Vec<String> = args
        .logs
        .iter()
        .map(|l| std::path::absolute(l).map(|p| format!("{:?}", p.display().to_string())))
        .collect::<Result<_, _>>()?;
    let tools = Tools::from_env(std::env::current_exe()?);
    let spec = Spec {
        storage: Storage::S3,
        // tansu records an idempotent batch's sequence number before the batch, so a batch cut
        // off by its restart would later be acknowledged as a duplicate without being stored:
        // no idempotence there, and one request in flight to keep each partition's order.
        kafka: r#"properties = { "enable.idempotence" = "false", "max.in.flight.requests.per.connection" = "1" }"#.into(),
        pipeline: "batch_size = 500".into(),
        replay: format!("speed = \"{speed:.0}\"\nlogs = [{}]", logs.join(", ")),
        patterns,
        redis_cluster: false,
    };
    let mut cluster = Cluster::start(tools, &spec)?;
    let result = drive(
        args,
        reference,
        &mut cluster,
        &mut rng,
        mean,
        speed,
        deadline,
    );
    if result.is_err()
        || result
            .as_ref()
            .is_ok_and(|o| o.dashboard != reference.dashboard || o.unfinished.is_some())
    {
        // Keep the processes' logs with the work dir.
        let _ = std::fs::write(work.join("cluster-logs.txt"), cluster.log_tails());
    }
    result
}

fn drive(
    args: &ChaosArgs,
    reference: &Reference,
    cluster: &mut Cluster,
    rng: &mut ChaCha8Rng,
    mean: Duration,
    speed: f64,
    deadline: Deadline,
) -> Result<Outcome> {
    for stage in STAGES {
        cluster.worker(stage, stage)?;
    }
    let mut kill_points = Vec::new();
    let mut service_restarts = Vec::new();
    let mut last_replayed = 0;
    for kill in 1..=args.kills {
        std::thread::sleep(
            mean.mul_f64(rng.random_range(0.2..1.8))
                .min(deadline.remaining()),
        );
        if deadline.passed() {
            break;
        }
        let victim = rng.random_range(0..cluster.workers.len());
        if let Some(n) = cluster.stats().and_then(|s| Cluster::stage_events(&s)[0]) {
            last_replayed = n;
        }
        cluster.workers[victim].restart()?;
        kill_points.push(last_replayed);
        info!(kill, worker = %cluster.workers[victim].name, replayed = last_replayed, "kill -9 and restart");
        if kill == args.kills.div_ceil(3) && !args.skip_broker_restart {
            info!("Restarting the broker (SIGTERM).");
            cluster.restart_broker()?;
            service_restarts.push("broker");
        }
        if kill == (2 * args.kills).div_ceil(3) {
            info!("Killing Redis (kill -9) and restarting it.");
            if let Some(redis) = cluster.redis.as_mut() {
                redis.kill();
            }
            cluster.start_redis()?;
            service_restarts.push("redis");
        }
    }
    let finished =
        cluster.wait_until_done(reference.events, &reference.dashboard, deadline.remaining());
    if let Err(error) = &finished {
        warn!(%error, "The distributed pipeline did not reach the backtest's result.");
    }
    let stats = cluster.stats().unwrap_or_default();
    let out_of_time =
        (finished.is_err() && deadline.passed()).then(|| unfinished(args.deadline, Some(&stats)));
    let [replayed, enriched, detected, aggregated] = Cluster::stage_events(&stats);
    let downstream = [enriched, detected, aggregated]
        .iter()
        .map(|n| n.unwrap_or(0))
        .min()
        .unwrap_or(0);
    Ok(Outcome {
        kills: kill_points.len() as u32,
        kill_points,
        events_in: replayed.unwrap_or(0),
        events_out: downstream,
        offers_delivered: cluster.delivered_offers()?.into_iter().collect(),
        offers_published: 0,
        republished_offers: stats["stages"]["web"]["details"]["duplicates"]
            .as_u64()
            .unwrap_or(0),
        dashboard: cluster.dashboard().unwrap_or(Value::Null),
        store_checks: 0,
        service_restarts,
        speed,
        unfinished: out_of_time,
    })
}

/// The replay's durable position, read after a kill.
fn replayed_events(data_dir: &Path) -> Result<u64> {
    let store = EmbeddedStore::open(data_dir, &[])?;
    let cursor = clickpulse_components::sources::replay::embedded::cursor(&store)?;
    Ok(cursor.map_or(0, |c| c.events))
}
