//! The embedded pipeline as a [`Deployment`]: `clickpulse demo` on one data dir, one process
//! per life, killed with `kill -9` and started again on the same data dir.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use clickpulse_connectors::embedded::EmbeddedStore;
use clickpulse_engine::codec::decode;
use clickpulse_engine::pattern::Offer;
use clickpulse_engine::topics;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use tracing::warn;

use crate::deployment::{Deadline, Deployment, Life, Observed, Reference, unfinished};
use crate::{ClusterError, Proc, Result, free_port};

/// What each life runs.
#[derive(Debug, Clone)]
pub struct EmbeddedSpec {
    /// The `clickpulse` binary.
    pub clickpulse: PathBuf,
    /// The logs to replay.
    pub logs: Vec<PathBuf>,
    /// The pattern directory (`None`: the seed patterns in the data dir).
    pub patterns: Option<PathBuf>,
    /// The replay's event-time speed.
    pub speed: f64,
    /// The run's deadline (for the report of an unfinished run).
    pub deadline: Duration,
    /// The pipeline's configuration file (`[webhooks]`, …), if any.
    pub config: Option<PathBuf>,
}

/// `clickpulse demo` lives on one data dir in `work`, each logging to `work/pipeline.log`.
pub struct EmbeddedDeployment {
    spec: EmbeddedSpec,
    work: PathBuf,
    life: Option<(Proc, u16)>,
    /// A life finished the log: the remaining kills land in the recovery of a finished data
    /// dir, at once, before that life can finish again.
    finished: bool,
    store_checks: u32,
    /// Why the run did not finish, taken from the life the deadline caught.
    out_of_time: Option<Value>,
}

impl EmbeddedDeployment {
    /// A deployment in `work` (nothing runs before the first [`Deployment::live`]).
    pub fn new(spec: EmbeddedSpec, work: &Path) -> Self {
        EmbeddedDeployment {
            spec,
            work: work.to_owned(),
            life: None,
            finished: false,
            store_checks: 0,
            out_of_time: None,
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.work.join("data")
    }

    fn log(&self) -> PathBuf {
        self.work.join("pipeline.log")
    }

    fn args(&self, port: u16) -> Vec<String> {
        let mut a: Vec<String> = [
            "demo",
            "--original-time",
            "--exit-when-done",
            "--idle-timeout-ms",
            "300",
            "--batch-size",
            "500",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(["--data-dir".into(), self.data_dir().display().to_string()]);
        a.extend(["--listen".into(), format!("127.0.0.1:{port}")]);
        a.extend(["--speed".into(), format!("{:.0}", self.spec.speed)]);
        for l in &self.spec.logs {
            a.extend(["--log".into(), l.display().to_string()]);
        }
        if let Some(p) = &self.spec.patterns {
            a.extend(["--patterns".into(), p.display().to_string()]);
        }
        if let Some(c) = &self.spec.config {
            a.extend(["--config".into(), c.display().to_string()]);
        }
        a
    }

    /// Starts a life and waits until it serves.
    fn start_life(&mut self, deadline: Deadline) -> Result<Life> {
        let port = free_port()?;
        let proc = Proc::start(
            "pipeline",
            &self.work,
            &self.spec.clickpulse,
            self.args(port),
            Vec::new(),
        )?;
        let (proc, port) = self.life.insert((proc, port));
        wait_serving(&mut proc.child, *port, deadline)
    }

    /// A life that exited: fine if it finished the log, an error if it failed.
    fn exited(&mut self) -> Result<()> {
        let Some((mut proc, _)) = self.life.take() else {
            return Ok(());
        };
        let status = proc
            .child
            .wait()
            .map_err(crate::io("wait for the pipeline"))?;
        if !status.success() {
            return Err(ClusterError::Failed {
                what: format!("a pipeline process ({status})"),
                detail: format!("its log ends with:\n{}", tail(&self.log())),
            });
        }
        if !self.finished {
            warn!(
                "The pipeline finished the log before all kills were made: the rest land in recoveries."
            );
        }
        self.finished = true;
        Ok(())
    }

    /// The deadline caught the running life: say what it had not done, then stop it.
    fn stop_late(&mut self) {
        if let Some((mut proc, port)) = self.life.take() {
            let stats = crate::get_json(port, "/api/stats");
            proc.kill();
            self.out_of_time = Some(unfinished(self.spec.deadline, stats.as_ref()));
        }
    }

    fn ended(&mut self, life: Life) -> Result<Life> {
        match life {
            Life::Exited => self.exited()?,
            Life::OutOfTime => self.stop_late(),
            Life::Running => {}
        }
        Ok(life)
    }
}

impl Deployment for EmbeddedDeployment {
    fn mode(&self) -> &'static str {
        "embedded"
    }

    fn live(&mut self, planned: Duration, deadline: Deadline) -> Result<Life> {
        if self.life.is_none() {
            let life = self.start_life(deadline)?;
            if life != Life::Running {
                return self.ended(life);
            }
        }
        let time = if self.finished {
            Duration::ZERO
        } else {
            planned
        };
        let (proc, _) = self.life.as_mut().expect("a life runs");
        let life = sleep_while_running(&mut proc.child, time, deadline)?;
        self.ended(life)
    }

    fn kill(&mut self, kill: u32, _of: u32, _rng: &mut ChaCha8Rng) -> Result<u64> {
        if let Some((mut proc, _)) = self.life.take() {
            proc.kill(); // SIGKILL, then reaped
        }
        // The data dir must open cleanly after every kill (redb recovers its last commit).
        let store =
            EmbeddedStore::open(&self.data_dir(), &[]).map_err(|source| ClusterError::Inspect {
                what: format!("the data dir after kill {kill}"),
                source: Box::new(source),
            })?;
        let cursor =
            clickpulse_components::sources::replay::embedded::cursor(&store).map_err(|source| {
                ClusterError::Inspect {
                    what: format!("the replay position after kill {kill}"),
                    source: Box::new(source),
                }
            })?;
        self.store_checks += 1;
        Ok(cursor.map_or(0, |c| c.events))
    }

    fn finish(&mut self, _reference: &Reference, deadline: Deadline) -> Result<Option<Value>> {
        if let Some(why) = self.out_of_time.take() {
            return Ok(Some(why));
        }
        // The last life runs to the end of the log (or, if one already did, through a recovery).
        if self.life.is_none() {
            let life = self.start_life(deadline)?;
            if life == Life::OutOfTime {
                self.stop_late();
                return Ok(self.out_of_time.take());
            }
        }
        loop {
            let (proc, _) = self.life.as_mut().expect("a life runs");
            if proc
                .child
                .try_wait()
                .map_err(crate::io("wait for the pipeline"))?
                .is_some()
            {
                self.exited()?;
                return Ok(None);
            }
            if deadline.passed() {
                self.stop_late();
                return Ok(self.out_of_time.take());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn observe(&mut self) -> Result<Observed> {
        let inspect = |what: &str| {
            let what = what.to_owned();
            move |source: clickpulse_connectors::embedded::StoreError| ClusterError::Inspect {
                what,
                source: Box::new(source),
            }
        };
        let data_dir = self.data_dir();
        let store = EmbeddedStore::open(&data_dir, &[]).map_err(inspect("the data dir"))?;
        let summary = store
            .topic_summary_on_disk()
            .map_err(inspect("the topics"))?;
        let records = |topic: &str| summary[topic]["records"].as_u64().unwrap_or(0);
        let mut offers_published: u64 = 0;
        for p in 0..store
            .partitions_on_disk(topics::SPECIAL_OFFERS)
            .map_err(inspect("the offer topic"))?
        {
            let mut next = 0;
            loop {
                let batch = store
                    .fetch(topics::SPECIAL_OFFERS, p, next, 10_000)
                    .map_err(inspect("the offer topic"))?;
                let Some(last) = batch.last() else { break };
                next = last.offset + 1;
                for record in &batch {
                    decode::<Offer>(&record.value).map_err(|e| ClusterError::Inspect {
                        what: format!("offer record {p}/{}", record.offset),
                        source: Box::new(e),
                    })?;
                    offers_published += 1;
                }
            }
        }
        let offers_delivered = clickpulse_components::sinks::offer_hub::delivered_embedded(&store)
            .map_err(|e| ClusterError::Inspect {
                what: "the delivered offers".into(),
                source: Box::new(e),
            })?;
        let dashboard = clickpulse_components::sinks::dashboard_store::embedded_snapshot(&store)
            .map_err(inspect("the dashboard snapshot"))?;
        let webhooks_pending = clickpulse_components::sinks::webhook::pending_embedded(&store)
            .map_err(inspect("the webhooks' outbox"))?;
        Ok(Observed {
            events_in: records(topics::CLICK_DATA),
            events_out: records(topics::ENRICHED_CLICK_DATA),
            duplicate_offers: offers_published.saturating_sub(offers_delivered.len() as u64),
            offers_delivered,
            dashboard,
            store_checks: self.store_checks,
            service_restarts: Vec::new(),
            webhooks_pending,
        })
    }
}

impl Drop for EmbeddedDeployment {
    fn drop(&mut self) {
        if let Some((mut proc, _)) = self.life.take() {
            proc.kill();
        }
    }
}

/// Whether a life answers `GET /api/health` (it is serving, not only bound: the demo binds
/// its port before its setup, and a life's time counts from when its pipeline runs).
fn answers_health(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    if stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .is_err()
        || stream
            .write_all(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

/// Waits until `port` serves, the child exits, or the deadline passes.
fn wait_serving(child: &mut Child, port: u16, deadline: Deadline) -> Result<Life> {
    while !deadline.passed() {
        if child
            .try_wait()
            .map_err(crate::io("wait for the pipeline"))?
            .is_some()
        {
            return Ok(Life::Exited);
        }
        if answers_health(port) {
            return Ok(Life::Running);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Life::OutOfTime)
}

/// Sleeps `d` unless the child exits or the deadline passes first.
fn sleep_while_running(child: &mut Child, d: Duration, deadline: Deadline) -> Result<Life> {
    let until = Instant::now() + d.min(deadline.remaining());
    let mut exited = || {
        child
            .try_wait()
            .map(|s| s.is_some())
            .map_err(crate::io("wait for the pipeline"))
    };
    while Instant::now() < until {
        if exited()? {
            return Ok(Life::Exited);
        }
        std::thread::sleep(
            Duration::from_millis(5).min(until.saturating_duration_since(Instant::now())),
        );
    }
    Ok(if exited()? {
        Life::Exited
    } else if deadline.passed() {
        Life::OutOfTime
    } else {
        Life::Running
    })
}

/// The tail of a log file, for error messages.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(20).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}
