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

mod error;
pub mod runner;
mod store;

pub use error::StoreError;
pub use store::{
    CommitBatch, DB_FILE, EmbeddedStore, Fetched, OffsetCommit, RecordRef, StoredRecord,
};
