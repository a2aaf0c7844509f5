//! The enriched-events topic into `click-data`: read every partition from the saved offsets,
//! map each record, publish the batch exactly once, then save the next offsets with the
//! output offsets and the counts in Redis. A crash between publishing and saving re-reads the
//! batch and publishes none of it twice (the tail scan of [`OriginPublisher`]).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clickpulse_connectors::distributed::DistributedError;
use clickpulse_connectors::distributed::kafka::TopicReader;
use clickpulse_connectors::distributed::runner::{LEASE_TTL, WorkerContext};
use clickpulse_connectors::distributed::store::RedisStore;
use clickpulse_engine::DeadLetter;
use clickpulse_engine::reader::snowplow::{EnrichedLine, parse_line};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::info;

use super::{STAGE, SnowplowConfig};
use crate::sources::origin::OriginPublisher;

const PROGRESS_KEY: &str = "snowplow";

/// What the source has done, saved after each acknowledged batch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Progress {
    /// The next offset of each partition of the enriched topic.
    inputs: BTreeMap<i32, i64>,
    /// Events published.
    events: u64,
    /// Records dead-lettered.
    dead_letters: u64,
    /// Events not kept, by what they were.
    ignored: BTreeMap<String, u64>,
    /// The next offset of each `click-data` partition after the last save.
    outputs: BTreeMap<u32, i64>,
}

/// Follows the enriched topic until shutdown.
pub fn run(ctx: &WorkerContext, config: &SnowplowConfig) -> Result<(), DistributedError> {
    let mut store = RedisStore::open(&ctx.redis, Some(ctx.shutdown.clone()))?;
    while !store.lease(STAGE, &ctx.worker_id, LEASE_TTL)? {
        if ctx.shutdown.load(Ordering::Relaxed) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut progress: Progress = match store.get(PROGRESS_KEY)? {
        Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| DistributedError::Corrupt {
            key: store.key(PROGRESS_KEY),
            message: e.to_string(),
        })?,
        None => Progress::default(),
    };
    let metrics = &ctx.metrics;
    let record = |p: &Progress| {
        metrics.record(
            p.events,
            p.dead_letters,
            json!({"topic": config.enriched_topic, "ignored": p.ignored, "offsets": p.inputs}),
        )
    };
    record(&progress);
    let topic = &config.enriched_topic;
    let reader = loop {
        if let Some(reader) = TopicReader::open(&ctx.kafka, topic, &progress.inputs)? {
            break reader;
        }
        if ctx.shutdown.load(Ordering::Relaxed) {
            return Ok(());
        }
        info!(topic = %topic, "Waiting for the enriched events' topic to exist.");
        std::thread::sleep(Duration::from_secs(1));
    };
    info!(topic = %topic, partitions = reader.partitions.len(), "Reading Snowplow enriched events.");
    let mut publisher = OriginPublisher::new(ctx, &progress.outputs)?;
    let (mut last_lease, mut last_publish) = (Instant::now(), Instant::now());
    while !ctx.shutdown.load(Ordering::Relaxed) {
        if last_lease.elapsed() > LEASE_TTL / 4 {
            if !store.lease(STAGE, &ctx.worker_id, LEASE_TTL)? {
                return Err(DistributedError::LeaseLost(STAGE.into()));
            }
            last_lease = Instant::now();
        }
        let records = reader.poll(ctx.batch_size, Duration::from_millis(200))?;
        if !records.is_empty() {
            let mut clicks = Vec::new();
            let mut letters = Vec::new();
            let mut next = progress.inputs.clone();
            for r in &records {
                match parse_line(&r.value) {
                    EnrichedLine::Click(click) => clicks.push(*click),
                    EnrichedLine::Ignored(what) => {
                        *progress.ignored.entry(what.to_owned()).or_default() += 1;
                    }
                    EnrichedLine::Bad(reason) => letters.push(DeadLetter::new(
                        &format!("{topic}/{}", r.partition),
                        r.offset as u64,
                        reason,
                        &r.value,
                    )),
                }
                next.insert(r.partition, r.offset + 1);
            }
            let mut outputs = std::mem::take(&mut progress.outputs);
            publisher.publish(progress.events, &clicks, &letters, &mut outputs, metrics)?;
            progress.outputs = outputs;
            progress.inputs = next;
            progress.events += clicks.len() as u64;
            progress.dead_letters += letters.len() as u64;
            store.set(
                PROGRESS_KEY,
                &serde_json::to_vec(&progress).expect("progress serializes"),
            )?;
            record(&progress);
        }
        if last_publish.elapsed() >= Duration::from_millis(500) {
            store.publish_metrics(STAGE, &ctx.worker_id, &metrics.snapshot())?;
            last_publish = Instant::now();
        }
    }
    store.publish_metrics(STAGE, &ctx.worker_id, &metrics.snapshot())?;
    let _ = store.release(STAGE, &ctx.worker_id);
    Ok(())
}
