//! Sinks: where results leave the pipeline (the topology's sinks). Each is a folder (its
//! settings, its implementation for each runtime) and a line in [`SINKS`].

use crate::PIPELINE;

use crate::{ComponentError, Wiring};

pub mod dashboard_store;
pub mod offer_hub;
pub mod webhook;

/// Every sink, in the topology's order.
pub static SINKS: &[Sink] = &[dashboard_store::SINK, offer_hub::SINK, webhook::SINK];

/// What each sink is started with (each sink's own part).
pub struct SinkSettings {
    /// The dashboard store's.
    pub dashboard: dashboard_store::DashboardSettings,
    /// The offer hub's.
    pub popups: offer_hub::OfferHubSettings,
    /// The webhooks'.
    pub webhooks: webhook::WebhookSettings,
}

/// A sink plug-in.
pub struct Sink {
    /// Its name in the topology.
    pub name: &'static str,
    /// Starts the parts of it this process hosts (its threads, what the HTTP server serves).
    pub start: fn(&SinkSettings, &mut Wiring<'_>) -> Result<(), ComponentError>,
}

/// Starts every sink, in the registry's order (each starts the parts this process hosts).
pub fn start(settings: &SinkSettings, wiring: &mut Wiring<'_>) -> Result<(), ComponentError> {
    for sink in SINKS {
        (sink.start)(settings, wiring)?;
    }
    Ok(())
}

/// The stages that write to sink `name`.
pub fn writers(name: &str) -> impl Iterator<Item = &'static str> + '_ {
    PIPELINE
        .stages
        .iter()
        .filter(move |s| s.sinks.contains(&name))
        .map(|s| s.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_and_the_topology_name_the_same_sinks_in_the_same_order() {
        let topology: Vec<&str> = PIPELINE.sinks.iter().map(|s| s.name).collect();
        let registry: Vec<&str> = SINKS.iter().map(|s| s.name).collect();
        assert_eq!(registry, topology);
        assert_eq!(writers("dashboard").collect::<Vec<_>>(), ["aggregate"]);
        assert_eq!(writers("popups").collect::<Vec<_>>(), ["web"]);
        assert_eq!(writers("shop-systems").collect::<Vec<_>>(), ["webhooks"]);
    }
}
