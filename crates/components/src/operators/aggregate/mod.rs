//! The dashboard aggregation: exact event-time windows over `enriched-click-data` and
//! `special-offers`, published to the dashboard store (a sink). One active instance
//! (distributed: a Redis lease; the others wait as standbys). Live, the windows also follow the
//! event clock through quiet minutes ([`super::frontier::live_frontier`] embedded,
//! [`super::frontier::published_frontier`] distributed).

use std::time::Duration;

use clickpulse_engine::funnel::FunnelRegistry;
use clickpulse_engine::topics;
use clickpulse_engine::window::dashboard::DashboardConfig;
use clickpulse_engine::window::{AggregateOperator, DashboardHandle};

use super::{OperatorSettings, OperatorStage, run_on};
use crate::{ComponentError, Runtime, Wiring};

/// The registry's entry.
pub const OPERATOR: OperatorStage = OperatorStage { name: STAGE, start };

const STAGE: &str = "aggregate";

/// The aggregation's settings.
#[derive(Clone)]
pub struct AggregateSettings {
    /// Where the windows are published (the dashboard store reads it).
    pub dashboard: DashboardHandle,
    /// The funnels the dashboard counts (hot-reloaded), if any.
    pub funnels: Option<FunnelRegistry>,
    /// The alert rules judged each minute (their transitions go to the `alerts` topic).
    pub alerts: Vec<clickpulse_engine::alert::CheckedRule>,
}

fn start(settings: &OperatorSettings, wiring: &mut Wiring<'_>) -> Result<(), ComponentError> {
    let (pipeline, live) = (&settings.pipeline, settings.live);
    let settings = &settings.aggregate;
    let distributed = matches!(wiring.runtime, Runtime::Distributed(_));
    let partitions = match &wiring.runtime {
        Runtime::Embedded(rt) => rt.store.partitions(topics::ENRICHED_CLICK_DATA)?,
        Runtime::Distributed(rt) => (rt.worker)(STAGE).kafka.partitions,
    };
    let window = DashboardConfig {
        allowed_lateness_ms: pipeline.allowed_lateness_ms,
        idle_timeout: Duration::from_millis(pipeline.idle_timeout_ms(distributed)),
        partitions,
        max_keys: pipeline.max_dashboard_keys,
    };
    // Live, quiet minutes close with the clock: embedded by the sources' frontier, distributed
    // by the estimate from the published clock once every input is idle (RELIABILITY.md,
    // "Time").
    let frontier = match &mut wiring.runtime {
        Runtime::Embedded(rt) if live => Some(super::frontier::live_frontier(
            rt.store,
            wiring.clock,
            rt.pending.clone(),
        )),
        Runtime::Distributed(rt) if live => Some(super::frontier::published_frontier(
            &(rt.worker)(STAGE),
            wiring.stop,
            "aggregate-clock",
            window.idle_timeout,
        )?),
        _ => None,
    };
    let dashboard = settings.dashboard.clone();
    let funnels = settings.funnels.clone();
    let alerts = settings.alerts.clone();
    run_on(wiring, STAGE, String::new(), move || {
        let mut aggregator = AggregateOperator::new(window, dashboard.clone());
        if !alerts.is_empty() {
            aggregator = aggregator.with_alerts(clickpulse_engine::alert::AlertEvaluator::new(
                alerts.clone(),
            ));
        }
        if let Some(funnels) = &funnels {
            aggregator = aggregator.with_funnels(funnels.clone());
        }
        match &frontier {
            Some(frontier) => aggregator.with_frontier(frontier.clone()),
            None => aggregator,
        }
    })
}
