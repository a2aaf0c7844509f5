//! The replay stage over Kafka: the log, in event time, into `click-data`.
//!
//! One replay is active per deployment (a Redis lease; another copy waits as a standby). Every
//! record carries its replay position in the lineage header; the position and the output
//! positions are saved to Redis after each acknowledged batch. A restarted replay scans each
//! partition's tail from the saved output position and skips the records found there, so a
//! crash between publishing and saving duplicates nothing.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clickpulse_engine::codec;
use clickpulse_engine::replay::{EventClock, Pacer, ReplayPlan, Speed, wall_clock_ms};
use clickpulse_engine::topics;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::{info, warn};

use super::DistributedError;
use super::kafka::{Acks, BatchProducer, OutRecord, scan_lineage};
use super::runner::{LEASE_TTL, WorkerContext};
use super::store::RedisStore;
use crate::embedded::runner::{ReplayInput, ReplayOptions};

const PROGRESS_KEY: &str = "replay";
const LEASE: &str = "replay";
/// The Redis key (after the prefix) of the published event clock.
pub const CLOCK_KEY: &str = "clock";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Progress {
    fingerprint: String,
    position: u64,
    events: u64,
    malformed: u64,
    dead_letters_written: bool,
    event_time_ms: Option<i64>,
    base_shift_ms: i64,
    aligned: bool,
    /// Next offset of each `click-data` partition after the last saved batch.
    outputs: BTreeMap<u32, i64>,
}

/// The event clock as published for other processes (the collectors stamp live clicks with it).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct PublishedClock {
    /// Event time at `wall_ms`.
    pub ts_ms: i64,
    /// Wall-clock unix ms of the anchor.
    pub wall_ms: i64,
    /// Event-time ms per wall ms.
    pub rate: f64,
}

impl PublishedClock {
    /// Sets `clock` to this anchor.
    pub fn apply(&self, clock: &EventClock) {
        let ago = Duration::from_millis((wall_clock_ms() - self.wall_ms).max(0) as u64);
        let wall = Instant::now().checked_sub(ago).unwrap_or_else(Instant::now);
        clock.set(self.ts_ms, wall, self.rate);
    }
}

/// Replays `input` into `click-data` until it ends (or forever when looping) or shutdown.
pub fn run_replay(
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
    let mut progress: Progress = match store.get(PROGRESS_KEY)? {
        Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| DistributedError::Corrupt {
            key: store.key(PROGRESS_KEY),
            message: e.to_string(),
        })?,
        None => {
            let mut fresh = Progress {
                fingerprint: input.fingerprint.clone(),
                ..Progress::default()
            };
            if let Some(warmup) = options.align_warmup_ms {
                let align = if options.overlay {
                    ReplayPlan::align_overlay
                } else {
                    ReplayPlan::align_to
                };
                let (shift, start) = align(&input.clicks, wall_clock_ms(), warmup);
                fresh.base_shift_ms = shift;
                fresh.position = start;
                fresh.aligned = true;
            }
            fresh
        }
    };
    if progress.fingerprint != input.fingerprint {
        return Err(DistributedError::ReplayInputChanged {
            stored: progress.fingerprint,
            given: input.fingerprint.clone(),
        });
    }
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
    let plan = ReplayPlan::new(&input.clicks, options.loop_forever || options.overlay)
        .with_base_shift(progress.base_shift_ms);
    let speed = options.speed;
    info!(position = progress.position, events = plan.len(), %speed, aligned = progress.aligned, "Replay started.");
    let mut pacer = if progress.aligned {
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
        if !progress.dead_letters_written {
            for letter in &input.malformed {
                let value = codec::encode(letter);
                let partition =
                    topics::partition_for(&letter.source, ctx.kafka.dead_letter_partitions);
                producer.send(
                    &OutRecord {
                        topic: &ctx.kafka.topics.dead_letters,
                        partition: partition as i32,
                        key: &letter.source,
                        value: &value,
                        lineage: None,
                    },
                    &acks,
                )?;
            }
            progress.malformed = input.malformed.len() as u64;
            progress.dead_letters_written = true;
        }
        let started = Instant::now();
        let mut wait = None;
        let mut done = false;
        let mut position = progress.position;
        while sent < ctx.batch_size && started.elapsed() < Duration::from_millis(200) {
            let Some((index, shift)) = plan.at(position) else {
                done = true;
                break;
            };
            let mut click = input.clicks.get(index);
            click.ts_ms += shift;
            let due_in = pacer.wait_for(click.ts_ms, Instant::now());
            if !due_in.is_zero() {
                wait = Some(due_in);
                break;
            }
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
                    },
                    &acks,
                )?;
            }
            sent += 1;
            progress.event_time_ms = Some(click.ts_ms);
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
            progress.events += position - progress.position;
            progress.position = position;
            store.set(
                PROGRESS_KEY,
                &serde_json::to_vec(&progress).expect("progress serializes"),
            )?;
        }
        let anchor = match (speed, pacer.anchor()) {
            (Speed::Factor(_), Some((ts, wall))) if !done => Some((ts, wall)),
            _ if sent > 0 || !metrics.is_done() => {
                progress.event_time_ms.map(|ts| (ts, Instant::now()))
            }
            _ => None,
        };
        if let Some((ts, wall)) = anchor {
            clock.set(ts, wall, rate);
            let published = PublishedClock {
                ts_ms: ts,
                wall_ms: wall_clock_ms() - wall.elapsed().as_millis() as i64,
                rate,
            };
            store.set(
                CLOCK_KEY,
                &serde_json::to_vec(&published).expect("clock serializes"),
            )?;
        }
        metrics.record(
            progress.events,
            progress.malformed,
            json!({
                "position": progress.position,
                "pass": if plan.is_empty() { 0 } else { progress.position / plan.len() },
                "log_events": plan.len(),
                "malformed": progress.malformed,
                "speed": pacer.speed().to_string(),
                "event_time_ms": progress.event_time_ms,
                "aligned": progress.aligned,
            }),
        );
        if done && !metrics.is_done() {
            info!(
                events = progress.events,
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
