//! Redis: lookups in the original's key layout, operator state committed atomically with the
//! input offsets, leases for single-instance stages, and what the web stage serves (dashboard
//! snapshot, per-worker metrics, the `state_logs` transition stream, the event clock).
//!
//! | key | type | content |
//! |---|---|---|
//! | `product:{id}` | hash | `cat`, `title` (+ `description`, `image`, `price`) |
//! | `visitor:{userId}` | hash | `birthday` (`YYYY-MM-DD`), `gender` (`M`/`F`) |
//! | `{prefix}:state:{stage}:{task}` | hash | `s:{key}` operator state, `offset:{topic}:{p}` next input offset, `out:{topic}:{p}` output position, `src:{topic}:{p}` newest input lineage, `counts` |
//! | `{prefix}:lease:{stage}` | string | worker id of the single active instance (PX expiry) |
//! | `{prefix}:dashboard` | string | the dashboard snapshot (JSON) |
//! | `{prefix}:metrics:{stage}` | hash | worker id → its counters (JSON, with `ts_ms`) |
//! | `{prefix}:clock` | string | the replay's event clock (JSON) |
//! | `{prefix}:replay` | string | the replay's position (JSON) |
//! | `{prefix}:secrets` | hash | `admin_token`, `offer_secret` shared by the web instances |
//! | `state_logs` | stream | the pattern transition log, capped at `state_log_max_len` |

use clickpulse_engine::metrics::{StageStats, WorkerStats};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clickpulse_engine::click::Gender;
use clickpulse_engine::lookups::{LookupSource, Lookups, Product, User};
use redis::cluster::{ClusterClient, ClusterConnection};
use redis::{
    Cmd, Connection, ConnectionLike, ErrorKind, FromRedisValue, IntoConnectionInfo, Pipeline,
    RedisError, RedisResult, Value,
};
use tracing::{info, warn};

use super::{DistributedError, RedisConfig};

/// The stream of pattern transitions.
pub const STATE_LOGS: &str = "state_logs";

/// A connection to one Redis server or to a Redis Cluster.
pub enum RedisConn {
    /// One server.
    Single(Connection),
    /// A cluster: commands go to the node of their key's slot.
    Cluster(Box<ClusterConnection>),
}

impl RedisConn {
    /// Runs a pipeline of independent commands on any keys: one round trip to a single server,
    /// one per node in a cluster (a plain pipeline would go to one node whole).
    pub fn pipeline<T: FromRedisValue>(&mut self, pipe: &Pipeline) -> RedisResult<T> {
        match self {
            RedisConn::Single(c) => pipe.query(c),
            RedisConn::Cluster(c) => {
                let mut cluster = redis::cluster::cluster_pipe();
                for cmd in pipe.cmd_iter() {
                    cluster.add_command(cmd.clone());
                }
                cluster.query(c)
            }
        }
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(cmd, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn req_command(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        match self {
            RedisConn::Single(c) => c.req_command(cmd),
            RedisConn::Cluster(c) => c.req_command(cmd),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }

    fn check_connection(&mut self) -> bool {
        match self {
            RedisConn::Single(c) => c.check_connection(),
            RedisConn::Cluster(c) => c.check_connection(),
        }
    }

    fn is_open(&self) -> bool {
        match self {
            RedisConn::Single(c) => c.is_open(),
            RedisConn::Cluster(c) => c.is_open(),
        }
    }
}

enum RedisClient {
    Single(redis::Client),
    Cluster(ClusterClient),
}

impl RedisClient {
    fn connect(&self) -> RedisResult<RedisConn> {
        match self {
            RedisClient::Single(client) => {
                let c = client.get_connection_with_timeout(Duration::from_secs(5))?;
                let _ = c.set_read_timeout(Some(Duration::from_secs(30)));
                Ok(RedisConn::Single(c))
            }
            RedisClient::Cluster(client) => {
                Ok(RedisConn::Cluster(Box::new(client.get_connection()?)))
            }
        }
    }
}

/// A Redis connection that reconnects and retries transient failures with backoff.
pub struct RedisStore {
    client: RedisClient,
    conn: Option<RedisConn>,
    prefix: String,
    shutdown: Option<Arc<AtomicBool>>,
    /// Retried failures, for the metrics.
    pub retries: u64,
}

fn transient(e: &RedisError) -> bool {
    // A MULTI/EXEC refused while Redis loads its data after a restart reports the cause inside
    // an aborted-transaction error.
    let text = e.to_string().to_ascii_lowercase();
    // A certificate Redis's TLS cannot be verified against will not verify on a retry either.
    if text.contains("certificate verify failed") || text.contains("ssl handshake error") {
        return false;
    }
    text.contains("loading")
        || e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(
            e.kind(),
            ErrorKind::Server(redis::ServerErrorKind::BusyLoading)
                | ErrorKind::Server(redis::ServerErrorKind::TryAgain)
                | ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
                | ErrorKind::Server(redis::ServerErrorKind::MasterDown)
        )
}

impl RedisStore {
    /// A store for `config`; connects lazily. `shutdown` ends retries.
    pub fn open(
        config: &RedisConfig,
        shutdown: Option<Arc<AtomicBool>>,
    ) -> Result<Self, DistributedError> {
        let mut info = config.url.as_str().into_connection_info()?;
        let mut settings = info.redis_settings().clone();
        if let Some(user) = &config.username {
            settings = settings.set_username(user);
        }
        let password = std::env::var("CLICKPULSE_REDIS_PASSWORD")
            .ok()
            .or_else(|| config.password.clone());
        if let Some(password) = password {
            settings = settings.set_password(password);
        }
        info = info.set_redis_settings(settings);
        let client = if config.cluster {
            let mut builder = ClusterClient::builder(vec![info.clone()])
                .connection_timeout(Duration::from_secs(5))
                .response_timeout(Duration::from_secs(30));
            if let Some(user) = info.redis_settings().username() {
                builder = builder.username(user);
            }
            if let Some(password) = info.redis_settings().password() {
                builder = builder.password(password);
            }
            RedisClient::Cluster(builder.build()?)
        } else {
            RedisClient::Single(redis::Client::open(info)?)
        };
        Ok(RedisStore {
            client,
            conn: None,
            prefix: config.key_prefix.clone(),
            shutdown,
            retries: 0,
        })
    }

    /// `{prefix}:{rest}`.
    pub fn key(&self, rest: &str) -> String {
        if self.prefix.is_empty() {
            rest.to_owned()
        } else {
            format!("{}:{rest}", self.prefix)
        }
    }

    /// Runs `f`, reconnecting and retrying with backoff while Redis is unreachable or loading,
    /// until it succeeds or shutdown is requested.
    pub fn run<T>(
        &mut self,
        what: &str,
        mut f: impl FnMut(&mut RedisConn) -> RedisResult<T>,
    ) -> Result<T, DistributedError> {
        let mut backoff = Duration::from_millis(50);
        loop {
            let attempt = match self.conn.as_mut() {
                Some(c) => f(c),
                None => match self.client.connect() {
                    Ok(mut c) => {
                        let r = f(&mut c);
                        self.conn = Some(c);
                        r
                    }
                    Err(e) => Err(e),
                },
            };
            match attempt {
                Ok(v) => return Ok(v),
                Err(e) if transient(&e) => {
                    self.conn = None;
                    self.retries += 1;
                    if self
                        .shutdown
                        .as_ref()
                        .is_some_and(|s| s.load(Ordering::Relaxed))
                    {
                        return Err(e.into());
                    }
                    warn!(error = %e, what, retry_in_ms = backoff.as_millis() as u64, "Redis unavailable; retrying.");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    // ---- operator state ----

    /// The key of the hash holding task `task` of stage `stage`: its operator state, offsets
    /// and output positions.
    pub fn task_key(&self, stage: &str, task: &str) -> String {
        self.key(&format!("state:{stage}:{task}"))
    }

    /// Task `task` of stage `stage`'s operator state as last committed (for inspection), the
    /// keys as the operator names them.
    pub fn operator_state(
        &mut self,
        stage: &str,
        task: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, DistributedError> {
        let key = self.task_key(stage, task);
        Ok(self.load_task(&key)?.state)
    }

    /// The stored state of a task (`{prefix}:state:{stage}:{task}`, see [`Self::task_key`]).
    pub fn load_task(&mut self, key: &str) -> Result<TaskRecord, DistributedError> {
        let fields: Vec<(String, Vec<u8>)> =
            self.run("load state", |c| redis::cmd("HGETALL").arg(key).query(c))?;
        let mut record = TaskRecord::default();
        let parse_position =
            |field: &str, value: &[u8]| -> Result<((String, u32), i64), DistributedError> {
                let corrupt = || DistributedError::Corrupt {
                    key: format!("{key} {field}"),
                    message: "expected topic:partition → offset".into(),
                };
                let (topic, p) = field.rsplit_once(':').ok_or_else(corrupt)?;
                let p = p.parse().map_err(|_| corrupt())?;
                let v = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(corrupt)?;
                Ok(((topic.to_owned(), p), v))
            };
        for (field, value) in fields {
            if let Some(k) = field.strip_prefix("s:") {
                record.state.push((k.to_owned(), value));
            } else if let Some(rest) = field.strip_prefix("offset:") {
                let (tp, v) = parse_position(rest, &value)?;
                record.offsets.insert(tp, v);
            } else if let Some(rest) = field.strip_prefix("out:") {
                let (tp, v) = parse_position(rest, &value)?;
                record.outputs.insert(tp, v);
            } else if let Some(rest) = field.strip_prefix("src:") {
                let (tp, v) = parse_position(rest, &value)?;
                record.lineage.insert(tp, v);
            } else if field == "counts" {
                record.counts =
                    serde_json::from_slice(&value).map_err(|e| DistributedError::Corrupt {
                        key: format!("{key} counts"),
                        message: e.to_string(),
                    })?;
            }
        }
        Ok(record)
    }

    /// Writes the commits of several tasks in one MULTI/EXEC: all or nothing (in a cluster, one
    /// MULTI/EXEC per task: each task's state, offsets and output positions are one hash, so
    /// each stays all or nothing on its slot).
    pub fn commit_tasks(&mut self, commits: &[TaskCommit]) -> Result<(), DistributedError> {
        if commits.is_empty() {
            return Ok(());
        }
        if matches!(self.client, RedisClient::Cluster(_)) && commits.len() > 1 {
            for c in commits {
                self.commit_tasks(std::slice::from_ref(c))?;
            }
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for c in commits {
            let mut sets: Vec<(String, Vec<u8>)> = Vec::new();
            let mut dels: Vec<String> = Vec::new();
            for (k, v) in &c.state {
                match v {
                    Some(v) => sets.push((format!("s:{k}"), v.clone())),
                    None => dels.push(format!("s:{k}")),
                }
            }
            for ((topic, p), next) in &c.offsets {
                sets.push((format!("offset:{topic}:{p}"), next.to_string().into_bytes()));
            }
            for ((topic, p), next) in &c.outputs {
                sets.push((format!("out:{topic}:{p}"), next.to_string().into_bytes()));
            }
            for ((topic, p), newest) in &c.lineage {
                sets.push((format!("src:{topic}:{p}"), newest.to_string().into_bytes()));
            }
            sets.push((
                "counts".to_owned(),
                serde_json::to_vec(&c.counts).expect("counts serialize"),
            ));
            for chunk in sets.chunks(5_000) {
                pipe.cmd("HSET").arg(&c.key);
                for (f, v) in chunk {
                    pipe.arg(f).arg(v.as_slice());
                }
                pipe.ignore();
            }
            for chunk in dels.chunks(5_000) {
                pipe.cmd("HDEL").arg(&c.key).arg(chunk).ignore();
            }
        }
        self.run("commit state", |c| pipe.query::<()>(c))
    }

    // ---- leases ----

    /// Takes or renews the lease `{prefix}:lease:{name}` for `worker`; `false` if another
    /// worker holds it.
    pub fn lease(
        &mut self,
        name: &str,
        worker: &str,
        ttl: Duration,
    ) -> Result<bool, DistributedError> {
        let key = self.key(&format!("lease:{name}"));
        let ms = ttl.as_millis() as u64;
        let script = redis::Script::new(
            "local v = redis.call('GET', KEYS[1]) \
             if v == false then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end \
             if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end \
             return 0",
        );
        let got: i64 = self.run("lease", |c| script.key(&key).arg(worker).arg(ms).invoke(c))?;
        Ok(got == 1)
    }

    /// Gives the lease up (only if `worker` holds it).
    pub fn release(&mut self, name: &str, worker: &str) -> Result<(), DistributedError> {
        let key = self.key(&format!("lease:{name}"));
        let script = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
        );
        self.run("release lease", |c| {
            script.key(&key).arg(worker).invoke::<i64>(c)
        })?;
        Ok(())
    }

    // ---- plain values ----

    /// `SET {prefix}:{name} value`.
    pub fn set(&mut self, name: &str, value: &[u8]) -> Result<(), DistributedError> {
        let key = self.key(name);
        self.run("set", |c| {
            redis::cmd("SET").arg(&key).arg(value).query::<()>(c)
        })
    }

    /// `GET {prefix}:{name}`.
    pub fn get(&mut self, name: &str) -> Result<Option<Vec<u8>>, DistributedError> {
        let key = self.key(name);
        self.run("get", |c| redis::cmd("GET").arg(&key).query(c))
    }

    /// The value of `field` in hash `{prefix}:{name}`, set to `make()` first if absent (so
    /// concurrent callers agree on one value).
    pub fn hash_get_or_init(
        &mut self,
        name: &str,
        field: &str,
        make: impl FnOnce() -> String,
    ) -> Result<(String, bool), DistributedError> {
        let key = self.key(name);
        let fresh = make();
        let created: bool = self.run("init secret", |c| {
            redis::cmd("HSETNX")
                .arg(&key)
                .arg(field)
                .arg(&fresh)
                .query(c)
        })?;
        let value: String = self.run("read secret", |c| {
            redis::cmd("HGET").arg(&key).arg(field).query(c)
        })?;
        Ok((value, created))
    }

    // ---- metrics ----

    /// Publishes one worker's counters of `stage`.
    pub fn publish_metrics(
        &mut self,
        stage: &str,
        worker: &str,
        stats: &StageStats,
    ) -> Result<(), DistributedError> {
        let key = self.key(&format!("metrics:{stage}"));
        let published = WorkerStats {
            worker: worker.to_owned(),
            ts_ms: clickpulse_engine::replay::wall_clock_ms(),
            stats: stats.clone(),
        };
        let json = serde_json::to_string(&published).expect("stats serialize");
        self.run("publish metrics", |c| {
            redis::cmd("HSET")
                .arg(&key)
                .arg(worker)
                .arg(&json)
                .query::<()>(c)
        })
    }

    /// Every worker's counters of `stage`.
    pub fn read_metrics(&mut self, stage: &str) -> Result<Vec<WorkerStats>, DistributedError> {
        let key = self.key(&format!("metrics:{stage}"));
        let all: HashMap<String, String> =
            self.run("read metrics", |c| redis::cmd("HGETALL").arg(&key).query(c))?;
        let mut v: Vec<WorkerStats> = Vec::new();
        for (worker, text) in &all {
            match serde_json::from_str(text) {
                Ok(stats) => v.push(stats),
                // From another version of Clickpulse, or damaged: left out, said once per read.
                Err(error) => tracing::warn!(%error, stage, worker, "Unreadable worker metrics."),
            }
        }
        v.sort_by(|a, b| a.worker.cmp(&b.worker));
        Ok(v)
    }

    // ---- the transition log stream ----

    /// Appends entries to the `state_logs` stream, capped at about `max_len`.
    pub fn append_state_logs(
        &mut self,
        records: &[String],
        max_len: usize,
    ) -> Result<(), DistributedError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for r in records {
            pipe.cmd("XADD")
                .arg(STATE_LOGS)
                .arg("MAXLEN")
                .arg("~")
                .arg(max_len)
                .arg("*")
                .arg("record")
                .arg(r)
                .ignore();
        }
        self.run("append state_logs", |c| c.pipeline::<()>(&pipe))
    }

    /// Entries of `state_logs` after id `after` (`"0"` for all), oldest first, with their ids.
    pub fn read_state_logs(
        &mut self,
        after: &str,
        count: usize,
    ) -> Result<Vec<(String, String)>, DistributedError> {
        let start = format!("({after}");
        let start = if after == "0" { "-".to_owned() } else { start };
        let entries: Vec<(String, Vec<String>)> = self.run("read state_logs", |c| {
            redis::cmd("XRANGE")
                .arg(STATE_LOGS)
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(count)
                .query(c)
        })?;
        Ok(entries
            .into_iter()
            .filter_map(|(id, fields)| {
                let record = fields
                    .chunks(2)
                    .find(|kv| kv[0] == "record")?
                    .get(1)?
                    .clone();
                Some((id, record))
            })
            .collect())
    }

    // ---- lookups ----

    /// Writes the lookups in the original's layout (pipelined, 1,000 records per round trip).
    pub fn save_lookups(&mut self, lookups: &Lookups) -> Result<(u64, u64), DistributedError> {
        let mut users = 0u64;
        let mut pipe = redis::pipe();
        let mut pending = 0;
        for (id, user) in lookups.users() {
            let mut fields: Vec<(&str, String)> = Vec::new();
            if let Some(d) = user.birth_date {
                fields.push(("birthday", d.format("%Y-%m-%d").to_string()));
            }
            if user.gender != Gender::U {
                fields.push(("gender", format!("{:?}", user.gender)));
            }
            let key = format!("visitor:{id}");
            pipe.cmd("DEL").arg(&key).ignore();
            if !fields.is_empty() {
                pipe.cmd("HSET").arg(&key).arg(fields).ignore();
            }
            users += 1;
            pending += 1;
            if pending == 1_000 {
                self.run("load users", |c| c.pipeline::<()>(&pipe))?;
                pipe = redis::pipe();
                pending = 0;
            }
        }
        let mut products = 0u64;
        for p in lookups.products() {
            let mut fields: Vec<(&str, String)> = vec![
                ("cat", p.category.to_string()),
                ("title", p.title.to_string()),
            ];
            if !p.description.is_empty() {
                fields.push(("description", p.description.clone()));
            }
            if let Some(image) = &p.image {
                fields.push(("image", image.clone()));
            }
            if let Some(price) = p.price {
                fields.push(("price", price.to_string()));
            }
            let key = format!("product:{}", p.id);
            pipe.cmd("DEL").arg(&key).ignore();
            pipe.cmd("HSET").arg(&key).arg(fields).ignore();
            products += 1;
        }
        self.run("load products", |c| c.pipeline::<()>(&pipe))?;
        Ok((users, products))
    }

    /// Every product in Redis (`SCAN` over `product:*`).
    pub fn load_products(&mut self) -> Result<Vec<Product>, DistributedError> {
        let keys: Vec<String> = self.run("scan products", |c| {
            redis::cmd("KEYS").arg("product:*").query(c)
        })?;
        let mut pipe = redis::pipe();
        for k in &keys {
            pipe.cmd("HGETALL").arg(k);
        }
        let rows: Vec<HashMap<String, String>> =
            self.run("read products", |c| c.pipeline(&pipe))?;
        let mut products: Vec<Product> = keys
            .iter()
            .zip(rows)
            .filter_map(|(k, fields)| parse_product(k.strip_prefix("product:")?, &fields))
            .collect();
        products.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(products)
    }
}

fn parse_user(fields: &HashMap<String, String>) -> Option<User> {
    if fields.is_empty() {
        return None;
    }
    Some(User {
        gender: fields
            .get("gender")
            .and_then(|g| g.parse().ok())
            .unwrap_or_default(),
        birth_date: fields
            .get("birthday")
            .and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok()),
    })
}

fn parse_product(id: &str, fields: &HashMap<String, String>) -> Option<Product> {
    Some(Product {
        id: Arc::from(id),
        category: Arc::from(fields.get("cat")?.as_str()),
        title: Arc::from(fields.get("title").map_or("", String::as_str)),
        description: fields.get("description").cloned().unwrap_or_default(),
        image: fields.get("image").cloned(),
        price: fields.get("price").and_then(|p| p.parse().ok()),
    })
}

/// What a task stored at its last commit.
#[derive(Debug, Default)]
pub struct TaskRecord {
    /// Operator state entries.
    pub state: Vec<(String, Vec<u8>)>,
    /// Next input offset per (physical topic, partition).
    pub offsets: BTreeMap<(String, u32), i64>,
    /// Output position per (physical topic, partition) when the commit was made.
    pub outputs: BTreeMap<(String, u32), i64>,
    /// Newest input lineage per (physical topic, partition): a record at or below it is a
    /// producer's retry of one already processed.
    pub lineage: BTreeMap<(String, u32), i64>,
    /// The runner's counters.
    pub counts: TaskCounts,
}

/// Counters a task persists with its state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TaskCounts {
    /// Records consumed.
    pub events: u64,
    /// Records sent to the dead-letter topic.
    pub dead_letters: u64,
    /// Records reprocessed after a takeover whose outputs were already published.
    #[serde(default)]
    pub suppressed: u64,
    /// Input records dropped as a producer's retry of one already processed.
    #[serde(default)]
    pub duplicates: u64,
}

/// One task's commit.
#[derive(Debug, Default)]
pub struct TaskCommit {
    /// The task's hash key.
    pub key: String,
    /// State changes (`None` deletes).
    pub state: Vec<(String, Option<Vec<u8>>)>,
    /// Next input offsets.
    pub offsets: BTreeMap<(String, u32), i64>,
    /// Output positions.
    pub outputs: BTreeMap<(String, u32), i64>,
    /// Newest input lineage seen.
    pub lineage: BTreeMap<(String, u32), i64>,
    /// Counters.
    pub counts: TaskCounts,
}

/// Lookups read from Redis through a local cache with a TTL; the misses of a batch are fetched
/// in one pipelined round trip ([`LookupSource::prefetch`]).
pub struct RedisLookups {
    store: RedisStore,
    ttl: Duration,
    // ahash, not SipHash: the worker looks up every click's visitor and product here.
    users: ahash::AHashMap<String, (Instant, Option<User>)>,
    products: ahash::AHashMap<String, (Instant, Option<Arc<Product>>)>,
    /// Cache hits, misses and round trips.
    pub stats: LookupCacheStats,
}

/// Counters of the lookup cache.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct LookupCacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups fetched from Redis.
    pub misses: u64,
    /// Pipelined round trips.
    pub round_trips: u64,
    /// Failed fetches (the batch waits and retries).
    pub errors: u64,
}

impl RedisLookups {
    /// Lookups through `store`, cached for `ttl`.
    pub fn new(store: RedisStore, ttl: Duration) -> Self {
        RedisLookups {
            store,
            ttl,
            users: ahash::AHashMap::new(),
            products: ahash::AHashMap::new(),
            stats: LookupCacheStats::default(),
        }
    }
}

/// The keys of a batch to fetch: those not in `cache` or not `fresh` there, each once, in
/// first-seen order; and how many of the batch's keys that leaves served (the hits). A set beside
/// the list finds repeats: a linear search of the list was a tenth of the enrich worker's time at
/// 10,000-record batches.
fn misses<'k, V, S: std::hash::BuildHasher>(
    keys: &[&'k str],
    cache: &HashMap<String, (Instant, V), S>,
    fresh: impl Fn(&Instant) -> bool,
) -> (Vec<&'k str>, u64) {
    let mut want = Vec::new();
    let mut wanted = ahash::AHashSet::new();
    let mut hits = 0;
    for &key in keys {
        match cache.get(key) {
            Some((at, _)) if fresh(at) => hits += 1,
            _ if !wanted.insert(key) => hits += 1,
            _ => want.push(key),
        }
    }
    (want, hits)
}

impl LookupSource for RedisLookups {
    fn user(&self, visitor: &str) -> Option<User> {
        self.users.get(visitor).and_then(|(_, u)| *u)
    }

    fn product(&self, product_id: &str) -> Option<Arc<Product>> {
        self.products.get(product_id).and_then(|(_, p)| p.clone())
    }

    fn cache_stats(&self) -> Option<serde_json::Value> {
        serde_json::to_value(self.stats).ok()
    }

    fn prefetch(&mut self, visitors: &[&str], product_ids: &[&str]) {
        let now = Instant::now();
        let fresh = |at: &Instant| now.duration_since(*at) < self.ttl;
        let (want_users, user_hits) = misses(visitors, &self.users, fresh);
        let (want_products, product_hits) = misses(product_ids, &self.products, fresh);
        self.stats.hits += user_hits + product_hits;
        if want_users.is_empty() && want_products.is_empty() {
            return;
        }
        self.stats.misses += (want_users.len() + want_products.len()) as u64;
        let mut pipe = redis::pipe();
        for v in &want_users {
            pipe.cmd("HGETALL").arg(format!("visitor:{v}"));
        }
        for p in &want_products {
            pipe.cmd("HGETALL").arg(format!("product:{p}"));
        }
        self.stats.round_trips += 1;
        let before = self.store.retries;
        let rows: Vec<HashMap<String, String>> =
            match self.store.run("lookups", |c| c.pipeline(&pipe)) {
                Ok(rows) => rows,
                Err(error) => {
                    // Only when shutting down (or a non-transient error): the batch is enriched
                    // with what the cache has; the runner does not commit during shutdown.
                    self.stats.errors += 1;
                    warn!(%error, "Lookup fetch failed.");
                    return;
                }
            };
        self.stats.errors += self.store.retries - before;
        let (user_rows, product_rows) = rows.split_at(want_users.len());
        for (v, fields) in want_users.iter().zip(user_rows) {
            self.users
                .insert((*v).to_owned(), (now, parse_user(fields)));
        }
        for (p, fields) in want_products.iter().zip(product_rows) {
            let product = parse_product(p, fields).map(Arc::new);
            self.products.insert((*p).to_owned(), (now, product));
        }
        if self.users.len() > 2_000_000 {
            let ttl = self.ttl;
            self.users
                .retain(|_, (at, _)| now.duration_since(*at) < ttl);
            info!(entries = self.users.len(), "Lookup cache trimmed.");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    use super::misses;

    #[test]
    fn a_batch_fetches_each_missing_key_once_in_first_seen_order() {
        let now = Instant::now();
        let mut cache: HashMap<String, (Instant, u32)> = HashMap::new();
        cache.insert("fresh".into(), (now, 1));
        cache.insert("stale".into(), (now - Duration::from_secs(120), 2));
        let fresh = |at: &Instant| now.duration_since(*at) < Duration::from_secs(60);
        let keys = ["b", "fresh", "stale", "a", "b", "stale", "fresh", "a"];
        let (want, hits) = misses(&keys, &cache, fresh);
        assert_eq!(want, ["b", "stale", "a"]);
        // Two fresh cache hits, and the repeats of b, stale and a ride on the one fetch.
        assert_eq!(hits, 5);
    }
}
