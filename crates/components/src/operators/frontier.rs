//! The live frontier of the stages that read `enriched-click-data` (detection and the
//! aggregation), embedded: where every source and stage runs in one process, it can tell when
//! everything up to the clock has reached their input, so event time moves on with the clock
//! through a quiet stream (the windows close, absence deadlines fire).

use std::sync::Arc;

use clickpulse_connectors::embedded::EmbeddedStore;
use clickpulse_engine::replay::EventClock;
use clickpulse_engine::topics;
use clickpulse_engine::window::Frontier;
use clickpulse_engine::window::dashboard::FrontierFn;

use crate::Pending;

/// The sources' event-time frontier for a live stage reading `enriched-click-data`: the clock (or the replay's next
/// event while it catches up), read first; then whether everything published since has reached
/// the aggregate's input, checked upstream first — the sources' queues (the collector's), then
/// `click-data` (enrich commits its outputs with its offsets), then that no commit is still
/// publishing what it appended. The stage checks its own input's backlog itself. An event
/// that moves downstream between two of these checks was published after the clock was read,
/// so it is not behind the frontier.
pub fn live_frontier(
    store: &Arc<EmbeddedStore>,
    clock: &Arc<EventClock>,
    sources_pending: Vec<Pending>,
) -> FrontierFn {
    let (store, clock) = (store.clone(), clock.clone());
    Arc::new(move || {
        let low_ms = clock.frontier_ms()?;
        let drained = sources_pending.iter().all(|pending| pending() == 0)
            && (0..store.partitions(topics::CLICK_DATA).unwrap_or(0)).all(|p| {
                store
                    .committed("enrich", topics::CLICK_DATA, p)
                    .is_ok_and(|next| next >= store.end_offset(topics::CLICK_DATA, p))
            })
            // Enrich's offsets are visible a moment before the records committed with them
            // (the ends are published after the transaction): wait that moment out.
            && !store.publishing();
        Some(Frontier { low_ms, drained })
    })
}
