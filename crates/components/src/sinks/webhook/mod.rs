//! Webhooks: offers signed per Standard Webhooks and delivered at least once to the shop's own
//! systems (CRM, e-mail, ad audiences). The webhooks stage ([`sender`]) keeps a durable outbox
//! as its checkpointed state and sends through HTTP workers ([`http`]); the signatures
//! ([`signature`]), the retry and dead-letter rules ([`outbox`]) and the outbound address
//! policy ([`address`]) are pure. Configured in `[webhooks]` ([`config`]); the stage always runs
//! (with no endpoint it only reads `special-offers`), so the topic's retention never waits on it.

pub mod address;
pub mod config;
pub mod http;
pub mod outbox;
pub mod sender;
pub mod signature;
pub mod slack;

use std::collections::BTreeSet;
use std::sync::Arc;

use clickpulse_connectors::embedded::runner::operator_state_with_prefix;
use clickpulse_connectors::embedded::{EmbeddedStore, StoreError};

use clickpulse_engine::pattern::PatternRegistry;

use super::Sink;
use crate::operators::run_on;
use crate::{ComponentError, Wiring};
use config::WebhooksConfig;
use sender::{Anchor, STAGE, WebhookOperator};

/// The registry's entry.
pub const SINK: Sink = Sink {
    name: "shop-systems",
    start,
};

/// The webhooks' settings.
#[derive(Clone, Default)]
pub struct WebhookSettings {
    /// `[webhooks]`.
    pub config: WebhooksConfig,
    /// The patterns, whose offers' titles and texts go into the bodies (when known here).
    pub registry: Option<PatternRegistry>,
}

fn start(settings: &super::SinkSettings, wiring: &mut Wiring<'_>) -> Result<(), ComponentError> {
    if !wiring.hosts(STAGE) {
        return Ok(());
    }
    let settings = &settings.webhooks;
    let endpoints = settings
        .config
        .endpoints(&|var| std::env::var(var).ok())
        .map_err(|problems| ComponentError::Invalid {
            stage: STAGE,
            problems: problems.join("\n"),
        })?;
    let policy = settings.config.policy();
    let content = settings.registry.clone().map(|registry| {
        let content: sender::ContentFn =
            Arc::new(clickpulse_server::offers::content_from(registry));
        content
    });
    let (control, inbox) = clickpulse_server::webhooks::control();
    wiring.http.webhooks = Some(control);
    let stop = wiring.stop.clone();
    run_on(wiring, STAGE, "all".to_owned(), move || {
        // A new task (distributed: after each rebalance) gets workers of its own; the old
        // task's end when it is dropped.
        let transport: Box<dyn http::Transport> =
            match http::HttpTransport::start(&endpoints, &policy) {
                Ok(t) => Box::new(t),
                Err(error) => {
                    stop.fail(format!("cannot start the webhook workers: {error}"));
                    Box::new(http::NoTransport)
                }
            };
        let mut op = WebhookOperator::new(endpoints.clone(), transport, Anchor::now())
            .with_control(inbox.clone());
        if let Some(content) = &content {
            op = op.with_content(content.clone());
        }
        op
    })
}

/// The deliveries in the embedded webhooks stage's outbox as of its last commit, as
/// `endpoint/offer id` (for inspection: `chaos` reports them).
pub fn pending_embedded(store: &EmbeddedStore) -> Result<BTreeSet<String>, StoreError> {
    Ok(
        operator_state_with_prefix(store, STAGE, sender::ENTRY_PREFIX)?
            .into_iter()
            .filter_map(|(key, _)| key.strip_prefix(sender::ENTRY_PREFIX).map(str::to_owned))
            .collect(),
    )
}
