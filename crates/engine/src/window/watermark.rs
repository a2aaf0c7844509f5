//! Watermarks and the event-time buffer.
//!
//! Each input partition has a watermark `max event time seen − allowed lateness`; the stage's
//! watermark is the minimum over active partitions, floored to a whole second and never moving
//! back. A partition that has not delivered an event for `idle_timeout` of wall-clock time is
//! idle and stops holding the others back (as Flink's `withIdleness`); when every partition is
//! idle the stream has paused, so the watermark moves up to the newest event time and every
//! window closes. An event at or below the watermark when it arrives is **late**: counted,
//! never applied (so a window result, once final, stays final).
//!
//! Partitions announced with [`Watermarks::expect`] hold the watermark back from the start,
//! before their first event, until they deliver one or go idle: a stage catching up on a
//! backlog may read one partition's records long before another's, and without that the first
//! partition alone would set the watermark and the others' events would all be late.
//!
//! A partition known to have unread records ([`Watermarks::set_backlog`], from the broker's
//! consumer lag) is slow, not idle: it holds the watermark back [`BACKLOG_PATIENCE`] times the
//! idle timeout (not forever: a broker can leave a partition's end unreadable).
//!
//! In live mode the sources also say how far event time has got ([`Frontier`]): every event
//! they have yet to publish is at or after `low_ms` (the clock, or a replay's next event while it
//! catches up). The watermark never passes that, so a replay's catch-up is never late behind a
//! live click; and when nothing published is still on its way, the watermark follows it, so the
//! windows move on with the clock through a quiet stream instead of waiting for the next event.
//! Across processes the frontier is an estimate ([`Frontier::exact`] false): it moves the
//! watermark of a stage whose inputs are all idle on with the clock, and holds nothing back.
//!
//! What the watermark is computed from (each partition's newest event time) is checkpointed with
//! it ([`Watermarks::partition_times`], [`Watermarks::restore_partitions`]): a stage restarted
//! while its inputs are quiet still releases what it holds once they go idle.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{SECOND_MS, ceil_to, floor_to};

/// How many idle timeouts a partition with unread records holds the watermark back.
pub const BACKLOG_PATIENCE: u32 = 6;

#[derive(Debug, Clone)]
struct PartitionClock {
    /// Newest event time (`None`: announced, no event yet).
    max_ts: Option<i64>,
    last_event: Instant,
    /// Records are waiting to be read.
    backlog: bool,
}

/// What the sources promise about event time at one moment (live mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frontier {
    /// Every event the sources have yet to publish has a time at or after this.
    pub low_ms: i64,
    /// Nothing published is still on its way to the stage: every queue and topic upstream of it
    /// is empty (checked after `low_ms` was read, upstream first).
    pub drained: bool,
    /// Whether `low_ms` is a promise (one process sees every source and queue: embedded) or an
    /// estimate (distributed: the replay's published clock less the idle timeout, which leaves
    /// room for what is still on its way). An estimate never holds the watermark back; it only
    /// moves it on once every input partition is idle, the way the idle rule does.
    pub exact: bool,
}

impl Frontier {
    /// The highest watermark the frontier allows: no event still to come is at or below it.
    fn cap(self) -> i64 {
        floor_to(self.low_ms.saturating_sub(1), SECOND_MS)
    }
}

/// Per-partition watermarks.
#[derive(Debug, Clone)]
pub struct Watermarks {
    lateness_ms: i64,
    idle_timeout: Duration,
    /// By partition: a handful, so an ordered map's few comparisons beat hashing the id per
    /// event (SipHash is a noticeable share of what the dashboard spends per view).
    partitions: BTreeMap<u32, PartitionClock>,
    current: Option<i64>,
    /// Partitions found idle by the last [`Watermarks::advance`] (logged when this changes).
    idle: Vec<u32>,
    /// Wall time of the last [`Watermarks::advance`].
    last_advance: Option<Instant>,
}

impl Watermarks {
    /// Watermarks allowing `lateness_ms` of disorder, with partitions idle after `idle_timeout`.
    pub fn new(lateness_ms: i64, idle_timeout: Duration) -> Self {
        Watermarks {
            lateness_ms: lateness_ms.max(0),
            idle_timeout,
            partitions: BTreeMap::new(),
            current: None,
            idle: Vec::new(),
            last_advance: None,
        }
    }

    /// The current watermark (`None` before any event).
    pub fn current(&self) -> Option<i64> {
        self.current
    }

    /// Restores a watermark from a checkpoint (partitions re-register as events arrive).
    pub fn restore(&mut self, watermark: Option<i64>) {
        self.current = watermark;
    }

    /// Each partition's newest event time: what the watermark is computed from, for a
    /// checkpoint.
    pub fn partition_times(&self) -> BTreeMap<u32, i64> {
        self.partitions
            .iter()
            .filter_map(|(p, c)| c.max_ts.map(|ts| (*p, ts)))
            .collect()
    }

    /// Restores [`Watermarks::partition_times`] from a checkpoint, as if each partition had
    /// delivered its newest event at wall time `wall`: they hold the watermark where it was
    /// computed from until they deliver more or go idle, and then release what waits.
    pub fn restore_partitions(&mut self, times: &BTreeMap<u32, i64>, wall: Instant) {
        for (&p, &ts) in times {
            let clock = self.partitions.entry(p).or_insert(PartitionClock {
                max_ts: None,
                last_event: wall,
                backlog: false,
            });
            clock.max_ts = clock.max_ts.max(Some(ts));
            clock.last_event = wall;
        }
    }

    /// Whether an event at `ts` would be late now.
    pub fn is_late(&self, ts: i64) -> bool {
        self.current.is_some_and(|w| ts <= w)
    }

    /// Announces input partitions at wall time `wall`: each holds the watermark back until it
    /// delivers an event or has been silent for the idle timeout.
    pub fn expect(&mut self, partitions: impl IntoIterator<Item = u32>, wall: Instant) {
        for p in partitions {
            self.partitions.entry(p).or_insert(PartitionClock {
                max_ts: None,
                last_event: wall,
                backlog: false,
            });
        }
    }

    /// Records an event of `partition` seen at wall time `wall`.
    pub fn observe(&mut self, partition: u32, ts: i64, wall: Instant) {
        let clock = self.partitions.entry(partition).or_insert(PartitionClock {
            max_ts: Some(ts),
            last_event: wall,
            backlog: false,
        });
        clock.max_ts = clock.max_ts.max(Some(ts));
        clock.last_event = wall;
    }

    /// Records whether `partition` has unread records (a known partition only).
    pub fn set_backlog(&mut self, partition: u32, pending: bool) {
        if let Some(clock) = self.partitions.get_mut(&partition) {
            clock.backlog = pending;
        }
    }

    /// Recomputes the watermark at wall time `wall`; returns it.
    ///
    /// Silence counts only while the stage listens: a stage calls this after every batch and
    /// every idle poll, so a gap of more than half the idle timeout since the last call means it
    /// was not reading (blocked on its store, descheduled, its host suspended). That gap is
    /// added to every partition's last event, so the stage's own stall never makes its inputs
    /// look idle (which would let the watermark pass the records waiting for it and make them
    /// late).
    pub fn advance(&mut self, wall: Instant) -> Option<i64> {
        self.advance_with(wall, None)
    }

    /// [`Watermarks::advance`] in live mode, where the sources say how far event time has got:
    /// the watermark stays below `frontier.low_ms`, and follows it while the stream is drained
    /// and no input partition has unread records.
    pub fn advance_with(&mut self, wall: Instant, frontier: Option<Frontier>) -> Option<i64> {
        if let Some(prev) = self.last_advance.replace(wall) {
            let gap = wall.saturating_duration_since(prev);
            if gap > self.idle_timeout / 2 {
                // Short stalls are routine (a busy machine, a long commit): only a long one is
                // worth the operator's attention.
                if gap > self.idle_timeout * 10 {
                    tracing::info!(
                        gap_ms = gap.as_millis() as u64,
                        "The stage was not reading its inputs; that time does not count as their silence."
                    );
                } else {
                    tracing::debug!(
                        gap_ms = gap.as_millis() as u64,
                        "The stage was not reading its inputs; that time does not count as their silence."
                    );
                }
                for clock in self.partitions.values_mut() {
                    clock.last_event = (clock.last_event + gap).min(wall);
                }
            }
        }
        let is_active = |c: &PartitionClock| {
            let patience = if c.backlog {
                self.idle_timeout * BACKLOG_PATIENCE
            } else {
                self.idle_timeout
            };
            wall.saturating_duration_since(c.last_event) < patience
        };
        let mut idle: Vec<u32> = self
            .partitions
            .iter()
            .filter(|(_, c)| !is_active(c))
            .map(|(p, _)| *p)
            .collect();
        idle.sort_unstable();
        if idle != self.idle {
            tracing::debug!(
                idle = ?idle,
                was = ?self.idle,
                watermark = ?self.current,
                "Idle input partitions changed: an idle partition no longer holds the watermark back."
            );
            self.idle = idle;
        }
        let active: Vec<&PartitionClock> =
            self.partitions.values().filter(|c| is_active(c)).collect();
        let candidate = if active.is_empty() {
            // Everything is idle: the stream paused; close every window up to the newest event.
            self.partitions
                .values()
                .filter_map(|c| c.max_ts)
                .map(|ts| ceil_to(ts, SECOND_MS))
                .max()
        } else {
            // An active partition without an event yet holds everything back.
            active
                .iter()
                .map(|c| {
                    c.max_ts
                        .map(|ts| floor_to(ts - self.lateness_ms, SECOND_MS))
                })
                .min()
                .flatten()
        };
        let candidate = match frontier {
            None => candidate,
            Some(f) if !f.exact => {
                if active.is_empty() && f.drained {
                    candidate.max(Some(f.cap()))
                } else {
                    candidate
                }
            }
            Some(f) => {
                let cap = f.cap();
                let quiet = f.drained && !self.partitions.values().any(|c| c.backlog);
                // Quiet: every event still to come is at or after `low_ms`. Otherwise the
                // inputs decide, up to the cap (even "every partition idle" cannot pass an
                // event a source has yet to publish).
                if quiet {
                    Some(cap)
                } else {
                    candidate.map(|c| c.min(cap))
                }
            }
        };
        if let Some(c) = candidate {
            self.current = Some(self.current.map_or(c, |w| w.max(c)));
        }
        self.current
    }

    /// Moves the watermark past every event seen (end of input, as in a backtest).
    pub fn flush(&mut self) -> Option<i64> {
        if let Some(c) = self
            .partitions
            .values()
            .filter_map(|c| c.max_ts)
            .map(|ts| ceil_to(ts, SECOND_MS))
            .max()
        {
            self.current = Some(self.current.map_or(c, |w| w.max(c)));
        }
        self.current
    }
}

/// Holds events until the watermark passes them, then releases them in event-time order
/// (ties in arrival order).
///
/// Events in time order: a deque for those that arrive in order (a push is an append; a map of
/// vectors per timestamp cost an allocation per distinct time, a tenth of the dashboard's work
/// in a backtest), and a map of vectors per timestamp for those from the past (inserting them
/// into the deque moved its whole tail: with four partitions interleaving, a fifth of the live
/// aggregate's time). Of events with equal times, those in the deque arrived first. Checkpoints
/// keep the earlier layout, `{"pending": {time: [events]}, "len": n}`.
#[derive(Debug, Clone)]
pub struct EventTimeBuffer<T> {
    pending: VecDeque<(i64, T)>,
    past: BTreeMap<i64, Vec<T>>,
    past_len: usize,
}

impl<T> Default for EventTimeBuffer<T> {
    fn default() -> Self {
        EventTimeBuffer {
            pending: VecDeque::new(),
            past: BTreeMap::new(),
            past_len: 0,
        }
    }
}

impl<T> EventTimeBuffer<T> {
    /// Adds an event with time `ts`.
    pub fn push(&mut self, ts: i64, event: T) {
        match self.pending.back() {
            Some((last, _)) if *last > ts => {
                self.past.entry(ts).or_default().push(event);
                self.past_len += 1;
            }
            _ => self.pending.push_back((ts, event)),
        }
    }

    /// Removes and returns every event with time ≤ `watermark`, in order.
    pub fn release(&mut self, watermark: i64) -> Vec<T> {
        let due = self.pending.partition_point(|(t, _)| *t <= watermark);
        if self.past.is_empty() {
            return self.pending.drain(..due).map(|(_, event)| event).collect();
        }
        let later = self.past.split_off(&watermark.saturating_add(1));
        let past_due = std::mem::replace(&mut self.past, later);
        let mut out = Vec::with_capacity(due + past_due.values().map(Vec::len).sum::<usize>());
        let mut in_order = self.pending.drain(..due).peekable();
        for (ts, events) in past_due {
            // The in-order events up to `ts` come first (at `ts` they arrived earlier).
            while let Some((_, event)) = in_order.next_if(|(t, _)| *t <= ts) {
                out.push(event);
            }
            self.past_len -= events.len();
            out.extend(events);
        }
        out.extend(in_order.map(|(_, event)| event));
        out
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.pending.len() + self.past_len
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every waiting event in release order, with its time.
    fn in_order(&self) -> impl Iterator<Item = (i64, &T)> + '_ {
        let mut in_order = self.pending.iter().peekable();
        let mut past = self
            .past
            .iter()
            .flat_map(|(ts, events)| events.iter().map(move |e| (*ts, e)))
            .peekable();
        std::iter::from_fn(move || match (in_order.peek(), past.peek()) {
            (Some((a, _)), Some((b, _))) if a > b => past.next(),
            (Some(_), _) => in_order.next().map(|(t, e)| (*t, e)),
            (None, _) => past.next(),
        })
    }
}

impl<T: Serialize> Serialize for EventTimeBuffer<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;

        // Time → events, in time order (a map of sequences: lengths known up front).
        let mut runs: Vec<(i64, Vec<&T>)> = Vec::new();
        for (ts, event) in self.in_order() {
            match runs.last_mut() {
                Some((last, events)) if *last == ts => events.push(event),
                _ => runs.push((ts, vec![event])),
            }
        }
        /// The runs as a map.
        struct Pending<'a, T>(Vec<(i64, Vec<&'a T>)>);
        impl<T: Serialize> Serialize for Pending<'_, T> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_map(self.0.iter().map(|(ts, events)| (ts, events)))
            }
        }
        let mut out = serializer.serialize_struct("EventTimeBuffer", 2)?;
        out.serialize_field("pending", &Pending(runs))?;
        out.serialize_field("len", &self.len())?;
        out.end()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for EventTimeBuffer<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// The checkpoint's layout (`len` is implied by the events).
        #[derive(Deserialize)]
        #[serde(bound = "T: Deserialize<'de>")]
        struct Stored<T> {
            pending: BTreeMap<i64, Vec<T>>,
            #[serde(rename = "len")]
            _len: usize,
        }
        let stored = Stored::<T>::deserialize(deserializer)?;
        Ok(EventTimeBuffer {
            pending: stored
                .pending
                .into_iter()
                .flat_map(|(ts, events)| events.into_iter().map(move |e| (ts, e)))
                .collect(),
            ..EventTimeBuffer::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_is_the_minimum_over_active_partitions_minus_lateness() {
        let t0 = Instant::now();
        let mut w = Watermarks::new(5_000, Duration::from_secs(10));
        w.observe(0, 100_000, t0);
        w.observe(1, 60_500, t0);
        assert_eq!(w.advance(t0), Some(55_000));
        assert!(w.is_late(55_000) && !w.is_late(55_001));
        // Partition 1 goes idle: it no longer holds partition 0 back.
        listen(&mut w, t0, 1..=10);
        w.observe(0, 120_000, t0 + Duration::from_secs(11));
        assert_eq!(w.advance(t0 + Duration::from_secs(11)), Some(115_000));
        // Everything idle: the watermark reaches the newest event.
        listen(&mut w, t0, 12..=29);
        assert_eq!(w.advance(t0 + Duration::from_secs(30)), Some(120_000));
        // Never backwards.
        w.observe(1, 70_000, t0 + Duration::from_secs(31));
        assert_eq!(w.advance(t0 + Duration::from_secs(31)), Some(120_000));
    }

    #[test]
    fn an_estimated_frontier_moves_only_an_idle_stream_on_and_holds_nothing_back() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let estimate = |low_ms: i64| {
            Some(Frontier {
                low_ms,
                drained: true,
                exact: false,
            })
        };
        let mut w = Watermarks::new(5_000, Duration::from_secs(10));
        w.observe(0, 100_000, t0);
        w.observe(1, 90_000, t0);
        // Active inputs decide, above or below the estimate.
        assert_eq!(w.advance_with(t0, estimate(50_000)), Some(85_000));
        assert_eq!(w.advance_with(t0, estimate(500_000)), Some(85_000));
        // Every input idle: the newest event, then on with the estimate as it grows.
        for s in 1..=10 {
            w.advance_with(at(s), estimate(100_000));
        }
        assert_eq!(w.advance_with(at(10), estimate(100_000)), Some(100_000));
        assert_eq!(w.advance_with(at(11), estimate(700_500)), Some(700_000));
        // A partition with unread records is not idle; an estimate without its inputs drained
        // moves nothing.
        w.set_backlog(0, true);
        assert_eq!(w.advance_with(at(12), estimate(900_000)), Some(700_000));
        w.set_backlog(0, false);
        let not_drained = Frontier {
            low_ms: 900_000,
            drained: false,
            exact: false,
        };
        assert_eq!(w.advance_with(at(13), Some(not_drained)), Some(700_000));
        // An event: its partition is active again and decides; the estimate waits for the next
        // silence.
        w.observe(1, 800_000, at(14));
        assert_eq!(w.advance_with(at(14), estimate(2_000_000)), Some(795_000));
    }

    /// The stage polls once a second from `t0 + first` to `t0 + last` seconds.
    fn listen(w: &mut Watermarks, t0: Instant, seconds: std::ops::RangeInclusive<u64>) {
        for s in seconds {
            w.advance(t0 + Duration::from_secs(s));
        }
    }

    #[test]
    fn the_stage_s_own_stall_does_not_make_its_inputs_idle() {
        let t0 = Instant::now();
        let mut w = Watermarks::new(5_000, Duration::from_secs(10));
        w.observe(0, 100_000, t0);
        w.observe(1, 60_000, t0);
        assert_eq!(w.advance(t0), Some(55_000));
        // The stage blocks for a minute (its store is down); partition 1's records wait for it.
        let back = t0 + Duration::from_secs(60);
        w.observe(0, 200_000, back);
        assert_eq!(w.advance(back), Some(55_000), "partition 1 still holds it");
        assert!(!w.is_late(60_001));
        // Silence while listening counts again: partition 1 goes idle 10 s later.
        listen(&mut w, back, 1..=9);
        assert_eq!(w.advance(back + Duration::from_secs(9)), Some(55_000));
        w.observe(0, 210_000, back + Duration::from_secs(10));
        assert_eq!(w.advance(back + Duration::from_secs(10)), Some(205_000));
    }

    #[test]
    fn an_expected_partition_holds_the_watermark_back_until_it_delivers_or_idles() {
        let t0 = Instant::now();
        let mut w = Watermarks::new(5_000, Duration::from_secs(10));
        w.expect(0..3, t0);
        // Partition 0's backlog arrives first: the others have not spoken yet.
        w.observe(0, 900_000, t0);
        assert_eq!(w.advance(t0), None);
        assert!(!w.is_late(60_000));
        w.observe(1, 60_000, t0);
        w.observe(2, 70_000, t0);
        assert_eq!(w.advance(t0), Some(55_000));
        // A partition that never delivers stops holding the others back once idle.
        let mut w = Watermarks::new(5_000, Duration::from_secs(10));
        w.expect([0, 1], t0);
        w.observe(0, 100_000, t0 + Duration::from_secs(9));
        assert_eq!(w.advance(t0 + Duration::from_secs(9)), None);
        assert_eq!(w.advance(t0 + Duration::from_secs(10)), Some(95_000));
    }

    #[test]
    fn a_partition_with_unread_records_is_slow_not_idle() {
        let t0 = Instant::now();
        let mut w = Watermarks::new(5_000, Duration::from_secs(10));
        w.observe(0, 100_000, t0);
        w.observe(1, 60_000, t0);
        w.set_backlog(1, true);
        // Partition 1's fetches stall (a broker restart) while partition 0 goes on.
        let later = t0 + Duration::from_secs(30);
        w.observe(0, 200_000, later);
        assert_eq!(w.advance(later), Some(55_000));
        assert!(!w.is_late(60_001));
        // It catches up; a stall past the patience lets the others go on.
        w.set_backlog(1, false);
        assert_eq!(w.advance(later), Some(195_000));
        let mut w = Watermarks::new(5_000, Duration::from_secs(10));
        w.observe(0, 100_000, t0);
        w.observe(1, 60_000, t0);
        w.set_backlog(1, true);
        let stalled = t0 + Duration::from_secs(10) * BACKLOG_PATIENCE;
        w.observe(0, 200_000, stalled);
        assert_eq!(w.advance(stalled), Some(195_000));
    }

    #[test]
    fn buffer_releases_in_event_time_order() {
        let mut b = EventTimeBuffer::default();
        for (ts, name) in [(30, "c"), (10, "a"), (30, "d"), (20, "b"), (40, "e")] {
            b.push(ts, name);
        }
        assert_eq!(b.release(30), ["a", "b", "c", "d"]);
        assert_eq!(b.len(), 1);
        assert_eq!(b.release(100), ["e"]);
    }

    #[test]
    fn buffer_checkpoints_keep_their_layout() {
        let mut b = EventTimeBuffer::default();
        for (ts, name) in [(30, "c"), (10, "a"), (30, "d"), (20, "b")] {
            b.push(ts, name.to_owned());
        }
        let json = serde_json::to_value(&b).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"pending": {"10": ["a"], "20": ["b"], "30": ["c", "d"]}, "len": 4})
        );
        let mut back: EventTimeBuffer<String> = serde_json::from_value(json).unwrap();
        assert_eq!(back.release(100), ["a", "b", "c", "d"]);
        let bytes = postcard::to_allocvec(&b).unwrap();
        let mut back: EventTimeBuffer<String> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.release(25), ["a", "b"]);
        assert_eq!(back.len(), 2);
    }

    proptest::proptest! {
        /// Whatever the arrival order, events come out as a stable sort by time.
        #[test]
        fn buffer_is_a_stable_sort_by_time(
            times in proptest::collection::vec(0i64..30, 0..200),
            cut in 0i64..30,
        ) {
            let mut b = EventTimeBuffer::default();
            for (i, &t) in times.iter().enumerate() {
                b.push(t, i);
            }
            let mut expected: Vec<(i64, usize)> =
                times.iter().enumerate().map(|(i, &t)| (t, i)).collect();
            expected.sort_by_key(|(t, _)| *t);
            let (first, rest): (Vec<_>, Vec<_>) = expected.into_iter().partition(|(t, _)| *t <= cut);
            let first: Vec<usize> = first.into_iter().map(|(_, i)| i).collect();
            let rest: Vec<usize> = rest.into_iter().map(|(_, i)| i).collect();
            proptest::prop_assert_eq!(b.release(cut), first);
            proptest::prop_assert_eq!(b.release(i64::MAX), rest);
        }

        /// Pushes and releases interleaved, and a checkpoint in between: still a stable sort.
        #[test]
        fn buffer_interleaved_with_releases_and_a_checkpoint(
            steps in proptest::collection::vec(proptest::option::of(0i64..30), 0..200),
        ) {
            let mut b = EventTimeBuffer::default();
            let mut model: Vec<(i64, usize)> = Vec::new();
            let mut released = 0i64;
            for (i, step) in steps.iter().enumerate() {
                match step {
                    Some(t) => {
                        b.push(*t, i);
                        model.push((*t, i));
                    }
                    None => {
                        released = (released + 7) % 30;
                        model.sort_by_key(|(t, _)| *t);
                        let (due, rest): (Vec<_>, Vec<_>) =
                            model.into_iter().partition(|(t, _)| *t <= released);
                        model = rest;
                        let due: Vec<usize> = due.into_iter().map(|(_, i)| i).collect();
                        proptest::prop_assert_eq!(b.release(released), due);
                    }
                }
                proptest::prop_assert_eq!(b.len(), model.len());
            }
            let json = serde_json::to_vec(&b).unwrap();
            let mut back: EventTimeBuffer<usize> = serde_json::from_slice(&json).unwrap();
            let bytes = postcard::to_allocvec(&b).unwrap();
            let mut back2: EventTimeBuffer<usize> = postcard::from_bytes(&bytes).unwrap();
            model.sort_by_key(|(t, _)| *t);
            let rest: Vec<usize> = model.into_iter().map(|(_, i)| i).collect();
            proptest::prop_assert_eq!(back.release(i64::MAX), rest.clone());
            proptest::prop_assert_eq!(back2.release(i64::MAX), rest.clone());
            proptest::prop_assert_eq!(b.release(i64::MAX), rest);
        }
    }
}
