//! PostgreSQL change data capture: the shop's orders, order lines and carts, as they are
//! committed in its database, into `click-data` as `purchase`, `add_to_cart`, … events, through
//! logical replication (a `pgoutput` slot and a publication) and the `[[postgres.table]]`
//! mappings. Exactly once across crashes in both runtimes: the slot's confirmed position moves
//! only past transactions whose events are committed (embedded) or acknowledged and recorded
//! (distributed), and a restarted source skips what it finds already done by commit position.
//! `docs/sources/postgres.md` explains the mapping, the slot's WAL retention and how to drop it.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use clickpulse_connectors::distributed::DistributedError;
use clickpulse_connectors::embedded::StoreError;
use clickpulse_engine::error_chain;
use clickpulse_engine::metrics::StageMetrics;
use pgwire_replication::Lsn;
use serde::{Deserialize, Serialize};
use serde_json::json;

use clickpulse_engine::topics::Topic;
use clickpulse_engine::topology::{Instances, Stage, StageKind};

use super::{Source, SourceTable, Table};
use crate::{ComponentError, Runtime, Wiring};

pub mod config;
pub mod distributed;
pub mod embedded;
pub mod mapping;
pub mod pgoutput;
pub mod stream;

pub use config::PostgresConfig;

/// The stage's name.
pub(crate) const STAGE: &str = "postgres";

/// The registry's entry.
pub const SOURCE: Source = Source {
    stage: Stage {
        name: STAGE,
        kind: StageKind::Source,
        description: "Turns the shop database's orders and carts into events (change data capture)",
        inputs: &[],
        outputs: &[Topic::ClickData],
        sinks: &[],
        dead_letters: false,
        instances: Instances::SingleActive,
    },
    table: Some(Table::of::<PostgresConfig>()),
    start,
    newest_event_time: embedded::newest_event_time,
};

impl SourceTable for PostgresConfig {
    const NAME: &'static str = STAGE;

    fn problems(&self) -> Vec<String> {
        PostgresConfig::problems(self)
    }

    fn summary(&self) -> String {
        format!(
            "postgres {}@{}:{}/{}, slot {}, publication {}, {} table mapping(s)",
            self.user,
            self.host,
            self.port,
            self.database,
            self.slot,
            self.publication,
            self.tables.len()
        )
    }
}

/// Why the source stopped.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    /// The replication stream could not be set up.
    #[error(transparent)]
    Stream(#[from] stream::StreamError),
    /// The embedded store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The brokers or Redis failed.
    #[error(transparent)]
    Distributed(#[from] DistributedError),
}

/// What the source has done, committed with its events (embedded) or saved after their
/// acknowledgement (distributed).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Progress {
    /// The position after the last transaction committed (0: none yet).
    pub end_lsn: u64,
    /// Transactions committed.
    pub transactions: u64,
    /// Events published.
    pub events: u64,
    /// Rows dead-lettered.
    pub dead_letters: u64,
    /// Changes no mapping takes.
    pub ignored: u64,
    /// The newest event time published.
    pub newest_ms: Option<i64>,
    /// Distributed: the next offset of each `click-data` partition after the last save.
    #[serde(default)]
    pub outputs: std::collections::BTreeMap<u32, i64>,
}

impl Progress {
    /// Counts a transaction's results; its end is the new position.
    fn advance(&mut self, mapped: &mapping::Mapped, end_lsn: u64) {
        self.end_lsn = end_lsn;
        self.transactions += 1;
        self.events += mapped.clicks.len() as u64;
        self.dead_letters += mapped.dead_letters.len() as u64;
        self.ignored += mapped.ignored;
        if let Some(newest) = mapped.clicks.iter().map(|c| c.ts_ms).max() {
            self.newest_ms = self.newest_ms.max(Some(newest));
        }
    }

    /// Shows it in the stage's counters.
    fn record(&self, metrics: &StageMetrics, config: &PostgresConfig, streaming: bool) {
        metrics.record(
            self.events,
            self.dead_letters,
            json!({
                "slot": config.slot,
                "publication": config.publication,
                "position": Lsn::from_u64(self.end_lsn).to_string(),
                "transactions": self.transactions,
                "ignored": self.ignored,
                "streaming": streaming,
            }),
        );
    }
}

fn start(settings: &super::SourceSettings, wiring: &mut Wiring<'_>) -> Result<(), ComponentError> {
    let config: PostgresConfig = super::table(settings, STAGE)?;
    let (clock, metrics) = (wiring.clock.clone(), wiring.metrics.stage(STAGE));
    let spawn = |stop: &clickpulse_connectors::shutdown::Shutdown,
                 work: Box<dyn FnOnce() -> Result<(), PostgresError> + Send>| {
        stop.spawn_stage(STAGE, move || work().map_err(|e| error_chain(&e)))
            .map_err(|source| ComponentError::Spawn {
                stage: STAGE,
                source,
            })
    };
    match &mut wiring.runtime {
        Runtime::Embedded(rt) => {
            let pending = Arc::new(AtomicUsize::new(0));
            let waiting = pending.clone();
            rt.pending.push(Arc::new(move || {
                waiting.load(std::sync::atomic::Ordering::SeqCst)
            }));
            let (store, shutdown) = (rt.store.clone(), wiring.stop.flag());
            spawn(
                wiring.stop,
                Box::new(move || {
                    embedded::run(&store, &config, &clock, &metrics, &shutdown, &pending)
                }),
            )
        }
        Runtime::Distributed(rt) => {
            let ctx = (rt.worker)(STAGE);
            spawn(
                wiring.stop,
                Box::new(move || distributed::run(&ctx, &config, &clock)),
            )
        }
    }
}
