//! The distributed pipeline as a [`Deployment`]: a [`Cluster`] (a tansu broker on S3 storage,
//! so topics outlive a broker restart; Redis with an fsync'ed append-only file) and one
//! `clickpulse run` process per stage. Each kill picks a worker at random and restarts it at
//! once; a third of the way through the broker restarts (SIGTERM), two thirds of the way Redis
//! dies (`kill -9`) and restarts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use tracing::{info, warn};

use crate::deployment::{Deadline, Deployment, Life, Observed, Reference, unfinished};
use crate::{Cluster, Result, Spec, Storage, Tools};

/// The stages of the distributed pipeline, one worker each.
const STAGES: [&str; 5] = ["web", "replay", "enrich", "detect", "aggregate"];

/// What the cluster runs.
#[derive(Debug, Clone)]
pub struct DistributedSpec {
    /// The programs.
    pub tools: Tools,
    /// The logs to replay (absolute paths).
    pub logs: Vec<PathBuf>,
    /// The pattern directory.
    pub patterns: PathBuf,
    /// The replay's event-time speed.
    pub speed: f64,
    /// Restart the broker a third of the way through.
    pub restart_broker: bool,
    /// The run's deadline (for the report of an unfinished run).
    pub deadline: Duration,
}

/// A cluster with one worker per stage; its processes' log tails are kept in `work` when the
/// run fails.
pub struct DistributedDeployment {
    cluster: Cluster,
    spec: DistributedSpec,
    work: PathBuf,
    started: bool,
    last_replayed: u64,
    service_restarts: Vec<&'static str>,
    stats: Value,
}

impl DistributedDeployment {
    /// Starts the services (no workers yet: they start with the first life).
    pub fn start(spec: DistributedSpec, work: &Path) -> Result<Self> {
        let logs: Vec<String> = spec
            .logs
            .iter()
            .map(|p| format!("{:?}", p.display().to_string()))
            .collect();
        let cluster_spec = Spec {
            storage: Storage::S3,
            // tansu records an idempotent batch's sequence number before the batch, so a batch
            // cut off by its restart would later be acknowledged as a duplicate without being
            // stored: no idempotence there, and one request in flight to keep each partition's
            // order.
            kafka: r#"properties = { "enable.idempotence" = "false", "max.in.flight.requests.per.connection" = "1" }"#.into(),
            pipeline: "batch_size = 500".into(),
            replay: format!("speed = \"{:.0}\"\nlogs = [{}]", spec.speed, logs.join(", ")),
            patterns: spec.patterns.clone(),
            redis_cluster: false,
            extra: String::new(),
        };
        Ok(DistributedDeployment {
            cluster: Cluster::start(spec.tools.clone(), &cluster_spec)?,
            spec,
            work: work.to_owned(),
            started: false,
            last_replayed: 0,
            service_restarts: Vec::new(),
            stats: Value::Null,
        })
    }
}

impl Deployment for DistributedDeployment {
    fn mode(&self) -> &'static str {
        "distributed"
    }

    fn live(&mut self, planned: Duration, deadline: Deadline) -> Result<Life> {
        if !self.started {
            for stage in STAGES {
                self.cluster.worker(stage, stage)?;
            }
            self.started = true;
        }
        std::thread::sleep(planned.min(deadline.remaining()));
        Ok(if deadline.passed() {
            Life::OutOfTime
        } else {
            Life::Running
        })
    }

    fn kill(&mut self, kill: u32, of: u32, rng: &mut ChaCha8Rng) -> Result<u64> {
        let victim = rng.random_range(0..self.cluster.workers.len());
        if let Some(n) = self
            .cluster
            .stats()
            .and_then(|s| Cluster::stage_events(&s)[0])
        {
            self.last_replayed = n;
        }
        self.cluster.workers[victim].restart()?;
        info!(kill, worker = %self.cluster.workers[victim].name, "kill -9 and restart");
        if kill == of.div_ceil(3) && self.spec.restart_broker {
            info!("Restarting the broker (SIGTERM).");
            self.cluster.restart_broker()?;
            self.service_restarts.push("broker");
        }
        if kill == (2 * of).div_ceil(3) {
            info!("Killing Redis (kill -9) and restarting it.");
            if let Some(redis) = self.cluster.redis.as_mut() {
                redis.kill();
            }
            self.cluster.start_redis()?;
            self.service_restarts.push("redis");
        }
        Ok(self.last_replayed)
    }

    fn finish(&mut self, reference: &Reference, deadline: Deadline) -> Result<Option<Value>> {
        let finished = self.cluster.wait_until_done(
            reference.events,
            &reference.dashboard,
            deadline.remaining(),
        );
        if let Err(error) = &finished {
            warn!(%error, "The distributed pipeline did not reach the backtest's result.");
        }
        self.stats = self.cluster.stats().unwrap_or_default();
        Ok((finished.is_err() && deadline.passed())
            .then(|| unfinished(self.spec.deadline, Some(&self.stats))))
    }

    fn observe(&mut self) -> Result<Observed> {
        let stats = &self.stats;
        let [replayed, enriched, detected, aggregated] = Cluster::stage_events(stats);
        let downstream = [enriched, detected, aggregated]
            .iter()
            .map(|n| n.unwrap_or(0))
            .min()
            .unwrap_or(0);
        Ok(Observed {
            events_in: replayed.unwrap_or(0),
            events_out: downstream,
            offers_delivered: self.cluster.delivered_offers()?.into_iter().collect(),
            // Offers that reached the web stage again and were dropped there.
            duplicate_offers: stats["stages"]["web"]["details"]["duplicates"]
                .as_u64()
                .unwrap_or(0),
            dashboard: self.cluster.dashboard(),
            store_checks: 0,
            service_restarts: self.service_restarts.clone(),
            // No webhooks stage runs here (`chaos --config` is embedded only).
            webhooks_pending: Default::default(),
        })
    }

    fn keep_logs(&self) {
        let _ = std::fs::write(self.work.join("cluster-logs.txt"), self.cluster.log_tails());
    }
}
