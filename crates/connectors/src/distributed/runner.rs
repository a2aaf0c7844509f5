//! Drives the engine's operators over Kafka topics with their state in Redis.
//!
//! A *task* is one operator instance with the input partitions it owns and a Redis hash holding
//! its state, its next input offsets and its output positions. Each batch:
//!
//! 1. poll records (rebalance callbacks run here; revoked partitions' tasks are dropped with
//!    their uncommitted records, newly assigned ones are opened);
//! 2. let each task's operator process its records (those below the task's stored offsets are
//!    already in its state and skipped), sending each output as it is made, so the brokers
//!    work on the first ones while the rest are processed;
//! 3. wait until the brokers acknowledged all of the batch's outputs;
//! 4. write every task's state changes, next offsets and output positions to Redis in one
//!    MULTI/EXEC;
//! 5. commit the offsets to the consumer group (for monitoring and for the next owner's start).
//!
//! A crash between 3 and 4 would make the next owner redo records whose outputs are already
//! published. It does not: every output carries its input offset in a header, and opening a
//! task scans its output partition from the stored output position, so the records up to the
//! newest input offset found there are reprocessed (rebuilding the state) with their outputs
//! suppressed. Outputs of input partition `p` go to partition `p` of the output topic (the
//! topics are co-partitioned), which is what makes that scan one partition's tail.
//!
//! A producer that is not idempotent (tansu cannot be given an idempotent one, see the
//! deployment guide) may store a batch twice when the broker restarts before acknowledging it.
//! On the topics where each record has its own lineage ([`ONE_RECORD_PER_LINEAGE`]: the replay
//! publishes each log position once, enrich one record per click) lineage rises strictly within
//! a partition, so a task drops a record whose lineage is not above the newest it processed
//! from that partition, and keeps that newest lineage with its offsets. (The offers topic
//! carries several offers per input offset; the web stage drops repeats by offer id.)

use clickpulse_engine::metrics::merge_details;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clickpulse_engine::metrics::StageMetrics;
use clickpulse_engine::operator::{Operator, Output, StateChanges};
use clickpulse_engine::topics::{self, Topic};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde_json::{Value, json};
use tracing::{info, warn};

use super::kafka::{
    Acks, BatchProducer, OutRecord, SCAN_REWIND, client_config, lineage_of, scan_lineage,
};
use super::store::{RedisStore, TaskCommit, TaskCounts};
use super::{DistributedError, KafkaConfig, RedisConfig};
use crate::driver::{Record, TaskDriver};

/// What every worker of a stage needs.
#[derive(Clone)]
pub struct WorkerContext {
    /// Brokers and topics.
    pub kafka: KafkaConfig,
    /// Redis.
    pub redis: RedisConfig,
    /// This worker's id (unique in the deployment).
    pub worker_id: String,
    /// Most records per batch.
    pub batch_size: usize,
    /// Set to stop.
    pub shutdown: Arc<AtomicBool>,
    /// The stage's counters.
    pub metrics: Arc<StageMetrics>,
}

/// How a stage's input is divided among its workers.
#[derive(Debug, Clone)]
pub enum Placement {
    /// One operator per partition of the (single) input topic, partitions balanced by the
    /// consumer group `{group_prefix}-{stage}`. `output` is the topic outputs go to, in the
    /// input's partition.
    Partitioned {
        /// Logical output topic.
        output: Option<Topic>,
    },
    /// One operator over every partition of every input topic. With a `lease`, one worker in the
    /// deployment runs it and the others wait as standbys; without, each instance runs its own
    /// (named by `task`).
    Single {
        /// Lease name, if only one instance may run.
        lease: Option<String>,
        /// The task's name (its state key).
        task: String,
    },
}

/// How long a lease lasts without renewal: a standby takes over this long after the active
/// worker died.
pub const LEASE_TTL: Duration = Duration::from_secs(10);

#[derive(Debug)]
enum RebalanceEvent {
    Assigned(Vec<(String, i32)>),
    Revoked(Vec<(String, i32)>),
}

/// Records rebalances for the poll loop, and each partition's high watermark from librdkafka's
/// statistics (the consumer's lag and backlog are measured against the stage's own next offsets:
/// a single-task stage never commits to the group, so librdkafka's `consumer_lag` is unknown).
#[derive(Default)]
struct GroupContext {
    events: Mutex<Vec<RebalanceEvent>>,
    /// Set when `events` got one: the poll loop looks at this flag per record, not the lock.
    pending: AtomicBool,
    /// Per (topic, partition): the broker's high watermark, as of the last statistics.
    high: Mutex<std::collections::HashMap<(String, u32), i64>>,
}

fn elements(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

impl ClientContext for GroupContext {
    fn stats(&self, statistics: Statistics) {
        let mut high = self.high.lock().expect("high watermark lock");
        for (name, t) in &statistics.topics {
            for p in t.partitions.values() {
                if p.partition >= 0 && p.hi_offset >= 0 {
                    high.insert((name.clone(), p.partition as u32), p.hi_offset);
                }
            }
        }
    }
}

impl GroupContext {
    /// Records waiting on `topic`/`partition` beyond `next` (0 while its end is unknown).
    fn behind(&self, topic: &str, partition: u32, next: i64) -> i64 {
        self.high
            .lock()
            .expect("high watermark lock")
            .get(&(topic.to_owned(), partition))
            .map_or(0, |hi| (hi - next).max(0))
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            self.events
                .lock()
                .expect("rebalance lock")
                .push(RebalanceEvent::Revoked(elements(tpl)));
            self.pending.store(true, Ordering::Release);
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            self.events
                .lock()
                .expect("rebalance lock")
                .push(RebalanceEvent::Assigned(elements(tpl)));
            self.pending.store(true, Ordering::Release);
        }
    }
}

/// Logical topics whose records each carry a lineage of their own, rising within a partition.
pub const ONE_RECORD_PER_LINEAGE: [Topic; 2] = [Topic::ClickData, Topic::EnrichedClickData];

struct Task<O> {
    driver: TaskDriver<O>,
    key: String,
    /// Next input offset per (physical topic, partition): records below are in the state.
    next: BTreeMap<(String, u32), i64>,
    /// Input offsets up to this one already have their outputs published.
    suppress_through: i64,
    /// Output partition of a partitioned task.
    out_partition: Option<u32>,
    outputs: BTreeMap<(String, u32), i64>,
    /// Newest input lineage per (physical topic, partition) of a [`ONE_RECORD_PER_LINEAGE`] input.
    lineage: BTreeMap<(String, u32), i64>,
    /// The suppressed and duplicate counts (events and dead letters are the driver's).
    counts: TaskCounts,
    /// Progress not yet committed to Redis.
    dirty: bool,
}

impl<O> Task<O> {
    /// Every counter, as committed.
    fn counts(&self) -> TaskCounts {
        TaskCounts {
            events: self.driver.events,
            dead_letters: self.driver.dead_letters,
            ..self.counts
        }
    }
}

struct Polled {
    /// Index of the record's topic in the stage's [`TopicNames`].
    topic: usize,
    partition: u32,
    offset: i64,
    key: String,
    value: Vec<u8>,
    lineage: Option<u64>,
}

struct Stage<'a, O, F> {
    ctx: &'a WorkerContext,
    stage: &'static str,
    placement: Placement,
    make: F,
    store: RedisStore,
    tasks: BTreeMap<u32, Task<O>>,
    inputs: Vec<String>,
    /// Seconds this worker spent in each step of its batches: poll, process, publish (send and
    /// wait for the acknowledgements), commit (Redis and the group).
    step_seconds: [f64; 4],
}

impl<O: Operator, F: FnMut() -> O> Stage<'_, O, F> {
    fn task_key(&self, name: &str) -> String {
        self.store.task_key(self.stage, name)
    }

    fn physical(&self, topic: Topic) -> String {
        self.ctx.kafka.topics.physical(topic).to_owned()
    }

    /// Opens the task of input partition `p` (partitioned) or the single task (`p` = 0).
    fn open(&mut self, p: u32) -> Result<Task<O>, DistributedError> {
        let op = (self.make)();
        let (key, out) = match &self.placement {
            Placement::Partitioned { output } => (
                self.task_key(&p.to_string()),
                output.map(|o| (self.physical(o), p)),
            ),
            Placement::Single { task, .. } => (self.task_key(task), None),
        };
        let record = self.store.load_task(&key)?;
        let mut driver = TaskDriver::new(op, Instant::now())
            .with_counts(record.counts.events, record.counts.dead_letters);
        for (k, v) in &record.state {
            driver.restore(k, v)?;
        }
        driver.start(Instant::now());
        let mut next = BTreeMap::new();
        match &self.placement {
            Placement::Partitioned { .. } => {
                let t = (self.inputs[0].clone(), p);
                next.insert(t.clone(), record.offsets.get(&t).copied().unwrap_or(0));
            }
            Placement::Single { .. } => {
                for topic in &self.inputs {
                    for q in 0..self.ctx.kafka.partitions {
                        let t = (topic.clone(), q);
                        next.insert(t.clone(), record.offsets.get(&t).copied().unwrap_or(0));
                    }
                }
            }
        }
        let suppress_through = match &out {
            Some((topic, q)) => {
                let from = record
                    .outputs
                    .get(&(topic.clone(), *q))
                    .copied()
                    .unwrap_or(0);
                scan_lineage(&self.ctx.kafka, topic, *q as i32, from)?.map_or(-1, |n| n as i64)
            }
            None => -1,
        };
        info!(stage = self.stage, task = %key, next = ?next.values().collect::<Vec<_>>(), suppress_through, events = record.counts.events, "Task opened.");
        Ok(Task {
            driver,
            key,
            next,
            suppress_through,
            out_partition: out.map(|(_, q)| q),
            outputs: record.outputs,
            lineage: record.lineage,
            counts: record.counts,
            dirty: false,
        })
    }

    fn publish_metrics(&mut self, lag: u64) {
        let stats: Vec<Value> = self.tasks.values().map(|t| t.driver.op().stats()).collect();
        let (events, dead, suppressed, duplicates) =
            self.tasks
                .values()
                .map(Task::counts)
                .fold((0, 0, 0, 0), |a, c| {
                    (
                        a.0 + c.events,
                        a.1 + c.dead_letters,
                        a.2 + c.suppressed,
                        a.3 + c.duplicates,
                    )
                });
        let mut details = merge_details(&stats);
        details["partitions"] = self
            .tasks
            .values()
            .flat_map(|t| t.next.keys().map(|(_, p)| *p))
            .collect::<Vec<_>>()
            .into();
        details["suppressed_outputs"] = suppressed.into();
        details["duplicate_inputs"] = duplicates.into();
        let [poll, process, publish, commit] = self.step_seconds.map(|t| (t * 1e3).round() / 1e3);
        details["step_seconds"] = json!({
            "poll": poll, "process": process, "publish": publish, "commit": commit,
        });
        self.ctx.metrics.record(events, dead, details);
        self.ctx.metrics.set_lag(lag);
        let snapshot = self.ctx.metrics.snapshot();
        if let Err(error) = self
            .store
            .publish_metrics(self.stage, &self.ctx.worker_id, &snapshot)
        {
            warn!(%error, "Cannot publish metrics.");
        }
    }
}

/// How long librdkafka waits before fetching again for a partition whose local queue was full
/// (`queued.max.messages.kbytes`, 64 MB by default: about 110k raw clicks). Its default of a
/// second starved the workers: they drained the queue, then polled nothing for 200–300 ms
/// while the next fetch waited out the backoff (the detect worker spent 5 of its 8.7 s per
/// million events so). A queue check every 10 ms costs nothing. `[kafka.properties]` may
/// still set it.
const FETCH_QUEUE_BACKOFF_MS: &str = "10";

/// The group consumer's librdkafka properties.
fn consumer_config(kafka: &KafkaConfig, group: &str) -> rdkafka::ClientConfig {
    let mut config = client_config(kafka);
    if !kafka.properties.contains_key("fetch.queue.backoff.ms") {
        config.set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS);
    }
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", kafka.session_timeout_ms.to_string())
        .set(
            "heartbeat.interval.ms",
            (kafka.session_timeout_ms / 4).max(100).to_string(),
        )
        .set("statistics.interval.ms", "1000");
    config
}

fn consumer(
    kafka: &KafkaConfig,
    group: &str,
) -> Result<BaseConsumer<GroupContext>, DistributedError> {
    Ok(consumer_config(kafka, group).create_with_context(GroupContext::default())?)
}

/// A record key as text: keys are visitor ids, valid UTF-8 but for a corrupt record, so the
/// plain check comes first (the lossy conversion's chunk iterator costs more per key).
fn key_text(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(text) => text.to_owned(),
        Err(_) => String::from_utf8_lossy(key).into_owned(),
    }
}

/// The offset kept for (`topic`, `partition`) in a map keyed by (topic name, partition). These
/// maps hold one entry per input partition of a task, so a scan finds it without building a key:
/// a copied topic name per record, and hashing it, were a tenth of the enrich worker's thread.
fn offset_of(map: &BTreeMap<(String, u32), i64>, topic: &str, partition: u32) -> Option<i64> {
    map.iter()
        .find(|((t, p), _)| t == topic && *p == partition)
        .map(|(_, v)| *v)
}

/// The entry of (`topic`, `partition`) in such a map, made with `default` if missing (the only
/// time the topic name is copied).
fn offset_slot<'m>(
    map: &'m mut BTreeMap<(String, u32), i64>,
    topic: &str,
    partition: u32,
    default: i64,
) -> &'m mut i64 {
    if offset_of(map, topic, partition).is_none() {
        map.insert((topic.to_owned(), partition), default);
    }
    map.iter_mut()
        .find(|((t, p), _)| t == topic && *p == partition)
        .map(|(_, v)| v)
        .expect("the entry exists")
}

/// Values per (topic index in [`TopicNames`], partition) for one batch: a few entries, found by
/// comparing two integers. The records' bookkeeping runs on these and writes the tasks' maps
/// once per batch.
struct Marks<V>(Vec<(usize, u32, V)>);

impl<V: Copy> Marks<V> {
    fn new() -> Self {
        Marks(Vec::new())
    }

    fn get(&self, topic: usize, partition: u32) -> Option<V> {
        self.0
            .iter()
            .find(|(t, p, _)| *t == topic && *p == partition)
            .map(|(_, _, v)| *v)
    }

    /// The value of (`topic`, `partition`), made by `default` if missing.
    fn slot(&mut self, topic: usize, partition: u32, default: impl FnOnce() -> V) -> &mut V {
        let i = match self
            .0
            .iter()
            .position(|(t, p, _)| *t == topic && *p == partition)
        {
            Some(i) => i,
            None => {
                self.0.push((topic, partition, default()));
                self.0.len() - 1
            }
        };
        &mut self.0[i].2
    }
}

/// The physical input topics a stage has seen records from, each with its logical name, so a
/// polled record carries an index instead of a copy of its topic's name.
struct TopicNames<'a> {
    kafka: &'a KafkaConfig,
    names: Vec<(String, Topic)>,
}

impl<'a> TopicNames<'a> {
    /// The stage's input topics (physical names), each of which must be one of the pipeline's.
    fn new(kafka: &'a KafkaConfig, inputs: &[String]) -> Result<Self, DistributedError> {
        let mut names = TopicNames {
            kafka,
            names: Vec::new(),
        };
        for topic in inputs {
            let logical = names
                .kafka
                .topics
                .logical(topic)
                .ok_or_else(|| DistributedError::UnknownTopic(topic.clone()))?;
            names.names.push((topic.clone(), logical));
        }
        Ok(names)
    }

    /// The index of input topic `topic`: a record of any other is refused, never taken for
    /// one of another topic.
    fn index(&self, topic: &str) -> Result<usize, DistributedError> {
        self.names
            .iter()
            .position(|(t, _)| t == topic)
            .ok_or_else(|| DistributedError::UnknownTopic(topic.to_owned()))
    }

    fn physical(&self, i: usize) -> &str {
        &self.names[i].0
    }

    fn logical(&self, i: usize) -> Topic {
        self.names[i].1
    }
}

/// The next offset of the task that reads `topic`/`partition`, as stored: `None` when no task
/// reads it.
fn task_next<O>(
    tasks: &BTreeMap<u32, Task<O>>,
    is_single: bool,
    topic: &str,
    partition: u32,
) -> Option<i64> {
    let task = if is_single {
        tasks.values().next()?
    } else {
        tasks.get(&partition)?
    };
    offset_of(&task.next, topic, partition)
}

/// Whether a polled record may be taken (`stored`: its task's [`task_next`]): `None` when no
/// task knows its partition. A record
/// beyond the task's next offset means the consumer started past it (the group's offset ahead
/// of Redis's, or a record fetched before a seek): it is dropped and the partition re-sought;
/// if the first record after the gap shows again after the re-read, the gap is real (offsets
/// without a record) and that record is accepted ([`gap_confirmed`]).
fn check_contiguity(
    stored: Option<i64>,
    batch_next: &Marks<i64>,
    gaps: &mut std::collections::HashMap<(String, i32), i64>,
    seeks: &mut Vec<(String, i32, i64)>,
    m: &rdkafka::message::BorrowedMessage<'_>,
    topic_index: usize,
) -> Option<bool> {
    let stored = stored?;
    let (topic, partition) = (m.topic(), m.partition());
    let next = batch_next
        .get(topic_index, partition as u32)
        .unwrap_or(stored)
        .max(stored);
    // Nearly always empty: then building and hashing the key to remove it would be wasted.
    if m.offset() == next && !gaps.is_empty() {
        gaps.remove(&(topic.to_owned(), partition));
    }
    if m.offset() <= next {
        return Some(true);
    }
    let key = (topic.to_owned(), partition);
    if gap_confirmed(gaps.entry(key.clone()), m.offset()) {
        gaps.remove(&key);
        return Some(true);
    }
    // Seek back before the expected offset, not to it: a broker that serves only whole stored
    // batches starting at or after the fetch offset (tansu on object storage) skips a batch
    // that straddles it. The records before `next` are read again and skipped. A gap that is
    // still there the second time is a real one (offsets with no record) and is accepted.
    warn!(topic = %key.0, partition = key.1, offset = m.offset(), expected = next, "Consumer ahead of the stored offset; seeking back.");
    seeks.retain(|(t, p, _)| (t, p) != (&key.0, &key.1));
    seeks.push((key.0.clone(), key.1, (next - SCAN_REWIND).max(0)));
    Some(false)
}

/// Whether a record at `offset`, beyond the expected one, confirms a gap: true only when it is
/// the first record after the gap seen before (`first`, the lowest offset beyond the expected
/// one seen so far, which this updates). Records fetched before a seek back took effect come
/// after that record: they neither confirm the gap nor replace it (replacing it made two
/// prefetched records take turns as "the first" and the consumer seek back forever).
fn gap_confirmed<K>(first: std::collections::hash_map::Entry<'_, K, i64>, offset: i64) -> bool {
    use std::collections::hash_map::Entry;
    match first {
        Entry::Occupied(e) if *e.get() == offset => true,
        Entry::Occupied(mut e) => {
            if offset < *e.get() {
                e.insert(offset);
            }
            false
        }
        Entry::Vacant(e) => {
            e.insert(offset);
            false
        }
    }
}

/// Runs `stage` with operators made by `make` until `ctx.shutdown` is set.
pub fn run_stage<O: Operator>(
    ctx: &WorkerContext,
    placement: Placement,
    mut make: impl FnMut() -> O,
) -> Result<(), DistributedError> {
    let sample = make();
    let stage = sample.name();
    let inputs: Vec<String> = sample
        .input_topics()
        .iter()
        .map(|t| ctx.kafka.topics.physical(*t).to_owned())
        .collect();
    drop(sample);
    if matches!(placement, Placement::Partitioned { .. }) && inputs.len() != 1 {
        return Err(DistributedError::Config(format!(
            "stage {stage}: a partitioned stage has one input topic"
        )));
    }
    let store = RedisStore::open(&ctx.redis, Some(ctx.shutdown.clone()))?;
    let mut s = Stage {
        ctx,
        stage,
        placement: placement.clone(),
        make,
        store,
        tasks: BTreeMap::new(),
        inputs: inputs.clone(),
        step_seconds: [0.0; 4],
    };
    let group = format!("{}-{stage}", ctx.kafka.group_prefix);
    let consumer = consumer(&ctx.kafka, &group)?;
    let lease = match &placement {
        Placement::Single { lease, .. } => lease.clone(),
        Placement::Partitioned { .. } => None,
    };
    if let Some(name) = &lease {
        let mut announced = false;
        while !s.store.lease(name, &ctx.worker_id, LEASE_TTL)? {
            if !announced {
                info!(stage, lease = %name, "Another worker is active; waiting as a standby.");
                announced = true;
            }
            s.publish_metrics(0);
            if ctx.shutdown.load(Ordering::Relaxed) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        info!(stage, lease = %name, worker = %ctx.worker_id, "Lease taken: this worker is active.");
    }
    match &placement {
        Placement::Partitioned { .. } => {
            consumer.subscribe(&[inputs[0].as_str()])?;
        }
        Placement::Single { .. } => {
            let task = s.open(0)?;
            let mut tpl = TopicPartitionList::new();
            for ((topic, p), next) in &task.next {
                tpl.add_partition_offset(topic, *p as i32, Offset::Offset(*next))?;
            }
            consumer.assign(&tpl)?;
            s.tasks.insert(0, task);
        }
    }
    let mut producer = BatchProducer::new(&ctx.kafka)?;
    info!(stage, worker = %ctx.worker_id, group = %group, inputs = ?inputs, "Stage started.");
    let mut changes = StateChanges::new();
    let mut last_metrics = Instant::now() - Duration::from_secs(10);
    let mut last_lease = Instant::now();
    let mut seeks: Vec<(String, i32, i64)> = Vec::new();
    // Per partition, the offset found right after a gap, until the gap is confirmed or filled.
    let mut gaps: std::collections::HashMap<(String, i32), i64> = std::collections::HashMap::new();
    let is_single = matches!(placement, Placement::Single { .. });
    let names = TopicNames::new(&ctx.kafka, &inputs)?;
    let result = loop {
        if ctx.shutdown.load(Ordering::Relaxed) {
            break Ok(());
        }
        if let Some(name) = &lease
            && last_lease.elapsed() > LEASE_TTL / 4
        {
            if !s.store.lease(name, &ctx.worker_id, LEASE_TTL)? {
                break Err(DistributedError::LeaseLost(name.clone()));
            }
            last_lease = Instant::now();
        }
        // 1. Poll, after sampling what must be known before the inputs are read (the
        // frontier, `TaskDriver::poll`).
        for task in s.tasks.values_mut() {
            task.driver.poll();
        }
        let mut batch: Vec<Polled> = Vec::new();
        // This batch's next offset per input partition, and the tasks' stored ones as of its
        // start (the tasks' maps change only when the batch is processed, or on a rebalance).
        let mut batch_next: Marks<i64> = Marks::new();
        let mut stored: Marks<Option<i64>> = Marks::new();
        let started = Instant::now();
        while batch.len() < ctx.batch_size {
            let waited = started.elapsed();
            let budget = if batch.is_empty() {
                Duration::from_millis(100)
            } else {
                Duration::from_millis(20)
            };
            if waited >= budget {
                break;
            }
            let polled = consumer.poll(budget - waited);
            let events: Vec<RebalanceEvent> =
                if consumer.context().pending.swap(false, Ordering::AcqRel) {
                    std::mem::take(&mut *consumer.context().events.lock().expect("rebalance lock"))
                } else {
                    Vec::new()
                };
            if !events.is_empty() {
                stored = Marks::new();
            }
            for event in events {
                match event {
                    RebalanceEvent::Revoked(parts) => {
                        for (topic, p) in parts {
                            if s.tasks.remove(&(p as u32)).is_some() {
                                info!(stage, topic = %topic, partition = p, "Partition revoked.");
                            }
                            batch.retain(|m| m.partition != p as u32);
                            batch_next.0.retain(|(_, q, _)| *q != p as u32);
                        }
                    }
                    RebalanceEvent::Assigned(parts) => {
                        for (topic, p) in parts {
                            info!(stage, topic = %topic, partition = p, "Partition assigned.");
                            let task = s.open(p as u32)?;
                            // Redis's offset rules: the group's may be ahead of it if Redis
                            // lost writes, and starting there would skip records.
                            let next = task.next.values().next().copied().unwrap_or(0);
                            seeks.push((topic, p, next));
                            s.tasks.insert(p as u32, task);
                        }
                    }
                }
            }
            seeks.retain(|(topic, p, next)| {
                match consumer.seek(topic, *p, Offset::Offset(*next), Duration::from_secs(5)) {
                    Ok(()) => false,
                    Err(error) => {
                        tracing::debug!(%error, topic, partition = p, "Seek not possible yet.");
                        true
                    }
                }
            });
            let topic_index = match &polled {
                Some(Ok(m)) => {
                    let (topic, partition) = (m.topic(), m.partition() as u32);
                    let t = names.index(topic)?;
                    let stored = *stored.slot(t, partition, || {
                        task_next(&s.tasks, is_single, topic, partition)
                    });
                    if let Some(verdict) =
                        check_contiguity(stored, &batch_next, &mut gaps, &mut seeks, m, t)
                    {
                        if !verdict {
                            continue;
                        }
                        *batch_next.slot(t, partition, || 0) = m.offset() + 1;
                    }
                    t
                }
                _ => 0,
            };
            match polled {
                Some(Ok(m)) => batch.push(Polled {
                    topic: topic_index,
                    partition: m.partition() as u32,
                    offset: m.offset(),
                    key: m.key().map(key_text).unwrap_or_default(),
                    value: m.payload().unwrap_or_default().to_vec(),
                    lineage: lineage_of(&m),
                }),
                Some(Err(error)) => {
                    ctx.metrics.error();
                    warn!(%error, stage, "Consumer error.");
                }
                None => {
                    if !batch.is_empty() {
                        break;
                    }
                }
            }
        }
        // 2. Process.
        let polled_at = Instant::now();
        // Outputs are sent as they are made, so the broker works on the first ones while the
        // rest are processed; the batch is committed only once all are acknowledged (3.).
        let acks = Acks::new();
        let mut sent: Result<(), DistributedError> = Ok(());
        let mut outputs = 0usize;
        let mut publish = |out: Output, lineage: u64, out_partition: Option<u32>| {
            if sent.is_err() {
                return;
            }
            outputs += 1;
            let partition = if out.topic == Topic::DeadLetters {
                topics::partition_for(&out.key, ctx.kafka.dead_letter_partitions)
            } else {
                out_partition
                    .unwrap_or_else(|| topics::partition_for(&out.key, ctx.kafka.partitions))
            };
            sent = producer.send(
                &OutRecord {
                    topic: ctx.kafka.topics.physical(out.topic),
                    partition: partition as i32,
                    key: &out.key,
                    value: &out.value,
                    lineage: Some(lineage),
                    origin: None,
                },
                &acks,
            );
        };
        let mut commits = Vec::new();
        let batch_time = Instant::now();
        for (&p, task) in s.tasks.iter_mut() {
            // The task's next offsets and newest lineages, as of the batch's start and then as
            // its records advance them; written to the task once, after them.
            let mut next: Marks<i64> = Marks::new();
            let mut lineage: Marks<i64> = Marks::new();
            let mut mine: Vec<&Polled> = Vec::new();
            // Whether this task published anything in this batch (then its state is committed
            // with it, whatever the checkpoint interval).
            let mut emitted = false;
            for m in &batch {
                if !(is_single || m.partition == p) {
                    continue;
                }
                let from = *next.slot(m.topic, m.partition, || {
                    offset_of(&task.next, names.physical(m.topic), m.partition).unwrap_or(0)
                });
                if m.offset >= from {
                    mine.push(m);
                }
            }
            let values: Vec<&[u8]> = mine.iter().map(|m| m.value.as_slice()).collect();
            if !values.is_empty() {
                task.driver.op_mut().prepare_batch(&values);
            }
            let mut last_offset = task.suppress_through.max(0) as u64;
            for m in &mine {
                let (topic, logical) = (names.physical(m.topic), names.logical(m.topic));
                if let Some(l) = m.lineage
                    && ONE_RECORD_PER_LINEAGE.contains(&logical)
                {
                    let newest = lineage.slot(m.topic, m.partition, || {
                        offset_of(&task.lineage, topic, m.partition).unwrap_or(-1)
                    });
                    if l as i64 <= *newest {
                        // A producer's retry of a record already processed.
                        task.counts.duplicates += 1;
                        *next.slot(m.topic, m.partition, || 0) = m.offset + 1;
                        task.dirty = true;
                        continue;
                    }
                    *newest = l as i64;
                }
                task.driver.process(
                    Record {
                        topic: logical,
                        stored_as: topic,
                        partition: m.partition,
                        offset: m.offset as u64,
                        key: m.key.as_bytes(),
                        value: &m.value,
                    },
                    batch_time,
                );
                let suppress = m.offset <= task.suppress_through;
                for out in task.driver.outputs() {
                    if suppress {
                        task.counts.suppressed += 1;
                    } else {
                        emitted = true;
                        publish(out, m.offset as u64, task.out_partition);
                    }
                }
                *next.slot(m.topic, m.partition, || 0) = m.offset + 1;
                task.dirty = true;
                last_offset = m.offset as u64;
            }
            for (map, marks) in [(&mut task.next, &next), (&mut task.lineage, &lineage)] {
                for &(t, q, value) in &marks.0 {
                    if offset_of(map, names.physical(t), q) != Some(value) {
                        *offset_slot(map, names.physical(t), q, value) = value;
                    }
                }
            }
            for ((topic, q), next) in &task.next {
                // Offsets stored under a topic that is none of the pipeline's (a renamed
                // `[kafka.topics]` entry) are no input of this stage: no backlog to report.
                let Some(logical) = ctx.kafka.topics.logical(topic) else {
                    continue;
                };
                let pending = consumer.context().behind(topic, *q, *next) > 0;
                task.driver.input_backlog(logical, *q, pending);
            }
            let now = Instant::now();
            task.driver.tick(now);
            for out in task.driver.outputs() {
                emitted = true;
                publish(out, last_offset, task.out_partition);
            }
            // A batch that published nothing may wait for the operator's checkpoint interval
            // (its progress stays in `dirty` and is committed with a later batch, or when idle).
            if task.dirty && !task.driver.checkpoint_due(emitted, now) {
                continue;
            }
            task.driver.checkpoint(&mut changes, now);
            if !changes.is_empty() {
                task.dirty = true;
            }
            if task.dirty {
                commits.push(TaskCommit {
                    key: task.key.clone(),
                    state: std::mem::take(&mut changes),
                    offsets: task.next.clone(),
                    outputs: BTreeMap::new(),
                    lineage: task.lineage.clone(),
                    counts: task.counts(),
                });
            }
        }
        if ctx.shutdown.load(Ordering::Relaxed) {
            // Nothing of this batch is committed: the next owner redoes it, with the outputs
            // already sent suppressed by its tail scan, as after a crash.
            break Ok(());
        }
        // 3. Publish and wait for the acknowledgements.
        let processed_at = Instant::now();
        if outputs > 0 || sent.is_err() {
            if let Err(error) = sent.and_then(|()| producer.wait(&acks)) {
                // Start the owned tasks over from their last commit.
                ctx.metrics.error();
                warn!(%error, stage, "Publishing failed; reopening the tasks from their last commit.");
                std::thread::sleep(Duration::from_secs(1));
                // An idempotent producer that hit a fatal error stays unusable: start a new one.
                producer = BatchProducer::new(&ctx.kafka)?;
                let owned: Vec<u32> = s.tasks.keys().copied().collect();
                for p in owned {
                    let task = s.open(p)?;
                    for ((topic, q), next) in &task.next {
                        consumer.seek(
                            topic,
                            *q as i32,
                            Offset::Offset(*next),
                            Duration::from_secs(10),
                        )?;
                    }
                    s.tasks.insert(p, task);
                }
                continue;
            }
            for ((topic, p), next) in acks.positions() {
                for task in s.tasks.values_mut() {
                    if task.out_partition == Some(p as u32) || is_single {
                        let e = task.outputs.entry((topic.clone(), p as u32)).or_insert(0);
                        *e = (*e).max(next);
                    }
                }
            }
        }
        // 4. Persist state and offsets together.
        let published_at = Instant::now();
        for c in commits.iter_mut() {
            if let Some(task) = s.tasks.values().find(|t| t.key == c.key) {
                c.outputs = task.outputs.clone();
            }
        }
        s.store.commit_tasks(&commits)?;
        for task in s.tasks.values_mut() {
            if commits.iter().any(|c| c.key == task.key) {
                task.dirty = false;
            }
        }
        // 5. Tell the group.
        if !is_single && !commits.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for task in s.tasks.values() {
                for ((topic, p), next) in &task.next {
                    tpl.add_partition_offset(topic, *p as i32, Offset::Offset(*next))?;
                }
            }
            if let Err(error) = consumer.commit(&tpl, CommitMode::Async) {
                warn!(%error, stage, "Offset commit failed (the Redis offsets rule).");
            }
        }
        if !batch.is_empty() {
            let committed_at = Instant::now();
            // Publishing waits for the brokers' acknowledgements: with Redis' transaction it
            // is the batch's commit.
            ctx.metrics.observe_commit(committed_at - processed_at);
            ctx.metrics.observe_batch(committed_at - polled_at);
            let steps = [started, polled_at, processed_at, published_at, committed_at];
            for (i, total) in s.step_seconds.iter_mut().enumerate() {
                *total += (steps[i + 1] - steps[i]).as_secs_f64();
            }
        }
        if last_metrics.elapsed() >= Duration::from_millis(500) || !batch.is_empty() {
            let lag: i64 = s
                .tasks
                .values()
                .flat_map(|t| t.next.iter())
                .map(|((topic, q), next)| consumer.context().behind(topic, *q, *next))
                .sum();
            let lag = lag as u64;
            if last_metrics.elapsed() >= Duration::from_millis(500) {
                s.publish_metrics(lag);
                last_metrics = Instant::now();
            } else {
                let stats: Vec<Value> = s.tasks.values().map(|t| t.driver.op().stats()).collect();
                let events = s.tasks.values().map(|t| t.driver.events).sum();
                let dead = s.tasks.values().map(|t| t.driver.dead_letters).sum();
                ctx.metrics.record(events, dead, merge_details(&stats));
            }
        }
    };
    if let Some(name) = &lease {
        let _ = s.store.release(name, &ctx.worker_id);
    }
    s.publish_metrics(0);
    info!(stage, worker = %ctx.worker_id, "Stage stopped.");
    result
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use std::collections::BTreeMap;

    use super::{
        FETCH_QUEUE_BACKOFF_MS, Marks, TopicNames, consumer_config, gap_confirmed, key_text,
        offset_of, offset_slot,
    };
    use crate::distributed::{DistributedError, KafkaConfig};

    #[test]
    fn a_record_of_a_topic_the_stage_does_not_read_is_refused_not_taken_for_click_data() {
        let kafka = KafkaConfig::default();
        let inputs = [
            kafka.topics.enriched_click_data.clone(),
            kafka.topics.special_offers.clone(),
        ];
        let names = TopicNames::new(&kafka, &inputs).unwrap();
        assert_eq!(names.index(&kafka.topics.special_offers).unwrap(), 1);
        assert_eq!(
            names.logical(1),
            clickpulse_engine::topics::Topic::SpecialOffers
        );
        assert!(matches!(
            names.index("shop-orders"),
            Err(DistributedError::UnknownTopic(t)) if t == "shop-orders"
        ));
        assert!(matches!(
            names.index(&kafka.topics.click_data),
            Err(DistributedError::UnknownTopic(_))
        ));
        let error = TopicNames::new(&kafka, &["shop-orders".to_owned()])
            .err()
            .expect("an unknown input topic is refused");
        assert_eq!(
            error.to_string(),
            "topic \"shop-orders\" is none of the pipeline's topics (see [kafka.topics])"
        );
    }

    #[test]
    fn marks_keep_one_value_per_topic_and_partition_made_once() {
        let mut marks: Marks<i64> = Marks::new();
        assert_eq!(marks.get(0, 3), None);
        *marks.slot(0, 3, || 10) += 1;
        *marks.slot(0, 3, || unreachable!("made once")) += 1;
        *marks.slot(1, 3, || 7) = 8;
        assert_eq!(marks.get(0, 3), Some(12));
        assert_eq!(marks.get(1, 3), Some(8));
        assert_eq!(marks.get(0, 2), None);
    }

    #[test]
    fn offsets_are_found_and_set_by_topic_name_and_partition() {
        let mut map: BTreeMap<(String, u32), i64> = BTreeMap::new();
        map.insert(("clicks".into(), 1), 5);
        assert_eq!(offset_of(&map, "clicks", 1), Some(5));
        assert_eq!(offset_of(&map, "clicks", 2), None);
        assert_eq!(offset_of(&map, "other", 1), None);
        *offset_slot(&mut map, "clicks", 1, 0) = 6;
        *offset_slot(&mut map, "other", 1, -1) += 1;
        assert_eq!(map.get(&("clicks".into(), 1)), Some(&6));
        assert_eq!(map.get(&("other".into(), 1)), Some(&0));
        assert_eq!(map.len(), 2);
    }

    #[test]
    fn the_consumer_refetches_soon_after_a_full_queue_unless_configured_otherwise() {
        let mut kafka = KafkaConfig::default();
        let config = consumer_config(&kafka, "g");
        assert_eq!(
            config.get("fetch.queue.backoff.ms"),
            Some(FETCH_QUEUE_BACKOFF_MS)
        );
        assert_eq!(config.get("group.id"), Some("g"));
        kafka
            .properties
            .insert("fetch.queue.backoff.ms".into(), "250".into());
        let config = consumer_config(&kafka, "g");
        assert_eq!(config.get("fetch.queue.backoff.ms"), Some("250"));
    }

    #[test]
    fn a_key_is_its_text_and_a_corrupt_one_is_replaced_not_dropped() {
        assert_eq!(key_text(b"7FEE0D1D-06F4"), "7FEE0D1D-06F4");
        assert_eq!(key_text("bj\u{f6}rk".as_bytes()), "bj\u{f6}rk");
        assert_eq!(key_text(b"ab\xffcd"), "ab\u{fffd}cd");
        assert_eq!(key_text(b""), "");
    }

    /// Feeds the offsets beyond the expected one a consumer sees, in order; returns those taken.
    fn taken(offsets: &[i64]) -> Vec<i64> {
        let mut gaps: HashMap<&str, i64> = HashMap::new();
        offsets
            .iter()
            .copied()
            .filter(|&o| {
                let confirmed = gap_confirmed(gaps.entry("p"), o);
                if confirmed {
                    gaps.remove("p");
                }
                confirmed
            })
            .collect()
    }

    #[test]
    fn a_gap_is_taken_when_its_first_record_shows_again() {
        // 2,197 shows the gap; 2,198 was fetched before the seek back; the re-read brings 2,197.
        assert_eq!(taken(&[2197, 2198, 2197]), [2197]);
    }

    #[test]
    fn prefetched_records_neither_confirm_nor_replace_the_gap() {
        // The livelock seen in a broker-restart run: 2,339 and 2,340 took turns as the gap's
        // first record, so neither ever confirmed it.
        assert_eq!(taken(&[2339, 2340, 2339]), [2339]);
        assert_eq!(taken(&[2340, 2341, 2342]), Vec::<i64>::new());
    }

    #[test]
    fn a_nearer_record_after_the_re_read_becomes_the_gap_s_first() {
        // A record seen first from far ahead; the re-read finds an earlier one past the gap.
        assert_eq!(taken(&[2400, 2339, 2401, 2339]), [2339]);
    }
}
