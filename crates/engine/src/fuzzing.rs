//! Harnesses shared by the fuzz targets (`fuzz/fuzz_targets/`) and the regression tests that
//! replay their corpora under plain `cargo test` (`crates/engine/tests/fuzz_regressions.rs`).
//!
//! Each harness feeds arbitrary bytes through a public entry point and checks the invariants
//! that must hold whatever the input; a violated invariant panics, which is what the fuzzer
//! reports. They return a summary so the regression tests can assert specific outcomes.
//! Not part of the stable API.

use std::io::Cursor;

use crate::click::{Click, Device, EnrichedClick, Gender};
use crate::pattern::machine::Target;
use crate::pattern::{Pattern, PatternError, parse_pattern};
use crate::reader::jsonl::JsonLinesReader;
use crate::reader::tsv::TsvReader;
use crate::reader::{DEAD_LETTER_RAW_BYTES, DeadLetter, LogFormat, LogReader, LogRecord};

/// What one reader made of an input.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadSummary {
    /// The valid clicks, in order.
    pub clicks: Vec<Click>,
    /// The dead letters, in order.
    pub dead_letters: Vec<DeadLetter>,
    /// The read error that ended the input, if any (only a gzip stream can fail).
    pub error: Option<String>,
}

/// What the log readers made of one input.
#[derive(Debug, Clone, PartialEq)]
pub struct LogSummary {
    /// The TSV reader over the raw bytes.
    pub tsv: ReadSummary,
    /// The JSON-lines reader over the raw bytes.
    pub jsonl: ReadSummary,
    /// The Snowplow enriched-event reader over the raw bytes.
    pub snowplow: ReadSummary,
    /// The format [`LogReader`] detected (after gunzipping), if it could open the input.
    pub format: Option<LogFormat>,
    /// [`LogReader`] (gzip and format detection) over the same bytes.
    pub sniffed: ReadSummary,
}

/// Reads `data` with the TSV reader, the JSON-lines reader, the Snowplow enriched-event reader
/// and the sniffing [`LogReader`],
/// checking that no reader panics, every click they yield is valid, every dead letter names
/// its line and has a reason, and only a gzip stream can fail to read.
pub fn fuzz_log_readers(data: &[u8]) -> LogSummary {
    let lines = count_lines(data);
    let tsv = summarize(TsvReader::new("fuzz.tsv", data), lines, false);
    let jsonl = summarize(JsonLinesReader::new("fuzz.jsonl", data), lines, false);
    let snowplow = summarize(
        crate::reader::snowplow::EnrichedReader::new("fuzz.tsv", data),
        lines,
        false,
    );
    let is_gzip = data.starts_with(&[0x1f, 0x8b]);
    let (format, sniffed) = match LogReader::from_reader("fuzz.log", Cursor::new(data.to_vec())) {
        Ok(reader) => {
            let format = reader.format();
            // A gzip stream decompresses to any number of lines.
            let max_lines = if is_gzip { u64::MAX } else { lines };
            (Some(format), summarize(reader, max_lines, is_gzip))
        }
        Err(e) => {
            assert!(is_gzip, "only a gzip stream can fail to open: {e}");
            (None, ReadSummary::default())
        }
    };
    if !is_gzip {
        let same = match format {
            Some(LogFormat::Tsv) => &tsv,
            Some(LogFormat::JsonLines) => &jsonl,
            Some(LogFormat::SnowplowEnriched) => &snowplow,
            None => unreachable!("checked above"),
        };
        assert_eq!(
            same.clicks, sniffed.clicks,
            "LogReader reads like its format"
        );
        assert_eq!(same.dead_letters.len(), sniffed.dead_letters.len());
    }
    LogSummary {
        tsv,
        jsonl,
        snowplow,
        format,
        sniffed,
    }
}

/// Lines as the readers count them: every `\n`, plus a last line without one.
fn count_lines(data: &[u8]) -> u64 {
    let newlines = data.iter().filter(|b| **b == b'\n').count() as u64;
    newlines + u64::from(!data.is_empty() && !data.ends_with(b"\n"))
}

fn summarize(
    reader: impl Iterator<Item = Result<LogRecord, crate::reader::ReaderError>>,
    max_lines: u64,
    may_fail: bool,
) -> ReadSummary {
    let mut summary = ReadSummary::default();
    let mut last_position = 0;
    for record in reader {
        assert!(summary.error.is_none(), "nothing follows a read error");
        match record {
            Ok(LogRecord::Click(click)) => {
                if let Err(e) = click.validate() {
                    panic!("a reader yielded an invalid click ({e}): {click:?}");
                }
                // What goes on the topics and into dumps reads back as it went in.
                let decoded: crate::click::Click =
                    crate::codec::decode(&crate::codec::encode(&click)).unwrap_or_else(|e| {
                        panic!("a read click does not decode ({e}): {click:?}")
                    });
                assert_eq!(decoded, click, "the binary form round-trips");
                let json = serde_json::to_string(&click).expect("a click serializes");
                let parsed: crate::click::Click = serde_json::from_str(&json)
                    .unwrap_or_else(|e| panic!("a dumped click does not read back ({e}): {json}"));
                assert_eq!(parsed, click, "the JSON form round-trips");
                summary.clicks.push(click);
            }
            Ok(LogRecord::Malformed(dead)) => {
                assert!(
                    dead.position > last_position && dead.position <= max_lines,
                    "dead letter at line {} after line {last_position} of {max_lines}",
                    dead.position
                );
                last_position = dead.position;
                assert!(!dead.reason.is_empty(), "a dead letter has a reason");
                assert!(
                    dead.raw.len() <= DEAD_LETTER_RAW_BYTES,
                    "dead letter raw text is {} bytes",
                    dead.raw.len()
                );
                summary.dead_letters.push(dead);
            }
            Err(e) => {
                assert!(may_fail, "only a gzip stream can fail to read: {e}");
                summary.error = Some(e.to_string());
            }
        }
    }
    let records = (summary.clicks.len() + summary.dead_letters.len()) as u64;
    assert!(
        records <= max_lines,
        "{records} records from {max_lines} lines"
    );
    summary
}

/// Parses `data` (lossily decoded as UTF-8) as a pattern file. A compiled pattern must explain
/// itself and run a few views through its machine without panicking; an error must name a line
/// within the file and say what is wrong.
pub fn fuzz_pattern_parser(data: &[u8]) -> Result<Pattern, PatternError> {
    let text = String::from_utf8_lossy(data);
    let result = parse_pattern("fuzz.toml", &text);
    match &result {
        Ok(pattern) => exercise(pattern),
        Err(e) => {
            let lines = text.lines().count() + 1;
            assert!(
                e.line <= lines,
                "error line {} beyond {lines} lines: {e}",
                e.line
            );
            assert!(!e.message.is_empty(), "an error says what is wrong");
            assert!(e.to_string().starts_with("fuzz.toml:"), "{e}");
        }
    }
    result
}

/// Checks a compiled pattern's shape and runs views through it.
fn exercise(pattern: &Pattern) {
    assert!(!pattern.name.is_empty());
    assert!(
        pattern.states.len() <= 64,
        "{} states",
        pattern.states.len()
    );
    assert_eq!(pattern.states.len(), pattern.transitions.len());
    assert!(
        !pattern.transitions[0].is_empty(),
        "a transition leaves init"
    );
    for edges in &pattern.transitions {
        for t in edges {
            if let Target::State(s) = t.to {
                assert!(
                    (s as usize) < pattern.states.len() && s != 0,
                    "bad target {s}"
                );
            }
        }
    }
    assert!(!pattern.explain().is_empty());
    let products = ["VD1", "VD2", "VD1", "VD3", "VD2", "VD4", "VD4", "VD5"];
    let categories = ["clothing", "shoes", "clothing", "shoes", "shoes"];
    let mut current = None;
    for (i, product) in products.iter().cycle().take(40).enumerate() {
        let click = view(
            i as i64 * 600_000,
            product,
            categories[i % categories.len()],
            i,
        );
        let outcome = pattern.advance(&mut current, &click);
        if let Some(m) = &current {
            assert!((m.state as usize) < pattern.states.len() && m.state != 0);
        }
        for step in &outcome.steps {
            let _ = pattern.state_name(Some(step.from));
            let _ = pattern.state_name(step.to);
        }
    }
}

/// A view of `product` in `category`; the visitor's demographics vary with `i`.
fn view(ts_ms: i64, product: &str, category: &str, i: usize) -> EnrichedClick {
    EnrichedClick {
        ts_ms,
        visitor: "fuzz".to_owned(),
        ip: "10.0.0.1".to_owned(),
        url: format!("http://www.acme.com/SH1/{product}"),
        product_id: product.into(),
        category: category.into(),
        title: "Title".into(),
        known_visitor: !i.is_multiple_of(3),
        gender: [Gender::M, Gender::F, Gender::U][i % 3],
        age: (!i.is_multiple_of(4)).then_some(20 + (i as u32 * 7) % 40),
        country: "usa".into(),
        city: Some("dallas".to_owned()),
        region: None,
        device: Device::ALL[i % Device::ALL.len()],
        event: crate::event::EventType::PageView,
        detail: None,
    }
}
