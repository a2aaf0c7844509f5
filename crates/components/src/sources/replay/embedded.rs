//! The replay on the embedded store: each batch of clicks is committed with the replay's cursor
//! in one transaction, so a restart resumes at the first event not yet published.

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clickpulse_connectors::embedded::runner::{
    REPLAY_AHEAD_BATCHES, RunnerConfig, commit_with_retry, consumer_lag, decode,
};
use clickpulse_connectors::embedded::{CommitBatch, EmbeddedStore, StoreError};
use clickpulse_connectors::replay_cursor::{ReplayCursor, ReplayInput, ReplayOptions};
use clickpulse_engine::codec;
use clickpulse_engine::metrics::StageMetrics;
use clickpulse_engine::replay::{EventClock, Pacer, Speed, wall_clock_ms};
use clickpulse_engine::topics;
use serde_json::json;
use tracing::info;

/// The cursor's state key.
const REPLAY_STATE: &str = "replay/state";

/// The replay's cursor as last committed (`None` before its first commit).
pub fn cursor(store: &EmbeddedStore) -> Result<Option<ReplayCursor>, StoreError> {
    match store.state(REPLAY_STATE)? {
        Some(bytes) => Ok(Some(decode::<ReplayCursor>(REPLAY_STATE, &bytes)?)),
        None => Ok(None),
    }
}

/// The newest event time the replay committed (its last event).
pub fn newest_event_time(store: &EmbeddedStore) -> Result<Option<i64>, StoreError> {
    Ok(cursor(store)?.and_then(|c| c.event_time_ms))
}

/// Replays `input` into `click-data` until it ends (or forever when looping) or `shutdown` is
/// set, keeping `clock` at the replay's event time. The position is committed with each batch,
/// so a restart resumes at the first event not yet published.
pub fn run(
    store: &EmbeddedStore,
    input: &ReplayInput,
    options: ReplayOptions,
    clock: &EventClock,
    metrics: &StageMetrics,
    shutdown: &AtomicBool,
    config: &RunnerConfig,
) -> Result<(), StoreError> {
    let stored = match store.state(REPLAY_STATE)? {
        Some(bytes) => Some(decode::<ReplayCursor>(REPLAY_STATE, &bytes)?),
        None => None,
    };
    let mut state =
        ReplayCursor::resume(stored, input, &options, wall_clock_ms()).map_err(|e| {
            StoreError::ReplayInputChanged {
                stored: e.stored,
                given: e.given,
            }
        })?;
    let plan = state.plan(input, &options);
    let speed = options.speed;
    let rate = match speed {
        Speed::Factor(f) => f,
        Speed::Max => 1.0,
    };
    // Event time never goes back, not across a restart either: the clock resumes at or after
    // the newest event time committed before it (live clicks included).
    let floor = crate::sources::newest_event_time(store)?;
    if let Some(floor) = floor {
        clock.floor(floor);
    }
    // An aligned replay keeps event time in step with the wall clock (at `speed`); otherwise
    // the first event anchors the pace.
    let mut pacer = if state.aligned {
        let wall = wall_clock_ms();
        // At 1× event time is the wall clock; faster, it resumes where it stopped.
        let resume = match (speed, floor) {
            (Speed::Factor(f), Some(floor)) if f != 1.0 => floor,
            (Speed::Max, Some(floor)) => floor,
            (_, floor) => wall.max(floor.unwrap_or(i64::MIN)),
        };
        if floor.is_some() {
            // A restart skips what fell due while the replay was down: publishing it now would
            // put it behind the clock, and behind the live clicks stamped since.
            let skip_to = plan.first_position_at_or_after(&input.clicks, resume);
            if skip_to > state.position {
                info!(
                    from = state.position,
                    to = skip_to,
                    resume_ms = resume,
                    "Replay skips the time it was down."
                );
                state.position = skip_to;
            }
        }
        let now = Instant::now();
        clock.set(resume, now, rate);
        Pacer::anchored(speed, resume, now)
    } else {
        Pacer::new(speed)
    };
    // What the replay has yet to publish starts at its position (see `EventClock::hold`).
    let next_ts = |position: u64| {
        plan.at(position)
            .map(|(index, shift)| input.clicks.ts_ms(index) + shift)
    };
    clock.hold(next_ts(state.position));
    info!(position = state.position, events = plan.len(), %speed, aligned = state.aligned, overlay = options.overlay, "Replay started.");
    // How many times the replay started waiting for its consumers (backpressure).
    let mut held_back: u64 = 0;
    let mut waiting = false;
    let details = |s: &ReplayCursor, pacer: &Pacer, held_back: u64| {
        let mut details = s.details(&plan, pacer.speed());
        details["held_back"] = json!(held_back);
        details["overlay"] = json!(options.overlay);
        details
    };
    metrics.record(
        state.events,
        state.malformed,
        details(&state, &pacer, held_back),
    );
    let ahead = REPLAY_AHEAD_BATCHES * config.batch_size as u64;
    while !shutdown.load(Ordering::Relaxed) {
        let generation = store.append_generation();
        if !config.replay_consumers.is_empty()
            && consumer_lag(store, topics::CLICK_DATA, &config.replay_consumers)? >= ahead
        {
            if !waiting {
                waiting = true;
                held_back += 1;
                metrics.record(
                    state.events,
                    state.malformed,
                    details(&state, &pacer, held_back),
                );
            }
            // Woken by the consumers' commits (they append what they produce).
            store.wait_for_appends(generation, config.idle_wait);
            continue;
        }
        waiting = false;
        let mut batch = CommitBatch::default();
        if !state.dead_letters_written {
            for letter in &input.malformed {
                let value = codec::encode(letter);
                batch.appends.push((
                    topics::DEAD_LETTERS.to_owned(),
                    letter.source.clone(),
                    value,
                ));
            }
            state.malformed = input.malformed.len() as u64;
            state.dead_letters_written = true;
        }
        let due = ReplayCursor::due(
            &plan,
            input,
            &mut pacer,
            state.position,
            config.batch_size.saturating_sub(batch.appends.len()),
            Duration::from_millis(200),
        );
        let (wait, done) = (due.wait, due.done);
        for (_, click) in &due.clicks {
            let value = codec::encode(click);
            state.event_time_ms = Some(click.ts_ms);
            batch.appends.push((
                topics::CLICK_DATA.to_owned(),
                click.visitor.to_owned(),
                value,
            ));
            state.position += 1;
            state.events += 1;
        }
        if !batch.appends.is_empty() {
            batch.state.push((
                REPLAY_STATE.to_owned(),
                Some(serde_json::to_vec(&state).expect("replay state serializes")),
            ));
            commit_with_retry(
                store,
                &batch,
                "replay",
                metrics,
                shutdown,
                Some(config.sync_interval),
            )?;
        }
        if batch.appends.is_empty() || done || wait.is_some() {
            store.sync_if_due(config.sync_interval)?;
        }
        // The clock follows the pacer's anchor while paced, the last event when at max speed.
        match (speed, pacer.anchor()) {
            (Speed::Factor(_), Some((ts, wall))) if !done => clock.set(ts, wall, rate),
            _ if !batch.appends.is_empty() || !metrics.is_done() => {
                if let Some(ts) = state.event_time_ms {
                    clock.set(ts, Instant::now(), rate);
                }
            }
            _ => {}
        }
        clock.hold(next_ts(state.position));
        metrics.record(
            state.events,
            state.malformed,
            details(&state, &pacer, held_back),
        );
        if done {
            if !metrics.is_done() {
                info!(
                    events = state.events,
                    malformed = state.malformed,
                    "Replay reached the end of the log."
                );
            }
            metrics.set_done(true);
            thread::sleep(config.idle_wait);
        } else if let Some(wait) = wait {
            thread::sleep(wait.min(config.idle_wait));
        }
    }
    store.sync()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use clickpulse_connectors::embedded::OffsetCommit;
    use clickpulse_connectors::embedded::runner::{apply_retention, run_operator};
    use clickpulse_engine::click::Click;
    use clickpulse_engine::click_log::ClickLog;
    use clickpulse_engine::enrich::EnrichOperator;
    use clickpulse_engine::lookups::Lookups;
    use clickpulse_engine::metrics::PipelineMetrics;
    use clickpulse_engine::reader::DeadLetter;

    use super::*;

    /// Polls `done` until it holds. The limit only guards against a hang on a broken build
    /// (minutes, never a measure of speed).
    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let guard = Instant::now() + Duration::from_secs(300);
        while !done() {
            assert!(
                Instant::now() < guard,
                "hang guard: waited 5 minutes for {what}"
            );
            thread::sleep(Duration::from_millis(2));
        }
    }

    fn click(i: i64) -> Click {
        Click::new(
            1_000 * i,
            format!("visitor-{}", i % 3),
            "http://www.acme.com/",
        )
    }

    #[test]
    fn the_replay_waits_while_its_consumers_are_four_batches_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), &[(topics::CLICK_DATA, 2)]).unwrap();
        let input = ReplayInput {
            clicks: ClickLog::from_clicks(&(0..40).map(click).collect::<Vec<_>>()),
            malformed: vec![],
            fingerprint: "test".to_owned(),
        };
        let metrics = PipelineMetrics::default();
        let shutdown = AtomicBool::new(false);
        let config = RunnerConfig {
            batch_size: 3,
            idle_wait: Duration::from_millis(5),
            replay_consumers: vec!["enrich"],
            ..RunnerConfig::default()
        };
        let options = ReplayOptions {
            speed: Speed::Max,
            loop_forever: false,
            align_warmup_ms: None,
            overlay: false,
        };
        let published = |s: &EmbeddedStore| -> u64 {
            (0..2).map(|p| s.end_offset(topics::CLICK_DATA, p)).sum()
        };
        let replay = metrics.stage("replay");
        thread::scope(|s| {
            s.spawn(|| {
                let clock = EventClock::default();
                run(&store, &input, options, &clock, &replay, &shutdown, &config).unwrap()
            });
            // The replay says when it starts waiting for its consumers: the signal, not a pause.
            let held_back = |n: u64| {
                wait_until("the replay to wait for its consumers", || {
                    replay.snapshot().details["held_back"].as_u64() >= Some(n)
                })
            };
            // Nobody consumes: four batches of three, then the replay waits.
            held_back(1);
            assert_eq!(published(&store), 12);
            // "enrich" commits its position: the replay goes on to four batches past it.
            let offsets = (0..2)
                .map(|p| OffsetCommit {
                    group: "enrich".to_owned(),
                    topic: topics::CLICK_DATA.to_owned(),
                    partition: p,
                    next_offset: store.end_offset(topics::CLICK_DATA, p),
                })
                .collect();
            store
                .commit(&CommitBatch {
                    offsets,
                    ..CommitBatch::default()
                })
                .unwrap();
            held_back(2);
            assert_eq!(published(&store), 24);
            assert!(!replay.is_done());
            shutdown.store(true, Ordering::SeqCst);
        });
    }

    #[test]
    fn replay_and_enrich_run_to_the_end_then_retention_trims_what_was_consumed() {
        let dir = tempfile::tempdir().unwrap();
        let layout = [
            (topics::CLICK_DATA, 2),
            (topics::ENRICHED_CLICK_DATA, 2),
            (topics::DEAD_LETTERS, 1),
        ];
        let store = Arc::new(EmbeddedStore::open(dir.path(), &layout).unwrap());
        let input = ReplayInput {
            clicks: ClickLog::from_clicks(&(0..10).map(click).collect::<Vec<_>>()),
            malformed: vec![DeadLetter::new("x.tsv", 3, "bad", b"raw")],
            fingerprint: "test".to_owned(),
        };
        let metrics = PipelineMetrics::default();
        let shutdown = AtomicBool::new(false);
        let config = RunnerConfig {
            batch_size: 3,
            idle_wait: Duration::from_millis(5),
            ..RunnerConfig::default()
        };
        let options = ReplayOptions {
            speed: Speed::Max,
            loop_forever: false,
            align_warmup_ms: None,
            overlay: false,
        };
        let clock = EventClock::default();
        let (replay, enrich) = (metrics.stage("replay"), metrics.stage("enrich"));
        thread::scope(|s| {
            s.spawn(|| run(&store, &input, options, &clock, &replay, &shutdown, &config).unwrap());
            s.spawn(|| {
                run_operator(
                    &store,
                    EnrichOperator::new(Lookups::default()),
                    &enrich,
                    &shutdown,
                    &config,
                )
                .unwrap()
            });
            wait_until("the pipeline to finish", || enrich.events() >= 10);
            shutdown.store(true, Ordering::SeqCst);
        });
        assert!(replay.is_done());
        let enriched: u64 = (0..2)
            .map(|p| store.end_offset(topics::ENRICHED_CLICK_DATA, p))
            .sum();
        assert_eq!(enriched, 10);
        assert_eq!(store.end_offset(topics::DEAD_LETTERS, 0), 1);
        // Everything was consumed by enrich; each partition keeps only its last record.
        assert_eq!(
            apply_retention(&store, topics::CLICK_DATA, &["enrich"], 0).unwrap(),
            8
        );
        // A group that has read nothing holds everything back.
        assert_eq!(
            apply_retention(&store, topics::ENRICHED_CLICK_DATA, &["nobody"], 0).unwrap(),
            0
        );
    }
}
