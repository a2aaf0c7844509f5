//! Detection: each visitor's clicks of `enriched-click-data` through the behaviour patterns'
//! state machines; a pattern that completes writes an offer to `special-offers`. Its state
//! transitions feed the pattern page's live log: embedded, the process's log directly;
//! distributed, through Redis' capped `state_logs` stream, which the web stages read.

use std::sync::{Arc, Mutex};

use std::time::Duration;

use clickpulse_engine::operator::EventTimeRules;
use clickpulse_engine::pattern::{DetectOperator, PatternRegistry, TransitionLog};

use super::{OperatorSettings, OperatorStage, run_on};
use crate::{ComponentError, Runtime, Wiring, required, spawn_distributed};

pub mod distributed;

/// The registry's entry.
pub const OPERATOR: OperatorStage = OperatorStage { name: STAGE, start };

const STAGE: &str = "detect";

/// Detection's settings.
#[derive(Clone)]
pub struct DetectSettings {
    /// The patterns (`None` where no detect stage runs here).
    pub registry: Option<PatternRegistry>,
    /// Where the transitions go (embedded: the pattern page's log).
    pub log: Arc<Mutex<TransitionLog>>,
}

fn start(settings: &OperatorSettings, wiring: &mut Wiring<'_>) -> Result<(), ComponentError> {
    let registry = required(&settings.detect.registry, STAGE, "the patterns")?;
    let log = match &wiring.runtime {
        Runtime::Embedded(_) => settings.detect.log.clone(),
        Runtime::Distributed(rt) => {
            // This worker's transitions, shipped to Redis for every web stage.
            let log = Arc::new(Mutex::new(TransitionLog::default().with_outbox()));
            let ctx = (rt.worker)(STAGE);
            let shipped = log.clone();
            spawn_distributed(wiring.stop, "state-logs", move || {
                distributed::ship_state_logs(&ctx.redis, &shipped, &ctx.shutdown)
            })?;
            log
        }
    };
    let distributed = matches!(wiring.runtime, Runtime::Distributed(_));
    // Deadlines follow the windows' rules of time, and live the sources' frontier: embedded a
    // promise, distributed an estimate from the published clock that moves a quiet stream on
    // (RELIABILITY.md, "Time").
    let idle_timeout = Duration::from_millis(settings.pipeline.idle_timeout_ms(distributed));
    let frontier = match &mut wiring.runtime {
        Runtime::Embedded(rt) if settings.live => Some(super::frontier::live_frontier(
            rt.store,
            wiring.clock,
            rt.pending.clone(),
        )),
        Runtime::Distributed(rt) if settings.live => Some(super::frontier::published_frontier(
            &(rt.worker)(STAGE),
            wiring.stop,
            "detect-clock",
            idle_timeout,
        )?),
        _ => None,
    };
    let rules = EventTimeRules {
        allowed_lateness_ms: settings.pipeline.allowed_lateness_ms,
        idle_timeout,
        frontier,
    };
    run_on(wiring, STAGE, String::new(), move || {
        DetectOperator::new(registry.clone())
            .with_log(log.clone())
            .with_event_time_rules(rules.clone())
    })
}
