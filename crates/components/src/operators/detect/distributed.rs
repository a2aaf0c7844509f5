//! Detection's transitions, distributed: each detect worker ships its own to Redis.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use clickpulse_connectors::distributed::store::RedisStore;
use clickpulse_connectors::distributed::{DistributedError, RedisConfig};
use clickpulse_engine::pattern::TransitionLog;
use tracing::warn;

/// Copies the detect stage's transitions to the capped `state_logs` stream, until `shutdown`
/// (what is waiting then is shipped first).
pub fn ship_state_logs(
    redis: &RedisConfig,
    log: &Mutex<TransitionLog>,
    shutdown: &AtomicBool,
) -> Result<(), DistributedError> {
    let mut store = RedisStore::open(redis, None)?;
    loop {
        let stopping = shutdown.load(Ordering::Relaxed);
        let records: Vec<String> = log
            .lock()
            .expect("log lock")
            .drain_outbox()
            .iter()
            .map(|r| serde_json::to_string(r).expect("record serializes"))
            .collect();
        if let Err(error) = store.append_state_logs(&records, redis.state_log_max_len) {
            warn!(%error, dropped = records.len(), "Cannot ship transitions to state_logs.");
        }
        if stopping {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(250));
    }
}
