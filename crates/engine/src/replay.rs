//! Replaying a log in event time.
//!
//! The real log is grouped by visitor session, not sorted by time, so a replay first orders it
//! by event time with a stable sort (ties keep file order; see [`ClickLog`]). [`ReplayPlan`] then maps a replay
//! position (0, 1, 2, … across loops) to the event to emit and its shifted timestamp, and
//! [`Pacer`] says when, in wall-clock time, that event is due at a given speed. Both are pure,
//! so the replay stage's position is a single number that is committed with its output.

use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::click_log::ClickLog;

/// One day in milliseconds: loops shift time by whole days so the daily cycle stays real.
const DAY_MS: i64 = 86_400_000;

/// How much of the log an aligned replay replays at once on a new data dir: the dashboard's
/// longest window (16 half-hours) is full from the start.
pub const WARMUP_MS: i64 = 8 * 3_600_000;

/// How fast to replay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Speed {
    /// As fast as the pipeline can take it.
    Max,
    /// N× real time (event-time gaps divided by N).
    Factor(f64),
}

impl FromStr for Speed {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("max") {
            return Ok(Speed::Max);
        }
        match s.trim_end_matches(['x', 'X']).parse::<f64>() {
            Ok(f) if f.is_finite() && f > 0.0 => Ok(Speed::Factor(f)),
            _ => Err(format!(
                "speed must be a positive number or `max`, not {s:?}"
            )),
        }
    }
}

impl fmt::Display for Speed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Speed::Max => f.write_str("max"),
            Speed::Factor(x) => write!(f, "{x}x"),
        }
    }
}

/// Maps replay positions to events of a time-sorted log, looping if asked.
#[derive(Debug, Clone)]
pub struct ReplayPlan {
    len: u64,
    loop_forever: bool,
    shift_ms: i64,
    base_shift_ms: i64,
}

impl ReplayPlan {
    /// A plan over `sorted` (already in event-time order).
    pub fn new(sorted: &ClickLog, loop_forever: bool) -> Self {
        let shift_ms = match (sorted.first_ts_ms(), sorted.last_ts_ms()) {
            (Some(first), Some(last)) => {
                let span = last - first + 1;
                (span + DAY_MS - 1).div_euclid(DAY_MS).max(1) * DAY_MS
            }
            _ => DAY_MS,
        };
        ReplayPlan {
            len: sorted.len() as u64,
            loop_forever,
            shift_ms,
            base_shift_ms: 0,
        }
    }

    /// Shifts every event by `base_shift_ms` (on top of the loop shift).
    pub fn with_base_shift(mut self, base_shift_ms: i64) -> Self {
        self.base_shift_ms = base_shift_ms;
        self
    }

    /// Aligns a log with the present: the whole-day shift that puts `now_ms` on the log's second
    /// (shifted) day — its first full day, since a log rarely starts at midnight — keeping each
    /// event's time of day, and the first position at or after
    /// `now_ms − warmup_ms`, so a replay starting there fills the recent windows at once and then
    /// runs in step with the wall clock.
    pub fn align_to(sorted: &ClickLog, now_ms: i64, warmup_ms: i64) -> (i64, u64) {
        let Some(first) = sorted.first_ts_ms() else {
            return (0, 0);
        };
        let first_full_day = first.div_euclid(DAY_MS) * DAY_MS + DAY_MS;
        let shift = (now_ms - first_full_day).div_euclid(DAY_MS) * DAY_MS;
        let from = now_ms - warmup_ms - shift;
        let start = sorted.first_at_or_after(from) as u64;
        (shift, start)
    }

    /// [`ReplayPlan::align_to`] for a log of one day ([`overlay_days`]): the shift to the day
    /// that contains `now_ms − warmup_ms`, and the first position at or after that time. Each
    /// loop is the next day, so the replay runs on with the wall clock for ever.
    pub fn align_overlay(overlay: &ClickLog, now_ms: i64, warmup_ms: i64) -> (i64, u64) {
        let from = now_ms - warmup_ms;
        let shift = from.div_euclid(DAY_MS) * DAY_MS;
        let plan = ReplayPlan::new(overlay, true).with_base_shift(shift);
        (shift, plan.first_position_at_or_after(overlay, from))
    }

    /// The first position whose (shifted) event time is at or after `ts_ms`, among the
    /// positions this plan replays (a position past the end when a single pass ends earlier).
    /// `sorted` is the log the plan was made for.
    pub fn first_position_at_or_after(&self, sorted: &ClickLog, ts_ms: i64) -> u64 {
        if self.len == 0 {
            return 0;
        }
        let in_log = ts_ms - self.base_shift_ms;
        let pass = if self.loop_forever {
            let first = sorted.first_ts_ms().unwrap_or(0);
            (in_log - first).div_euclid(self.shift_ms).max(0)
        } else {
            0
        };
        let index = sorted.first_at_or_after(in_log - pass * self.shift_ms) as u64;
        pass as u64 * self.len + index
    }

    /// Events in one pass.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the log is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How far each loop shifts event time: the log's span rounded up to whole days.
    pub fn loop_shift_ms(&self) -> i64 {
        self.shift_ms
    }

    /// The event index and time shift for `position`, or `None` once a single pass is over.
    pub fn at(&self, position: u64) -> Option<(usize, i64)> {
        if self.len == 0 {
            return None;
        }
        let pass = position / self.len;
        if pass > 0 && !self.loop_forever {
            return None;
        }
        let index = (position % self.len) as usize;
        Some((index, self.base_shift_ms + pass as i64 * self.shift_ms))
    }
}

/// The mark between a visitor id and the day it comes from in an overlaid replay
/// ([`overlay_days`]): `GUID~3` is visitor `GUID` on the log's fourth day.
pub const LAYER_MARK: char = '~';

/// The visitor a layered id stands for ([`LAYER_MARK`]): what the lookups know it by.
pub fn unlayered(visitor: &str) -> &str {
    visitor.split_once(LAYER_MARK).map_or(visitor, |(id, _)| id)
}

/// The log's days laid over one day: each click keeps its time of day (UTC) and moves to day 0,
/// and its visitor id gets the day it came from (`id~k` for the log's day `k`, counted from
/// its first day, see [`LAYER_MARK`]), so the visitors of different days stay apart. A replay of
/// it at 1× looping day after day ([`ReplayPlan::align_overlay`]) is a continuous stream on
/// the real clock with the log's own daily rhythm and the traffic of all its days at once: the
/// bundled 16 days give 1.35 views a second on average (0.2 at the quietest hour, 2.7 at the
/// busiest) and no second without a view for longer than a minute.
pub fn overlay_days(log: &ClickLog) -> ClickLog {
    use std::fmt::Write;
    let Some(first) = log.first_ts_ms() else {
        return ClickLog::default();
    };
    let first_day = first.div_euclid(DAY_MS);
    let mut builder = crate::click_log::ClickLogBuilder::with_capacity(log.len());
    let mut visitor = String::new();
    for click in log.iter() {
        let day = click.ts_ms.div_euclid(DAY_MS) - first_day;
        visitor.clear();
        let _ = write!(visitor, "{}{LAYER_MARK}{day}", click.visitor);
        builder.push(crate::click::ClickRef {
            ts_ms: click.ts_ms.rem_euclid(DAY_MS),
            visitor: &visitor,
            ..click
        });
    }
    builder.finish()
}

/// Decides when an event is due in wall-clock time at a replay speed.
///
/// The pacer anchors the first event it sees to the wall clock; each later event is due
/// `(ts - anchor_ts) / speed` after that. A restart re-anchors, so a resumed replay does not
/// try to catch up on the time it was down.
#[derive(Debug, Clone)]
pub struct Pacer {
    speed: Speed,
    anchor: Option<(i64, Instant)>,
}

impl Pacer {
    /// A pacer at `speed`.
    pub fn new(speed: Speed) -> Self {
        Pacer {
            speed,
            anchor: None,
        }
    }

    /// A pacer at `speed` whose event time `ts_ms` is the wall time `wall`: earlier events are
    /// due at once (a catch-up), later ones at `speed`.
    pub fn anchored(speed: Speed, ts_ms: i64, wall: Instant) -> Self {
        Pacer {
            speed,
            anchor: Some((ts_ms, wall)),
        }
    }

    /// The anchor, once set.
    pub fn anchor(&self) -> Option<(i64, Instant)> {
        self.anchor
    }

    /// The speed.
    pub fn speed(&self) -> Speed {
        self.speed
    }

    /// How long to wait, from `now`, before emitting an event with time `ts_ms`.
    pub fn wait_for(&mut self, ts_ms: i64, now: Instant) -> Duration {
        let Speed::Factor(factor) = self.speed else {
            return Duration::ZERO;
        };
        let (anchor_ts, anchor_wall) = *self.anchor.get_or_insert((ts_ms, now));
        let offset_ms = (ts_ms - anchor_ts).max(0) as f64 / factor;
        let due = anchor_wall + Duration::from_secs_f64(offset_ms / 1000.0);
        due.saturating_duration_since(now)
    }
}

/// The pipeline's event-time clock: where the replay is, advancing with the wall clock at the
/// replay's speed between events (1× after the end, or at `max`). Live clicks are stamped with
/// it, so they land in the same event-time domain as the replayed traffic. Without a replay it
/// is the wall clock.
///
/// It never goes backwards: not when the replay re-anchors it, and not across a restart, whose
/// caller raises it with [`EventClock::floor`] to the newest event time any stage committed.
/// It also carries the replay's next unpublished event time ([`EventClock::hold`]), so
/// [`EventClock::frontier_ms`] is a lower bound on every event the sources have yet to publish.
#[derive(Debug)]
pub struct EventClock {
    anchor: Mutex<Option<(i64, Instant, f64)>>,
    /// The newest time handed out or set as a floor: `now_ms` never returns less.
    last: AtomicI64,
    /// The replay's next unpublished event time (`i64::MAX`: nothing held; `i64::MIN`, the
    /// start: the replay has not said yet).
    held: AtomicI64,
}

impl Default for EventClock {
    fn default() -> Self {
        EventClock {
            anchor: Mutex::new(None),
            last: AtomicI64::new(i64::MIN),
            held: AtomicI64::new(i64::MIN),
        }
    }
}

/// The wall clock as unix milliseconds.
pub fn wall_clock_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl EventClock {
    /// Event time `ts_ms` is now (`wall`), advancing `rate` × wall time from here (never below
    /// what the clock has already shown).
    pub fn set(&self, ts_ms: i64, wall: Instant, rate: f64) {
        *self.anchor.lock().expect("clock lock") = Some((ts_ms, wall, rate));
    }

    /// The clock never shows less than `ts_ms` from now on (a restart: the newest event time
    /// committed before it).
    pub fn floor(&self, ts_ms: i64) {
        self.last.fetch_max(ts_ms, Ordering::AcqRel);
    }

    /// How fast event time runs against the wall clock (1 without a replay).
    pub fn rate(&self) -> f64 {
        self.anchor
            .lock()
            .expect("clock lock")
            .map_or(1.0, |(_, _, rate)| rate)
    }

    /// The current event time.
    pub fn now_ms(&self) -> i64 {
        let computed = match *self.anchor.lock().expect("clock lock") {
            Some((ts, wall, rate)) => ts + (wall.elapsed().as_secs_f64() * 1000.0 * rate) as i64,
            None => wall_clock_ms(),
        };
        let before = self.last.fetch_max(computed, Ordering::AcqRel);
        before.max(computed)
    }

    /// The replay's next unpublished event is at `ts_ms` (`None`: it holds nothing back, having
    /// published everything due).
    pub fn hold(&self, ts_ms: Option<i64>) {
        self.held
            .store(ts_ms.unwrap_or(i64::MAX), Ordering::Release);
    }

    /// A lower bound on the time of every event the sources have yet to publish: the replay's
    /// next event while it catches up, else the clock (a live click is stamped with it). Read
    /// before checking that the queues downstream are empty (see
    /// [`Frontier`](crate::window::Frontier)).
    /// `None` until the replay has said where it is.
    pub fn frontier_ms(&self) -> Option<i64> {
        let held = self.held.load(Ordering::Acquire);
        (held != i64::MIN).then(|| self.now_ms().min(held))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::click::Click;

    fn click(ts_ms: i64, visitor: &str) -> Click {
        Click::new(ts_ms, visitor, "http://www.acme.com/")
    }

    #[test]
    fn plan_stops_after_one_pass_or_loops_with_whole_day_shifts() {
        let clicks = ClickLog::from_clicks(&[click(1_000, "a"), click(DAY_MS + 5_000, "b")]);
        let once = ReplayPlan::new(&clicks, false);
        assert_eq!(once.at(1), Some((1, 0)));
        assert_eq!(once.at(2), None);
        let looped = ReplayPlan::new(&clicks, true);
        assert_eq!(looped.loop_shift_ms(), 2 * DAY_MS);
        assert_eq!(looped.at(2), Some((0, 2 * DAY_MS)));
        assert_eq!(looped.at(5), Some((1, 4 * DAY_MS)));
        assert_eq!(ReplayPlan::new(&ClickLog::default(), true).at(0), None);
    }

    #[test]
    fn pacer_divides_event_time_gaps_by_the_speed() {
        let start = Instant::now();
        let mut pacer = Pacer::new(Speed::Factor(60.0));
        assert_eq!(pacer.wait_for(0, start), Duration::ZERO);
        // One minute of event time is one second at 60x.
        assert_eq!(pacer.wait_for(60_000, start), Duration::from_secs(1));
        assert_eq!(
            pacer.wait_for(60_000, start + Duration::from_secs(2)),
            Duration::ZERO
        );
        let mut max = Pacer::new(Speed::Max);
        assert_eq!(max.wait_for(10_000_000, start), Duration::ZERO);
    }

    #[test]
    fn aligning_keeps_the_time_of_day_and_starts_before_now() {
        // The log starts at 20:00 on day 0; day 1 has events at 08:00, 12:00 and 20:00.
        let h = 3_600_000;
        let clicks = ClickLog::from_clicks(&[
            click(20 * h, "a"),
            click(DAY_MS + 8 * h, "b"),
            click(DAY_MS + 12 * h, "c"),
            click(DAY_MS + 20 * h, "d"),
        ]);
        // Now is 13:00 on day 100, with two hours of warm-up: day 1 becomes day 100 and the
        // replay starts at its 12:00 event.
        let (shift, start) = ReplayPlan::align_to(&clicks, 100 * DAY_MS + 13 * h, 2 * h);
        assert_eq!((shift, start), (99 * DAY_MS, 2));
        let plan = ReplayPlan::new(&clicks, true).with_base_shift(shift);
        assert_eq!(plan.at(2), Some((2, 99 * DAY_MS)));
        assert_eq!(
            plan.at(4),
            Some((0, 101 * DAY_MS)),
            "loops add whole spans on top"
        );
    }

    #[test]
    fn anchored_pacer_catches_up_then_keeps_pace() {
        let wall = Instant::now();
        let mut pacer = Pacer::anchored(Speed::Factor(1.0), 1_000_000, wall);
        assert_eq!(pacer.wait_for(900_000, wall), Duration::ZERO);
        assert_eq!(pacer.wait_for(1_002_000, wall), Duration::from_secs(2));
    }

    #[test]
    fn event_clock_runs_at_the_replay_rate_and_never_goes_back() {
        let clock = EventClock::default();
        let before = wall_clock_ms();
        assert!(clock.now_ms() >= before, "the wall clock without a replay");
        let clock = EventClock::default();
        clock.set(1_000_000, Instant::now() - Duration::from_secs(2), 60.0);
        // Two seconds at 60× are two minutes of event time (a lower bound: the test may run
        // slowly, never fast).
        let shown = clock.now_ms();
        assert!(shown >= 1_120_000, "{shown}");
        assert_eq!(clock.rate(), 60.0);
        // Re-anchored behind what it showed (a restart): it holds until it catches up.
        clock.set(500_000, Instant::now(), 1.0);
        assert!(clock.now_ms() >= shown);
        // A floor from the newest committed event time.
        clock.floor(9_000_000);
        assert!(clock.now_ms() >= 9_000_000);
    }

    #[test]
    fn the_frontier_is_the_clock_or_the_replay_s_next_event() {
        let clock = EventClock::default();
        assert_eq!(
            clock.frontier_ms(),
            None,
            "until the replay says where it is"
        );
        clock.set(1_000_000, Instant::now(), 1.0);
        clock.hold(Some(400_000));
        assert_eq!(clock.frontier_ms(), Some(400_000), "catching up");
        clock.hold(None);
        assert!(
            clock.frontier_ms().unwrap() >= 1_000_000,
            "caught up: the clock"
        );
    }

    #[test]
    fn overlaid_days_keep_the_time_of_day_and_the_visitors_apart() {
        let h = 3_600_000;
        let day0 = 15_400 * DAY_MS;
        let clicks = ClickLog::from_clicks(&[
            click(day0 + 20 * h, "a"),
            click(day0 + DAY_MS + 8 * h, "a"),
            click(day0 + 2 * DAY_MS + 8 * h + 1, "b"),
        ]);
        let overlay = overlay_days(&clicks);
        let got: Vec<(i64, String)> = overlay
            .iter()
            .map(|c| (c.ts_ms, c.visitor.to_owned()))
            .collect();
        assert_eq!(
            got,
            [
                (8 * h, "a~1".to_owned()),
                (8 * h + 1, "b~2".to_owned()),
                (20 * h, "a~0".to_owned()),
            ]
        );
        assert_eq!(unlayered("a~1"), "a");
        assert_eq!(unlayered("plain"), "plain");
        // Aligned at 09:00 on day 100 with two hours of warm-up: from 07:00 that day, and each
        // loop is the next day.
        let now = 100 * DAY_MS + 9 * h;
        let (shift, start) = ReplayPlan::align_overlay(&overlay, now, 2 * h);
        assert_eq!((shift, start), (100 * DAY_MS, 0));
        let plan = ReplayPlan::new(&overlay, true).with_base_shift(shift);
        assert_eq!(plan.at(3), Some((0, 101 * DAY_MS)));
        // Warm-up reaching back into the day before.
        let (shift, start) = ReplayPlan::align_overlay(&overlay, now, 12 * h);
        assert_eq!(
            (shift, start),
            (99 * DAY_MS, 3),
            "nothing after 21:00: the next day's first"
        );
        // A restart finds the first position at or after a time, in any pass.
        assert_eq!(plan.first_position_at_or_after(&overlay, now), 2);
        assert_eq!(plan.first_position_at_or_after(&overlay, now + 12 * h), 3);
        assert_eq!(
            plan.first_position_at_or_after(&overlay, 103 * DAY_MS + 8 * h + 1),
            10
        );
    }

    #[test]
    fn speed_parses_numbers_and_max() {
        assert_eq!("max".parse::<Speed>(), Ok(Speed::Max));
        assert_eq!("3600".parse::<Speed>(), Ok(Speed::Factor(3600.0)));
        assert_eq!("10x".parse::<Speed>(), Ok(Speed::Factor(10.0)));
        assert!("0".parse::<Speed>().is_err());
        assert!("fast".parse::<Speed>().is_err());
    }
}
