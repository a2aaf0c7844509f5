//! The operator trait every stream stage implements.
//!
//! An operator is a plain struct with a per-event [`Operator::process`] that writes its outputs
//! to an [`Emitter`]; it knows nothing about topics' storage, brokers or threads. A runner (the
//! embedded one in `clickpulse-connectors`, the in-process backtest, later the Kafka one) feeds
//! it records, publishes what it emitted and persists what [`Operator::checkpoint`] returns in
//! the same atomic step as the consumed offsets, so a restarted operator resumes exactly where
//! its last commit left it.

use serde::Serialize;

use crate::topics::Topic;

/// One record an operator emitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Destination topic.
    pub topic: Topic,
    /// Partitioning key (the visitor id).
    pub key: String,
    /// Encoded value ([`crate::codec`]).
    pub value: Vec<u8>,
}

/// Collects what an operator emits while processing a batch.
#[derive(Debug, Default)]
pub struct Emitter {
    outputs: Vec<Output>,
}

impl Emitter {
    /// Emits `value` (encoded by [`crate::codec`]) to `topic` under `key`.
    pub fn emit<T: Serialize>(&mut self, topic: Topic, key: &str, value: &T) {
        let value = crate::codec::encode(value);
        self.outputs.push(Output {
            topic,
            key: key.to_owned(),
            value,
        });
    }

    /// The outputs emitted so far.
    pub fn outputs(&self) -> &[Output] {
        &self.outputs
    }

    /// Takes the outputs emitted so far.
    pub fn drain(&mut self) -> std::vec::Drain<'_, Output> {
        self.outputs.drain(..)
    }
}

/// State changes an operator reports at a checkpoint: key → new value, `None` to delete.
pub type StateChanges = Vec<(String, Option<Vec<u8>>)>;

/// An error restoring an operator's state.
#[derive(Debug, thiserror::Error)]
#[error("cannot restore state {key:?} of operator {operator}: {message}")]
pub struct RestoreError {
    /// The operator.
    pub operator: &'static str,
    /// The state key.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// Why an operator could not take a record: the runner dead-letters the record with this as
/// the reason (its chain of causes included) and goes on.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The bytes are not a record of the topic's type.
    #[error(transparent)]
    Decode(#[from] crate::codec::DecodeError),
    /// The record decoded but is not one the operator can take.
    #[error("{0}")]
    Invalid(String),
}

/// Each input partition's newest event time, kept by the runner: the watermark operators are
/// given is the lowest of them (every one of a visitor's records comes through one partition,
/// and another partition may run hours ahead, e.g. while a restarted stage reads one
/// partition's backlog before the next one's).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartitionTimes {
    times: Vec<(String, u32, i64)>,
}

impl PartitionTimes {
    /// Records an event at `ts_ms` on `topic`/`partition`.
    pub fn observe(&mut self, topic: &str, partition: u32, ts_ms: i64) {
        match self
            .times
            .iter_mut()
            .find(|(t, p, _)| *p == partition && t == topic)
        {
            Some((_, _, high)) => *high = (*high).max(ts_ms),
            None => self.times.push((topic.to_owned(), partition, ts_ms)),
        }
    }

    /// The lowest of the partitions' newest event times (`None` before any event).
    pub fn watermark(&self) -> Option<i64> {
        self.times.iter().map(|(_, _, ts)| *ts).min()
    }

    /// The newest event time of `topic`/`partition` (`None` before its first event).
    pub fn newest(&self, topic: &str, partition: u32) -> Option<i64> {
        self.times
            .iter()
            .find(|(t, p, _)| *p == partition && t == topic)
            .map(|(_, _, ts)| *ts)
    }

    /// Every partition's newest event time, as `(topic, partition, time)`.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u32, i64)> {
        self.times.iter().map(|(t, p, ts)| (t.as_str(), *p, *ts))
    }
}

/// How the watermark an operator is announced ([`Operator::on_watermark`]) treats disorder and
/// silence, for an operator that opts in ([`Operator::event_time_rules`]): the dashboard
/// windows' rules ([`crate::window::watermark`]). Each partition's watermark is its newest event
/// time less the allowed lateness; a partition silent for the idle timeout stops holding the
/// others back (one with unread records waits longer); when all are, the watermark moves up to
/// the newest event; and in live mode it follows the sources' frontier through a quiet stream.
/// The runner announces it after each batch and each idle poll.
#[derive(Clone)]
pub struct EventTimeRules {
    /// How far behind its partition's newest event a record may arrive and still count.
    pub allowed_lateness_ms: i64,
    /// Wall-clock silence after which a partition is idle.
    pub idle_timeout: std::time::Duration,
    /// The sources' event-time frontier (live only: embedded a promise, distributed an
    /// estimate from the published clock; see [`crate::window::Frontier::exact`]).
    pub frontier: Option<crate::window::dashboard::FrontierFn>,
}

impl std::fmt::Debug for EventTimeRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventTimeRules")
            .field("allowed_lateness_ms", &self.allowed_lateness_ms)
            .field("idle_timeout", &self.idle_timeout)
            .field("frontier", &self.frontier.is_some())
            .finish()
    }
}

/// What an operator is given with each record: where it comes from, the runner's clock and
/// watermark, and where to emit.
pub struct Context<'a> {
    /// The record's topic.
    pub topic: Topic,
    /// Its partition.
    pub partition: u32,
    /// Its offset.
    pub offset: u64,
    /// The wall time the runner took the batch at: operators never read the clock themselves,
    /// so a test gives them any time it likes.
    pub now: std::time::Instant,
    /// Where outputs go.
    pub out: &'a mut Emitter,
    times: &'a mut PartitionTimes,
}

impl<'a> Context<'a> {
    /// The context of one record, with the runner's `times`.
    pub fn new(
        topic: Topic,
        partition: u32,
        offset: u64,
        now: std::time::Instant,
        out: &'a mut Emitter,
        times: &'a mut PartitionTimes,
    ) -> Self {
        Context {
            topic,
            partition,
            offset,
            now,
            out,
            times,
        }
    }

    /// Tells the runner the record's event time (it moves the watermark). Only an operator
    /// that reads [`Context::watermark`] needs to: the runner checkpoints what it is told.
    pub fn event_time(&mut self, ts_ms: i64) {
        self.times.observe(self.topic.name(), self.partition, ts_ms);
    }

    /// The runner's watermark: the lowest of the input partitions' newest event times, this
    /// record's included once [`Context::event_time`] was called.
    pub fn watermark(&self) -> Option<i64> {
        self.times.watermark()
    }
}

/// A stream operator with a pure per-event core.
///
/// A runner calls [`Operator::restore`] for each state entry, then [`Operator::on_start`], then
/// for each batch [`Operator::on_poll`], [`Operator::process_record`] per record,
/// [`Operator::input_backlog`] per input partition and [`Operator::on_tick`]; at checkpoints
/// [`Operator::checkpoint`]; and [`Operator::on_close`] before the last checkpoint when it
/// stops.
pub trait Operator: Send {
    /// The stage's name: in metrics, logs and state keys.
    fn name(&self) -> &'static str;

    /// Every topic it consumes.
    fn input_topics(&self) -> Vec<Topic>;

    /// Called once, after the state is restored and before the first record, with the wall
    /// time the runner started at. No-op by default.
    fn on_start(&mut self, now: std::time::Instant) {
        let _ = now;
    }

    /// Decodes and processes one raw record of `ctx.topic`/`ctx.partition`. An `Err` sends the
    /// record to the dead-letter topic with the error as the reason.
    fn process_record(&mut self, value: &[u8], ctx: &mut Context<'_>) -> Result<(), RecordError>;

    /// Called with the raw records of a batch before any of them is processed: the place to
    /// fetch what the batch will need from a remote store in one round trip (the enrichment's
    /// Redis lookups). No-op by default.
    fn prepare_batch(&mut self, values: &[&[u8]]) {
        let _ = values;
    }

    /// Tells whether input `partition` of `topic` has records the stage has not read yet (the
    /// broker's consumer lag), before [`Operator::on_tick`]: a partition with a backlog is slow,
    /// not idle. No-op by default.
    fn input_backlog(&mut self, topic: Topic, partition: u32, pending: bool) {
        let _ = (topic, partition, pending);
    }

    /// Called at the start of every poll, before the runner reads the inputs: the place to
    /// sample what must be known before them (the aggregate's sources' frontier: anything
    /// published before it is then in the batch, or shows as a backlog). No-op by default; both
    /// runners call it.
    fn on_poll(&mut self) {}

    /// Called when the runner's watermark passes every value it had before: the place for
    /// event-time timers (what fires once event time has passed a deadline). Never called twice
    /// with the same or a lower value, also across restarts. Without
    /// [`Operator::event_time_rules`] that watermark is [`Context::watermark`] (the lowest input
    /// partition's newest event time), announced right after the record that moved it; with
    /// them, it follows those rules and is announced after each batch and idle poll.
    /// No-op by default.
    fn on_watermark(&mut self, watermark: i64, out: &mut Emitter) {
        let _ = (watermark, out);
    }

    /// The rules the watermark announced to [`Operator::on_watermark`] follows (`None`, the
    /// default: the lowest partition's newest event time, nothing for silence).
    fn event_time_rules(&self) -> Option<EventTimeRules> {
        None
    }

    /// Called after every batch and while idle, with the wall clock: the place for timers such
    /// as the idle-partition watermark fallback. No-op by default.
    fn on_tick(&mut self, wall: std::time::Instant, out: &mut Emitter) {
        let _ = (wall, out);
    }

    /// Called once when the embedded runner stops, before its last checkpoint: anything
    /// emitted is committed with it. (A distributed task that stops is reopened by another
    /// worker from its last commit, as after a crash, so nothing is closed there.) No-op by
    /// default.
    fn on_close(&mut self, out: &mut Emitter) {
        let _ = out;
    }

    /// How long the runner may go on processing batches without checkpointing this operator,
    /// as long as the batches emit nothing (zero, the default: a checkpoint after every batch).
    /// For an operator whose checkpoint is costly (the aggregate writes its whole window
    /// state): its input offsets are committed with the checkpoint, so after a crash it reads
    /// the input since then again and reaches the same state.
    fn checkpoint_interval(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    /// Appends the state that changed since the last checkpoint (nothing when nothing did).
    fn checkpoint(&mut self, changes: &mut StateChanges);

    /// Restores one state entry written by [`Operator::checkpoint`].
    fn restore(&mut self, key: &str, value: &[u8]) -> Result<(), RestoreError>;

    /// Counters for the stats endpoint and the backtest report.
    fn stats(&self) -> serde_json::Value;
}

/// Hands one record to `op` outside a runner (unit tests, tools): offset 0, a watermark of its
/// own, the wall time `now`.
pub fn process_one<O: Operator + ?Sized>(
    op: &mut O,
    topic: Topic,
    partition: u32,
    value: &[u8],
    now: std::time::Instant,
    out: &mut Emitter,
) -> Result<(), RecordError> {
    let mut times = PartitionTimes::default();
    op.process_record(
        value,
        &mut Context::new(topic, partition, 0, now, out, &mut times),
    )
}
