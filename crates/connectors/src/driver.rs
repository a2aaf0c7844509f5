//! The task driver both runtimes call: one operator's records in; its outputs, dead letters,
//! counters and checkpoint decisions out, with no I/O. The embedded runner and the distributed
//! one fetch records their way and commit them their way (one redb transaction, or Redis
//! `MULTI/EXEC` after the broker's acknowledgements); what happens to a record in between, and
//! when the operator's state is due to be checkpointed, is decided here, once.

use std::time::{Duration, Instant};

use clickpulse_engine::DeadLetter;
use clickpulse_engine::operator::{
    Context, Emitter, Operator, Output, PartitionTimes, RestoreError, StateChanges,
};
use clickpulse_engine::topics::Topic;

/// One fetched record, as the runner hands it to the driver.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// Its topic (what the operator knows it by).
    pub topic: Topic,
    /// The topic's name where it is stored (the physical name, for a dead letter's source).
    pub stored_as: &'a str,
    /// Its partition.
    pub partition: u32,
    /// Its offset.
    pub offset: u64,
    /// Its key (the visitor id).
    pub key: &'a [u8],
    /// Its value.
    pub value: &'a [u8],
}

/// How a record went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Processed {
    /// The operator took it.
    Ok,
    /// The operator could not: a dead letter with the reason was emitted in its place.
    DeadLettered,
}

/// One operator task: the operator, what it emitted and not yet handed on, its counters, and
/// when it last checkpointed.
pub struct TaskDriver<O> {
    op: O,
    stage: &'static str,
    emitter: Emitter,
    checkpoint_every: Duration,
    last_checkpoint: Instant,
    /// The input partitions' newest event times: the watermark the operator is given.
    times: PartitionTimes,
    times_checkpointed: PartitionTimes,
    /// The highest watermark the operator was told of ([`Operator::on_watermark`]), and the
    /// one last checkpointed.
    announced: Option<i64>,
    announced_checkpointed: Option<i64>,
    /// Records taken (dead-lettered ones included).
    pub events: u64,
    /// Records dead-lettered.
    pub dead_letters: u64,
}

impl<O: Operator> TaskDriver<O> {
    /// A task of `op`, its last checkpoint counted as taken at `now`.
    pub fn new(op: O, now: Instant) -> Self {
        let checkpoint_every = op.checkpoint_interval();
        TaskDriver {
            stage: op.name(),
            op,
            emitter: Emitter::default(),
            checkpoint_every,
            last_checkpoint: now,
            times: PartitionTimes::default(),
            times_checkpointed: PartitionTimes::default(),
            announced: None,
            announced_checkpointed: None,
            events: 0,
            dead_letters: 0,
        }
    }

    /// The same task, with counters restored from its last checkpoint.
    pub fn with_counts(mut self, events: u64, dead_letters: u64) -> Self {
        self.events = events;
        self.dead_letters = dead_letters;
        self
    }

    /// The operator.
    pub fn op(&self) -> &O {
        &self.op
    }

    /// The operator, for what the runner tells it directly (backlogs, batch hints).
    pub fn op_mut(&mut self) -> &mut O {
        &mut self.op
    }

    /// Restores one state entry of the task's last checkpoint: the watermark's under
    /// [`WATERMARK_KEY`], the operator's otherwise.
    pub fn restore(&mut self, key: &str, value: &[u8]) -> Result<(), RestoreError> {
        if key == WATERMARK_KEY {
            self.times = serde_json::from_slice(value).map_err(|e| RestoreError {
                operator: self.stage,
                key: key.to_owned(),
                message: e.to_string(),
            })?;
            self.times_checkpointed = self.times.clone();
            return Ok(());
        }
        if key == ANNOUNCED_KEY {
            let announced = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| RestoreError {
                    operator: self.stage,
                    key: key.to_owned(),
                    message: "expected a watermark in ms".to_owned(),
                })?;
            self.announced = Some(announced);
            self.announced_checkpointed = Some(announced);
            return Ok(());
        }
        self.op.restore(key, value)
    }

    /// Starts the operator at wall time `now`, once its state is restored.
    pub fn start(&mut self, now: Instant) {
        self.op.on_start(now);
    }

    /// Tells the operator the runner stops (what it emits goes with the last checkpoint).
    pub fn close(&mut self) {
        self.op.on_close(&mut self.emitter);
    }

    /// The watermark over the input partitions' event times.
    pub fn watermark(&self) -> Option<i64> {
        self.times.watermark()
    }

    /// Hands `record` to the operator. A record it cannot process becomes a dead letter
    /// carrying the record and the reason (its source is `{stored_as}/{partition}`), keyed
    /// like the record, so nothing is lost and the stage goes on.
    /// `now` is the wall time the runner took the batch at.
    pub fn process(&mut self, record: Record<'_>, now: Instant) -> Processed {
        self.events += 1;
        let mut ctx = Context::new(
            record.topic,
            record.partition,
            record.offset,
            now,
            &mut self.emitter,
            &mut self.times,
        );
        let result = self.op.process_record(record.value, &mut ctx);
        if let Some(watermark) = self.times.watermark()
            && self.announced.is_none_or(|a| watermark > a)
        {
            self.announced = Some(watermark);
            self.op.on_watermark(watermark, &mut self.emitter);
        }
        match result {
            Ok(()) => Processed::Ok,
            Err(error) => {
                self.dead_letters += 1;
                let letter = DeadLetter::new(
                    &format!("{}/{}", record.stored_as, record.partition),
                    record.offset,
                    format!(
                        "stage {} cannot process the record: {}",
                        self.stage,
                        clickpulse_engine::error_chain(&error)
                    ),
                    record.value,
                );
                let key = String::from_utf8_lossy(record.key);
                self.emitter.emit(Topic::DeadLetters, &key, &letter);
                Processed::DeadLettered
            }
        }
    }

    /// Runs the operator's timers at wall time `now` (after a batch, and while idle).
    pub fn tick(&mut self, now: Instant) {
        self.op.on_tick(now, &mut self.emitter);
    }

    /// Whether anything is waiting to be handed on.
    pub fn has_outputs(&self) -> bool {
        !self.emitter.outputs().is_empty()
    }

    /// What the operator emitted since the last call, in order.
    pub fn outputs(&mut self) -> std::vec::Drain<'_, Output> {
        self.emitter.drain()
    }

    /// Whether a batch must be checkpointed at `now`: when it `emitted` outputs (they are
    /// committed with the state that produced them), or once the operator's
    /// [`checkpoint_interval`](Operator::checkpoint_interval) has passed. Otherwise its input
    /// offsets wait for the next checkpoint: after a crash the input since then is read again
    /// and reaches the same state.
    pub fn checkpoint_due(&self, emitted: bool, now: Instant) -> bool {
        emitted || now.saturating_duration_since(self.last_checkpoint) >= self.checkpoint_every
    }

    /// The operator's state changes since the last checkpoint, appended to `changes`; the
    /// checkpoint counts as taken at `now`.
    pub fn checkpoint(&mut self, changes: &mut StateChanges, now: Instant) {
        self.op.checkpoint(changes);
        if self.times != self.times_checkpointed {
            self.times_checkpointed = self.times.clone();
            changes.push((
                WATERMARK_KEY.to_owned(),
                Some(serde_json::to_vec(&self.times).expect("partition times serialize")),
            ));
        }
        if self.announced != self.announced_checkpointed
            && let Some(announced) = self.announced
        {
            self.announced_checkpointed = self.announced;
            changes.push((
                ANNOUNCED_KEY.to_owned(),
                Some(announced.to_string().into_bytes()),
            ));
        }
        self.last_checkpoint = now;
    }
}

/// The state key of the task's watermark, beside the operator's own keys (none of which starts
/// with `runner/`).
pub const WATERMARK_KEY: &str = "runner/partition-times";

/// The state key of the highest watermark the operator was told of: a restarted task does not
/// tell it again (the partition times alone can restore lower, when a partition was seen late).
pub const ANNOUNCED_KEY: &str = "runner/watermark-announced";

#[cfg(test)]
mod tests {
    use super::*;
    use clickpulse_engine::operator::RecordError;

    /// The test operator's topics (any of the pipeline's will do).
    const NUMBERS: Topic = Topic::ClickData;
    const DOUBLED: Topic = Topic::EnrichedClickData;
    const TIMERS: Topic = Topic::SpecialOffers;

    /// Doubles numbers; anything else is an error. Checkpoints its total every 10 s.
    struct Doubler {
        total: u64,
        ticks: u32,
        watermark: Option<i64>,
        announced: Vec<i64>,
        /// Whether `on_watermark` emits a timer output.
        timers: bool,
    }

    impl Operator for Doubler {
        fn name(&self) -> &'static str {
            "doubler"
        }
        fn input_topics(&self) -> Vec<Topic> {
            vec![NUMBERS]
        }
        fn process_record(
            &mut self,
            value: &[u8],
            ctx: &mut Context<'_>,
        ) -> Result<(), RecordError> {
            let input: u64 = clickpulse_engine::codec::decode(value)?;
            ctx.event_time(input as i64);
            self.total += input;
            self.watermark = ctx.watermark();
            ctx.out.emit(DOUBLED, "k", &(input * 2));
            Ok(())
        }
        fn on_tick(&mut self, _wall: Instant, _out: &mut Emitter) {
            self.ticks += 1;
        }
        fn on_watermark(&mut self, watermark: i64, out: &mut Emitter) {
            self.announced.push(watermark);
            if self.timers {
                out.emit(TIMERS, "k", &watermark);
            }
        }
        fn checkpoint_interval(&self) -> Duration {
            Duration::from_secs(10)
        }
        fn checkpoint(&mut self, changes: &mut StateChanges) {
            changes.push((
                "total".to_owned(),
                Some(self.total.to_string().into_bytes()),
            ));
        }
        fn restore(&mut self, _key: &str, _value: &[u8]) -> Result<(), RestoreError> {
            Ok(())
        }
        fn stats(&self) -> serde_json::Value {
            serde_json::json!({"total": self.total})
        }
    }

    fn driver(now: Instant) -> TaskDriver<Doubler> {
        TaskDriver::new(
            Doubler {
                total: 0,
                ticks: 0,
                watermark: None,
                announced: Vec::new(),
                timers: false,
            },
            now,
        )
    }

    fn record<'a>(partition: u32, offset: u64, key: &'a str, value: &'a [u8]) -> Record<'a> {
        Record {
            topic: NUMBERS,
            stored_as: "shop-clicks",
            partition,
            offset,
            key: key.as_bytes(),
            value,
        }
    }

    #[test]
    fn a_record_the_operator_cannot_take_becomes_a_dead_letter_with_the_reason() {
        let mut d = driver(Instant::now());
        let good = clickpulse_engine::codec::encode(&21u64);
        assert_eq!(
            d.process(record(0, 7, "k", &good), Instant::now()),
            Processed::Ok
        );
        assert_eq!(
            d.process(record(0, 8, "visitor-1", b""), Instant::now()),
            Processed::DeadLettered
        );
        let outputs: Vec<Output> = d.outputs().collect();
        assert_eq!(outputs.len(), 2);
        assert_eq!(outputs[0].topic, DOUBLED);
        assert_eq!(outputs[1].topic, Topic::DeadLetters);
        assert_eq!(outputs[1].key, "visitor-1", "keyed like the record");
        let letter: DeadLetter = clickpulse_engine::codec::decode(&outputs[1].value).unwrap();
        assert_eq!(
            letter.source, "shop-clicks/0",
            "the name it is stored under"
        );
        assert_eq!(letter.position, 8);
        assert!(
            letter
                .reason
                .starts_with("stage doubler cannot process the record: cannot decode the record"),
            "{}",
            letter.reason
        );
        assert_eq!((d.events, d.dead_letters), (2, 1));
        assert!(!d.has_outputs());
        assert_eq!(d.op().total, 21);
    }

    #[test]
    fn checkpoints_wait_for_the_interval_unless_a_batch_emitted() {
        let t0 = Instant::now();
        let mut d = driver(t0);
        assert!(!d.checkpoint_due(false, t0 + Duration::from_secs(9)));
        assert!(
            d.checkpoint_due(true, t0 + Duration::from_secs(1)),
            "outputs go with their state"
        );
        assert!(d.checkpoint_due(false, t0 + Duration::from_secs(10)));
        let mut changes = StateChanges::new();
        d.checkpoint(&mut changes, t0 + Duration::from_secs(10));
        assert_eq!(changes.len(), 1);
        assert!(!d.checkpoint_due(false, t0 + Duration::from_secs(19)));
        assert!(d.checkpoint_due(false, t0 + Duration::from_secs(20)));
    }

    #[test]
    fn counters_continue_from_the_checkpoint_and_ticks_reach_the_operator() {
        let mut d = driver(Instant::now()).with_counts(100, 3);
        d.process(record(1, 0, "k", b""), Instant::now());
        assert_eq!((d.events, d.dead_letters), (101, 4));
        d.tick(Instant::now());
        assert_eq!(d.op().ticks, 1);
    }

    #[test]
    fn the_watermark_is_the_lowest_partitions_newest_event_time_and_survives_a_restart() {
        let t0 = Instant::now();
        let mut d = driver(t0);
        let n = |v: u64| clickpulse_engine::codec::encode(&v);
        d.process(record(0, 0, "k", &n(50)), t0);
        assert_eq!(d.op().watermark, Some(50), "one partition: its newest time");
        d.process(record(1, 0, "k", &n(10)), t0);
        assert_eq!(d.op().watermark, Some(10), "the slower partition holds it");
        d.process(record(0, 1, "k", &n(70)), t0);
        assert_eq!(d.op().watermark, Some(10));
        d.process(record(1, 1, "k", &n(60)), t0);
        assert_eq!(d.op().watermark, Some(60));
        let mut changes = StateChanges::new();
        d.checkpoint(&mut changes, t0);
        let mut restarted = driver(t0);
        for (key, value) in &changes {
            restarted.restore(key, value.as_deref().unwrap()).unwrap();
        }
        assert_eq!(restarted.watermark(), Some(60));
        let mut again = StateChanges::new();
        restarted.checkpoint(&mut again, t0);
        assert!(
            again.iter().all(|(k, _)| k != WATERMARK_KEY),
            "an unchanged watermark is not written again"
        );
    }

    #[test]
    fn the_operator_hears_of_each_new_highest_watermark_once_also_after_a_restart() {
        let t0 = Instant::now();
        let mut d = driver(t0);
        d.op_mut().timers = true;
        let n = |v: u64| clickpulse_engine::codec::encode(&v);
        d.process(record(0, 0, "k", &n(50)), t0);
        // A partition seen late lowers the watermark: nothing is announced again until it
        // passes 50.
        d.process(record(1, 0, "k", &n(10)), t0);
        d.process(record(1, 1, "k", &n(40)), t0);
        d.process(record(1, 2, "k", &n(60)), t0);
        assert_eq!(d.op().announced, [50], "partition 0 still holds it at 50");
        d.process(record(0, 1, "k", &n(70)), t0);
        assert_eq!(d.op().announced, [50, 60]);
        let timers: Vec<Output> = d.outputs().filter(|o| o.topic == TIMERS).collect();
        assert_eq!(
            timers.len(),
            2,
            "what on_watermark emits goes out with the outputs"
        );
        // A restart from a checkpoint taken at 60, after which the slow partition's times come
        // in again below it: nothing is announced twice.
        let mut changes = StateChanges::new();
        d.checkpoint(&mut changes, t0);
        assert!(changes.iter().any(|(k, _)| k == ANNOUNCED_KEY));
        let mut restarted = driver(t0);
        for (key, value) in &changes {
            restarted.restore(key, value.as_deref().unwrap()).unwrap();
        }
        restarted.process(record(2, 0, "k", &n(55)), t0);
        restarted.process(record(2, 1, "k", &n(60)), t0);
        assert!(restarted.op().announced.is_empty());
        restarted.process(record(2, 2, "k", &n(65)), t0);
        restarted.process(record(1, 3, "k", &n(80)), t0);
        assert_eq!(restarted.op().announced, [65]);
        let mut again = StateChanges::new();
        restarted.checkpoint(&mut again, t0);
        let mut unchanged = StateChanges::new();
        restarted.checkpoint(&mut unchanged, t0);
        assert!(
            unchanged.iter().all(|(k, _)| k != ANNOUNCED_KEY),
            "an unchanged announcement is not written again"
        );
    }
}
