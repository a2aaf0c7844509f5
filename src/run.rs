//! `clickpulse run`: stages of the distributed pipeline in this process.
//!
//! Every stage is a thread driving the same operators as the embedded demo, over Kafka topics
//! with state in Redis ([`clickpulse_connectors::distributed`]). Run the same stage in several
//! processes to scale it: enrich and detect split the partitions of their consumer group;
//! replay and aggregate run one active instance with the others as standbys (a Redis lease);
//! each web/collector instance serves HTTP on its own.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clickpulse_connectors::distributed::kafka::{Acks, BatchProducer, OutRecord, ensure_topics};
use clickpulse_connectors::distributed::replay::{CLOCK_KEY, PublishedClock, run_replay};
use clickpulse_connectors::distributed::runner::{Placement, WorkerContext, run_stage};
use clickpulse_connectors::distributed::store::{RedisLookups, RedisStore};
use clickpulse_connectors::distributed::{DistributedError, KafkaConfig, RedisConfig};
use clickpulse_connectors::embedded::runner::ReplayOptions;
use clickpulse_engine::DeadLetter;
use clickpulse_engine::click::Click;
use clickpulse_engine::codec;
use clickpulse_engine::enrich::EnrichOperator;
use clickpulse_engine::lookups::Lookups;
use clickpulse_engine::metrics::PipelineMetrics;
use clickpulse_engine::pattern::{
    DetectOperator, PatternDir, PatternRegistry, TransitionLog, TransitionRecord,
};
use clickpulse_engine::replay::{EventClock, Speed};
use clickpulse_engine::topics;
use clickpulse_engine::window::dashboard::DashboardConfig;
use clickpulse_engine::window::{AggregateOperator, DashboardHandle};
use clickpulse_server::collector::Identity;
use clickpulse_server::collector::{ClickSink, Collector, SinkFull};
use clickpulse_server::offers::{OfferHub, OfferTokens, WebDelivery, WebOperator};
use clickpulse_server::{AppState, PatternAdmin};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::cli::RunArgs;
use crate::inputs;
use clickpulse_connectors::shutdown::Shutdown;

/// `clickpulse.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClusterConfig {
    #[serde(default)]
    kafka: KafkaConfig,
    #[serde(default)]
    redis: RedisConfig,
    #[serde(default)]
    pipeline: PipelineSection,
    #[serde(default)]
    replay: ReplaySection,
    #[serde(default)]
    web: WebSection,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct PipelineSection {
    batch_size: usize,
    allowed_lateness_ms: i64,
    idle_timeout_ms: u64,
    /// Pattern directory, watched for changes [default: the bundled seed patterns, written to
    /// `./patterns`].
    patterns: Option<PathBuf>,
}

impl Default for PipelineSection {
    fn default() -> Self {
        PipelineSection {
            batch_size: 2_000,
            allowed_lateness_ms: 2_000,
            // Longer than in the embedded demo: a partition must not count as idle while an
            // upstream worker is merely restarting or rebalancing.
            idle_timeout_ms: 10_000,
            patterns: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ReplaySection {
    /// Log files [default: the bundled acme.com log].
    logs: Vec<PathBuf>,
    /// `max` or N× real time.
    speed: String,
    loop_forever: bool,
    /// Replay the log's own timestamps instead of aligning it with the present.
    original_time: bool,
}

impl Default for ReplaySection {
    fn default() -> Self {
        ReplaySection {
            logs: Vec::new(),
            speed: "1".to_owned(),
            loop_forever: false,
            original_time: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct WebSection {
    listen: SocketAddr,
    /// This web instance's name: its offer-delivery state is its own.
    instance: String,
    cors_origins: Vec<String>,
    /// Most live clicks waiting for the brokers' acknowledgement before `/collect` answers 503.
    collector_queue: usize,
    /// Admin bearer token [default: `CLICKPULSE_ADMIN_TOKEN`, else generated once and kept in
    /// Redis].
    admin_token: Option<String>,
    /// Reverse proxies (IP addresses or CIDR blocks) whose `X-Forwarded-For` and click `ip`
    /// fields the collector believes.
    trusted_proxies: Vec<ipnet::IpNet>,
    /// The most page views a minute `/collect` takes from one client address.
    collect_rate: u32,
    /// Who may see visitor ids and addresses on the dashboard [default:
    /// `CLICKPULSE_VIEWER_TOKEN`; none: everyone sees them pseudonymised].
    viewer_token: Option<String>,
    /// The site's time zone (IANA name): the pages show times in it.
    time_zone: String,
}

impl Default for WebSection {
    fn default() -> Self {
        WebSection {
            listen: "127.0.0.1:8080".parse().expect("valid address"),
            instance: "web-0".to_owned(),
            cors_origins: Vec::new(),
            collector_queue: 50_000,
            admin_token: None,
            trusted_proxies: Vec::new(),
            collect_rate: DEFAULT_COLLECT_RATE,
            viewer_token: None,
            time_zone: "UTC".to_owned(),
        }
    }
}

/// The most page views a minute from one client address, by default.
const DEFAULT_COLLECT_RATE: u32 = 6_000;

/// A worker's metrics older than this are ignored by the web stage.
const STALE_MS: i64 = 5_000;

/// Every stage a `run` process can host, from the one topology.
const STAGES: &[clickpulse_engine::topology::Stage] = clickpulse_engine::topology::PIPELINE.stages;

/// Reads and checks `clickpulse.toml`; every problem of the file is in the error.
pub(crate) fn load_config(path: &std::path::Path) -> Result<ClusterConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the configuration {}", path.display()))?;
    match check_config(&path.display().to_string(), &text) {
        (Some(config), errors) if errors.is_empty() => Ok(config),
        (_, errors) => bail!("{}", errors.join("\n")),
    }
}

/// Every problem of a `clickpulse.toml`, each with its file and (where it has one) line and
/// column, and the configuration when there is none. A syntax error stops there; otherwise each
/// table is checked on its own, so a mistake in one does not hide those in the others, and
/// then what the types cannot say (ranges, names, the Redis URL, the speed, the time zone).
pub(crate) fn check_config(file: &str, text: &str) -> (Option<ClusterConfig>, Vec<String>) {
    let at = |span: Option<std::ops::Range<usize>>, message: &str| match span {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("{file}:{line}:{column}: {}", message.trim())
        }
        None => format!("{file}: {}", message.trim()),
    };
    let de = |e: toml::de::Error| at(e.span(), e.message());
    let doc = match toml::de::DeTable::parse(text) {
        Ok(doc) => doc,
        Err(e) => return (None, vec![de(e)]),
    };
    let mut errors = Vec::new();
    const TABLES: [&str; 5] = ["kafka", "redis", "pipeline", "replay", "web"];
    for (key, _) in doc.get_ref() {
        if !TABLES.contains(&key.get_ref().as_ref()) {
            errors.push(at(
                Some(key.span()),
                &format!(
                    "unknown table `{}`; expected one of {}",
                    key.get_ref(),
                    TABLES.join(", ")
                ),
            ));
        }
    }
    // Each table alone (the others ignored), so every table's first mistake is reported, and
    // the checks of the tables that are well-formed run too.
    macro_rules! table {
        ($name:ident: $ty:ty) => {{
            #[derive(Deserialize)]
            struct Only {
                #[serde(default)]
                $name: $ty,
            }
            match toml::from_str::<Only>(text) {
                Ok(only) => Some(only.$name),
                Err(e) => {
                    errors.push(de(e));
                    None
                }
            }
        }};
    }
    let kafka = table!(kafka: KafkaConfig);
    let redis = table!(redis: RedisConfig);
    let pipeline = table!(pipeline: PipelineSection);
    let replay = table!(replay: ReplaySection);
    let web = table!(web: WebSection);
    if let Some(kafka) = &kafka
        && let Err(e) = kafka.validate()
    {
        errors.push(format!("{file}: {e}"));
    }
    if let Some(redis) = &redis
        && let Err(e) = RedisStore::open(redis, None)
    {
        errors.push(format!("{file}: redis.url: {e}"));
    }
    if let Some(pipeline) = &pipeline
        && pipeline.batch_size == 0
    {
        errors.push(format!("{file}: pipeline.batch_size must be at least 1"));
    }
    if let Some(replay) = &replay
        && let Err(e) = replay.speed.parse::<Speed>()
    {
        errors.push(format!("{file}: replay.speed: {e}"));
    }
    if let Some(web) = &web
        && let Err(e) = crate::cli::parse_time_zone(&web.time_zone)
    {
        errors.push(format!("{file}: web.time_zone: {e}"));
    }
    let (Some(kafka), Some(redis), Some(pipeline), Some(replay), Some(web)) =
        (kafka, redis, pipeline, replay, web)
    else {
        return (None, errors);
    };
    let config = ClusterConfig {
        kafka,
        redis,
        pipeline,
        replay,
        web,
    };
    (Some(config), errors)
}

/// `clickpulse config check FILE`: every problem at once, or what the file configures.
pub(crate) fn config_check(args: crate::cli::ConfigCheckArgs) -> Result<ExitCode> {
    let text = std::fs::read_to_string(&args.path)
        .with_context(|| format!("cannot read the configuration {}", args.path.display()))?;
    let file = args.path.display().to_string();
    match check_config(&file, &text) {
        (Some(config), errors) if errors.is_empty() => {
            println!(
                "{file}: OK — brokers {}, {} partitions, redis {}, web on {}, time zone {}",
                config.kafka.brokers,
                config.kafka.partitions,
                redact_url(&config.redis.url),
                config.web.listen,
                config.web.time_zone
            );
            Ok(ExitCode::SUCCESS)
        }
        (_, errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            eprintln!("{} error(s) in {file}", errors.len());
            Ok(ExitCode::FAILURE)
        }
    }
}

/// A URL without its password (`redis://:secret@host` → `redis://:***@host`).
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

pub(crate) fn run(args: RunArgs) -> Result<ExitCode> {
    let config = load_config(&args.config)?;
    let mut stages = BTreeSet::new();
    for s in &args.stages {
        match s.as_str() {
            "all" => stages.extend(STAGES.iter().map(|x| x.name)),
            s => match STAGES.iter().find(|x| x.name == s) {
                Some(x) => {
                    stages.insert(x.name);
                }
                None => bail!(
                    "unknown stage {s:?}; expected one of {}, all",
                    clickpulse_engine::topology::PIPELINE
                        .stage_names()
                        .join(", ")
                ),
            },
        }
    }
    let worker_id = args.worker_id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "host".to_owned());
        format!("{host}-{}", std::process::id())
    });
    ensure_topics(&config.kafka, Duration::from_secs(60)).context("cannot set up the topics")?;
    info!(stages = ?stages, worker = %worker_id, brokers = %config.kafka.brokers, "Starting stages.");

    // One shutdown for every stage of this process: a signal or a failed stage.
    let stop = Shutdown::new();
    let shutdown = stop.flag();
    let metrics = Arc::new(PipelineMetrics::default());
    let ctx = |stage: &'static str| WorkerContext {
        kafka: config.kafka.clone(),
        redis: config.redis.clone(),
        worker_id: worker_id.clone(),
        batch_size: config.pipeline.batch_size,
        shutdown: shutdown.clone(),
        metrics: metrics.stage(stage),
    };
    let spawn = |name: &'static str,
                 work: Box<dyn FnOnce() -> Result<(), DistributedError> + Send>|
     -> Result<()> {
        stop.spawn_stage(name, work)?;
        Ok(())
    };

    // Patterns (detect and web).
    let pattern_parts = if stages.contains("detect") || stages.contains("web") {
        let dir = PatternDir::new(
            &config
                .pipeline
                .patterns
                .clone()
                .unwrap_or_else(|| PathBuf::from("patterns")),
        )
        .context("cannot create the pattern directory")?;
        crate::patterns_cmd::seed_patterns(&dir)?;
        let registry = PatternRegistry::new(
            dir.load()
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(|| format!("invalid patterns in {}", dir.path().display()))?,
        );
        let last_error = Arc::new(Mutex::new(None));
        {
            let (dir, registry, shutdown, last_error) = (
                dir.clone(),
                registry.clone(),
                shutdown.clone(),
                last_error.clone(),
            );
            spawn(
                "pattern-watch",
                Box::new(move || {
                    clickpulse_server::watch_patterns(&dir, &registry, &shutdown, &last_error);
                    Ok(())
                }),
            )?;
        }
        Some((dir, registry, last_error))
    } else {
        None
    };

    let clock = Arc::new(EventClock::default());
    if stages.contains("replay") {
        let live = !config.replay.original_time;
        let input = inputs::read_logs(&config.replay.logs, |_| {})?;
        info!(
            events = input.clicks.len(),
            malformed = input.malformed.len(),
            "Log read and sorted by event time."
        );
        let speed: Speed = config
            .replay
            .speed
            .parse()
            .map_err(|e| anyhow::anyhow!("replay.speed: {e}"))?;
        let options = ReplayOptions {
            speed,
            loop_forever: config.replay.loop_forever,
            align_warmup_ms: live.then_some(clickpulse_engine::replay::WARMUP_MS),
            overlay: live,
        };
        let input = if live { inputs::overlaid(input) } else { input };
        let (ctx, clock) = (ctx("replay"), clock.clone());
        spawn(
            "replay",
            Box::new(move || run_replay(&ctx, &input, options, &clock)),
        )?;
    }
    if stages.contains("enrich") {
        let ctx = ctx("enrich");
        let redis = config.redis.clone();
        let stop = shutdown.clone();
        spawn(
            "enrich",
            Box::new(move || {
                let ttl = Duration::from_millis(redis.lookup_cache_ttl_ms);
                run_stage(
                    &ctx,
                    Placement::Partitioned {
                        output: Some(topics::ENRICHED_CLICK_DATA),
                    },
                    || {
                        let store = RedisStore::open(&redis, Some(stop.clone()))
                            .expect("the Redis URL was validated");
                        EnrichOperator::new(RedisLookups::new(store, ttl))
                    },
                )
            }),
        )?;
    }
    if stages.contains("detect") {
        let (_, registry, _) = pattern_parts
            .as_ref()
            .expect("patterns are loaded for detect");
        let log = Arc::new(Mutex::new(TransitionLog::default().with_outbox()));
        let ctx_detect = ctx("detect");
        let (registry, log2) = (registry.clone(), log.clone());
        spawn(
            "detect",
            Box::new(move || {
                run_stage(
                    &ctx_detect,
                    Placement::Partitioned {
                        output: Some(topics::SPECIAL_OFFERS),
                    },
                    || DetectOperator::new(registry.clone()).with_log(log2.clone()),
                )
            }),
        )?;
        let (redis, shutdown) = (config.redis.clone(), shutdown.clone());
        spawn(
            "state-logs",
            Box::new(move || ship_state_logs(&redis, &log, &shutdown)),
        )?;
    }
    if stages.contains("aggregate") {
        let handle = DashboardHandle::default();
        let window = DashboardConfig {
            allowed_lateness_ms: config.pipeline.allowed_lateness_ms,
            idle_timeout: Duration::from_millis(config.pipeline.idle_timeout_ms),
            partitions: config.kafka.partitions,
            ..DashboardConfig::default()
        };
        let ctx_agg = ctx("aggregate");
        let h = handle.clone();
        spawn(
            "aggregate",
            Box::new(move || {
                run_stage(
                    &ctx_agg,
                    Placement::Single {
                        lease: Some("aggregate".into()),
                        task: "all".into(),
                    },
                    || AggregateOperator::new(window, h.clone()),
                )
            }),
        )?;
        let (redis, shutdown) = (config.redis.clone(), shutdown.clone());
        spawn(
            "dashboard-publish",
            Box::new(move || publish_dashboard(&redis, &handle, &shutdown)),
        )?;
    }

    let serve_http = stages.contains("web") || stages.contains("collector");
    let mut catalogue = None;
    let mut state = AppState::new(metrics.clone(), "distributed");
    state.cors_origins = config.web.cors_origins.clone();
    state.time_zone = Arc::from(
        crate::cli::parse_time_zone(&config.web.time_zone)
            .map_err(|e| anyhow::anyhow!("[web] time_zone: {e}"))?
            .as_str(),
    );
    if serve_http {
        let mut store = RedisStore::open(&config.redis, Some(shutdown.clone()))?;
        let products = store.load_products()?;
        if products.is_empty() {
            warn!("No products in Redis; run `clickpulse lookups load --redis URL` first.");
        }
        let lookups = Lookups::from_parts(Vec::new(), products);
        state.products = Arc::new(clickpulse_server::shop_products(&lookups));
        catalogue = Some(Arc::new(crate::patterns_cmd::catalogue_of(&lookups)));
        let admin = match config
            .web
            .admin_token
            .clone()
            .or_else(|| std::env::var("CLICKPULSE_ADMIN_TOKEN").ok())
        {
            Some(t) => t,
            None => {
                let (token, created) =
                    store.hash_get_or_init("secrets", "admin_token", || random_hex(24))?;
                if created {
                    eprintln!(
                        "Generated an admin token (kept in Redis key {}; shown only now): {token}",
                        store.key("secrets")
                    );
                }
                token
            }
        };
        state.admin_token = Some(Arc::from(admin.as_str()));
        let (secret, _) = store.hash_get_or_init("secrets", "offer_secret", || random_hex(32))?;
        state.privacy = Some(clickpulse_server::privacy::Privacy::new(
            OfferTokens::new(secret.as_bytes()),
            config
                .web
                .viewer_token
                .clone()
                .or_else(|| std::env::var("CLICKPULSE_VIEWER_TOKEN").ok())
                .map(|t| Arc::from(t.as_str())),
            state.admin_token.clone(),
        ));
    }
    if stages.contains("web") {
        let (dir, registry, last_error) =
            pattern_parts.clone().expect("patterns are loaded for web");
        let log = Arc::new(Mutex::new(TransitionLog::default()));
        state.patterns = Some(PatternAdmin {
            registry: registry.clone(),
            dir,
            log: log.clone(),
            last_error,
            catalogue: catalogue.clone(),
        });
        let dashboard = DashboardHandle::default();
        state.dashboard = Some(dashboard.clone());
        let hub = OfferHub::new(clickpulse_server::static_files::offer_image)
            .with_content(clickpulse_server::offers::content_from(registry.clone()));
        let mut store = RedisStore::open(&config.redis, Some(shutdown.clone()))?;
        let (secret, _) = store.hash_get_or_init("secrets", "offer_secret", || random_hex(32))?;
        state.web = Some(WebDelivery {
            hub: hub.clone(),
            tokens: OfferTokens::new(secret.as_bytes()),
        });
        let ctx_web = ctx("web");
        let instance = args
            .web_instance
            .clone()
            .unwrap_or_else(|| config.web.instance.clone());
        spawn(
            "web",
            Box::new(move || {
                run_stage(
                    &ctx_web,
                    Placement::Single {
                        lease: None,
                        task: instance,
                    },
                    || WebOperator::new(hub.clone()),
                )
            }),
        )?;
        let (redis, shutdown, metrics) = (config.redis.clone(), shutdown.clone(), metrics.clone());
        spawn(
            "web-poll",
            Box::new(move || poll_for_web(&redis, &dashboard, &metrics, &log, &shutdown)),
        )?;
    }
    if stages.contains("collector") {
        let sink = Arc::new(KafkaSink {
            producer: BatchProducer::new(&config.kafka)?,
            kafka: config.kafka.clone(),
            in_flight: Arc::new(AtomicUsize::new(0)),
            max_in_flight: config.web.collector_queue,
            accepted: Arc::new(AtomicUsize::new(0)),
            dead_letters: Arc::new(AtomicUsize::new(0)),
            stage: metrics.stage("collector"),
        });
        let mut store = RedisStore::open(&config.redis, Some(shutdown.clone()))?;
        let (secret, _) = store.hash_get_or_init("secrets", "offer_secret", || random_hex(32))?;
        state.collector = Some(Collector {
            sink: sink.clone(),
            clock: clock.clone(),
            identity: Identity {
                tokens: OfferTokens::new(secret.as_bytes()),
                trusted_proxies: Arc::from(config.web.trusted_proxies.clone()),
                admin_token: state.admin_token.clone(),
                per_client: Some(clickpulse_server::rate::PerClient::new(
                    config.web.collect_rate,
                    config.web.collect_rate.div_ceil(6).max(1),
                )),
            },
        });
        let (redis, shutdown, clock, worker) = (
            config.redis.clone(),
            shutdown.clone(),
            clock.clone(),
            worker_id.clone(),
        );
        let replay_here = stages.contains("replay");
        spawn(
            "collector-clock",
            Box::new(move || follow_clock(&redis, &clock, &sink, &worker, replay_here, &shutdown)),
        )?;
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let listen = args.listen.unwrap_or(config.web.listen);
    let result = runtime.block_on(async {
        if serve_http {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            info!(address = %listener.local_addr()?, "Serving HTTP.");
            let router = clickpulse_server::app(state);
            let until = stop.clone();
            let until = async move {
                until.wait(Duration::from_millis(200), || false).await;
            };
            clickpulse_server::serve(listener, router, until).await?;
        } else {
            stop.wait(Duration::from_millis(200), || false).await;
        }
        anyhow::Ok(())
    });
    let joined = stop.join();
    result?;
    if let Err(cause) = joined {
        bail!("{cause}");
    }
    info!("Stopped cleanly.");
    Ok(ExitCode::SUCCESS)
}

fn random_hex(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    getrandom::fill(&mut raw).expect("the OS has randomness");
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

/// Copies the detect stage's transitions to the capped `state_logs` stream.
fn ship_state_logs(
    redis: &RedisConfig,
    log: &Mutex<TransitionLog>,
    shutdown: &AtomicBool,
) -> Result<(), DistributedError> {
    let mut store = RedisStore::open(redis, None)?;
    loop {
        let stopping = shutdown.load(Ordering::Relaxed);
        let records: Vec<String> = log
            .lock()
            .expect("log lock")
            .drain_outbox()
            .iter()
            .map(|r| serde_json::to_string(r).expect("record serializes"))
            .collect();
        if let Err(error) = store.append_state_logs(&records, redis.state_log_max_len) {
            warn!(%error, dropped = records.len(), "Cannot ship transitions to state_logs.");
        }
        if stopping {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(250));
    }
}

/// Publishes the aggregation's snapshot to Redis whenever it changes.
fn publish_dashboard(
    redis: &RedisConfig,
    handle: &DashboardHandle,
    shutdown: &AtomicBool,
) -> Result<(), DistributedError> {
    let mut store = RedisStore::open(redis, None)?;
    let mut published = 0;
    while !shutdown.load(Ordering::Relaxed) {
        let generation = handle.generation();
        if generation != published {
            let snapshot = serde_json::to_vec(&*handle.snapshot()).expect("snapshot serializes");
            match store.set("dashboard", &snapshot) {
                Ok(()) => published = generation,
                Err(error) => warn!(%error, "Cannot publish the dashboard."),
            }
        }
        thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}

/// The web stage's view of the cluster: the dashboard snapshot, every worker's metrics and the
/// transition log, read from Redis a few times a second.
fn poll_for_web(
    redis: &RedisConfig,
    dashboard: &DashboardHandle,
    metrics: &PipelineMetrics,
    log: &Mutex<TransitionLog>,
    shutdown: &AtomicBool,
) -> Result<(), DistributedError> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut store = RedisStore::open(redis, Some(stop))?;
    let mut last_snapshot = Vec::new();
    let mut last_log_id = "0".to_owned();
    while !shutdown.load(Ordering::Relaxed) {
        let round = (|| -> Result<(), DistributedError> {
            if let Some(bytes) = store.get("dashboard")?
                && bytes != last_snapshot
            {
                if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
                    dashboard.publish(v);
                }
                last_snapshot = bytes;
            }
            let now = clickpulse_engine::replay::wall_clock_ms();
            for stage in STAGES.iter().map(|x| x.name) {
                // A worker that stopped reporting (killed, or gone after a graceful stop) no
                // longer counts: its partitions' totals are carried by their new owner.
                let workers: Vec<Value> = store
                    .read_metrics(stage)?
                    .into_iter()
                    .filter(|w| w["ts_ms"].as_i64().is_some_and(|ts| now - ts < STALE_MS))
                    .collect();
                if workers.is_empty() {
                    continue;
                }
                record_cluster_stage(&metrics.stage(stage), &workers);
            }
            let entries = store.read_state_logs(&last_log_id, 1_000)?;
            if let Some((id, _)) = entries.last() {
                last_log_id = id.clone();
            }
            let mut log = log.lock().expect("log lock");
            for (_, record) in entries {
                if let Ok(r) = serde_json::from_str::<TransitionRecord>(&record) {
                    log.push(r);
                }
            }
            Ok(())
        })();
        if let Err(error) = round {
            warn!(%error, "Cannot read the cluster's state from Redis.");
        }
        thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}

/// Sets a stage's metrics to the sum over its workers (standbys report zero events).
fn record_cluster_stage(stage: &clickpulse_engine::metrics::StageMetrics, workers: &[Value]) {
    let sum = |k: &str| workers.iter().filter_map(|w| w[k].as_u64()).sum::<u64>();
    let details: Vec<Value> = workers.iter().map(|w| w["details"].clone()).collect();
    let mut merged = clickpulse_connectors::distributed::runner::merge_stats(&details);
    // Fields that are positions, not amounts, come from the most advanced worker.
    for key in [
        "watermark_ms",
        "event_time_ms",
        "position",
        "log_events",
        "pass",
    ] {
        if let Some(max) = details.iter().filter_map(|d| d[key].as_i64()).max() {
            merged[key] = max.into();
        }
    }
    merged["workers"] = workers
        .iter()
        .map(|w| {
            json!({
                "worker": w["worker"], "events": w["events"], "events_per_second": w["events_per_second"],
                "lag": w["lag"], "ts_ms": w["ts_ms"], "partitions": w["details"]["partitions"],
            })
        })
        .collect::<Vec<_>>()
        .into();
    // The active replay/aggregate worker carries the totals; standbys report their last view.
    let events = workers
        .iter()
        .filter_map(|w| w["events"].as_u64())
        .max()
        .unwrap_or(0);
    let total = if matches!(stage.name(), "replay" | "aggregate" | "web") {
        events
    } else {
        sum("events")
    };
    stage.record(total, sum("dead_letters"), merged);
    stage.set_lag(sum("lag"));
    stage.set_done(workers.iter().any(|w| w["done"].as_bool() == Some(true)));
}

/// Publishes live clicks to `click-data`; a request is acknowledged once the brokers have all
/// of its clicks. Bounded: beyond `max_in_flight` clicks waiting, `/collect` answers 503.
struct KafkaSink {
    producer: BatchProducer,
    kafka: KafkaConfig,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: usize,
    accepted: Arc<AtomicUsize>,
    /// Rejected clicks published to the dead-letter topic.
    dead_letters: Arc<AtomicUsize>,
    stage: Arc<clickpulse_engine::metrics::StageMetrics>,
}

impl ClickSink for KafkaSink {
    fn offer(
        &self,
        clicks: Vec<Click>,
        dead_letters: Vec<DeadLetter>,
    ) -> Result<oneshot::Receiver<Result<(), String>>, SinkFull> {
        let n = clicks.len();
        if self.in_flight.fetch_add(n, Ordering::SeqCst) + n > self.max_in_flight {
            self.in_flight.fetch_sub(n, Ordering::SeqCst);
            return Err(SinkFull);
        }
        let (tx, rx) = oneshot::channel();
        let (in_flight, accepted) = (self.in_flight.clone(), self.accepted.clone());
        let (rejected, letters) = (self.dead_letters.clone(), dead_letters.len());
        let acks = Acks::with_callback(move |outcome| {
            in_flight.fetch_sub(n, Ordering::SeqCst);
            if outcome.is_ok() {
                accepted.fetch_add(n, Ordering::SeqCst);
                rejected.fetch_add(letters, Ordering::SeqCst);
            }
            let _ = tx.send(outcome);
        });
        let publish = |topic: &str, partitions: u32, key: &str, value: &[u8], what: &str| {
            let record = OutRecord {
                topic,
                partition: topics::partition_for(key, partitions) as i32,
                key,
                value,
                lineage: None,
            };
            if let Err(error) = self.producer.send(&record, &acks) {
                self.stage.error();
                warn!(%error, what, "Cannot publish a collected record.");
            }
        };
        for click in &clicks {
            let value = codec::encode(click);
            let topic = &self.kafka.topics.click_data;
            publish(
                topic,
                self.kafka.partitions,
                &click.visitor,
                &value,
                "click",
            );
        }
        for letter in &dead_letters {
            let value = codec::encode(letter);
            let topic = &self.kafka.topics.dead_letters;
            let partitions = self.kafka.dead_letter_partitions;
            publish(topic, partitions, &letter.source, &value, "dead letter");
        }
        acks.seal();
        Ok(rx)
    }
}

/// Keeps the collector's event clock on the replay's (published in Redis) and publishes the
/// collector's counters.
fn follow_clock(
    redis: &RedisConfig,
    clock: &EventClock,
    sink: &KafkaSink,
    worker: &str,
    replay_here: bool,
    shutdown: &AtomicBool,
) -> Result<(), DistributedError> {
    let mut store = RedisStore::open(redis, None)?;
    while !shutdown.load(Ordering::Relaxed) {
        if !replay_here
            && let Ok(Some(bytes)) = store.get(CLOCK_KEY)
            && let Ok(published) = serde_json::from_slice::<PublishedClock>(&bytes)
        {
            published.apply(clock);
        }
        let accepted = sink.accepted.load(Ordering::SeqCst) as u64;
        sink.stage.record(
            accepted,
            sink.dead_letters.load(Ordering::SeqCst) as u64,
            json!({"accepted": accepted, "in_flight": sink.in_flight.load(Ordering::SeqCst)}),
        );
        if let Err(error) = store.publish_metrics("collector", worker, &sink.stage.snapshot()) {
            warn!(%error, "Cannot publish the collector's metrics.");
        }
        thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_is_a_valid_config() {
        let text = include_str!("../config/clickpulse.example.toml");
        let config: ClusterConfig = toml::from_str(text).expect("the example parses");
        assert_eq!(config.web.collect_rate, DEFAULT_COLLECT_RATE);
        assert!(config.web.trusted_proxies.is_empty());
    }

    #[test]
    fn every_example_config_loads() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut checked = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let config = load_config(&path).unwrap_or_else(|e| panic!("{e:#}"));
                if path.ends_with("redis-cluster.toml") {
                    assert!(config.redis.cluster);
                }
                checked += 1;
            }
        }
        assert!(checked >= 4);
    }

    #[test]
    fn unknown_options_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[redis]\nurl = \"redis://x\"\nclustr = true\n").unwrap();
        let error = format!("{:#}", load_config(&path).unwrap_err());
        assert!(error.contains("unknown field `clustr`"), "{error}");
    }
}
