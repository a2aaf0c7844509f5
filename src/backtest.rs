//! `clickpulse backtest`: the pipeline's operators over whole logs, in-process, as fast as
//! possible. It calls the same operator cores as the live stages, without topics in between,
//! so what it reports is what the live pipeline computes.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clickpulse_engine::enrich::{EnrichOperator, LogMemo, event_date};
use clickpulse_engine::pattern::{DetectOperator, Offer, PatternRegistry};
use clickpulse_engine::window::DashboardAggregator;
use clickpulse_engine::window::DashboardSnapshot;
use clickpulse_engine::window::dashboard::DashboardConfig;
use serde::Serialize;

use crate::cli::BacktestArgs;
use crate::inputs;
use crate::status::thousands;

pub(crate) fn run(args: BacktestArgs) -> Result<ExitCode> {
    let (report, offers) = backtest(&args)?;
    if let Some(path) = &args.offers_out {
        write_offers(path, &offers)?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_summary(&report, args.until);
    }
    Ok(ExitCode::SUCCESS)
}

/// What a backtest reports: `--json` prints it (its fields in this order, alphabetical), and
/// chaos compares live runs with it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BacktestReport {
    /// Per pattern: who could get its offer and who got one.
    pub(crate) audience: BTreeMap<String, Audience>,
    /// With `--alerts`: each rule's firings and resolutions, in event time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) alerts: Option<Vec<clickpulse_engine::alert::AlertEvent>>,
    /// The dashboard's snapshot at the end (or as of `--until`).
    pub(crate) dashboard: DashboardSnapshot,
    /// Wall time of the run, without reading the lookups and patterns.
    pub(crate) elapsed_ms: u64,
    /// Events read.
    pub(crate) events: u64,
    /// Events per second of wall time.
    pub(crate) events_per_second: f64,
    /// The log's first event time.
    pub(crate) first_event_ms: Option<i64>,
    /// Each funnel over the whole log: visitors whose session reached each step, and the
    /// median time from the step before.
    pub(crate) funnels: Vec<clickpulse_engine::window::snapshot::FunnelResult>,
    /// Events of visitors the users lookup knows.
    pub(crate) known_visitor_events: u64,
    /// Distinct visitors the users lookup knows.
    pub(crate) known_visitors: usize,
    /// The log's last event time.
    pub(crate) last_event_ms: Option<i64>,
    /// Events the windows counted as late.
    pub(crate) late_events: u64,
    /// Rows that could not be read.
    pub(crate) malformed: usize,
    /// Offers made.
    pub(crate) offers: usize,
    /// Offers per pattern.
    pub(crate) offers_by_pattern: BTreeMap<String, u64>,
    /// Offers per UTC day of their event time.
    pub(crate) offers_per_day: BTreeMap<String, u64>,
    /// Offers a pattern's limits held back.
    pub(crate) offers_suppressed: u64,
    /// Events whose product the catalogue does not know.
    pub(crate) unknown_product_events: u64,
    /// Distinct visitors.
    pub(crate) visitors: usize,
}

/// One pattern's audience in a [`BacktestReport`] (fields alphabetical, as printed).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Audience {
    /// Visitors who could get its offer.
    pub(crate) audience_visitors: usize,
    /// The visitors who got it as a share of the audience (4 decimals).
    pub(crate) share: f64,
    /// Visitors who got it.
    pub(crate) visitors_with_offer: usize,
}

/// The report and every offer, sorted by (ts_ms, visitor, offer_id).
pub(crate) fn backtest(args: &BacktestArgs) -> Result<(BacktestReport, Vec<Offer>)> {
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
    let funnels = inputs::read_funnels(args.funnels.as_deref())?;
    let mut dashboard = DashboardAggregator::new(DashboardConfig::default(), Instant::now())
        .sliding_windows_on_read()
        .with_funnels(clickpulse_engine::funnel::FunnelRegistry::new(funnels))
        .with_funnel_totals();
    let mut alerts = match &args.alerts {
        Some(path) => Some((
            clickpulse_engine::alert::AlertEvaluator::new(inputs::read_alerts(path)?),
            None::<i64>,
            Vec::new(),
        )),
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
    let input = if args.interactions {
        inputs::with_interactions(input)?
    } else {
        input
    };
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
        let click = log.get(i);
        if let Some((evaluator, minute, events)) = alerts.as_mut() {
            judge_minutes(&mut dashboard, evaluator, minute, events, click.ts_ms);
        }
        // As live: an identify event links its visitor and goes no further; a linked visitor's
        // events are enriched with its user's record (outside the memo, which is by visitor).
        if let Some(user) = clickpulse_engine::event::identified_user(click.event, click.detail) {
            enrich.link(click.visitor, user);
            continue;
        }
        let linked;
        let enriched = if enrich.linked_user(click.visitor).is_some() {
            linked = enrich.enrich_ref(&click);
            linked.borrowed()
        } else {
            enrich.enrich_logged_ref(&mut memo, i)
        };
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
    // With --until, the minutes up to it are judged too; without, the log's last minute is
    // not (live, it would still be open), and the dashboard ends as it would without alerts.
    if let (Some((evaluator, minute, events)), Some(t)) = (alerts.as_mut(), args.until) {
        judge_minutes(
            &mut dashboard,
            evaluator,
            minute,
            events,
            t.saturating_add(JUDGE_AFTER_MS),
        );
    }
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
    let audience = detect
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
                Audience {
                    audience_visitors: in_audience,
                    visitors_with_offer: offered,
                    share: (share * 10_000.0).round() / 10_000.0,
                },
            )
        })
        .collect();
    let detect_stats = detect.counters();
    let counters = enrich.counters();
    let events = counters.events;
    let report = BacktestReport {
        alerts: alerts.map(|(_, _, events)| events),
        dashboard: dashboard.snapshot(),
        late_events: dashboard.counters().1,
        offers: offers.len(),
        offers_by_pattern: detect_stats.offers_by_pattern.clone(),
        offers_suppressed: detect_stats.offers_suppressed,
        offers_per_day,
        audience,
        events,
        malformed,
        visitors: count(SEEN),
        known_visitors: count(KNOWN),
        unknown_product_events: counters.unknown_product_events,
        known_visitor_events: counters.known_visitor_events,
        first_event_ms,
        funnels: dashboard.funnel_totals(),
        last_event_ms,
        elapsed_ms: elapsed.as_millis() as u64,
        events_per_second: (events as f64 / elapsed.as_secs_f64().max(1e-9)).round(),
    };
    Ok((report, offers))
}

/// How far past a minute's end the log must be before the minute is judged: the dashboard's
/// watermark moves in whole seconds, and an event at or before the watermark that arrives after
/// it moved would count as late, so every event of the second that starts the next minute is in
/// first.
const JUDGE_AFTER_MS: i64 = 1_000;

/// Judges every whole minute of event time that ends [`JUDGE_AFTER_MS`] or more before `ts_ms`
/// and was not judged yet: the dashboard's watermark moves to the minute's end (the log is in
/// time order, so the minute is final), and the rules take the snapshot.
fn judge_minutes(
    dashboard: &mut DashboardAggregator,
    evaluator: &mut clickpulse_engine::alert::AlertEvaluator,
    minute: &mut Option<i64>,
    events: &mut Vec<clickpulse_engine::alert::AlertEvent>,
    ts_ms: i64,
) {
    let this = ts_ms.div_euclid(60_000) * 60_000;
    let Some(mut current) = *minute else {
        *minute = Some(this);
        return;
    };
    while current + 60_000 + JUDGE_AFTER_MS <= ts_ms {
        dashboard.advance_to(current + 60_000);
        events.extend(evaluator.minute(current, &dashboard.snapshot()));
        current += 60_000;
    }
    *minute = Some(current);
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

/// The human summary (without `--json`): the log's counts, then per pattern its audience (the
/// visitors who could get its offer), the share of them who got one, and its offers per day of
/// the log replayed (up to `until`).
fn print_summary(report: &BacktestReport, until: Option<i64>) {
    println!("events                  {}", report.events);
    println!("malformed rows          {}", report.malformed);
    println!("distinct visitors       {}", report.visitors);
    println!("  with a users record   {}", report.known_visitors);
    println!("unknown-product events  {}", report.unknown_product_events);
    let days = log_days(
        report.first_event_ms,
        report
            .last_event_ms
            .map(|last| until.map_or(last, |t| last.min(t))),
    );
    let per_day = |n: u64| n as f64 / days.max(1) as f64;
    let offers = report.offers as u64;
    println!(
        "offers                  {} ({:.1} per day over {days} day(s) of events)",
        thousands(offers),
        per_day(offers)
    );
    for (pattern, a) in &report.audience {
        let n = report.offers_by_pattern.get(pattern).copied().unwrap_or(0);
        println!("  {pattern}");
        println!(
            "    audience            {} visitors",
            thousands(a.audience_visitors as u64)
        );
        println!(
            "    got an offer        {} visitors ({:.2}% of the audience)",
            thousands(a.visitors_with_offer as u64),
            a.share * 100.0
        );
        println!(
            "    offers              {} ({:.1} per day)",
            thousands(n),
            per_day(n)
        );
    }
    if let Some(alerts) = &report.alerts {
        println!("alert transitions       {}", alerts.len());
        for a in alerts {
            let at = chrono::DateTime::from_timestamp_millis(a.ts_ms).map_or_else(
                || a.ts_ms.to_string(),
                |t| t.format("%Y-%m-%d %H:%M UTC").to_string(),
            );
            let against = a
                .against
                .map_or(String::new(), |v| format!(" (against {v})"));
            println!("  {at}  {} {}: {}{against}", a.alert, a.state, a.value);
        }
    }
    println!(
        "throughput              {} events/s ({} ms)",
        report.events_per_second, report.elapsed_ms
    );
}

/// How many calendar days (UTC) the events from `first` to `last` span; 0 without events.
fn log_days(first: Option<i64>, last: Option<i64>) -> i64 {
    match (first.and_then(event_date), last.and_then(event_date)) {
        (Some(first), Some(last)) if last >= first => (last - first).num_days() + 1,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::{log_days, thousands};

    #[test]
    fn summary_figures_are_formatted_for_people() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_601), "1,601");
        assert_eq!(thousands(116_607), "116,607");
        assert_eq!(thousands(1_000_000), "1,000,000");
        // 2012-03-01 08:00 to 2012-03-01 23:00: one day; to 2012-03-16: sixteen.
        assert_eq!(
            log_days(Some(1_330_588_800_000), Some(1_330_642_800_000)),
            1
        );
        assert_eq!(
            log_days(Some(1_330_588_800_000), Some(1_331_881_176_000)),
            16
        );
        assert_eq!(log_days(None, None), 0);
    }
}
