//! [`EmbeddedStore`]: topics, offsets, state and lookups in one `redb` file.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use clickpulse_engine::lookups::{Lookups, Product, User};
use clickpulse_engine::topics::partition_for;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::{Value, json};

use super::error::{StoreError, db};

const OFFSETS: TableDefinition<&str, u64> = TableDefinition::new("offsets");
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
const META: TableDefinition<&str, u32> = TableDefinition::new("topic_partitions");
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

/// Encodes records as a segment: `count: u32`, then per record `key_len: u32, key,
/// value_len: u32, value` (little-endian).
fn encode_segment(records: &[Record<'_>]) -> Vec<u8> {
    let size = 4 + records
        .iter()
        .map(|(k, v)| 8 + k.len() + v.len())
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for (key, value) in records {
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
    }
    out
}

/// The number of records in a segment.
fn segment_len(bytes: &[u8]) -> u64 {
    bytes.get(..4).map_or(0, |b| {
        u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    })
}

/// Takes the next record of a segment's body: `(key, value)`, or `None` at a truncated end.
fn next_record<'a>(rest: &mut &'a [u8]) -> Option<(&'a [u8], &'a [u8])> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = bytes.split_at_checked(n)?;
        *bytes = rest;
        Some(head)
    }
    fn len(bytes: &mut &[u8]) -> Option<usize> {
        let b = take(bytes, 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    let n = len(rest)?;
    let key = take(rest, n)?;
    let n = len(rest)?;
    Some((key, take(rest, n)?))
}

/// A segment read from disk, checked whole: its count, then exactly that many records.
fn checked_segment(base: u64, bytes: &[u8]) -> Result<Segment, String> {
    let count = segment_len(bytes);
    if bytes.len() < 4 {
        return Err("segment truncated".to_owned());
    }
    let mut rest = &bytes[4..];
    for _ in 0..count {
        next_record(&mut rest).ok_or("segment truncated")?;
    }
    if !rest.is_empty() {
        return Err(format!("{} bytes after the last record", rest.len()));
    }
    Ok(Segment {
        base,
        count,
        bytes: Arc::new(bytes.to_vec()),
    })
}

/// One commit's records of one partition, encoded ([`encode_segment`]) and shared by every
/// reader of them.
#[derive(Debug, Clone)]
struct Segment {
    base: u64,
    count: u64,
    bytes: Arc<Vec<u8>>,
}

impl Segment {
    fn end(&self) -> u64 {
        self.base + self.count
    }

    fn records(&self) -> impl Iterator<Item = RecordRef<'_>> {
        let mut rest = self.bytes.get(4..).unwrap_or_default();
        (self.base..self.end()).map_while(move |offset| {
            let (key, value) = next_record(&mut rest)?;
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
        let database = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(db)?;
        let mut partitions = HashMap::new();
        let mut ends = HashMap::new();
        let txn = database.begin_write().map_err(db)?;
        {
            let mut meta = txn.open_table(META).map_err(db)?;
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
            let segment =
                checked_segment(base, v.value()).map_err(|message| StoreError::Corrupt {
                    key: format!("{topic}/{partition}@{base}"),
                    message,
                })?;
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
        let table = txn.open_table(STATE).map_err(db)?;
        Ok(table.get(key).map_err(db)?.map(|v| v.value().to_vec()))
    }

    /// Every state entry whose key starts with `prefix`, with the prefix removed.
    pub fn state_with_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read().map_err(db)?;
        let table = txn.open_table(STATE).map_err(db)?;
        let mut out = Vec::new();
        for entry in table.range(prefix..).map_err(db)? {
            let (k, v) = entry.map_err(db)?;
            let Some(rest) = k.value().strip_prefix(prefix) else {
                break;
            };
            out.push((rest.to_owned(), v.value().to_vec()));
        }
        Ok(out)
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
        let encoded: Vec<(&str, u32, u64, Arc<Vec<u8>>)> = by_partition
            .into_iter()
            .map(|((topic, p), records)| {
                let count = records.len() as u64;
                (topic, p, count, Arc::new(encode_segment(&records)))
            })
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
            for (topic, p, count, bytes) in encoded {
                let table = match &mut open {
                    Some((t, table)) if *t == topic => table,
                    _ => {
                        let table = txn.open_table(topic_table(topic)).map_err(db)?;
                        &mut open.insert((topic, table)).1
                    }
                };
                let base = self.end(topic, p).load(Ordering::Acquire);
                table.insert((p, base), bytes.as_slice()).map_err(db)?;
                written.push((topic, p, Segment { base, count, bytes }));
            }
            drop(open);
            let mut state = txn.open_table(STATE).map_err(db)?;
            for (key, value) in &batch.state {
                match value {
                    Some(v) => state.insert(key.as_str(), v.as_slice()).map_err(db)?,
                    None => state.remove(key.as_str()).map_err(db)?,
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
        let txn = self.db.begin_read().map_err(db)?;
        let corrupt = |key: &str, e: serde_json::Error| StoreError::Corrupt {
            key: key.to_owned(),
            message: e.to_string(),
        };
        let mut users = Vec::new();
        for entry in txn.open_table(USERS).map_err(db)?.iter().map_err(db)? {
            let (k, v) = entry.map_err(db)?;
            let user: User =
                serde_json::from_slice(v.value()).map_err(|e| corrupt(k.value(), e))?;
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

    /// The partition count of a topic as recorded in the data dir (for tools that open the
    /// store without declaring topics).
    pub fn partitions_on_disk(&self, topic: &str) -> Result<u32, StoreError> {
        let txn = self.db.begin_read().map_err(db)?;
        let meta = txn.open_table(META).map_err(db)?;
        meta.get(topic)
            .map_err(db)?
            .map(|v| v.value())
            .ok_or_else(|| StoreError::UnknownTopic(topic.to_owned()))
    }

    /// Record counts of every topic the data dir has, read from disk (for `clickpulse status`).
    pub fn topic_summary_on_disk(&self) -> Result<Value, StoreError> {
        let txn = self.db.begin_read().map_err(db)?;
        let meta = txn.open_table(META).map_err(db)?;
        let mut topics = serde_json::Map::new();
        for entry in meta.iter().map_err(db)? {
            let (name, partitions) = entry.map_err(db)?;
            let (name, partitions) = (name.value().to_owned(), partitions.value());
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
