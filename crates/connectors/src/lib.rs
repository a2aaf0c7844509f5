//! Backends that move Clickpulse's records between operators and keep their state.
//!
//! # Layout
//! - [`embedded`]: durable, partitioned topics and the state store in one local `redb` file,
//!   with the runners that drive the engine's operators over them (what `clickpulse demo` uses).
//!
//! - [`distributed`]: Kafka-protocol topics (librdkafka) and Redis state, each stage a worker
//!   process in a consumer group (what `clickpulse run` uses).
//!
//! - [`driver`]: what happens to a record between fetch and commit (dead letters, counters,
//!   when to checkpoint), the same in both runtimes.
//!
//! - [`shutdown`]: the one cancellation signal of a process, its signal handling, and the
//!   first stage failure's cause.
//!
//! Both keep one contract: an operator's outputs, its state changes and its consumed offsets
//! are committed so that a restart neither loses nor repeats a record's effects.

pub mod distributed;
pub mod driver;
pub mod embedded;
pub mod replay_cursor;
pub mod shutdown;
