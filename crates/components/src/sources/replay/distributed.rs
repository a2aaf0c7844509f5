//! The replay over Kafka: the log, in event time, into `click-data`.
//!
//! One replay is active per deployment (a Redis lease; another copy waits as a standby). Every
//! record carries its replay position in the lineage header; the position and the output
//! positions are saved to Redis after each acknowledged batch. A restarted replay scans each
//! partition's tail from the saved output position and skips the records found there, so a
//! crash between publishing and saving duplicates nothing.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clickpulse_connectors::distributed::DistributedError;
use clickpulse_connectors::distributed::kafka::{Acks, BatchProducer, OutRecord, scan_lineage};
use clickpulse_connectors::distributed::runner::{LEASE_TTL, WorkerContext};
use clickpulse_connectors::distributed::store::RedisStore;
use clickpulse_connectors::replay_cursor::{ReplayCursor, ReplayInput, ReplayOptions};
use clickpulse_engine::codec;
use clickpulse_engine::replay::{EventClock, Pacer, Speed, wall_clock_ms};
use clickpulse_engine::topics;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::clock::{CLOCK_KEY, PublishedClock};

const PROGRESS_KEY: &str = "replay";
const LEASE: &str = "replay";

/// The replay's progress in Redis: the cursor both runtimes share, and what it has published.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Progress {
    #[serde(flatten)]
    cursor: ReplayCursor,
    /// Next offset of each `click-data` partition after the last saved batch.
    outputs: BTreeMap<u32, i64>,
}

/// Replays `input` into `click-data` until it ends (or forever when looping) or shutdown.
pub fn run(
    ctx: &WorkerContext,
    input: &ReplayInput,
    options: ReplayOptions,
    clock: &EventClock,
) -> Result<(), DistributedError> {
    let mut store = RedisStore::open(&ctx.redis, Some(ctx.shutdown.clone()))?;
    while !store.lease(LEASE, &ctx.worker_id, LEASE_TTL)? {
        if ctx.shutdown.load(Ordering::Relaxed) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let stored: Option<Progress> = match store.get(PROGRESS_KEY)? {
        Some(bytes) => {
            Some(
                serde_json::from_slice(&bytes).map_err(|e| DistributedError::Corrupt {
                    key: store.key(PROGRESS_KEY),
                    message: e.to_string(),
                })?,
            )
        }
        None => None,
    };
    let outputs = stored
        .as_ref()
        .map(|p| p.outputs.clone())
        .unwrap_or_default();
    let cursor = ReplayCursor::resume(stored.map(|p| p.cursor), input, &options, wall_clock_ms())
        .map_err(|e| DistributedError::ReplayInputChanged {
        stored: e.stored,
        given: e.given,
    })?;
    let mut progress = Progress { cursor, outputs };
    let topic = ctx.kafka.topics.click_data.clone();
    let partitions = ctx.kafka.partitions;
    // What a previous incarnation published after its last save.
    // The partitions are scanned side by side: a slow or holed partition then delays the
    // restart once, not once per partition.
    let scan = |progress: &Progress| -> Result<Vec<Option<u64>>, DistributedError> {
        std::thread::scope(|s| {
            let scans: Vec<_> = (0..partitions)
                .map(|q| {
                    let from = progress.outputs.get(&q).copied().unwrap_or(0);
                    let (kafka, topic) = (&ctx.kafka, &topic);
                    s.spawn(move || scan_lineage(kafka, topic, q as i32, from))
                })
                .collect();
            scans
                .into_iter()
                .map(|h| h.join().expect("a tail scan panicked"))
                .collect()
        })
    };
    let mut published = scan(&progress)?;
    let plan = progress.cursor.plan(input, &options);
    let speed = options.speed;
    info!(position = progress.cursor.position, events = plan.len(), %speed, aligned = progress.cursor.aligned, "Replay started.");
    let mut pacer = if progress.cursor.aligned {
        Pacer::anchored(speed, wall_clock_ms(), Instant::now())
    } else {
        Pacer::new(speed)
    };
    let rate = match speed {
        Speed::Factor(f) => f,
        Speed::Max => 1.0,
    };
    let mut producer = BatchProducer::new(&ctx.kafka)?;
    let metrics = &ctx.metrics;
    let mut last_lease = Instant::now();
    let mut last_publish = Instant::now() - Duration::from_secs(10);
    while !ctx.shutdown.load(Ordering::Relaxed) {
        if last_lease.elapsed() > LEASE_TTL / 4 {
            if !store.lease(LEASE, &ctx.worker_id, LEASE_TTL)? {
                return Err(DistributedError::LeaseLost(LEASE.into()));
            }
            last_lease = Instant::now();
        }
        let acks = Acks::new();
        let mut sent = 0usize;
        if !progress.cursor.dead_letters_written {
            for letter in &input.malformed {
                producer.send_dead_letter(&ctx.kafka, letter, &acks)?;
            }
            progress.cursor.malformed = input.malformed.len() as u64;
            progress.cursor.dead_letters_written = true;
        }
        let due = ReplayCursor::due(
            &plan,
            input,
            &mut pacer,
            progress.cursor.position,
            ctx.batch_size,
            Duration::from_millis(200),
        );
        let (wait, done) = (due.wait, due.done);
        let mut position = progress.cursor.position;
        for (at, click) in &due.clicks {
            debug_assert_eq!(*at, position);
            let q = topics::partition_for(click.visitor, partitions);
            if published[q as usize].is_none_or(|p| position > p) {
                let value = codec::encode(&click);
                producer.send(
                    &OutRecord {
                        topic: &topic,
                        partition: q as i32,
                        key: click.visitor,
                        value: &value,
                        lineage: Some(position),
                        origin: None,
                    },
                    &acks,
                )?;
            }
            sent += 1;
            progress.cursor.event_time_ms = Some(click.ts_ms);
            position += 1;
        }
        if sent > 0 || !acks.complete() {
            if let Err(error) = producer.wait(&acks) {
                // Start over from the last save with a new producer (an idempotent one that hit
                // a fatal error stays unusable); the scan skips what did get through.
                metrics.error();
                warn!(%error, "Publishing failed; resuming from the last saved position.");
                std::thread::sleep(Duration::from_secs(1));
                producer = BatchProducer::new(&ctx.kafka)?;
                published = scan(&progress)?;
                continue;
            }
            for ((_, q), next) in acks.positions() {
                let e = progress.outputs.entry(q as u32).or_insert(0);
                *e = (*e).max(next);
            }
            progress.cursor.events += position - progress.cursor.position;
            progress.cursor.position = position;
            store.set(
                PROGRESS_KEY,
                &serde_json::to_vec(&progress).expect("progress serializes"),
            )?;
        }
        let anchor = match (speed, pacer.anchor()) {
            (Speed::Factor(_), Some((ts, wall))) if !done => Some((ts, wall)),
            _ if sent > 0 || !metrics.is_done() => {
                progress.cursor.event_time_ms.map(|ts| (ts, Instant::now()))
            }
            _ => None,
        };
        if let Some((ts, wall)) = anchor {
            clock.set(ts, wall, rate);
            let published = PublishedClock {
                ts_ms: ts,
                wall_ms: wall_clock_ms() - wall.elapsed().as_millis() as i64,
                rate,
                next_ms: plan
                    .at(progress.cursor.position)
                    .map(|(index, shift)| input.clicks.ts_ms(index) + shift),
            };
            store.set(
                CLOCK_KEY,
                &serde_json::to_vec(&published).expect("clock serializes"),
            )?;
        }
        metrics.record(
            progress.cursor.events,
            progress.cursor.malformed,
            progress.cursor.details(&plan, pacer.speed()),
        );
        if done && !metrics.is_done() {
            info!(
                events = progress.cursor.events,
                "Replay reached the end of the log."
            );
            metrics.set_done(true);
        }
        if last_publish.elapsed() >= Duration::from_millis(500) {
            store.publish_metrics("replay", &ctx.worker_id, &metrics.snapshot())?;
            last_publish = Instant::now();
        }
        if done {
            std::thread::sleep(Duration::from_millis(100));
        } else if let Some(wait) = wait {
            std::thread::sleep(wait.min(Duration::from_millis(100)));
        }
    }
    store.publish_metrics("replay", &ctx.worker_id, &metrics.snapshot())?;
    let _ = store.release(LEASE, &ctx.worker_id);
    Ok(())
}

#[cfg(test)]
mod progress_tests {
    use super::*;

    /// The stored form is the one earlier versions wrote (the cursor's fields at the top).
    #[test]
    fn progress_reads_what_earlier_versions_wrote() {
        let stored = r#"{"fingerprint":"f","position":5,"events":5,"malformed":0,"dead_letters_written":true,"event_time_ms":42,"base_shift_ms":0,"aligned":true,"outputs":{"0":3,"2":7}}"#;
        let p: Progress = serde_json::from_str(stored).unwrap();
        assert_eq!(p.cursor.position, 5);
        assert_eq!(p.outputs.get(&2), Some(&7));
        assert_eq!(serde_json::to_string(&p).unwrap(), stored);
    }
}
