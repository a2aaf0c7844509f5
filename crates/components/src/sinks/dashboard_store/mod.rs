//! The dashboard store: where the aggregate's snapshot is kept for the dashboard's pages and
//! streams. Embedded, it is the aggregate's own [`DashboardHandle`], read in process.
//! Distributed, the aggregate's process publishes each new snapshot to Redis and every web
//! process follows it there into a handle of its own.

use clickpulse_engine::window::DashboardHandle;

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
