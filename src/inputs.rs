//! Reading logs and lookups from files or the bundled copies.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clickpulse_connectors::replay_cursor::ReplayInput;
use clickpulse_engine::click_log::ClickLogBuilder;
use clickpulse_engine::lookups::{LoadReport, Lookups};
use clickpulse_engine::pattern::PatternSet;
use clickpulse_engine::reader::{self, Compression, DeadLetter, LogReader};

use crate::bundled;

/// Reads every log (bundled if `paths` is empty), in order, into a time-sorted replay input.
pub(crate) fn read_logs(
    paths: &[PathBuf],
    mut on_malformed: impl FnMut(&DeadLetter),
) -> Result<ReplayInput> {
    // Room for every click up front: growing a vector of millions of clicks copies it again and
    // again into fresh memory (a fifth of the backtest's time on the real log). Reserving does
    // not touch the memory, so an estimate on the high side costs nothing.
    // Bytes per row: ~580 plain on the real log (~200 generated), ~57 gzipped, ~26 zstd.
    let estimate = |len: u64, head: &[u8]| {
        let per_row = match Compression::sniff(head) {
            Compression::None => 128,
            Compression::Gzip => 32,
            Compression::Zstd => 16,
        };
        (len / per_row) as usize
    };
    let expected: usize = if paths.is_empty() {
        bundled::LOGS
            .iter()
            .map(|(_, bytes)| estimate(bytes.len() as u64, bytes))
            .sum()
    } else {
        paths
            .iter()
            .map(|p| {
                // Only an estimate: a file that cannot be read fails below, with its reason.
                let mut head = [0u8; 4];
                let read = File::open(p)
                    .and_then(|mut f| f.read(&mut head))
                    .unwrap_or(0);
                estimate(
                    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
                    &head[..read],
                )
            })
            .sum()
    };
    let mut clicks = ClickLogBuilder::with_capacity(expected.min(50_000_000));
    let mut malformed = Vec::new();
    let mut names = Vec::new();
    let mut consume = |reader: LogReader, name: String| -> Result<()> {
        reader
            .read_all(
                |click| clicks.push(click),
                |letter| {
                    on_malformed(&letter);
                    malformed.push(letter);
                },
            )
            .with_context(|| format!("reading {name}"))
    };
    if paths.is_empty() {
        for (name, bytes) in bundled::LOGS {
            consume(LogReader::from_reader(name, bytes)?, name.to_owned())?;
            // Named as the published file it is a copy of (gzip until the copy was stored as
            // Zstandard): a data dir that replayed the bundled log before still resumes.
            let published = name.replace(".tsv.zst", ".tsv.gz");
            names.push(format!("bundled:{published}"));
        }
    } else {
        for path in paths {
            let reader = LogReader::open(path)?;
            consume(reader, path.display().to_string())?;
            let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            names.push(format!("{}:{size}", path.display()));
        }
    }
    let clicks = clicks.finish();
    let fingerprint = format!(
        "{} ({} events, {} malformed)",
        names.join(","),
        clicks.len(),
        malformed.len()
    );
    Ok(ReplayInput {
        clicks,
        malformed,
        fingerprint,
    })
}

/// What the replay replays, as `[replay]` says: the logs (or the bundled one), with shop
/// interactions added ([`with_interactions`]) and the days laid over one day ([`overlaid`])
/// when it says so.
pub(crate) fn replay_input(
    config: &clickpulse_components::config::ReplayConfig,
) -> Result<Arc<ReplayInput>> {
    let mut input = read_logs(&config.logs, |_| {})?;
    tracing::info!(
        events = input.clicks.len(),
        malformed = input.malformed.len(),
        "Log read and sorted by event time."
    );
    if config.adds_interactions() {
        input = with_interactions(input)?;
        tracing::info!(
            events = input.clicks.len(),
            "Shop interactions added to the log's sessions."
        );
    }
    Ok(Arc::new(if config.original_time {
        input
    } else {
        overlaid(input)
    }))
}

/// The input with the shop interactions its sessions would have had
/// ([`crate::generate::interactions_of`]: searches, carts, checkouts and orders at published
/// rates), so the dashboard's conversion panels and funnels are alive without anyone clicking.
/// Its fingerprint says so, so a data dir is never resumed with the other input.
pub(crate) fn with_interactions(input: ReplayInput) -> Result<ReplayInput> {
    let extra = crate::generate::interactions_of(&input.clicks, INTERACTIONS_SEED)?;
    let mut clicks = ClickLogBuilder::with_capacity(input.clicks.len() + extra.len());
    for click in input.clicks.iter() {
        clicks.push(click);
    }
    for click in &extra {
        clicks.push(click.borrowed());
    }
    Ok(ReplayInput {
        clicks: clicks.finish(),
        fingerprint: format!(
            "{}, with {} shop interactions",
            input.fingerprint,
            extra.len()
        ),
        malformed: input.malformed,
    })
}

/// The seed of the interactions [`with_interactions`] adds: fixed, so the demo and
/// `backtest --interactions` see the same events.
const INTERACTIONS_SEED: u64 = 20_120_301;

/// The input's days laid over one day, for the live replay on the real clock
/// ([`overlay_days`](clickpulse_engine::replay::overlay_days)); its fingerprint says so, so a
/// data dir is never resumed with the other timeline.
pub(crate) fn overlaid(input: ReplayInput) -> ReplayInput {
    ReplayInput {
        clicks: clickpulse_engine::replay::overlay_days(&input.clicks),
        fingerprint: format!("{}, days overlaid", input.fingerprint),
        malformed: input.malformed,
    }
}

/// Loads the lookups from a folder, or the bundled copies when `dir` is `None`.
pub(crate) fn read_lookups(dir: Option<&Path>) -> Result<(Lookups, LoadReport)> {
    let mut lookups = Lookups::default();
    let mut report = match dir {
        None => {
            let users = reader::decompress(bundled::USERS_JSON_GZ)?;
            let report = lookups.load_users("users.json", users)?;
            lookups.load_products_json("products.json", bundled::PRODUCTS_JSON)?;
            lookups.load_products_tsv("products.tsv", bundled::PRODUCTS_TSV)?;
            report
        }
        Some(dir) => {
            let users_path = ["users.json", "users.json.gz"]
                .iter()
                .map(|f| dir.join(f))
                .find(|p| p.exists())
                .with_context(|| format!("no users.json or users.json.gz in {}", dir.display()))?;
            let users = reader::decompress(open(&users_path)?)?;
            let report = lookups.load_users(&users_path.display().to_string(), users)?;
            let products = dir.join("products.json");
            lookups.load_products_json(&products.display().to_string(), open(&products)?)?;
            let tsv = dir.join("products.tsv");
            if tsv.exists() {
                lookups.load_products_tsv(&tsv.display().to_string(), open(&tsv)?)?;
            }
            report
        }
    };
    report.products = lookups.product_count() as u64;
    Ok((lookups, report))
}

fn open(path: &Path) -> Result<File> {
    File::open(path).with_context(|| format!("cannot open {}", path.display()))
}

/// The data dir to use: the one given, else `$XDG_DATA_HOME/clickpulse`, else
/// `~/.local/share/clickpulse`, else `./clickpulse-data`.
pub(crate) fn data_dir(given: Option<PathBuf>) -> PathBuf {
    if let Some(dir) = given {
        return dir;
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("clickpulse");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home).join(".local/share/clickpulse");
    }
    PathBuf::from("clickpulse-data")
}

/// Loads patterns from a file or directory, or the bundled seed patterns when `path` is `None`.
/// Every invalid file is reported.
/// The funnels at `path`, or the shop funnel.
pub(crate) fn read_funnels(path: Option<&Path>) -> Result<clickpulse_engine::funnel::FunnelSet> {
    use clickpulse_engine::funnel::FunnelSet;
    Ok(match path {
        Some(path) => FunnelSet::load(path)?,
        None => FunnelSet::default_set(),
    })
}

/// The alert rules of a file, or of a directory's `*.toml` files (in name order).
pub(crate) fn read_alerts(path: &Path) -> Result<Vec<clickpulse_engine::alert::CheckedRule>> {
    let files: Vec<std::path::PathBuf> = if path.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_owned()]
    };
    let mut rules = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let rule = clickpulse_engine::alert::AlertRule::parse(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        if rules
            .iter()
            .any(|r: &clickpulse_engine::alert::CheckedRule| r.rule.name == rule.rule.name)
        {
            anyhow::bail!(
                "{}: a second alert named {:?}",
                file.display(),
                rule.rule.name
            );
        }
        rules.push(rule);
    }
    Ok(rules)
}

pub(crate) fn read_patterns(path: Option<&Path>) -> Result<PatternSet> {
    let set = match path {
        Some(path) => PatternSet::load(path),
        None => PatternSet::parse(bundled::PATTERNS),
    };
    Ok(set?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_log_keeps_the_fingerprint_data_dirs_were_made_with() {
        // The replay refuses a data dir made with another input: this one was written when the
        // bundled copy was gzip, and must still match.
        let input = read_logs(&[], |_| {}).unwrap();
        assert_eq!(
            input.fingerprint,
            "bundled:Omniture.1.tsv.gz,bundled:Omniture.4.tsv.gz (116607 events, 0 malformed)"
        );
    }
}
