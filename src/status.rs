//! `clickpulse status`: what a data dir holds, read from its durable state (the pipeline must
//! not be running on it: the store is opened by one process at a time).

use std::process::ExitCode;

use anyhow::{Context, Result};
use clickpulse_connectors::embedded::EmbeddedStore;
use serde_json::{Map, Value, json};

use crate::cli::{StatusArgs, TopicsDumpArgs};
use crate::inputs;

pub(crate) fn run(args: StatusArgs) -> Result<ExitCode> {
    let dir = inputs::data_dir(args.data_dir);
    let store = EmbeddedStore::open(&dir, &[]).with_context(|| {
        format!(
            "cannot open the data dir {} (is a pipeline running on it?)",
            dir.display()
        )
    })?;
    let mut state = Map::new();
    for (key, value) in store.state_with_prefix("")? {
        let value: Value =
            serde_json::from_slice(&value).unwrap_or_else(|_| json!({"bytes": value.len()}));
        state.insert(key, value);
    }
    let lookups = store.load_lookups()?;
    let status = json!({
        "data_dir": dir.display().to_string(),
        "topics": store.topic_summary_on_disk()?,
        "state": state,
        "lookups": {"users": lookups.user_count(), "products": lookups.product_count()},
    });
    println!("{}", serde_json::to_string_pretty(&status)?);
    Ok(ExitCode::SUCCESS)
}

fn open(data_dir: Option<std::path::PathBuf>) -> Result<(std::path::PathBuf, EmbeddedStore)> {
    let dir = inputs::data_dir(data_dir);
    let store = EmbeddedStore::open(&dir, &[]).with_context(|| {
        format!(
            "cannot open the data dir {} (is a pipeline running on it?)",
            dir.display()
        )
    })?;
    Ok((dir, store))
}

pub(crate) fn dump(args: TopicsDumpArgs) -> Result<ExitCode> {
    use std::io::Write;
    let (_, store) = open(args.data_dir)?;
    let partitions = store.partitions_on_disk(&args.topic)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for p in 0..partitions {
        let mut next = 0;
        let mut printed = 0;
        while printed < args.limit {
            let batch = store.fetch(&args.topic, p, next, 10_000)?;
            let Some(last) = batch.last() else { break };
            next = last.offset + 1;
            for record in batch
                .iter()
                .take((args.limit - printed).min(usize::MAX as u64) as usize)
            {
                serde_json::to_writer(&mut out, &as_json(&args.topic, &record.value))?;
                out.write_all(b"\n")?;
                printed += 1;
            }
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// A topic record as JSON: decoded as the topic's record type.
fn as_json(topic: &str, bytes: &[u8]) -> serde_json::Value {
    use clickpulse_engine::codec::decode;
    use clickpulse_engine::{Click, DeadLetter, EnrichedClick, pattern::Offer, topics};
    let decoded = match topic {
        topics::CLICK_DATA => decode::<Click>(bytes).map(|v| json!(v)),
        topics::ENRICHED_CLICK_DATA => decode::<EnrichedClick>(bytes).map(|v| json!(v)),
        topics::SPECIAL_OFFERS => decode::<Offer>(bytes).map(|v| json!(v)),
        topics::DEAD_LETTERS => decode::<DeadLetter>(bytes).map(|v| json!(v)),
        _ => Err(format!("unknown record type for topic {topic}")),
    };
    decoded.unwrap_or_else(|error| json!({"undecodable": error, "bytes": bytes.len()}))
}
