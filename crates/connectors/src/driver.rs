//! The task driver both runtimes call: one operator's records in; its outputs, dead letters,
//! counters and checkpoint decisions out, with no I/O. The embedded runner and the distributed
//! one fetch records their way and commit them their way (one redb transaction, or Redis
//! `MULTI/EXEC` after the broker's acknowledgements); what happens to a record in between, and
//! when the operator's state is due to be checkpointed, is decided here, once.

use std::time::{Duration, Instant};

use clickpulse_engine::DeadLetter;
use clickpulse_engine::operator::{
    Context, Emitter, EventTimeRules, Operator, Output, PartitionTimes, RestoreError, StateChanges,
};
use clickpulse_engine::topics::Topic;
use clickpulse_engine::window::{Frontier, Watermarks};

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

/// The watermark of an operator with [`EventTimeRules`]: the windows' [`Watermarks`] over its
/// input partitions (numbered in the order they are first seen).
struct RuledClock {
    marks: Watermarks,
    partitions: Vec<(Topic, u32)>,
    frontier: Option<clickpulse_engine::window::dashboard::FrontierFn>,
    /// The frontier as sampled before the inputs were read ([`TaskDriver::poll`]).
    sampled: Option<Frontier>,
}

impl RuledClock {
    fn new(rules: EventTimeRules) -> Self {
        RuledClock {
            marks: Watermarks::new(rules.allowed_lateness_ms, rules.idle_timeout),
            partitions: Vec::new(),
            frontier: rules.frontier,
            sampled: None,
        }
    }

    fn slot(&mut self, topic: Topic, partition: u32) -> u32 {
        let at = match self
            .partitions
            .iter()
            .position(|&(t, p)| t == topic && p == partition)
        {
            Some(at) => at,
            None => {
                self.partitions.push((topic, partition));
                self.partitions.len() - 1
            }
        };
        at as u32
    }

    /// Restores the partitions' newest event times of a checkpoint, as seen at `wall`.
    fn restore_times(&mut self, times: &PartitionTimes, wall: Instant) {
        let mut restored = std::collections::BTreeMap::new();
        for (topic, partition, ts) in times.iter() {
            if let Some(topic) = Topic::from_name(topic) {
                restored.insert(self.slot(topic, partition), ts);
            }
        }
        self.marks.restore_partitions(&restored, wall);
    }
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
    /// The watermark's lateness, idle and frontier rules, for an operator that has them.
    rules: Option<RuledClock>,
    /// Records taken (dead-lettered ones included).
    pub events: u64,
    /// Records dead-lettered.
    pub dead_letters: u64,
}

impl<O: Operator> TaskDriver<O> {
    /// A task of `op`, its last checkpoint counted as taken at `now`.
    pub fn new(op: O, now: Instant) -> Self {
        let checkpoint_every = op.checkpoint_interval();
        let rules = op.event_time_rules().map(RuledClock::new);
        TaskDriver {
            rules,
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
        if let Some(rules) = &mut self.rules {
            // The restored partitions hold the watermark where it was until they deliver more
            // or go idle; it never moves below what was announced.
            rules.restore_times(&self.times, now);
            rules.marks.restore(self.announced);
        }
        self.op.on_start(now);
    }

    /// Called at the start of every poll, before the runner reads the inputs: samples what
    /// must be known before them (the sources' frontier: anything published before it is then
    /// in the batch, or shows as a backlog).
    pub fn poll(&mut self) {
        if let Some(rules) = &mut self.rules {
            rules.sampled = rules.frontier.as_ref().and_then(|f| f());
        }
        self.op.on_poll();
    }

    /// Tells whether input `partition` of `topic` has records not read yet (a partition with
    /// a backlog is slow, not idle), before [`TaskDriver::tick`].
    pub fn input_backlog(&mut self, topic: Topic, partition: u32, pending: bool) {
        if let Some(rules) = &mut self.rules {
            let slot = rules.slot(topic, partition);
            rules.marks.set_backlog(slot, pending);
        }
        self.op.input_backlog(topic, partition, pending);
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
        match &mut self.rules {
            Some(rules) => {
                if let Some(ts) = self.times.newest(record.topic.name(), record.partition) {
                    let slot = rules.slot(record.topic, record.partition);
                    rules.marks.observe(slot, ts, now);
                }
            }
            None => {
                if let Some(watermark) = self.times.watermark() {
                    self.announce(watermark);
                }
            }
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

    /// Tells the operator of `watermark` if it is higher than any before.
    fn announce(&mut self, watermark: i64) {
        if self.announced.is_none_or(|a| watermark > a) {
            self.announced = Some(watermark);
            self.op.on_watermark(watermark, &mut self.emitter);
        }
    }

    /// Runs the operator's timers at wall time `now` (after a batch, and while idle); with
    /// [`EventTimeRules`], announces the watermark they give now.
    pub fn tick(&mut self, now: Instant) {
        if let Some(rules) = &mut self.rules {
            let sampled = rules.sampled.take();
            if let Some(watermark) = rules.marks.advance_with(now, sampled) {
                self.announce(watermark);
            }
        }
        self.op.on_tick(now, &mut self.emitter);
    }

    /// The watermark announced to the operator last (`None` before the first).
    pub fn announced(&self) -> Option<i64> {
        self.announced
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
    use std::sync::{Arc, Mutex};

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
        rules: Option<EventTimeRules>,
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
        fn event_time_rules(&self) -> Option<EventTimeRules> {
            self.rules.clone()
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
                rules: None,
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

    /// A task whose operator follows the windows' rules: 2 ms of lateness, 100 ms of silence
    /// makes a partition idle, and `frontier` (if any) for the sources' frontier.
    fn ruled(now: Instant, frontier: Option<Arc<Mutex<Option<Frontier>>>>) -> TaskDriver<Doubler> {
        let mut d = driver(now);
        d.op_mut().rules = Some(EventTimeRules {
            allowed_lateness_ms: 2,
            idle_timeout: Duration::from_millis(100),
            frontier: frontier.map(|f| {
                Arc::new(move || *f.lock().unwrap())
                    as clickpulse_engine::window::dashboard::FrontierFn
            }),
        });
        // The rules are read when the task is made.
        TaskDriver::new(std::mem::replace(d.op_mut(), driver(now).op), now)
    }

    /// A started ruled task whose partition 0 is at 50 s and partition 1 at 10 s (at `t0`).
    fn started_at_50_and_10(t0: Instant) -> TaskDriver<Doubler> {
        let n = |v: u64| clickpulse_engine::codec::encode(&v);
        let mut d = ruled(t0, None);
        d.start(t0);
        d.process(record(0, 0, "k", &n(50 * S)), t0);
        d.process(record(1, 0, "k", &n(10 * S)), t0);
        d
    }

    /// Times in whole seconds (the windows' watermark is floored to a second).
    const S: u64 = 1_000;

    #[test]
    fn with_rules_a_silent_partition_stops_holding_the_watermark_back_after_the_idle_timeout() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let n = |v: u64| clickpulse_engine::codec::encode(&v);
        let mut d = started_at_50_and_10(t0);
        d.tick(t0);
        assert_eq!(
            d.op().announced,
            [9 * S as i64],
            "the slower partition, less the lateness"
        );
        // Partition 1 goes quiet while partition 0 goes on (the stage polls every 40 ms: a
        // longer gap would count as its own stall, not as its inputs' silence).
        d.process(record(0, 1, "k", &n(70 * S)), ms(40));
        d.tick(ms(40));
        d.process(record(0, 2, "k", &n(75 * S)), ms(80));
        d.tick(ms(80));
        assert_eq!(d.op().announced, [9 * S as i64], "not idle yet");
        d.process(record(0, 3, "k", &n(80 * S)), ms(120));
        d.tick(ms(120));
        assert_eq!(
            d.op().announced,
            [9 * S as i64, 79 * S as i64],
            "partition 1 is idle"
        );
        // Everything quiet: the stream paused, the watermark moves up to the newest event.
        for wall in [160, 200, 240] {
            d.tick(ms(wall));
        }
        assert_eq!(d.op().announced.last(), Some(&(80 * S as i64)));
    }

    #[test]
    fn with_rules_a_partition_with_unread_records_is_slow_not_idle() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let n = |v: u64| clickpulse_engine::codec::encode(&v);
        let mut d = started_at_50_and_10(t0);
        d.input_backlog(NUMBERS, 1, true);
        for wall in (40..400).step_by(40) {
            d.process(record(0, wall, "k", &n(50 * S + wall)), ms(wall));
            d.tick(ms(wall));
        }
        assert_eq!(
            d.op().announced,
            [9 * S as i64],
            "held back for its backlog"
        );
        d.input_backlog(NUMBERS, 1, false);
        d.process(record(0, 400, "k", &n(60 * S)), ms(400));
        d.tick(ms(400));
        assert_eq!(d.op().announced, [9 * S as i64, 59 * S as i64]);
    }

    #[test]
    fn with_rules_and_a_frontier_a_drained_stream_follows_the_clock() {
        let t0 = Instant::now();
        let n = |v: u64| clickpulse_engine::codec::encode(&v);
        let frontier = Arc::new(Mutex::new(None));
        let mut d = ruled(t0, Some(frontier.clone()));
        d.start(t0);
        *frontier.lock().unwrap() = Some(Frontier {
            low_ms: 20 * S as i64,
            drained: false,
            exact: true,
        });
        d.poll();
        d.process(record(0, 0, "k", &n(10 * S)), t0);
        d.tick(t0);
        assert_eq!(
            d.op().announced,
            [9 * S as i64],
            "inputs decide while not drained"
        );
        // Nothing more on its way, and the clock at 600 s: the watermark follows it.
        *frontier.lock().unwrap() = Some(Frontier {
            low_ms: 600 * S as i64,
            drained: true,
            exact: true,
        });
        d.poll();
        d.tick(t0);
        assert_eq!(d.op().announced.last(), Some(&(599 * S as i64)));
        // Not drained again: never more than what the frontier allows.
        *frontier.lock().unwrap() = Some(Frontier {
            low_ms: 700 * S as i64,
            drained: false,
            exact: true,
        });
        d.poll();
        d.process(record(0, 1, "k", &n(900 * S)), t0);
        d.tick(t0);
        assert_eq!(d.op().announced.last(), Some(&(699 * S as i64)));
    }

    #[test]
    fn with_rules_a_restarted_task_holds_its_partitions_until_they_deliver_or_go_idle() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let n = |v: u64| clickpulse_engine::codec::encode(&v);
        let mut d = started_at_50_and_10(t0);
        d.tick(t0);
        let mut changes = StateChanges::new();
        d.checkpoint(&mut changes, t0);
        let mut restarted = ruled(ms(1_000), None);
        for (key, value) in &changes {
            restarted.restore(key, value.as_deref().unwrap()).unwrap();
        }
        restarted.start(ms(1_000));
        restarted.process(record(0, 1, "k", &n(60 * S)), ms(1_050));
        restarted.tick(ms(1_050));
        assert!(
            restarted.op().announced.is_empty(),
            "partition 1 still holds it at 10 s: {:?}",
            restarted.op().announced
        );
        restarted.process(record(0, 2, "k", &n(61 * S)), ms(1_090));
        restarted.tick(ms(1_090));
        assert!(restarted.op().announced.is_empty());
        restarted.process(record(0, 3, "k", &n(61 * S)), ms(1_130));
        restarted.tick(ms(1_130));
        assert_eq!(
            restarted.op().announced,
            [60 * S as i64],
            "partition 1 idle since the restart"
        );
    }
}
