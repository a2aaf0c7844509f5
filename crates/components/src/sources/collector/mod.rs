//! The HTTP collector: live page views from `POST /collect` (the shop's `clickpulse.js`, or a
//! server-side sender with the admin token) into `click-data`. A request is answered `202`
//! once its clicks are durable (embedded: committed to the store; distributed: acknowledged
//! by the brokers), and `503` when the queue of clicks waiting for that is full.

use std::sync::Arc;

use clickpulse_server::collector::{Collector, Identity};

use clickpulse_engine::topics::Topic;
use clickpulse_engine::topology::{Instances, Stage, StageKind};

use super::Source;
use crate::{ComponentError, Runtime, Wiring, spawn_distributed, spawn_embedded};

pub mod distributed;
pub mod embedded;

/// The registry's entry.
pub const SOURCE: Source = Source {
    stage: Stage {
        name: "collector",
        kind: StageKind::Source,
        description: "Takes live page views from POST /collect",
        inputs: &[],
        outputs: &[Topic::ClickData],
        sinks: &[],
        dead_letters: false,
        instances: Instances::Replicated,
    },
    table: None,
    start,
    newest_event_time: embedded::newest_event_time,
};

/// The collector's settings.
#[derive(Clone)]
pub struct CollectorSettings {
    /// Most clicks accepted and not yet durable before `/collect` answers 503.
    pub queue: usize,
    /// Its rules on identity (`None` where the collector does not run here).
    pub identity: Option<Identity>,
}

fn start(settings: &super::SourceSettings, wiring: &mut Wiring<'_>) -> Result<(), ComponentError> {
    const STAGE: &str = "collector";
    let settings = &settings.collector;
    let identity = settings.identity.clone().ok_or(ComponentError::Missing {
        stage: STAGE,
        what: "its identity rules (the offer secret)",
    })?;
    let metrics = wiring.metrics.stage(STAGE);
    let shutdown = wiring.stop.flag();
    let sink: Arc<dyn clickpulse_server::collector::ClickSink> = match &mut wiring.runtime {
        Runtime::Embedded(rt) => {
            let (queue_tx, queue_rx) = std::sync::mpsc::sync_channel(embedded::COLLECTOR_BATCHES);
            let sink = Arc::new(embedded::QueueSink::new(queue_tx, settings.queue));
            let pending = sink.clone();
            rt.pending.push(Arc::new(move || pending.pending()));
            let (store, config) = (rt.store.clone(), rt.runner.clone());
            spawn_embedded(wiring.stop, STAGE, move || {
                embedded::run(&store, &queue_rx, &metrics, &shutdown, &config)
            })?;
            sink
        }
        Runtime::Distributed(rt) => {
            let ctx = (rt.worker)(STAGE);
            let sink = Arc::new(distributed::KafkaSink::new(
                &ctx.kafka,
                settings.queue,
                metrics,
            )?);
            let replay_here = rt.hosted.contains("replay");
            let (clock, follower) = (wiring.clock.clone(), sink.clone());
            spawn_distributed(wiring.stop, "collector-clock", move || {
                distributed::follow_clock(&ctx, &clock, &follower, replay_here)
            })?;
            sink
        }
    };
    wiring.http.collector = Some(Collector {
        sink,
        clock: wiring.clock.clone(),
        identity,
        ignored: Default::default(),
    });
    Ok(())
}
