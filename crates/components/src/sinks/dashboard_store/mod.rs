//! The dashboard store: where the aggregate's snapshot is kept for the dashboard's pages and
//! streams. Embedded, it is the aggregate's own [`DashboardHandle`], read in process.
//! Distributed, the aggregate's process publishes each new snapshot to Redis and every web
//! process follows it there into a handle of its own.

use clickpulse_connectors::embedded::runner::operator_state;
use clickpulse_connectors::embedded::{EmbeddedStore, StoreError};
use clickpulse_engine::window::DashboardHandle;
use clickpulse_engine::window::dashboard::SNAPSHOT_KEY;
use serde_json::Value;

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
pub fn embedded_snapshot(store: &EmbeddedStore) -> Result<Option<Value>, StoreError> {
    const WRITER: &str = "aggregate";
    match operator_state(store, WRITER, SNAPSHOT_KEY)? {
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                key: format!("op/{WRITER}/{SNAPSHOT_KEY}"),
                message: e.to_string(),
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
        put(br#"{"active_visitors_5m":3}"#);
        assert_eq!(
            embedded_snapshot(&store).unwrap(),
            Some(serde_json::json!({"active_visitors_5m": 3}))
        );
        put(b"{not json");
        let error = embedded_snapshot(&store).unwrap_err().to_string();
        assert!(error.contains("op/aggregate/snapshot"), "{error}");
    }
}
