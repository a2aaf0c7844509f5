//! The distributed tests' deployment: [`clickpulse_chaos::Cluster`] (a tansu broker, a private
//! redis-server and `clickpulse run` workers as child processes), with the test binary's
//! `clickpulse`, failing the test on any error and printing every process's log tail when a
//! test fails.

#![allow(dead_code, unreachable_pub)]

use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::time::Duration;

pub use clickpulse_chaos::Storage;
use clickpulse_chaos::{Spec, Tools};
use clickpulse_engine::window::DashboardSnapshot;
use serde_json::Value;

use super::common::bin;

pub struct Cluster(clickpulse_chaos::Cluster);

impl Deref for Cluster {
    type Target = clickpulse_chaos::Cluster;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Cluster {
    /// A cluster with an in-memory broker; `pipeline` and `replay` are lines added to those
    /// tables of the config.
    pub fn start(pipeline: &str, replay: &str) -> Cluster {
        Cluster::start_with(Storage::Memory, "", pipeline, replay)
    }

    /// [`Cluster::start`] with the broker's storage and extra `[kafka]` lines.
    pub fn start_with(storage: Storage, kafka: &str, pipeline: &str, replay: &str) -> Cluster {
        Cluster::start_spec(Spec {
            storage,
            kafka: kafka.to_owned(),
            pipeline: pipeline.to_owned(),
            replay: replay.to_owned(),
            ..Spec::default()
        })
    }

    /// A cluster for `spec` (its pattern dir: the test pattern).
    pub fn start_spec(spec: Spec) -> Cluster {
        Cluster::start_spec_with(
            spec,
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/offer-patterns"),
        )
    }

    /// A cluster for `spec` whose detection runs the patterns of `patterns`.
    pub fn start_spec_with(spec: Spec, patterns: &Path) -> Cluster {
        let spec = Spec {
            patterns: patterns.to_owned(),
            ..spec
        };
        Cluster(clickpulse_chaos::Cluster::start(Tools::from_env(bin()), &spec).unwrap())
    }

    pub fn worker(&mut self, stage: &str, id: &str) -> usize {
        self.0.worker(stage, id).unwrap()
    }

    /// A worker with more `clickpulse run` arguments.
    pub fn worker_with(&mut self, stage: &str, id: &str, extra: &[String]) -> usize {
        self.0.worker_with(stage, id, extra).unwrap()
    }

    pub fn start_redis(&mut self) {
        self.0.start_redis().unwrap()
    }

    pub fn restart_broker(&mut self) {
        self.0.restart_broker().unwrap()
    }

    pub fn redis(&self) -> clickpulse_chaos::RedisConn {
        self.0.redis().unwrap()
    }

    pub fn delivered_offers(&self) -> Vec<String> {
        self.0.delivered_offers().unwrap()
    }

    pub fn wait_until_done(
        &self,
        events: u64,
        expected: &DashboardSnapshot,
        timeout: Duration,
    ) -> Value {
        self.0
            .wait_until_done(events, expected, timeout)
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.0.log_tails());
        }
    }
}
