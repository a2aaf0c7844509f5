//! Runners that drive the engine's operators over the [`EmbeddedStore`].
//!
//! Each runner loops: read a batch, let the operator process it, then commit the outputs, the
//! operator's state changes and the new offsets in one transaction. A failed commit is retried
//! with backoff (the batch is kept), so nothing is lost or applied twice; shutdown is checked
//! between batches, so a stopping stage always finishes the batch it started.

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clickpulse_engine::click::Click;
use clickpulse_engine::click_log::ClickLog;
use clickpulse_engine::codec;
use clickpulse_engine::metrics::StageMetrics;
use clickpulse_engine::operator::{Operator, StateChanges};
use clickpulse_engine::reader::DeadLetter;
#[cfg(doc)]
use clickpulse_engine::replay::overlay_days;
use clickpulse_engine::replay::{EventClock, Pacer, Speed, wall_clock_ms};
use clickpulse_engine::topics;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::{info, warn};

use super::error::StoreError;
use super::store::{CommitBatch, EmbeddedStore, OffsetCommit};
use crate::driver::{Record, TaskDriver};
use crate::replay_cursor::ReplayCursor;

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
struct RunnerCounts {
    events: u64,
    dead_letters: u64,
    /// A source's newest event time (the collector's newest stamp): a restart resumes the
    /// event clock at or after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    newest_ms: Option<i64>,
}

fn runner_key(stage: &str) -> String {
    format!("runner/{stage}")
}

fn operator_prefix(stage: &str) -> String {
    format!("op/{stage}/")
}

fn decode<T: for<'de> Deserialize<'de>>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
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
fn commit_with_retry(
    store: &EmbeddedStore,
    batch: &CommitBatch,
    stage: &str,
    metrics: &StageMetrics,
    shutdown: &AtomicBool,
    lazy: Option<Duration>,
) -> Result<(), StoreError> {
    let mut backoff = Duration::from_millis(50);
    loop {
        let result = match lazy {
            Some(max_delay) => store.commit_lazily(batch, max_delay),
            None => store.commit(batch),
        };
        match result {
            Ok(()) => return Ok(()),
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
        for p in 0..store.partitions(topic)? {
            positions.push((*topic, p, store.committed(stage, topic, p)?));
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
        task.op_mut().on_poll();
        let mut batch = CommitBatch::default();
        let mut consumed = 0;
        let now = Instant::now();
        for (topic, p, position) in positions.iter_mut() {
            let fetched = store.fetch_batch(topic, *p, *position, per_partition)?;
            let mut next = None;
            for record in fetched.records() {
                consumed += 1;
                next = Some(record.offset + 1);
                task.process(
                    Record {
                        topic,
                        stored_as: topic,
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
            let behind = store.end_offset(topic, *p).saturating_sub(*position);
            task.op_mut().input_backlog(topic, *p, behind > 0);
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
            task.op_mut().checkpoint(&mut changes);
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
            .map(|o| (o.topic.to_owned(), o.key, o.value))
            .collect();
        if task.checkpoint_due(!batch.appends.is_empty(), Instant::now()) {
            // Older positions first: a partition's newest one is written last.
            batch.offsets.splice(0..0, deferred.drain(..));
            let batch = checkpointed(&mut task, batch, &mut changes, &prefix, &counts_key);
            commit(&batch)?;
        } else {
            deferred.append(&mut batch.offsets);
        }
        metrics.record(task.events, task.dead_letters, task.op().stats());
    }
    task.close();
    if !deferred.is_empty() || task.has_outputs() {
        let batch = CommitBatch {
            offsets: deferred,
            appends: task
                .outputs()
                .map(|o| (o.topic.to_owned(), o.key, o.value))
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

/// What the replay stage replays: the log sorted by event time, the rows that could not be read,
/// and a fingerprint naming the input so a data dir is never resumed on another log.
#[derive(Debug, Clone)]
pub struct ReplayInput {
    /// Valid clicks in event-time order.
    pub clicks: ClickLog,
    /// Rows that could not be read.
    pub malformed: Vec<DeadLetter>,
    /// Identifies the input (file names, sizes, counts).
    pub fingerprint: String,
}

const REPLAY_STATE: &str = "replay/state";

/// How a replay runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplayOptions {
    /// N× real time, or as fast as possible.
    pub speed: Speed,
    /// Start over (shifted by the log's span in whole days) at the end.
    pub loop_forever: bool,
    /// On first start, align the log with the present: shift it by whole days so today's time of
    /// day falls on its first day, and start this many milliseconds before now (filling the
    /// dashboard's windows at once). `None` replays the original timestamps from the start.
    pub align_warmup_ms: Option<i64>,
    /// The input is one day made of the log's days ([`overlay_days`]): aligned, it starts on the
    /// day of `now − warmup` and runs on day after day (it always loops).
    pub overlay: bool,
}

/// The newest event time the sources committed to `click-data` (the replay's last event, the
/// collector's newest stamp): where the event clock resumes after a restart, so it never goes
/// back and no live click accepted after it is late.
pub fn newest_event_time(store: &EmbeddedStore) -> Result<Option<i64>, StoreError> {
    let replay = match store.state(REPLAY_STATE)? {
        Some(bytes) => decode::<ReplayCursor>(REPLAY_STATE, &bytes)?.event_time_ms,
        None => None,
    };
    let key = runner_key("collector");
    let collector = match store.state(&key)? {
        Some(bytes) => decode::<RunnerCounts>(&key, &bytes)?.newest_ms,
        None => None,
    };
    Ok(replay.max(collector))
}

/// Replays `input` into `click-data` until it ends (or forever when looping) or `shutdown` is
/// set, keeping `clock` at the replay's event time. The position is committed with each batch,
/// so a restart resumes at the first event not yet published.
pub fn run_replay(
    store: &EmbeddedStore,
    input: &ReplayInput,
    options: ReplayOptions,
    clock: &EventClock,
    metrics: &StageMetrics,
    shutdown: &AtomicBool,
    config: &RunnerConfig,
) -> Result<(), StoreError> {
    let stored = match store.state(REPLAY_STATE)? {
        Some(bytes) => Some(decode::<ReplayCursor>(REPLAY_STATE, &bytes)?),
        None => None,
    };
    let mut state =
        ReplayCursor::resume(stored, input, &options, wall_clock_ms()).map_err(|e| {
            StoreError::ReplayInputChanged {
                stored: e.stored,
                given: e.given,
            }
        })?;
    let plan = state.plan(input, &options);
    let speed = options.speed;
    let rate = match speed {
        Speed::Factor(f) => f,
        Speed::Max => 1.0,
    };
    // Event time never goes back, not across a restart either: the clock resumes at or after
    // the newest event time committed before it (live clicks included).
    let floor = newest_event_time(store)?;
    if let Some(floor) = floor {
        clock.floor(floor);
    }
    // An aligned replay keeps event time in step with the wall clock (at `speed`); otherwise
    // the first event anchors the pace.
    let mut pacer = if state.aligned {
        let wall = wall_clock_ms();
        // At 1× event time is the wall clock; faster, it resumes where it stopped.
        let resume = match (speed, floor) {
            (Speed::Factor(f), Some(floor)) if f != 1.0 => floor,
            (Speed::Max, Some(floor)) => floor,
            (_, floor) => wall.max(floor.unwrap_or(i64::MIN)),
        };
        if floor.is_some() {
            // A restart skips what fell due while the replay was down: publishing it now would
            // put it behind the clock, and behind the live clicks stamped since.
            let skip_to = plan.first_position_at_or_after(&input.clicks, resume);
            if skip_to > state.position {
                info!(
                    from = state.position,
                    to = skip_to,
                    resume_ms = resume,
                    "Replay skips the time it was down."
                );
                state.position = skip_to;
            }
        }
        let now = Instant::now();
        clock.set(resume, now, rate);
        Pacer::anchored(speed, resume, now)
    } else {
        Pacer::new(speed)
    };
    // What the replay has yet to publish starts at its position (see `EventClock::hold`).
    let next_ts = |position: u64| {
        plan.at(position)
            .map(|(index, shift)| input.clicks.ts_ms(index) + shift)
    };
    clock.hold(next_ts(state.position));
    info!(position = state.position, events = plan.len(), %speed, aligned = state.aligned, overlay = options.overlay, "Replay started.");
    // How many times the replay started waiting for its consumers (backpressure).
    let mut held_back: u64 = 0;
    let mut waiting = false;
    let details = |s: &ReplayCursor, pacer: &Pacer, held_back: u64| {
        let mut details = s.details(&plan, pacer.speed());
        details["held_back"] = json!(held_back);
        details["overlay"] = json!(options.overlay);
        details
    };
    metrics.record(
        state.events,
        state.malformed,
        details(&state, &pacer, held_back),
    );
    let ahead = REPLAY_AHEAD_BATCHES * config.batch_size as u64;
    while !shutdown.load(Ordering::Relaxed) {
        let generation = store.append_generation();
        if !config.replay_consumers.is_empty()
            && consumer_lag(store, topics::CLICK_DATA, &config.replay_consumers)? >= ahead
        {
            if !waiting {
                waiting = true;
                held_back += 1;
                metrics.record(
                    state.events,
                    state.malformed,
                    details(&state, &pacer, held_back),
                );
            }
            // Woken by the consumers' commits (they append what they produce).
            store.wait_for_appends(generation, config.idle_wait);
            continue;
        }
        waiting = false;
        let mut batch = CommitBatch::default();
        if !state.dead_letters_written {
            for letter in &input.malformed {
                let value = codec::encode(letter);
                batch.appends.push((
                    topics::DEAD_LETTERS.to_owned(),
                    letter.source.clone(),
                    value,
                ));
            }
            state.malformed = input.malformed.len() as u64;
            state.dead_letters_written = true;
        }
        let due = ReplayCursor::due(
            &plan,
            input,
            &mut pacer,
            state.position,
            config.batch_size.saturating_sub(batch.appends.len()),
            Duration::from_millis(200),
        );
        let (wait, done) = (due.wait, due.done);
        for (_, click) in &due.clicks {
            let value = codec::encode(click);
            state.event_time_ms = Some(click.ts_ms);
            batch.appends.push((
                topics::CLICK_DATA.to_owned(),
                click.visitor.to_owned(),
                value,
            ));
            state.position += 1;
            state.events += 1;
        }
        if !batch.appends.is_empty() {
            batch.state.push((
                REPLAY_STATE.to_owned(),
                Some(serde_json::to_vec(&state).expect("replay state serializes")),
            ));
            commit_with_retry(
                store,
                &batch,
                "replay",
                metrics,
                shutdown,
                Some(config.sync_interval),
            )?;
        }
        if batch.appends.is_empty() || done || wait.is_some() {
            store.sync_if_due(config.sync_interval)?;
        }
        // The clock follows the pacer's anchor while paced, the last event when at max speed.
        match (speed, pacer.anchor()) {
            (Speed::Factor(_), Some((ts, wall))) if !done => clock.set(ts, wall, rate),
            _ if !batch.appends.is_empty() || !metrics.is_done() => {
                if let Some(ts) = state.event_time_ms {
                    clock.set(ts, Instant::now(), rate);
                }
            }
            _ => {}
        }
        clock.hold(next_ts(state.position));
        metrics.record(
            state.events,
            state.malformed,
            details(&state, &pacer, held_back),
        );
        if done {
            if !metrics.is_done() {
                info!(
                    events = state.events,
                    malformed = state.malformed,
                    "Replay reached the end of the log."
                );
            }
            metrics.set_done(true);
            thread::sleep(config.idle_wait);
        } else if let Some(wait) = wait {
            thread::sleep(wait.min(config.idle_wait));
        }
    }
    store.sync()?;
    Ok(())
}

/// How many records of `topic` the slowest of `groups` has yet to consume.
fn consumer_lag(store: &EmbeddedStore, topic: &str, groups: &[&str]) -> Result<u64, StoreError> {
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

/// A batch of live clicks waiting for the collector, with what to call once it is durable (or
/// failed).
pub struct CollectedBatch {
    /// The clicks.
    pub clicks: Vec<Click>,
    /// The request's rejected clicks, for the `dead-letters` topic.
    pub dead_letters: Vec<DeadLetter>,
    /// Called with the outcome after the commit.
    pub ack: Box<dyn FnOnce(Result<(), String>) + Send>,
}

/// The collector stage: appends live clicks to `click-data`, committing everything waiting in
/// the queue at once (group commit) and acknowledging each request only after its clicks are
/// durable. Runs until `shutdown` is set and the queue is drained.
pub fn run_collector(
    store: &EmbeddedStore,
    queue: &std::sync::mpsc::Receiver<CollectedBatch>,
    metrics: &StageMetrics,
    shutdown: &AtomicBool,
    config: &RunnerConfig,
) -> Result<(), StoreError> {
    use std::sync::mpsc::RecvTimeoutError;
    let key = runner_key("collector");
    let mut counts: RunnerCounts = match store.state(&key)? {
        Some(bytes) => decode(&key, &bytes)?,
        None => RunnerCounts::default(),
    };
    metrics.record(
        counts.events,
        counts.dead_letters,
        json!({"accepted": counts.events}),
    );
    loop {
        let first = match queue.recv_timeout(config.idle_wait) {
            Ok(b) => b,
            Err(RecvTimeoutError::Timeout) if shutdown.load(Ordering::Relaxed) => return Ok(()),
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        };
        let mut waiting = vec![first];
        let mut n = waiting[0].clicks.len();
        let mut letters = waiting[0].dead_letters.len();
        while n < config.batch_size {
            match queue.try_recv() {
                Ok(b) => {
                    n += b.clicks.len();
                    letters += b.dead_letters.len();
                    waiting.push(b);
                }
                Err(_) => break,
            }
        }
        let mut batch = CommitBatch::default();
        for b in &waiting {
            for click in &b.clicks {
                let value = codec::encode(click);
                batch
                    .appends
                    .push((topics::CLICK_DATA.to_owned(), click.visitor.clone(), value));
            }
            for letter in &b.dead_letters {
                batch.appends.push((
                    topics::DEAD_LETTERS.to_owned(),
                    letter.source.clone(),
                    codec::encode(letter),
                ));
            }
        }
        let before = counts;
        let newest = waiting
            .iter()
            .flat_map(|b| &b.clicks)
            .map(|c| c.ts_ms)
            .max();
        counts.newest_ms = counts.newest_ms.max(newest);
        counts.events += n as u64;
        counts.dead_letters += letters as u64;
        batch.state.push((
            key.clone(),
            Some(serde_json::to_vec(&counts).expect("counts serialize")),
        ));
        let outcome = commit_with_retry(store, &batch, "collector", metrics, shutdown, None);
        if outcome.is_err() {
            counts = before;
        }
        for b in waiting {
            (b.ack)(outcome.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        }
        outcome?;
        metrics.record(
            counts.events,
            counts.dead_letters,
            json!({"accepted": counts.events}),
        );
    }
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

    use clickpulse_engine::enrich::EnrichOperator;
    use clickpulse_engine::lookups::Lookups;
    use clickpulse_engine::metrics::PipelineMetrics;

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
        fn input_topics(&self) -> Vec<&'static str> {
            vec![topics::CLICK_DATA]
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

    #[test]
    fn the_replay_waits_while_its_consumers_are_four_batches_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), &[(topics::CLICK_DATA, 2)]).unwrap();
        let input = ReplayInput {
            clicks: ClickLog::from_clicks(&(0..40).map(click).collect::<Vec<_>>()),
            malformed: vec![],
            fingerprint: "test".to_owned(),
        };
        let metrics = PipelineMetrics::default();
        let shutdown = AtomicBool::new(false);
        let config = RunnerConfig {
            batch_size: 3,
            idle_wait: Duration::from_millis(5),
            replay_consumers: vec!["enrich"],
            ..RunnerConfig::default()
        };
        let options = ReplayOptions {
            speed: Speed::Max,
            loop_forever: false,
            align_warmup_ms: None,
            overlay: false,
        };
        let published = |s: &EmbeddedStore| -> u64 {
            (0..2).map(|p| s.end_offset(topics::CLICK_DATA, p)).sum()
        };
        let replay = metrics.stage("replay");
        thread::scope(|s| {
            s.spawn(|| {
                let clock = EventClock::default();
                run_replay(&store, &input, options, &clock, &replay, &shutdown, &config).unwrap()
            });
            // The replay says when it starts waiting for its consumers: the signal, not a pause.
            let held_back = |n: u64| {
                wait_until("the replay to wait for its consumers", || {
                    replay.snapshot()["details"]["held_back"].as_u64() >= Some(n)
                })
            };
            // Nobody consumes: four batches of three, then the replay waits.
            held_back(1);
            assert_eq!(published(&store), 12);
            // "enrich" commits its position: the replay goes on to four batches past it.
            let offsets = (0..2)
                .map(|p| OffsetCommit {
                    group: "enrich".to_owned(),
                    topic: topics::CLICK_DATA.to_owned(),
                    partition: p,
                    next_offset: store.end_offset(topics::CLICK_DATA, p),
                })
                .collect();
            store
                .commit(&CommitBatch {
                    offsets,
                    ..CommitBatch::default()
                })
                .unwrap();
            held_back(2);
            assert_eq!(published(&store), 24);
            assert!(!replay.is_done());
            shutdown.store(true, Ordering::SeqCst);
        });
    }

    #[test]
    fn replay_and_enrich_run_to_the_end_then_retention_trims_what_was_consumed() {
        let dir = tempfile::tempdir().unwrap();
        let layout = [
            (topics::CLICK_DATA, 2),
            (topics::ENRICHED_CLICK_DATA, 2),
            (topics::DEAD_LETTERS, 1),
        ];
        let store = Arc::new(EmbeddedStore::open(dir.path(), &layout).unwrap());
        let input = ReplayInput {
            clicks: ClickLog::from_clicks(&(0..10).map(click).collect::<Vec<_>>()),
            malformed: vec![DeadLetter::new("x.tsv", 3, "bad", b"raw")],
            fingerprint: "test".to_owned(),
        };
        let metrics = PipelineMetrics::default();
        let shutdown = AtomicBool::new(false);
        let config = RunnerConfig {
            batch_size: 3,
            idle_wait: Duration::from_millis(5),
            ..RunnerConfig::default()
        };
        let options = ReplayOptions {
            speed: Speed::Max,
            loop_forever: false,
            align_warmup_ms: None,
            overlay: false,
        };
        let clock = EventClock::default();
        let (replay, enrich) = (metrics.stage("replay"), metrics.stage("enrich"));
        thread::scope(|s| {
            s.spawn(|| {
                run_replay(&store, &input, options, &clock, &replay, &shutdown, &config).unwrap()
            });
            s.spawn(|| {
                run_operator(
                    &store,
                    EnrichOperator::new(Lookups::default()),
                    &enrich,
                    &shutdown,
                    &config,
                )
                .unwrap()
            });
            wait_until("the pipeline to finish", || enrich.events() >= 10);
            shutdown.store(true, Ordering::SeqCst);
        });
        assert!(replay.is_done());
        let enriched: u64 = (0..2)
            .map(|p| store.end_offset(topics::ENRICHED_CLICK_DATA, p))
            .sum();
        assert_eq!(enriched, 10);
        assert_eq!(store.end_offset(topics::DEAD_LETTERS, 0), 1);
        // Everything was consumed by enrich; each partition keeps only its last record.
        assert_eq!(
            apply_retention(&store, topics::CLICK_DATA, &["enrich"], 0).unwrap(),
            8
        );
        // A group that has read nothing holds everything back.
        assert_eq!(
            apply_retention(&store, topics::ENRICHED_CLICK_DATA, &["nobody"], 0).unwrap(),
            0
        );
    }
}
