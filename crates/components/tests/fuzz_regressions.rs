//! Replays the `pgoutput` fuzz corpus under plain `cargo test`: every file of
//! `fuzz/corpus/pgoutput/` (the seeds) and `fuzz/regressions/pgoutput/` (inputs that crashed
//! once, if any) goes through the harness the fuzz target calls, which panics on a violated
//! invariant; then the seeds' outcomes are checked.

use std::collections::BTreeMap;
use std::path::Path;

use clickpulse_components::fuzzing::fuzz_pgoutput;

fn inputs(kind: &str) -> BTreeMap<String, Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz")
        .join(kind)
        .join("pgoutput");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return BTreeMap::new();
    };
    entries
        .map(|e| {
            let path = e.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                bytes,
            )
        })
        .collect()
}

#[test]
fn the_pgoutput_corpus_keeps_its_invariants_and_outcomes() {
    let seeds = inputs("corpus");
    assert!(seeds.len() >= 4, "the seeds are missing");
    let events: BTreeMap<&str, usize> = seeds
        .iter()
        .map(|(name, bytes)| (name.as_str(), fuzz_pgoutput(bytes)))
        .collect();
    assert_eq!(
        events["order-with-lines.bin"], 1,
        "one purchase with its two lines"
    );
    assert_eq!(events["unpaid-then-paid.bin"], 1, "the purchase once paid");
    assert_eq!(events["carts.bin"], 2, "an add and a delete by full row");
    assert_eq!(events["bad-values.bin"], 0);
    for (name, bytes) in inputs("regressions") {
        let _ = name;
        fuzz_pgoutput(&bytes);
    }
    // Every cut of every seed, too.
    for bytes in seeds.values() {
        for cut in 0..bytes.len() {
            fuzz_pgoutput(&bytes[..cut]);
        }
    }
}
