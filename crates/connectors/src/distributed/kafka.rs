//! Kafka clients: configuration, topic creation, a producer whose batches are acknowledged as a
//! whole, and the tail scan a worker runs when it takes over a partition.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use super::{DistributedError, KafkaConfig};

/// Header carrying the input offset (or replay position) a record was produced from.
pub const LINEAGE_HEADER: &str = "clickpulse-src";
/// The header carrying a record's [`OutRecord::origin`].
pub const ORIGIN_HEADER: &str = "clickpulse-origin";

/// librdkafka properties shared by every client.
pub fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers);
    let s = &config.security;
    c.set("security.protocol", &s.protocol);
    let password = std::env::var("CLICKPULSE_KAFKA_PASSWORD")
        .ok()
        .or_else(|| s.sasl_password.clone());
    for (key, value) in [
        ("sasl.mechanism", s.sasl_mechanism.clone()),
        ("sasl.username", s.sasl_username.clone()),
        ("sasl.password", password),
        ("ssl.ca.location", s.ssl_ca_location.clone()),
        (
            "ssl.certificate.location",
            s.ssl_certificate_location.clone(),
        ),
        ("ssl.key.location", s.ssl_key_location.clone()),
    ] {
        if let Some(value) = value {
            c.set(key, value);
        }
    }
    for (key, value) in &config.properties {
        c.set(key, value);
    }
    c
}

/// The topics of the pipeline with their partition counts.
pub fn topic_layout(config: &KafkaConfig) -> Vec<(String, u32)> {
    let t = &config.topics;
    vec![
        (t.click_data.clone(), config.partitions),
        (t.enriched_click_data.clone(), config.partitions),
        (t.special_offers.clone(), config.partitions),
        (t.dead_letters.clone(), config.dead_letter_partitions),
    ]
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime builds")
        .block_on(future)
}

/// Creates the pipeline's topics that are missing and checks the partition counts of those
/// that exist. Retries while the brokers are unreachable, up to `wait`.
pub fn ensure_topics(config: &KafkaConfig, wait: Duration) -> Result<(), DistributedError> {
    let started = Instant::now();
    let admin: AdminClient<DefaultClientContext> = client_config(config).create()?;
    let layout = topic_layout(config);
    let new: Vec<NewTopic<'_>> = layout
        .iter()
        .map(|(name, partitions)| {
            NewTopic::new(
                name,
                *partitions as i32,
                TopicReplication::Fixed(config.replication_factor),
            )
        })
        .collect();
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    loop {
        match block_on(admin.create_topics(&new, &options)) {
            Ok(results) => {
                for result in results {
                    match result {
                        Ok(name) => info!(topic = %name, "Topic created."),
                        Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                        Err((name, code)) => {
                            return Err(DistributedError::Kafka(KafkaError::AdminOp(code)))
                                .inspect_err(
                                    |_| warn!(topic = %name, %code, "Cannot create topic."),
                                );
                        }
                    }
                }
                break;
            }
            Err(error) if started.elapsed() < wait => {
                warn!(%error, "Brokers not reachable yet; retrying.");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(error) => return Err(error.into()),
        }
    }
    // Check the partition counts (topics made by someone else may differ).
    let consumer: BaseConsumer = client_config(config).create()?;
    for (name, partitions) in &layout {
        let existing = loop {
            let metadata = consumer.fetch_metadata(Some(name), Duration::from_secs(10))?;
            let n = metadata
                .topics()
                .first()
                .map_or(0, |t| t.partitions().len() as u32);
            if n > 0 || started.elapsed() > wait {
                break n;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        if existing != *partitions {
            return Err(DistributedError::PartitionMismatch {
                topic: name.clone(),
                existing,
                configured: *partitions,
            });
        }
    }
    Ok(())
}

/// The outcome of a group of sent records, complete once every record is acknowledged.
pub struct Acks {
    remaining: AtomicUsize,
    state: Mutex<AckState>,
    /// Notified when the last outstanding record is acknowledged.
    settled: Condvar,
}

/// Called once with a group's outcome.
type OnDone = Box<dyn FnOnce(Result<(), String>) + Send>;

#[derive(Default)]
struct AckState {
    error: Option<String>,
    /// Next offset after the newest acknowledged record, per (topic, partition).
    positions: HashMap<(String, i32), i64>,
    on_done: Option<OnDone>,
    sealed: bool,
}

impl Acks {
    /// A group with nothing sent yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Acks {
            remaining: AtomicUsize::new(0),
            state: Mutex::new(AckState::default()),
            settled: Condvar::new(),
        })
    }

    /// A group that calls `on_done` once all of its records are acknowledged (or one failed).
    pub fn with_callback(on_done: impl FnOnce(Result<(), String>) + Send + 'static) -> Arc<Self> {
        let acks = Acks::new();
        acks.state.lock().expect("acks lock").on_done = Some(Box::new(on_done));
        acks
    }

    fn ack(&self, result: Result<(String, i32, i64), String>) {
        let mut s = self.state.lock().expect("acks lock");
        match result {
            Ok((topic, partition, offset)) => {
                let next = s.positions.entry((topic, partition)).or_insert(0);
                *next = (*next).max(offset + 1);
            }
            Err(e) => {
                s.error.get_or_insert(e);
            }
        }
        if self.remaining.fetch_sub(1, Ordering::SeqCst) == 1 {
            if s.sealed {
                Self::finish(&mut s);
            }
            self.settled.notify_all();
        }
    }

    fn finish(s: &mut AckState) {
        if let Some(done) = s.on_done.take() {
            done(s.error.clone().map_or(Ok(()), Err));
        }
    }

    /// Declares that nothing more will be sent in this group; fires the callback if all is
    /// acknowledged already.
    pub fn seal(&self) {
        let mut s = self.state.lock().expect("acks lock");
        s.sealed = true;
        if self.remaining.load(Ordering::SeqCst) == 0 {
            Self::finish(&mut s);
        }
    }

    /// Whether every record sent in the group is acknowledged.
    pub fn complete(&self) -> bool {
        self.remaining.load(Ordering::SeqCst) == 0
    }

    /// The first delivery error, if any.
    pub fn error(&self) -> Option<String> {
        self.state.lock().expect("acks lock").error.clone()
    }

    /// Next offset after the newest acknowledged record, per (topic, partition).
    pub fn positions(&self) -> HashMap<(String, i32), i64> {
        self.state.lock().expect("acks lock").positions.clone()
    }
}

/// Routes delivery reports to their [`Acks`].
pub struct AckContext;

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = Arc<Acks>;

    fn delivery(&self, result: &DeliveryResult<'_>, acks: Arc<Acks>) {
        match result {
            Ok(m) => acks.ack(Ok((m.topic().to_owned(), m.partition(), m.offset()))),
            Err((e, m)) => acks.ack(Err(format!(
                "delivery to {}/{} failed: {e}",
                m.topic(),
                m.partition()
            ))),
        }
    }
}

/// An idempotent producer (acks=all, in order per partition) polled by its own thread.
pub struct BatchProducer {
    inner: ThreadedProducer<AckContext>,
}

/// One record to send.
pub struct OutRecord<'a> {
    /// Physical topic.
    pub topic: &'a str,
    /// Partition (explicit, so a visitor's records keep their partition from stage to stage).
    pub partition: i32,
    /// Key (the visitor id).
    pub key: &'a str,
    /// Value.
    pub value: &'a [u8],
    /// Lineage (input offset or replay position).
    pub lineage: Option<u64>,
    /// Its position at an external source other than the replay (the PostgreSQL source's
    /// event count), in a header of its own: the consumers' duplicate check reads lineage only,
    /// and two writers' lineages in one partition would not rise together.
    pub origin: Option<u64>,
}

impl BatchProducer {
    /// A producer for `config`.
    pub fn new(config: &KafkaConfig) -> Result<Self, DistributedError> {
        let mut c = client_config(config);
        c.set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "300000");
        for (key, value) in &config.properties {
            c.set(key, value);
        }
        Ok(BatchProducer {
            inner: c.create_with_context(AckContext)?,
        })
    }

    /// Sends `record` as part of `acks`, waiting while the local queue is full.
    pub fn send(&self, record: &OutRecord<'_>, acks: &Arc<Acks>) -> Result<(), DistributedError> {
        let lineage = record.lineage.map(|l| l.to_string());
        let origin = record.origin.map(|o| o.to_string());
        acks.remaining.fetch_add(1, Ordering::SeqCst);
        loop {
            let mut r = BaseRecord::with_opaque_to(record.topic, acks.clone())
                .partition(record.partition)
                .key(record.key)
                .payload(record.value);
            if lineage.is_some() || origin.is_some() {
                let mut headers = OwnedHeaders::new();
                for (key, value) in [(LINEAGE_HEADER, &lineage), (ORIGIN_HEADER, &origin)] {
                    if let Some(v) = value {
                        headers = headers.insert(Header {
                            key,
                            value: Some(v.as_str()),
                        });
                    }
                }
                r = r.headers(headers);
            }
            match self.inner.send(r) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => {
                    acks.remaining.fetch_sub(1, Ordering::SeqCst);
                    return Err(e.into());
                }
            }
        }
    }

    /// Sends a dead letter to `config`'s dead-letter topic (keyed and partitioned by its
    /// source) as part of `acks`.
    pub fn send_dead_letter(
        &self,
        config: &KafkaConfig,
        letter: &clickpulse_engine::DeadLetter,
        acks: &Arc<Acks>,
    ) -> Result<(), DistributedError> {
        let value = clickpulse_engine::codec::encode(letter);
        let partition =
            clickpulse_engine::topics::partition_for(&letter.source, config.dead_letter_partitions);
        self.send(
            &OutRecord {
                topic: &config.topics.dead_letters,
                partition: partition as i32,
                key: &letter.source,
                value: &value,
                lineage: None,
                origin: None,
            },
            acks,
        )
    }

    /// Waits until every record of `acks` is acknowledged; `Err` with the first failure.
    pub fn wait(&self, acks: &Arc<Acks>) -> Result<(), DistributedError> {
        acks.seal();
        // No flush: rd_kafka_flush beside the producer's polling thread cost ~100 ms per batch
        // (measured: the enrich worker spent 10 of its 16 s per million events there); the
        // records go out after `linger.ms` and the polling thread delivers the reports.
        let mut state = acks.state.lock().expect("acks lock");
        while !acks.complete() {
            state = acks
                .settled
                .wait_timeout(state, Duration::from_millis(100))
                .expect("acks lock")
                .0;
        }
        drop(state);
        match acks.error() {
            None => Ok(()),
            Some(e) => Err(DistributedError::Kafka(KafkaError::MessageProduction(
                RDKafkaErrorCode::Fail,
            )))
            .inspect_err(|_| warn!(error = %e, "Delivery failed.")),
        }
    }
}

/// How long a tail scan waits for a record or the end of the partition before it takes what it
/// has read as the end. Long enough that a slow broker is not mistaken for a hole (stopping
/// early would republish what the scan missed), short enough that a real hole only delays a
/// takeover.
const SCAN_IDLE: Duration = Duration::from_secs(60);
/// How far before its start offset a tail scan (or a consumer that found a gap) begins: more
/// than one produce batch (librdkafka's `batch.num.messages` is 10,000).
pub const SCAN_REWIND: i64 = 10_000;

/// Reads `topic`/`partition` from `from` to its end and returns the largest lineage header of
/// the records there (the input position the previous owner had already produced outputs for).
pub fn scan_lineage(
    config: &KafkaConfig,
    topic: &str,
    partition: i32,
    from: i64,
) -> Result<Option<u64>, DistributedError> {
    scan_header(config, topic, partition, from, LINEAGE_HEADER)
}

/// [`scan_lineage`] for the origin header ([`OutRecord::origin`]).
pub fn scan_origin(
    config: &KafkaConfig,
    topic: &str,
    partition: i32,
    from: i64,
) -> Result<Option<u64>, DistributedError> {
    scan_header(config, topic, partition, from, ORIGIN_HEADER)
}

fn scan_header(
    config: &KafkaConfig,
    topic: &str,
    partition: i32,
    from: i64,
    header: &str,
) -> Result<Option<u64>, DistributedError> {
    let consumer: BaseConsumer = client_config(config)
        .set("group.id", format!("{}-scan", config.group_prefix))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "20")
        .set("auto.offset.reset", "earliest")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    // Start a little before `from`: a broker that only serves whole stored batches starting at
    // or after the requested offset (tansu on object storage) would skip a batch that straddles
    // `from`. Records before `from` carry lineage the caller has already saved, so reading them
    // does not change the newest lineage found.
    let start = from.saturating_sub(SCAN_REWIND);
    let offset = if start > 0 {
        Offset::Offset(start)
    } else {
        Offset::Beginning
    };
    tpl.add_partition_offset(topic, partition, offset)?;
    consumer.assign(&tpl)?;
    let mut newest = None;
    let mut read = 0u64;
    let mut last_progress = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                read += 1;
                last_progress = Instant::now();
                newest = newest.max(header_u64(&m, header));
            }
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => {
                warn!(error = %e, topic, partition, "Tail scan: retrying.");
                std::thread::sleep(Duration::from_millis(200));
            }
            // A broker that died between advancing a partition's end and storing the batch
            // there (tansu on object storage) leaves a hole that is never filled: fetches at it
            // return nothing and never report the end. The hole holds no record, so nothing
            // after it — and nothing in it — is missed by stopping here.
            None if last_progress.elapsed() > SCAN_IDLE => {
                warn!(
                    topic,
                    partition,
                    read,
                    idle_s = SCAN_IDLE.as_secs(),
                    "Tail scan: no records and no end of partition; taking what was read."
                );
                break;
            }
            None => {}
        }
    }
    debug!(topic, partition, from, read, ?newest, "Tail scanned.");
    Ok(newest)
}

/// The lineage header of a record: the input position it was produced from.
pub fn lineage_of<M: Message>(m: &M) -> Option<u64> {
    header_u64(m, LINEAGE_HEADER)
}

/// A header of a record, as a number.
fn header_u64<M: Message>(m: &M, name: &str) -> Option<u64> {
    m.headers()?.iter().find_map(|h| {
        (h.key == name)
            .then_some(h.value)
            .flatten()
            .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
    })
}

/// Offsets per (topic, partition) as a list to commit.
pub fn offsets_list(
    positions: &BTreeMap<(String, i32), i64>,
) -> Result<TopicPartitionList, DistributedError> {
    let mut tpl = TopicPartitionList::new();
    for ((topic, p), next) in positions {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*next))?;
    }
    Ok(tpl)
}

/// One record of an outside topic.
#[derive(Debug, Clone)]
pub struct InRecord {
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its value.
    pub value: Vec<u8>,
}

/// Reads every partition of a topic written outside Clickpulse (a Snowplow pipeline's enriched
/// stream) from offsets the caller keeps: no consumer group, so nothing is committed to the
/// brokers and the caller saves the offsets with what it made of the records.
pub struct TopicReader {
    consumer: BaseConsumer,
    /// The topic's partitions.
    pub partitions: Vec<i32>,
}

impl TopicReader {
    /// Reads `topic` from `next` (each partition's next offset; from its beginning where none).
    /// `Ok(None)` while the topic does not exist.
    pub fn open(
        config: &KafkaConfig,
        topic: &str,
        next: &BTreeMap<i32, i64>,
    ) -> Result<Option<Self>, DistributedError> {
        let consumer: BaseConsumer = client_config(config)
            .set("group.id", format!("{}-reader", config.group_prefix))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .create()?;
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Ok(None);
        }
        let mut tpl = TopicPartitionList::new();
        for &p in &partitions {
            let offset = next
                .get(&p)
                .map_or(Offset::Beginning, |&o| Offset::Offset(o));
            tpl.add_partition_offset(topic, p, offset)?;
        }
        consumer.assign(&tpl)?;
        Ok(Some(TopicReader {
            consumer,
            partitions,
        }))
    }

    /// Up to `max` records, waiting at most `wait` for the first.
    pub fn poll(&self, max: usize, wait: Duration) -> Result<Vec<InRecord>, DistributedError> {
        let mut records = Vec::new();
        let mut timeout = wait;
        while records.len() < max {
            match self.consumer.poll(timeout) {
                Some(Ok(m)) => records.push(InRecord {
                    partition: m.partition(),
                    offset: m.offset(),
                    value: m.payload().unwrap_or_default().to_vec(),
                }),
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => return Err(e.into()),
                None => break,
            }
            timeout = Duration::ZERO;
        }
        Ok(records)
    }
}
