//! Webhooks: offers (and alerts) signed per Standard Webhooks and delivered at least once to
//! the shop's own systems. Its pure parts are here so far: the signatures ([`signature`]), the
//! outbox's retry and dead-letter rules ([`outbox`]) and the outbound address policy
//! ([`address`]); the sender that drives them on both runtimes is the next step.

pub mod address;
pub mod outbox;
pub mod signature;
