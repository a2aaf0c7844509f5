//! Runners that drive the engine's operators over the [`EmbeddedStore`].
//!
//! Each runner loops: read a batch, let the operator process it, then commit the outputs, the
//! operator's state changes and the new offsets in one transaction. A failed commit is retried
//! with backoff (the batch is kept), so nothing is lost or applied twice; shutdown is checked
//! between batches, so a stopping stage always finishes the batch it started.

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clickpulse_engine::metrics::StageMetrics;
use clickpulse_engine::operator::{Operator, StateChanges};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::error::StoreError;
use super::store::{CommitBatch, EmbeddedStore, OffsetCommit};
use crate::driver::{Record, TaskDriver};

/// Knobs shared by the runners.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Most records per commit.
    pub batch_size: usize,
    /// How long an idle stage sleeps before looking for input again (it is woken earlier by
    /// appends).
    pub idle_wait: Duration,
    /// How long the stages' commits may wait for the disk: they are made without an fsync
    /// until the last durable commit is this old ([`EmbeddedStore::commit_lazily`]), so one
    /// fsync covers the commits of every stage made meanwhile. A crash makes the stages redo
    /// at most this much work; the collector's commits are always durable before its `202`.
    /// Zero: every commit is durable.
    pub sync_interval: Duration,
    /// The consumer groups of `click-data` the replay waits for: it publishes at most
    /// [`REPLAY_AHEAD_BATCHES`] batches ahead of the slowest (backpressure), so they read what
    /// it wrote while the store still holds it in memory, instead of the replay racing ahead at
    /// full speed and the consumers reading everything back from disk. Empty: no limit.
    pub replay_consumers: Vec<&'static str>,
}

/// How many batches ([`RunnerConfig::batch_size`]) the replay may publish ahead of the slowest of
/// [`RunnerConfig::replay_consumers`].
pub const REPLAY_AHEAD_BATCHES: u64 = 4;

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            batch_size: 2_000,
            idle_wait: Duration::from_millis(100),
            sync_interval: Duration::from_millis(50),
            replay_consumers: Vec::new(),
        }
    }
}

/// The runner's own counters for a stage, persisted with its offsets.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct RunnerCounts {
    /// Records processed.
    pub events: u64,
    /// Records dead-lettered.
    pub dead_letters: u64,
    /// A source's newest event time (the collector's newest stamp): a restart resumes the
    /// event clock at or after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest_ms: Option<i64>,
}

/// The state key of a stage's [`RunnerCounts`].
pub fn runner_key(stage: &str) -> String {
    format!("runner/{stage}")
}

fn operator_prefix(stage: &str) -> String {
    format!("op/{stage}/")
}

/// One key of stage `stage`'s operator state as last committed (for inspection).
pub fn operator_state(
    store: &EmbeddedStore,
    stage: &str,
    key: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    store.state(&format!("{}{key}", operator_prefix(stage)))
}

/// The keys of stage `stage`'s operator state starting with `prefix`, with their values, as
/// last committed (for inspection); the keys as the operator names them.
pub fn operator_state_with_prefix(
    store: &EmbeddedStore,
    stage: &str,
    prefix: &str,
) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let stage_prefix = operator_prefix(stage);
    Ok(store
        .state_with_prefix(&format!("{stage_prefix}{prefix}"))?
        .into_iter()
        // The store strips what was asked for; the operator's own prefix is put back.
        .map(|(k, v)| (format!("{prefix}{k}"), v))
        .collect())
}

/// A JSON state value read back, or [`StoreError::Corrupt`] naming its key.
pub fn decode<T: for<'de> Deserialize<'de>>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: key.to_owned(),
        message: e.to_string(),
    })
}

/// Commits `batch`, retrying with backoff until it succeeds or shutdown is requested. An I/O
/// error (a full disk) is returned at once: the store refuses writes after one until it is
/// reopened, and the last commit on disk stays intact for a restart.
///
/// `lazy`: the commit may wait this long for the disk ([`EmbeddedStore::commit_lazily`]);
/// `None`: durable now.
pub fn commit_with_retry(
    store: &EmbeddedStore,
    batch: &CommitBatch,
    stage: &str,
    metrics: &StageMetrics,
    shutdown: &AtomicBool,
    lazy: Option<Duration>,
) -> Result<(), StoreError> {
    let mut backoff = Duration::from_millis(50);
    loop {
        let started = Instant::now();
        let result = match lazy {
            Some(max_delay) => store.commit_lazily(batch, max_delay),
            None => store.commit(batch),
        };
        match result {
            Ok(()) => {
                metrics.observe_commit(started.elapsed());
                return Ok(());
            }
            Err(error) => {
                metrics.error();
                if shutdown.load(Ordering::Relaxed) || error.is_fatal_io() {
                    return Err(error);
                }
                warn!(%error, stage, retry_in_ms = backoff.as_millis() as u64, "Commit failed; retrying.");
                thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// `batch` with the task's checkpoint (its changed state, under `prefix`) and the runner's
/// counts.
fn checkpointed<O: Operator>(
    task: &mut TaskDriver<O>,
    mut batch: CommitBatch,
    changes: &mut StateChanges,
    prefix: &str,
    counts_key: &str,
) -> CommitBatch {
    task.checkpoint(changes, Instant::now());
    batch
        .state
        .extend(changes.drain(..).map(|(k, v)| (format!("{prefix}{k}"), v)));
    let counts = RunnerCounts {
        events: task.events,
        dead_letters: task.dead_letters,
        newest_ms: None,
    };
    batch.state.push((
        counts_key.to_owned(),
        Some(serde_json::to_vec(&counts).expect("counts serialize")),
    ));
    batch
}

/// Runs `op` over its input topics until `shutdown` is set.
pub fn run_operator<O: Operator>(
    store: &EmbeddedStore,
    op: O,
    metrics: &StageMetrics,
    shutdown: &AtomicBool,
    config: &RunnerConfig,
) -> Result<(), StoreError> {
    let stage = op.name();
    let inputs = op.input_topics();
    let prefix = operator_prefix(stage);
    let counts_key = runner_key(stage);
    let counts: RunnerCounts = match store.state(&counts_key)? {
        Some(bytes) => decode(&counts_key, &bytes)?,
        None => RunnerCounts::default(),
    };
    let mut task =
        TaskDriver::new(op, Instant::now()).with_counts(counts.events, counts.dead_letters);
    for (key, value) in store.state_with_prefix(&prefix)? {
        task.restore(&key, &value)?;
    }
    task.start(Instant::now());
    // (topic, partition, next offset) for every input partition.
    let mut positions = Vec::new();
    for topic in &inputs {
        for p in 0..store.partitions(topic.name())? {
            positions.push((*topic, p, store.committed(stage, topic.name(), p)?));
        }
    }
    info!(stage, inputs = ?inputs, events = task.events, "Stage started.");
    metrics.record(task.events, task.dead_letters, task.op().stats());
    let per_partition = (config.batch_size / positions.len().max(1)).max(1);
    let mut changes = StateChanges::new();
    let commit = |batch: &CommitBatch| {
        commit_with_retry(
            store,
            batch,
            stage,
            metrics,
            shutdown,
            Some(config.sync_interval),
        )
    };
    // Offsets of the batches processed since the last checkpoint (see
    // `TaskDriver::checkpoint_due`), committed with the next one.
    let mut deferred: Vec<OffsetCommit> = Vec::new();
    while !shutdown.load(Ordering::Relaxed) {
        let generation = store.append_generation();
        task.poll();
        let mut batch = CommitBatch::default();
        let mut consumed = 0;
        let now = Instant::now();
        for (topic, p, position) in positions.iter_mut() {
            let fetched = store.fetch_batch(topic.name(), *p, *position, per_partition)?;
            let mut next = None;
            for record in fetched.records() {
                consumed += 1;
                next = Some(record.offset + 1);
                task.process(
                    Record {
                        topic: *topic,
                        stored_as: topic.name(),
                        partition: *p,
                        offset: record.offset,
                        key: record.key,
                        value: record.value,
                    },
                    now,
                );
            }
            let Some(next) = next else { continue };
            *position = next;
            batch.offsets.push(OffsetCommit {
                group: stage.to_owned(),
                topic: topic.to_string(),
                partition: *p,
                next_offset: next,
            });
        }
        // What is left unread, per input partition: a partition with a backlog is slow, not
        // idle (the watermark waits for it).
        let mut lag = 0;
        for (topic, p, position) in &positions {
            let behind = store.end_offset(topic.name(), *p).saturating_sub(*position);
            task.input_backlog(*topic, *p, behind > 0);
            lag += behind;
        }
        task.tick(Instant::now());
        metrics.set_lag(lag);
        if consumed == 0 && !task.has_outputs() {
            if !deferred.is_empty() {
                // Idle: the deferred checkpoint is taken now.
                batch.offsets = std::mem::take(&mut deferred);
                let batch = checkpointed(&mut task, batch, &mut changes, &prefix, &counts_key);
                commit(&batch)?;
            }
            // Timers may have changed state without input (a watermark advancing on idleness):
            // persist that too, so what is served is what a restart would restore.
            task.checkpoint(&mut changes, Instant::now());
            if !changes.is_empty() {
                let batch = CommitBatch {
                    state: changes
                        .drain(..)
                        .map(|(k, v)| (format!("{prefix}{k}"), v))
                        .collect(),
                    ..CommitBatch::default()
                };
                commit(&batch)?;
            }
            store.sync_if_due(config.sync_interval)?;
            metrics.record(task.events, task.dead_letters, task.op().stats());
            // Wake up in time to make lazy commits durable.
            let wait = if config.sync_interval.is_zero() {
                config.idle_wait
            } else {
                config.idle_wait.min(config.sync_interval)
            };
            store.wait_for_appends(generation, wait);
            continue;
        }
        batch.appends = task
            .outputs()
            .map(|o| (o.topic.name().to_owned(), o.key, o.value))
            .collect();
        if task.checkpoint_due(!batch.appends.is_empty(), Instant::now()) {
            // Older positions first: a partition's newest one is written last.
            batch.offsets.splice(0..0, deferred.drain(..));
            let batch = checkpointed(&mut task, batch, &mut changes, &prefix, &counts_key);
            commit(&batch)?;
        } else {
            deferred.append(&mut batch.offsets);
        }
        metrics.observe_batch(now.elapsed());
        metrics.record(task.events, task.dead_letters, task.op().stats());
    }
    task.close();
    if !deferred.is_empty() || task.has_outputs() {
        let batch = CommitBatch {
            offsets: deferred,
            appends: task
                .outputs()
                .map(|o| (o.topic.name().to_owned(), o.key, o.value))
                .collect(),
            ..CommitBatch::default()
        };
        let batch = checkpointed(&mut task, batch, &mut changes, &prefix, &counts_key);
        commit(&batch)?;
    }
    store.sync()?;
    info!(stage, events = task.events, "Stage stopped.");
    Ok(())
}

/// How many records of `topic` the slowest of `groups` has yet to consume.
pub fn consumer_lag(
    store: &EmbeddedStore,
    topic: &str,
    groups: &[&str],
) -> Result<u64, StoreError> {
    let mut lag = 0;
    for group in groups {
        let mut behind = 0;
        for p in 0..store.partitions(topic)? {
            behind += store
                .end_offset(topic, p)
                .saturating_sub(store.committed(group, topic, p)?);
        }
        lag = lag.max(behind);
    }
    Ok(lag)
}

/// Deletes the records of `topic` that every consumer group in `groups` has already consumed,
/// keeping at least the newest `keep` records of each partition for inspection. Returns how
/// many records were deleted.
pub fn apply_retention(
    store: &EmbeddedStore,
    topic: &str,
    groups: &[&str],
    keep: u64,
) -> Result<u64, StoreError> {
    let mut removed = 0;
    for p in 0..store.partitions(topic)? {
        let end = store.end_offset(topic, p);
        let mut before = end.saturating_sub(keep);
        for group in groups {
            before = before.min(store.committed(group, topic, p)?);
        }
        if before > 0 {
            removed += store.trim(topic, p, before)?;
        }
    }
    Ok(removed)
}
#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use clickpulse_engine::click::Click;
    use clickpulse_engine::codec;
    use clickpulse_engine::metrics::PipelineMetrics;
    use clickpulse_engine::topics;
    use serde_json::json;

    use super::*;

    /// Polls `done` until it holds. The limit only guards against a hang on a broken build
    /// (minutes, never a measure of speed).
    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let guard = Instant::now() + Duration::from_secs(300);
        while !done() {
            assert!(
                Instant::now() < guard,
                "hang guard: waited 5 minutes for {what}"
            );
            thread::sleep(Duration::from_millis(2));
        }
    }

    fn click(i: i64) -> Click {
        Click::new(
            1_000 * i,
            format!("visitor-{}", i % 3),
            "http://www.acme.com/",
        )
    }

    /// Counts clicks; checkpoints its count at most once an hour while busy.
    struct Counter {
        seen: u64,
        dirty: bool,
        checkpoints: Arc<std::sync::atomic::AtomicU64>,
    }

    impl Operator for Counter {
        fn name(&self) -> &'static str {
            "counter"
        }
        fn input_topics(&self) -> Vec<clickpulse_engine::topics::Topic> {
            vec![clickpulse_engine::topics::Topic::ClickData]
        }
        fn process_record(
            &mut self,
            _: &[u8],
            _: &mut clickpulse_engine::operator::Context<'_>,
        ) -> Result<(), clickpulse_engine::operator::RecordError> {
            self.seen += 1;
            self.dirty = true;
            Ok(())
        }
        fn checkpoint_interval(&self) -> Duration {
            Duration::from_secs(3_600)
        }
        fn checkpoint(&mut self, changes: &mut StateChanges) {
            if std::mem::take(&mut self.dirty) {
                self.checkpoints.fetch_add(1, Ordering::SeqCst);
                changes.push(("seen".to_owned(), Some(self.seen.to_le_bytes().to_vec())));
            }
        }
        fn restore(
            &mut self,
            _: &str,
            value: &[u8],
        ) -> Result<(), clickpulse_engine::operator::RestoreError> {
            self.seen = u64::from_le_bytes(value.try_into().unwrap());
            Ok(())
        }
        fn stats(&self) -> serde_json::Value {
            json!({})
        }
    }

    #[test]
    fn a_costly_checkpoint_is_deferred_while_busy_and_taken_when_idle_with_every_offset() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), &[(topics::CLICK_DATA, 2)]).unwrap();
        let appends = (0..100)
            .map(|i| {
                let c = click(i);
                (
                    topics::CLICK_DATA.to_owned(),
                    c.visitor.clone(),
                    codec::encode(&c),
                )
            })
            .collect();
        store
            .commit(&CommitBatch {
                appends,
                ..CommitBatch::default()
            })
            .unwrap();
        let checkpoints = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let metrics = PipelineMetrics::default();
        let stage = metrics.stage("counter");
        let shutdown = AtomicBool::new(false);
        // Ten records a batch: ten batches back to back, then idle.
        let config = RunnerConfig {
            batch_size: 10,
            idle_wait: Duration::from_millis(5),
            ..RunnerConfig::default()
        };
        let counter = Counter {
            seen: 0,
            dirty: false,
            checkpoints: checkpoints.clone(),
        };
        let committed = |p| store.committed("counter", topics::CLICK_DATA, p).unwrap();
        thread::scope(|s| {
            s.spawn(|| run_operator(&store, counter, &stage, &shutdown, &config).unwrap());
            wait_until("every offset to be committed", || {
                committed(0) + committed(1) >= 100
            });
            shutdown.store(true, Ordering::SeqCst);
        });
        assert_eq!(
            checkpoints.load(Ordering::SeqCst),
            1,
            "one checkpoint, when idle"
        );
        assert_eq!(
            store.state("op/counter/seen").unwrap().unwrap(),
            100u64.to_le_bytes()
        );
        assert_eq!(
            committed(0) + committed(1),
            store.end_offset(topics::CLICK_DATA, 0) + store.end_offset(topics::CLICK_DATA, 1)
        );
    }
}
