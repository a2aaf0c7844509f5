//! `clickpulse run`: stages of the distributed pipeline in this process.
//!
//! Every stage is a thread driving the same operators as the embedded demo, over Kafka topics
//! with state in Redis ([`clickpulse_connectors::distributed`]). Run the same stage in several
//! processes to scale it: enrich and detect split the partitions of their consumer group;
//! replay and aggregate run one active instance with the others as standbys (a Redis lease);
//! each web/collector instance serves HTTP on its own.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clickpulse_components::PIPELINE;
use clickpulse_components::operators::aggregate::AggregateSettings;
use clickpulse_components::operators::detect::DetectSettings;
use clickpulse_components::operators::enrich::EnrichSettings;
use clickpulse_components::operators::{self, OperatorSettings};
use clickpulse_components::sinks::dashboard_store::DashboardSettings;
use clickpulse_components::sinks::offer_hub::OfferHubSettings;
use clickpulse_components::sinks::webhook::WebhookSettings;
use clickpulse_components::sinks::{self, SinkSettings};
use clickpulse_components::sources::collector::CollectorSettings;
use clickpulse_components::sources::replay::ReplaySettings;
use clickpulse_components::sources::{self, SourceSettings};
use clickpulse_components::{DistributedRuntime, Runtime, Wiring};
use clickpulse_connectors::distributed::kafka::ensure_topics;
use clickpulse_connectors::distributed::runner::WorkerContext;
use clickpulse_connectors::distributed::store::RedisStore;
use clickpulse_connectors::distributed::{DistributedError, RedisConfig};
use clickpulse_engine::lookups::Lookups;
use clickpulse_engine::metrics::{PipelineMetrics, StageStats, WorkerStats, merge_details};
use clickpulse_engine::pattern::{PatternDir, PatternRegistry, TransitionLog, TransitionRecord};
use clickpulse_engine::replay::EventClock;
use clickpulse_engine::window::DashboardHandle;
use clickpulse_server::offers::OfferTokens;
use clickpulse_server::telemetry::Telemetry;
use clickpulse_server::{AppState, PatternAdmin};
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::cli::RunArgs;
use crate::inputs;
use clickpulse_connectors::shutdown::Shutdown;

/// A worker's metrics older than this are ignored by the web stage.
const STALE_MS: i64 = 5_000;

pub(crate) fn run(args: RunArgs) -> Result<ExitCode> {
    let config = crate::config::load(&args.config)?;
    let mut stages = BTreeSet::new();
    for s in &args.stages {
        match s.as_str() {
            // Every stage; the sources with a table of their own where it is configured.
            "all" => stages.extend(
                PIPELINE
                    .stage_names()
                    .into_iter()
                    .filter(|&n| sources::source(n).is_none_or(|s| s.configured(&config.sources))),
            ),
            s => match PIPELINE.stage(s) {
                Some(x) => {
                    stages.insert(x.name);
                }
                None => bail!(
                    "unknown stage {s:?}; expected one of {}, all",
                    PIPELINE.stage_names().join(", ")
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

    // Patterns (detect, web, and webhooks: the offers' titles go into the bodies).
    let pattern_parts = if ["detect", "web", "webhooks"]
        .iter()
        .any(|s| stages.contains(*s))
    {
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

    // Funnels (aggregate).
    let funnels = if stages.contains("aggregate") {
        let dir = config
            .pipeline
            .funnels
            .clone()
            .unwrap_or_else(|| PathBuf::from("funnels"));
        let registry = crate::patterns_cmd::funnel_dir(&dir)?;
        let (watched, shutdown) = (registry.clone(), shutdown.clone());
        spawn(
            "funnel-watch",
            Box::new(move || {
                clickpulse_server::watch_funnels(&dir, &watched, &shutdown);
                Ok(())
            }),
        )?;
        Some(registry)
    } else {
        None
    };

    let clock = Arc::new(EventClock::default());
    // What the aggregate publishes, for the dashboard store (a sink).
    let aggregate_dashboard = DashboardHandle::default();
    let operator_settings = OperatorSettings {
        pipeline: config.pipeline.clone(),
        live: !config.replay.original_time,
        enrich: EnrichSettings::default(),
        detect: DetectSettings {
            registry: pattern_parts
                .as_ref()
                .map(|(_, registry, _)| registry.clone()),
            log: Arc::default(),
        },
        aggregate: AggregateSettings {
            dashboard: aggregate_dashboard.clone(),
            funnels,
            alerts: match &config.pipeline.alerts {
                Some(dir) if stages.contains("aggregate") => crate::inputs::read_alerts(dir)?,
                _ => Vec::new(),
            },
        },
    };

    let serve_http = stages.contains("web") || stages.contains("collector");
    let mut catalogue = None;
    // The offer secret (signs visitor tokens), where HTTP is served.
    let mut offer_secret = None;
    let mut state = AppState::new(metrics.clone(), "distributed", Arc::new(PIPELINE.clone()));
    // `/metrics` exports what this process does itself: its stages, not the cluster view the
    // web stage keeps for `/api/stats`.
    state.telemetry = Arc::new(Telemetry::new(
        metrics.clone(),
        stages.iter().copied().collect(),
        Some(clock.clone()),
    ));
    state.cors_origins = config.web.cors_origins.clone();
    state.shop_tracker = config.web.shop_tracker;
    state.segment_write_keys = config.web.segment_write_keys.clone();
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
        state.admin_token = Some(Arc::from(admin_token(&mut store, &config)?.as_str()));
        let (secret, _) = store.hash_get_or_init("secrets", "offer_secret", || random_hex(32))?;
        offer_secret = Some(OfferTokens::new(secret.as_bytes()));
        state.privacy = Some(clickpulse_server::privacy::Privacy::new(
            OfferTokens::new(secret.as_bytes()),
            config
                .web
                .viewer_token
                .clone()
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
        let (redis, shutdown, metrics) = (config.redis.clone(), shutdown.clone(), metrics.clone());
        spawn(
            "web-poll",
            Box::new(move || poll_cluster(&redis, &metrics, &log, &shutdown)),
        )?;
    }
    let identity = stages.contains("collector").then(|| {
        config.web.identity(
            offer_secret
                .clone()
                .expect("the offer secret is read where HTTP is served"),
            state.admin_token.clone(),
        )
    });
    if state.admin_token.is_none() && stages.contains("webhooks") {
        // `POST /api/webhooks/replay` (on `--metrics-listen`) needs it.
        let mut store = RedisStore::open(&config.redis, Some(shutdown.clone()))?;
        state.admin_token = Some(Arc::from(admin_token(&mut store, &config)?.as_str()));
    }
    let replay = config.replay.clone();
    let settings = SourceSettings {
        replay: ReplaySettings {
            options: config.replay.options().map_err(anyhow::Error::msg)?,
            // Read only where the replay runs.
            input: Arc::new(move || Ok(inputs::replay_input(&replay)?)),
        },
        collector: CollectorSettings {
            queue: config.web.collector_queue,
            identity,
        },
        tables: config.sources.clone(),
    };
    let sinks = SinkSettings {
        dashboard: DashboardSettings {
            aggregate: aggregate_dashboard,
        },
        popups: OfferHubSettings {
            registry: pattern_parts
                .as_ref()
                .map(|(_, registry, _)| registry.clone()),
            tokens: offer_secret,
            instance: config.web.instance.clone(),
        },
        webhooks: WebhookSettings {
            config: config.webhooks.clone(),
            registry: pattern_parts
                .as_ref()
                .map(|(_, registry, _)| registry.clone()),
        },
    };
    let mut wiring = Wiring {
        stop: &stop,
        metrics: &metrics,
        clock: &clock,
        http: &mut state,
        runtime: Runtime::Distributed(DistributedRuntime {
            worker: &ctx,
            hosted: &stages,
        }),
    };
    sources::start(&settings, &mut wiring)?;
    operators::start(&operator_settings, &mut wiring)?;
    sinks::start(&sinks, &mut wiring)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let listen = config.web.listen;
    let result = runtime.block_on(async {
        if let Some(address) = args.metrics_listen {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on {address} for /metrics"))?;
            info!(address = %listener.local_addr()?, "Serving /metrics.");
            let router = clickpulse_server::metrics_app(state.clone());
            let until = stop.clone();
            tokio::spawn(async move {
                let until = async move {
                    until.wait(Duration::from_millis(200), || false).await;
                };
                if let Err(error) = clickpulse_server::serve(listener, router, until).await {
                    warn!(%error, "The /metrics listener failed.");
                }
            });
        }
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

/// The web stage's view of the cluster: every worker's metrics and the transition log, read
/// from Redis a few times a second.
fn poll_cluster(
    redis: &RedisConfig,
    metrics: &PipelineMetrics,
    log: &Mutex<TransitionLog>,
    shutdown: &AtomicBool,
) -> Result<(), DistributedError> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut store = RedisStore::open(redis, Some(stop))?;
    let mut last_log_id = "0".to_owned();
    while !shutdown.load(Ordering::Relaxed) {
        let round = (|| -> Result<(), DistributedError> {
            let now = clickpulse_engine::replay::wall_clock_ms();
            for stage in PIPELINE.stage_names() {
                // A worker that stopped reporting (killed, or gone after a graceful stop) no
                // longer counts: its partitions' totals are carried by their new owner.
                let workers: Vec<WorkerStats> = store
                    .read_metrics(stage)?
                    .into_iter()
                    .filter(|w| now - w.ts_ms < STALE_MS)
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
fn record_cluster_stage(stage: &clickpulse_engine::metrics::StageMetrics, workers: &[WorkerStats]) {
    let sum = |f: fn(&StageStats) -> u64| workers.iter().map(|w| f(&w.stats)).sum::<u64>();
    let details: Vec<Value> = workers.iter().map(|w| w.stats.details.clone()).collect();
    let mut merged = merge_details(&details);
    merged["workers"] = workers
        .iter()
        .map(|w| {
            json!({
                "worker": w.worker, "events": w.stats.events,
                "events_per_second": w.stats.events_per_second, "lag": w.stats.lag,
                "ts_ms": w.ts_ms, "partitions": w.stats.details["partitions"],
            })
        })
        .collect::<Vec<_>>()
        .into();
    // The active replay/aggregate worker carries the totals; standbys report their last view.
    // Every web instance delivers every offer; collectors and group members each count their own.
    let events = workers.iter().map(|w| w.stats.events).max().unwrap_or(0);
    let total = if matches!(stage.name(), "replay" | "aggregate" | "web") {
        events
    } else {
        sum(|s| s.events)
    };
    stage.record(total, sum(|s| s.dead_letters), merged);
    stage.set_lag(sum(|s| s.lag));
    stage.set_done(workers.iter().any(|w| w.stats.done));
}

/// The admin token: configured, else the one kept in Redis, else a new one (kept there and
/// shown once).
fn admin_token(
    store: &mut RedisStore,
    config: &clickpulse_components::config::Config,
) -> Result<String> {
    if let Some(token) = config.web.admin_token.clone() {
        return Ok(token);
    }
    let (token, created) = store.hash_get_or_init("secrets", "admin_token", || random_hex(24))?;
    if created {
        eprintln!(
            "Generated an admin token (kept in Redis key {}; shown only now): {token}",
            store.key("secrets")
        );
    }
    Ok(token)
}
