//! The source over Kafka: one active instance per deployment (a Redis lease: a slot has one
//! reader). Each transaction's events are published exactly once
//! ([`OriginPublisher`]); once the brokers acknowledged them the progress (the transaction's
//! end, the counts, the output offsets) is saved to Redis, and only then is the slot's
//! confirmed position moved past it, so the slot resends everything after the saved
//! transaction and nothing is lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clickpulse_connectors::distributed::DistributedError;
use clickpulse_connectors::distributed::runner::{LEASE_TTL, WorkerContext};
use clickpulse_connectors::distributed::store::RedisStore;
use clickpulse_engine::replay::EventClock;
use tracing::warn;

use super::config::PostgresConfig;
use super::stream::{Followed, follow};
use super::{PostgresError, Progress, STAGE};
use crate::clock::{CLOCK_KEY, PublishedClock};
use crate::sources::origin::OriginPublisher;

const PROGRESS_KEY: &str = "postgres";

fn load(store: &mut RedisStore) -> Result<Progress, DistributedError> {
    match store.get(PROGRESS_KEY)? {
        Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| DistributedError::Corrupt {
            key: store.key(PROGRESS_KEY),
            message: e.to_string(),
        }),
        None => Ok(Progress::default()),
    }
}

/// Follows the slot into `click-data` until shutdown or the lease is lost.
pub fn run(
    ctx: &WorkerContext,
    config: &PostgresConfig,
    clock: &EventClock,
) -> Result<(), PostgresError> {
    let mut store = RedisStore::open(&ctx.redis, Some(ctx.shutdown.clone()))?;
    while !store.lease(STAGE, &ctx.worker_id, LEASE_TTL)? {
        if ctx.shutdown.load(Ordering::Relaxed) {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(500));
    }
    let mut progress = load(&mut store)?;
    let metrics = &ctx.metrics;
    progress.record(metrics, config, false);
    // The lease is renewed and the counters published beside the stream, which may wait long
    // for a transaction; losing the lease stops the stream.
    let stop = Arc::new(AtomicBool::new(false));
    let lost = Arc::new(AtomicBool::new(false));
    let keeper = {
        let (stop, lost, redis) = (stop.clone(), lost.clone(), ctx.redis.clone());
        let (shutdown, worker, metrics) =
            (ctx.shutdown.clone(), ctx.worker_id.clone(), metrics.clone());
        thread::Builder::new()
            .name("postgres-lease".into())
            .spawn(move || -> Result<(), DistributedError> {
                let mut store = RedisStore::open(&redis, None)?;
                let mut renewed = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    if shutdown.load(Ordering::Relaxed) {
                        stop.store(true, Ordering::SeqCst);
                        break;
                    }
                    if renewed.elapsed() > LEASE_TTL / 4 {
                        match store.lease(STAGE, &worker, LEASE_TTL) {
                            Ok(true) => renewed = Instant::now(),
                            Ok(false) => {
                                lost.store(true, Ordering::SeqCst);
                                stop.store(true, Ordering::SeqCst);
                                break;
                            }
                            Err(error) => warn!(%error, "Cannot renew the postgres lease."),
                        }
                    }
                    if let Err(error) = store.publish_metrics(STAGE, &worker, &metrics.snapshot()) {
                        warn!(%error, "Cannot publish the postgres source's metrics.");
                    }
                    thread::sleep(Duration::from_millis(500));
                }
                Ok(())
            })
            .map_err(|e| DistributedError::Corrupt {
                key: "postgres-lease thread".into(),
                message: e.to_string(),
            })?
    };
    let mut publisher = OriginPublisher::new(ctx, &progress.outputs)?;
    let outcome = follow(
        config,
        progress.end_lsn,
        &stop,
        |_| metrics.error(),
        |txn| -> Result<(), DistributedError> {
            // The replay's clock where one runs, else the wall clock.
            if let Ok(Some(bytes)) = store.get(CLOCK_KEY)
                && let Ok(published) = serde_json::from_slice::<PublishedClock>(&bytes)
            {
                published.apply(clock);
            }
            let end_lsn = txn.end_lsn;
            let mapped = txn.map(clock.now_ms());
            let mut outputs = std::mem::take(&mut progress.outputs);
            publisher.publish(
                progress.events,
                &mapped.clicks,
                &mapped.dead_letters,
                &mut outputs,
                metrics,
            )?;
            progress.outputs = outputs;
            progress.advance(&mapped, end_lsn);
            store.set(
                PROGRESS_KEY,
                &serde_json::to_vec(&progress).expect("progress serializes"),
            )?;
            progress.record(metrics, config, true);
            Ok(())
        },
    );
    stop.store(true, Ordering::SeqCst);
    let kept = keeper.join().expect("the lease thread panicked");
    let _ = store.publish_metrics(STAGE, &ctx.worker_id, &metrics.snapshot());
    match outcome {
        Ok(()) if lost.load(Ordering::SeqCst) => {
            Err(DistributedError::LeaseLost(STAGE.into()).into())
        }
        Ok(()) => {
            let _ = store.release(STAGE, &ctx.worker_id);
            kept.map_err(Into::into)
        }
        Err(Followed::Commit(e)) => Err(e.into()),
        Err(Followed::Stream(e)) => Err(e.into()),
    }
}
