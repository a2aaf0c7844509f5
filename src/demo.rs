//! `clickpulse demo`: the embedded live pipeline.
//!
//! One process, zero external services: the replay and every stage run as threads over the
//! durable [`EmbeddedStore`] in the data dir, and the HTTP server runs on tokio. Each stage
//! commits its outputs, state and offsets atomically, so a `kill -9` and a restart continue
//! exactly where the last commit left off.

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
use clickpulse_components::{EmbeddedRuntime, Pending, Runtime, Wiring, spawn_embedded};
use clickpulse_connectors::embedded::EmbeddedStore;
use clickpulse_connectors::embedded::runner::{RunnerConfig, apply_retention};
use clickpulse_connectors::shutdown::{Shutdown, Stop};
use clickpulse_engine::metrics::PipelineMetrics;
use clickpulse_engine::pattern::{PatternDir, PatternRegistry, TransitionLog};
use clickpulse_engine::replay::EventClock;
use clickpulse_engine::topics::Topic;
use clickpulse_engine::window::DashboardHandle;
use clickpulse_server::offers::OfferTokens;
use clickpulse_server::{AppState, PatternAdmin};
use indicatif::{ProgressBar, ProgressStyle};
use tracing::{info, warn};

use crate::cli::DemoArgs;
use crate::inputs;

pub(crate) fn run(args: DemoArgs) -> Result<ExitCode> {
    let config = crate::config::load(&args.config)?;
    // Bound before anything else: a taken port fails here, before the data dir is touched or a
    // one-time admin token is generated and shown.
    let listener = bind_listener(config.web.listen)?;
    let dir = inputs::data_dir(config.embedded.data_dir.clone());
    if args.reset && dir.exists() {
        let db = dir.join(clickpulse_connectors::embedded::DB_FILE);
        if db.exists() {
            std::fs::remove_file(&db).with_context(|| format!("cannot reset {}", db.display()))?;
        }
    }
    let store = Arc::new(
        EmbeddedStore::open(&dir, &PIPELINE.partitions(config.embedded.partitions))
            .with_context(|| format!("cannot open the data dir {}", dir.display()))?,
    );
    info!(data_dir = %dir.display(), "Data dir opened.");
    let mut lookups = store.load_lookups()?;
    if lookups.user_count() == 0 && lookups.product_count() == 0 {
        let (bundled, report) = inputs::read_lookups(None)?;
        store.save_lookups(&bundled)?;
        info!(
            users = report.users,
            products = report.products,
            "Bundled lookups loaded into the state store."
        );
        lookups = bundled;
    }
    // Event time never goes back across a restart: not below the newest event time committed.
    let clock = Arc::new(EventClock::default());
    if let Some(newest) = sources::newest_event_time(&store)? {
        clock.floor(newest);
    }
    let live = !config.replay.original_time;
    let input = inputs::replay_input(&config.replay)?;

    let pattern_dir = PatternDir::new(
        &config
            .pipeline
            .patterns
            .clone()
            .unwrap_or_else(|| dir.join("patterns")),
    )
    .context("cannot create the pattern directory")?;
    crate::patterns_cmd::seed_patterns(&pattern_dir)?;
    let registry = PatternRegistry::new(
        pattern_dir
            .load()
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("invalid patterns in {}", pattern_dir.path().display()))?,
    );
    let funnel_dir = config
        .pipeline
        .funnels
        .clone()
        .unwrap_or_else(|| dir.join("funnels"));
    let funnels = crate::patterns_cmd::funnel_dir(&funnel_dir)?;
    let admin_token = admin_token(&dir, config.web.admin_token.clone())?;
    let transition_log = Arc::new(Mutex::new(TransitionLog::default()));
    let last_pattern_error = Arc::new(Mutex::new(None));

    let products = Arc::new(clickpulse_server::shop_products(&lookups));
    let catalogue = Arc::new(crate::patterns_cmd::catalogue_of(&lookups));
    let metrics = Arc::new(PipelineMetrics::default());
    // One shutdown for every stage: a signal, a failed stage or the end of the replay.
    let stop = Shutdown::new();
    let shutdown = stop.flag();
    let runner = RunnerConfig {
        batch_size: config.pipeline.batch_size,
        sync_interval: Duration::from_millis(config.embedded.sync_interval_ms),
        // The consumers of `click-data`.
        replay_consumers: PIPELINE.consumers_of(Topic::ClickData),
        ..RunnerConfig::default()
    };
    let (offer_secret, _) = secret_file(&dir.join("offer-secret"), 32)?;
    let mut state = AppState::new(metrics.clone(), "embedded", Arc::new(PIPELINE.clone()));
    state.telemetry = Arc::new(clickpulse_server::telemetry::Telemetry::new(
        metrics.clone(),
        PIPELINE.stage_names(),
        Some(clock.clone()),
    ));
    let settings = SourceSettings {
        replay: ReplaySettings {
            options: config.replay.options().map_err(anyhow::Error::msg)?,
            input: {
                let input = input.clone();
                Arc::new(move || Ok(input.clone()))
            },
        },
        collector: CollectorSettings {
            queue: config.web.collector_queue,
            identity: Some(config.web.identity(
                OfferTokens::new(offer_secret.as_bytes()),
                Some(Arc::from(admin_token.as_str())),
            )),
        },
        tables: config.sources.clone(),
    };
    let dashboard = DashboardHandle::default();
    let operator_settings = OperatorSettings {
        pipeline: config.pipeline.clone(),
        live,
        enrich: EnrichSettings {
            lookups: Some(lookups),
        },
        detect: DetectSettings {
            registry: Some(registry.clone()),
            log: transition_log.clone(),
        },
        aggregate: AggregateSettings {
            dashboard: dashboard.clone(),
            funnels: Some(funnels.clone()),
            alerts: match &config.pipeline.alerts {
                Some(dir) => crate::inputs::read_alerts(dir)?,
                None => Vec::new(),
            },
        },
    };
    let sinks = SinkSettings {
        dashboard: DashboardSettings {
            aggregate: dashboard.clone(),
        },
        popups: OfferHubSettings {
            registry: Some(registry.clone()),
            tokens: Some(OfferTokens::new(offer_secret.as_bytes())),
            instance: "web-0".to_owned(),
        },
        webhooks: WebhookSettings {
            config: config.webhooks.clone(),
            registry: Some(registry.clone()),
        },
    };
    // The sources and sinks, from their registries: what the sources accept and have not
    // committed yet is what the live aggregate's frontier waits for.
    let mut pending: Vec<Pending> = Vec::new();
    let mut wiring = Wiring {
        stop: &stop,
        metrics: &metrics,
        clock: &clock,
        http: &mut state,
        runtime: Runtime::Embedded(EmbeddedRuntime {
            store: &store,
            runner: &runner,
            pending: &mut pending,
        }),
    };
    sources::start(&settings, &mut wiring)?;
    operators::start(&operator_settings, &mut wiring)?;
    sinks::start(&sinks, &mut wiring)?;
    let spawn = |name: &'static str,
                 work: Box<
        dyn FnOnce() -> Result<(), clickpulse_connectors::embedded::StoreError> + Send,
    >|
     -> Result<()> {
        spawn_embedded(&stop, name, work)?;
        Ok(())
    };
    {
        let (store, shutdown, keep) = (store.clone(), shutdown.clone(), config.embedded.retention);
        spawn(
            "retention",
            Box::new(move || {
                retention_loop(&store, &shutdown, keep);
                Ok(())
            }),
        )?;
    }
    {
        let (dir, registry, shutdown, last_error) = (
            pattern_dir.clone(),
            registry.clone(),
            shutdown.clone(),
            last_pattern_error.clone(),
        );
        spawn(
            "pattern-watch",
            Box::new(move || {
                clickpulse_server::watch_patterns(&dir, &registry, &shutdown, &last_error);
                Ok(())
            }),
        )?;
    }
    {
        let shutdown = shutdown.clone();
        spawn(
            "funnel-watch",
            Box::new(move || {
                clickpulse_server::watch_funnels(&funnel_dir, &funnels, &shutdown);
                Ok(())
            }),
        )?;
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let total = input.clicks.len() as u64;
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener)
            .with_context(|| format!("cannot listen on {}", config.web.listen))?;
        let address = listener.local_addr()?;
        info!(address = %address, "Serving HTTP.");
        eprintln!(
            "Clickpulse is running: dashboard http://{address}/  shop http://{address}/shop  \
             pipeline http://{address}/pipeline  (Ctrl-C stops it)"
        );
        let router = clickpulse_server::app(AppState {
            patterns: Some(PatternAdmin {
                registry: registry.clone(),
                dir: pattern_dir.clone(),
                log: transition_log.clone(),
                last_error: last_pattern_error.clone(),
                catalogue: Some(catalogue.clone()),
            }),
            admin_token: Some(Arc::from(admin_token.as_str())),
            products: products.clone(),
            cors_origins: config.web.cors_origins.clone(),
            time_zone: Arc::from(config.web.time_zone.as_str()),
            shop_tracker: config.web.shop_tracker,
            segment_write_keys: config.web.segment_write_keys.clone(),
            privacy: Some(clickpulse_server::privacy::Privacy::new(
                OfferTokens::new(offer_secret.as_bytes()),
                config.web.viewer_token.as_deref().map(Arc::from),
                Some(Arc::from(admin_token.as_str())),
            )),
            ..state
        });
        let until = stop_signal(
            stop.clone(),
            metrics.clone(),
            store.clone(),
            args.exit_when_done,
            total,
        );
        clickpulse_server::serve(listener, router, until).await?;
        anyhow::Ok(())
    });
    let joined = stop.join();
    result?;
    if let Err(cause) = joined {
        bail!("{cause}");
    }
    info!(
        replayed = metrics.stage("replay").events(),
        enriched = metrics.stage("enrich").events(),
        detected = metrics.stage("detect").events(),
        "Stopped cleanly."
    );
    Ok(ExitCode::SUCCESS)
}

/// Completes on Ctrl-C, SIGTERM, a failed stage, or (with `--exit-when-done`) once the replay
/// ended and every stage caught up. Meanwhile it refreshes the topic summary and the progress bar.
async fn stop_signal(
    stop: Shutdown,
    metrics: Arc<PipelineMetrics>,
    store: Arc<EmbeddedStore>,
    exit_when_done: bool,
    total: u64,
) {
    let progress = progress_bar(total);
    let why = stop
        .wait(Duration::from_millis(250), || {
            metrics.set_topics(store.topic_summary());
            let replay = metrics.stage("replay");
            if let Some(pb) = &progress {
                pb.set_position(replay.events() % total.max(1));
            }
            exit_when_done && replay.is_done() && caught_up(&metrics, replay.events())
        })
        .await;
    if why == Stop::Done {
        info!("Replay ended and every stage caught up.");
    }
    if let Some(pb) = progress {
        pb.finish_and_clear();
    }
}

/// Every second, deletes consumed records beyond the newest `keep` of each partition, so the
/// data dir stays bounded however long the demo loops, and the appends reuse the space freed
/// (pages the kernel still holds) instead of growing the file: writing fresh file pages costs
/// far more than rewriting cached ones (BENCHMARKS.md, "The embedded live pipeline").
fn retention_loop(store: &EmbeddedStore, shutdown: &AtomicBool, keep: u64) {
    let mut last = std::time::Instant::now();
    while !shutdown.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_millis(200));
        if last.elapsed() < Duration::from_secs(1) {
            continue;
        }
        last = std::time::Instant::now();
        // Records are deleted once every consumer group of their topic (the topology's) has
        // passed them. Dead letters have no consumer, so they are never deleted.
        for (topic, groups) in PIPELINE.consumed_topics() {
            let topic = topic.name();
            match apply_retention(store, topic, &groups, keep) {
                Ok(0) => {}
                Ok(removed) => {
                    tracing::debug!(topic, removed, "Retention deleted consumed records.")
                }
                Err(error) => warn!(%error, topic, "Retention failed."),
            }
        }
    }
}

/// The stages that see every click (they read the click topics), in data-flow order.
fn click_stages() -> impl Iterator<Item = &'static str> {
    PIPELINE
        .stages
        .iter()
        .filter(|s| {
            s.inputs
                .iter()
                .any(|t| matches!(t, Topic::ClickData | Topic::EnrichedClickData))
        })
        .map(|s| s.name)
}

/// Whether every stage has consumed everything (each stage forwards every event it consumes)
/// and the aggregation has no event waiting for its watermark.
fn caught_up(metrics: &PipelineMetrics, replayed: u64) -> bool {
    click_stages().all(|name| {
        let stage = metrics.stage(name);
        stage.lag() == 0 && stage.events() >= replayed
    }) && metrics
        .stage("aggregate")
        .detail("pending")
        .and_then(|p| p.as_u64())
        == Some(0)
        && metrics.stage("web").lag() == 0
        // Every offer is in the webhooks' outbox (not necessarily delivered: that may take a
        // receiver's day; the outbox is durable, so a next start goes on with it).
        && metrics.stage("webhooks").lag() == 0
}

/// A random secret kept in `path` (hex, mode 0600): read if present, else generated. Returns
/// it and whether it was just generated.
fn secret_file(path: &std::path::Path, bytes: usize) -> Result<(String, bool)> {
    if let Ok(secret) = std::fs::read_to_string(path) {
        return Ok((secret.trim().to_owned(), false));
    }
    let mut raw = vec![0u8; bytes];
    getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("cannot generate a secret: {e}"))?;
    let secret: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(path, &secret).with_context(|| format!("cannot save {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok((secret, true))
}

/// Binds the HTTP listener (non-blocking, for tokio); a taken or forbidden address fails with
/// a message naming it and suggesting `--listen`.
fn bind_listener(address: std::net::SocketAddr) -> Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(address).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            " (another process is using it: stop it, or pick another address with --listen, \
             e.g. --listen 127.0.0.1:8081)"
        } else {
            " (pick another address with --listen, e.g. --listen 127.0.0.1:8081)"
        };
        anyhow::anyhow!("cannot listen on {address}: {e}{hint}")
    })?;
    listener
        .set_nonblocking(true)
        .with_context(|| format!("cannot listen on {address}"))?;
    Ok(listener)
}

/// The admin token: given, else the one saved in the data dir, else a new random one (saved
/// with mode 0600 and shown once).
fn admin_token(data_dir: &std::path::Path, given: Option<String>) -> Result<String> {
    if let Some(token) = given.filter(|t| !t.is_empty()) {
        return Ok(token);
    }
    let path = data_dir.join("admin-token");
    let (token, generated) = secret_file(&path, 24)?;
    if generated {
        eprintln!(
            "Generated an admin token (saved to {}; shown only now): {token}",
            path.display()
        );
    }
    Ok(token)
}

fn progress_bar(total: u64) -> Option<ProgressBar> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template("replay {bar:40} {pos}/{len} events ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    Some(pb)
}
