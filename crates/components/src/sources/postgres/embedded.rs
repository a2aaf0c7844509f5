//! The source on the embedded store: each transaction's events, its dead letters and the
//! source's position (the transaction's end) are committed in one durable store transaction;
//! only then is the slot's confirmed position moved past it. After `kill -9` the slot resends
//! from its confirmed position and what the store already holds is skipped by position: nothing
//! lost, nothing twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use clickpulse_connectors::embedded::runner::{commit_with_retry, decode};
use clickpulse_connectors::embedded::{CommitBatch, EmbeddedStore, StoreError};
use clickpulse_engine::codec;
use clickpulse_engine::metrics::StageMetrics;
use clickpulse_engine::replay::EventClock;
use clickpulse_engine::topics;

use super::config::PostgresConfig;
use super::stream::{Followed, follow};
use super::{PostgresError, Progress, STAGE};

/// The source's state key.
const STATE: &str = "postgres/state";

/// The source's progress as last committed.
pub fn progress(store: &EmbeddedStore) -> Result<Option<Progress>, StoreError> {
    match store.state(STATE)? {
        Some(bytes) => Ok(Some(decode::<Progress>(STATE, &bytes)?)),
        None => Ok(None),
    }
}

/// The newest event time the source committed.
pub fn newest_event_time(store: &EmbeddedStore) -> Result<Option<i64>, StoreError> {
    Ok(progress(store)?.and_then(|p| p.newest_ms))
}

/// Follows the slot into `click-data` until `shutdown`. `pending` holds the events of the
/// transaction being committed (stamped and not yet in the store: the live aggregate's
/// frontier waits for them).
pub fn run(
    store: &EmbeddedStore,
    config: &PostgresConfig,
    clock: &EventClock,
    metrics: &StageMetrics,
    shutdown: &AtomicBool,
    pending: &Arc<AtomicUsize>,
) -> Result<(), PostgresError> {
    let mut progress = progress(store)?.unwrap_or_default();
    if let Some(newest) = progress.newest_ms {
        clock.floor(newest);
    }
    progress.record(metrics, config, false);
    let outcome = follow(
        config,
        progress.end_lsn,
        shutdown,
        |_| metrics.error(),
        |txn| {
            // Pending before the stamp: the frontier never passes an event not yet stored.
            pending.store(1, Ordering::SeqCst);
            let end_lsn = txn.end_lsn;
            let mapped = txn.map(clock.now_ms());
            let mut batch = CommitBatch::default();
            for click in &mapped.clicks {
                progress.newest_ms = progress.newest_ms.max(Some(click.ts_ms));
                batch.appends.push((
                    topics::CLICK_DATA.to_owned(),
                    click.visitor.clone(),
                    codec::encode(click),
                ));
            }
            for letter in &mapped.dead_letters {
                batch.appends.push((
                    topics::DEAD_LETTERS.to_owned(),
                    letter.source.clone(),
                    codec::encode(letter),
                ));
            }
            progress.advance(&mapped, end_lsn);
            batch.state.push((
                STATE.to_owned(),
                Some(serde_json::to_vec(&progress).expect("progress serializes")),
            ));
            // Durable before the slot is told: no lazy sync here.
            let result = commit_with_retry(store, &batch, STAGE, metrics, shutdown, None);
            pending.store(0, Ordering::SeqCst);
            result?;
            progress.record(metrics, config, true);
            Ok(())
        },
    );
    pending.store(0, Ordering::SeqCst);
    match outcome {
        Ok(()) => Ok(()),
        Err(Followed::Commit(e)) => Err(PostgresError::Store(e)),
        Err(Followed::Stream(e)) => Err(PostgresError::Stream(e)),
    }
}
