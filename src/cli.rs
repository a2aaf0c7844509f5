//! The command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use clickpulse_engine::replay::Speed;

/// Real-time clickstream analytics and behaviour-triggered personalization.
#[derive(Debug, Parser)]
#[command(name = "clickpulse", version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the whole pipeline embedded: replay the bundled log in event time, enrich, and serve
    /// HTTP. State lives durably in the data dir; a restart resumes where it stopped.
    Demo(DemoArgs),
    /// Run the same operators over whole log files as fast as possible and report.
    Backtest(BacktestArgs),
    /// Work with behaviour pattern files.
    #[command(subcommand)]
    Patterns(PatternsCommand),
    /// Write a scale-test log in the Omniture layout with the real log's statistics.
    Generate(GenerateArgs),
    /// Run a benchmark and print its figures.
    Bench(BenchArgs),
    /// Read a topic of a data dir.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Print a short summary of what a data dir holds: each stage's events, dead letters and
    /// lag, topic sizes, the replay's last commit, the offers (`--json` for every counter,
    /// `--keys` for the raw state).
    /// Read-only: creates nothing. While a demo runs on the data dir it points to the demo's
    /// live figures (GET /api/stats, /pipeline) instead.
    Status(StatusArgs),
    /// Check a data dir end to end (every record's checksum, offsets, state, redb's pages) and
    /// list what is damaged: exit 0 when clean, 1 when not. Read-only.
    Verify(VerifyArgs),
    /// Manage the lookups (visitor demographics, product catalogue).
    #[command(subcommand)]
    Lookups(LookupsCommand),
    /// Run stages of the distributed pipeline (Kafka-protocol broker + Redis) in this process.
    Run(RunArgs),
    /// Work with `clickpulse.toml`, the distributed pipeline's configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Webhooks: a new signing secret; send the dead letters again.
    #[command(subcommand)]
    Webhooks(WebhooksCommand),
    /// Fault injection: run the pipeline as child processes, `kill -9` them at random moments,
    /// restart them, and compare the result with an uninterrupted backtest (exit 1 on any
    /// difference).
    Chaos(ChaosArgs),
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// The configuration, from a file and flags.
    #[command(flatten)]
    pub(crate) config: ConfigArgs,
    /// Delete the data dir's contents first.
    #[arg(long)]
    pub(crate) reset: bool,
    /// Exit once the replay has ended and every stage has caught up (for scripts and tests).
    #[arg(long)]
    pub(crate) exit_when_done: bool,
}

/// `clickpulse.toml` and the flags that override it, the same for `demo` and `run`. A flag
/// wins over its environment variable, which wins over the file, which wins over the default.
/// The defaults are the configuration's (`config/clickpulse.example.toml` documents each).
#[derive(Debug, Default, Args)]
pub(crate) struct ConfigArgs {
    /// The configuration file (TOML; see config/clickpulse.example.toml and
    /// docs/deployment.md) [default: none: every setting at its default].
    #[arg(long, value_name = "FILE", env = "CLICKPULSE_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Where durable state lives (embedded) [default: $XDG_DATA_HOME/clickpulse or
    /// ~/.local/share/clickpulse] (`embedded.data_dir`).
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Address to serve HTTP on [default: 127.0.0.1:8080] (`web.listen`).
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<SocketAddr>,
    /// How fast event time runs: N× real time, or `max`. The default, 1, is the real clock;
    /// anything else is for tests and experiments (the pages then say so) (`replay.speed`).
    #[arg(long)]
    pub(crate) speed: Option<Speed>,
    /// With --original-time: replay forever, shifting each pass by the log's span (whole
    /// days). (The default live replay always runs on, day after day.) (`replay.loop_forever`)
    #[arg(long = "loop")]
    pub(crate) loop_forever: bool,
    /// Replay the log's original timestamps from its first event, once (what reproducible
    /// tests use). By default the log's days are laid over one day and replayed on the real
    /// clock: event time is the wall time, 8 hours are replayed at once on a new data dir (to
    /// fill the dashboard), then each second of today shows what happened at that time of day
    /// on every day of the log, for ever (`replay.original_time`).
    #[arg(long)]
    pub(crate) original_time: bool,
    /// Add the shop interactions the log's sessions would have had (searches, carts,
    /// checkouts, orders at published rates): `auto` (for the bundled log on the real clock),
    /// `on` or `off` [default: auto] (`replay.interactions`).
    #[arg(long, value_name = "auto|on|off")]
    pub(crate) interactions: Option<clickpulse_components::config::Interactions>,
    /// Logs to replay (Omniture TSV, JSON lines or Snowplow enriched events, plain, gzip or
    /// Zstandard) [default: the bundled acme.com log] (`replay.logs`).
    #[arg(long = "log", value_name = "FILE")]
    pub(crate) logs: Vec<PathBuf>,
    /// Partitions per topic of the data dir (fixed when it is created) [default: 4]
    /// (`embedded.partitions`).
    #[arg(long)]
    pub(crate) partitions: Option<u32>,
    /// Most records per commit (a stage takes what is waiting, up to this many, so large
    /// batches cost no latency when traffic is light) [default: 10000] (`pipeline.batch_size`).
    #[arg(long)]
    pub(crate) batch_size: Option<usize>,
    /// How long the stages' commits may wait for the disk, in ms: one fsync then covers every
    /// stage's commits made meanwhile, and a crash makes the stages redo at most this much
    /// work. Clicks the collector accepted are on disk before its 202 whatever this is. 0:
    /// every commit waits for the disk [default: 50] (`embedded.sync_interval_ms`).
    #[arg(long)]
    pub(crate) sync_interval_ms: Option<u64>,
    /// Dashboard windows: how far (event time) a view may trail the newest one of its partition
    /// and still count; later views are counted as late [default: 2000]
    /// (`pipeline.allowed_lateness_ms`).
    #[arg(long, value_name = "MS")]
    pub(crate) allowed_lateness_ms: Option<i64>,
    /// Dashboard windows: wall-clock silence after which a partition stops holding the
    /// watermark back (and, when all are silent, every window closes) [default: 1000 embedded,
    /// 10000 distributed] (`pipeline.idle_timeout_ms`).
    #[arg(long, value_name = "MS")]
    pub(crate) idle_timeout_ms: Option<u64>,
    /// Origins allowed to send events to the collector (`POST /collect`, the Snowplow
    /// endpoints) from their pages (repeatable; `*` for any). Same-origin pages (the demo shop)
    /// need none (`web.cors_origins`).
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    pub(crate) cors_origins: Vec<String>,
    /// The most distinct products, categories and countries the dashboard's windows hold (each);
    /// views with others count as `(other)`, so what clients send cannot grow the state
    /// (`pipeline.max_dashboard_keys`).
    #[arg(long, value_name = "N")]
    pub(crate) max_dashboard_keys: Option<usize>,
    /// Lets the holder of this token see visitor ids and IP addresses on the dashboard and in
    /// the state-machine log (open `/?viewer=TOKEN`, or send it as a bearer token); everyone
    /// else sees them pseudonymised (`web.viewer_token`).
    #[arg(long, env = "CLICKPULSE_VIEWER_TOKEN", hide_env_values = true)]
    pub(crate) viewer_token: Option<String>,
    /// The site's time zone, an IANA name such as `Europe/Berlin`: the pages show times in it
    /// (each viewer can switch to their own). Windows and days stay in UTC [default: UTC]
    /// (`web.time_zone`).
    #[arg(long, value_name = "ZONE", value_parser = parse_time_zone)]
    pub(crate) time_zone: Option<String>,
    /// Which tracker the demo shop sends its events with: `clickpulse` (`POST /collect`),
    /// `snowplow` (Snowplow's own browser tracker and e-commerce plugin, to the Snowplow
    /// endpoints: docs/sources/snowplow.md) or `segment` (Segment's analytics.js, to the Segment
    /// endpoints: docs/sources/segment.md) [default: clickpulse] (`web.shop_tracker`).
    #[arg(long, value_name = "clickpulse|snowplow|segment")]
    pub(crate) shop_tracker: Option<clickpulse_server::ShopTracker>,
    /// A write key the Segment endpoints (`POST /v1/batch`, `/v1/track`, ...) take (repeatable);
    /// without any, every key is taken (one is always required) (`web.segment_write_keys`).
    #[arg(long = "segment-write-key", value_name = "KEY")]
    pub(crate) segment_write_keys: Vec<String>,
    /// The most events a minute the collector takes from one client address (bursts of a
    /// sixth of it): more answer 429. Trusted senders (admin token, `--trusted-proxy`) are not
    /// limited [default: 6000] (`web.collect_rate`).
    #[arg(long, value_name = "VIEWS")]
    pub(crate) collect_rate: Option<u32>,
    /// A reverse proxy in front of the collector (IP address or CIDR block, repeatable): its
    /// `X-Forwarded-For` and a click's `ip` field are believed. Anyone else's are ignored
    /// (`web.trusted_proxies`).
    #[arg(long = "trusted-proxy", value_name = "IP_OR_CIDR", value_parser = parse_net)]
    pub(crate) trusted_proxies: Vec<ipnet::IpNet>,
    /// Most live clicks waiting to be stored before the collector answers 503 [default: 50000]
    /// (`web.collector_queue`).
    #[arg(long, value_name = "CLICKS")]
    pub(crate) collector_queue: Option<usize>,
    /// Records kept per topic partition once every consumer has read them (embedded)
    /// [default: 100000] (`embedded.retention`).
    #[arg(long, value_name = "RECORDS")]
    pub(crate) retention: Option<u64>,
    /// Pattern directory, watched for changes [default: embedded DATA_DIR/patterns,
    /// distributed ./patterns; seeded with the bundled seed patterns] (`pipeline.patterns`).
    #[arg(long, value_name = "DIR")]
    pub(crate) patterns: Option<PathBuf>,
    /// Funnel directory, watched for changes [default: embedded DATA_DIR/funnels, distributed
    /// ./funnels; seeded with the shop funnel] (`pipeline.funnels`).
    #[arg(long, value_name = "DIR")]
    pub(crate) funnels: Option<PathBuf>,
    /// Alert rule directory (`*.toml`, read at start; docs/alerts.md): their transitions go to
    /// the webhook endpoints and Slack webhooks that take `alert` [default: none]
    /// (`pipeline.alerts`).
    #[arg(long, value_name = "DIR")]
    pub(crate) alerts: Option<PathBuf>,
    /// Bearer token for admin endpoints [default: generated at first start, kept in
    /// DATA_DIR/admin-token (embedded) or Redis (distributed)] (`web.admin_token`).
    #[arg(long, env = "CLICKPULSE_ADMIN_TOKEN", hide_env_values = true)]
    pub(crate) admin_token: Option<String>,
    /// This web instance's name (its offer-delivery state is its own) [default: web-0]
    /// (`web.instance`).
    #[arg(long, value_name = "NAME", env = "CLICKPULSE_WEB_INSTANCE")]
    pub(crate) web_instance: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct BacktestArgs {
    /// Log files (Omniture TSV, JSON lines or Snowplow enriched events, plain, gzip or
    /// Zstandard) [default: the bundled acme.com log].
    #[arg(long = "log", value_name = "FILE")]
    pub(crate) logs: Vec<PathBuf>,
    /// Folder with the lookup files (users.json[.gz], products.json, products.tsv)
    /// [default: the bundled copies].
    #[arg(long = "data", value_name = "DIR")]
    pub(crate) data: Option<PathBuf>,
    /// Stop after the events with ts ≤ T (unix ms); the dashboard is then the snapshot as of T.
    #[arg(long, value_name = "T")]
    pub(crate) until: Option<i64>,
    /// Pattern file or directory [default: the bundled seed patterns].
    #[arg(long, value_name = "FILE_OR_DIR")]
    pub(crate) patterns: Option<PathBuf>,
    /// Funnel file or directory: the report gets each funnel over the whole log (`funnels`)
    /// [default: the shop funnel].
    #[arg(long, value_name = "FILE_OR_DIR")]
    pub(crate) funnels: Option<PathBuf>,
    /// Alert rule file or directory (`*.toml`): the report lists when each would have fired
    /// and resolved (`alerts`), judging each minute of event time once it is final (days and
    /// minutes in UTC).
    #[arg(long, value_name = "PATH")]
    pub(crate) alerts: Option<PathBuf>,
    /// Add the shop interactions the demo's live replay adds to the bundled log (the same
    /// events: searches, carts, checkouts and orders derived from the log's sessions).
    #[arg(long)]
    pub(crate) interactions: bool,
    /// Write every offer as a JSON line, sorted by (ts_ms, visitor).
    #[arg(long, value_name = "FILE")]
    pub(crate) offers_out: Option<PathBuf>,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    pub(crate) json: bool,
    /// Write each malformed row as a JSON dead letter to this file.
    #[arg(long, value_name = "FILE")]
    pub(crate) dead_letters_out: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum LookupsCommand {
    /// Load users and products into the data dir's state store.
    Load(LookupsLoadArgs),
}

#[derive(Debug, Args)]
pub(crate) struct LookupsLoadArgs {
    /// The data dir to load into [default: as for `demo`].
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Folder with users.json[.gz], products.json and products.tsv [default: the bundled copies].
    #[arg(long = "data", value_name = "DIR")]
    pub(crate) data: Option<PathBuf>,
    /// Load into this Redis instead (`redis://host:port/db`, `rediss://` for TLS), in the keys
    /// `visitor:{userId}` and `product:{id}`.
    #[arg(long, value_name = "URL", conflicts_with = "data_dir")]
    pub(crate) redis: Option<String>,
    /// The `--redis` URL is a node of a Redis Cluster.
    #[arg(long, requires = "redis")]
    pub(crate) redis_cluster: bool,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The configuration, from a file and flags.
    #[command(flatten)]
    pub(crate) config: ConfigArgs,
    /// Stages to run here: replay, collector, enrich, detect, aggregate, web, or all. Repeat
    /// the flag (or separate with commas) for several.
    #[arg(
        long = "stage",
        value_name = "STAGE",
        required = true,
        value_delimiter = ','
    )]
    pub(crate) stages: Vec<String>,
    /// This worker's id in metrics and leases [default: host name and process id].
    #[arg(long, value_name = "ID")]
    pub(crate) worker_id: Option<String>,
    /// Also serve `GET /metrics` (Prometheus) on this address: for a process that serves no
    /// pages (its stages are neither web nor collector), or to scrape on a port of its own.
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics_listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// The data dir [default: as for `demo`].
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Print the summary as JSON (per stage, topic and state-key prefix; for scripts).
    #[arg(long)]
    pub(crate) json: bool,
    /// Print every state key with its value as JSON instead of the summary (large:
    /// per-visitor state).
    #[arg(long)]
    pub(crate) keys: bool,
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The data dir [default: as for `demo`].
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Check a configuration file and report every problem at once (each with its line and
    /// column): unknown tables and keys, wrong types, values out of range, the Redis URL, the
    /// replay speed, the time zone. Connects to nothing.
    Check(ConfigCheckArgs),
}

#[derive(Debug, Subcommand)]
pub(crate) enum WebhooksCommand {
    /// Print a new signing secret (`whsec_…`) for a `[[webhooks.endpoint]]` and its receiver.
    Secret(WebhooksSecretArgs),
    /// Send the webhooks' dead letters again: asks the process that runs the webhooks stage
    /// (`POST /api/webhooks/replay`, admin token) to put them back into its outbox, with their
    /// attempts reset and the same `webhook-id`s.
    Replay(Box<WebhooksReplayArgs>),
}

#[derive(Debug, Args)]
pub(crate) struct WebhooksSecretArgs {}

#[derive(Debug, Args)]
pub(crate) struct WebhooksReplayArgs {
    /// The configuration (its `web.listen` and admin token say where and how to ask).
    #[command(flatten)]
    pub(crate) config: ConfigArgs,
    /// The process to ask [default: http://<web.listen>].
    #[arg(long)]
    pub(crate) url: Option<String>,
    /// Only this endpoint's dead letters.
    #[arg(long)]
    pub(crate) endpoint: Option<String>,
    /// Only this delivery (its `webhook-id`, the offer id).
    #[arg(long)]
    pub(crate) id: Option<String>,
    /// Also re-enable endpoints a `410 Gone` disabled.
    #[arg(long)]
    pub(crate) enable: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ConfigCheckArgs {
    /// The configuration file (see config/clickpulse.example.toml).
    pub(crate) path: PathBuf,
}

#[derive(Debug, Subcommand)]
pub(crate) enum PatternsCommand {
    /// Validate pattern files and explain what each one does. Checks every value against what
    /// exists (categories and products in the bundled catalogue, device classes, offers declared
    /// with something to show and their pictures) and reports every error of every file at
    /// once, each with file, line, column and a suggestion for a near miss.
    Check(PatternsCheckArgs),
}

#[derive(Debug, Args)]
pub(crate) struct PatternsCheckArgs {
    /// A pattern file or a directory of them.
    pub(crate) path: PathBuf,
}

#[derive(Debug, Subcommand)]
pub(crate) enum TopicsCommand {
    /// Print a topic's records as JSON lines (partition by partition, in offset order).
    Dump(TopicsDumpArgs),
}

#[derive(Debug, Args)]
pub(crate) struct TopicsDumpArgs {
    /// The topic (click-data, enriched-click-data, special-offers, dead-letters).
    pub(crate) topic: String,
    /// The data dir [default: as for `demo`].
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Print at most this many records per partition [default: no limit, every record].
    #[arg(long, value_name = "N")]
    pub(crate) limit: Option<u64>,
}

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    pub(crate) command: BenchCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Pattern state memory per visitor (active and idle) and detection throughput.
    Patterns {
        /// Distinct visitors.
        #[arg(long, default_value_t = 1_000_000)]
        visitors: usize,
    },
    /// The backtest pipeline's throughput, phase by phase, on one core.
    Backtest {
        /// Logs [default: the bundled real log].
        #[arg(long = "log", value_name = "FILE")]
        logs: Vec<PathBuf>,
        /// Runs (the median is reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// `POST /collect` under sustained load from N keep-alive connections for a bounded time.
    /// Without `--url` it serves an embedded collector (HTTP server + collector stage writing
    /// `click-data`) on a free loopback port over a temporary data dir, and afterwards counts
    /// the events in `click-data`: every accepted event must be there.
    Collector(CollectorBenchArgs),
    /// Dashboard aggregation throughput and window state for many distinct visitors.
    Windows {
        /// Distinct visitors (all active within 30 minutes).
        #[arg(long, default_value_t = 1_000_000)]
        visitors: usize,
        /// Views.
        #[arg(long, default_value_t = 2_000_000)]
        events: usize,
    },
}

#[derive(Debug, Args)]
pub(crate) struct CollectorBenchArgs {
    /// How long to send load (e.g. `10s`, `500ms`).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) duration: std::time::Duration,
    /// Concurrent keep-alive connections, each sending one request at a time.
    #[arg(long, default_value_t = 16)]
    pub(crate) connections: usize,
    /// Clicks per request (1 to 500).
    #[arg(long, default_value_t = 10)]
    pub(crate) batch: usize,
    /// The collector protocol to send: `clickpulse` (`POST /collect`), `snowplow` (`POST
    /// /com.snowplowanalytics.snowplow/tp2`, tracker-protocol page views) or `segment` (`POST
    /// /v1/batch`, page messages).
    #[arg(
        long,
        default_value = "clickpulse",
        value_name = "clickpulse|snowplow|segment"
    )]
    pub(crate) protocol: crate::bench_collector::Protocol,
    /// Load a running server instead (`http://HOST:PORT`); the topic cannot be counted then.
    #[arg(long, value_name = "URL")]
    pub(crate) url: Option<String>,
    /// Drive the embedded collector beyond capacity: its queue holds only two requests'
    /// clicks, so most requests are answered 503 with Retry-After (and none accepted is lost).
    #[arg(long, conflicts_with = "url")]
    pub(crate) overload: bool,
    /// The embedded collector's queue, in clicks (as `demo --collector-queue`).
    #[arg(
        long,
        default_value_t = 20_000,
        value_name = "CLICKS",
        conflicts_with = "url"
    )]
    pub(crate) collector_queue: usize,
    /// Also hold this many `GET /api/dashboard/stream` connections open during the load (the
    /// open-streams attack): the server's stream caps refuse the excess, and `/api/health`,
    /// asked ten times a second throughout, must keep answering.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub(crate) streams: usize,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct GenerateArgs {
    /// Distinct visitors.
    #[arg(long, default_value_t = 100_000)]
    pub(crate) visitors: usize,
    /// Days covered, from 2012-03-01.
    #[arg(long, default_value_t = 15)]
    pub(crate) days: u32,
    /// Page views to write.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) events: u64,
    /// Random seed: the same seed and arguments give the same file.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Output file (`.tsv`, or `.jsonl` with `--interactions`; add `.gz` or `.zst` to compress
    /// with gzip or Zstandard).
    #[arg(long, value_name = "FILE")]
    pub(crate) out: PathBuf,
    /// Write JSON lines whose sessions also search, add to the cart, check out and buy, at
    /// published e-commerce rates (`--events` then counts every event).
    #[arg(long)]
    pub(crate) interactions: bool,
}

/// Which deployment `clickpulse chaos` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ChaosMode {
    /// `clickpulse demo` on one data dir (every stage in one process).
    Embedded,
    /// `clickpulse run`, one process per stage, over a local tansu broker (S3 storage served by
    /// moto) and redis-server: the tools `scripts/test.sh` installs, or `CLICKPULSE_TANSU`,
    /// `CLICKPULSE_MOTO` and `redis-server` on the PATH.
    Distributed,
}

#[derive(Debug, Args)]
pub(crate) struct ChaosArgs {
    /// Log files (Omniture TSV, JSON lines or Snowplow enriched events, plain, gzip or
    /// Zstandard) [default: the bundled acme.com log].
    #[arg(long = "log", value_name = "FILE")]
    pub(crate) logs: Vec<PathBuf>,
    /// Pattern file or directory [default: the bundled seed patterns].
    #[arg(long, value_name = "DIR")]
    pub(crate) patterns: Option<PathBuf>,
    /// How many times to `kill -9` the pipeline.
    #[arg(long, default_value_t = 20)]
    pub(crate) kills: u32,
    /// Seed of the kill schedule.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// The deployment under test.
    #[arg(long, value_enum, default_value_t = ChaosMode::Embedded)]
    pub(crate) mode: ChaosMode,
    /// Mean wall time a restarted process lives before the next kill [default: 400 embedded,
    /// 3000 distributed].
    #[arg(long, value_name = "MS")]
    pub(crate) mean_interval_ms: Option<u64>,
    /// Where the run's data dir and process logs go (a new folder inside) [default: the
    /// system temp dir]. Kept when the run fails, removed otherwise.
    #[arg(long, value_name = "DIR")]
    pub(crate) work_dir: Option<PathBuf>,
    /// The whole run's deadline (`90s`, `10m`): past it, chaos stops every process it started,
    /// reports `"ok": false` with which stage was not done (its events, lag, pending views and
    /// watermark), keeps the work dir and exits 1, instead of waiting for ever.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub(crate) deadline: std::time::Duration,
    /// Embedded mode: the pipeline's configuration (`[webhooks]` endpoints, …); the report
    /// then lists the webhook deliveries still in the outbox at the end (`webhooks_pending`).
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Distributed mode: do not restart the broker during the run (Redis is still restarted).
    #[arg(long)]
    pub(crate) skip_broker_restart: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
}

/// An IP address (a /32 or /128) or a CIDR block.
fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is not an IP address or CIDR block"))
}

/// An IANA time zone name (`Europe/Berlin`, `UTC`), as the tz database spells it.
pub(crate) fn parse_time_zone(name: &str) -> Result<String, String> {
    clickpulse_components::config::parse_time_zone(name)
}
