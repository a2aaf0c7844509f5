//! Operators: the stages between the topics (enrich, detect, aggregate). Each is a folder (its
//! settings, what it needs from each runtime, its tests) and a line in [`OPERATORS`]; the
//! operator itself — a pure, synchronous core — lives in `clickpulse-engine`, and the runtimes
//! drive it through the one task driver. The web stage, which delivers offers, is the offer hub
//! sink's (`sinks::offer_hub`), and the webhooks stage the webhook sink's (`sinks::webhook`).

use clickpulse_connectors::distributed::runner::{Placement, run_stage};
use clickpulse_connectors::embedded::runner::run_operator;
use clickpulse_engine::operator::Operator;
use clickpulse_engine::topology::Instances;

use crate::PIPELINE;

use crate::config::PipelineConfig;
use crate::{ComponentError, Runtime, Wiring, spawn_distributed, spawn_embedded};

pub mod aggregate;
pub mod detect;
pub mod enrich;
pub mod frontier;

/// Every operator stage, in the topology's order.
pub static OPERATORS: &[OperatorStage] = &[enrich::OPERATOR, detect::OPERATOR, aggregate::OPERATOR];

/// What each operator is started with (each operator's own part).
pub struct OperatorSettings {
    /// The windows' and the watermarks' knobs.
    pub pipeline: PipelineConfig,
    /// Whether the clicks are stamped with the event clock (replayed onto the present, and
    /// live clicks): then event time moves on with the clock through a quiet stream (embedded:
    /// the sources' frontier).
    pub live: bool,
    /// Enrichment's.
    pub enrich: enrich::EnrichSettings,
    /// Detection's.
    pub detect: detect::DetectSettings,
    /// The dashboard aggregation's.
    pub aggregate: aggregate::AggregateSettings,
}

/// An operator plug-in.
pub struct OperatorStage {
    /// Its stage's name in the topology.
    pub name: &'static str,
    /// Starts it on the wiring's runtime.
    pub start: fn(&OperatorSettings, &mut Wiring<'_>) -> Result<(), ComponentError>,
}

/// Starts every operator this process hosts, in the registry's order.
pub fn start(settings: &OperatorSettings, wiring: &mut Wiring<'_>) -> Result<(), ComponentError> {
    for operator in OPERATORS {
        if wiring.hosts(operator.name) {
            (operator.start)(settings, wiring)?;
        }
    }
    Ok(())
}

/// How the distributed runner divides stage `stage`'s input among its workers: from the
/// topology's [`Instances`]. `instance` names a replicated stage's task (its own state).
fn placement(stage: &'static str, instance: String) -> Placement {
    let declared = PIPELINE
        .stage(stage)
        .expect("every operator is a stage of the topology (tested)");
    match declared.instances {
        Instances::Group => Placement::Partitioned {
            output: declared.outputs.first().copied(),
        },
        Instances::SingleActive => Placement::Single {
            lease: Some(stage.to_owned()),
            task: "all".to_owned(),
        },
        Instances::Replicated => Placement::Single {
            lease: None,
            task: instance,
        },
    }
}

/// Runs stage `stage` on a thread of its own, driving the operators `make` builds: embedded,
/// one operator over the store; distributed, one per task the topology's placement gives this
/// worker (a new one after each rebalance).
pub(crate) fn run_on<O, F>(
    wiring: &Wiring<'_>,
    stage: &'static str,
    instance: String,
    mut make: F,
) -> Result<(), ComponentError>
where
    O: Operator + 'static,
    F: FnMut() -> O + Send + 'static,
{
    match &wiring.runtime {
        Runtime::Embedded(rt) => {
            let metrics = wiring.metrics.stage(stage);
            let (store, config, shutdown) =
                (rt.store.clone(), rt.runner.clone(), wiring.stop.flag());
            spawn_embedded(wiring.stop, stage, move || {
                run_operator(&store, make(), &metrics, &shutdown, &config)
            })
        }
        Runtime::Distributed(rt) => {
            let ctx = (rt.worker)(stage);
            let placement = placement(stage, instance);
            spawn_distributed(wiring.stop, stage, move || run_stage(&ctx, placement, make))
        }
    }
}

#[cfg(test)]
mod tests {
    use clickpulse_engine::topics::Topic;
    use clickpulse_engine::topology::StageKind;

    use super::*;

    #[test]
    fn every_operator_of_the_topology_is_started_by_a_plug_in() {
        let topology: Vec<&str> = PIPELINE
            .stages
            .iter()
            .filter(|s| s.kind == StageKind::Operator)
            .map(|s| s.name)
            .collect();
        let mut started: Vec<&str> = OPERATORS.iter().map(|o| o.name).collect();
        started.push(crate::sinks::offer_hub::STAGE);
        started.push(crate::sinks::webhook::sender::STAGE);
        assert_eq!(started, topology);
    }

    #[test]
    fn placements_follow_the_topology() {
        assert!(matches!(
            placement("enrich", "x".into()),
            Placement::Partitioned {
                output: Some(Topic::EnrichedClickData)
            }
        ));
        assert!(matches!(
            placement("detect", "x".into()),
            Placement::Partitioned {
                output: Some(Topic::SpecialOffers)
            }
        ));
        match placement("aggregate", "x".into()) {
            Placement::Single { lease, task } => {
                assert_eq!(lease.as_deref(), Some("aggregate"));
                assert_eq!(task, "all");
            }
            other => panic!("aggregate is single-active, got {other:?}"),
        }
        match placement("web", "web-1".into()) {
            Placement::Single { lease, task } => {
                assert_eq!(lease, None);
                assert_eq!(task, "web-1");
            }
            other => panic!("web is replicated, got {other:?}"),
        }
    }
}
