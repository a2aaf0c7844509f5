use clickpulse_engine::operator::RestoreError;

/// An error of the distributed backends.
#[derive(Debug, thiserror::Error)]
pub enum DistributedError {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The Kafka client failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A topic exists with another layout than the configuration's.
    #[error("topic {topic:?} has {existing} partitions, the configuration says {configured}")]
    PartitionMismatch {
        /// The topic.
        topic: String,
        /// Partitions in the cluster.
        existing: u32,
        /// Partitions configured.
        configured: u32,
    },
    /// Stored state cannot be read.
    #[error("corrupt state {key:?}: {message}")]
    Corrupt {
        /// The Redis key or field.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// An operator refused its stored state.
    #[error(transparent)]
    Restore(#[from] RestoreError),
    /// The replay's stored position belongs to another input.
    #[error(
        "the replay position in Redis belongs to another input ({stored}), not {given}; clear the key prefix or use another"
    )]
    ReplayInputChanged {
        /// Fingerprint stored.
        stored: String,
        /// Fingerprint of the given input.
        given: String,
    },
    /// A topic that is none of the pipeline's (its physical names are `[kafka.topics]`).
    #[error("topic {0:?} is none of the pipeline's topics (see [kafka.topics])")]
    UnknownTopic(String),
    /// Another worker holds the stage's lease and this one was asked not to wait.
    #[error("lost the lease of stage {0} to another worker")]
    LeaseLost(String),
}
