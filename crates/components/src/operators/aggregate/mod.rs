//! The dashboard aggregation: exact event-time windows over `enriched-click-data` and
//! `special-offers`, published to the dashboard store (a sink). One active instance
//! (distributed: a Redis lease; the others wait as standbys). Live and embedded, the windows
//! also follow the event clock through quiet minutes ([`embedded::live_frontier`]).

use std::time::Duration;

use clickpulse_engine::funnel::FunnelRegistry;
use clickpulse_engine::topics;
use clickpulse_engine::window::dashboard::DashboardConfig;
use clickpulse_engine::window::{AggregateOperator, DashboardHandle};

use super::{OperatorSettings, OperatorStage, run_on};
use crate::config::PipelineConfig;
use crate::{ComponentError, Runtime, Wiring};

pub mod embedded;

/// The registry's entry.
pub const OPERATOR: OperatorStage = OperatorStage { name: STAGE, start };

const STAGE: &str = "aggregate";

/// The aggregation's settings.
#[derive(Clone)]
pub struct AggregateSettings {
    /// Where the windows are published (the dashboard store reads it).
    pub dashboard: DashboardHandle,
    /// The windows' knobs.
    pub pipeline: PipelineConfig,
    /// Whether the clicks are stamped with the event clock (replayed onto the present, and
    /// live clicks): then quiet minutes close as the clock passes them.
    pub live: bool,
    /// The funnels the dashboard counts (hot-reloaded), if any.
    pub funnels: Option<FunnelRegistry>,
}

fn start(settings: &OperatorSettings, wiring: &mut Wiring<'_>) -> Result<(), ComponentError> {
    let settings = &settings.aggregate;
    let distributed = matches!(wiring.runtime, Runtime::Distributed(_));
    let partitions = match &wiring.runtime {
        Runtime::Embedded(rt) => rt.store.partitions(topics::ENRICHED_CLICK_DATA)?,
        Runtime::Distributed(rt) => (rt.worker)(STAGE).kafka.partitions,
    };
    let window = DashboardConfig {
        allowed_lateness_ms: settings.pipeline.allowed_lateness_ms,
        idle_timeout: Duration::from_millis(settings.pipeline.idle_timeout_ms(distributed)),
        partitions,
        max_keys: settings.pipeline.max_dashboard_keys,
    };
    // Distributed, quiet minutes close by idleness: the sources' frontier is not shared
    // across processes (RELIABILITY.md, "Time").
    let frontier = match &mut wiring.runtime {
        Runtime::Embedded(rt) if settings.live => Some(embedded::live_frontier(
            rt.store,
            wiring.clock,
            std::mem::take(rt.pending),
        )),
        _ => None,
    };
    let dashboard = settings.dashboard.clone();
    let funnels = settings.funnels.clone();
    run_on(wiring, STAGE, String::new(), move || {
        let mut aggregator = AggregateOperator::new(window, dashboard.clone());
        if let Some(funnels) = &funnels {
            aggregator = aggregator.with_funnels(funnels.clone());
        }
        match &frontier {
            Some(frontier) => aggregator.with_frontier(frontier.clone()),
            None => aggregator,
        }
    })
}
