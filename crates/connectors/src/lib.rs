//! Backends that move Clickpulse's records between operators and keep their state.
//!
//! # Layout
//! - [`embedded`]: durable, partitioned topics and the state store in one local `redb` file,
//!   with the runners that drive the engine's operators over them (what `clickpulse demo` uses).
//!
//! The distributed backends (Kafka topics, Redis state) implement the same contract: an
//! operator's outputs, its state changes and its consumed offsets are committed together.

pub mod embedded;
