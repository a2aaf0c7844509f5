//! Exactly-once publishing to `click-data` for a distributed source that reads an outside
//! system with positions of its own (PostgreSQL's slot, a Snowplow pipeline's topic): each event
//! carries its source position — the count of events the source published before it — in the
//! `clickpulse-origin` header (the lineage header is the replay's in `click-data`, and the
//! consumers' duplicate check reads it). The source saves its position and the output offsets
//! after the brokers' acknowledgement; a restarted instance scans each partition's tail from
//! the saved offsets, and the events it finds there are not published again.

use std::collections::BTreeMap;
use std::time::Duration;

use clickpulse_connectors::distributed::DistributedError;
use clickpulse_connectors::distributed::kafka::{Acks, BatchProducer, OutRecord, scan_origin};
use clickpulse_connectors::distributed::runner::WorkerContext;
use clickpulse_engine::DeadLetter;
use clickpulse_engine::click::Click;
use clickpulse_engine::codec;
use clickpulse_engine::metrics::StageMetrics;
use clickpulse_engine::topics;
use tracing::warn;

/// Publishes a source's events with their positions.
pub(crate) struct OriginPublisher<'a> {
    ctx: &'a WorkerContext,
    producer: BatchProducer,
    /// The newest position already in each partition (published after the last save).
    published: Vec<Option<u64>>,
}

impl<'a> OriginPublisher<'a> {
    /// A publisher resuming after `outputs` (the saved next offset of each partition).
    pub(crate) fn new(
        ctx: &'a WorkerContext,
        outputs: &BTreeMap<u32, i64>,
    ) -> Result<Self, DistributedError> {
        let mut publisher = OriginPublisher {
            ctx,
            producer: BatchProducer::new(&ctx.kafka)?,
            published: Vec::new(),
        };
        publisher.scan(outputs)?;
        Ok(publisher)
    }

    fn scan(&mut self, outputs: &BTreeMap<u32, i64>) -> Result<(), DistributedError> {
        let topic = &self.ctx.kafka.topics.click_data;
        self.published = (0..self.ctx.kafka.partitions)
            .map(|q| {
                let from = outputs.get(&q).copied().unwrap_or(0);
                scan_origin(&self.ctx.kafka, topic, q as i32, from)
            })
            .collect::<Result<_, _>>()?;
        Ok(())
    }

    /// Publishes `clicks` (positions `first`, `first + 1`, …) and `letters`, and waits for the
    /// brokers; retries with a new producer (and a new scan) until they are all acknowledged.
    /// `outputs` then holds the next offset of each partition written.
    pub(crate) fn publish(
        &mut self,
        first: u64,
        clicks: &[Click],
        letters: &[DeadLetter],
        outputs: &mut BTreeMap<u32, i64>,
        metrics: &StageMetrics,
    ) -> Result<(), DistributedError> {
        let topic = self.ctx.kafka.topics.click_data.clone();
        let partitions = self.ctx.kafka.partitions;
        loop {
            let acks = Acks::new();
            for (i, click) in clicks.iter().enumerate() {
                let position = first + i as u64;
                let q = topics::partition_for(&click.visitor, partitions);
                if self.published[q as usize].is_some_and(|p| position <= p) {
                    continue;
                }
                let value = codec::encode(click);
                self.producer.send(
                    &OutRecord {
                        topic: &topic,
                        partition: q as i32,
                        key: &click.visitor,
                        value: &value,
                        lineage: None,
                        origin: Some(position),
                    },
                    &acks,
                )?;
            }
            for letter in letters {
                self.producer
                    .send_dead_letter(&self.ctx.kafka, letter, &acks)?;
            }
            match self.producer.wait(&acks) {
                Ok(()) => {
                    for ((t, q), next) in acks.positions() {
                        if t == topic {
                            let e = outputs.entry(q as u32).or_insert(0);
                            *e = (*e).max(next);
                        }
                    }
                    return Ok(());
                }
                Err(error) => {
                    metrics.error();
                    warn!(%error, "Publishing failed; retrying with a new producer.");
                    std::thread::sleep(Duration::from_secs(1));
                    self.producer = BatchProducer::new(&self.ctx.kafka)?;
                    self.scan(outputs)?;
                }
            }
        }
    }
}
