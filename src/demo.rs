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
use clickpulse_connectors::embedded::runner::{
    CollectedBatch, ReplayOptions, RunnerConfig, apply_retention, newest_event_time, run_collector,
    run_operator, run_replay,
};
use clickpulse_connectors::embedded::{EmbeddedStore, StoreError};
use clickpulse_engine::DeadLetter;
use clickpulse_engine::click::Click;
use clickpulse_engine::enrich::EnrichOperator;
use clickpulse_engine::metrics::PipelineMetrics;
use clickpulse_engine::pattern::{DetectOperator, PatternDir, PatternRegistry, TransitionLog};
use clickpulse_engine::replay::EventClock;
use clickpulse_engine::topics;
use clickpulse_engine::topology::PIPELINE;
use clickpulse_engine::window::dashboard::DashboardConfig;
use clickpulse_engine::window::dashboard::FrontierFn;
use clickpulse_engine::window::{AggregateOperator, DashboardHandle, Frontier};
use clickpulse_server::collector::{ClickSink, Collector, Identity, SinkFull};
use clickpulse_server::offers::{OfferHub, OfferTokens, WebDelivery, WebOperator};
use clickpulse_server::{AppState, PatternAdmin};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use crate::cli::DemoArgs;
use crate::{bundled, inputs};

/// How much of the log an aligned replay replays at once on a new data dir: the dashboard's
/// longest window (16 half-hours) is full from the start.
pub(crate) const WARMUP_MS: i64 = 8 * 3_600_000;

/// Most requests' batches waiting for the collector stage (each also counts against
/// `--collector-queue` clicks).
pub(crate) const COLLECTOR_BATCHES: usize = 4_096;

/// The topics of the embedded pipeline and their partition counts.
pub(crate) fn topic_layout(partitions: u32) -> Vec<(&'static str, u32)> {
    vec![
        (topics::CLICK_DATA, partitions),
        (topics::ENRICHED_CLICK_DATA, partitions),
        (topics::SPECIAL_OFFERS, partitions),
        (topics::DEAD_LETTERS, 1),
    ]
}

pub(crate) fn run(args: DemoArgs) -> Result<ExitCode> {
    if args.partitions == 0 || args.batch_size == 0 {
        bail!("--partitions and --batch-size must be at least 1");
    }
    // Bound before anything else: a taken port fails here, before the data dir is touched or a
    // one-time admin token is generated and shown.
    let listener = bind_listener(args.listen)?;
    let dir = inputs::data_dir(args.data_dir.clone());
    if args.reset && dir.exists() {
        let db = dir.join(clickpulse_connectors::embedded::DB_FILE);
        if db.exists() {
            std::fs::remove_file(&db).with_context(|| format!("cannot reset {}", db.display()))?;
        }
    }
    let store = Arc::new(
        EmbeddedStore::open(&dir, &topic_layout(args.partitions))
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
    if let Some(newest) = newest_event_time(&store)? {
        clock.floor(newest);
    }
    let live = !args.original_time;
    let input = inputs::read_logs(&args.logs, |_| {})?;
    info!(
        events = input.clicks.len(),
        malformed = input.malformed.len(),
        "Log read and sorted by event time."
    );
    let input = Arc::new(if live { inputs::overlaid(input) } else { input });

    let pattern_dir = PatternDir::new(
        &args
            .patterns
            .clone()
            .unwrap_or_else(|| dir.join("patterns")),
    )
    .context("cannot create the pattern directory")?;
    seed_patterns(&pattern_dir)?;
    let registry = PatternRegistry::new(
        pattern_dir
            .load()
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("invalid patterns in {}", pattern_dir.path().display()))?,
    );
    let admin_token = admin_token(&dir, args.admin_token.clone())?;
    let transition_log = Arc::new(Mutex::new(TransitionLog::default()));
    let last_pattern_error = Arc::new(Mutex::new(None));

    let products = Arc::new(shop_products(&lookups));
    let catalogue = Arc::new(crate::patterns_cmd::catalogue_of(&lookups));
    let metrics = Arc::new(PipelineMetrics::default());
    let shutdown = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicBool::new(false));
    // The first stage failure: the cause to report (later ones are usually its consequences).
    let first_failure: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let config = RunnerConfig {
        batch_size: args.batch_size,
        sync_interval: Duration::from_millis(args.sync_interval_ms),
        // The consumers of `click-data`.
        replay_consumers: PIPELINE.consumers_of(topics::CLICK_DATA),
        ..RunnerConfig::default()
    };
    let mut workers = Vec::new();
    let mut spawn = |name: &'static str,
                     work: Box<dyn FnOnce() -> Result<(), StoreError> + Send>|
     -> Result<()> {
        let (shutdown, failed) = (shutdown.clone(), failed.clone());
        let first_failure = first_failure.clone();
        workers.push(thread::Builder::new().name(name.into()).spawn(move || {
            if let Err(e) = work() {
                error!(error = %e, stage = name, "Stage failed.");
                let hint = if e.is_fatal_io() {
                    " (is the data dir's disk full or failing? The last commit is intact: restart once it can be written)"
                } else {
                    ""
                };
                first_failure
                    .lock()
                    .expect("failure lock")
                    .get_or_insert_with(|| format!("stage {name} failed: {e}{hint}"));
                failed.store(true, Ordering::SeqCst);
                shutdown.store(true, Ordering::SeqCst);
            }
        })?);
        Ok(())
    };
    {
        let (store, input, shutdown, config, m) = (
            store.clone(),
            input.clone(),
            shutdown.clone(),
            config.clone(),
            metrics.stage("replay"),
        );
        let options = ReplayOptions {
            speed: args.speed,
            loop_forever: args.loop_forever,
            align_warmup_ms: live.then_some(WARMUP_MS),
            overlay: live,
        };
        let clock = clock.clone();
        spawn(
            "replay",
            Box::new(move || run_replay(&store, &input, options, &clock, &m, &shutdown, &config)),
        )?;
    }
    {
        let (store, shutdown, config, m) = (
            store.clone(),
            shutdown.clone(),
            config.clone(),
            metrics.stage("enrich"),
        );
        spawn(
            "enrich",
            Box::new(move || {
                run_operator(&store, EnrichOperator::new(lookups), &m, &shutdown, &config)
            }),
        )?;
    }
    {
        let (store, shutdown, config, m) = (
            store.clone(),
            shutdown.clone(),
            config.clone(),
            metrics.stage("detect"),
        );
        let detector = DetectOperator::new(registry.clone()).with_log(transition_log.clone());
        spawn(
            "detect",
            Box::new(move || run_operator(&store, detector, &m, &shutdown, &config)),
        )?;
    }
    let dashboard = DashboardHandle::default();
    let (queue_tx, queue_rx) = std::sync::mpsc::sync_channel::<CollectedBatch>(COLLECTOR_BATCHES);
    let sink = Arc::new(QueueSink::new(queue_tx, args.collector_queue));
    {
        let (store, shutdown, config, m) = (
            store.clone(),
            shutdown.clone(),
            config.clone(),
            metrics.stage("aggregate"),
        );
        let window_config = DashboardConfig {
            allowed_lateness_ms: args.allowed_lateness_ms,
            idle_timeout: Duration::from_millis(args.idle_timeout_ms),
            partitions: args.partitions,
            max_keys: args.max_dashboard_keys,
        };
        let mut aggregator = AggregateOperator::new(window_config, dashboard.clone());
        if live {
            // Live: the windows follow the clock through quiet minutes (see `live_frontier`).
            aggregator = aggregator.with_frontier(live_frontier(&store, &clock, &sink));
        }
        spawn(
            "aggregate",
            Box::new(move || run_operator(&store, aggregator, &m, &shutdown, &config)),
        )?;
    }
    let hub = OfferHub::new(clickpulse_server::static_files::offer_image)
        .with_content(clickpulse_server::offers::content_from(registry.clone()));
    {
        let (store, shutdown, config, m) = (
            store.clone(),
            shutdown.clone(),
            config.clone(),
            metrics.stage("web"),
        );
        let web = WebOperator::new(hub.clone());
        spawn(
            "web",
            Box::new(move || run_operator(&store, web, &m, &shutdown, &config)),
        )?;
    }
    {
        let (store, shutdown, config, m) = (
            store.clone(),
            shutdown.clone(),
            config.clone(),
            metrics.stage("collector"),
        );
        spawn(
            "collector",
            Box::new(move || run_collector(&store, &queue_rx, &m, &shutdown, &config)),
        )?;
    }
    let (offer_secret, _) = secret_file(&dir.join("offer-secret"), 32)?;
    {
        let (store, shutdown, keep) = (store.clone(), shutdown.clone(), args.retention);
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
                watch_patterns(&dir, &registry, &shutdown, &last_error);
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
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let address = listener.local_addr()?;
        info!(address = %address, "Serving HTTP.");
        eprintln!(
            "Clickpulse is running: dashboard http://{address}/  shop http://{address}/shop  \
             pipeline http://{address}/pipeline  (Ctrl-C stops it)"
        );
        let router = clickpulse_server::app(AppState {
            metrics: metrics.clone(),
            mode: "embedded",
            patterns: Some(PatternAdmin {
                registry: registry.clone(),
                dir: pattern_dir.clone(),
                log: transition_log.clone(),
                last_error: last_pattern_error.clone(),
                catalogue: Some(catalogue.clone()),
            }),
            admin_token: Some(Arc::from(admin_token.as_str())),
            dashboard: Some(dashboard.clone()),
            collector: Some(Collector {
                sink: sink.clone(),
                clock: clock.clone(),
                identity: Identity {
                    tokens: OfferTokens::new(offer_secret.as_bytes()),
                    trusted_proxies: Arc::from(args.trusted_proxies.clone()),
                    admin_token: Some(Arc::from(admin_token.as_str())),
                    per_client: Some(clickpulse_server::rate::PerClient::new(
                        args.collect_rate,
                        args.collect_rate.div_ceil(6).max(1),
                    )),
                },
            }),
            web: Some(WebDelivery {
                hub: hub.clone(),
                tokens: OfferTokens::new(offer_secret.as_bytes()),
            }),
            products: products.clone(),
            cors_origins: args.cors_origins.clone(),
            time_zone: Arc::from(args.time_zone.as_str()),
            privacy: Some(clickpulse_server::privacy::Privacy::new(
                OfferTokens::new(offer_secret.as_bytes()),
                args.viewer_token.as_deref().map(Arc::from),
                Some(Arc::from(admin_token.as_str())),
            )),
        });
        let stop = stop_signal(
            shutdown.clone(),
            metrics.clone(),
            store.clone(),
            args.exit_when_done,
            total,
        );
        clickpulse_server::serve(listener, router, stop).await?;
        anyhow::Ok(())
    });
    shutdown.store(true, Ordering::SeqCst);
    for worker in workers {
        if worker.join().is_err() {
            failed.store(true, Ordering::SeqCst);
        }
    }
    result?;
    if failed.load(Ordering::SeqCst) {
        let cause = first_failure.lock().expect("failure lock").take();
        bail!(
            "{}",
            cause.unwrap_or_else(|| "a stage failed; see the log above".to_owned())
        );
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
    shutdown: Arc<AtomicBool>,
    metrics: Arc<PipelineMetrics>,
    store: Arc<EmbeddedStore>,
    exit_when_done: bool,
    total: u64,
) {
    let progress = progress_bar(total);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    loop {
        #[cfg(unix)]
        let terminate = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let terminate = std::future::pending::<()>();
        tokio::select! {
            _ = &mut ctrl_c => { info!("Ctrl-C: shutting down."); break; }
            _ = terminate => { info!("SIGTERM: shutting down."); break; }
            _ = tick.tick() => {
                if shutdown.load(Ordering::SeqCst) {
                    warn!("Shutting down after a stage failure.");
                    break;
                }
                metrics.set_topics(store.topic_summary());
                let replay = metrics.stage("replay");
                if let Some(pb) = &progress {
                    pb.set_position(replay.events() % total.max(1));
                }
                if exit_when_done && replay.is_done() && caught_up(&metrics, replay.events()) {
                    info!("Replay ended and every stage caught up.");
                    break;
                }
            }
        }
    }
    if let Some(pb) = progress {
        pb.finish_and_clear();
    }
    shutdown.store(true, Ordering::SeqCst);
}

/// Every second, deletes consumed records beyond the newest `keep` of each partition, so the
/// data dir stays bounded however long the demo loops, and the appends reuse the space freed
/// (pages the kernel still holds) instead of growing the file: writing fresh file pages cost
/// this machine 11× more than rewriting cached ones (BENCHMARKS.md, "Thirteenth session").
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
                .any(|t| *t == topics::CLICK_DATA || *t == topics::ENRICHED_CLICK_DATA)
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
}

/// Writes the bundled seed patterns into an empty, new pattern directory.
pub(crate) fn seed_patterns(dir: &PatternDir) -> Result<()> {
    let empty = std::fs::read_dir(dir.path())?.next().is_none();
    if empty {
        for (file, text) in bundled::PATTERNS {
            std::fs::write(dir.path().join(file), text)?;
        }
        info!(dir = %dir.path().display(), "Seed patterns written.");
    }
    Ok(())
}

/// Polls the pattern directory once a second; a valid change replaces the active patterns, an
/// invalid one is logged (and shown in `/api/patterns`) while the old patterns keep running.
/// Polling works on every filesystem and a second is well within what a marketer notices.
pub(crate) fn watch_patterns(
    dir: &PatternDir,
    registry: &PatternRegistry,
    shutdown: &AtomicBool,
    last_error: &Mutex<Option<String>>,
) {
    let mut seen = dir.fingerprint();
    while !shutdown.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_millis(250));
        let now = dir.fingerprint();
        if now == seen {
            continue;
        }
        thread::sleep(Duration::from_millis(100)); // let a writer finish
        // The admin API's changes are made under this lock (file, reload, swap as one step):
        // a reload outside it could swap in a set read before a change, dropping an active
        // pattern until the next reload.
        let _writes = PatternAdmin::lock_writes();
        seen = dir.fingerprint();
        match dir.load() {
            Ok(set) if set == *registry.current() => {}
            Ok(set) => {
                let names: Vec<String> = set
                    .patterns()
                    .iter()
                    .map(|p| format!("{}@{}", p.name, p.version))
                    .collect();
                info!(patterns = ?names, "Patterns reloaded.");
                registry.replace(set);
                *last_error.lock().expect("last error lock") = None;
            }
            Err(errors) => {
                warn!(%errors, "Pattern change rejected; the previous patterns keep running.");
                *last_error.lock().expect("last error lock") = Some(errors.to_string());
            }
        }
    }
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

/// The sources' event-time frontier for the live aggregate: the clock (or the replay's next
/// event while it catches up), read first; then whether everything published since has reached
/// the aggregate's input, checked upstream first — the collector's queue, then `click-data`
/// (enrich commits its outputs with its offsets), then that no commit is still publishing what
/// it appended. The aggregate checks its own input's backlog itself. An event that moves
/// downstream between two of these checks was published after the clock was read, so it is not
/// behind the frontier.
fn live_frontier(
    store: &Arc<EmbeddedStore>,
    clock: &Arc<EventClock>,
    sink: &Arc<QueueSink>,
) -> FrontierFn {
    let (store, clock, sink) = (store.clone(), clock.clone(), sink.clone());
    Arc::new(move || {
        let low_ms = clock.frontier_ms()?;
        let drained = sink.pending() == 0
            && (0..store.partitions(topics::CLICK_DATA).unwrap_or(0)).all(|p| {
                store
                    .committed("enrich", topics::CLICK_DATA, p)
                    .is_ok_and(|next| next >= store.end_offset(topics::CLICK_DATA, p))
            })
            // Enrich's offsets are visible a moment before the records committed with them
            // (the ends are published after the transaction): wait that moment out.
            && !store.publishing();
        Some(Frontier { low_ms, drained })
    })
}

/// Feeds `POST /collect` into the collector stage through a queue bounded in clicks: when it is
/// full the collector answers 503 instead of buffering without limit.
pub(crate) struct QueueSink {
    queue: std::sync::mpsc::SyncSender<CollectedBatch>,
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    max_in_flight: usize,
}

impl QueueSink {
    /// A sink into `queue` holding at most `max_in_flight` clicks not yet durable.
    pub(crate) fn new(
        queue: std::sync::mpsc::SyncSender<CollectedBatch>,
        max_in_flight: usize,
    ) -> Self {
        QueueSink {
            queue,
            in_flight: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            max_in_flight,
        }
    }
}

impl QueueSink {
    /// Clicks handed to the sink and not yet durable (or failed).
    pub(crate) fn pending(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
}

impl ClickSink for QueueSink {
    fn offer(
        &self,
        clicks: Vec<Click>,
        dead_letters: Vec<DeadLetter>,
    ) -> Result<oneshot::Receiver<Result<(), String>>, SinkFull> {
        let n = clicks.len() + dead_letters.len();
        let before = self.in_flight.fetch_add(n, Ordering::SeqCst);
        if before + n > self.max_in_flight {
            self.in_flight.fetch_sub(n, Ordering::SeqCst);
            return Err(SinkFull);
        }
        let (tx, rx) = oneshot::channel();
        let in_flight = self.in_flight.clone();
        let batch = CollectedBatch {
            clicks,
            dead_letters,
            ack: Box::new(move |outcome| {
                in_flight.fetch_sub(n, Ordering::SeqCst);
                let _ = tx.send(outcome);
            }),
        };
        self.queue.try_send(batch).map_err(|_| {
            self.in_flight.fetch_sub(n, Ordering::SeqCst);
            SinkFull
        })?;
        Ok(rx)
    }
}

/// The catalogue as the shop shows it (the home page is not a product).
pub(crate) fn shop_products(
    lookups: &clickpulse_engine::lookups::Lookups,
) -> Vec<serde_json::Value> {
    lookups
        .products()
        .iter()
        .filter(|p| p.price.is_some())
        .map(|p| {
            let image = format!("products/{}.png", p.id);
            serde_json::json!({
                "id": p.id,
                "category": p.category,
                "title": p.title,
                "description": p.description,
                "price": p.price,
                "image_url": format!("/images/{image}"),
            })
        })
        .collect()
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
