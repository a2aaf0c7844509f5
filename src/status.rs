//! `clickpulse status` and `topics dump`: what a data dir holds, read from its durable state.
//!
//! Both open the data dir read-only ([`ReadOnlyStore`]): they never create, change or repair
//! anything in it. A missing data dir is an error; while a pipeline runs on it (it locks the
//! file) they say so and point to its HTTP figures instead.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clickpulse_connectors::embedded::{ReadOnlyStore, StoreError, catch_damage};
use serde_json::{Map, Value, json};

use crate::cli::{StatusArgs, TopicsDumpArgs};
use crate::inputs;

/// State keys of one prefix with at most this many keys are shown in the summary's `state`
/// (per-visitor and per-window prefixes are only counted; the runners' counters and the
/// replay's position always shown)…
const SUMMARY_MAX_KEYS: usize = 4;
/// …when their value is at most this big.
const SUMMARY_MAX_BYTES: usize = 32 << 10;

/// Opens a data dir read-only, with the error saying which dir.
pub(crate) fn open_read_only(data_dir: Option<PathBuf>) -> Result<(PathBuf, ReadOnlyStore)> {
    let dir = inputs::data_dir(data_dir);
    let store = ReadOnlyStore::open(&dir).map_err(|e| match e {
        StoreError::NoDataDir(_) | StoreError::NoDatabase(_) | StoreError::InUse(_) => {
            anyhow::Error::new(e)
        }
        e => anyhow::Error::new(e).context(format!("cannot read the data dir {}", dir.display())),
    })?;
    if store.read_from_recovered_copy() {
        eprintln!(
            "note: {} was not closed cleanly (the pipeline was killed); reading a recovered \
             private copy, the data dir is left as it is",
            store.path().display()
        );
    }
    Ok((dir, store))
}

pub(crate) fn run(args: StatusArgs) -> Result<ExitCode> {
    let (dir, store) = open_read_only(args.data_dir)?;
    let status = catch_damage(|| {
        if args.keys {
            raw(&dir, &store)
        } else {
            summary(&dir, &store)
        }
    })
    .with_context(|| format!("cannot read the data dir {}", dir.display()))?;
    if args.keys || args.json {
        print_out(&serde_json::to_string_pretty(&status)?)?;
    } else {
        print_out(&human(&status))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The default `status` output: the JSON summary in a few lines for people — per stage its
/// events, dead letters and lag, per topic its records, the replay's position, the offers.
fn human(summary: &Value) -> String {
    use std::fmt::Write;
    let count = |v: &Value| thousands(v.as_u64().unwrap_or(0));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Data dir {}",
        summary["data_dir"].as_str().unwrap_or("?")
    );
    let _ = writeln!(out, "Stages:");
    match summary["stages"].as_object() {
        Some(stages) if !stages.is_empty() => {
            for (stage, s) in stages {
                let lag: u64 = s["positions"]
                    .as_object()
                    .map(|p| p.values().filter_map(|t| t["lag"].as_u64()).sum())
                    .unwrap_or(0);
                let _ = writeln!(
                    out,
                    "  {stage:<12} {:>9} events  {:>6} dead letters  lag {}",
                    count(&s["events"]),
                    count(&s["dead_letters"]),
                    thousands(lag)
                );
            }
        }
        _ => {
            let _ = writeln!(out, "  none has committed yet");
        }
    }
    let _ = writeln!(out, "Topics:");
    if let Some(topics) = summary["topics"].as_object() {
        for (topic, t) in topics {
            let _ = writeln!(
                out,
                "  {topic:<20} {:>9} records in {} partition(s)",
                count(&t["records"]),
                count(&t["partitions"])
            );
        }
    }
    let replay = &summary["state"]["replay/state"];
    if replay.is_object() {
        let time = replay["event_time_ms"]
            .as_i64()
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map_or_else(
                || "none".to_owned(),
                |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            );
        let _ = writeln!(
            out,
            "Replay: last commit at log position {} ({} events replayed), event time {time}",
            count(&replay["position"]),
            count(&replay["events"])
        );
    } else {
        let _ = writeln!(out, "Replay: no commit yet");
    }
    let detect = &summary["state"]["op/detect/stats"];
    let offers = if detect.is_object() {
        &detect["offers"]
    } else {
        &summary["topics"]["special-offers"]["records"]
    };
    let _ = write!(out, "Offers: {}", count(offers));
    if let Some(by) = detect["offers_by_pattern"].as_object()
        && !by.is_empty()
    {
        let by: Vec<String> = by
            .iter()
            .map(|(pattern, n)| format!("{pattern} {}", count(n)))
            .collect();
        let _ = write!(out, " ({})", by.join(", "));
    }
    let _ = writeln!(out);
    let lookups = &summary["lookups"];
    let _ = writeln!(
        out,
        "Lookups: {} users, {} products",
        count(&lookups["users"]),
        count(&lookups["products"])
    );
    out.push_str(
        "More: `clickpulse status --json` (the summary as JSON), `--keys` (every state key), \
         `clickpulse verify` (checks the data)",
    );
    out
}

/// `n` with thousands separators: 116607 → "116,607".
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Prints `text` and a newline; a closed pipe (`| head`) is not an error.
pub(crate) fn print_out(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Every state key with its decoded value (`--keys`).
fn raw(dir: &Path, store: &ReadOnlyStore) -> Result<Value, StoreError> {
    let mut state = Map::new();
    for (key, value) in store.state_with_prefix("")? {
        state.insert(key, decoded(&value));
    }
    let (users, products) = store.lookup_counts()?;
    Ok(json!({
        "data_dir": dir.display().to_string(),
        "topics": store.topic_summary()?,
        "offsets": store.offsets()?.iter().map(|o| json!({
            "group": o.group, "topic": o.topic, "partition": o.partition, "next_offset": o.next_offset,
        })).collect::<Vec<_>>(),
        "state": state,
        "lookups": {"users": users, "products": products},
    }))
}

fn decoded(value: &[u8]) -> Value {
    serde_json::from_slice(value).unwrap_or_else(|_| json!({"bytes": value.len()}))
}

/// The group a state key is counted in: its path without the last part, at most three parts
/// (`op/detect/v/` for a visitor's pattern state, `runner/` for the runners' counters).
fn key_prefix(key: &str) -> &str {
    let mut end = 0;
    for (n, (i, _)) in key.match_indices('/').enumerate() {
        if n == 3 {
            break;
        }
        end = i + 1;
    }
    &key[..end]
}

/// The summary: per stage its counters and positions, per topic its size, the state counted
/// by prefix (small singleton entries shown), the lookups' sizes.
fn summary(dir: &Path, store: &ReadOnlyStore) -> Result<Value, StoreError> {
    let topics = store.topic_summary()?;
    let entries = store.state_with_prefix("")?;
    let mut prefixes: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (key, value) in &entries {
        let p = prefixes.entry(key_prefix(key)).or_default();
        p.0 += 1;
        p.1 += key.len() + value.len();
    }
    let mut state = Map::new();
    let mut stages: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for (key, value) in &entries {
        if let Some(stage) = key.strip_prefix("runner/") {
            let counts = decoded(value);
            let s = stages.entry(stage.to_owned()).or_default();
            for field in ["events", "dead_letters"] {
                s.insert(field.to_owned(), counts[field].clone());
            }
        }
        let always = key.starts_with("runner/") || key.starts_with("replay/");
        if always
            || (prefixes[key_prefix(key)].0 <= SUMMARY_MAX_KEYS && value.len() <= SUMMARY_MAX_BYTES)
        {
            state.insert(key.clone(), decoded(value));
        }
    }
    for o in store.offsets()? {
        let end = topics[&o.topic]["end_offsets"][o.partition as usize]
            .as_u64()
            .unwrap_or(0);
        let s = stages.entry(o.group.clone()).or_default();
        let positions = s
            .entry("positions")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("an object");
        let topic = positions
            .entry(o.topic.clone())
            .or_insert_with(|| json!({"next_offsets": {}, "lag": 0}));
        topic["next_offsets"][o.partition.to_string()] = json!(o.next_offset);
        topic["lag"] =
            json!(topic["lag"].as_u64().unwrap_or(0) + end.saturating_sub(o.next_offset));
    }
    let state_keys: Map<String, Value> = prefixes
        .iter()
        .map(|(p, (keys, bytes))| (p.to_string(), json!({"keys": keys, "bytes": bytes})))
        .collect();
    let (users, products) = store.lookup_counts()?;
    Ok(json!({
        "data_dir": dir.display().to_string(),
        "stages": stages,
        "topics": topics,
        "state_keys": state_keys,
        "state": state,
        "lookups": {"users": users, "products": products},
        "more": "`clickpulse status --keys` prints every state key; `clickpulse verify` checks the data",
    }))
}

pub(crate) fn dump(args: TopicsDumpArgs) -> Result<ExitCode> {
    let (dir, store) = open_read_only(args.data_dir)?;
    match catch_damage(|| dump_records(&store, &args.topic, args.limit.unwrap_or(u64::MAX))) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // `| head`: the reader has what it wanted.
        Err(StoreError::DataDir { source, .. })
            if source.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            Ok(ExitCode::SUCCESS)
        }
        Err(StoreError::UnknownTopic(topic)) => {
            let known = store
                .topics()
                .map(|t| t.into_iter().map(|(name, _)| name).collect::<Vec<_>>())
                .unwrap_or_default();
            anyhow::bail!(
                "unknown topic {topic:?} in {}; its topics: {}",
                dir.display(),
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            )
        }
        Err(e) => Err(e.into()),
    }
}

fn dump_records(store: &ReadOnlyStore, topic: &str, limit: u64) -> Result<(), StoreError> {
    use std::io::Write;
    let partitions = store.partitions(topic)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let io = |e: std::io::Error| StoreError::DataDir {
        path: PathBuf::from("<stdout>"),
        source: e,
    };
    for p in 0..partitions {
        let mut next = 0;
        let mut printed = 0;
        while printed < limit {
            let batch = store.fetch(topic, p, next, 10_000)?;
            let Some(last) = batch.last() else { break };
            next = last.offset + 1;
            for record in batch
                .iter()
                .take((limit - printed).min(usize::MAX as u64) as usize)
            {
                serde_json::to_writer(&mut out, &as_json(topic, &record.value))
                    .map_err(|e| io(e.into()))?;
                out.write_all(b"\n").map_err(io)?;
                printed += 1;
            }
        }
    }
    out.flush().map_err(io)?;
    Ok(())
}

/// Decodes a record as its topic's record type.
pub(crate) fn decode_record(topic: &str, bytes: &[u8]) -> Result<Value, String> {
    use clickpulse_engine::codec::decode;
    use clickpulse_engine::{Click, DeadLetter, EnrichedClick, pattern::Offer, topics};
    let decoded = match topic {
        topics::CLICK_DATA => decode::<Click>(bytes).map(|v| json!(v)),
        topics::ENRICHED_CLICK_DATA => decode::<EnrichedClick>(bytes).map(|v| json!(v)),
        topics::SPECIAL_OFFERS => decode::<Offer>(bytes).map(|v| json!(v)),
        topics::DEAD_LETTERS => decode::<DeadLetter>(bytes).map(|v| json!(v)),
        _ => return Err(format!("unknown record type for topic {topic}")),
    };
    // The message with its causes, for a report line.
    decoded.map_err(|e| format!("{:#}", anyhow::Error::from(e)))
}

/// A topic record as JSON: decoded as the topic's record type.
fn as_json(topic: &str, bytes: &[u8]) -> Value {
    decode_record(topic, bytes)
        .unwrap_or_else(|error| json!({"undecodable": error, "bytes": bytes.len()}))
}

#[cfg(test)]
mod tests {
    use super::key_prefix;

    #[test]
    fn state_keys_are_counted_by_prefix() {
        assert_eq!(key_prefix("runner/enrich"), "runner/");
        assert_eq!(key_prefix("replay/state"), "replay/");
        assert_eq!(key_prefix("op/aggregate/snapshot"), "op/aggregate/");
        assert_eq!(key_prefix("op/detect/v/abc"), "op/detect/v/");
        assert_eq!(key_prefix("op/web/delivered/a/b"), "op/web/delivered/");
        assert_eq!(key_prefix("plain"), "");
    }
}
