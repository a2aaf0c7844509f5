//! `clickpulse bench`: benchmarks that print their figures (never timed assertions in tests).
//! Each prints a human summary and one `bench <name>: key=value …` line a script can read.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use clickpulse_engine::click::{Device, EnrichedClick, Gender};
use clickpulse_engine::pattern::{DetectOperator, PatternRegistry};
use clickpulse_engine::reader;
use clickpulse_engine::window::DashboardAggregator;
use clickpulse_engine::window::dashboard::DashboardConfig;

use crate::cli::{BenchArgs, BenchCommand};
use crate::inputs;

pub(crate) fn run(args: BenchArgs) -> Result<ExitCode> {
    match args.command {
        BenchCommand::Patterns { visitors } => patterns(visitors),
        BenchCommand::Windows { visitors, events } => windows(visitors, events),
        BenchCommand::Backtest { logs, runs } => backtest(&logs, runs),
        BenchCommand::Collector(args) => crate::bench_collector::run(args),
    }
}

/// Resident set size of this process in bytes (Linux), for memory-per-item figures.
pub(crate) fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn view(visitor: &str, ts_ms: i64, product: &Arc<str>, category: &Arc<str>) -> EnrichedClick {
    EnrichedClick {
        ts_ms,
        visitor: visitor.to_owned(),
        ip: String::new(),
        url: String::new(),
        product_id: product.clone(),
        category: category.clone(),
        title: product.clone(),
        known_visitor: true,
        gender: Gender::F,
        age: Some(30),
        country: Arc::from("usa"),
        city: None,
        region: None,
        device: Device::Desktop,
        event: clickpulse_engine::event::EventType::PageView,
        detail: None,
    }
}

/// Memory per visitor in pattern state and detection throughput, with the seed patterns.
fn patterns(visitors: usize) -> Result<ExitCode> {
    let set = inputs::read_patterns(None)?;
    let mut detect = DetectOperator::new(PatternRegistry::new(set)).without_checkpoints();
    let (clothing, shoes) = (Arc::from("clothing"), Arc::from("shoes"));
    let products: Vec<Arc<str>> = (0..8).map(|i| Arc::from(format!("P{i}"))).collect();
    let names: Vec<String> = (0..visitors)
        .map(|i| format!("{i:08X}-0000-4000-8000-000000000000"))
        .collect();

    // Every visitor starts a match in both seed patterns.
    let before = rss_bytes().unwrap_or(0);
    let started = Instant::now();
    for (i, name) in names.iter().enumerate() {
        detect.detect(&view(
            name,
            1_000_000 + i as i64,
            &products[i % 4],
            &clothing,
        ));
    }
    let start_secs = started.elapsed().as_secs_f64();
    let active = detect.active_visitors();
    let after = rss_bytes().unwrap_or(0);
    let per_active = after.saturating_sub(before) as f64 / active.max(1) as f64;

    // A steady mixed stream: shoes and clothing views across the same visitors.
    let started = Instant::now();
    let mut events = 0u64;
    for round in 0..3 {
        for (i, name) in names.iter().enumerate() {
            let category = if (i + round) % 2 == 0 {
                &shoes
            } else {
                &clothing
            };
            detect.detect(&view(
                name,
                2_000_000 + (round * visitors + i) as i64,
                &products[(i + round) % 8],
                category,
            ));
            events += 1;
        }
    }
    let mixed_secs = started.elapsed().as_secs_f64();

    // Two hours later every match has expired; one more view per visitor (a handbag, which
    // starts nothing) leaves them idle, and idle visitors keep no state at all.
    let handbags: Arc<str> = Arc::from("handbags");
    for name in &names {
        detect.detect(&view(name, 10_000_000_000, &products[0], &handbags));
    }
    let idle_entries = detect.active_visitors();

    let rate = (visitors as f64 + events as f64) / (start_secs + mixed_secs);
    println!("visitors                      {visitors}");
    println!("active visitors (2 patterns)  {active}");
    println!(
        "memory per active visitor     {per_active:.0} bytes (RSS delta, both seed patterns, hash map included)"
    );
    println!("visitors holding state once idle: {idle_entries} (an idle visitor costs 0 bytes)");
    println!("detection throughput          {rate:.0} events/s (one core)");
    println!(
        "bench patterns: visitors={visitors} active_visitor_bytes={per_active:.0} idle_visitor_bytes=0 idle_entries={idle_entries} detect_events_per_second={rate:.0}"
    );
    Ok(ExitCode::SUCCESS)
}

/// Dashboard aggregation throughput, and window state for `visitors` distinct visitors all
/// active within the last 30 minutes (so every distinct-visitor window holds all of them).
fn windows(visitors: usize, events: usize) -> Result<ExitCode> {
    let mut agg = DashboardAggregator::new(DashboardConfig::default(), Instant::now());
    let wall = Instant::now();
    let products: Vec<Arc<str>> = (0..31).map(|i| Arc::from(format!("VD{i:08}"))).collect();
    let categories: Vec<Arc<str>> = ["clothing", "shoes", "handbags", "books"]
        .iter()
        .map(|c| Arc::from(*c))
        .collect();
    let names: Vec<String> = (0..visitors)
        .map(|i| format!("{i:08X}-0000-4000-8000-000000000000"))
        .collect();
    let start_ms = 1_331_000_000_000i64;
    // Spread the views over 25 minutes of event time.
    let span_ms = 25 * 60_000i64;
    let before = rss_bytes().unwrap_or(0);
    let started = Instant::now();
    for i in 0..events {
        let ts = start_ms + (i as i64 * span_ms) / events as i64;
        let mut click = view(
            &names[i % visitors],
            ts,
            &products[i % 31],
            &categories[i % 4],
        );
        click.device = [Device::Desktop, Device::Mobile, Device::Tablet, Device::Bot][i % 4];
        agg.on_click((i % 4) as u32, click, wall);
        if i % 4096 == 0 {
            agg.tick(wall);
        }
    }
    agg.flush();
    let secs = started.elapsed().as_secs_f64();
    let snapshot = agg.snapshot();
    let after = rss_bytes().unwrap_or(0);
    let state = after.saturating_sub(before);
    let rate = events as f64 / secs;
    println!("events                         {events}");
    println!(
        "distinct visitors              {visitors} (active_visitors_30m = {})",
        snapshot.active_visitors_30m
    );
    println!("aggregation throughput         {rate:.0} events/s (one core, all dashboard windows)");
    println!(
        "window state                   {:.1} MiB ({:.0} bytes per distinct visitor, RSS delta)",
        state as f64 / 1048576.0,
        state as f64 / visitors as f64
    );
    let sessions = agg.open_sessions();
    let session_bytes = agg.session_checkpoint_bytes() as f64 / sessions.max(1) as f64;
    println!(
        "open sessions                  {sessions} ({session_bytes:.0} bytes each as checkpointed, JSON with its key; in the state above)"
    );
    println!(
        "bench windows: events={events} visitors={visitors} aggregate_events_per_second={rate:.0} state_bytes={state} state_bytes_per_visitor={:.0} open_sessions={sessions} session_checkpoint_bytes={session_bytes:.0}",
        state as f64 / visitors as f64
    );
    Ok(ExitCode::SUCCESS)
}

/// The backtest pipeline, phase by phase, on one core: read (decompress, parse, sort), enrich,
/// detect (both seed patterns), aggregate (every dashboard window). Median of `runs`.
fn backtest(logs: &[std::path::PathBuf], runs: usize) -> Result<ExitCode> {
    use clickpulse_engine::enrich::EnrichOperator;
    let (lookups, _) = inputs::read_lookups(None)?;
    let patterns = inputs::read_patterns(None)?;
    let mut results: Vec<[f64; 5]> = Vec::new();
    let mut events = 0usize;
    for _ in 0..runs.max(1) {
        // Setup, outside the timings: the operators, as `clickpulse backtest` builds them.
        let mut enrich = EnrichOperator::new(lookups.clone());
        let mut detect =
            DetectOperator::new(PatternRegistry::new(patterns.clone())).without_checkpoints();
        let mut agg = DashboardAggregator::new(DashboardConfig::default(), Instant::now())
            .sliding_windows_on_read()
            .with_funnels(clickpulse_engine::funnel::FunnelRegistry::new(
                inputs::read_funnels(None)?,
            ));
        let t = Instant::now();
        let input = inputs::read_logs(logs, |_| {})?;
        let read = t.elapsed().as_secs_f64();
        events = input.clicks.len();
        let t = Instant::now();
        let enriched: Vec<_> = (0..events)
            .map(|i| enrich.enrich_ref(&input.clicks.get(i)))
            .collect();
        let enrich_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut offers = 0usize;
        for c in &enriched {
            offers += detect.detect(c).len();
        }
        let detect_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        // As `clickpulse backtest` runs it: one snapshot, at the end.
        let wall = Instant::now();
        for (i, c) in enriched.into_iter().enumerate() {
            agg.on_click(0, c, wall);
            if i % 4096 == 0 {
                agg.tick(wall);
            }
        }
        agg.flush();
        let aggregate_s = t.elapsed().as_secs_f64();
        std::hint::black_box((offers, agg.snapshot()));
        results.push([
            read,
            enrich_s,
            detect_s,
            aggregate_s,
            read + enrich_s + detect_s + aggregate_s,
        ]);
    }
    let median = |k: usize| {
        let mut v: Vec<f64> = results.iter().map(|r| r[k]).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let rate = |secs: f64| events as f64 / secs.max(1e-9);
    let names = [
        "read+parse+sort",
        "enrich",
        "detect",
        "aggregate",
        "whole pipeline",
    ];
    println!(
        "events: {events}, median of {} runs, one core",
        results.len()
    );
    for (k, name) in names.iter().enumerate() {
        println!(
            "  {name:<16} {:>9.0} ms {:>12.0} events/s",
            median(k) * 1000.0,
            rate(median(k))
        );
    }
    // What `clickpulse backtest` does: read and sort, then every click through enrich, detect
    // and aggregate in turn (no intermediate collections), plus its report.
    let mut end_to_end: Vec<f64> = Vec::new();
    for _ in 0..runs.max(1) {
        let args = crate::cli::BacktestArgs {
            logs: logs.to_vec(),
            data: None,
            until: None,
            patterns: None,
            alerts: None,
            funnels: None,
            interactions: false,
            offers_out: None,
            json: true,
            dead_letters_out: None,
        };
        let t = Instant::now();
        std::hint::black_box(crate::backtest::backtest(&args)?);
        end_to_end.push(t.elapsed().as_secs_f64());
    }
    end_to_end.sort_by(f64::total_cmp);
    let backtest_s = end_to_end[end_to_end.len() / 2];
    let processing = median(1) + median(2) + median(3);
    println!(
        "  {:<16} {:>9.0} ms {:>12.0} events/s (enrich + detect + aggregate, input in memory)",
        "operators",
        processing * 1000.0,
        rate(processing)
    );
    println!(
        "  {:<16} {:>9.0} ms {:>12.0} events/s (`clickpulse backtest`: read + sort, then each click through every operator in turn)",
        "backtest",
        backtest_s * 1000.0,
        rate(backtest_s)
    );
    // The floor under the read phase: the same bytes inflated, and inflated with each row and
    // its first 53 columns found, by the same decompressors and the same tab finder.
    let mut floors: Vec<(f64, f64)> = Vec::new();
    for _ in 0..runs.max(1) {
        floors.push(read_floor(logs)?);
    }
    let floor_median = |pick: fn(&(f64, f64)) -> f64| {
        let mut v: Vec<f64> = floors.iter().map(pick).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (inflate_s, locate_s) = (floor_median(|f| f.0), floor_median(|f| f.1));
    println!(
        "  {:<16} {:>9.0} ms {:>12.0} events/s (floor: decompression alone)",
        "inflate",
        inflate_s * 1000.0,
        rate(inflate_s)
    );
    println!(
        "  {:<16} {:>9.0} ms {:>12.0} events/s (floor: decompression + each row and its first 53 columns found, nothing checked, parsed or kept)",
        "locate columns",
        locate_s * 1000.0,
        rate(locate_s)
    );
    println!(
        "bench backtest: events={events} read_eps={:.0} enrich_eps={:.0} detect_eps={:.0} aggregate_eps={:.0} operators_eps={:.0} total_eps={:.0} backtest_eps={:.0} inflate_eps={:.0} locate_eps={:.0}",
        rate(median(0)),
        rate(median(1)),
        rate(median(2)),
        rate(median(3)),
        rate(processing),
        rate(median(4)),
        rate(backtest_s),
        rate(inflate_s),
        rate(locate_s)
    );
    Ok(ExitCode::SUCCESS)
}

/// Seconds to inflate `logs` (the bundled log if none) on one core, and to inflate them while
/// finding each row's first 53 columns: the least reading them can cost.
fn read_floor(logs: &[std::path::PathBuf]) -> Result<(f64, f64)> {
    use std::io::{BufRead, Read};
    let sources = || -> Result<Vec<Box<dyn Read + Send>>> {
        if logs.is_empty() {
            return Ok(crate::bundled::LOGS
                .iter()
                .map(|&(_, bytes)| Box::new(bytes) as Box<dyn Read + Send>)
                .collect());
        }
        logs.iter()
            .map(|p| {
                std::fs::File::open(p)
                    .map(|f| Box::new(f) as Box<dyn Read + Send>)
                    .with_context(|| format!("cannot open {}", p.display()))
            })
            .collect()
    };
    let opened = sources()?;
    let t = Instant::now();
    let mut inflated = 0usize;
    for source in opened {
        let mut input = reader::decompress(source)?;
        loop {
            let n = input.fill_buf()?.len();
            if n == 0 {
                break;
            }
            inflated += n;
            input.consume(n);
        }
    }
    let inflate = t.elapsed().as_secs_f64();
    let opened = sources()?;
    let t = Instant::now();
    let mut located = 0u64;
    for source in opened {
        located += reader::tsv::locate_columns(reader::decompress(source)?)?.bytes;
    }
    let locate = t.elapsed().as_secs_f64();
    std::hint::black_box((inflated, located));
    Ok((inflate, locate))
}
