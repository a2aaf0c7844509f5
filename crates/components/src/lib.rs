//! Clickpulse's sources, operators and sinks as plug-ins, in Vector's component layout: each in
//! a folder of its own with its settings, its implementation for each runtime and its tests,
//! and all of them registered in one list each ([`sources::SOURCES`],
//! [`operators::OPERATORS`], [`sinks::SINKS`]). `demo` (embedded) and `run` (distributed) start
//! the same plug-ins through the same lists, handing each a [`Wiring`]: the process's shutdown,
//! metrics and event clock, the HTTP server's state (where an HTTP source mounts itself) and
//! the runtime it runs on.
//!
//! Adding a source is one folder under `src/sources/` and one line in [`sources::SOURCES`]: the
//! folder declares the source's stage of the topology ([`PIPELINE`] puts them in front of the
//! operators) and, if it has settings of its own, its table of `clickpulse.toml`
//! ([`sources::SourceTable`]), which `config check` validates and `demo` and `run` hand it. An
//! operator or a sink is a folder under `src/operators/` or `src/sinks/`.

use std::collections::BTreeSet;
use std::sync::{Arc, LazyLock};

use clickpulse_connectors::distributed::DistributedError;
use clickpulse_connectors::distributed::runner::WorkerContext;
use clickpulse_connectors::embedded::runner::RunnerConfig;
use clickpulse_connectors::embedded::{EmbeddedStore, StoreError};
use clickpulse_connectors::shutdown::Shutdown;
use clickpulse_engine::metrics::PipelineMetrics;
use clickpulse_engine::replay::EventClock;
use clickpulse_engine::topology::Topology;
use clickpulse_server::AppState;

pub mod clock;
pub mod config;
pub mod fuzzing;
pub mod operators;
pub mod sinks;
pub mod sources;

/// The pipeline: every source's stage, in the registry's order, in front of the operators.
pub static PIPELINE: LazyLock<Topology> =
    LazyLock::new(|| Topology::with_sources(sources::SOURCES.iter().map(|s| s.stage)));

/// Why a plug-in could not start.
#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    /// Its thread could not be started.
    #[error("cannot start stage {stage}")]
    Spawn {
        /// The stage.
        stage: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// It could not read its input.
    #[error("cannot read the input of stage {stage}")]
    Input {
        /// The stage.
        stage: &'static str,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// Its settings lack something it needs.
    #[error("stage {stage} needs {what}")]
    Missing {
        /// The stage.
        stage: &'static str,
        /// What it lacks.
        what: &'static str,
    },
    /// It was told to run without its table of the configuration.
    #[error("stage {stage} needs a [{table}] table in the configuration")]
    Unconfigured {
        /// The stage.
        stage: &'static str,
        /// The table.
        table: &'static str,
    },
    /// Its table of the configuration is wrong.
    #[error("stage {stage}: {problems}")]
    Invalid {
        /// The stage.
        stage: &'static str,
        /// Every problem, one per line.
        problems: String,
    },
    /// The embedded store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The brokers or Redis failed.
    #[error(transparent)]
    Distributed(#[from] DistributedError),
}

/// What a plug-in's settings must hold where it runs: `value`, or [`ComponentError::Missing`].
pub(crate) fn required<T: Clone>(
    value: &Option<T>,
    stage: &'static str,
    what: &'static str,
) -> Result<T, ComponentError> {
    value.clone().ok_or(ComponentError::Missing { stage, what })
}

/// Any error, boxed (what a caller-supplied input loader returns).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a plug-in is started with.
pub struct Wiring<'a> {
    /// The process's one shutdown: every thread a plug-in starts stops on it, and its failure
    /// is reported through it.
    pub stop: &'a Shutdown,
    /// The process's counters (a plug-in records under its stage's name).
    pub metrics: &'a Arc<PipelineMetrics>,
    /// The event clock live clicks are stamped with.
    pub clock: &'a Arc<EventClock>,
    /// The HTTP server's state: an HTTP source mounts itself here.
    pub http: &'a mut AppState,
    /// Where it runs.
    pub runtime: Runtime<'a>,
}

impl Wiring<'_> {
    /// Whether this process hosts `stage` (embedded: every stage).
    pub fn hosts(&self, stage: &str) -> bool {
        match &self.runtime {
            Runtime::Embedded(_) => true,
            Runtime::Distributed(rt) => rt.hosted.contains(stage),
        }
    }
}

/// The runtime a plug-in runs on.
pub enum Runtime<'a> {
    /// One process over the durable local store.
    Embedded(EmbeddedRuntime<'a>),
    /// Kafka-protocol brokers and Redis, each stage a worker in a group.
    Distributed(DistributedRuntime<'a>),
}

/// The embedded runtime.
pub struct EmbeddedRuntime<'a> {
    /// The data dir's store.
    pub store: &'a Arc<EmbeddedStore>,
    /// The runners' knobs.
    pub runner: &'a RunnerConfig,
    /// What each started source has accepted and not yet committed to its topic (the live
    /// aggregate's frontier waits for these to drain).
    pub pending: &'a mut Vec<Pending>,
}

/// How many events a source has accepted and not yet committed.
pub type Pending = Arc<dyn Fn() -> usize + Send + Sync>;

/// The distributed runtime.
pub struct DistributedRuntime<'a> {
    /// A worker context for a stage of this process.
    pub worker: &'a dyn Fn(&'static str) -> WorkerContext,
    /// The stages this process hosts.
    pub hosted: &'a BTreeSet<&'static str>,
}

/// Runs an embedded stage on a thread of its own; its failure is reported with a hint where
/// the cause is the data dir's disk.
pub fn spawn_embedded(
    stop: &Shutdown,
    stage: &'static str,
    work: impl FnOnce() -> Result<(), StoreError> + Send + 'static,
) -> Result<(), ComponentError> {
    stop.spawn_stage(stage, move || work().map_err(DiskHint))
        .map_err(|source| ComponentError::Spawn { stage, source })
}

/// Runs a distributed stage on a thread of its own.
pub fn spawn_distributed(
    stop: &Shutdown,
    stage: &'static str,
    work: impl FnOnce() -> Result<(), DistributedError> + Send + 'static,
) -> Result<(), ComponentError> {
    stop.spawn_stage(stage, work)
        .map_err(|source| ComponentError::Spawn { stage, source })
}

/// An embedded stage's error as it is reported: with a hint where the cause is the disk.
struct DiskHint(StoreError);

impl std::fmt::Display for DiskHint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        if self.0.is_fatal_io() {
            f.write_str(
                " (is the data dir's disk full or failing? The last commit is intact: restart \
                 once it can be written)",
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clickpulse_engine::topics::Topic;

    use super::*;

    #[test]
    fn the_pipeline_is_sound() {
        assert_eq!(PIPELINE.problems(), Vec::<String>::new());
        assert_eq!(
            PIPELINE.stage_names(),
            [
                "replay",
                "collector",
                "postgres",
                "snowplow",
                "enrich",
                "detect",
                "aggregate",
                "web",
                "webhooks"
            ]
        );
        assert_eq!(PIPELINE.consumers_of(Topic::ClickData), ["enrich"]);
    }
}
