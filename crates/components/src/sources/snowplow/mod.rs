//! A running Snowplow pipeline's enriched events, from its Kafka topic (the enriched "good"
//! stream: one 131-field TSV event per record) into `click-data`, mapped as the enriched-events
//! log format is (`docs/sources/snowplow.md`). Distributed mode only: one active instance (a
//! Redis lease) reads every partition of the topic from the offsets it saved, publishing exactly
//! once ([`super::origin`]). The embedded runtime reads the same events as a log
//! (`demo --log enriched.tsv`).

use serde::{Deserialize, Serialize};

use clickpulse_engine::topics::Topic;
use clickpulse_engine::topology::{Instances, Stage, StageKind};

use super::{Source, SourceTable, Table};
use crate::{ComponentError, Runtime, Wiring};

pub mod distributed;

/// The stage's name.
pub(crate) const STAGE: &str = "snowplow";

/// The registry's entry.
pub const SOURCE: Source = Source {
    stage: Stage {
        name: STAGE,
        kind: StageKind::Source,
        description: "Reads a Snowplow pipeline's enriched events from its Kafka topic",
        inputs: &[],
        outputs: &[Topic::ClickData],
        sinks: &[],
        dead_letters: false,
        instances: Instances::SingleActive,
    },
    table: Some(Table::of::<SnowplowConfig>()),
    start,
    newest_event_time: |_| Ok(None),
};

/// `[snowplow]`: the enriched events' topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnowplowConfig {
    /// The physical topic a Snowplow pipeline writes its enriched events to, on the brokers of
    /// `[kafka]`.
    pub enriched_topic: String,
}

impl SourceTable for SnowplowConfig {
    const NAME: &'static str = STAGE;

    fn problems(&self) -> Vec<String> {
        if self.enriched_topic.trim().is_empty() {
            vec!["[snowplow] enriched_topic must not be empty".to_owned()]
        } else {
            Vec::new()
        }
    }

    fn summary(&self) -> String {
        format!(
            "snowplow enriched events from topic {}",
            self.enriched_topic
        )
    }
}

fn start(settings: &super::SourceSettings, wiring: &mut Wiring<'_>) -> Result<(), ComponentError> {
    let config: SnowplowConfig = super::table(settings, STAGE)?;
    match &wiring.runtime {
        Runtime::Embedded(_) => Err(ComponentError::Missing {
            stage: STAGE,
            what: "distributed mode (`clickpulse run`): the demo reads enriched events as a log, \
                   with --log",
        }),
        Runtime::Distributed(rt) => {
            let ctx = (rt.worker)(STAGE);
            crate::spawn_distributed(wiring.stop, STAGE, move || distributed::run(&ctx, &config))
        }
    }
}
