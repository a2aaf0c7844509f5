//! Replays the `collector_json` fuzz corpus under plain `cargo test` (no cargo-fuzz, stable
//! toolchain): every file of `fuzz/corpus/collector_json/` (the seeds) and
//! `fuzz/regressions/collector_json/` (inputs that crashed or misbehaved once) goes through the
//! harness the fuzz target calls (`clickpulse_server::fuzzing`), which panics on a violated
//! invariant; then specific outcomes are checked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use clickpulse_server::fuzzing::{FUZZ_IP, FUZZ_USER_AGENT, fuzz_collector_body, fuzz_snowplow};

/// Every file of `fuzz/<kind>/collector_json/`, by name.
fn inputs(kind: &str) -> BTreeMap<String, Vec<u8>> {
    target_inputs(kind, "collector_json")
}

/// Every file of `fuzz/<kind>/<target>/`, by name.
fn target_inputs(kind: &str, target: &str) -> BTreeMap<String, Vec<u8>> {
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

/// What the collector answers for the named file: the clicks, or the 400's error.
fn outcome(files: &BTreeMap<String, Vec<u8>>, name: &str) -> Result<usize, String> {
    let bytes = files
        .get(name)
        .unwrap_or_else(|| panic!("{name} is missing"));
    fuzz_collector_body(bytes).map(|clicks| clicks.len())
}

#[test]
fn collector_corpus_parses_without_panics() {
    let corpus = inputs("corpus");
    for bytes in corpus.values().chain(inputs("regressions").values()) {
        let _ = fuzz_collector_body(bytes);
    }
    assert_eq!(outcome(&corpus, "batch-of-two.json"), Ok(2));
    assert_eq!(outcome(&corpus, "escaped-strings.json"), Ok(1));
    // Interactions: every type of the event model, their detail, and custom properties.
    let events = fuzz_collector_body(&corpus["interactions.json"]).expect("valid events");
    let types: Vec<&str> = events.iter().map(|c| c.event.as_str()).collect();
    assert_eq!(
        types,
        ["add_to_cart", "purchase", "search", "newsletter_signup"]
    );
    let utm = events[0].detail.as_ref().and_then(|d| d.utm.as_ref());
    assert_eq!(
        utm.and_then(|u| u.medium.as_deref()),
        Some("email"),
        "UTM read from the URL"
    );
    let one = fuzz_collector_body(&corpus["one-click-all-fields.json"]).expect("a valid click");
    assert_eq!(
        (one[0].ip.as_str(), one[0].user_agent.as_str()),
        ("9.9.9.9", "Mozilla/5.0")
    );
    let defaults = fuzz_collector_body(&corpus["batch-of-two.json"]).expect("a valid batch");
    assert_eq!(
        (defaults[0].ip.as_str(), defaults[0].user_agent.as_str()),
        (FUZZ_IP, FUZZ_USER_AGENT)
    );
    for (name, reason) in [
        ("missing-visitor.json", "missing field `visitor`"),
        ("empty-visitor.json", "click 0: empty visitor id"),
        ("bad-gender.json", "click 0: unknown variant `X`"),
        ("unknown-field.json", "unknown field `shoe_size`"),
        ("empty-array.json", "no clicks in the body"),
        ("not-json.txt", "body is not JSON"),
        ("not-utf8.bin", "body is not UTF-8"),
        ("age-out-of-range.json", "click 0: age 131 is out of range"),
        (
            "purchase-without-order.json",
            "click 0: a purchase event needs an order",
        ),
        (
            "property-over-the-limit.json",
            "click 0: field properties.note is 300 bytes long, more than the limit of 256",
        ),
        ("bad-event-type.json", "is neither a built-in type"),
        (
            "nested-arrays.json",
            "click 0: invalid type: map, expected a string",
        ),
    ] {
        let error = outcome(&corpus, name).expect_err(name);
        assert!(error.contains(reason), "{name}: {error}");
    }
}

#[test]
fn collector_regressions_have_their_outcome() {
    let files = inputs("regressions");
    let mut unchecked: BTreeSet<&str> = files.keys().map(String::as_str).collect();
    let mut rejected = |name: &'static str, reason: &str| {
        unchecked.remove(name);
        let error = outcome(&files, name).expect_err(name);
        assert!(error.contains(reason), "{name}: {error}");
    };
    rejected(
        "nesting-10000-deep.json",
        "body is not JSON: recursion limit",
    );
    rejected(
        "batch-of-501.json",
        "501 clicks in one request; at most 500",
    );
    rejected(
        "url-over-4096-bytes.json",
        "click 0: field url is 5000 bytes long",
    );
    rejected("age-larger-than-u32.json", "click 0: invalid value");
    rejected("lone-surrogate-escape.json", "body is not JSON");
    let mut accepted = |name: &'static str| {
        unchecked.remove(name);
        fuzz_collector_body(&files[name]).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    assert_eq!(
        accepted("visitor-padded-with-whitespace.json")[0].visitor,
        "v"
    );
    // The body is parsed as a JSON value first, so a repeated key keeps its last value.
    assert_eq!(accepted("duplicate-field.json")[0].visitor, "b");
    assert!(
        unchecked.is_empty(),
        "give these regressions an expected outcome: {unchecked:?}"
    );
}

#[test]
fn snowplow_corpus_and_regressions_have_their_outcome() {
    let corpus = target_inputs("corpus", "snowplow_tp2");
    let regressions = target_inputs("regressions", "snowplow_tp2");
    for bytes in corpus.values().chain(regressions.values()) {
        let _ = fuzz_snowplow(bytes);
    }
    let events = |name: &str| {
        let files = if corpus.contains_key(name) {
            &corpus
        } else {
            &regressions
        };
        fuzz_snowplow(&files[name])
    };
    // What the real trackers sent (captured from @snowplow/node-tracker 4.8.0, base64 and
    // plain; the browser tracker's page view as its source builds it).
    for name in [
        "node-tracker-base64-batch.json",
        "node-tracker-plain-batch.json",
    ] {
        let clicks = events(name).expect(name);
        let types: Vec<&str> = clicks.iter().map(|c| c.event.as_str()).collect();
        assert_eq!(
            types,
            ["page_view", "add_to_cart", "purchase", "play_video"],
            "{name}"
        );
        assert!(
            clicks
                .iter()
                .all(|c| c.visitor == "sp-2b1a0c9d-8e7f-4a6b-9c5d-4e3f2a1b0c9d")
        );
    }
    let browser = events("browser-tracker-page-view.json").expect("a page view");
    assert_eq!(browser[0].url, "http://localhost:3000/shop");
    for (name, reason) in [
        ("not-json.txt", "body is not JSON"),
        ("other-schema.json", "expected a payload_data"),
        ("no-events.json", "no events in the request"),
        (
            "batch-of-501.json",
            "501 events in one request; at most 500",
        ),
    ] {
        let error = events(name).expect_err(name);
        assert!(error.contains(reason), "{name}: {error}");
    }
    // Bad events cost only themselves; the good one is kept, the ping counted.
    assert_eq!(events("mixed-bad-events.json").unwrap().len(), 1);
    for name in [
        "nesting-10000-deep.json",
        "contexts-not-an-array.json",
        "custom-name-over-40-bytes.json",
    ] {
        assert_eq!(
            events(name),
            Ok(Vec::new()),
            "{name}: its event is rejected alone"
        );
    }
}

/// The `segment` corpus (and its regressions, if any) through its harness, with the seeds'
/// outcomes.
#[test]
fn the_segment_corpus_keeps_its_invariants_and_outcomes() {
    use clickpulse_server::fuzzing::fuzz_segment;
    let seeds = target_inputs("corpus", "segment");
    let outcome = |name: &str| fuzz_segment(&seeds[name]).map(|clicks| clicks.len());
    // identify, page, add, order; the screen is counted, not kept.
    assert_eq!(outcome("batch-ecommerce.json"), Ok(4));
    assert_eq!(outcome("track-search.json"), Ok(1));
    assert_eq!(outcome("page.json"), Ok(1));
    // A track without `event`, a number, a page without a URL: each refused alone, with its reason.
    assert_eq!(outcome("batch-bad-messages.json"), Ok(0));
    assert!(outcome("not-json.txt").unwrap_err().contains("not JSON"));
    let regressions = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions/segment");
    if regressions.exists() {
        for bytes in target_inputs("regressions", "segment").values() {
            let _ = fuzz_segment(bytes);
        }
    }
}
