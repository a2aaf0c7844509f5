//! `clickpulse.toml`: one configuration for both runtimes. `demo` (embedded) and `run`
//! (distributed) read the same file, with the same defaults, and take the same flags as
//! overrides, by one rule: a flag wins over its environment variable, which wins over the
//! file, which wins over the default. Every table and field is documented in
//! `config/clickpulse.example.toml`; unknown ones are errors, and [`check`] reports every
//! problem of a file at once.

use std::net::SocketAddr;
use std::path::PathBuf;

use std::sync::Arc;

use clickpulse_connectors::distributed::store::RedisStore;
use clickpulse_connectors::distributed::{KafkaConfig, RedisConfig};
use clickpulse_connectors::replay_cursor::ReplayOptions;
use clickpulse_engine::replay::{Speed, WARMUP_MS};
use clickpulse_server::collector::Identity;
use clickpulse_server::offers::OfferTokens;
use serde::Deserialize;

use crate::sinks::webhook::config::WebhooksConfig;
use crate::sources::{SOURCES, SourceTables};

/// The whole configuration: the core tables, and the tables of the sources that have one
/// ([`crate::sources::SourceTable`]). Read by [`check`].
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// The brokers and topics (distributed).
    pub kafka: KafkaConfig,
    /// Redis (distributed).
    pub redis: RedisConfig,
    /// The operators.
    pub pipeline: PipelineConfig,
    /// The log replay.
    pub replay: ReplayConfig,
    /// The HTTP server: pages, collector, offer delivery.
    pub web: WebConfig,
    /// The embedded runtime's data dir.
    pub embedded: EmbeddedConfig,
    /// Where offers go by webhook.
    pub webhooks: WebhooksConfig,
    /// The tables of the sources that have one, where present (`[postgres]`, `[snowplow]`):
    /// a source with a table runs only where it is configured.
    pub sources: SourceTables,
}

/// The core tables of [`Config`], in the file's documented order.
pub const CORE_TABLES: [&str; 7] = [
    "kafka", "redis", "pipeline", "replay", "web", "embedded", "webhooks",
];

/// Every table a file may have: the core tables, then the sources' ([`SOURCES`]).
pub fn tables() -> Vec<&'static str> {
    CORE_TABLES
        .into_iter()
        .chain(SOURCES.iter().filter_map(|s| Some(s.table.as_ref()?.name)))
        .collect()
}

/// `[pipeline]`: the operators.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Most records a stage processes, publishes and commits as one batch (a stage takes what
    /// is waiting, up to this many, so large batches cost no latency when traffic is light).
    pub batch_size: usize,
    /// Dashboard windows: how far (event time) a view may trail the newest one of its
    /// partition and still count.
    pub allowed_lateness_ms: i64,
    /// Dashboard windows: wall-clock silence after which a partition stops holding the
    /// watermark back [default: [`IDLE_TIMEOUT_EMBEDDED_MS`] embedded,
    /// [`IDLE_TIMEOUT_DISTRIBUTED_MS`] distributed].
    pub idle_timeout_ms: Option<u64>,
    /// The most distinct products, categories and countries the dashboard's windows hold.
    pub max_dashboard_keys: usize,
    /// Pattern directory, watched for changes [default: embedded, `DATA_DIR/patterns`;
    /// distributed, `./patterns`; seeded with the bundled seed patterns when empty].
    pub patterns: Option<PathBuf>,
    /// Funnel directory, watched for changes [default: embedded, `DATA_DIR/funnels`;
    /// distributed, `./funnels`; seeded with the shop funnel when empty].
    pub funnels: Option<PathBuf>,
    /// Alert rule directory (`*.toml`, read at start; see docs/alerts.md) [default: none].
    pub alerts: Option<PathBuf>,
}

/// The idle timeout's default in one process: every stage is in it, so silence is silence.
pub const IDLE_TIMEOUT_EMBEDDED_MS: u64 = 1_000;
/// The idle timeout's default across processes: a partition must not count as idle while an
/// upstream worker is merely restarting or rebalancing.
pub const IDLE_TIMEOUT_DISTRIBUTED_MS: u64 = 10_000;

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            batch_size: 10_000,
            allowed_lateness_ms: 2_000,
            idle_timeout_ms: None,
            max_dashboard_keys: clickpulse_engine::window::dashboard::DEFAULT_MAX_KEYS,
            patterns: None,
            funnels: None,
            alerts: None,
        }
    }
}

impl PipelineConfig {
    /// The idle timeout in effect (`distributed`: whether the stages are separate processes).
    pub fn idle_timeout_ms(&self, distributed: bool) -> u64 {
        self.idle_timeout_ms.unwrap_or(if distributed {
            IDLE_TIMEOUT_DISTRIBUTED_MS
        } else {
            IDLE_TIMEOUT_EMBEDDED_MS
        })
    }
}

/// `[replay]`: the log replay.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplayConfig {
    /// Log files [default: the bundled acme.com log].
    pub logs: Vec<PathBuf>,
    /// `max` or N× real time (a string: `"1"`); 1 is the real clock.
    pub speed: String,
    /// With `original_time`: replay forever, shifting each pass by the log's span.
    pub loop_forever: bool,
    /// Replay the log's own timestamps from its first event, once, instead of laying its days
    /// over one day on the real clock.
    pub original_time: bool,
    /// Whether the replay adds the shop interactions the log's sessions would have had.
    pub interactions: Interactions,
}

/// Whether the replay adds shop interactions (searches, carts, checkouts, orders at published
/// rates) to the log's sessions, so the conversion panels and funnels are alive without anyone
/// clicking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interactions {
    /// For the bundled log on the real clock (the demo as a user sees it); not for other logs
    /// or `original_time` (reproducible runs see the log as it is).
    #[default]
    Auto,
    /// Always.
    On,
    /// Never.
    Off,
}

impl std::str::FromStr for Interactions {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Interactions::Auto),
            "on" => Ok(Interactions::On),
            "off" => Ok(Interactions::Off),
            other => Err(format!("{other:?} is not auto, on or off")),
        }
    }
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            logs: Vec::new(),
            speed: "1".to_owned(),
            loop_forever: false,
            original_time: false,
            interactions: Interactions::Auto,
        }
    }
}

impl ReplayConfig {
    /// Whether the replay adds shop interactions to the log ([`Interactions`]).
    pub fn adds_interactions(&self) -> bool {
        match self.interactions {
            Interactions::Auto => self.logs.is_empty() && !self.original_time,
            Interactions::On => true,
            Interactions::Off => false,
        }
    }

    /// The speed (checked by [`check`]).
    pub fn speed(&self) -> Result<Speed, String> {
        self.speed.parse()
    }

    /// How the replay runs: live (the log's days laid over one day on the real clock, aligned
    /// with the present) unless `original_time`.
    pub fn options(&self) -> Result<ReplayOptions, String> {
        let live = !self.original_time;
        Ok(ReplayOptions {
            speed: self.speed().map_err(|e| format!("replay.speed: {e}"))?,
            loop_forever: self.loop_forever,
            align_warmup_ms: live.then_some(WARMUP_MS),
            overlay: live,
        })
    }
}

/// `[web]`: the HTTP server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// Address to serve HTTP on.
    pub listen: SocketAddr,
    /// This web instance's name (distributed): its offer-delivery state is its own.
    pub instance: String,
    /// Origins allowed to send events to the collector (`POST /collect`, the Snowplow endpoints)
    /// from their pages (`*`: any).
    pub cors_origins: Vec<String>,
    /// Most live clicks accepted and not yet durable before `/collect` answers 503.
    pub collector_queue: usize,
    /// Admin bearer token [default: `CLICKPULSE_ADMIN_TOKEN`, else generated once and kept in
    /// the data dir (embedded) or Redis (distributed)].
    pub admin_token: Option<String>,
    /// Reverse proxies (IP addresses or CIDR blocks) whose `X-Forwarded-For` and click `ip`
    /// fields the collector believes.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The most events a minute the collector takes from one client address.
    pub collect_rate: u32,
    /// Who may see visitor ids and addresses on the dashboard [default:
    /// `CLICKPULSE_VIEWER_TOKEN`; none: everyone sees them pseudonymised].
    pub viewer_token: Option<String>,
    /// The site's time zone (IANA name): the pages show times in it.
    pub time_zone: String,
    /// Which tracker the demo shop sends its events with: `clickpulse` (`POST /collect`),
    /// `snowplow` (Snowplow's browser tracker, to the Snowplow endpoints) or `segment`
    /// (Segment's analytics.js, to the Segment endpoints).
    pub shop_tracker: clickpulse_server::ShopTracker,
    /// The write keys the Segment endpoints (`/v1/...`) take; empty: any (one is always
    /// required, as Segment requires it).
    pub segment_write_keys: Vec<String>,
}

impl WebConfig {
    /// The collector's rules on identity: visitor tokens under `tokens`, these trusted proxies
    /// and this per-client rate (bursts of a sixth of it), senders with `admin_token` trusted.
    pub fn identity(&self, tokens: OfferTokens, admin_token: Option<Arc<str>>) -> Identity {
        Identity {
            tokens,
            trusted_proxies: Arc::from(self.trusted_proxies.clone()),
            admin_token,
            per_client: Some(clickpulse_server::rate::PerClient::new(
                self.collect_rate,
                self.collect_rate.div_ceil(6).max(1),
            )),
        }
    }
}

/// The most page views a minute from one client address, by default.
pub const DEFAULT_COLLECT_RATE: u32 = 6_000;

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            listen: "127.0.0.1:8080".parse().expect("valid address"),
            instance: "web-0".to_owned(),
            cors_origins: Vec::new(),
            collector_queue: 50_000,
            admin_token: None,
            trusted_proxies: Vec::new(),
            collect_rate: DEFAULT_COLLECT_RATE,
            viewer_token: None,
            time_zone: "UTC".to_owned(),
            shop_tracker: clickpulse_server::ShopTracker::Clickpulse,
            segment_write_keys: Vec::new(),
        }
    }
}

/// `[embedded]`: the data dir of `clickpulse demo`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedConfig {
    /// Where durable state lives [default: `$XDG_DATA_HOME/clickpulse` or
    /// `~/.local/share/clickpulse`].
    pub data_dir: Option<PathBuf>,
    /// Partitions per topic (fixed when the data dir is created).
    pub partitions: u32,
    /// How long the stages' commits may wait for the disk, in ms (one fsync then covers every
    /// stage's commits made meanwhile; the collector's are durable before its 202 whatever
    /// this is). 0: every commit waits for the disk.
    pub sync_interval_ms: u64,
    /// Records kept per topic partition once every consumer has read them.
    pub retention: u64,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            data_dir: None,
            partitions: 4,
            sync_interval_ms: 50,
            retention: 100_000,
        }
    }
}

/// What the types cannot say about a configuration (ranges, the Redis URL, the speed, the time
/// zone): each problem as `table.field: what`.
pub fn problems(config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    problems.extend(kafka_problems(&config.kafka));
    problems.extend(redis_problems(&config.redis));
    problems.extend(pipeline_problems(&config.pipeline));
    problems.extend(replay_problems(&config.replay));
    problems.extend(web_problems(&config.web));
    problems.extend(embedded_problems(&config.embedded));
    problems.extend(config.webhooks.problems());
    for source in SOURCES {
        if let Some(table) = &source.table {
            problems.extend(config.sources.problems(table.name));
        }
    }
    problems
}

fn kafka_problems(kafka: &KafkaConfig) -> Vec<String> {
    kafka
        .validate()
        .err()
        .map(|e| e.to_string())
        .into_iter()
        .collect()
}

fn redis_problems(redis: &RedisConfig) -> Vec<String> {
    match RedisStore::open(redis, None) {
        Ok(_) => Vec::new(),
        Err(e) => vec![format!("redis.url: {e}")],
    }
}

fn pipeline_problems(pipeline: &PipelineConfig) -> Vec<String> {
    let mut problems = Vec::new();
    if pipeline.batch_size == 0 {
        problems.push("pipeline.batch_size must be at least 1".to_owned());
    }
    if pipeline.max_dashboard_keys == 0 {
        problems.push("pipeline.max_dashboard_keys must be at least 1".to_owned());
    }
    problems
}

fn replay_problems(replay: &ReplayConfig) -> Vec<String> {
    replay
        .speed()
        .err()
        .map(|e| format!("replay.speed: {e}"))
        .into_iter()
        .collect()
}

fn web_problems(web: &WebConfig) -> Vec<String> {
    parse_time_zone(&web.time_zone)
        .err()
        .map(|e| format!("web.time_zone: {e}"))
        .into_iter()
        .collect()
}

fn embedded_problems(embedded: &EmbeddedConfig) -> Vec<String> {
    if embedded.partitions == 0 {
        vec!["embedded.partitions must be at least 1".to_owned()]
    } else {
        Vec::new()
    }
}

fn webhooks_problems(webhooks: &WebhooksConfig) -> Vec<String> {
    webhooks.problems()
}

/// Every problem of a `clickpulse.toml`, each with its file and (where it has one) line and
/// column, and the configuration when there is none. A syntax error stops there; otherwise each
/// table is checked on its own, so a mistake in one does not hide those in the others, and
/// then what the types cannot say.
pub fn check(file: &str, text: &str) -> (Option<Config>, Vec<String>) {
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
    let tables = tables();
    for (key, _) in doc.get_ref() {
        if !tables.contains(&key.get_ref().as_ref()) {
            errors.push(at(
                Some(key.span()),
                &format!(
                    "unknown table `{}`; expected one of {}",
                    key.get_ref(),
                    tables.join(", ")
                ),
            ));
        }
    }
    // Each table alone (the others ignored), so every table's first mistake is reported, and
    // the checks of the tables that are well-formed run too.
    macro_rules! table {
        ($name:ident: $ty:ty, $problems:ident) => {{
            #[derive(Deserialize)]
            struct Only {
                #[serde(default)]
                $name: $ty,
            }
            match toml::from_str::<Only>(text) {
                Ok(only) => {
                    errors.extend(
                        $problems(&only.$name)
                            .into_iter()
                            .map(|p| format!("{file}: {p}")),
                    );
                    Some(only.$name)
                }
                Err(e) => {
                    errors.push(de(e));
                    None
                }
            }
        }};
    }
    let kafka = table!(kafka: KafkaConfig, kafka_problems);
    let redis = table!(redis: RedisConfig, redis_problems);
    let pipeline = table!(pipeline: PipelineConfig, pipeline_problems);
    let replay = table!(replay: ReplayConfig, replay_problems);
    let web = table!(web: WebConfig, web_problems);
    let embedded = table!(embedded: EmbeddedConfig, embedded_problems);
    let webhooks = table!(webhooks: WebhooksConfig, webhooks_problems);
    let mut sources = Some(SourceTables::default());
    for table in SOURCES.iter().filter_map(|s| s.table.as_ref()) {
        match table.parse(text) {
            Ok(Some(parsed)) => {
                errors.extend(parsed.problems.iter().map(|p| format!("{file}: {p}")));
                if let Some(sources) = &mut sources {
                    sources.add(parsed);
                }
            }
            Ok(None) => {}
            Err(e) => {
                errors.push(de(e));
                sources = None;
            }
        }
    }
    let (
        Some(kafka),
        Some(redis),
        Some(pipeline),
        Some(replay),
        Some(web),
        Some(embedded),
        Some(webhooks),
        Some(sources),
    ) = (
        kafka, redis, pipeline, replay, web, embedded, webhooks, sources,
    )
    else {
        return (None, errors);
    };
    let config = Config {
        kafka,
        redis,
        pipeline,
        replay,
        web,
        embedded,
        webhooks,
        sources,
    };
    (Some(config), errors)
}

/// An IANA time zone's canonical name, or what is wrong with `name` (with suggestions).
pub fn parse_time_zone(name: &str) -> Result<String, String> {
    match name.parse::<chrono_tz::Tz>() {
        Ok(tz) => Ok(tz.name().to_owned()),
        Err(_) => {
            let lower = name.to_ascii_lowercase();
            let near: Vec<&str> = chrono_tz::TZ_VARIANTS
                .iter()
                .map(|tz| tz.name())
                .filter(|n| {
                    n.eq_ignore_ascii_case(name)
                        || n.rsplit('/')
                            .next()
                            .is_some_and(|city| city.eq_ignore_ascii_case(&lower.replace(' ', "_")))
                })
                .take(3)
                .collect();
            Err(if near.is_empty() {
                format!(
                    "{name:?} is not a time zone of the tz database (names look like \
                     \"Europe/Berlin\", \"America/New_York\" or \"UTC\")"
                )
            } else {
                format!(
                    "{name:?} is not a time zone of the tz database: did you mean {}?",
                    near.iter()
                        .map(|n| format!("{n:?}"))
                        .collect::<Vec<_>>()
                        .join(" or ")
                )
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_every_default_and_both_runtimes_share_them() {
        let (config, errors) = check("c.toml", "");
        assert_eq!(errors, Vec::<String>::new());
        let config = config.unwrap();
        assert_eq!(config.pipeline.batch_size, 10_000);
        assert_eq!(config.web.collector_queue, 50_000);
        assert_eq!(
            config.pipeline.idle_timeout_ms(false),
            IDLE_TIMEOUT_EMBEDDED_MS
        );
        assert_eq!(
            config.pipeline.idle_timeout_ms(true),
            IDLE_TIMEOUT_DISTRIBUTED_MS
        );
        assert_eq!(config.embedded.partitions, 4);
    }

    #[test]
    fn a_value_the_types_allow_but_the_pipeline_cannot_use_is_named() {
        let (_, errors) = check(
            "c.toml",
            "[embedded]\npartitions = 0\n[pipeline]\nmax_dashboard_keys = 0\n",
        );
        assert_eq!(
            errors,
            [
                "c.toml: pipeline.max_dashboard_keys must be at least 1",
                "c.toml: embedded.partitions must be at least 1",
            ]
        );
    }
}
