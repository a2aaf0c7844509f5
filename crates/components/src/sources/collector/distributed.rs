//! The collector over Kafka: each request's clicks are published to `click-data` (keyed by
//! visitor) and its rejected ones to the dead-letter topic; the request is answered once the
//! brokers acknowledged all of them. The collector stamps clicks with the replay's event clock,
//! which it follows from Redis when the replay runs in another process.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use clickpulse_connectors::distributed::kafka::{Acks, BatchProducer, OutRecord};
use clickpulse_connectors::distributed::runner::WorkerContext;
use clickpulse_connectors::distributed::store::RedisStore;
use clickpulse_connectors::distributed::{DistributedError, KafkaConfig};
use clickpulse_engine::DeadLetter;
use clickpulse_engine::click::Click;
use clickpulse_engine::codec;
use clickpulse_engine::metrics::StageMetrics;
use clickpulse_engine::replay::EventClock;
use clickpulse_engine::topics;
use clickpulse_server::collector::{ClickSink, SinkFull};
use serde_json::json;
use tokio::sync::oneshot;
use tracing::warn;

use crate::clock::{CLOCK_KEY, PublishedClock};

/// Publishes live clicks to `click-data`; a request is acknowledged once the brokers have all
/// of its clicks. Bounded: beyond `max_in_flight` clicks waiting, `/collect` answers 503.
pub struct KafkaSink {
    producer: BatchProducer,
    kafka: KafkaConfig,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: usize,
    accepted: Arc<AtomicUsize>,
    /// Rejected clicks published to the dead-letter topic.
    dead_letters: Arc<AtomicUsize>,
    stage: Arc<StageMetrics>,
}

impl KafkaSink {
    /// A sink publishing to `kafka`'s topics with at most `max_in_flight` clicks waiting for
    /// the brokers, counting under `stage`.
    pub fn new(
        kafka: &KafkaConfig,
        max_in_flight: usize,
        stage: Arc<StageMetrics>,
    ) -> Result<Self, DistributedError> {
        Ok(KafkaSink {
            producer: BatchProducer::new(kafka)?,
            kafka: kafka.clone(),
            in_flight: Arc::new(AtomicUsize::new(0)),
            max_in_flight,
            accepted: Arc::new(AtomicUsize::new(0)),
            dead_letters: Arc::new(AtomicUsize::new(0)),
            stage,
        })
    }
}

impl ClickSink for KafkaSink {
    fn offer(
        &self,
        clicks: Vec<Click>,
        dead_letters: Vec<DeadLetter>,
    ) -> Result<oneshot::Receiver<Result<(), String>>, SinkFull> {
        let n = clicks.len();
        if self.in_flight.fetch_add(n, Ordering::SeqCst) + n > self.max_in_flight {
            self.in_flight.fetch_sub(n, Ordering::SeqCst);
            return Err(SinkFull);
        }
        let (tx, rx) = oneshot::channel();
        let (in_flight, accepted) = (self.in_flight.clone(), self.accepted.clone());
        let (rejected, letters) = (self.dead_letters.clone(), dead_letters.len());
        let acks = Acks::with_callback(move |outcome| {
            in_flight.fetch_sub(n, Ordering::SeqCst);
            if outcome.is_ok() {
                accepted.fetch_add(n, Ordering::SeqCst);
                rejected.fetch_add(letters, Ordering::SeqCst);
            }
            let _ = tx.send(outcome);
        });
        let publish = |topic: &str, partitions: u32, key: &str, value: &[u8], what: &str| {
            let record = OutRecord {
                topic,
                partition: topics::partition_for(key, partitions) as i32,
                key,
                value,
                lineage: None,
                origin: None,
            };
            if let Err(error) = self.producer.send(&record, &acks) {
                self.stage.error();
                warn!(%error, what, "Cannot publish a collected record.");
            }
        };
        for click in &clicks {
            let value = codec::encode(click);
            let topic = &self.kafka.topics.click_data;
            publish(
                topic,
                self.kafka.partitions,
                &click.visitor,
                &value,
                "click",
            );
        }
        for letter in &dead_letters {
            let value = codec::encode(letter);
            let topic = &self.kafka.topics.dead_letters;
            let partitions = self.kafka.dead_letter_partitions;
            publish(topic, partitions, &letter.source, &value, "dead letter");
        }
        acks.seal();
        Ok(rx)
    }
}

/// Keeps the collector's event clock on the replay's (published in Redis) and publishes the
/// collector's counters.
pub fn follow_clock(
    ctx: &WorkerContext,
    clock: &EventClock,
    sink: &KafkaSink,
    replay_here: bool,
) -> Result<(), DistributedError> {
    let mut store = RedisStore::open(&ctx.redis, None)?;
    while !ctx.shutdown.load(Ordering::Relaxed) {
        if !replay_here
            && let Ok(Some(bytes)) = store.get(CLOCK_KEY)
            && let Ok(published) = serde_json::from_slice::<PublishedClock>(&bytes)
        {
            published.apply(clock);
        }
        let accepted = sink.accepted.load(Ordering::SeqCst) as u64;
        sink.stage.record(
            accepted,
            sink.dead_letters.load(Ordering::SeqCst) as u64,
            json!({"accepted": accepted, "in_flight": sink.in_flight.load(Ordering::SeqCst)}),
        );
        if let Err(error) =
            store.publish_metrics("collector", &ctx.worker_id, &sink.stage.snapshot())
        {
            warn!(%error, "Cannot publish the collector's metrics.");
        }
        thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}
