//! Sources: what brings events into `click-data`. Each is a folder (its settings, its
//! embedded and distributed implementations, its tests) and a line in [`SOURCES`].

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::marker::PhantomData;
use std::sync::Arc;

use clickpulse_connectors::embedded::{EmbeddedStore, StoreError};
use clickpulse_engine::topology::Stage;
use serde::de::{DeserializeOwned, IgnoredAny, MapAccess, Visitor};

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

/// What each source is started with: the replay's and the collector's parts (what the binary
/// derives for them from its arguments and the data dir), and every other source's own table of
/// the configuration.
pub struct SourceSettings {
    /// The log replay's.
    pub replay: replay::ReplaySettings,
    /// The HTTP collector's.
    pub collector: collector::CollectorSettings,
    /// The tables of the sources that have one ([`Source::table`]), as configured.
    pub tables: SourceTables,
}

/// A source plug-in.
pub struct Source {
    /// Its stage in the topology ([`crate::PIPELINE`] puts every source's in front of the
    /// operators).
    pub stage: Stage,
    /// Its own table of `clickpulse.toml`, if it has one: such a source runs only where its
    /// table is present (`run --stage all` and the demo leave it out otherwise).
    pub table: Option<Table>,
    /// Starts it (its threads, its HTTP routes) on the wiring's runtime.
    pub start: fn(&SourceSettings, &mut Wiring<'_>) -> Result<(), ComponentError>,
    /// The newest event time it committed to the embedded store: the event clock resumes at
    /// or after it, so no live click accepted after a restart is late.
    pub newest_event_time: fn(&EmbeddedStore) -> Result<Option<i64>, StoreError>,
}

impl Source {
    /// Its stage's name.
    pub fn name(&self) -> &'static str {
        self.stage.name
    }

    /// Whether `tables` configure it (a source without a table of its own always is).
    pub fn configured(&self, tables: &SourceTables) -> bool {
        self.table.as_ref().is_none_or(|t| tables.contains(t.name))
    }
}

/// A source's own table in `clickpulse.toml` (`[postgres]`, `[snowplow]`): its type, checked
/// by [`crate::config::check`] with the core tables, and handed to the source in
/// [`SourceSettings::tables`].
pub trait SourceTable: DeserializeOwned + Debug + Clone + Send + Sync + 'static {
    /// The table's name.
    const NAME: &'static str;

    /// What the types cannot say, each problem a sentence.
    fn problems(&self) -> Vec<String>;

    /// What `config check` says the table configures, in a line.
    fn summary(&self) -> String;
}

/// A [`SourceTable`] type, as the registry holds it.
pub struct Table {
    /// The table's name.
    pub name: &'static str,
    parse: fn(&str) -> Result<Option<ParsedTable>, toml::de::Error>,
}

impl Table {
    /// The table of type `T`.
    pub const fn of<T: SourceTable>() -> Table {
        Table {
            name: T::NAME,
            parse: parse_table::<T>,
        }
    }

    /// Reads this table out of a whole `clickpulse.toml` (ignoring the others) and checks it:
    /// `None` when the file has no such table. Errors carry the file's spans.
    pub(crate) fn parse(&self, text: &str) -> Result<Option<ParsedTable>, toml::de::Error> {
        (self.parse)(text)
    }
}

/// A table read by [`Table::parse`].
pub(crate) struct ParsedTable {
    pub(crate) name: &'static str,
    value: Arc<dyn Erased>,
    pub(crate) problems: Vec<String>,
}

/// The tables of the configured sources.
#[derive(Clone, Default)]
pub struct SourceTables {
    tables: BTreeMap<&'static str, Arc<dyn Erased>>,
}

impl SourceTables {
    /// Table `T`, where it is configured.
    pub fn get<T: SourceTable>(&self) -> Option<&T> {
        self.tables.get(T::NAME)?.as_any().downcast_ref()
    }

    /// Configures table `T` (what a file's `[T::NAME]` does).
    pub fn insert<T: SourceTable>(&mut self, table: T) {
        self.tables.insert(T::NAME, Arc::new(table));
    }

    /// Whether table `name` is configured.
    pub fn contains(&self, name: &str) -> bool {
        self.tables.contains_key(name)
    }

    /// The [`SourceTable::problems`] of table `name` (none where it is not configured).
    pub fn problems(&self, name: &str) -> Vec<String> {
        self.tables
            .get(name)
            .map(|t| t.problems())
            .unwrap_or_default()
    }

    /// Each configured table's name and [`SourceTable::summary`], in name order.
    pub fn summaries(&self) -> impl Iterator<Item = (&'static str, String)> + '_ {
        self.tables.iter().map(|(name, t)| (*name, t.summary()))
    }

    pub(crate) fn add(&mut self, parsed: ParsedTable) {
        self.tables.insert(parsed.name, parsed.value);
    }
}

impl Debug for SourceTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.tables.iter().map(|(k, v)| (k, v.as_debug())))
            .finish()
    }
}

/// A [`SourceTable`] with its type erased.
trait Erased: Send + Sync {
    fn as_any(&self) -> &dyn Any;
    fn as_debug(&self) -> &dyn Debug;
    fn summary(&self) -> String;
    fn problems(&self) -> Vec<String>;
}

impl<T: SourceTable> Erased for T {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_debug(&self) -> &dyn Debug {
        self
    }

    fn summary(&self) -> String {
        SourceTable::summary(self)
    }

    fn problems(&self) -> Vec<String> {
        SourceTable::problems(self)
    }
}

fn parse_table<T: SourceTable>(text: &str) -> Result<Option<ParsedTable>, toml::de::Error> {
    let table = toml::from_str::<OneTable<T>>(text)?.0;
    Ok(table.map(|t| ParsedTable {
        name: T::NAME,
        problems: t.problems(),
        value: Arc::new(t),
    }))
}

/// Table `T::NAME` of a document, the other tables skipped unread.
struct OneTable<T>(Option<T>);

impl<'de, T: SourceTable> serde::Deserialize<'de> for OneTable<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Tables<T>(PhantomData<T>);
        impl<'de, T: SourceTable> Visitor<'de> for Tables<T> {
            type Value = OneTable<T>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "a document of tables")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut table = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key == T::NAME {
                        table = Some(map.next_value::<T>()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(OneTable(table))
            }
        }
        deserializer.deserialize_map(Tables(PhantomData))
    }
}

/// The source called `name`.
pub fn source(name: &str) -> Option<&'static Source> {
    SOURCES.iter().find(|s| s.name() == name)
}

/// Starts every source this process hosts, in the registry's order. A source whose table is
/// missing is left out of the demo, and is an error where a `run` process was told to host it.
pub fn start(settings: &SourceSettings, wiring: &mut Wiring<'_>) -> Result<(), ComponentError> {
    for source in SOURCES {
        if !wiring.hosts(source.name()) {
            continue;
        }
        if let (false, Some(table)) = (source.configured(&settings.tables), &source.table) {
            match wiring.runtime {
                crate::Runtime::Embedded(_) => continue,
                crate::Runtime::Distributed(_) => {
                    return Err(ComponentError::Unconfigured {
                        stage: source.name(),
                        table: table.name,
                    });
                }
            }
        }
        (source.start)(settings, wiring)?;
    }
    Ok(())
}

/// Table `T` of `settings`, for the source of stage `stage` (started only where it is
/// configured).
pub(crate) fn table<T: SourceTable>(
    settings: &SourceSettings,
    stage: &'static str,
) -> Result<T, ComponentError> {
    settings
        .tables
        .get::<T>()
        .cloned()
        .ok_or(ComponentError::Unconfigured {
            stage,
            table: T::NAME,
        })
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
    fn every_source_is_a_source_stage_named_once_in_front_of_the_operators() {
        let stages = crate::PIPELINE.stage_names();
        let registry: Vec<&str> = SOURCES.iter().map(|s| s.name()).collect();
        assert_eq!(&stages[..SOURCES.len()], &registry[..]);
        for s in SOURCES {
            assert_eq!(s.stage.kind, StageKind::Source, "{}", s.name());
            assert!(s.stage.inputs.is_empty(), "{}", s.name());
        }
        let tables: Vec<&str> = SOURCES
            .iter()
            .filter_map(|s| Some(s.table.as_ref()?.name))
            .collect();
        assert_eq!(tables, ["postgres", "snowplow"]);
    }

    #[test]
    fn a_source_with_a_table_is_configured_only_by_its_table() {
        let mut tables = SourceTables::default();
        assert!(replay::SOURCE.configured(&tables));
        assert!(!snowplow::SOURCE.configured(&tables));
        tables.insert(snowplow::SnowplowConfig {
            enriched_topic: "enriched".to_owned(),
        });
        assert!(snowplow::SOURCE.configured(&tables));
        assert!(!postgres::SOURCE.configured(&tables));
        assert_eq!(
            tables
                .get::<snowplow::SnowplowConfig>()
                .map(|c| c.enriched_topic.as_str()),
            Some("enriched")
        );
        assert!(tables.get::<postgres::PostgresConfig>().is_none());
    }

    #[test]
    fn a_table_is_read_alone_with_the_file_s_spans() {
        let text = "[web]\nlisten = 1\n[snowplow]\nenriched_topic = \"\"\n";
        let parsed = Table::of::<snowplow::SnowplowConfig>()
            .parse(text)
            .unwrap()
            .unwrap();
        assert_eq!(
            parsed.problems,
            ["[snowplow] enriched_topic must not be empty"]
        );
        assert!(
            Table::of::<postgres::PostgresConfig>()
                .parse(text)
                .unwrap()
                .is_none()
        );
        let e = Table::of::<snowplow::SnowplowConfig>()
            .parse("[snowplow]\ntopic = \"x\"\n")
            .err()
            .unwrap();
        assert!(e.message().contains("unknown field `topic`"), "{e}");
        assert_eq!(e.span(), Some(11..16));
    }
}
