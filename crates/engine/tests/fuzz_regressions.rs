//! Replays the fuzz corpora under plain `cargo test` (no cargo-fuzz, stable toolchain): every
//! file of `fuzz/corpus/<target>/` (the seeds) and `fuzz/regressions/<target>/` (inputs that
//! crashed or misbehaved once) goes through the same harness the fuzz target calls
//! (`clickpulse_engine::fuzzing`), which panics on a violated invariant; the regressions are
//! then checked for their specific, fixed outcome.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use clickpulse_engine::fuzzing::{LogSummary, fuzz_log_readers, fuzz_pattern_parser};
use clickpulse_engine::reader::{DEAD_LETTER_RAW_BYTES, LogFormat};

/// Every file of `fuzz/<kind>/<target>/`, by name.
fn inputs(kind: &str, target: &str) -> BTreeMap<String, Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz")
        .join(kind)
        .join(target);
    let entries =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    let files: BTreeMap<String, Vec<u8>> = entries
        .map(|entry| {
            let path = entry.expect("directory entry").path();
            let name = path.file_name().expect("a file name");
            let bytes = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            (name.to_string_lossy().into_owned(), bytes)
        })
        .collect();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    files
}

/// Runs `check` on the named file, failing if it is missing.
fn expect<T>(
    files: &BTreeMap<String, Vec<u8>>,
    name: &str,
    run: impl Fn(&[u8]) -> T,
    check: impl FnOnce(T),
) {
    let bytes = files
        .get(name)
        .unwrap_or_else(|| panic!("{name} is missing"));
    check(run(bytes));
}

fn reasons(summary: &LogSummary) -> Vec<(u64, String)> {
    summary
        .sniffed
        .dead_letters
        .iter()
        .map(|d| (d.position, d.reason.clone()))
        .collect()
}

#[test]
fn tsv_reader_corpus_reads_without_panics() {
    let corpus = inputs("corpus", "tsv_reader");
    for (name, bytes) in &corpus {
        let summary = fuzz_log_readers(bytes);
        assert!(summary.format.is_some(), "{name}: could not open");
    }
    let tsv = |clicks: usize| {
        move |s: LogSummary| {
            assert_eq!(s.format, Some(LogFormat::Tsv));
            assert_eq!((s.sniffed.clicks.len(), reasons(&s)), (clicks, Vec::new()));
        }
    };
    expect(
        &corpus,
        "omniture-178-columns-3-rows.tsv",
        fuzz_log_readers,
        tsv(3),
    );
    expect(
        &corpus,
        "omniture-header-then-row.tsv",
        fuzz_log_readers,
        tsv(1),
    );
    expect(
        &corpus,
        "omniture-53-columns-crlf.tsv",
        fuzz_log_readers,
        tsv(2),
    );
    expect(&corpus, "omniture-2-rows.tsv.gz", fuzz_log_readers, tsv(2));
    expect(
        &corpus,
        "omniture-bad-rows-become-dead-letters.tsv",
        fuzz_log_readers,
        |s| {
            assert_eq!(s.sniffed.clicks.len(), 2);
            assert_eq!(
                reasons(&s),
                [
                    (2, "too few columns: 3, need at least 53".to_owned()),
                    (3, "empty visitor id in column 14".to_owned()),
                    (4, "non-numeric time in column 1".to_owned()),
                    (5, "empty URL in column 13".to_owned()),
                    (6, "time in column 1 is out of range".to_owned()),
                    (7, "time in column 1 is out of range".to_owned()),
                ]
            );
        },
    );
    for gz in ["clicks.jsonl", "clicks.jsonl.gz"] {
        expect(&corpus, gz, fuzz_log_readers, |s| {
            assert_eq!(s.format, Some(LogFormat::JsonLines));
            assert_eq!(s.sniffed.clicks.len(), 1);
            let lines: Vec<u64> = reasons(&s).iter().map(|(line, _)| *line).collect();
            assert_eq!(lines, [3, 4, 5, 6]);
        });
    }
    // Interactions read with their type; one that lacks what its type needs is a dead letter.
    expect(&corpus, "interactions.jsonl", fuzz_log_readers, |s| {
        assert_eq!(s.format, Some(LogFormat::JsonLines));
        let types: Vec<&str> = s.sniffed.clicks.iter().map(|c| c.event.as_str()).collect();
        assert_eq!(types, ["add_to_cart", "purchase", "search", "wishlist_add"]);
        assert_eq!(
            reasons(&s),
            [(4, "a add_to_cart event needs product.id".to_owned())]
        );
    });
    // Snowplow enriched events (131 fields): page view, e-commerce add to cart, transaction and
    // structured event taken; the page ping and the transaction item skipped.
    expect(&corpus, "snowplow-enriched.tsv", fuzz_log_readers, |s| {
        assert_eq!(s.format, Some(LogFormat::SnowplowEnriched));
        let types: Vec<&str> = s.sniffed.clicks.iter().map(|c| c.event.as_str()).collect();
        assert_eq!(
            types,
            ["page_view", "add_to_cart", "purchase", "play_video"]
        );
        assert!(reasons(&s).is_empty(), "{:?}", reasons(&s));
        assert!(
            s.sniffed
                .clicks
                .iter()
                .all(|c| c.visitor == "sp-2b1a0c9d-8e7f-4a6b-9c5d-4e3f2a1b0c9d")
        );
    });
}

#[test]
fn pattern_parser_corpus_parses_without_panics() {
    let corpus = inputs("corpus", "pattern_parser");
    for bytes in corpus.values() {
        let _ = fuzz_pattern_parser(bytes);
    }
    for valid in [
        "seed-5-step.toml",
        "seed-clothes-shoes-clothes.toml",
        "clothes-then-shoes.toml",
        "steps-loop-repeat-distinct.toml",
        "every-condition.toml",
    ] {
        expect(&corpus, valid, fuzz_pattern_parser, |r| {
            if let Err(e) = r {
                panic!("{valid}: {e}");
            }
        });
    }
    expect(&corpus, "syntax-error.toml", fuzz_pattern_parser, |r| {
        let e = r.expect_err("a syntax error");
        assert_eq!((e.line, e.field.as_str()), (2, ""), "{e}");
    });
    expect(
        &corpus,
        "both-steps-and-transitions.toml",
        fuzz_pattern_parser,
        |r| {
            let e = r.expect_err("steps and transitions");
            assert!(e.message.contains("not both"), "{e}");
        },
    );
}

/// The dead letters' `(line, reason)`s and raw texts.
fn dead_letters(summary: &LogSummary) -> Vec<(u64, String, String)> {
    summary
        .sniffed
        .dead_letters
        .iter()
        .map(|d| (d.position, d.reason.clone(), d.raw.clone()))
        .collect()
}

#[test]
fn tsv_reader_regressions_become_dead_letters() {
    let files = inputs("regressions", "tsv_reader");
    for bytes in files.values() {
        fuzz_log_readers(bytes);
    }
    let mut unchecked: BTreeSet<&str> = files.keys().map(String::as_str).collect();
    let mut check = |name: &'static str, f: &dyn Fn(LogSummary)| {
        unchecked.remove(name);
        expect(&files, name, fuzz_log_readers, f);
    };
    // Found by the fuzzer: two Omniture rows, gzipped. Read as plain TSV (not gunzipped), the
    // compressed bytes are rows of invalid UTF-8, and the lossy raw text of their dead letters
    // was over the 512-byte limit (each invalid byte is a 3-byte U+FFFD).
    check("gzip-dead-letter-raw-over-512-bytes.tsv.gz", &|s| {
        assert_eq!(s.format, Some(LogFormat::Tsv));
        assert_eq!(s.sniffed.clicks.len(), 2, "gunzipped, the rows are valid");
        assert!(s.tsv.clicks.is_empty());
        assert!(!s.tsv.dead_letters.is_empty());
        for d in &s.tsv.dead_letters {
            assert!(
                d.reason.starts_with("invalid UTF-8 at byte"),
                "{}",
                d.reason
            );
            assert!(d.raw.len() <= DEAD_LETTER_RAW_BYTES);
        }
        let longest = s.tsv.dead_letters.iter().map(|d| d.raw.len()).max();
        assert!(longest > Some(DEAD_LETTER_RAW_BYTES - 3), "{longest:?}");
    });
    check("dead-letter-600-invalid-utf8-bytes.tsv", &|s| {
        let raw = "\u{fffd}".repeat(DEAD_LETTER_RAW_BYTES / 3);
        let expected = (1, "invalid UTF-8 at byte 0".to_owned(), raw);
        assert_eq!(dead_letters(&s), [expected]);
    });
    check("dead-letter-cut-inside-a-character.tsv", &|s| {
        let raw = "a".repeat(DEAD_LETTER_RAW_BYTES - 1);
        let expected = (1, "too few columns: 2, need at least 53".to_owned(), raw);
        assert_eq!(dead_letters(&s), [expected]);
    });
    // Found by the harness's invariant (every click a reader yields is valid): the TSV reader
    // did not apply the click rules the JSON-lines reader and the collector apply.
    check("time-beyond-year-9999.tsv", &|s| {
        assert!(s.sniffed.clicks.is_empty());
        assert_eq!(
            reasons(&s),
            [(
                1,
                "timestamp 9999999999999000 ms is out of range".to_owned()
            )]
        );
    });
    check("user-agent-over-4096-bytes.tsv", &|s| {
        assert!(s.sniffed.clicks.is_empty());
        let reason = "field user_agent is 5000 bytes long, more than the limit of 4096";
        assert_eq!(reasons(&s), [(1, reason.to_owned())]);
    });
    assert!(
        unchecked.is_empty(),
        "give these regressions an expected outcome: {unchecked:?}"
    );
}

#[test]
fn pattern_parser_regressions_are_clear_errors() {
    let files = inputs("regressions", "pattern_parser");
    let mut unchecked: BTreeSet<&str> = files.keys().map(String::as_str).collect();
    // `repeat = 4000000000` made four billion states before the 64-state limit was checked:
    // minutes of work and gigabytes of memory for one pattern file.
    for name in [
        "step-repeat-4-billion.toml",
        "first-step-repeat-4-billion.toml",
    ] {
        unchecked.remove(name);
        expect(&files, name, fuzz_pattern_parser, |r| {
            let e = r.expect_err("too many states");
            assert_eq!(
                (e.line, e.field.as_str(), e.message.as_str()),
                (4, "step[0]", "more than 64 states"),
                "{name}: {e}"
            );
        });
    }
    assert!(
        unchecked.is_empty(),
        "give these regressions an expected outcome: {unchecked:?}"
    );
}
