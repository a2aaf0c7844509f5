//! `clickpulse verify`: checks a data dir end to end, read-only, and says what is damaged.
//!
//! Every topic's records (each one's checksum, its place, offsets without gaps or overlaps,
//! its value decoding as the topic's record type), every committed offset against its
//! partition, every state entry (checksum, JSON), the lookups, and redb's own page checksums
//! (on a private copy). Exit 0 when clean, 1 with the list of problems when not.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::VerifyArgs;
use crate::status::{decode_record, open_read_only};

/// At most this many problems are listed (the count is always given).
const MAX_LISTED: usize = 100;

pub(crate) fn run(args: VerifyArgs) -> Result<ExitCode> {
    let (_, store) = open_read_only(args.data_dir)?;
    let known = |topic: &str| {
        use clickpulse_engine::topics;
        [
            topics::CLICK_DATA,
            topics::ENRICHED_CLICK_DATA,
            topics::SPECIAL_OFFERS,
            topics::DEAD_LETTERS,
        ]
        .contains(&topic)
    };
    let report = store.verify(&|topic, bytes| {
        if known(topic) {
            decode_record(topic, bytes).map(drop)
        } else {
            Ok(())
        }
    });
    let path = store.path().display();
    if report.problems.is_empty() {
        println!(
            "{path}: no damage found: {} records with matching checksums{}, {} committed offsets, \
             {} state entries, {} lookup entries, redb pages intact",
            report.records,
            if report.unchecked_records > 0 {
                format!(
                    " and {} written before checksums (read and decoded, nothing to verify)",
                    report.unchecked_records
                )
            } else {
                String::new()
            },
            report.offsets,
            report.state_entries,
            report.lookups,
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("{path}: DAMAGED, {} problems:", report.problems.len());
    for p in report.problems.iter().take(MAX_LISTED) {
        println!("  {}: {}", p.place, p.message);
    }
    if report.problems.len() > MAX_LISTED {
        println!("  … and {} more", report.problems.len() - MAX_LISTED);
    }
    Ok(ExitCode::FAILURE)
}
