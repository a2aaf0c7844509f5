use std::path::PathBuf;

/// An error of the embedded store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data dir cannot be created or used.
    #[error("cannot use data dir {path}: {source}")]
    DataDir {
        /// The dir.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The database failed.
    #[error("storage error: {0}")]
    Storage(#[from] redb::Error),
    /// A topic that was not declared.
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    /// The data dir was created with another partition count for a topic.
    #[error(
        "topic {topic:?} has {existing} partitions in this data dir, not {requested}; use a fresh --data-dir"
    )]
    PartitionMismatch {
        /// The topic.
        topic: String,
        /// Partitions on disk.
        existing: u32,
        /// Partitions requested.
        requested: u32,
    },
    /// The data dir's records are in another encoding than this build's.
    #[error(
        "the data dir {path} holds records in format {found}, and this Clickpulse reads format \
         {expected} (events gained types and detail in format 2); start with --reset (drops the \
         data dir's topics and state) or use a fresh --data-dir"
    )]
    FormatMismatch {
        /// The database file.
        path: PathBuf,
        /// The format on disk.
        found: u32,
        /// This build's.
        expected: u32,
    },
    /// The data dir does not exist (read-only commands never create it).
    #[error(
        "no data dir at {0} (nothing was created; give --data-dir, or run `clickpulse demo` first)"
    )]
    NoDataDir(PathBuf),
    /// The data dir has no database file.
    #[error("{0} holds no clickpulse database (nothing was created)")]
    NoDatabase(PathBuf),
    /// A pipeline holds the database's write lock.
    #[error(
        "a pipeline (`clickpulse demo`) is running on the data dir {0}, which it locks while it runs. \
         Read its live figures over HTTP instead: GET /api/stats, or the /pipeline page \
         (http://127.0.0.1:8080/pipeline by default); or stop it and try again"
    )]
    InUse(PathBuf),
    /// A record whose checksum does not match: damaged on disk.
    #[error(
        "damaged record in topic {topic:?}, partition {partition}, offset {offset}: {message} (run `clickpulse verify`)"
    )]
    DamagedRecord {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The first offset affected.
        offset: u64,
        /// What is wrong.
        message: String,
    },
    /// The database file is damaged beyond what redb reports as an error (it panicked).
    #[error("the database file is damaged: {0} (nothing was written; run `clickpulse verify`)")]
    Damaged(String),
    /// A stored value could not be decoded.
    #[error("corrupt value under {key:?}: {message}")]
    Corrupt {
        /// Where.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// An operator's state could not be restored.
    #[error(transparent)]
    Restore(#[from] clickpulse_engine::operator::RestoreError),
    /// The replay's input differs from the one this data dir was replaying.
    #[error(
        "this data dir was replaying another input ({stored}); now given {given}. Use --reset or a fresh --data-dir"
    )]
    ReplayInputChanged {
        /// The fingerprint on disk.
        stored: String,
        /// The fingerprint given.
        given: String,
    },
}

impl StoreError {
    /// True when the database cannot be written again by this process: redb stops accepting
    /// writes after an I/O error (a full disk, a failing device) until it is reopened, so
    /// retrying is pointless. The last commit on disk is intact; a restart resumes from it.
    pub fn is_fatal_io(&self) -> bool {
        matches!(
            self,
            StoreError::Storage(redb::Error::Io(_) | redb::Error::PreviousIo)
        )
    }
}

pub(crate) fn db<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Storage(e.into())
}
