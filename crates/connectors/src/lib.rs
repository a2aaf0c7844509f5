//! Backends that move Clickpulse's records between operators and keep their state.
//!
//! # Layout
//! - [`embedded`]: durable, partitioned topics and the state store in one local `redb` file,
//!   with the runners that drive the engine's operators over them (what `clickpulse demo` uses).
//!
//! - [`distributed`]: Kafka-protocol topics (librdkafka) and Redis state, each stage a worker
//!   process in a consumer group (what `clickpulse run` uses).
//!
//! Both keep one contract: an operator's outputs, its state changes and its consumed offsets
//! are committed so that a restart neither loses nor repeats a record's effects.

pub mod distributed;
pub mod embedded;
