//! `clickpulse bench collector`: the collector under sustained load, loopback only and
//! bounded in time, in one of its protocols (`--protocol`: `POST /collect`, or Snowplow's
//! `tp2` POST).
//!
//! Each of `--connections` tasks holds one HTTP/1.1 keep-alive connection (hyper's client, the
//! server's own HTTP stack) and sends `--batch` clicks per request, one request at a time, until
//! `--duration` has passed; the requests under way then finish. Every answer is counted by
//! status. A `503` must carry `Retry-After`; the task then waits [`BACKOFF`] (not the full
//! second, to keep the pressure on) and sends again.
//!
//! Without `--url` the server is embedded: the real router and server loop
//! ([`clickpulse_server::app`], [`clickpulse_server::serve`]) with the collector stage writing
//! the durable `click-data` topic of a temporary data dir (the rest of the pipeline does not
//! run, so the figures are the collector's). Once the load has stopped, the server and the
//! stage are shut down, the data dir is reopened from disk and its `click-data` records are
//! counted: they must equal the events the server accepted with `202`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clickpulse_components::sources::collector::embedded::{
    COLLECTOR_BATCHES, CollectedBatch, QueueSink, run as run_collector,
};
use clickpulse_connectors::embedded::EmbeddedStore;
use clickpulse_connectors::embedded::runner::RunnerConfig;
use clickpulse_engine::metrics::PipelineMetrics;
use clickpulse_engine::replay::EventClock;
use clickpulse_engine::topics;
use clickpulse_server::AppState;
use clickpulse_server::collector::{Collector, Identity, MAX_BATCH};
use clickpulse_server::offers::OfferTokens;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header;
use hyper_util::rt::TokioIo;
use serde_json::json;

use crate::cli::CollectorBenchArgs;

/// How long a connection waits after a `503` before sending again.
const BACKOFF: Duration = Duration::from_millis(20);

/// What the load generator saw.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    requests: u64,
    accepted_requests: u64,
    accepted_events: u64,
    client_errors: u64,
    unavailable: u64,
    unavailable_without_retry_after: u64,
    server_errors: u64,
    transport_errors: u64,
    /// Event streams the server took, and refused (its stream caps).
    streams_held: u64,
    streams_refused: u64,
    /// `/api/health` asked, answered, and the slowest answer.
    health_asked: u64,
    health_answered: u64,
    health_max: Duration,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.requests += o.requests;
        self.accepted_requests += o.accepted_requests;
        self.accepted_events += o.accepted_events;
        self.client_errors += o.client_errors;
        self.unavailable += o.unavailable;
        self.unavailable_without_retry_after += o.unavailable_without_retry_after;
        self.server_errors += o.server_errors;
        self.transport_errors += o.transport_errors;
        self.streams_held += o.streams_held;
        self.streams_refused += o.streams_refused;
        self.health_asked += o.health_asked;
        self.health_answered += o.health_answered;
        self.health_max = self.health_max.max(o.health_max);
    }
}

pub(crate) fn run(args: CollectorBenchArgs) -> Result<ExitCode> {
    if args.batch == 0 || args.batch > MAX_BATCH || args.connections == 0 {
        bail!("--batch must be 1 to {MAX_BATCH} and --connections at least 1");
    }
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (tally, elapsed, in_topic) = match &args.url {
        Some(url) => {
            let addr = resolve(url)?;
            let (tally, elapsed) = client.block_on(load(addr, &args));
            (tally, elapsed, None)
        }
        None => {
            let queue = if args.overload {
                2 * args.batch
            } else {
                args.collector_queue
            };
            let (tally, elapsed, in_topic) =
                embedded(queue, |addr| client.block_on(load(addr, &args)))?;
            (tally, elapsed, Some(in_topic))
        }
    };
    report(&args, &tally, elapsed, in_topic)
}

fn resolve(url: &str) -> Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    let uri: hyper::Uri = url.parse().with_context(|| format!("invalid URL {url}"))?;
    if uri.scheme_str() != Some("http") {
        bail!("only http:// URLs are supported");
    }
    let host = uri.host().context("the URL has no host")?;
    let port = uri.port_u16().unwrap_or(80);
    (host, port)
        .to_socket_addrs()?
        .next()
        .with_context(|| format!("cannot resolve {host}"))
}

/// Serves an embedded collector over a temporary data dir on a loopback port while `drive`
/// runs, then stops it and counts `click-data` on disk.
fn embedded<T>(
    collector_queue: usize,
    drive: impl FnOnce(SocketAddr) -> (T, Duration),
) -> Result<(T, Duration, u64)> {
    let dir = TempDir::new()?;
    let store = Arc::new(EmbeddedStore::open(
        &dir.0,
        &clickpulse_components::PIPELINE.partitions(4),
    )?);
    let metrics = Arc::new(PipelineMetrics::default());
    let shutdown = Arc::new(AtomicBool::new(false));
    let (queue_tx, queue_rx) = std::sync::mpsc::sync_channel::<CollectedBatch>(COLLECTOR_BATCHES);
    let stage = {
        let (store, shutdown, m) = (store.clone(), shutdown.clone(), metrics.stage("collector"));
        std::thread::Builder::new()
            .name("collector".into())
            .spawn(move || {
                run_collector(&store, &queue_rx, &m, &shutdown, &RunnerConfig::default())
            })?
    };
    let mut state = AppState::new(
        metrics,
        "embedded",
        Arc::new(clickpulse_components::PIPELINE.clone()),
    );
    // The dashboard's stream, for `--streams` (nothing publishes to it: it stays open).
    state.dashboard = Some(clickpulse_engine::window::DashboardHandle::default());
    state.collector = Some(Collector {
        sink: Arc::new(QueueSink::new(queue_tx, collector_queue)),
        clock: Arc::new(EventClock::default()),
        // The load generator is a server-side sender on loopback: it names its own visitors.
        identity: Identity {
            trusted_proxies: Arc::from(vec!["127.0.0.0/8".parse::<ipnet::IpNet>()?]),
            ..Identity::new(OfferTokens::new(b"bench collector"))
        },
        ignored: Default::default(),
    });
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let listener = server.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = server.spawn(clickpulse_server::serve(
        listener,
        clickpulse_server::app(state),
        async {
            let _ = stopped.await;
        },
    ));
    let (outcome, elapsed) = drive(addr);
    let _ = stop.send(());
    server.block_on(serving)??;
    drop(server);
    shutdown.store(true, Ordering::SeqCst);
    stage
        .join()
        .map_err(|_| anyhow::anyhow!("the collector stage panicked"))??;
    drop(store);
    // Count what is durable, from disk.
    let store = EmbeddedStore::open(&dir.0, &[])?;
    let in_topic = store.topic_summary_on_disk()?[topics::CLICK_DATA]["records"]
        .as_u64()
        .context("no click-data topic in the data dir")?;
    Ok((outcome, elapsed, in_topic))
}

/// A data dir under the system's temporary directory, deleted when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos();
        let path = std::env::temp_dir().join(format!(
            "clickpulse-bench-collector-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path)?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the connections until the duration has passed; returns the tally and the time from
/// the first request to the last answer. Meanwhile it holds `--streams` event streams open and
/// asks `/api/health` ten times a second.
async fn load(addr: SocketAddr, args: &CollectorBenchArgs) -> (Tally, Duration) {
    let started = Instant::now();
    let deadline = started + args.duration;
    let streams: Vec<_> = (0..args.streams)
        .map(|_| tokio::spawn(hold_stream(addr, deadline)))
        .collect();
    let health = tokio::spawn(probe_health(addr, deadline));
    let tasks: Vec<_> = (0..args.connections)
        .map(|c| tokio::spawn(connection(addr, args.protocol, c, args.batch, deadline)))
        .collect();
    let mut tally = Tally::default();
    for task in tasks {
        match task.await {
            Ok(t) => tally.add(&t),
            Err(_) => tally.transport_errors += 1,
        }
    }
    for stream in streams {
        match stream.await {
            Ok(true) => tally.streams_held += 1,
            _ => tally.streams_refused += 1,
        }
    }
    if let Ok((asked, answered, max)) = health.await {
        tally.health_asked = asked;
        tally.health_answered = answered;
        tally.health_max = max;
    }
    (tally, started.elapsed())
}

/// Opens `GET /api/dashboard/stream` and keeps it until `deadline`; whether the server took it
/// (a `200`, not a refusal by its stream caps).
async fn hold_stream(addr: SocketAddr, deadline: Instant) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let request = format!("GET /api/dashboard/stream HTTP/1.1\r\nhost: {addr}\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    let taken = matches!(
        tokio::time::timeout_at(deadline.into(), stream.read_exact(&mut head)).await,
        Ok(Ok(_)) if head.starts_with(b"HTTP/1.1 200")
    );
    if taken {
        // Hold it: read whatever comes until the load ends.
        let mut sink = vec![0u8; 4096];
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline.into(), stream.read(&mut sink)).await
        {
            if n == 0 {
                break;
            }
        }
    }
    taken
}

/// Asks `GET /api/health` on a new connection ten times a second until `deadline`: how many it
/// asked, how many were answered `200` within 5 s, and the slowest answer.
async fn probe_health(addr: SocketAddr, deadline: Instant) -> (u64, u64, Duration) {
    let (mut asked, mut answered, mut max) = (0, 0, Duration::ZERO);
    while Instant::now() < deadline {
        asked += 1;
        let sent = Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(5), async {
            let mut sender = connect(addr).await?;
            let request = hyper::Request::get("/api/health")
                .header(header::HOST, addr.to_string())
                .body(Full::new(Bytes::new()))
                .ok()?;
            let response = sender.send_request(request).await.ok()?;
            Some(response.status().as_u16())
        })
        .await;
        if let Ok(Some(200)) = answer {
            answered += 1;
            max = max.max(sent.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (asked, answered, max)
}

/// A collector protocol the load is sent in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// `POST /collect` (answers `202 {"accepted": n}`).
    Clickpulse,
    /// Snowplow's `tp2` POST (answers `200 ok` once the whole batch is durable).
    Snowplow,
    /// Segment's `POST /v1/batch` (answers `200 {"success": true}`).
    Segment,
}

impl std::str::FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "clickpulse" => Ok(Protocol::Clickpulse),
            "snowplow" => Ok(Protocol::Snowplow),
            "segment" => Ok(Protocol::Segment),
            other => Err(format!("{other:?} is not clickpulse, snowplow or segment")),
        }
    }
}

impl Protocol {
    fn path(self) -> &'static str {
        match self {
            Protocol::Clickpulse => "/collect",
            Protocol::Snowplow => clickpulse_server::collector::snowplow::TP2_PATH,
            Protocol::Segment => "/v1/batch",
        }
    }

    /// The events an answer says were accepted (`None`: not an acceptance).
    fn accepted(self, status: u16, body: &[u8], batch: usize) -> Option<u64> {
        match (self, status) {
            (Protocol::Clickpulse, 202) => Some(
                serde_json::from_slice::<serde_json::Value>(body)
                    .ok()
                    .and_then(|v| v["accepted"].as_u64())
                    .unwrap_or(0),
            ),
            (Protocol::Snowplow, 200) if body == b"ok" => Some(batch as u64),
            (Protocol::Segment, 200) => serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .filter(|v| v["success"] == true && v.get("rejected").is_none())
                .map(|_| batch as u64),
            _ => None,
        }
    }
}

/// The body one connection sends: `batch` product views of visitors of its own.
fn body(protocol: Protocol, connection: usize, batch: usize) -> Bytes {
    if protocol == Protocol::Snowplow {
        let events: Vec<_> = (0..batch)
            .map(|i| {
                json!({
                    "e": "pv", "p": "srv", "tv": "clickpulse-bench",
                    "url": "http://127.0.0.1/shop/product/VD55177927",
                    "uid": format!("bench-{connection}-{i}"),
                    "ua": "clickpulse-bench",
                })
            })
            .collect();
        let payload = json!({
            "schema": "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4",
            "data": events,
        });
        return Bytes::from(serde_json::to_vec(&payload).expect("events serialize"));
    }
    if protocol == Protocol::Segment {
        let messages: Vec<_> = (0..batch)
            .map(|i| {
                json!({
                    "type": "page",
                    "userId": format!("bench-{connection}-{i}"),
                    "properties": {"url": "http://127.0.0.1/shop/product/VD55177927"},
                    "context": {"userAgent": "clickpulse-bench"},
                })
            })
            .collect();
        let payload = json!({"batch": messages, "writeKey": "clickpulse-bench"});
        return Bytes::from(serde_json::to_vec(&payload).expect("messages serialize"));
    }
    let clicks: Vec<_> = (0..batch)
        .map(|i| {
            json!({
                "visitor": format!("bench-{connection}-{i}"),
                "url": "http://127.0.0.1/shop/product/VD55177927",
                "user_agent": "clickpulse-bench",
                "gender": "F",
                "age": 30,
            })
        })
        .collect();
    Bytes::from(serde_json::to_vec(&clicks).expect("clicks serialize"))
}

async fn connection(
    addr: SocketAddr,
    protocol: Protocol,
    index: usize,
    batch: usize,
    deadline: Instant,
) -> Tally {
    let body = body(protocol, index, batch);
    let host = addr.to_string();
    let mut tally = Tally::default();
    let mut sender = None;
    while Instant::now() < deadline {
        if sender.is_none() {
            sender = connect(addr).await;
            if sender.is_none() {
                tally.transport_errors += 1;
                tokio::time::sleep(BACKOFF).await;
                continue;
            }
        }
        let s = sender.as_mut().expect("connected");
        let request = hyper::Request::post(protocol.path())
            .header(header::HOST, &host)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body.clone()))
            .expect("valid request");
        let response = match s.send_request(request).await {
            Ok(r) => r,
            Err(_) => {
                tally.transport_errors += 1;
                sender = None;
                continue;
            }
        };
        tally.requests += 1;
        let status = response.status();
        let retry_after = response.headers().contains_key(header::RETRY_AFTER);
        let bytes = match response.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                tally.transport_errors += 1;
                sender = None;
                continue;
            }
        };
        if let Some(n) = protocol.accepted(status.as_u16(), &bytes, batch) {
            tally.accepted_requests += 1;
            tally.accepted_events += n;
            continue;
        }
        match status.as_u16() {
            503 => {
                tally.unavailable += 1;
                if !retry_after {
                    tally.unavailable_without_retry_after += 1;
                }
                tokio::time::sleep(BACKOFF).await;
            }
            400..=499 => tally.client_errors += 1,
            _ => tally.server_errors += 1,
        }
    }
    tally
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Option<Sender> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(connection);
    Some(sender)
}

/// Prints the figures; fails on any 5xx but 503, a 503 without `Retry-After`, any 4xx (the
/// requests are valid), or an accepted event missing from `click-data`.
fn report(
    args: &CollectorBenchArgs,
    t: &Tally,
    elapsed: Duration,
    in_topic: Option<u64>,
) -> Result<ExitCode> {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let rps = t.requests as f64 / secs;
    let accepted_rps = t.accepted_requests as f64 / secs;
    let eps = t.accepted_events as f64 / secs;
    let lost = in_topic.map(|n| t.accepted_events.saturating_sub(n));
    let ok = t.server_errors == 0
        && t.unavailable_without_retry_after == 0
        && t.client_errors == 0
        && lost.unwrap_or(0) == 0
        && t.health_answered == t.health_asked;
    if args.json {
        let summary = json!({
            "url": args.url,
            "protocol": format!("{:?}", args.protocol).to_lowercase(),
            "overload": args.overload,
            "connections": args.connections,
            "batch": args.batch,
            "seconds": secs,
            "requests": t.requests,
            "requests_per_second": rps,
            "accepted_requests": t.accepted_requests,
            "accepted_requests_per_second": accepted_rps,
            "accepted_events": t.accepted_events,
            "events_per_second": eps,
            "client_errors": t.client_errors,
            "unavailable": t.unavailable,
            "unavailable_without_retry_after": t.unavailable_without_retry_after,
            "server_errors": t.server_errors,
            "transport_errors": t.transport_errors,
            "events_in_click_data": in_topic,
            "streams_held": t.streams_held,
            "streams_refused": t.streams_refused,
            "health_asked": t.health_asked,
            "health_answered": t.health_answered,
            "health_max_ms": t.health_max.as_secs_f64() * 1000.0,
            "ok": ok,
        });
        println!("{summary}");
    } else {
        let topic = match in_topic {
            Some(n) if n == t.accepted_events => format!("{n} (equal)"),
            Some(n) if n > t.accepted_events => format!(
                "{n} ({} more: stored after their request timed out with 503)",
                n - t.accepted_events
            ),
            Some(n) => format!("{n} ({} LOST)", t.accepted_events - n),
            None => "not counted (--url)".to_owned(),
        };
        println!(
            "{:?} protocol, {} connections x {} clicks per request for {:.1} s{}",
            args.protocol,
            args.connections,
            args.batch,
            secs,
            if args.overload { " (overload)" } else { "" }
        );
        println!(
            "  {:.0} requests/s answered, {accepted_rps:.0} accepted/s, {eps:.0} events/s accepted",
            rps
        );
        println!(
            "  503 {} ({} without Retry-After), other 5xx {}, 4xx {}, transport errors {}",
            t.unavailable,
            t.unavailable_without_retry_after,
            t.server_errors,
            t.client_errors,
            t.transport_errors
        );
        println!(
            "  /api/health answered {} of {} (slowest {:.1} ms); event streams held {}, refused {}",
            t.health_answered,
            t.health_asked,
            t.health_max.as_secs_f64() * 1000.0,
            t.streams_held,
            t.streams_refused
        );
        println!(
            "bench collector: {accepted_rps:.0} req/s, {} events accepted, {} 5xx, {} 503, events in click-data {topic}",
            t.accepted_events, t.server_errors, t.unavailable
        );
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
