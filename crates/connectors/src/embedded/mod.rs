//! The embedded backend: topics and state in one durable local file.
//!
//! [`EmbeddedStore`] keeps every topic partition as an append-only table of
//! `(partition, offset) → (key, value)`, plus the consumer offsets, the operators' state and the
//! lookups, all in one `redb` database in the data dir. A stage's commit (records appended,
//! state changed, offsets advanced) is one `redb` write transaction with fsync, so a `kill -9`
//! at any point leaves either all of a batch or none of it. Each partition's newest segments are
//! also kept in memory, so the stages read what the stage before just wrote without going to
//! disk ([`EmbeddedStore::fetch_batch`]). The runners in [`runner`] drive the engine's
//! operators over it.
//!
//! Every record is stored with a checksum, and every state value too, verified whenever it is
//! read back from the file: a damaged byte is an error naming the record (topic, partition,
//! offset) or the state key, never a silently different value. Data written before checksums
//! existed is still read (a flag bit in each segment's count, a marker byte in front of each
//! state value, tell the layouts apart). Tools read a data dir through [`ReadOnlyStore`], which
//! never writes to it; [`ReadOnlyStore::verify`] checks one end to end.

mod error;
pub mod runner;
mod store;

pub use error::StoreError;
pub use store::{
    CommitBatch, DB_FILE, Decode, EmbeddedStore, Fetched, OffsetCommit, Problem, ReadOnlyStore,
    RecordRef, StoredRecord, VerifyReport, catch_damage,
};
