//! Configuration of the distributed backends, read from the `[kafka]` and `[redis]` tables of
//! `clickpulse.toml` (see `docs/deployment.md` and `config/`).

use std::collections::BTreeMap;

use clickpulse_engine::topics::{self, Topic};
use serde::Deserialize;

use super::DistributedError;

/// The Kafka-protocol broker and the topic layout.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `bootstrap.servers`: comma-separated `host:port`.
    pub brokers: String,
    /// Consumer groups are `{group_prefix}-{stage}`.
    pub group_prefix: String,
    /// Partitions of `click-data`, `enriched-click-data` and `special-offers` (they must be
    /// equal: a visitor's records stay in partition `p` from stage to stage).
    pub partitions: u32,
    /// Partitions of the dead-letter topic.
    pub dead_letter_partitions: u32,
    /// Replication factor of topics this creates.
    pub replication_factor: i32,
    /// Physical topic names.
    pub topics: TopicNames,
    /// `session.timeout.ms` of the consumer groups: how long a dead worker keeps its
    /// partitions.
    pub session_timeout_ms: u32,
    /// SASL/TLS.
    pub security: KafkaSecurity,
    /// Extra librdkafka properties, applied last (`"compression.type" = "lz4"`).
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".to_owned(),
            group_prefix: "clickpulse".to_owned(),
            partitions: 6,
            dead_letter_partitions: 1,
            replication_factor: 1,
            topics: TopicNames::default(),
            session_timeout_ms: 10_000,
            security: KafkaSecurity::default(),
            properties: BTreeMap::new(),
        }
    }
}

/// The physical names of the pipeline's topics.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicNames {
    /// Raw clicks.
    pub click_data: String,
    /// Enriched clicks.
    pub enriched_click_data: String,
    /// Offers.
    pub special_offers: String,
    /// Records that could not be processed.
    pub dead_letters: String,
    /// Alert rules' transitions.
    pub alerts: String,
}

impl Default for TopicNames {
    fn default() -> Self {
        TopicNames {
            click_data: topics::CLICK_DATA.to_owned(),
            enriched_click_data: topics::ENRICHED_CLICK_DATA.to_owned(),
            special_offers: topics::SPECIAL_OFFERS.to_owned(),
            dead_letters: "clickpulse-dead-letters".to_owned(),
            alerts: "clickpulse-alerts".to_owned(),
        }
    }
}

impl TopicNames {
    /// The physical name of `topic`.
    pub fn physical(&self, topic: Topic) -> &str {
        match topic {
            Topic::ClickData => &self.click_data,
            Topic::EnrichedClickData => &self.enriched_click_data,
            Topic::SpecialOffers => &self.special_offers,
            Topic::DeadLetters => &self.dead_letters,
            Topic::Alerts => &self.alerts,
        }
    }

    /// The topic whose physical name is `physical` (`None`: none of the pipeline's).
    pub fn logical(&self, physical: &str) -> Option<Topic> {
        Topic::ALL
            .into_iter()
            .find(|t| self.physical(*t) == physical)
    }
}

/// How clients authenticate to the brokers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSecurity {
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub protocol: String,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub sasl_mechanism: Option<String>,
    /// SASL user.
    pub sasl_username: Option<String>,
    /// SASL password (or set `CLICKPULSE_KAFKA_PASSWORD`).
    pub sasl_password: Option<String>,
    /// CA certificate file (PEM) to verify the brokers.
    pub ssl_ca_location: Option<String>,
    /// Client certificate (PEM), for mutual TLS.
    pub ssl_certificate_location: Option<String>,
    /// Client key (PEM), for mutual TLS.
    pub ssl_key_location: Option<String>,
}

impl Default for KafkaSecurity {
    fn default() -> Self {
        KafkaSecurity {
            protocol: "plaintext".to_owned(),
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            ssl_ca_location: None,
            ssl_certificate_location: None,
            ssl_key_location: None,
        }
    }
}

/// The Redis server that holds lookups, operator state and what the web stage serves.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://host:port/db`, or `rediss://` for TLS. With `cluster`, any node of the cluster
    /// (the others are discovered from it).
    pub url: String,
    /// The URL is a node of a Redis Cluster: commands are routed by key slot. Each task's state
    /// and offsets live in one hash, so every commit stays atomic on its slot.
    pub cluster: bool,
    /// User (Redis 6 ACLs), if not in the URL.
    pub username: Option<String>,
    /// Password, if not in the URL (or set `CLICKPULSE_REDIS_PASSWORD`).
    pub password: Option<String>,
    /// Prefix of Clickpulse's own keys (the lookup keys keep the original layout unprefixed).
    pub key_prefix: String,
    /// How long the enrichment caches a lookup record (ms).
    pub lookup_cache_ttl_ms: u64,
    /// Most entries a transition-log stream keeps.
    pub state_log_max_len: usize,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379/0".to_owned(),
            cluster: false,
            username: None,
            password: None,
            key_prefix: "clickpulse".to_owned(),
            lookup_cache_ttl_ms: 60_000,
            state_log_max_len: 10_000,
        }
    }
}

impl KafkaConfig {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), DistributedError> {
        let bad = |m: &str| Err(DistributedError::Config(m.to_owned()));
        if self.brokers.trim().is_empty() {
            return bad("kafka.brokers is empty");
        }
        if self.partitions == 0 || self.dead_letter_partitions == 0 {
            return bad("kafka.partitions and kafka.dead_letter_partitions must be at least 1");
        }
        if self.replication_factor < 1 {
            return bad("kafka.replication_factor must be at least 1");
        }
        let t = &self.topics;
        let names = [
            &t.click_data,
            &t.enriched_click_data,
            &t.special_offers,
            &t.dead_letters,
            &t.alerts,
        ];
        for (i, a) in names.iter().enumerate() {
            if a.is_empty() {
                return bad("kafka.topics: a topic name is empty");
            }
            if names[i + 1..].contains(a) {
                return bad(&format!("kafka.topics: {a:?} is used twice"));
            }
        }
        let protocols = ["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"];
        if !protocols.contains(&self.security.protocol.as_str()) {
            return bad(&format!(
                "kafka.security.protocol {:?}: expected one of {}",
                self.security.protocol,
                protocols.join(", ")
            ));
        }
        if self.security.protocol.starts_with("sasl") && self.security.sasl_mechanism.is_none() {
            return bad("kafka.security.sasl_mechanism is required with a sasl_* protocol");
        }
        Ok(())
    }
}
