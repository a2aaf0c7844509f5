//! The distributed backends: topics on a Kafka-protocol broker (Apache Kafka, Redpanda, tansu)
//! through librdkafka, state and lookups in Redis. Every stage is a worker process in a consumer
//! group; run more to scale. See `docs/deployment.md` and ARCHITECTURE.md.
//!
//! - [`kafka`]: client settings, topic creation, acknowledged batch publishing, tail scans.
//! - [`store`]: Redis keys, atomic state commits, leases, cached lookups.
//! - [`runner`]: the loop that drives an operator over its partitions.

mod config;
mod error;
pub mod kafka;
pub mod runner;
pub mod store;

pub use config::{KafkaConfig, KafkaSecurity, RedisConfig, TopicNames};
pub use error::DistributedError;
