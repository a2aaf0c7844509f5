//! The offer hub: offers delivered to the visitors' browsers as popups. The web stage reads
//! `special-offers` and hands each offer, once, to the hub, which pushes it over Server-Sent
//! Events to that visitor's open pages (`GET /offers/stream`). Embedded, one web stage runs;
//! distributed, every web instance runs its own (each with its own delivery state, named by its
//! instance), since each serves its own browsers.

use std::collections::BTreeSet;

use clickpulse_connectors::distributed::DistributedError;
use clickpulse_connectors::distributed::store::RedisStore;
use clickpulse_connectors::embedded::runner::operator_state_with_prefix;
use clickpulse_connectors::embedded::{EmbeddedStore, StoreError};
use clickpulse_engine::pattern::PatternRegistry;
use clickpulse_server::offers::{
    DELIVERED_PREFIX, OfferHub, OfferTokens, WebDelivery, WebOperator,
};

use super::Sink;
use crate::operators::run_on;
use crate::{ComponentError, Wiring, required};

/// The registry's entry.
pub const SINK: Sink = Sink {
    name: "popups",
    start,
};

/// The offer hub's settings.
#[derive(Clone)]
pub struct OfferHubSettings {
    /// The patterns, whose offers say what a popup shows (`None` where no web stage runs here).
    pub registry: Option<PatternRegistry>,
    /// Signs and checks the visitors' stream tokens (`None` where no web stage runs here).
    pub tokens: Option<OfferTokens>,
    /// This web instance's name (distributed): its delivery state is its own.
    pub instance: String,
}

/// The stage that delivers to the hub.
pub const STAGE: &str = "web";

fn start(settings: &super::SinkSettings, wiring: &mut Wiring<'_>) -> Result<(), ComponentError> {
    if !wiring.hosts(STAGE) {
        return Ok(());
    }
    let settings = &settings.popups;
    let tokens = required(&settings.tokens, STAGE, "the offer secret")?;
    let registry = required(&settings.registry, STAGE, "the patterns")?;
    let (metrics, clock) = (wiring.metrics.clone(), wiring.clock.clone());
    let hub = OfferHub::new(clickpulse_server::static_files::offer_image)
        .with_content(clickpulse_server::offers::content_from(registry))
        .with_observer(move |offer| {
            metrics.observe_offer_delivery(clock.now_ms() - offer.ts_ms, clock.rate())
        });
    wiring.http.web = Some(WebDelivery {
        hub: hub.clone(),
        tokens,
    });
    run_on(wiring, STAGE, settings.instance.clone(), move || {
        WebOperator::new(hub.clone())
    })
}

/// The offer ids the embedded web stage has delivered, as of its last commit (for inspection:
/// `chaos` compares them with the backtest's).
pub fn delivered_embedded(store: &EmbeddedStore) -> Result<BTreeSet<String>, StoreError> {
    Ok(operator_state_with_prefix(store, STAGE, DELIVERED_PREFIX)?
        .into_iter()
        .filter_map(|(key, _)| key.strip_prefix(DELIVERED_PREFIX).map(str::to_owned))
        .collect())
}

/// The offer ids web instance `instance` has delivered, as of its last commit.
pub fn delivered_distributed(
    store: &mut RedisStore,
    instance: &str,
) -> Result<BTreeSet<String>, DistributedError> {
    Ok(store
        .operator_state(STAGE, instance)?
        .into_iter()
        .filter_map(|(key, _)| key.strip_prefix(DELIVERED_PREFIX).map(str::to_owned))
        .collect())
}

#[cfg(test)]
mod tests {
    use clickpulse_connectors::embedded::CommitBatch;

    use super::*;

    #[test]
    fn the_delivered_ids_are_read_back_from_what_the_web_stage_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), &[]).unwrap();
        assert!(delivered_embedded(&store).unwrap().is_empty());
        let state = [
            "op/web/delivered/o-2",
            "op/web/delivered/o-1",
            "op/detect/delivered/x",
        ]
        .iter()
        .map(|k| (k.to_string(), Some(b"1".to_vec())))
        .collect();
        store
            .commit(&CommitBatch {
                state,
                ..CommitBatch::default()
            })
            .unwrap();
        assert_eq!(
            delivered_embedded(&store)
                .unwrap()
                .into_iter()
                .collect::<Vec<_>>(),
            ["o-1", "o-2"]
        );
    }
}
