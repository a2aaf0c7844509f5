//! The log replay: a clickstream log, sorted by event time, into `click-data`, at N× real time
//! or as fast as possible, optionally laid onto the present and looping. Resumes after a crash
//! at the first event not yet published, in both runtimes (the cursor is shared:
//! [`ReplayCursor`](clickpulse_connectors::replay_cursor::ReplayCursor)).

use std::sync::Arc;

use clickpulse_connectors::replay_cursor::{ReplayInput, ReplayOptions};

use clickpulse_engine::topics::Topic;
use clickpulse_engine::topology::{Instances, Stage, StageKind};

use super::Source;
use crate::{BoxError, ComponentError, Runtime, Wiring, spawn_distributed, spawn_embedded};

pub mod distributed;
pub mod embedded;

/// The registry's entry.
pub const SOURCE: Source = Source {
    stage: Stage {
        name: "replay",
        kind: StageKind::Source,
        description: "Replays the bundled clickstream log in event-time order",
        inputs: &[],
        outputs: &[Topic::ClickData],
        sinks: &[],
        dead_letters: false,
        instances: Instances::SingleActive,
    },
    table: None,
    start,
    newest_event_time: embedded::newest_event_time,
};

/// Reads the replay's input (called once, when the replay starts in this process).
pub type InputLoader = Arc<dyn Fn() -> Result<Arc<ReplayInput>, BoxError> + Send + Sync>;

/// The replay's settings.
#[derive(Clone)]
pub struct ReplaySettings {
    /// How it runs.
    pub options: ReplayOptions,
    /// Its input.
    pub input: InputLoader,
}

fn start(settings: &super::SourceSettings, wiring: &mut Wiring<'_>) -> Result<(), ComponentError> {
    const STAGE: &str = "replay";
    let settings = &settings.replay;
    let input = (settings.input)().map_err(|source| ComponentError::Input {
        stage: STAGE,
        source,
    })?;
    let (options, clock, metrics) = (
        settings.options,
        wiring.clock.clone(),
        wiring.metrics.stage(STAGE),
    );
    match &wiring.runtime {
        Runtime::Embedded(rt) => {
            let (store, config, shutdown) =
                (rt.store.clone(), rt.runner.clone(), wiring.stop.flag());
            spawn_embedded(wiring.stop, STAGE, move || {
                embedded::run(
                    &store, &input, options, &clock, &metrics, &shutdown, &config,
                )
            })
        }
        Runtime::Distributed(rt) => {
            let ctx = (rt.worker)(STAGE);
            spawn_distributed(wiring.stop, STAGE, move || {
                distributed::run(&ctx, &input, options, &clock)
            })
        }
    }
}
