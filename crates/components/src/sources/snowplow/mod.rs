//! A running Snowplow pipeline's enriched events, from its Kafka topic (the enriched "good"
//! stream: one 131-field TSV event per record) into `click-data`, mapped as the enriched-events
//! log format is (`docs/sources/snowplow.md`). Distributed mode only: one active instance (a
//! Redis lease) reads every partition of the topic from the offsets it saved, publishing exactly
//! once ([`super::origin`]). The embedded runtime reads the same events as a log
//! (`demo --log enriched.tsv`).

use serde::{Deserialize, Serialize};

use super::Source;
use crate::{ComponentError, Runtime, Wiring};

pub mod distributed;

/// The stage's name.
pub(crate) const STAGE: &str = "snowplow";

/// The registry's entry.
pub const SOURCE: Source = Source {
    name: STAGE,
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

impl SnowplowConfig {
    /// What the types cannot say.
    pub fn problems(&self) -> Vec<String> {
        if self.enriched_topic.trim().is_empty() {
            vec!["[snowplow] enriched_topic must not be empty".to_owned()]
        } else {
            Vec::new()
        }
    }
}

/// The source's settings.
#[derive(Clone, Default)]
pub struct SnowplowSettings {
    /// `[snowplow]` (`None`: the source is not configured and does not run).
    pub config: Option<SnowplowConfig>,
}

fn start(settings: &super::SourceSettings, wiring: &mut Wiring<'_>) -> Result<(), ComponentError> {
    let Some(config) = settings.snowplow.config.clone() else {
        return match wiring.runtime {
            Runtime::Embedded(_) => Ok(()),
            Runtime::Distributed(_) => Err(ComponentError::Missing {
                stage: STAGE,
                what: "a [snowplow] table with enriched_topic in the configuration",
            }),
        };
    };
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
