//! The Clickpulse engine: the data model, the log readers and the operators, with no network
//! dependencies. Every operator has a pure per-event core that a unit test drives without a
//! runtime, a broker or a disk; the backends in `clickpulse-connectors` only move data to and
//! from them.
//!
//! # Layout
//! - [`click`]: the records that flow through the topics ([`Click`], [`EnrichedClick`]).
//! - [`click_log`]: the time-sorted, compact log a replay or a backtest holds in memory.
//! - [`codec`]: the binary encoding of records on embedded topics.
//! - [`reader`]: streaming readers for the Omniture TSV log and the JSON-lines click format;
//!   malformed rows become [`DeadLetter`]s and never stop a run.
//! - [`replay`]: event-time ordering, pacing at N× real time and endless looping.
//! - [`lookups`]: visitor demographics and the product catalogue, parsed from their files.
//! - [`enrich`]: the enrichment operator (category, title, age, gender, country, device).
//! - [`pattern`]: behaviour patterns declared in files, compiled to state machines, and the
//!   detection operator that emits special offers.
//! - [`operator`]: the operator trait every stage implements and the [`Emitter`] it writes to.
//! - [`topics`]: topic names and the visitor-keyed partitioner shared by every backend.
//! - [`window`]: event-time windows, watermarks and the dashboard aggregation.
//! - [`metrics`]: live per-stage counters the HTTP server reports.
//! - [`session`]: the session rule the dashboard and the patterns share.

pub mod alert;
pub mod click;
pub mod click_log;
pub mod codec;
pub mod enrich;
mod error;
pub mod event;
pub mod funnel;
#[doc(hidden)]
pub mod fuzzing;
pub mod lookups;
pub mod loose;
pub mod metrics;
pub mod operator;
pub mod pattern;
pub mod reader;
pub mod replay;
pub mod session;
pub mod snowplow;
pub mod source;
pub mod topics;
pub mod topology;
pub mod window;

pub use click::{Click, ClickRef, Device, EnrichedClick, EnrichedRef, Gender};
pub use click_log::ClickLog;
pub use enrich::{EnrichOperator, Enricher};
pub use error::{error_chain, error_chain_skipping};
pub use lookups::{LookupSource, Lookups, Product, User};
pub use operator::{Emitter, Operator, Output};
pub use reader::{DeadLetter, LogRecord};
