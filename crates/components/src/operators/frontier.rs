//! The live frontier of the stages that read `enriched-click-data`, so event time moves on
//! with the clock through a quiet stream (the windows close, absence deadlines fire).
//! Embedded, where every source and stage runs in one process, it is a promise: the process
//! can tell when everything up to the clock has reached their input. Distributed it is an
//! estimate from the replay's published clock, which moves only a stage whose inputs are all
//! idle ([`Frontier::exact`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use clickpulse_connectors::distributed::runner::WorkerContext;
use clickpulse_connectors::distributed::store::RedisStore;
use clickpulse_connectors::embedded::EmbeddedStore;
use clickpulse_connectors::shutdown::Shutdown;
use clickpulse_engine::replay::EventClock;
use clickpulse_engine::topics;
use clickpulse_engine::window::Frontier;
use clickpulse_engine::window::dashboard::FrontierFn;

use crate::clock::{CLOCK_KEY, PublishedClock};
use crate::{ComponentError, Pending, spawn_distributed};

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
        Some(Frontier {
            low_ms,
            drained,
            exact: true,
        })
    })
}

/// How often [`published_frontier`] reads the published clock.
const CLOCK_POLL: Duration = Duration::from_millis(250);

/// The frontier of a distributed live stage reading `enriched-click-data`, as an estimate: the
/// event clock the collectors stamp live clicks with (the replay's, as it publishes it in Redis,
/// or the wall clock where no replay has published one), never past the replay's next
/// unpublished event, less one idle timeout of wall time for what is still on its way from a
/// collector or through enrichment. A stage whose every input partition is idle follows it, so
/// an absence deadline fires in a quiet shop about one idle timeout after the clock passes it;
/// a click delayed longer than that is late, as under the idle rule. A thread of `stage`
/// refreshes it from Redis; until it has read Redis once there is none.
pub fn published_frontier(
    ctx: &WorkerContext,
    stop: &Shutdown,
    stage: &'static str,
    idle_timeout: Duration,
) -> Result<FrontierFn, ComponentError> {
    let clock = Arc::new(EventClock::default());
    // The replay's next event time; `i64::MIN`: Redis not read yet; `i64::MAX`: nothing held.
    let held = Arc::new(AtomicI64::new(i64::MIN));
    let (redis, shutdown) = (ctx.redis.clone(), ctx.shutdown.clone());
    let (follower, next) = (clock.clone(), held.clone());
    spawn_distributed(stop, stage, move || {
        let mut store = RedisStore::open(&redis, None)?;
        while !shutdown.load(Ordering::Relaxed) {
            // A failed read keeps the last anchor (Redis restarting): the clock runs on from
            // it, as the collectors' does, never past the replay's next event.
            match store.get(CLOCK_KEY) {
                Ok(Some(bytes)) => match serde_json::from_slice::<PublishedClock>(&bytes) {
                    Ok(published) => {
                        published.apply(&follower);
                        next.store(published.next_ms.unwrap_or(i64::MAX), Ordering::Release);
                    }
                    Err(error) => tracing::warn!(%error, "Unreadable published clock."),
                },
                // No replay has published a clock: live clicks are stamped with the wall clock.
                Ok(None) => next.store(i64::MAX, Ordering::Release),
                Err(error) => tracing::debug!(%error, "Cannot read the published clock."),
            }
            std::thread::sleep(CLOCK_POLL);
        }
        Ok(())
    })?;
    Ok(Arc::new(move || {
        let held = held.load(Ordering::Acquire);
        if held == i64::MIN {
            return None;
        }
        let margin_ms = (idle_timeout.as_secs_f64() * 1000.0 * clock.rate()) as i64;
        Some(Frontier {
            low_ms: clock.now_ms().min(held).saturating_sub(margin_ms),
            drained: true,
            exact: false,
        })
    }))
}
