//! `clickpulse backtest`: the pipeline's operators over whole logs, in-process, as fast as
//! possible. It calls the same operator cores as the live stages, without topics in between,
//! so what it reports is what the live pipeline computes.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clickpulse_engine::enrich::{EnrichOperator, LogMemo, event_date};
use clickpulse_engine::pattern::{DetectOperator, Offer, PatternRegistry};
use clickpulse_engine::window::DashboardAggregator;
use clickpulse_engine::window::dashboard::DashboardConfig;
use serde_json::{Value, json};

use crate::cli::BacktestArgs;
use crate::inputs;

pub(crate) fn run(args: BacktestArgs) -> Result<ExitCode> {
    let (report, offers) = backtest(&args)?;
    if let Some(path) = &args.offers_out {
        write_offers(path, &offers)?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_summary(&report);
    }
    Ok(ExitCode::SUCCESS)
}

/// The report (as printed by `--json`) and every offer, sorted by (ts_ms, visitor, offer_id).
pub(crate) fn backtest(args: &BacktestArgs) -> Result<(Value, Vec<Offer>)> {
    let (lookups, _) = inputs::read_lookups(args.data.as_deref())?;
    let patterns = inputs::read_patterns(args.patterns.as_deref())?;
    let mut dead_letters = match &args.dead_letters_out {
        Some(path) => {
            Some(BufWriter::new(File::create(path).with_context(|| {
                format!("cannot create {}", path.display())
            })?))
        }
        None => None,
    };
    // Setup, before the clock starts: the operators (the enricher's user-agent parser compiles
    // its regular expressions here), like the lookups and patterns above.
    let mut enrich = EnrichOperator::new(lookups);
    let mut detect = DetectOperator::new(PatternRegistry::new(patterns))
        .with_audience_tracking()
        .without_checkpoints();
    let mut dashboard =
        DashboardAggregator::new(DashboardConfig::default()).sliding_windows_on_read();
    let mut write_error = None;
    let started = Instant::now();
    let input = inputs::read_logs(&args.logs, |letter| {
        if let Some(out) = dead_letters.as_mut()
            && let Err(e) = serde_json::to_writer(&mut *out, letter)
                .map_err(std::io::Error::from)
                .and_then(|()| out.write_all(b"\n"))
        {
            write_error.get_or_insert(e);
        }
    })?;
    if let Some(e) = write_error {
        return Err(e).context("cannot write dead letters");
    }
    if let Some(mut out) = dead_letters {
        out.flush().context("cannot write dead letters")?;
    }
    let wall = Instant::now();
    let mut offers: Vec<Offer> = Vec::new();
    // Per distinct visitor of the log (its dense ids): seen, and seen with a users record.
    const SEEN: u8 = 1;
    const KNOWN: u8 = 2;
    let log = &input.clicks;
    let mut visitor_flags = vec![0u8; log.distinct_visitors()];
    let until = args.until.unwrap_or(i64::MAX);
    let (first_event_ms, last_event_ms) = (log.first_ts_ms(), log.last_ts_ms());
    let malformed = input.malformed.len();
    let mut memo = LogMemo::new(log);
    for i in 0..log.first_at_or_after(until.saturating_add(1)) {
        let enriched = enrich.enrich_logged_ref(&mut memo, i);
        let new_offers = detect.detect_ref(&enriched);
        let known = enriched.known_visitor;
        dashboard.on_click_ref(0, &enriched, wall);
        for offer in &new_offers {
            dashboard.on_offer(offer);
        }
        offers.extend(new_offers);
        if i % 4096 == 0 {
            dashboard.tick(wall); // keeps the window state bounded on long logs
        }
        visitor_flags[log.visitor_id(i) as usize] |= if known { SEEN | KNOWN } else { SEEN };
    }
    let count = |flag: u8| visitor_flags.iter().filter(|&&f| f & flag != 0).count();
    match args.until {
        Some(t) => dashboard.advance_to(t),
        None => dashboard.flush(),
    };
    let elapsed = started.elapsed();
    offers.sort_by(|a, b| {
        (a.ts_ms, &a.visitor, &a.offer_id).cmp(&(b.ts_ms, &b.visitor, &b.offer_id))
    });
    let mut offers_per_day = std::collections::BTreeMap::new();
    for o in &offers {
        let day = event_date(o.ts_ms).map_or_else(|| "invalid".to_owned(), |d| d.to_string());
        *offers_per_day.entry(day).or_insert(0u64) += 1;
    }
    let audience: serde_json::Map<String, Value> = detect
        .audience_counts()
        .into_iter()
        .map(|(pattern, (in_audience, offered))| {
            let share = if in_audience == 0 {
                0.0
            } else {
                offered as f64 / in_audience as f64
            };
            (
                pattern,
                json!({
                    "audience_visitors": in_audience,
                    "visitors_with_offer": offered,
                    "share": (share * 10_000.0).round() / 10_000.0,
                }),
            )
        })
        .collect();
    let detect_stats = detect.counters();
    let counters = enrich.counters();
    let events = counters.events;
    let report = json!({
        "dashboard": dashboard.snapshot(),
        "late_events": dashboard.counters().1,
        "offers": offers.len(),
        "offers_by_pattern": detect_stats.offers_by_pattern,
        "offers_suppressed": detect_stats.offers_suppressed,
        "offers_per_day": offers_per_day,
        "audience": audience,
        "events": events,
        "malformed": malformed,
        "visitors": count(SEEN),
        "known_visitors": count(KNOWN),
        "unknown_product_events": counters.unknown_product_events,
        "known_visitor_events": counters.known_visitor_events,
        "first_event_ms": first_event_ms,
        "last_event_ms": last_event_ms,
        "elapsed_ms": elapsed.as_millis() as u64,
        "events_per_second": (events as f64 / elapsed.as_secs_f64().max(1e-9)).round(),
    });
    Ok((report, offers))
}

fn write_offers(path: &std::path::Path, offers: &[Offer]) -> Result<()> {
    let mut out = BufWriter::new(
        File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
    );
    for offer in offers {
        serde_json::to_writer(&mut out, offer)?;
        out.write_all(b"\n")?;
    }
    out.flush()
        .with_context(|| format!("cannot write {}", path.display()))
}

fn print_summary(report: &Value) {
    println!("events                  {}", report["events"]);
    println!("malformed rows          {}", report["malformed"]);
    println!("distinct visitors       {}", report["visitors"]);
    println!("  with a users record   {}", report["known_visitors"]);
    println!(
        "unknown-product events  {}",
        report["unknown_product_events"]
    );
    println!("offers                  {}", report["offers"]);
    if let Some(by) = report["offers_by_pattern"].as_object() {
        for (pattern, n) in by {
            let a = &report["audience"][pattern];
            println!(
                "  {pattern:<38} {n} ({} of {} audience visitors)",
                a["visitors_with_offer"], a["audience_visitors"]
            );
        }
    }
    println!(
        "throughput              {} events/s ({} ms)",
        report["events_per_second"], report["elapsed_ms"]
    );
}
