//! [`EmbeddedStore`]: topics, offsets, state and lookups in one `redb` file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
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

fn topic_table(name: &str) -> TopicTable<'_> {
    TableDefinition::new(name)
}

/// Encodes records as a segment: `count: u32`, then per record `key_len: u32, key,
/// value_len: u32, value` (little-endian).
fn encode_segment(records: &[(&str, &[u8])]) -> Vec<u8> {
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

/// Decodes a segment into `(key, value)` pairs.
fn decode_segment(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
        if bytes.len() < n {
            return Err("segment truncated".to_owned());
        }
        let (head, rest) = bytes.split_at(n);
        *bytes = rest;
        Ok(head)
    }
    fn len(bytes: &mut &[u8]) -> Result<usize, String> {
        let b = take(bytes, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    let mut rest = bytes;
    let count = len(&mut rest)?;
    let mut records = Vec::with_capacity(count);
    for _ in 0..count {
        let n = len(&mut rest)?;
        let key = std::str::from_utf8(take(&mut rest, n)?)
            .map_err(|e| e.to_string())?
            .to_owned();
        let n = len(&mut rest)?;
        records.push((key, take(&mut rest, n)?.to_vec()));
    }
    Ok(records)
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
    /// Next offset of each (topic table name, partition).
    ends: Mutex<HashMap<(String, u32), u64>>,
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
                for p in 0..requested {
                    ends.insert((topic.to_owned(), p), partition_end(&table, p)?);
                }
            }
            txn.open_table(OFFSETS).map_err(db)?;
            txn.open_table(STATE).map_err(db)?;
            txn.open_table(USERS).map_err(db)?;
            txn.open_table(PRODUCTS).map_err(db)?;
        }
        txn.commit().map_err(db)?;
        Ok(EmbeddedStore {
            db: database,
            path,
            partitions,
            ends: Mutex::new(ends),
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
            .lock()
            .expect("ends lock")
            .get(&(topic.to_owned(), partition))
            .copied()
            .unwrap_or(0)
    }

    /// Reads up to `max` records of a partition from offset `from`.
    pub fn fetch(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max: usize,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        if self.partitions(topic).is_err() {
            self.partitions_on_disk(topic)?;
        }
        let txn = self.db.begin_read().map_err(db)?;
        let table = txn.open_table(topic_table(topic)).map_err(db)?;
        let mut records = Vec::with_capacity(max.min(4096));
        // Start at the segment holding `from`: the last one based at or before it.
        let first = table
            .range((partition, 0)..=(partition, from))
            .map_err(db)?
            .next_back()
            .transpose()
            .map_err(db)?
            .map_or(from, |(k, _)| k.value().1);
        'segments: for entry in table
            .range((partition, first)..=(partition, u64::MAX))
            .map_err(db)?
        {
            let (k, v) = entry.map_err(db)?;
            let base = k.value().1;
            let decoded = decode_segment(v.value()).map_err(|message| StoreError::Corrupt {
                key: format!("{topic}/{partition}@{base}"),
                message,
            })?;
            for (i, (key, value)) in decoded.into_iter().enumerate() {
                let offset = base + i as u64;
                if offset < from {
                    continue;
                }
                records.push(StoredRecord { offset, key, value });
                if records.len() >= max {
                    break 'segments;
                }
            }
        }
        Ok(records)
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
        let _ends = self.ends.lock().expect("ends lock");
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
        let mut ends = self.ends.lock().expect("ends lock");
        let mut new_ends: HashMap<(String, u32), u64> = HashMap::new();
        let mut txn = self.db.begin_write().map_err(db)?;
        if !durable {
            txn.set_durability(Durability::None).map_err(db)?;
        }
        {
            let mut by_topic: HashMap<&str, Vec<(&str, &[u8])>> = HashMap::new();
            for (topic, key, value) in &batch.appends {
                by_topic
                    .entry(topic.as_str())
                    .or_default()
                    .push((key.as_str(), value.as_slice()));
            }
            for (topic, records) in by_topic {
                let n = self.partitions(topic)?;
                let mut table = txn.open_table(topic_table(topic)).map_err(db)?;
                let mut by_partition: std::collections::BTreeMap<u32, Vec<(&str, &[u8])>> =
                    Default::default();
                for (key, value) in records {
                    by_partition
                        .entry(partition_for(key, n))
                        .or_default()
                        .push((key, value));
                }
                for (p, records) in by_partition {
                    let slot = (topic.to_owned(), p);
                    let base = ends.get(&slot).copied().unwrap_or(0);
                    table
                        .insert((p, base), encode_segment(&records).as_slice())
                        .map_err(db)?;
                    new_ends.insert(slot, base + records.len() as u64);
                }
            }
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
        let appended = !new_ends.is_empty();
        ends.extend(new_ends);
        drop(ends);
        if appended {
            let (lock, cvar) = &self.appended;
            *lock.lock().expect("notify lock") += 1;
            cvar.notify_all();
        }
        Ok(())
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
    pub fn trim(&self, topic: &str, partition: u32, before: u64) -> Result<u64, StoreError> {
        self.partitions(topic)?;
        let before = before.min(self.end_offset(topic, partition).saturating_sub(1));
        let txn = self.db.begin_write().map_err(db)?;
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
        let ends = self.ends.lock().expect("ends lock");
        let mut names: Vec<_> = self.partitions.keys().collect();
        names.sort();
        let topics: serde_json::Map<String, Value> = names
            .into_iter()
            .map(|topic| {
                let n = self.partitions[topic];
                let per: Vec<u64> = (0..n).map(|p| ends.get(&(topic.clone(), p)).copied().unwrap_or(0)).collect();
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
