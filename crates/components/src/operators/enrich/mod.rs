//! Enrichment: every click of `click-data` gets its product and its visitor's demographics,
//! into `enriched-click-data`. Embedded, the lookups are held in memory (loaded from the data
//! dir); distributed, they are read from Redis through a per-worker cache.

use std::time::Duration;

use clickpulse_connectors::distributed::store::{RedisLookups, RedisStore};
use clickpulse_engine::enrich::EnrichOperator;
use clickpulse_engine::lookups::Lookups;

use super::{OperatorSettings, OperatorStage, run_on};
use crate::{ComponentError, Runtime, Wiring, required};

/// The registry's entry.
pub const OPERATOR: OperatorStage = OperatorStage { name: STAGE, start };

const STAGE: &str = "enrich";

/// Enrichment's settings.
#[derive(Clone, Default)]
pub struct EnrichSettings {
    /// The lookups (embedded; distributed reads them from Redis).
    pub lookups: Option<Lookups>,
}

fn start(settings: &OperatorSettings, wiring: &mut Wiring<'_>) -> Result<(), ComponentError> {
    match &wiring.runtime {
        Runtime::Embedded(_) => {
            let mut lookups = Some(required(&settings.enrich.lookups, STAGE, "the lookups")?);
            run_on(wiring, STAGE, String::new(), move || {
                EnrichOperator::new(lookups.take().unwrap_or_default())
            })
        }
        Runtime::Distributed(rt) => {
            let ctx = (rt.worker)(STAGE);
            let (redis, stop) = (ctx.redis.clone(), ctx.shutdown.clone());
            let ttl = Duration::from_millis(redis.lookup_cache_ttl_ms);
            run_on(wiring, STAGE, String::new(), move || {
                let store = RedisStore::open(&redis, Some(stop.clone()))
                    .expect("the Redis URL was validated with the configuration");
                EnrichOperator::new(RedisLookups::new(store, ttl))
            })
        }
    }
}
