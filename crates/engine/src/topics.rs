//! Topic names and the partitioner every backend shares.
//!
//! Records are keyed by visitor id, so all of one visitor's clicks land in one partition and
//! are processed in order by one worker. The partitioner is Kafka's default (murmur2 of the key,
//! positive, modulo the partition count), so the embedded backend and a Kafka cluster place a
//! visitor in the same partition.

/// A topic of the pipeline, by its logical name. Operators read and emit these, so a topic
/// that does not exist cannot be named, and every backend's name for one
/// (`[kafka.topics]` in distributed mode) is a total mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// Raw page views from the replay and the collector.
    ClickData,
    /// Enriched page views.
    EnrichedClickData,
    /// Offers emitted by the detection stage.
    SpecialOffers,
    /// Records that could not be processed, with the reason and where they came from.
    DeadLetters,
    /// Alert rules' transitions (firing, resolved), from the aggregation.
    Alerts,
}

impl Topic {
    /// Every topic.
    pub const ALL: [Topic; 5] = [
        Topic::ClickData,
        Topic::EnrichedClickData,
        Topic::SpecialOffers,
        Topic::DeadLetters,
        Topic::Alerts,
    ];

    /// Its logical name: the embedded store's table and the default Kafka topic.
    pub const fn name(self) -> &'static str {
        match self {
            Topic::ClickData => "click-data",
            Topic::EnrichedClickData => "enriched-click-data",
            Topic::SpecialOffers => "special-offers",
            Topic::DeadLetters => "dead-letters",
            Topic::Alerts => "alerts",
        }
    }

    /// The topic whose logical name is `name`.
    pub fn from_name(name: &str) -> Option<Topic> {
        Topic::ALL.into_iter().find(|t| t.name() == name)
    }
}

impl std::fmt::Display for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl serde::Serialize for Topic {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// [`Topic::ClickData`]'s name (for the stores' APIs, which take names).
pub const CLICK_DATA: &str = Topic::ClickData.name();
/// [`Topic::EnrichedClickData`]'s name.
pub const ENRICHED_CLICK_DATA: &str = Topic::EnrichedClickData.name();
/// [`Topic::SpecialOffers`]'s name.
pub const SPECIAL_OFFERS: &str = Topic::SpecialOffers.name();
/// [`Topic::DeadLetters`]'s name.
pub const DEAD_LETTERS: &str = Topic::DeadLetters.name();
/// [`Topic::Alerts`]'s name.
pub const ALERTS: &str = Topic::Alerts.name();

/// The partition of `key` among `partitions`, exactly as Kafka's Java client computes it.
pub fn partition_for(key: &str, partitions: u32) -> u32 {
    debug_assert!(partitions > 0, "a topic has at least one partition");
    (murmur2(key.as_bytes()) & 0x7fff_ffff) % partitions.max(1)
}

/// Kafka's murmur2 (seed 0x9747b28c), as in `org.apache.kafka.common.utils.Utils.murmur2`.
fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topic_is_found_by_its_name_and_no_other_name_is_a_topic() {
        for t in Topic::ALL {
            assert_eq!(Topic::from_name(t.name()), Some(t));
            assert_eq!(serde_json::to_value(t).unwrap(), t.name());
        }
        assert_eq!(Topic::from_name("clicks"), None);
    }

    #[test]
    fn murmur2_matches_kafka_reference_values() {
        // Values from Kafka's UtilsTest.testMurmur2.
        assert_eq!(murmur2(b"21") as i32, -973932308);
        assert_eq!(murmur2(b"foobar") as i32, -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string") as i32, -1486304829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32,
            -58897971
        );
        assert_eq!(murmur2(b"abc") as i32, 479470107);
    }

    #[test]
    fn partitions_are_stable_and_in_range() {
        for n in [1, 3, 4, 16] {
            let p = partition_for("6BB42667-22A2-49BD-852B-CC02B0E9FA74", n);
            assert!(p < n);
            assert_eq!(p, partition_for("6BB42667-22A2-49BD-852B-CC02B0E9FA74", n));
        }
    }
}
