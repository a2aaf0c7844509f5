//! `clickpulse backtest`: the pipeline's operators over whole logs, in-process, as fast as
//! possible. It calls the same operator cores as the live stages, without topics in between,
//! so what it reports is what the live pipeline computes.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clickpulse_engine::enrich::EnrichOperator;
use serde_json::{Value, json};

use crate::cli::BacktestArgs;
use crate::inputs;

pub(crate) fn run(args: BacktestArgs) -> Result<ExitCode> {
    let report = backtest(&args)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_summary(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn backtest(args: &BacktestArgs) -> Result<Value> {
    let (lookups, _) = inputs::read_lookups(args.data.as_deref())?;
    let mut dead_letters = match &args.dead_letters_out {
        Some(path) => {
            Some(BufWriter::new(File::create(path).with_context(|| {
                format!("cannot create {}", path.display())
            })?))
        }
        None => None,
    };
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
    let mut enrich = EnrichOperator::new(lookups);
    let mut visitors = HashSet::new();
    let mut known_visitors = HashSet::new();
    for click in input.clicks.iter().cloned() {
        let enriched = enrich.enrich(click);
        if enriched.known_visitor && !known_visitors.contains(enriched.visitor.as_str()) {
            known_visitors.insert(enriched.visitor.clone());
        }
        if !visitors.contains(enriched.visitor.as_str()) {
            visitors.insert(enriched.visitor);
        }
    }
    let elapsed = started.elapsed();
    let counters = enrich.counters();
    let events = counters.events;
    Ok(json!({
        "events": events,
        "malformed": input.malformed.len(),
        "visitors": visitors.len(),
        "known_visitors": known_visitors.len(),
        "unknown_product_events": counters.unknown_product_events,
        "known_visitor_events": counters.known_visitor_events,
        "first_event_ms": input.clicks.first().map(|c| c.ts_ms),
        "last_event_ms": input.clicks.last().map(|c| c.ts_ms),
        "elapsed_ms": elapsed.as_millis() as u64,
        "events_per_second": (events as f64 / elapsed.as_secs_f64().max(1e-9)).round(),
    }))
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
    println!(
        "throughput              {} events/s ({} ms)",
        report["events_per_second"], report["elapsed_ms"]
    );
}
