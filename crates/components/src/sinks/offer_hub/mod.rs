//! The offer hub: offers delivered to the visitors' browsers as popups. The web stage reads
//! `special-offers` and hands each offer, once, to the hub, which pushes it over Server-Sent
//! Events to that visitor's open pages (`GET /offers/stream`). Embedded, one web stage runs;
//! distributed, every web instance runs its own (each with its own delivery state, named by its
//! instance), since each serves its own browsers.

use clickpulse_connectors::distributed::runner::{Placement, run_stage};
use clickpulse_connectors::embedded::runner::run_operator;
use clickpulse_engine::pattern::PatternRegistry;
use clickpulse_server::offers::{OfferHub, OfferTokens, WebDelivery, WebOperator};

use super::Sink;
use crate::{ComponentError, Runtime, Wiring, spawn_distributed, spawn_embedded};

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
const STAGE: &str = "web";

fn start(settings: &super::SinkSettings, wiring: &mut Wiring<'_>) -> Result<(), ComponentError> {
    if !wiring.hosts(STAGE) {
        return Ok(());
    }
    let settings = &settings.popups;
    let tokens = settings.tokens.clone().ok_or(ComponentError::Missing {
        stage: STAGE,
        what: "the offer secret",
    })?;
    let registry = settings.registry.clone().ok_or(ComponentError::Missing {
        stage: STAGE,
        what: "the patterns",
    })?;
    let hub = OfferHub::new(clickpulse_server::static_files::offer_image)
        .with_content(clickpulse_server::offers::content_from(registry));
    wiring.http.web = Some(WebDelivery {
        hub: hub.clone(),
        tokens,
    });
    match &wiring.runtime {
        Runtime::Embedded(rt) => {
            let metrics = wiring.metrics.stage(STAGE);
            let (store, config, shutdown) =
                (rt.store.clone(), rt.runner.clone(), wiring.stop.flag());
            spawn_embedded(wiring.stop, STAGE, move || {
                run_operator(&store, WebOperator::new(hub), &metrics, &shutdown, &config)
            })
        }
        Runtime::Distributed(rt) => {
            let ctx = (rt.worker)(STAGE);
            let task = settings.instance.clone();
            spawn_distributed(wiring.stop, STAGE, move || {
                run_stage(&ctx, Placement::Single { lease: None, task }, || {
                    WebOperator::new(hub.clone())
                })
            })
        }
    }
}
