//! Local deployments and process supervision for fault injection.
//!
//! A [`Cluster`] is a throwaway distributed deployment on loopback: a tansu broker (in memory, or
//! on S3 storage served by a local moto server so that it survives a restart), a private
//! redis-server with an append-only file, and `clickpulse run` workers — each a child process
//! logging to a file in the cluster's temp dir, each of which can be killed (`kill -9`),
//! stopped (SIGTERM) and restarted. `clickpulse chaos --mode distributed` and the distributed
//! integration tests both run on it.
//!
//! `clickpulse chaos` is [`deployment::run`]: one kill schedule over a [`Deployment`] (the
//! [`embedded`] one, `clickpulse demo` lives on a data dir; the [`distributed`] one, a
//! [`Cluster`]) and one comparison of what it delivered with the uninterrupted backtest.

pub mod deployment;
pub mod distributed;
pub mod embedded;

pub use deployment::{Deadline, Deployment, Outcome, Plan, Reference};

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub use clickpulse_connectors::distributed::store::RedisConn;
use clickpulse_engine::window::DashboardSnapshot;
use serde_json::Value;

/// What can go wrong running a local deployment.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A tool is missing.
    #[error("{what} not found at {path}: {hint}")]
    MissingTool {
        /// The tool.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// How to get it.
        hint: &'static str,
    },
    /// A process could not be started.
    #[error("cannot start {name}: {source}")]
    Spawn {
        /// The process.
        name: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A file in the cluster's dir failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Something did not happen in time.
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        timeout: Duration,
    },
    /// A command failed.
    #[error("{what} failed: {detail}")]
    Failed {
        /// The command.
        what: String,
        /// Its output.
        detail: String,
    },
    /// Redis refused a request.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The deployment's state could not be read.
    #[error(transparent)]
    State(#[from] clickpulse_connectors::distributed::DistributedError),
    /// A deployment's durable state is unreadable or damaged.
    #[error("cannot read {what}: {source}")]
    Inspect {
        /// What was read.
        what: String,
        /// The cause.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

type Result<T, E = ClusterError> = std::result::Result<T, E>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Io { what, source }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("bind a free port"))?;
    Ok(listener.local_addr().map_err(io("read a port"))?.port())
}

/// Polls `check` every few milliseconds until it returns `Some`, or fails after `timeout`.
pub fn poll<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(ClusterError::Timeout {
                what: what.to_owned(),
                timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The viewer token of the clusters this crate starts (local test deployments only).
pub const VIEWER_TOKEN: &str = "chaos-cluster-viewer";

/// GETs `http://127.0.0.1:{port}{path}` as JSON, or `None` while the server is not up.
pub fn get_json(port: u16, path: &str) -> Option<Value> {
    let mut response = ureq::get(&format!("http://127.0.0.1:{port}{path}"))
        .call()
        .ok()?;
    let body = response.body_mut().read_to_string().ok()?;
    serde_json::from_str(&body).ok()
}

fn wait_port(port: u16, what: &str) -> Result<()> {
    poll(Duration::from_secs(30), what, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    })
    .map(drop)
}

/// The pids of the children started through [`Proc`] that have not been killed yet.
static LIVE: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

fn track(pid: u32) {
    if let Ok(mut live) = LIVE.lock() {
        live.push(pid);
    }
}

fn untrack(pid: u32) {
    if let Ok(mut live) = LIVE.lock() {
        live.retain(|p| *p != pid);
    }
}

/// `kill -9`s every child started through [`Proc`] that is still alive: for a signal handler,
/// since the drops that would stop them do not run when the process is interrupted.
pub fn kill_all_children() {
    let pids: Vec<u32> = LIVE.lock().map(|l| l.clone()).unwrap_or_default();
    for pid in pids {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
}

/// A child process that is killed when dropped, and can be started again as it was.
pub struct Proc {
    /// Its name (and log file's).
    pub name: String,
    /// The running process.
    pub child: Child,
    /// Its log file.
    pub log: PathBuf,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Proc {
    /// Starts `program args` with `env`, appending its output to `{log_dir}/{name}.log`.
    pub fn start(
        name: &str,
        log_dir: &Path,
        program: &Path,
        args: Vec<String>,
        env: Vec<(String, String)>,
    ) -> Result<Proc> {
        let log = log_dir.join(format!("{name}.log"));
        let child = spawn(name, &log, program, &args, &env)?;
        track(child.id());
        Ok(Proc {
            name: name.to_owned(),
            child,
            log,
            program: program.to_owned(),
            args,
            env,
        })
    }

    /// SIGTERM, then waits up to 20 s for the exit (a clean stop, as in a rolling restart);
    /// `kill -9` after that.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                untrack(self.child.id());
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
    }

    /// `kill -9`, and waits for the exit.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        untrack(self.child.id());
    }

    /// Starts the same command again (after a kill or stop).
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.child = spawn(&self.name, &self.log, &self.program, &self.args, &self.env)?;
        track(self.child.id());
        Ok(())
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

fn spawn(
    name: &str,
    log: &Path,
    program: &Path,
    args: &[String],
    env: &[(String, String)],
) -> Result<Child> {
    let file = File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io(format!("open {}", log.display())))?;
    let stderr = file
        .try_clone()
        .map_err(io(format!("open {}", log.display())))?;
    Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(file)
        .stderr(stderr)
        .spawn()
        .map_err(|source| ClusterError::Spawn {
            name: name.to_owned(),
            source,
        })
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Where the broker keeps its topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Storage {
    /// In memory: fast; gone when the broker stops.
    #[default]
    Memory,
    /// S3 (a local moto server): survives a broker restart.
    S3,
}

/// The programs a cluster runs.
#[derive(Debug, Clone)]
pub struct Tools {
    /// The `clickpulse` binary.
    pub clickpulse: PathBuf,
    /// The tansu broker (`CLICKPULSE_TANSU`, or the copy `scripts/test.sh` caches).
    pub tansu: PathBuf,
    /// moto's S3 server (`CLICKPULSE_MOTO`, or the copy `scripts/test.sh` caches).
    pub moto: PathBuf,
    /// `redis-server`.
    pub redis_server: PathBuf,
}

impl Tools {
    /// The tools as `scripts/test.sh` installs them, overridable by environment variables.
    pub fn from_env(clickpulse: PathBuf) -> Tools {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir)
            .join("clickpulse");
        let var = |name: &str, default: PathBuf| {
            std::env::var_os(name).map(PathBuf::from).unwrap_or(default)
        };
        Tools {
            clickpulse,
            tansu: var("CLICKPULSE_TANSU", cache.join("tansu-0.6.0")),
            moto: var("CLICKPULSE_MOTO", cache.join("venv/bin/moto_server")),
            redis_server: var("CLICKPULSE_REDIS_SERVER", PathBuf::from("redis-server")),
        }
    }

    fn check(path: &Path, what: &'static str) -> Result<()> {
        if path.components().count() > 1 && !path.exists() {
            return Err(ClusterError::MissingTool {
                what,
                path: path.to_owned(),
                hint: "run scripts/test.sh once (it installs the test services) or set CLICKPULSE_TANSU / CLICKPULSE_MOTO",
            });
        }
        Ok(())
    }
}

/// What a cluster runs: the broker's storage and TOML lines added to the config's tables.
#[derive(Debug, Clone, Default)]
pub struct Spec {
    /// Where the broker keeps its topics.
    pub storage: Storage,
    /// Extra `[kafka]` lines.
    pub kafka: String,
    /// Extra `[pipeline]` lines.
    pub pipeline: String,
    /// Extra `[replay]` lines.
    pub replay: String,
    /// The pattern directory.
    pub patterns: PathBuf,
    /// Run Redis as a three-node Redis Cluster instead of one server.
    pub redis_cluster: bool,
    /// Further tables, appended to the config (`[postgres]`, …).
    pub extra: String,
}

/// A table's `lines`, then each of `defaults` (key, value) that they do not set themselves.
fn with_defaults(lines: &str, defaults: &[(&str, &str)]) -> String {
    let sets = |key: &str| {
        lines
            .lines()
            .any(|l| l.split('=').next().is_some_and(|k| k.trim() == key))
    };
    let mut table = lines.trim_end().to_owned();
    for (key, value) in defaults.iter().filter(|(k, _)| !sets(k)) {
        table.push_str(&format!("\n{key} = {value}"));
    }
    table
}

/// A throwaway distributed deployment on loopback (see the crate docs).
pub struct Cluster {
    /// Holds the config, the Redis files and every process's log.
    pub dir: tempfile::TempDir,
    /// The broker's port.
    pub broker_port: u16,
    /// Redis's port.
    pub redis_port: u16,
    /// The web stage's port.
    pub web_port: u16,
    /// The broker process.
    pub broker: Option<Proc>,
    /// The Redis process (one server).
    pub redis: Option<Proc>,
    /// The Redis Cluster's nodes (with [`Spec::redis_cluster`]); `redis_port` is the first's.
    pub redis_nodes: Vec<Proc>,
    /// The `clickpulse run` workers, in start order.
    pub workers: Vec<Proc>,
    /// The config file the workers read.
    pub config: PathBuf,
    tools: Tools,
    storage: Storage,
    moto_port: u16,
    moto: Option<Proc>,
}

impl Cluster {
    /// Starts the services, writes the config and loads the lookups into Redis.
    pub fn start(tools: Tools, spec: &Spec) -> Result<Cluster> {
        let storage = spec.storage;
        Tools::check(&tools.tansu, "the tansu broker")?;
        if storage == Storage::S3 {
            Tools::check(&tools.moto, "moto_server")?;
        }
        let dir = tempfile::Builder::new()
            .prefix("clickpulse-cluster-")
            .tempdir()
            .map_err(io("create the cluster dir"))?;
        let mut c = Cluster {
            broker_port: free_port()?,
            redis_port: free_port()?,
            web_port: free_port()?,
            moto_port: free_port()?,
            broker: None,
            redis: None,
            redis_nodes: Vec::new(),
            moto: None,
            workers: Vec::new(),
            config: dir.path().join("clickpulse.toml"),
            dir,
            tools,
            storage,
        };
        if storage == Storage::S3 {
            c.moto = Some(Proc::start(
                "moto",
                c.dir.path(),
                &c.tools.moto,
                vec![
                    "-H".into(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    c.moto_port.to_string(),
                ],
                Vec::new(),
            )?);
            wait_port(c.moto_port, "the S3 server")?;
            let bucket = format!("http://127.0.0.1:{}/tansu", c.moto_port);
            poll(Duration::from_secs(30), "the tansu bucket", || {
                ureq::put(&bucket).send_empty().ok()
            })?;
        }
        c.start_broker()?;
        if spec.redis_cluster {
            c.start_redis_cluster()?;
        } else {
            c.start_redis()?;
        }
        let config = format!(
            r#"[kafka]
brokers = "127.0.0.1:{broker}"
group_prefix = "test{broker}"
partitions = 4
session_timeout_ms = 6000
{kafka}

[redis]
url = "redis://127.0.0.1:{redis}{db}"
cluster = {cluster}

[pipeline]
patterns = "{patterns}"
{pipeline}

[replay]
{replay}

[web]
listen = "127.0.0.1:{web}"
viewer_token = "{viewer}"

{extra}
"#,
            broker = c.broker_port,
            redis = c.redis_port,
            db = if spec.redis_cluster { "" } else { "/0" },
            cluster = spec.redis_cluster,
            web = c.web_port,
            viewer = VIEWER_TOKEN,
            patterns = spec.patterns.display(),
            kafka = spec.kafka,
            pipeline = with_defaults(
                &spec.pipeline,
                &[
                    ("allowed_lateness_ms", "2000"),
                    ("idle_timeout_ms", "30000")
                ]
            ),
            replay = with_defaults(&spec.replay, &[("original_time", "true")]),
            extra = spec.extra,
        );
        std::fs::write(&c.config, config).map_err(io("write the config"))?;
        let mut load = Command::new(&c.tools.clickpulse);
        load.args(["lookups", "load", "--redis"]);
        if spec.redis_cluster {
            load.arg(format!("redis://127.0.0.1:{}", c.redis_port))
                .arg("--redis-cluster");
        } else {
            load.arg(format!("redis://127.0.0.1:{}/0", c.redis_port));
        }
        let out = load.output().map_err(io("run clickpulse lookups load"))?;
        if !out.status.success() {
            return Err(ClusterError::Failed {
                what: "clickpulse lookups load".into(),
                detail: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(c)
    }

    fn broker_proc(&self) -> Result<Proc> {
        let url = format!("tcp://127.0.0.1:{}", self.broker_port);
        let mut args: Vec<String> = vec![
            "broker".into(),
            "--listener-url".into(),
            url.clone(),
            "--advertised-listener-url".into(),
            url,
            "--storage-engine".into(),
        ];
        let mut env = Vec::new();
        match self.storage {
            Storage::Memory => args.push("memory://tansu/".into()),
            Storage::S3 => {
                args.push("s3://tansu/".into());
                for (k, v) in [
                    ("AWS_ACCESS_KEY_ID", "test".to_owned()),
                    ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
                    ("AWS_DEFAULT_REGION", "us-east-1".to_owned()),
                    (
                        "AWS_ENDPOINT",
                        format!("http://127.0.0.1:{}", self.moto_port),
                    ),
                    ("AWS_ALLOW_HTTP", "true".to_owned()),
                ] {
                    env.push((k.to_owned(), v));
                }
            }
        }
        Proc::start("broker", self.dir.path(), &self.tools.tansu, args, env)
    }

    /// Starts the broker and waits for its port.
    pub fn start_broker(&mut self) -> Result<()> {
        self.broker = Some(self.broker_proc()?);
        wait_port(self.broker_port, "the broker")
    }

    /// Stops the broker with SIGTERM and starts it again on the same port (retrying while the
    /// old socket still holds the port).
    pub fn restart_broker(&mut self) -> Result<()> {
        if let Some(mut broker) = self.broker.take() {
            broker.stop();
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut broker = self.broker_proc()?;
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(3) && broker.is_running() {
                if std::net::TcpStream::connect(("127.0.0.1", self.broker_port)).is_ok() {
                    self.broker = Some(broker);
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if Instant::now() > deadline {
                return Err(ClusterError::Timeout {
                    what: "the broker to restart".into(),
                    timeout: Duration::from_secs(60),
                });
            }
            drop(broker);
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Starts redis-server (append-only file, fsync always, in the cluster's dir).
    pub fn start_redis(&mut self) -> Result<()> {
        let args: Vec<String> = [
            "--port",
            &self.redis_port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            &self.dir.path().display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        self.redis = Some(Proc::start(
            "redis",
            self.dir.path(),
            &self.tools.redis_server,
            args,
            Vec::new(),
        )?);
        wait_port(self.redis_port, "redis")
    }

    /// Starts a three-node Redis Cluster (no replicas; append-only files) and waits until it
    /// serves every slot. `redis_port` becomes its first node.
    pub fn start_redis_cluster(&mut self) -> Result<()> {
        let ports = [self.redis_port, free_port()?, free_port()?];
        for port in ports {
            let dir = self.dir.path().join(format!("redis-{port}"));
            std::fs::create_dir_all(&dir).map_err(io("create a Redis node's dir"))?;
            let args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--dir",
                &dir.display().to_string(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let name = format!("redis-{port}");
            let node = Proc::start(
                &name,
                self.dir.path(),
                &self.tools.redis_server,
                args,
                Vec::new(),
            )?;
            self.redis_nodes.push(node);
            wait_port(port, "a Redis Cluster node")?;
        }
        let cli = self.tools.redis_server.with_file_name("redis-cli");
        let cli = if cli.exists() {
            cli
        } else {
            PathBuf::from("redis-cli")
        };
        let out = Command::new(&cli)
            .arg("--cluster")
            .arg("create")
            .args(ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .map_err(io("run redis-cli --cluster create"))?;
        if !out.status.success() {
            return Err(ClusterError::Failed {
                what: "redis-cli --cluster create".into(),
                detail: String::from_utf8_lossy(&out.stdout).into_owned(),
            });
        }
        let first = format!("redis://127.0.0.1:{}", ports[0]);
        poll(
            Duration::from_secs(30),
            "the Redis Cluster to serve every slot",
            || {
                let mut c = redis::Client::open(first.as_str())
                    .ok()?
                    .get_connection()
                    .ok()?;
                let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut c).ok()?;
                info.contains("cluster_state:ok").then_some(())
            },
        )
    }

    /// Starts `clickpulse run --stage {stage}` as worker `id`; returns its index.
    pub fn worker(&mut self, stage: &str, id: &str) -> Result<usize> {
        self.worker_with(stage, id, &[])
    }

    /// [`Cluster::worker`] with more arguments for `clickpulse run` (`--metrics-listen ADDR`).
    pub fn worker_with(&mut self, stage: &str, id: &str, extra: &[String]) -> Result<usize> {
        let mut args = vec![
            "run".into(),
            "--stage".into(),
            stage.into(),
            "--worker-id".into(),
            id.into(),
            "--config".into(),
            self.config.display().to_string(),
        ];
        args.extend(extra.iter().cloned());
        let env = vec![("RUST_LOG".to_owned(), "info".to_owned())];
        let proc = Proc::start(id, self.dir.path(), &self.tools.clickpulse, args, env)?;
        self.workers.push(proc);
        Ok(self.workers.len() - 1)
    }

    /// A connection to the cluster's Redis (routed by key slot on a Redis Cluster).
    pub fn redis(&self) -> Result<RedisConn> {
        if self.redis_nodes.is_empty() {
            let url = format!("redis://127.0.0.1:{}/0", self.redis_port);
            Ok(RedisConn::Single(
                redis::Client::open(url)?.get_connection()?,
            ))
        } else {
            let url = format!("redis://127.0.0.1:{}", self.redis_port);
            Ok(RedisConn::Cluster(Box::new(
                redis::cluster::ClusterClient::new(vec![url])?.get_connection()?,
            )))
        }
    }

    /// The web stage's `/api/stats`.
    pub fn stats(&self) -> Option<Value> {
        get_json(self.web_port, "/api/stats")
    }

    /// The web stage's `/api/dashboard`, as the viewer sees it (visitor ids not pseudonymised,
    /// as the backtest's).
    pub fn dashboard(&self) -> Option<DashboardSnapshot> {
        get_json(
            self.web_port,
            &format!("/api/dashboard?viewer={VIEWER_TOKEN}"),
        )
        .and_then(|v| serde_json::from_value(v).ok())
    }

    /// The offer ids the web stage delivered (persisted with its state), sorted.
    pub fn delivered_offers(&self) -> Result<Vec<String>> {
        let config = clickpulse_connectors::distributed::RedisConfig {
            url: if self.redis_nodes.is_empty() {
                format!("redis://127.0.0.1:{}/0", self.redis_port)
            } else {
                format!("redis://127.0.0.1:{}", self.redis_port)
            },
            cluster: !self.redis_nodes.is_empty(),
            ..Default::default()
        };
        let mut store = clickpulse_connectors::distributed::store::RedisStore::open(&config, None)?;
        // The cluster's web worker runs under the configuration's default instance name.
        let instance = clickpulse_components::config::WebConfig::default().instance;
        let delivered =
            clickpulse_components::sinks::offer_hub::delivered_distributed(&mut store, &instance)?;
        Ok(delivered.into_iter().collect())
    }

    /// Events each stage has consumed, from the web stage's stats: replay, enrich, detect
    /// and aggregate (its clicks; it also counts the offers it reads).
    pub fn stage_events(stats: &Value) -> [Option<u64>; 4] {
        [
            stats["stages"]["replay"]["events"].as_u64(),
            stats["stages"]["enrich"]["events"].as_u64(),
            stats["stages"]["detect"]["events"].as_u64(),
            stats["stages"]["aggregate"]["details"]["events"].as_u64(),
        ]
    }

    /// Waits until every stage consumed `events` records and the dashboard equals `expected`;
    /// returns the stats. On timeout, the error names the last stats and the dashboard fields
    /// that differ.
    pub fn wait_until_done(
        &self,
        events: u64,
        expected: &DashboardSnapshot,
        timeout: Duration,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let stats = self.stats();
            let done = stats
                .as_ref()
                .is_some_and(|s| Cluster::stage_events(s).iter().all(|n| *n == Some(events)));
            if done && self.dashboard().as_ref() == Some(expected) {
                return Ok(stats.unwrap_or_default());
            }
            if Instant::now() > deadline {
                // The summary first: a long diff below may be cut off where it is printed.
                let mut detail = match &stats {
                    Some(s) => format!(
                        "events per stage (replay, enrich, detect, aggregate): {:?}, \
                         late views: {}, watermark: {}\n",
                        Cluster::stage_events(s),
                        s["stages"]["aggregate"]["details"]["late_events"],
                        s["stages"]["aggregate"]["details"]["watermark_ms"],
                    ),
                    None => "no stats\n".to_owned(),
                };
                let as_json = |s: &DashboardSnapshot| serde_json::to_value(s).unwrap_or_default();
                if let (Some(snapshot), Value::Object(fields)) =
                    (self.dashboard().map(|s| as_json(&s)), as_json(expected))
                {
                    for (k, v) in &fields {
                        if snapshot.get(k) != Some(v) {
                            detail.push_str(&format!(
                                "dashboard field {k}: live {} != expected {v}\n",
                                snapshot.get(k).unwrap_or(&Value::Null)
                            ));
                        }
                    }
                }
                detail.push_str(&format!(
                    "stats: {}",
                    serde_json::to_string_pretty(&stats).unwrap_or_default()
                ));
                return Err(ClusterError::Failed {
                    what: "the pipeline to finish with the expected dashboard".into(),
                    detail,
                });
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The tail (40 lines) of every process's log.
    pub fn log_tails(&self) -> String {
        let mut logs: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        logs.retain(|p| p.extension().is_some_and(|x| x == "log"));
        logs.sort();
        let mut out = String::new();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            out.push_str(&format!("==== {} ====\n", log.display()));
            for line in tail.iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Workers first: they would otherwise log connection errors while the services stop.
        self.workers.clear();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_spec_s_own_lines_win_over_the_defaults() {
        assert_eq!(
            super::with_defaults(
                "speed = \"60\"\noriginal_time = false",
                &[("original_time", "true")]
            ),
            "speed = \"60\"\noriginal_time = false"
        );
        assert_eq!(
            super::with_defaults("", &[("a", "1"), ("b", "2")]),
            "\na = 1\nb = 2"
        );
    }
}
