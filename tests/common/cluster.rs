//! A throwaway deployment for the distributed tests: a tansu broker (in memory, or on S3 storage
//! served by a local moto server so that it survives a restart), a private redis-server with an
//! append-only file, and `clickpulse run` worker processes, each logging to a file that is
//! printed when a test fails.

#![allow(dead_code, unreachable_pub)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::common::{bin, free_port, get_json, wait_for};

fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"));
    base.join("clickpulse")
}

fn tool(env: &str, default: PathBuf) -> PathBuf {
    let path = std::env::var_os(env).map(PathBuf::from).unwrap_or(default);
    assert!(
        path.exists(),
        "{} not found: run scripts/test.sh (it installs the test broker), or set {env}",
        path.display()
    );
    path
}

fn wait_port(port: u16, what: &str) {
    wait_for(Duration::from_secs(30), what, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
}

/// A child process that is killed when dropped.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    fn start(name: &str, log_dir: &Path, cmd: &mut Command) -> Proc {
        let log = log_dir.join(format!("{name}.log"));
        let file = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = cmd
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name: name.to_owned(),
            child,
            log,
        }
    }

    /// SIGTERM, then waits for the exit (a clean stop, as in a rolling restart).
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Where the broker keeps its topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// In memory: fast; gone when the broker stops.
    Memory,
    /// S3 (a local moto server): survives a broker restart.
    S3,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    storage: Storage,
    moto_port: u16,
    moto: Option<Proc>,
    pub broker_port: u16,
    pub redis_port: u16,
    pub web_port: u16,
    pub broker: Option<Proc>,
    pub redis: Option<Proc>,
    pub workers: Vec<Proc>,
    config: PathBuf,
}

impl Cluster {
    /// Starts the services and writes a config with `extra` TOML appended to its tables
    /// (`[replay]`, `[pipeline]` …) — give full tables.
    pub fn start(pipeline: &str, replay: &str) -> Cluster {
        Cluster::start_with(Storage::Memory, "", pipeline, replay)
    }

    /// [`Cluster::start`] with the broker's storage and extra `[kafka]` settings (lines).
    pub fn start_with(storage: Storage, kafka: &str, pipeline: &str, replay: &str) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Cluster {
            storage,
            moto_port: free_port(),
            moto: None,
            broker_port: free_port(),
            redis_port: free_port(),
            web_port: free_port(),
            broker: None,
            redis: None,
            workers: Vec::new(),
            config: dir.path().join("clickpulse.toml"),
            dir,
        };
        if storage == Storage::S3 {
            let moto = tool("CLICKPULSE_MOTO", cache_dir().join("venv/bin/moto_server"));
            c.moto = Some(Proc::start(
                "moto",
                c.dir.path(),
                Command::new(moto).args(["-H", "127.0.0.1", "-p", &c.moto_port.to_string()]),
            ));
            wait_port(c.moto_port, "the S3 server");
            wait_for(Duration::from_secs(30), "the tansu bucket", || {
                ureq::put(&format!("http://127.0.0.1:{}/tansu", c.moto_port))
                    .send_empty()
                    .ok()
            });
        }
        c.start_broker();
        c.start_redis();
        let patterns = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/offer-patterns");
        let prefix = format!("test{}", c.broker_port);
        std::fs::write(
            &c.config,
            format!(
                r#"[kafka]
brokers = "127.0.0.1:{broker}"
group_prefix = "{prefix}"
partitions = 4
session_timeout_ms = 6000
{kafka}

[redis]
url = "redis://127.0.0.1:{redis}/0"

[pipeline]
patterns = "{patterns}"
allowed_lateness_ms = 2000
idle_timeout_ms = 30000
{pipeline}

[replay]
original_time = true
{replay}

[web]
listen = "127.0.0.1:{web}"
"#,
                broker = c.broker_port,
                redis = c.redis_port,
                web = c.web_port,
                patterns = patterns.display(),
            ),
        )
        .unwrap();
        let out = Command::new(bin())
            .args(["lookups", "load", "--redis"])
            .arg(format!("redis://127.0.0.1:{}/0", c.redis_port))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        c
    }

    pub fn start_broker(&mut self) {
        self.start_broker_process();
        wait_port(self.broker_port, "the broker");
    }

    fn start_broker_process(&mut self) {
        let tansu = tool("CLICKPULSE_TANSU", cache_dir().join("tansu-0.6.0"));
        let url = format!("tcp://127.0.0.1:{}", self.broker_port);
        let mut cmd = Command::new(tansu);
        cmd.args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ]);
        match self.storage {
            Storage::Memory => {
                cmd.args(["--storage-engine", "memory://tansu/"]);
            }
            Storage::S3 => {
                cmd.args(["--storage-engine", "s3://tansu/"])
                    .env("AWS_ACCESS_KEY_ID", "test")
                    .env("AWS_SECRET_ACCESS_KEY", "test")
                    .env("AWS_DEFAULT_REGION", "us-east-1")
                    .env(
                        "AWS_ENDPOINT",
                        format!("http://127.0.0.1:{}", self.moto_port),
                    )
                    .env("AWS_ALLOW_HTTP", "true");
            }
        }
        self.broker = Some(Proc::start("broker", self.dir.path(), &mut cmd));
    }

    /// Stops the broker with SIGTERM and starts it again on the same port (retrying while the
    /// old socket still holds the port).
    pub fn restart_broker(&mut self) {
        if let Some(mut broker) = self.broker.take() {
            broker.stop();
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.start_broker_process();
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(3) {
                if std::net::TcpStream::connect(("127.0.0.1", self.broker_port)).is_ok() {
                    return;
                }
                let exited = self.broker.as_mut().unwrap().child.try_wait().unwrap();
                if exited.is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            assert!(Instant::now() < deadline, "the broker did not restart");
            self.broker.take();
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    pub fn start_redis(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &self.redis_port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args([
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ])
        .arg("--dir")
        .arg(self.dir.path());
        self.redis = Some(Proc::start("redis", self.dir.path(), &mut cmd));
        wait_port(self.redis_port, "redis");
    }

    /// Starts `clickpulse run --stage {stage}` as worker `id`.
    pub fn worker(&mut self, stage: &str, id: &str) -> usize {
        let mut cmd = Command::new(bin());
        cmd.args(["run", "--stage", stage, "--worker-id", id, "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info");
        self.workers
            .push(Proc::start(id, self.dir.path(), &mut cmd));
        self.workers.len() - 1
    }

    pub fn redis(&self) -> redis::Connection {
        redis::Client::open(format!("redis://127.0.0.1:{}/0", self.redis_port))
            .unwrap()
            .get_connection()
            .unwrap()
    }

    pub fn stats(&self) -> Option<Value> {
        get_json(self.web_port, "/api/stats")
    }

    /// The offer ids the web stage delivered (persisted with its state).
    pub fn delivered_offers(&self) -> Vec<String> {
        let fields: Vec<String> = redis::cmd("HKEYS")
            .arg("clickpulse:state:web:web-0")
            .query(&mut self.redis())
            .unwrap_or_default();
        let mut ids: Vec<String> = fields
            .iter()
            .filter_map(|f| f.strip_prefix("s:delivered/").map(str::to_owned))
            .collect();
        ids.sort();
        ids
    }

    /// Waits until every stage consumed `events` records and the dashboard equals `expected`.
    pub fn wait_until_done(&self, events: u64, expected: &Value, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let stats = self.stats();
            let done = stats.as_ref().is_some_and(|s| {
                ["replay", "enrich", "detect"]
                    .iter()
                    .all(|st| s["stages"][st]["events"].as_u64() == Some(events))
                    // The aggregation also counts the offers it reads; its clicks are these.
                    && s["stages"]["aggregate"]["details"]["events"].as_u64() == Some(events)
            });
            if done
                && let Some(snapshot) = get_json(self.web_port, "/api/dashboard")
                && &snapshot == expected
            {
                return stats.unwrap();
            }
            if Instant::now() > deadline {
                self.dump_logs();
                if let Some(snapshot) = get_json(self.web_port, "/api/dashboard") {
                    for (k, v) in expected.as_object().unwrap() {
                        if snapshot.get(k) != Some(v) {
                            eprintln!(
                                "dashboard field {k}: live {} != expected {v}",
                                snapshot.get(k).unwrap_or(&Value::Null)
                            );
                        }
                    }
                }
                panic!(
                    "the pipeline did not finish with the expected dashboard; stats: {}",
                    serde_json::to_string_pretty(&stats).unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Prints the tail of every process's log.
    pub fn dump_logs(&self) {
        let mut logs: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("==== {} ====", log.display());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        self.workers.clear();
    }
}
