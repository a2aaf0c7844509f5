//! The replay's cursor, once for both runtimes: where in the log it is, how the log is laid
//! onto the present, and which clicks are due next. The embedded runner commits it with the
//! clicks in one transaction; the distributed one saves it in Redis once the brokers have
//! acknowledged them.

use std::time::{Duration, Instant};

use clickpulse_engine::click::ClickRef;
use clickpulse_engine::replay::{Pacer, ReplayPlan, Speed};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use clickpulse_engine::click_log::ClickLog;
use clickpulse_engine::reader::DeadLetter;
#[cfg(doc)]
use clickpulse_engine::replay::overlay_days;

/// What the replay stage replays: the log sorted by event time, the rows that could not be read,
/// and a fingerprint naming the input so a data dir is never resumed on another log.
#[derive(Debug, Clone)]
pub struct ReplayInput {
    /// Valid clicks in event-time order.
    pub clicks: ClickLog,
    /// Rows that could not be read.
    pub malformed: Vec<DeadLetter>,
    /// Identifies the input (file names, sizes, counts).
    pub fingerprint: String,
}

/// How a replay runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplayOptions {
    /// N× real time, or as fast as possible.
    pub speed: Speed,
    /// Start over (shifted by the log's span in whole days) at the end.
    pub loop_forever: bool,
    /// On first start, align the log with the present: shift it by whole days so today's time of
    /// day falls on its first day, and start this many milliseconds before now (filling the
    /// dashboard's windows at once). `None` replays the original timestamps from the start.
    pub align_warmup_ms: Option<i64>,
    /// The input is one day made of the log's days ([`overlay_days`]): aligned, it starts on the
    /// day of `now − warmup` and runs on day after day (it always loops).
    pub overlay: bool,
}

/// The replay's persisted position and counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayCursor {
    /// Names the input: a data dir is never resumed on another log.
    pub fingerprint: String,
    /// The next position in the plan (the log, then its loops).
    pub position: u64,
    /// Clicks replayed.
    pub events: u64,
    /// Rows of the log that could not be read.
    pub malformed: u64,
    /// Whether those rows' dead letters have been written.
    pub dead_letters_written: bool,
    /// The newest event time replayed.
    pub event_time_ms: Option<i64>,
    /// Whole-day shift applied to every event (replays aligned with the present).
    #[serde(default)]
    pub base_shift_ms: i64,
    /// Whether the replay is aligned with the wall clock.
    #[serde(default)]
    pub aligned: bool,
}

/// The input's fingerprint is not the one the cursor was made for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputChanged {
    /// The cursor's.
    pub stored: String,
    /// The input's.
    pub given: String,
}

/// The clicks due now, from a cursor's position.
#[derive(Debug)]
pub struct DueClicks<'a> {
    /// Each click, event time shifted, with its position in the plan.
    pub clicks: Vec<(u64, ClickRef<'a>)>,
    /// The first click not yet due is due in this long.
    pub wait: Option<Duration>,
    /// The plan has ended (a replay that does not loop).
    pub done: bool,
}

impl ReplayCursor {
    /// The cursor of a first start on `input`: at the log's start, or (with
    /// `options.align_warmup_ms`) laid onto the present at wall time `wall_ms`, starting that
    /// long before it.
    pub fn fresh(input: &ReplayInput, options: &ReplayOptions, wall_ms: i64) -> Self {
        let mut fresh = ReplayCursor {
            fingerprint: input.fingerprint.clone(),
            ..ReplayCursor::default()
        };
        if let Some(warmup) = options.align_warmup_ms {
            let align = if options.overlay {
                ReplayPlan::align_overlay
            } else {
                ReplayPlan::align_to
            };
            let (shift, start) = align(&input.clicks, wall_ms, warmup);
            fresh.base_shift_ms = shift;
            fresh.position = start;
            fresh.aligned = true;
        }
        fresh
    }

    /// The stored cursor if there is one (it must be for this input), else a fresh one.
    pub fn resume(
        stored: Option<ReplayCursor>,
        input: &ReplayInput,
        options: &ReplayOptions,
        wall_ms: i64,
    ) -> Result<Self, InputChanged> {
        let cursor = stored.unwrap_or_else(|| Self::fresh(input, options, wall_ms));
        if cursor.fingerprint != input.fingerprint {
            return Err(InputChanged {
                stored: cursor.fingerprint,
                given: input.fingerprint.clone(),
            });
        }
        Ok(cursor)
    }

    /// The plan this cursor walks: the log, looping when asked to (an overlay always does).
    pub fn plan(&self, input: &ReplayInput, options: &ReplayOptions) -> ReplayPlan {
        ReplayPlan::new(&input.clicks, options.loop_forever || options.overlay)
            .with_base_shift(self.base_shift_ms)
    }

    /// The clicks due at the pace of `pacer`, from `position` on: at most `max`, and no longer
    /// than `budget` of wall time spent choosing them.
    pub fn due<'a>(
        plan: &ReplayPlan,
        input: &'a ReplayInput,
        pacer: &mut Pacer,
        position: u64,
        max: usize,
        budget: Duration,
    ) -> DueClicks<'a> {
        let started = Instant::now();
        let mut due = DueClicks {
            clicks: Vec::new(),
            wait: None,
            done: false,
        };
        let mut position = position;
        while due.clicks.len() < max && started.elapsed() < budget {
            let Some((index, shift)) = plan.at(position) else {
                due.done = true;
                break;
            };
            let mut click = input.clicks.get(index);
            click.ts_ms += shift;
            let due_in = pacer.wait_for(click.ts_ms, Instant::now());
            if !due_in.is_zero() {
                due.wait = Some(due_in);
                break;
            }
            due.clicks.push((position, click));
            position += 1;
        }
        due
    }

    /// The replay stage's details for `/api/stats`.
    pub fn details(&self, plan: &ReplayPlan, speed: Speed) -> Value {
        json!({
            "position": self.position,
            "pass": if plan.is_empty() { 0 } else { self.position / plan.len() },
            "log_events": plan.len(),
            "malformed": self.malformed,
            "speed": speed.to_string(),
            "event_time_ms": self.event_time_ms,
            "aligned": self.aligned,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clickpulse_engine::click::Click;
    use clickpulse_engine::click_log::ClickLog;

    fn input(times: &[i64]) -> ReplayInput {
        let clicks: Vec<Click> = times
            .iter()
            .enumerate()
            .map(|(i, &ts_ms)| Click::new(ts_ms, format!("v{i}"), "http://www.acme.com/"))
            .collect();
        ReplayInput {
            clicks: ClickLog::from_clicks(&clicks),
            malformed: Vec::new(),
            fingerprint: "log-a".into(),
        }
    }

    fn options(speed: Speed) -> ReplayOptions {
        ReplayOptions {
            speed,
            loop_forever: false,
            align_warmup_ms: None,
            overlay: false,
        }
    }

    #[test]
    fn a_cursor_resumes_only_on_its_own_input() {
        let input = input(&[1_000, 2_000]);
        let options = options(Speed::Max);
        let fresh = ReplayCursor::resume(None, &input, &options, 0).unwrap();
        assert_eq!((fresh.position, fresh.aligned), (0, false));
        let stored = ReplayCursor {
            position: 1,
            ..fresh.clone()
        };
        assert_eq!(
            ReplayCursor::resume(Some(stored.clone()), &input, &options, 0).unwrap(),
            stored
        );
        let other = ReplayCursor {
            fingerprint: "log-b".into(),
            ..stored
        };
        assert_eq!(
            ReplayCursor::resume(Some(other), &input, &options, 0).unwrap_err(),
            InputChanged {
                stored: "log-b".into(),
                given: "log-a".into()
            }
        );
    }

    #[test]
    fn due_clicks_stop_at_the_batch_size_and_at_the_end() {
        let input = input(&[1_000, 2_000, 3_000]);
        let options = options(Speed::Max);
        let cursor = ReplayCursor::fresh(&input, &options, 0);
        let plan = cursor.plan(&input, &options);
        let mut pacer = Pacer::new(Speed::Max);
        let due = ReplayCursor::due(&plan, &input, &mut pacer, 0, 2, Duration::from_secs(60));
        assert_eq!(
            due.clicks.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
            [0, 1]
        );
        assert!(!due.done);
        let due = ReplayCursor::due(&plan, &input, &mut pacer, 2, 10, Duration::from_secs(60));
        assert_eq!(due.clicks.len(), 1);
        assert_eq!(due.clicks[0].1.ts_ms, 3_000);
        assert!(due.done);
    }

    #[test]
    fn a_paced_replay_waits_for_the_next_click() {
        let input = input(&[0, 3_600_000]);
        let options = options(Speed::Factor(1.0));
        let cursor = ReplayCursor::fresh(&input, &options, 0);
        let plan = cursor.plan(&input, &options);
        let mut pacer = Pacer::new(Speed::Factor(1.0));
        let due = ReplayCursor::due(&plan, &input, &mut pacer, 0, 10, Duration::from_secs(60));
        assert_eq!(due.clicks.len(), 1, "the first click anchors the pace");
        let wait = due.wait.expect("the second is an hour away");
        assert!(wait > Duration::from_secs(3_000), "{wait:?}");
    }

    #[test]
    fn the_stored_form_is_the_one_both_runtimes_wrote() {
        // The embedded runner's `replay/state` and the distributed `replay:progress` (without
        // its outputs) as an earlier version wrote them.
        let stored = r#"{"fingerprint":"f","position":5,"events":5,"malformed":1,"dead_letters_written":true,"event_time_ms":42,"base_shift_ms":86400000,"aligned":true}"#;
        let cursor: ReplayCursor = serde_json::from_str(stored).unwrap();
        assert_eq!(cursor.position, 5);
        assert_eq!(serde_json::to_string(&cursor).unwrap(), stored);
        let old: ReplayCursor = serde_json::from_str(
            r#"{"fingerprint":"f","position":5,"events":5,"malformed":0,"dead_letters_written":false,"event_time_ms":null}"#,
        )
        .unwrap();
        assert!(!old.aligned);
    }
}
