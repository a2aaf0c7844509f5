//! The dashboard store: where the aggregate's snapshot is kept for the dashboard's pages and
//! streams. Embedded, it is the aggregate's own [`DashboardHandle`], read in process.
//! Distributed, the aggregate's process publishes each new snapshot to Redis and every web
//! process follows it there into a handle of its own.

use clickpulse_connectors::embedded::runner::operator_state;
use clickpulse_connectors::embedded::{EmbeddedStore, StoreError};
use clickpulse_engine::window::dashboard::SNAPSHOT_KEY;
use clickpulse_engine::window::{DashboardHandle, DashboardSnapshot};

use super::Sink;
use crate::{ComponentError, Runtime, Wiring, spawn_distributed};

pub mod distributed;

/// The registry's entry.
pub const SINK: Sink = Sink {
    name: "dashboard",
    start,
};

/// The dashboard store's settings.
#[derive(Clone, Default)]
pub struct DashboardSettings {
    /// The handle the aggregate publishes its snapshots to.
    pub aggregate: DashboardHandle,
}

/// The stage whose pages read the store in distributed mode.
const READER: &str = "web";

fn start(settings: &super::SinkSettings, wiring: &mut Wiring<'_>) -> Result<(), ComponentError> {
    let aggregate = settings.dashboard.aggregate.clone();
    match &wiring.runtime {
        Runtime::Embedded(_) => wiring.http.dashboard = Some(aggregate),
        Runtime::Distributed(rt) => {
            if super::writers(SINK.name).any(|w| rt.hosted.contains(w)) {
                let ctx = (rt.worker)("aggregate");
                spawn_distributed(wiring.stop, "dashboard-publish", move || {
                    distributed::publish(&ctx, &aggregate)
                })?;
            }
            if rt.hosted.contains(READER) {
                // A handle of its own: a snapshot read back from Redis must never be taken for
                // a new one of the aggregate's in the same process.
                let pages = DashboardHandle::default();
                let ctx = (rt.worker)(READER);
                let handle = pages.clone();
                spawn_distributed(wiring.stop, "dashboard-follow", move || {
                    distributed::follow(&ctx, &handle)
                })?;
                wiring.http.dashboard = Some(pages);
            }
        }
    }
    Ok(())
}

/// The dashboard snapshot the embedded aggregate committed last (for inspection: `chaos`
/// compares it with the backtest's).
pub fn embedded_snapshot(store: &EmbeddedStore) -> Result<Option<DashboardSnapshot>, StoreError> {
    const WRITER: &str = "aggregate";
    match operator_state(store, WRITER, SNAPSHOT_KEY)? {
        // `null`: the aggregate checkpointed before its first snapshot.
        Some(bytes) => serde_json::from_slice::<Option<DashboardSnapshot>>(&bytes).map_err(|e| {
            StoreError::Corrupt {
                key: format!("op/{WRITER}/{SNAPSHOT_KEY}"),
                message: e.to_string(),
            }
        }),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use clickpulse_connectors::embedded::CommitBatch;

    use super::*;

    #[test]
    fn the_last_committed_snapshot_is_read_back_and_a_damaged_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), &[]).unwrap();
        assert_eq!(embedded_snapshot(&store).unwrap(), None);
        let put = |value: &[u8]| {
            store
                .commit(&CommitBatch {
                    state: vec![("op/aggregate/snapshot".to_owned(), Some(value.to_vec()))],
                    ..CommitBatch::default()
                })
                .unwrap()
        };
        let snapshot = DashboardSnapshot {
            now_ms: Some(60_000),
            active_visitors_5m: 3,
            ..DashboardSnapshot::default()
        };
        put(&serde_json::to_vec(&snapshot).unwrap());
        assert_eq!(embedded_snapshot(&store).unwrap(), Some(snapshot));
        put(b"null");
        assert_eq!(embedded_snapshot(&store).unwrap(), None);
        put(br#"{"active_visitors_5m":3}"#);
        let error = embedded_snapshot(&store).unwrap_err().to_string();
        assert!(error.contains("op/aggregate/snapshot"), "{error}");
        put(b"{not json");
        let error = embedded_snapshot(&store).unwrap_err().to_string();
        assert!(error.contains("op/aggregate/snapshot"), "{error}");
    }
}
