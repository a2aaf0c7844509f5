//! [`EmbeddedStore`]: topics, offsets, state and lookups in one `redb` file.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use clickpulse_engine::lookups::{Lookups, Product, User};
use clickpulse_engine::topics::partition_for;
use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition,
};
use serde_json::{Value, json};

use super::error::{StoreError, db};

const OFFSETS: TableDefinition<&str, u64> = TableDefinition::new("offsets");
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
const META: TableDefinition<&str, u32> = TableDefinition::new("topic_partitions");
/// The encoding of the records and state (key [`FORMAT_KEY`]): a data dir written in another
/// is refused rather than read as dead letters.
const FORMAT: TableDefinition<&str, u32> = TableDefinition::new("format");
const FORMAT_KEY: &str = "records";
/// This build's record format. 1: page views (no `format` table); 2: events with a type and a
/// detail (`clickpulse_engine::event`); 3: offers name the product they are for.
pub(crate) const RECORD_FORMAT: u32 = 3;
const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("lookup_users");
const PRODUCTS: TableDefinition<&str, &[u8]> = TableDefinition::new("lookup_products");

/// A topic: `(partition, base offset) → segment`, one segment per partition per commit (see
/// [`encode_segment`]), so a batch of N records costs one B-tree insert, not N.
type TopicTable<'a> = TableDefinition<'a, (u32, u64), &'static [u8]>;

/// A topic's table open for writing.
type TopicTableMut<'txn> = redb::Table<'txn, (u32, u64), &'static [u8]>;

/// A record to append: `(key, value)`.
type Record<'a> = (&'a str, &'a [u8]);

fn topic_table(name: &str) -> TopicTable<'_> {
    TableDefinition::new(name)
}

/// Set in a segment's first word (its record count) when the segment carries checksums
/// ([`encode_segment`]); segments written before checksums existed have it clear and are read
/// as before. Counts never come near 2³¹ (a commit holds at most one batch).
const CHECKED: u32 = 1 << 31;

/// Encodes records as a segment (little-endian):
///
/// `count | CHECKED: u32, header_check: u32`, then per record
/// `key_len: u32, key, value_len: u32, value, check: u32`, where `check` is [`checksum`] of
/// the record's bytes from `key_len` to the end of `value`, and `header_check` covers the
/// segment's partition, base offset and count ([`seal_segment`] fills it in once the base is
/// known, under the writer's lock). A flipped bit in a record, or a segment stored under the
/// wrong key, is then an error naming the record, never a silently different value.
///
/// The legacy layout (before checksums) is the same without `header_check` and `check`, with
/// `CHECKED` clear; it is still read, unchecked.
fn encode_segment(records: &[Record<'_>]) -> Vec<u8> {
    let size = 8 + records
        .iter()
        .map(|(k, v)| 12 + k.len() + v.len())
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(records.len() as u32 | CHECKED).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    for (key, value) in records {
        let start = out.len();
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
        let check = checksum(0, &out[start..]);
        out.extend_from_slice(&check.to_le_bytes());
    }
    out
}

/// The check of a segment's place: its partition, base offset and count.
fn header_check(partition: u32, base: u64, count: u64) -> u32 {
    let mut bytes = [0u8; 20];
    bytes[..4].copy_from_slice(&partition.to_le_bytes());
    bytes[4..12].copy_from_slice(&base.to_le_bytes());
    bytes[12..].copy_from_slice(&count.to_le_bytes());
    checksum(0x5345_474d, &bytes)
}

/// Fills in an encoded segment's `header_check` once its base offset is known.
fn seal_segment(bytes: &mut [u8], partition: u32, base: u64) {
    let count = segment_len(bytes);
    bytes[4..8].copy_from_slice(&header_check(partition, base, count).to_le_bytes());
}

/// A 32-bit checksum of `bytes`: XXH3 (64 bits, seeded), folded. Damage gets past it with a
/// chance of about 2⁻³².
fn checksum(seed: u64, bytes: &[u8]) -> u32 {
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, seed);
    (h ^ (h >> 32)) as u32
}

/// The number of records in a segment.
fn segment_len(bytes: &[u8]) -> u64 {
    bytes.get(..4).map_or(0, |b| {
        u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & !CHECKED)
    })
}

/// Whether a segment carries checksums.
fn segment_checked(bytes: &[u8]) -> bool {
    bytes
        .get(..4)
        .is_some_and(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & CHECKED != 0)
}

/// Where a segment's records start.
fn body_start(checked: bool) -> usize {
    if checked { 8 } else { 4 }
}

fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    let (head, rest) = bytes.split_at_checked(n)?;
    *bytes = rest;
    Some(head)
}

fn take_u32(bytes: &mut &[u8]) -> Option<u32> {
    let b = take(bytes, 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Takes the next record of a segment's body: `(key, value)`, or `None` at a truncated end.
/// Does not verify its check (see [`checked_segment`]).
fn next_record<'a>(rest: &mut &'a [u8], checked: bool) -> Option<(&'a [u8], &'a [u8])> {
    let n = take_u32(rest)? as usize;
    let key = take(rest, n)?;
    let n = take_u32(rest)? as usize;
    let value = take(rest, n)?;
    if checked {
        take(rest, 4)?;
    }
    Some((key, value))
}

/// Damage found in a segment: the first offset it affects and what is wrong.
type Damage = (u64, String);

/// A segment read from disk, checked whole: its place, its count, then exactly that many
/// records, each with a matching check (for segments written with checksums).
fn checked_segment(partition: u32, base: u64, bytes: &[u8]) -> Result<Segment, Damage> {
    if bytes.len() < 4 {
        return Err((base, "segment truncated".to_owned()));
    }
    let checked = segment_checked(bytes);
    let count = segment_len(bytes);
    let mut rest = &bytes[4..];
    if checked {
        let stored = take_u32(&mut rest).ok_or((base, "segment truncated".to_owned()))?;
        if stored != header_check(partition, base, count) {
            return Err((
                base,
                format!(
                    "the segment header does not match its place (partition {partition}, offsets \
                     {base}.., {count} records): its count or key is damaged"
                ),
            ));
        }
    }
    for i in 0..count {
        let offset = base + i;
        let start = rest;
        next_record(&mut rest, checked).ok_or((offset, "segment truncated".to_owned()))?;
        if checked {
            let len = start.len() - rest.len();
            let (body, check) = start[..len].split_at(len - 4);
            let check = u32::from_le_bytes([check[0], check[1], check[2], check[3]]);
            if check != checksum(0, body) {
                return Err((
                    offset,
                    "checksum mismatch: its key or value was changed on disk".to_owned(),
                ));
            }
        }
    }
    if !rest.is_empty() {
        return Err((
            base + count,
            format!("{} bytes after the last record", rest.len()),
        ));
    }
    Ok(Segment {
        base,
        count,
        checked,
        bytes: Arc::new(bytes.to_vec()),
    })
}

/// One commit's records of one partition, encoded ([`encode_segment`]) and shared by every
/// reader of them.
#[derive(Debug, Clone)]
struct Segment {
    base: u64,
    count: u64,
    /// Written with checksums (every segment written by this version).
    checked: bool,
    bytes: Arc<Vec<u8>>,
}

impl Segment {
    fn end(&self) -> u64 {
        self.base + self.count
    }

    fn records(&self) -> impl Iterator<Item = RecordRef<'_>> {
        let checked = self.checked;
        let mut rest = self.bytes.get(body_start(checked)..).unwrap_or_default();
        (self.base..self.end()).map_while(move |offset| {
            let (key, value) = next_record(&mut rest, checked)?;
            Some(RecordRef { offset, key, value })
        })
    }
}

/// The newest segments of a partition, kept in memory so the stages read what was just written
/// without going to the database: reading them back from `redb` (a read transaction, page
/// reads into fresh buffers, a copy of every key and value) cost a quarter of the live
/// pipeline's CPU.
#[derive(Debug, Default)]
struct Tail {
    segments: VecDeque<Segment>,
    bytes: usize,
}

/// How many bytes of segments each partition's [`Tail`] keeps (the newest segment is kept
/// whatever its size): a consumer up to this far behind reads from memory.
const TAIL_BYTES: usize = 4 << 20;

impl Tail {
    fn push(&mut self, segment: Segment) {
        self.bytes += segment.bytes.len();
        self.segments.push_back(segment);
        while self.bytes > TAIL_BYTES && self.segments.len() > 1 {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some(s) = self.segments.pop_front() {
            self.bytes -= s.bytes.len();
        }
    }

    /// The segments holding offsets `from..`, up to `max` records, if the tail holds `from`.
    fn read(&self, from: u64, max: usize) -> Option<Vec<Segment>> {
        if self.segments.front()?.base > from {
            return None;
        }
        let first = self.segments.partition_point(|s| s.end() <= from);
        let mut out = Vec::new();
        let mut n = 0;
        for s in self.segments.range(first..) {
            n += s.end() - s.base.max(from);
            out.push(s.clone());
            if n >= max as u64 {
                break;
            }
        }
        Some(out)
    }
}

/// A record of a [`Fetched`] batch, borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// Its offset in the partition.
    pub offset: u64,
    /// Its key (the visitor id, UTF-8 when written through [`CommitBatch`]).
    pub key: &'a [u8],
    /// Its value ([`clickpulse_engine::codec`]).
    pub value: &'a [u8],
}

/// Records read from a partition ([`EmbeddedStore::fetch_batch`]): the segments that hold them,
/// shared with the store, so reading copies nothing.
#[derive(Debug, Default)]
pub struct Fetched {
    from: u64,
    max: usize,
    segments: Vec<Segment>,
}

impl Fetched {
    /// The records, in offset order.
    pub fn records(&self) -> impl Iterator<Item = RecordRef<'_>> {
        self.segments
            .iter()
            .flat_map(Segment::records)
            .skip_while(|r| r.offset < self.from)
            .take(self.max)
    }
}

/// redb's page cache. Its default, 1 GiB, filled with every page the topics ever wrote (the
/// stages read each record once, right after it is written), so each new page was fresh memory
/// that the kernel faulted in and zeroed: a quarter of the enrich stage's time in the live
/// bench, and most of the demo's peak RSS.
const CACHE_BYTES: usize = 128 << 20;

/// The database file inside the data dir.
pub const DB_FILE: &str = "clickpulse.redb";

/// A record read back from a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Its offset in the partition.
    pub offset: u64,
    /// Its key (visitor id).
    pub key: String,
    /// Its value (JSON).
    pub value: Vec<u8>,
}

/// A consumer group's position: the next offset it will read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommit {
    /// Consumer group (the stage's name).
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Next offset to read.
    pub next_offset: u64,
}

/// Everything one stage commits at once.
#[derive(Debug, Default)]
pub struct CommitBatch {
    /// Records to append: (topic, key, value); the partition follows from the key.
    pub appends: Vec<(String, String, Vec<u8>)>,
    /// State changes: key → value, `None` deletes.
    pub state: Vec<(String, Option<Vec<u8>>)>,
    /// Consumed offsets.
    pub offsets: Vec<OffsetCommit>,
}

/// Durable partitioned topics and state in a local data dir.
pub struct EmbeddedStore {
    db: Database,
    path: PathBuf,
    partitions: HashMap<String, u32>,
    /// Held by each write transaction (commits, trims, syncs), so a commit's appends get the
    /// offsets that follow the last one's.
    writer: Mutex<()>,
    /// Next offset of each partition of each declared topic, read without a lock: a reader
    /// never waits for a commit in progress.
    ends: HashMap<String, Vec<AtomicU64>>,
    /// The newest segments of each partition of the declared topics.
    tails: HashMap<String, Vec<Mutex<Tail>>>,
    /// Bumped on every commit that appends; consumers wait on it.
    appended: (Mutex<u64>, Condvar),
    /// Commits not yet on disk, and when the last durable one was made.
    sync: Mutex<SyncState>,
    /// Commits between their transaction's commit and the publication of their partition ends
    /// (see [`EmbeddedStore::publishing`]).
    publishing: AtomicU64,
}

#[derive(Debug)]
struct SyncState {
    /// Commits made without an fsync since the last durable commit.
    lazy: u64,
    last_durable: Instant,
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir` with these topics and partition counts.
    pub fn open(dir: &Path, topics: &[(&str, u32)]) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(DB_FILE);
        // Created private (it holds visitors' IP addresses); an existing dir is tightened.
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&path)
                .map_err(|source| StoreError::DataDir {
                    path: path.clone(),
                    source,
                })?;
        }
        make_private(dir)?;
        let database = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(db)?;
        let mut partitions = HashMap::new();
        let mut ends = HashMap::new();
        let txn = database.begin_write().map_err(db)?;
        {
            let mut meta = txn.open_table(META).map_err(db)?;
            let mut format = txn.open_table(FORMAT).map_err(db)?;
            let found = match format.get(FORMAT_KEY).map_err(db)? {
                Some(v) => Some(v.value()),
                // Written before formats were recorded, if it has topics at all.
                None => (!meta.is_empty().map_err(db)?).then_some(1),
            };
            match found {
                Some(found) if found != RECORD_FORMAT => {
                    return Err(StoreError::FormatMismatch {
                        path,
                        found,
                        expected: RECORD_FORMAT,
                    });
                }
                Some(_) => {}
                None => {
                    format.insert(FORMAT_KEY, RECORD_FORMAT).map_err(db)?;
                }
            }
            for &(topic, requested) in topics {
                let requested = requested.max(1);
                let existing = meta.get(topic).map_err(db)?.map(|v| v.value());
                match existing {
                    Some(existing) if existing != requested => {
                        return Err(StoreError::PartitionMismatch {
                            topic: topic.to_owned(),
                            existing,
                            requested,
                        });
                    }
                    Some(_) => {}
                    None => {
                        meta.insert(topic, requested).map_err(db)?;
                    }
                }
                partitions.insert(topic.to_owned(), requested);
                let table = txn.open_table(topic_table(topic)).map_err(db)?;
                let per = (0..requested)
                    .map(|p| partition_end(&table, p).map(AtomicU64::new))
                    .collect::<Result<Vec<_>, _>>()?;
                ends.insert(topic.to_owned(), per);
            }
            txn.open_table(OFFSETS).map_err(db)?;
            txn.open_table(STATE).map_err(db)?;
            txn.open_table(USERS).map_err(db)?;
            txn.open_table(PRODUCTS).map_err(db)?;
        }
        txn.commit().map_err(db)?;
        let tails = partitions
            .iter()
            .map(|(t, &n)| (t.clone(), (0..n).map(|_| Mutex::default()).collect()))
            .collect();
        Ok(EmbeddedStore {
            db: database,
            path,
            partitions,
            writer: Mutex::new(()),
            ends,
            tails,
            appended: (Mutex::new(0), Condvar::new()),
            publishing: AtomicU64::new(0),
            sync: Mutex::new(SyncState {
                lazy: 0,
                last_durable: Instant::now(),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Partition count of `topic`.
    pub fn partitions(&self, topic: &str) -> Result<u32, StoreError> {
        self.partitions
            .get(topic)
            .copied()
            .ok_or_else(|| StoreError::UnknownTopic(topic.to_owned()))
    }

    /// The next offset to be written in a partition.
    pub fn end_offset(&self, topic: &str, partition: u32) -> u64 {
        self.ends
            .get(topic)
            .and_then(|per| per.get(partition as usize))
            .map_or(0, |end| end.load(Ordering::Acquire))
    }

    /// Reads up to `max` records of a partition from offset `from`, each with its own copy of
    /// its key and value ([`EmbeddedStore::fetch_batch`] copies nothing).
    pub fn fetch(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max: usize,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        let fetched = self.fetch_batch(topic, partition, from, max)?;
        fetched
            .records()
            .map(|r| {
                let key = std::str::from_utf8(r.key).map_err(|e| StoreError::Corrupt {
                    key: format!("{topic}/{partition}@{}", r.offset),
                    message: format!("the key is not UTF-8: {e}"),
                })?;
                Ok(StoredRecord {
                    offset: r.offset,
                    key: key.to_owned(),
                    value: r.value.to_vec(),
                })
            })
            .collect()
    }

    /// Reads up to `max` records of a partition from offset `from`: from memory when they are
    /// among the partition's newest ([`Tail`]), else from the database.
    pub fn fetch_batch(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max: usize,
    ) -> Result<Fetched, StoreError> {
        let fetched = |segments| Fetched {
            from,
            max,
            segments,
        };
        if let Some(tail) = self
            .tails
            .get(topic)
            .and_then(|t| t.get(partition as usize))
        {
            if from >= self.end_offset(topic, partition) {
                return Ok(Fetched::default());
            }
            if let Some(segments) = tail.lock().expect("tail lock").read(from, max) {
                return Ok(fetched(segments));
            }
        } else if self.partitions(topic).is_err() {
            self.partitions_on_disk(topic)?;
        }
        let txn = self.db.begin_read().map_err(db)?;
        let table = txn.open_table(topic_table(topic)).map_err(db)?;
        let mut segments = Vec::new();
        let mut n = 0;
        // Start at the segment holding `from`: the last one based at or before it.
        let first = table
            .range((partition, 0)..=(partition, from))
            .map_err(db)?
            .next_back()
            .transpose()
            .map_err(db)?
            .map_or(from, |(k, _)| k.value().1);
        for entry in table
            .range((partition, first)..=(partition, u64::MAX))
            .map_err(db)?
        {
            let (k, v) = entry.map_err(db)?;
            let base = k.value().1;
            let segment = checked_segment(partition, base, v.value())
                .map_err(|damage| damaged(topic, partition, damage))?;
            n += segment.end().saturating_sub(segment.base.max(from));
            segments.push(segment);
            if n >= max as u64 {
                break;
            }
        }
        Ok(fetched(segments))
    }

    /// The committed position of a consumer group on a partition (0 if none).
    pub fn committed(&self, group: &str, topic: &str, partition: u32) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(db)?;
        let table = txn.open_table(OFFSETS).map_err(db)?;
        Ok(table
            .get(offset_key(group, topic, partition).as_str())
            .map_err(db)?
            .map_or(0, |v| v.value()))
    }

    /// One state value.
    pub fn state(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(db)?;
        read_state(&txn, key)
    }

    /// Every state entry whose key starts with `prefix`, with the prefix removed.
    pub fn state_with_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read().map_err(db)?;
        read_state_with_prefix(&txn, prefix)
    }

    /// Appends records, changes state and advances offsets in one durable transaction: on disk
    /// when this returns, with every commit before it.
    pub fn commit(&self, batch: &CommitBatch) -> Result<(), StoreError> {
        self.write(batch, true)
    }

    /// [`EmbeddedStore::commit`] without waiting for the disk, unless the last durable commit is
    /// `max_delay` old or older (then this one is durable, and so with it every commit before).
    ///
    /// Commits stay all-or-nothing and in order: a crash loses the commits after the last
    /// durable one, all of them, so a restart resumes from a consistent earlier point and does
    /// that work again. Use it for work that can be redone (the pipeline's stages); use
    /// [`EmbeddedStore::commit`] before telling anyone outside that data is safe (the
    /// collector's `202`).
    pub fn commit_lazily(
        &self,
        batch: &CommitBatch,
        max_delay: Duration,
    ) -> Result<(), StoreError> {
        let due = self.sync.lock().expect("sync lock").last_durable.elapsed() >= max_delay;
        self.write(batch, due)
    }

    /// Makes every commit so far durable (nothing to do when all are).
    pub fn sync(&self) -> Result<(), StoreError> {
        if self.sync.lock().expect("sync lock").lazy == 0 {
            return Ok(());
        }
        let _writer = self.writer.lock().expect("writer lock");
        let txn = self.db.begin_write().map_err(db)?;
        txn.commit().map_err(db)?;
        self.synced();
        Ok(())
    }

    /// [`EmbeddedStore::sync`] when commits have waited `max_delay` or longer for the disk.
    pub fn sync_if_due(&self, max_delay: Duration) -> Result<(), StoreError> {
        let due = {
            let s = self.sync.lock().expect("sync lock");
            s.lazy > 0 && s.last_durable.elapsed() >= max_delay
        };
        if due { self.sync() } else { Ok(()) }
    }

    fn synced(&self) {
        let mut s = self.sync.lock().expect("sync lock");
        s.lazy = 0;
        s.last_durable = Instant::now();
    }

    fn write(&self, batch: &CommitBatch, durable: bool) -> Result<(), StoreError> {
        if batch.appends.is_empty() && batch.state.is_empty() && batch.offsets.is_empty() {
            return Ok(());
        }
        // Records by partition, encoded as segments before taking the writer's lock.
        let mut by_partition: BTreeMap<(&str, u32), Vec<Record<'_>>> = BTreeMap::new();
        for (topic, key, value) in &batch.appends {
            let n = self.partitions(topic)?;
            by_partition
                .entry((topic.as_str(), partition_for(key, n)))
                .or_default()
                .push((key.as_str(), value.as_slice()));
        }
        let encoded: Vec<(&str, u32, u64, Vec<u8>)> = by_partition
            .into_iter()
            .map(|((topic, p), records)| {
                let count = records.len() as u64;
                (topic, p, count, encode_segment(&records))
            })
            .collect();
        let state_values: Vec<(&str, Option<Vec<u8>>)> = batch
            .state
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref().map(|v| seal_state_for(k, v))))
            .collect();
        let _writer = self.writer.lock().expect("writer lock");
        let mut written: Vec<(&str, u32, Segment)> = Vec::with_capacity(encoded.len());
        let mut txn = self.db.begin_write().map_err(db)?;
        if !durable {
            txn.set_durability(Durability::None).map_err(db)?;
        }
        {
            // The table of the topic being written (the partitions come sorted by topic).
            let mut open: Option<(&str, TopicTableMut<'_>)> = None;
            for (topic, p, count, mut bytes) in encoded {
                let table = match &mut open {
                    Some((t, table)) if *t == topic => table,
                    _ => {
                        let table = txn.open_table(topic_table(topic)).map_err(db)?;
                        &mut open.insert((topic, table)).1
                    }
                };
                let base = self.end(topic, p).load(Ordering::Acquire);
                seal_segment(&mut bytes, p, base);
                table.insert((p, base), bytes.as_slice()).map_err(db)?;
                let segment = Segment {
                    base,
                    count,
                    checked: true,
                    bytes: Arc::new(bytes),
                };
                written.push((topic, p, segment));
            }
            drop(open);
            let mut table = txn.open_table(STATE).map_err(db)?;
            for (key, value) in &state_values {
                match value {
                    Some(v) => table.insert(*key, v.as_slice()).map_err(db)?,
                    None => table.remove(*key).map_err(db)?,
                };
            }
            let mut offsets = txn.open_table(OFFSETS).map_err(db)?;
            for o in &batch.offsets {
                offsets
                    .insert(
                        offset_key(&o.group, &o.topic, o.partition).as_str(),
                        o.next_offset,
                    )
                    .map_err(db)?;
            }
        }
        // From the transaction's commit (its offsets are visible to readers) until its ends
        // are published, the commit is in flight: a reader that saw its offsets may not see its
        // records yet.
        self.publishing.fetch_add(1, Ordering::SeqCst);
        struct Published<'a>(&'a AtomicU64);
        impl Drop for Published<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let _published = Published(&self.publishing);
        txn.commit().map_err(db)?;
        if durable {
            self.synced();
        } else {
            self.sync.lock().expect("sync lock").lazy += 1;
        }
        let appended = !written.is_empty();
        for (topic, p, segment) in written {
            let end = segment.end();
            // Into the tail first: a reader that sees the new end finds its records there.
            if let Some(tail) = self.tails.get(topic).and_then(|t| t.get(p as usize)) {
                tail.lock().expect("tail lock").push(segment);
            }
            self.end(topic, p).store(end, Ordering::Release);
        }
        if appended {
            let (lock, cvar) = &self.appended;
            *lock.lock().expect("notify lock") += 1;
            cvar.notify_all();
        }
        Ok(())
    }

    /// Whether a commit is between its transaction's commit and the publication of its
    /// partition ends. A reader that found a consumer's committed offset past a record, and then
    /// finds no commit publishing, will find that consumer's outputs at the ends: checked
    /// after the offsets, it closes the window in which an offset is visible before the records
    /// committed with it.
    pub fn publishing(&self) -> bool {
        self.publishing.load(Ordering::SeqCst) > 0
    }

    /// The end of a declared topic's partition (checked by the caller).
    fn end(&self, topic: &str, partition: u32) -> &AtomicU64 {
        &self.ends[topic][partition as usize]
    }

    /// Waits until some commit appends records, or `timeout` passes.
    pub fn wait_for_appends(&self, seen: u64, timeout: Duration) -> u64 {
        let (lock, cvar) = &self.appended;
        let generation = lock.lock().expect("notify lock");
        let (generation, _) = cvar
            .wait_timeout_while(generation, timeout, |g| *g == seen)
            .expect("notify lock");
        *generation
    }

    /// The current append generation, to pass to [`EmbeddedStore::wait_for_appends`].
    pub fn append_generation(&self) -> u64 {
        *self.appended.0.lock().expect("notify lock")
    }

    /// Deletes a partition's records below `before` (retention); offsets never change, and the
    /// last record is always kept so the partition's end survives a restart.
    ///
    /// The deletion waits for the next durable commit like [`EmbeddedStore::commit_lazily`]'s
    /// (a crash may bring deleted records back; the next trim deletes them again), and costs
    /// nothing when no whole segment is below `before`, so retention can run often: the space
    /// it frees is reused by the next appends, whose pages are then already in memory.
    pub fn trim(&self, topic: &str, partition: u32, before: u64) -> Result<u64, StoreError> {
        self.partitions(topic)?;
        let before = before.min(self.end_offset(topic, partition).saturating_sub(1));
        {
            let txn = self.db.begin_read().map_err(db)?;
            let table = txn.open_table(topic_table(topic)).map_err(db)?;
            let first = table
                .range((partition, 0)..=(partition, u64::MAX))
                .map_err(db)?
                .next()
                .transpose()
                .map_err(db)?
                .map(|(k, v)| k.value().1 + segment_len(v.value()));
            if first.is_none_or(|end| end > before) {
                return Ok(0);
            }
        }
        // As in `write`: a sync between this commit and counting it would miss it.
        let _writer = self.writer.lock().expect("writer lock");
        let mut txn = self.db.begin_write().map_err(db)?;
        txn.set_durability(Durability::None).map_err(db)?;
        let removed;
        {
            let mut table = txn.open_table(topic_table(topic)).map_err(db)?;
            let mut n = 0;
            // Whole segments only: one that still holds an offset ≥ `before` stays.
            table
                .retain_in((partition, 0)..(partition, before), |(_, base), segment| {
                    let count = segment_len(segment);
                    if base + count <= before {
                        n += count;
                        false
                    } else {
                        true
                    }
                })
                .map_err(db)?;
            removed = n;
        }
        txn.commit().map_err(db)?;
        self.sync.lock().expect("sync lock").lazy += 1;
        if let Some(tail) = self
            .tails
            .get(topic)
            .and_then(|t| t.get(partition as usize))
        {
            let mut tail = tail.lock().expect("tail lock");
            while tail.segments.front().is_some_and(|s| s.end() <= before) {
                tail.pop_front();
            }
        }
        Ok(removed)
    }

    /// Replaces the lookups with `lookups`.
    pub fn save_lookups(&self, lookups: &Lookups) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db)?;
        {
            let mut users = txn.open_table(USERS).map_err(db)?;
            users.retain(|_, _| false).map_err(db)?;
            for (id, user) in lookups.users() {
                let v = serde_json::to_vec(user).expect("user serializes");
                users.insert(id, v.as_slice()).map_err(db)?;
            }
            let mut products = txn.open_table(PRODUCTS).map_err(db)?;
            products.retain(|_, _| false).map_err(db)?;
            for p in lookups.products() {
                let v = serde_json::to_vec(&*p).expect("product serializes");
                products.insert(&*p.id, v.as_slice()).map_err(db)?;
            }
        }
        txn.commit().map_err(db)?;
        Ok(())
    }

    /// Reads the lookups into memory.
    pub fn load_lookups(&self) -> Result<Lookups, StoreError> {
        load_lookups(&self.db.begin_read().map_err(db)?)
    }

    /// The partition count of a topic as recorded in the data dir (for tools that open the
    /// store without declaring topics).
    pub fn partitions_on_disk(&self, topic: &str) -> Result<u32, StoreError> {
        partitions_on_disk(&self.db.begin_read().map_err(db)?, topic)
    }

    /// Record counts of every topic the data dir has, read from disk (for `clickpulse status`).
    pub fn topic_summary_on_disk(&self) -> Result<Value, StoreError> {
        topic_summary_on_disk(&self.db.begin_read().map_err(db)?)
    }

    /// Record counts per topic (offsets written, including trimmed ones).
    pub fn topic_summary(&self) -> Value {
        let mut names: Vec<_> = self.partitions.keys().collect();
        names.sort();
        let topics: serde_json::Map<String, Value> = names
            .into_iter()
            .map(|topic| {
                let n = self.partitions[topic];
                let per: Vec<u64> = (0..n).map(|p| self.end_offset(topic, p)).collect();
                (
                    topic.clone(),
                    json!({"partitions": n, "records": per.iter().sum::<u64>(), "end_offsets": per}),
                )
            })
            .collect();
        Value::Object(topics)
    }
}

fn load_lookups(txn: &ReadTransaction) -> Result<Lookups, StoreError> {
    let corrupt = |key: &str, e: serde_json::Error| StoreError::Corrupt {
        key: key.to_owned(),
        message: e.to_string(),
    };
    let mut users = Vec::new();
    for entry in txn.open_table(USERS).map_err(db)?.iter().map_err(db)? {
        let (k, v) = entry.map_err(db)?;
        let user: User = serde_json::from_slice(v.value()).map_err(|e| corrupt(k.value(), e))?;
        users.push((k.value().to_owned(), user));
    }
    let mut products = Vec::new();
    for entry in txn.open_table(PRODUCTS).map_err(db)?.iter().map_err(db)? {
        let (k, v) = entry.map_err(db)?;
        let product: Product =
            serde_json::from_slice(v.value()).map_err(|e| corrupt(k.value(), e))?;
        products.push(product);
    }
    Ok(Lookups::from_parts(users, products))
}

fn partitions_on_disk(txn: &ReadTransaction, topic: &str) -> Result<u32, StoreError> {
    let meta = txn.open_table(META).map_err(db)?;
    meta.get(topic)
        .map_err(db)?
        .map(|v| v.value())
        .ok_or_else(|| StoreError::UnknownTopic(topic.to_owned()))
}

fn topics_on_disk(txn: &ReadTransaction) -> Result<Vec<(String, u32)>, StoreError> {
    let meta = txn.open_table(META).map_err(db)?;
    let mut out = Vec::new();
    for entry in meta.iter().map_err(db)? {
        let (name, partitions) = entry.map_err(db)?;
        out.push((name.value().to_owned(), partitions.value()));
    }
    Ok(out)
}

fn topic_summary_on_disk(txn: &ReadTransaction) -> Result<Value, StoreError> {
    let mut topics = serde_json::Map::new();
    for (name, partitions) in topics_on_disk(txn)? {
        let table = txn.open_table(topic_table(&name)).map_err(db)?;
        let mut per = Vec::new();
        for p in 0..partitions {
            per.push(partition_end(&table, p)?);
        }
        topics.insert(
            name,
            json!({"partitions": partitions, "records": per.iter().sum::<u64>(), "end_offsets": per}),
        );
    }
    Ok(Value::Object(topics))
}

/// Makes a data dir private to its owner (0700) and its files 0600: `clickpulse.redb` holds
/// visitors' IP addresses. Only removes permissions, never adds any.
#[cfg(unix)]
fn make_private(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| StoreError::DataDir {
        path: dir.to_owned(),
        source,
    };
    let tighten = |path: &Path, keep: u32| -> std::io::Result<()> {
        let mode = std::fs::metadata(path)?.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & keep))?;
        }
        Ok(())
    };
    tighten(dir, 0o700).map_err(err)?;
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        if entry.file_type().map_err(err)?.is_file() {
            tighten(&entry.path(), 0o600).map_err(err)?;
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn make_private(_dir: &Path) -> Result<(), StoreError> {
    Ok(())
}

/// Runs `f`, turning a panic inside it (redb panics on some damaged files) into
/// [`StoreError::Damaged`], without the panic's message on stderr.
pub fn catch_damage<T>(f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    result.unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "redb panicked".to_owned());
        Err(StoreError::Damaged(message))
    })
}

enum ReadHandle {
    /// The data file itself, opened read-only.
    Shared(redb::ReadOnlyDatabase),
    /// A private copy of it (in the temporary dir, deleted on drop), opened by redb for
    /// writing so it can recover it: the data file was not closed cleanly.
    Copy(Database, TempCopy),
}

struct TempCopy(PathBuf);

impl Drop for TempCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A data dir opened for reading only (`clickpulse status`, `topics dump`, `verify`): nothing
/// in the data dir is ever created, changed or repaired through it.
///
/// redb's exclusive writer (the pipeline) locks the file, so this fails with
/// [`StoreError::InUse`] while a pipeline runs (redb's multi-process modes would allow it, but
/// they refuse commits without an fsync, which the pipeline's group commit relies on). A file
/// not closed cleanly (after `kill -9`) needs redb's recovery, which writes: it is then read
/// from a recovered private copy, and the data file stays as it is.
pub struct ReadOnlyStore {
    db: ReadHandle,
    path: PathBuf,
}

/// How [`ReadOnlyStore::verify`] decodes a record's value: `(topic, value)` → ok or why not.
pub type Decode<'a> = dyn Fn(&str, &[u8]) -> Result<(), String> + 'a;

/// One thing [`ReadOnlyStore::verify`] found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where: a table, a topic/partition@offset, a state key.
    pub place: String,
    /// What is wrong.
    pub message: String,
}

/// What [`ReadOnlyStore::verify`] checked.
#[derive(Debug, Default, Clone)]
pub struct VerifyReport {
    /// Records read and checked, all topics.
    pub records: u64,
    /// Records written before checksums existed (read, but without a checksum to verify).
    pub unchecked_records: u64,
    /// State entries, offsets and lookups checked.
    pub state_entries: u64,
    /// Committed offsets.
    pub offsets: u64,
    /// Lookup entries.
    pub lookups: u64,
    /// What is damaged.
    pub problems: Vec<Problem>,
}

impl ReadOnlyStore {
    /// Opens the data dir `dir` read-only. A missing dir or database file is an error, and
    /// nothing is created.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        if !dir.is_dir() {
            return Err(StoreError::NoDataDir(dir.to_owned()));
        }
        let path = dir.join(DB_FILE);
        if !path.is_file() {
            return Err(StoreError::NoDatabase(dir.to_owned()));
        }
        catch_damage(|| {
            let opened = redb::Builder::new()
                .set_cache_size(CACHE_BYTES)
                .open_read_only(&path);
            let db = match opened {
                Ok(db) => ReadHandle::Shared(db),
                Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                    return Err(StoreError::InUse(dir.to_owned()));
                }
                Err(redb::DatabaseError::RepairAborted) => Self::recovered_copy(dir, &path)?,
                Err(e) => return Err(db(e)),
            };
            Ok(ReadOnlyStore { db, path })
        })
    }

    fn recovered_copy(dir: &Path, path: &Path) -> Result<ReadHandle, StoreError> {
        let io = |source| StoreError::DataDir {
            path: dir.to_owned(),
            source,
        };
        let original = std::fs::File::open(path).map_err(io)?;
        // Held while copying: a pipeline starting meanwhile fails to open instead of
        // changing the file under the copy.
        if original.try_lock_shared().is_err() {
            return Err(StoreError::InUse(dir.to_owned()));
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let copy = TempCopy(std::env::temp_dir().join(format!(
            "clickpulse-read-{}-{nanos}.redb",
            std::process::id()
        )));
        std::fs::copy(path, &copy.0).map_err(io)?;
        drop(original);
        let database = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .open(&copy.0)
            .map_err(db)?;
        Ok(ReadHandle::Copy(database, copy))
    }

    /// True when the data file was not closed cleanly and is read from a recovered copy.
    pub fn read_from_recovered_copy(&self) -> bool {
        matches!(self.db, ReadHandle::Copy(..))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn begin_read(&self) -> Result<ReadTransaction, StoreError> {
        match &self.db {
            ReadHandle::Shared(d) => d.begin_read().map_err(db),
            ReadHandle::Copy(d, _) => d.begin_read().map_err(db),
        }
    }

    /// Every topic with its partition count, by name.
    pub fn topics(&self) -> Result<Vec<(String, u32)>, StoreError> {
        topics_on_disk(&self.begin_read()?)
    }

    /// The partition count of `topic`.
    pub fn partitions(&self, topic: &str) -> Result<u32, StoreError> {
        partitions_on_disk(&self.begin_read()?, topic)
    }

    /// Record counts of every topic.
    pub fn topic_summary(&self) -> Result<Value, StoreError> {
        topic_summary_on_disk(&self.begin_read()?)
    }

    /// The lookups.
    pub fn load_lookups(&self) -> Result<Lookups, StoreError> {
        load_lookups(&self.begin_read()?)
    }

    /// Every state entry whose key starts with `prefix`, with the prefix removed.
    pub fn state_with_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        read_state_with_prefix(&self.begin_read()?, prefix)
    }

    /// The number of users and products in the lookups (without reading them).
    pub fn lookup_counts(&self) -> Result<(u64, u64), StoreError> {
        let txn = self.begin_read()?;
        let users = txn.open_table(USERS).map_err(db)?.len().map_err(db)?;
        let products = txn.open_table(PRODUCTS).map_err(db)?.len().map_err(db)?;
        Ok((users, products))
    }

    /// Every committed consumer position.
    pub fn offsets(&self) -> Result<Vec<OffsetCommit>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(OFFSETS).map_err(db)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(db)? {
            let (k, v) = entry.map_err(db)?;
            let mut parts = k.value().split('\u{0}');
            let (Some(group), Some(topic), Some(partition), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let Ok(partition) = partition.parse() else {
                continue;
            };
            out.push(OffsetCommit {
                group: group.to_owned(),
                topic: topic.to_owned(),
                partition,
                next_offset: v.value(),
            });
        }
        Ok(out)
    }

    /// Up to `max` records of a partition from offset `from`, each checked against its
    /// checksum.
    pub fn fetch(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max: usize,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        let txn = self.begin_read()?;
        partitions_on_disk(&txn, topic)?;
        let table = txn.open_table(topic_table(topic)).map_err(db)?;
        let first = table
            .range((partition, 0)..=(partition, from))
            .map_err(db)?
            .next_back()
            .transpose()
            .map_err(db)?
            .map_or(from, |(k, _)| k.value().1);
        let mut out = Vec::new();
        for entry in table
            .range((partition, first)..=(partition, u64::MAX))
            .map_err(db)?
        {
            let (k, v) = entry.map_err(db)?;
            let base = k.value().1;
            let segment = checked_segment(partition, base, v.value())
                .map_err(|damage| damaged(topic, partition, damage))?;
            for r in segment.records().filter(|r| r.offset >= from) {
                let key = std::str::from_utf8(r.key).map_err(|e| {
                    damaged(
                        topic,
                        partition,
                        (r.offset, format!("its key is not UTF-8: {e}")),
                    )
                })?;
                out.push(StoredRecord {
                    offset: r.offset,
                    key: key.to_owned(),
                    value: r.value.to_vec(),
                });
                if out.len() >= max {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    /// Checks the whole data dir: every topic's segments and records (checksums, places,
    /// offsets without gaps or overlaps, keys, and values with `decode`), every committed
    /// offset against its partition, every state entry (checksum, JSON), the lookups, and
    /// redb's own page checksums (on a private copy: redb's check writes). Each table is
    /// checked on its own, so damage in one does not hide another's.
    pub fn verify(&self, decode: &Decode<'_>) -> VerifyReport {
        let mut report = VerifyReport::default();
        let mut ends: HashMap<(String, u32), u64> = HashMap::new();
        let problem = |report: &mut VerifyReport, place: String, message: String| {
            report.problems.push(Problem { place, message });
        };
        let topics = match catch_damage(|| self.topics()) {
            Ok(topics) => topics,
            Err(e) => {
                problem(&mut report, "table topic_partitions".into(), e.to_string());
                Vec::new()
            }
        };
        for (topic, partitions) in &topics {
            if *partitions == 0 {
                problem(
                    &mut report,
                    format!("topic {topic}"),
                    "recorded with 0 partitions".into(),
                );
            }
            let result = catch_damage(|| {
                self.verify_topic(topic, *partitions, decode, &mut report, &mut ends)
            });
            if let Err(e) = result {
                problem(&mut report, format!("topic {topic}"), e.to_string());
            }
        }
        match catch_damage(|| self.offsets()) {
            Ok(offsets) => {
                report.offsets = offsets.len() as u64;
                for o in offsets {
                    let place = format!("offset of {} on {}/{}", o.group, o.topic, o.partition);
                    let known = topics.iter().find(|(t, _)| *t == o.topic);
                    match known {
                        None => problem(&mut report, place, "no such topic".into()),
                        Some((_, n)) if o.partition >= *n => {
                            problem(&mut report, place, format!("the topic has {n} partitions"))
                        }
                        Some(_) => {
                            let end = ends
                                .get(&(o.topic.clone(), o.partition))
                                .copied()
                                .unwrap_or(0);
                            if o.next_offset > end {
                                problem(
                                    &mut report,
                                    place,
                                    format!(
                                        "next offset {} is past the partition's end {end}",
                                        o.next_offset
                                    ),
                                );
                            }
                        }
                    }
                }
            }
            Err(e) => problem(&mut report, "table offsets".into(), e.to_string()),
        }
        let state = catch_damage(|| {
            let txn = self.begin_read()?;
            let table = txn.open_table(STATE).map_err(db)?;
            let mut found = Vec::new();
            let mut n = 0;
            for entry in table.iter().map_err(db)? {
                let (k, v) = entry.map_err(db)?;
                n += 1;
                let key = k.value();
                match open_state(key, v.value()) {
                    Err(e) => found.push((format!("state {key}"), e.to_string())),
                    // A value is JSON, or binary behind a format byte of its operator's below
                    // 0x09 (no JSON text starts with one; detection's postcard visitor states):
                    // its checksum vouches for those.
                    Ok(payload) if payload.first().is_some_and(|b| *b < 0x09) => {}
                    Ok(payload) => {
                        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(payload) {
                            found.push((format!("state {key}"), format!("not valid JSON: {e}")));
                        }
                    }
                }
            }
            Ok((n, found))
        });
        match state {
            Ok((n, found)) => {
                report.state_entries = n;
                for (place, message) in found {
                    problem(&mut report, place, message);
                }
            }
            Err(e) => problem(&mut report, "table state".into(), e.to_string()),
        }
        match catch_damage(|| self.load_lookups()) {
            Ok(l) => report.lookups = (l.user_count() + l.product_count()) as u64,
            Err(e) => problem(&mut report, "lookups".into(), e.to_string()),
        }
        if let Err(message) = self.check_pages() {
            problem(&mut report, "redb pages".into(), message);
        }
        report
    }

    fn verify_topic(
        &self,
        topic: &str,
        partitions: u32,
        decode: &Decode<'_>,
        report: &mut VerifyReport,
        ends: &mut HashMap<(String, u32), u64>,
    ) -> Result<(), StoreError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(topic_table(topic)).map_err(db)?;
        let mut previous: Option<(u32, u64)> = None;
        for entry in table.iter().map_err(db)? {
            let (k, v) = entry.map_err(db)?;
            let (p, base) = k.value();
            let mut problem = |offset: u64, message: String| {
                report.problems.push(Problem {
                    place: format!("{topic}/{p}@{offset}"),
                    message,
                });
            };
            if p >= partitions {
                problem(base, format!("partition {p} of a topic with {partitions}"));
                continue;
            }
            let segment = match checked_segment(p, base, v.value()) {
                Ok(segment) => segment,
                Err((offset, message)) => {
                    problem(offset, message);
                    let end = base + segment_len(v.value());
                    previous = Some((p, end));
                    ends.insert((topic.to_owned(), p), end);
                    continue;
                }
            };
            match previous {
                Some((pp, end)) if pp == p && base < end => problem(
                    base,
                    format!("overlaps the segment before, which ends at {end}"),
                ),
                Some((pp, end)) if pp == p && base > end => problem(
                    end,
                    format!(
                        "offsets {end}..{base} have no records (retention only deletes from the start)"
                    ),
                ),
                _ => {}
            }
            previous = Some((p, segment.end()));
            ends.insert((topic.to_owned(), p), segment.end());
            if segment.checked {
                report.records += segment.count;
            } else {
                report.unchecked_records += segment.count;
            }
            for r in segment.records() {
                if std::str::from_utf8(r.key).is_err() {
                    problem(r.offset, "its key is not UTF-8".into());
                }
                if let Err(e) = decode(topic, r.value) {
                    problem(r.offset, format!("its value does not decode: {e}"));
                }
            }
        }
        Ok(())
    }

    /// redb's integrity check (every page's checksum) on a private copy of the file: the
    /// check repairs, so it never runs on the data file itself.
    fn check_pages(&self) -> Result<(), String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let copy = TempCopy(std::env::temp_dir().join(format!(
            "clickpulse-verify-{}-{nanos}.redb",
            std::process::id()
        )));
        let source = match &self.db {
            ReadHandle::Shared(_) => self.path.clone(),
            ReadHandle::Copy(_, c) => c.0.clone(),
        };
        std::fs::copy(&source, &copy.0).map_err(|e| format!("cannot copy the file: {e}"))?;
        catch_damage(|| {
            let mut database = Database::builder()
                .set_cache_size(CACHE_BYTES)
                .open(&copy.0)
                .map_err(db)?;
            database.check_integrity().map_err(db)
        })
        .map_err(|e| e.to_string())
        .and_then(|intact| {
            if intact {
                Ok(())
            } else {
                Err(
                    "redb's integrity check found damaged pages (repaired only in a private \
                     copy; the data file is left as it is)"
                        .to_owned(),
                )
            }
        })
    }
}

/// The next offset of a partition: one past its last record (retention always keeps the last
/// segment).
fn partition_end<T>(table: &T, partition: u32) -> Result<u64, StoreError>
where
    T: ReadableTable<(u32, u64), &'static [u8]>,
{
    Ok(table
        .range((partition, 0)..=(partition, u64::MAX))
        .map_err(db)?
        .next_back()
        .transpose()
        .map_err(db)?
        .map_or(0, |(k, v)| k.value().1 + segment_len(v.value())))
}

/// The first byte of a state value written with a checksum: `STATE_CHECKED, check: u32,
/// payload`, where `check` covers the key and the payload. Values written before checksums
/// are JSON, which never starts with this byte, and are read as they are.
const STATE_CHECKED: u8 = 0xFF;

fn state_check(key: &str, payload: &[u8]) -> u32 {
    checksum(u64::from(checksum(0x5354_4154, key.as_bytes())), payload)
}

/// A state value as stored: with its checksum in front (the key is added by the caller).
fn seal_state_for(key: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(STATE_CHECKED);
    out.extend_from_slice(&state_check(key, payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// A stored state value's payload, its checksum verified (legacy values unchecked).
fn open_state<'a>(key: &str, stored: &'a [u8]) -> Result<&'a [u8], StoreError> {
    match stored.split_first() {
        Some((&STATE_CHECKED, rest)) => {
            let (check, payload) = rest
                .split_at_checked(4)
                .ok_or_else(|| StoreError::Corrupt {
                    key: key.to_owned(),
                    message: "state value truncated".to_owned(),
                })?;
            let check = u32::from_le_bytes([check[0], check[1], check[2], check[3]]);
            if check == state_check(key, payload) {
                Ok(payload)
            } else {
                Err(StoreError::Corrupt {
                    key: key.to_owned(),
                    message: "checksum mismatch: the state value was changed on disk".to_owned(),
                })
            }
        }
        _ => Ok(stored),
    }
}

fn damaged(topic: &str, partition: u32, (offset, message): Damage) -> StoreError {
    StoreError::DamagedRecord {
        topic: topic.to_owned(),
        partition,
        offset,
        message,
    }
}

fn read_state(txn: &ReadTransaction, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let table = txn.open_table(STATE).map_err(db)?;
    let Some(v) = table.get(key).map_err(db)? else {
        return Ok(None);
    };
    Ok(Some(open_state(key, v.value())?.to_vec()))
}

fn read_state_with_prefix(
    txn: &ReadTransaction,
    prefix: &str,
) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let table = txn.open_table(STATE).map_err(db)?;
    let mut out = Vec::new();
    for entry in table.range(prefix..).map_err(db)? {
        let (k, v) = entry.map_err(db)?;
        let Some(rest) = k.value().strip_prefix(prefix) else {
            break;
        };
        out.push((rest.to_owned(), open_state(k.value(), v.value())?.to_vec()));
    }
    Ok(out)
}

fn offset_key(group: &str, topic: &str, partition: u32) -> String {
    format!("{group}\u{0}{topic}\u{0}{partition}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(
        appends: &[(&str, &str)],
        state: &[(&str, &str)],
        offsets: &[(&str, &str, u32, u64)],
    ) -> CommitBatch {
        CommitBatch {
            appends: appends
                .iter()
                .map(|(k, v)| ("t".to_owned(), k.to_string(), v.as_bytes().to_vec()))
                .collect(),
            state: state
                .iter()
                .map(|(k, v)| (k.to_string(), Some(v.as_bytes().to_vec())))
                .collect(),
            offsets: offsets
                .iter()
                .map(|(g, t, p, o)| OffsetCommit {
                    group: g.to_string(),
                    topic: t.to_string(),
                    partition: *p,
                    next_offset: *o,
                })
                .collect(),
        }
    }

    /// Sets the recorded format (`None`: as a data dir from before formats were recorded).
    fn set_format(dir: &Path, format: Option<u32>) {
        let db = Database::create(dir.join(DB_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(FORMAT).unwrap();
            match format {
                Some(f) => table.insert(FORMAT_KEY, f).unwrap(),
                None => table.remove(FORMAT_KEY).unwrap(),
            };
        }
        txn.commit().unwrap();
    }

    #[test]
    fn a_data_dir_in_another_record_format_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let topics = [("t", 2)];
        drop(EmbeddedStore::open(dir.path(), &topics).unwrap());
        // Reopening the format it wrote works.
        drop(EmbeddedStore::open(dir.path(), &topics).unwrap());
        for (on_disk, found) in [(None, 1), (Some(RECORD_FORMAT + 1), RECORD_FORMAT + 1)] {
            set_format(dir.path(), on_disk);
            let Err(err) = EmbeddedStore::open(dir.path(), &topics) else {
                panic!("format {found} was opened");
            };
            assert!(
                matches!(err, StoreError::FormatMismatch { found: f, expected: RECORD_FORMAT, .. } if f == found),
                "{err}"
            );
            assert!(err.to_string().contains("--reset"), "{err}");
        }
        // A fresh data dir records this build's format.
        let fresh = tempfile::tempdir().unwrap();
        drop(EmbeddedStore::open(fresh.path(), &topics).unwrap());
        set_format(fresh.path(), Some(RECORD_FORMAT));
        assert!(EmbeddedStore::open(fresh.path(), &topics).is_ok());
    }

    #[test]
    fn appends_are_partitioned_by_key_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = EmbeddedStore::open(dir.path(), &[("t", 4)]).unwrap();
            store
                .commit(&batch(
                    &[("alice", "1"), ("bob", "2"), ("alice", "3")],
                    &[("op/x", "7")],
                    &[("g", "t", 0, 5)],
                ))
                .unwrap();
        }
        let store = EmbeddedStore::open(dir.path(), &[("t", 4)]).unwrap();
        let p = partition_for("alice", 4);
        let alice = store.fetch("t", p, 0, 10).unwrap();
        let values: Vec<_> = alice
            .iter()
            .filter(|r| r.key == "alice")
            .map(|r| r.value.clone())
            .collect();
        assert_eq!(values, [b"1".to_vec(), b"3".to_vec()]);
        let total: u64 = (0..4).map(|p| store.end_offset("t", p)).sum();
        assert_eq!(total, 3);
        assert_eq!(store.committed("g", "t", 0).unwrap(), 5);
        assert_eq!(
            store.state_with_prefix("op/").unwrap(),
            [("x".to_owned(), b"7".to_vec())]
        );
        assert!(
            EmbeddedStore::open(dir.path(), &[("t", 4)]).is_err(),
            "a data dir is used by one process at a time"
        );
        drop(store);
        assert!(matches!(
            EmbeddedStore::open(dir.path(), &[("t", 2)]),
            Err(StoreError::PartitionMismatch {
                existing: 4,
                requested: 2,
                ..
            })
        ));
    }

    /// A legacy segment (before checksums): `count`, then `key_len, key, value_len, value`.
    fn legacy_segment(records: &[(&str, &str)]) -> Vec<u8> {
        let mut out = (records.len() as u32).to_le_bytes().to_vec();
        for (k, v) in records {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            out.extend_from_slice(v.as_bytes());
        }
        out
    }

    #[test]
    fn every_flipped_bit_of_a_segment_is_an_error_naming_its_record() {
        let records: [Record<'_>; 2] = [("alice", b"one"), ("bob", b"a longer value, 2")];
        let mut bytes = encode_segment(&records);
        seal_segment(&mut bytes, 3, 40);
        let good = checked_segment(3, 40, &bytes).unwrap();
        let read: Vec<_> = good.records().map(|r| (r.offset, r.key, r.value)).collect();
        assert_eq!(
            read,
            [
                (40, &b"alice"[..], &b"one"[..]),
                (41, &b"bob"[..], &b"a longer value, 2"[..])
            ]
        );
        let second = 8 + 12 + "alice".len() + "one".len();
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            let Err((offset, _)) = checked_segment(3, 40, &damaged) else {
                panic!("bit {bit} flipped unnoticed");
            };
            if bit / 8 >= second {
                assert_eq!(offset, 41, "bit {bit}");
            } else if bit / 8 >= 8 {
                assert_eq!(offset, 40, "bit {bit}");
            }
        }
        assert!(
            checked_segment(3, 41, &bytes).is_err(),
            "a segment under another offset"
        );
        assert!(checked_segment(2, 40, &bytes).is_err(), "or partition");
    }

    #[test]
    fn data_written_before_checksums_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), &[("t", 1)]).unwrap();
        {
            let txn = store.db.begin_write().unwrap();
            {
                let mut table = txn.open_table(topic_table("t")).unwrap();
                let legacy = legacy_segment(&[("a", "1"), ("a", "2")]);
                table.insert((0, 0), legacy.as_slice()).unwrap();
                let mut state = txn.open_table(STATE).unwrap();
                state.insert("op/old", &b"{\"n\":1}"[..]).unwrap();
            }
            txn.commit().unwrap();
        }
        drop(store);
        let store = EmbeddedStore::open(dir.path(), &[("t", 1)]).unwrap();
        assert_eq!(store.end_offset("t", 0), 2);
        store
            .commit(&batch(&[("a", "3")], &[("op/new", "{}")], &[]))
            .unwrap();
        drop(store);
        let store = EmbeddedStore::open(dir.path(), &[("t", 1)]).unwrap();
        let values: Vec<_> = store
            .fetch("t", 0, 0, 10)
            .unwrap()
            .into_iter()
            .map(|r| (r.offset, r.value))
            .collect();
        assert_eq!(
            values,
            [(0, b"1".to_vec()), (1, b"2".to_vec()), (2, b"3".to_vec())]
        );
        assert_eq!(store.state("op/old").unwrap(), Some(b"{\"n\":1}".to_vec()));
        assert_eq!(store.state("op/new").unwrap(), Some(b"{}".to_vec()));
        drop(store);
        let ro = ReadOnlyStore::open(dir.path()).unwrap();
        let report = ro.verify(&|_, _| Ok(()));
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!((report.records, report.unchecked_records), (1, 2));
    }

    #[test]
    fn a_damaged_state_value_is_an_error_naming_its_key() {
        let sealed = seal_state_for("op/x", b"{\"a\":1}");
        assert_eq!(open_state("op/x", &sealed).unwrap(), b"{\"a\":1}");
        assert!(open_state("op/y", &sealed).is_err(), "under another key");
        for bit in 0..sealed.len() * 8 {
            let mut damaged = sealed.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            if damaged[0] == STATE_CHECKED {
                assert!(open_state("op/x", &damaged).is_err(), "bit {bit}");
            }
        }
    }

    #[test]
    fn read_only_opens_create_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("missing");
        assert!(matches!(
            ReadOnlyStore::open(&missing),
            Err(StoreError::NoDataDir(_))
        ));
        assert!(!missing.exists());
        assert!(matches!(
            ReadOnlyStore::open(tmp.path()),
            Err(StoreError::NoDatabase(_))
        ));
        assert!(!tmp.path().join(DB_FILE).exists());
        let store = EmbeddedStore::open(tmp.path(), &[("t", 1)]).unwrap();
        assert!(
            matches!(ReadOnlyStore::open(tmp.path()), Err(StoreError::InUse(_))),
            "not beside the pipeline"
        );
        store
            .commit(&batch(&[("a", "1")], &[], &[("g", "t", 0, 1)]))
            .unwrap();
        drop(store);
        let ro = ReadOnlyStore::open(tmp.path()).unwrap();
        assert_eq!(ro.topics().unwrap(), [("t".to_owned(), 1)]);
        assert_eq!(ro.fetch("t", 0, 0, 10).unwrap().len(), 1);
        assert_eq!(ro.offsets().unwrap().len(), 1);
        assert!(ro.verify(&|_, _| Ok(())).problems.is_empty());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(tmp.path()), 0o700);
            assert_eq!(mode(&tmp.path().join(DB_FILE)), 0o600);
        }
    }

    #[test]
    fn trim_removes_whole_consumed_segments_but_keeps_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), &[("t", 1)]).unwrap();
        // Three commits: segments [0, 2), [2, 3) and [3, 5).
        store
            .commit(&batch(&[("a", "1"), ("a", "2")], &[], &[]))
            .unwrap();
        store.commit(&batch(&[("a", "3")], &[], &[])).unwrap();
        store
            .commit(&batch(&[("a", "4"), ("a", "5")], &[], &[]))
            .unwrap();
        assert_eq!(
            store
                .fetch("t", 0, 1, 3)
                .unwrap()
                .iter()
                .map(|r| r.offset)
                .collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(
            store.trim("t", 0, 1).unwrap(),
            0,
            "a segment with unconsumed records stays"
        );
        assert_eq!(store.trim("t", 0, 3).unwrap(), 3);
        assert_eq!(
            store.trim("t", 0, 100).unwrap(),
            0,
            "the last segment stays"
        );
        let left = store.fetch("t", 0, 0, 10).unwrap();
        assert_eq!(left.iter().map(|r| r.offset).collect::<Vec<_>>(), [3, 4]);
        drop(store);
        let store = EmbeddedStore::open(dir.path(), &[("t", 1)]).unwrap();
        store.commit(&batch(&[("a", "6")], &[], &[])).unwrap();
        assert_eq!(
            store.end_offset("t", 0),
            6,
            "offsets continue after trimming and reopening"
        );
    }

    #[test]
    fn reads_from_memory_and_from_disk_agree_across_the_tails_edge() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), &[("t", 1)]).unwrap();
        // 60 commits of 3 records of ~40 KB: more than the tail keeps, so the oldest are
        // only on disk.
        let value = |i: u64| format!("{i:>40000}");
        let mut expected = Vec::new();
        for c in 0..60u64 {
            let records: Vec<(String, String)> = (0..3)
                .map(|j| (format!("k{}", (c * 3 + j) % 7), value(c * 3 + j)))
                .collect();
            let refs: Vec<(&str, &str)> = records
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            store
                .commit_lazily(&batch(&refs, &[], &[]), Duration::from_secs(3_600))
                .unwrap();
            expected.extend(records);
        }
        let tail = store.tails["t"][0].lock().unwrap();
        let oldest_in_memory = tail.segments.front().unwrap().base;
        assert!(oldest_in_memory > 0 && tail.bytes <= TAIL_BYTES);
        drop(tail);
        let read = |s: &EmbeddedStore, from: u64, max: usize| -> Vec<(u64, String, String)> {
            s.fetch("t", 0, from, max)
                .unwrap()
                .into_iter()
                .map(|r| (r.offset, r.key, String::from_utf8(r.value).unwrap()))
                .collect()
        };
        let want = |from: u64, max: usize| -> Vec<(u64, String, String)> {
            (from..(from + max as u64).min(180))
                .map(|o| {
                    let (k, v) = &expected[o as usize];
                    (o, k.clone(), v.clone())
                })
                .collect()
        };
        for (from, max) in [
            (0, 5),
            (oldest_in_memory - 2, 4),
            (oldest_in_memory, 2),
            (oldest_in_memory + 1, 1_000),
            (179, 10),
            (180, 10),
        ] {
            assert_eq!(
                read(&store, from, max),
                want(from, max),
                "from {from} max {max}"
            );
        }
        // Trimming drops what it deletes from memory too.
        store.trim("t", 0, 177).unwrap();
        assert_eq!(read(&store, 170, 10), want(177, 3));
        drop(store);
        let store = EmbeddedStore::open(dir.path(), &[("t", 1)]).unwrap();
        assert_eq!(
            read(&store, 175, 10),
            want(177, 3),
            "after reopening, from disk"
        );
    }

    #[test]
    fn lazy_commits_are_read_at_once_and_made_durable_by_a_sync() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), &[("t", 1)]).unwrap();
        let hour = Duration::from_secs(3_600);
        let pending = |s: &EmbeddedStore| s.sync.lock().unwrap().lazy;
        store
            .commit_lazily(&batch(&[("a", "1")], &[("op/x", "1")], &[]), hour)
            .unwrap();
        store
            .commit_lazily(&batch(&[("a", "2")], &[], &[("g", "t", 0, 1)]), hour)
            .unwrap();
        // Readers see lazy commits at once; two wait for the disk.
        assert_eq!(store.fetch("t", 0, 0, 10).unwrap().len(), 2);
        assert_eq!(pending(&store), 2);
        store.sync_if_due(hour).unwrap();
        assert_eq!(pending(&store), 2, "not due yet");
        store.sync_if_due(Duration::ZERO).unwrap();
        assert_eq!(pending(&store), 0);
        // A commit whose delay has run out is durable itself.
        store
            .commit_lazily(&batch(&[("a", "3")], &[], &[]), Duration::ZERO)
            .unwrap();
        assert_eq!(pending(&store), 0);
        store
            .commit_lazily(&batch(&[("a", "4")], &[], &[]), hour)
            .unwrap();
        store.sync().unwrap();
        drop(store);
        let store = EmbeddedStore::open(dir.path(), &[("t", 1)]).unwrap();
        assert_eq!(store.end_offset("t", 0), 4);
        assert_eq!(store.committed("g", "t", 0).unwrap(), 1);
        assert_eq!(store.state("op/x").unwrap(), Some(b"1".to_vec()));
    }
}
