//! The operator trait every stream stage implements.
//!
//! An operator is a plain struct with a per-event [`Operator::process`] that writes its outputs
//! to an [`Emitter`]; it knows nothing about topics' storage, brokers or threads. A runner (the
//! embedded one in `clickpulse-connectors`, the in-process backtest, later the Kafka one) feeds
//! it records, publishes what it emitted and persists what [`Operator::checkpoint`] returns in
//! the same atomic step as the consumed offsets, so a restarted operator resumes exactly where
//! its last commit left it.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// One record an operator emitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Destination topic.
    pub topic: &'static str,
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
    pub fn emit<T: Serialize>(&mut self, topic: &'static str, key: &str, value: &T) {
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

/// A stream operator with a pure per-event core.
pub trait Operator: Send {
    /// The record type it consumes (JSON on the topic).
    type Input: DeserializeOwned;

    /// The stage's name: in metrics, logs and state keys.
    fn name(&self) -> &'static str;

    /// The topic it consumes.
    fn input_topic(&self) -> &'static str;

    /// Every topic it consumes; by default just [`Operator::input_topic`].
    fn input_topics(&self) -> Vec<&'static str> {
        vec![self.input_topic()]
    }

    /// Processes one record, emitting any outputs.
    fn process(&mut self, input: Self::Input, out: &mut Emitter);

    /// Decodes and processes one raw record of `topic`/`partition`. The default decodes it
    /// into [`Operator::Input`]; operators with several input topics override it. An `Err`
    /// sends the record to the dead-letter topic with the message as the reason.
    fn process_record(
        &mut self,
        topic: &str,
        partition: u32,
        value: &[u8],
        out: &mut Emitter,
    ) -> Result<(), String> {
        let _ = (topic, partition);
        let input = crate::codec::decode::<Self::Input>(value)?;
        self.process(input, out);
        Ok(())
    }

    /// Called with the raw records of a batch before any of them is processed: the place to
    /// fetch what the batch will need from a remote store in one round trip (the enrichment's
    /// Redis lookups). No-op by default.
    fn prepare_batch(&mut self, values: &[&[u8]]) {
        let _ = values;
    }

    /// Tells whether input `partition` of `topic` has records the stage has not read yet (the
    /// broker's consumer lag), before [`Operator::on_tick`]: a partition with a backlog is slow,
    /// not idle. No-op by default.
    fn input_backlog(&mut self, topic: &str, partition: u32, pending: bool) {
        let _ = (topic, partition, pending);
    }

    /// Called at the start of every poll, before the runner reads the inputs: the place to
    /// sample what must be known before them (the aggregate's sources' frontier: anything
    /// published before it is then in the batch, or shows as a backlog). No-op by default; the
    /// embedded runner calls it (the distributed one has no frontier to sample).
    fn on_poll(&mut self) {}

    /// Called after every batch and while idle, with the wall clock: the place for timers such
    /// as the idle-partition watermark fallback. No-op by default.
    fn on_tick(&mut self, wall: std::time::Instant, out: &mut Emitter) {
        let _ = (wall, out);
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
