//! Sources: what brings events into `click-data`. Each is a folder (its settings, its
//! embedded and distributed implementations, its tests) and a line in [`SOURCES`].

use clickpulse_connectors::embedded::{EmbeddedStore, StoreError};
use clickpulse_engine::topology::{PIPELINE, Stage};

use crate::{ComponentError, Wiring};

pub mod collector;
mod origin;
pub mod postgres;
pub mod replay;
pub mod snowplow;

/// Every source, in the topology's order.
pub static SOURCES: &[Source] = &[
    replay::SOURCE,
    collector::SOURCE,
    postgres::SOURCE,
    snowplow::SOURCE,
];

/// What each source is started with (each source's own part).
pub struct SourceSettings {
    /// The log replay's.
    pub replay: replay::ReplaySettings,
    /// The HTTP collector's.
    pub collector: collector::CollectorSettings,
    /// The PostgreSQL change data capture's.
    pub postgres: postgres::PostgresSettings,
    /// The Snowplow enriched topic's.
    pub snowplow: snowplow::SnowplowSettings,
}

/// A source plug-in.
pub struct Source {
    /// Its stage's name in the topology.
    pub name: &'static str,
    /// Starts it (its threads, its HTTP routes) on the wiring's runtime.
    pub start: fn(&SourceSettings, &mut Wiring<'_>) -> Result<(), ComponentError>,
    /// The newest event time it committed to the embedded store: the event clock resumes at
    /// or after it, so no live click accepted after a restart is late.
    pub newest_event_time: fn(&EmbeddedStore) -> Result<Option<i64>, StoreError>,
}

impl Source {
    /// Its stage in the topology.
    pub fn stage(&self) -> &'static Stage {
        PIPELINE
            .stage(self.name)
            .expect("every source is a stage of the topology (tested)")
    }
}

/// The source called `name`.
pub fn source(name: &str) -> Option<&'static Source> {
    SOURCES.iter().find(|s| s.name == name)
}

/// Starts every source this process hosts, in the registry's order.
pub fn start(settings: &SourceSettings, wiring: &mut Wiring<'_>) -> Result<(), ComponentError> {
    for source in SOURCES {
        if wiring.hosts(source.name) {
            (source.start)(settings, wiring)?;
        }
    }
    Ok(())
}

/// The newest event time any source committed to the embedded store.
pub fn newest_event_time(store: &EmbeddedStore) -> Result<Option<i64>, StoreError> {
    let mut newest = None;
    for source in SOURCES {
        newest = newest.max((source.newest_event_time)(store)?);
    }
    Ok(newest)
}

#[cfg(test)]
mod tests {
    use clickpulse_engine::topology::StageKind;

    use super::*;

    #[test]
    fn the_registry_and_the_topology_name_the_same_sources_in_the_same_order() {
        let topology: Vec<&str> = PIPELINE
            .stages
            .iter()
            .filter(|s| s.kind == StageKind::Source)
            .map(|s| s.name)
            .collect();
        let registry: Vec<&str> = SOURCES.iter().map(|s| s.name).collect();
        assert_eq!(registry, topology);
        for s in SOURCES {
            assert_eq!(s.stage().kind, StageKind::Source);
        }
    }
}
