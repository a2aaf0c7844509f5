//! The dashboard store in Redis: one key holding the newest snapshot as JSON.

use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use clickpulse_connectors::distributed::DistributedError;
use clickpulse_connectors::distributed::runner::WorkerContext;
use clickpulse_connectors::distributed::store::RedisStore;
use clickpulse_engine::window::DashboardHandle;
use clickpulse_engine::window::DashboardSnapshot;
use tracing::warn;

/// The Redis key (after the prefix) of the snapshot.
pub const KEY: &str = "dashboard";

/// How often each side looks for a new snapshot.
const POLL: Duration = Duration::from_millis(250);

/// Publishes the aggregate's snapshot to Redis whenever it changes, until shutdown.
pub fn publish(ctx: &WorkerContext, handle: &DashboardHandle) -> Result<(), DistributedError> {
    let mut store = RedisStore::open(&ctx.redis, None)?;
    let mut published = 0;
    while !ctx.shutdown.load(Ordering::Relaxed) {
        let generation = handle.generation();
        if generation != published
            && let Some(snapshot) = handle.snapshot()
        {
            let snapshot = serde_json::to_vec(&*snapshot).expect("snapshot serializes");
            match store.set(KEY, &snapshot) {
                Ok(()) => published = generation,
                Err(error) => warn!(%error, "Cannot publish the dashboard."),
            }
        }
        thread::sleep(POLL);
    }
    Ok(())
}

/// Copies each new snapshot from Redis into `handle`, until shutdown.
pub fn follow(ctx: &WorkerContext, handle: &DashboardHandle) -> Result<(), DistributedError> {
    let mut store = RedisStore::open(&ctx.redis, None)?;
    let mut last = Vec::new();
    while !ctx.shutdown.load(Ordering::Relaxed) {
        match store.get(KEY) {
            Ok(Some(bytes)) if bytes != last => {
                match serde_json::from_slice::<DashboardSnapshot>(&bytes) {
                    Ok(snapshot) => handle.publish(snapshot),
                    Err(error) => {
                        warn!(%error, "The dashboard snapshot in Redis is not a snapshot.")
                    }
                }
                last = bytes;
            }
            Ok(_) => {}
            Err(error) => warn!(%error, "Cannot read the dashboard from Redis."),
        }
        thread::sleep(POLL);
    }
    Ok(())
}
