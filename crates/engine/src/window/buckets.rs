//! Tumbling and hopping windows as keyed buckets, and sliding windows over one-second panes.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::{SECOND_MS, ceil_to, floor_to};

/// A tumbling or hopping window over event time, aligned to the UTC epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSpec {
    /// Back-to-back windows `[k·size, (k+1)·size)`.
    Tumbling {
        /// Window length.
        size_ms: i64,
    },
    /// Overlapping windows `[k·slide, k·slide + size)`.
    Hopping {
        /// Window length.
        size_ms: i64,
        /// Distance between window starts.
        slide_ms: i64,
    },
}

impl WindowSpec {
    fn size_and_slide(self) -> (i64, i64) {
        match self {
            WindowSpec::Tumbling { size_ms } => (size_ms, size_ms),
            WindowSpec::Hopping { size_ms, slide_ms } => (size_ms, slide_ms),
        }
    }

    /// Starts of every window containing `ts`, oldest first.
    pub fn windows_for(self, ts: i64) -> impl Iterator<Item = i64> {
        let (size, slide) = self.size_and_slide();
        let last = floor_to(ts, slide);
        let first = floor_to(ts - size, slide) + slide;
        (0..)
            .map(move |k| first + k * slide)
            .take_while(move |s| *s <= last)
            .filter(move |s| *s <= ts && ts < *s + size)
    }

    /// The start of the newest window containing `ts`.
    pub fn latest_start(self, ts: i64) -> i64 {
        floor_to(ts, self.size_and_slide().1)
    }

    /// Window length.
    pub fn size_ms(self) -> i64 {
        self.size_and_slide().0
    }

    /// Distance between window starts.
    pub fn slide_ms(self) -> i64 {
        self.size_and_slide().1
    }
}

/// One window's result as of a watermark.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowResult<'a, A> {
    /// Window start.
    pub start_ms: i64,
    /// The aggregate, `None` for an empty window.
    pub value: Option<&'a A>,
    /// Whether the window ended at or before the watermark (its result can no longer change).
    pub is_final: bool,
}

/// Aggregates per window, for tumbling or hopping windows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Buckets<A> {
    #[serde(skip, default = "default_spec")]
    spec: Option<WindowSpec>,
    windows: BTreeMap<i64, A>,
}

fn default_spec() -> Option<WindowSpec> {
    None
}

impl<A: Default> Buckets<A> {
    /// Empty buckets for `spec`.
    pub fn new(spec: WindowSpec) -> Self {
        Buckets {
            spec: Some(spec),
            windows: BTreeMap::new(),
        }
    }

    /// Re-attaches the spec after deserialization.
    pub fn with_spec(mut self, spec: WindowSpec) -> Self {
        self.spec = Some(spec);
        self
    }

    fn spec(&self) -> WindowSpec {
        self.spec.expect("window spec set")
    }

    /// Applies `update` to every window containing `ts`.
    pub fn add(&mut self, ts: i64, mut update: impl FnMut(&mut A)) {
        if let WindowSpec::Tumbling { size_ms } = self.spec() {
            // One window; in event-time order it is nearly always the newest one held.
            let start = floor_to(ts, size_ms);
            match self.windows.last_entry() {
                Some(mut newest) if *newest.key() == start => update(newest.get_mut()),
                _ => update(self.windows.entry(start).or_default()),
            }
            return;
        }
        for start in self.spec().windows_for(ts) {
            update(self.windows.entry(start).or_default());
        }
    }

    /// Drops windows that ended at or before `ts`.
    pub fn evict_ended_by(&mut self, ts: i64) {
        let size = self.spec().size_ms();
        self.windows = self.windows.split_off(&(ts - size + 1));
    }

    /// The newest window containing `now` and the `count − 1` before it, oldest first.
    pub fn last(&self, now: i64, count: usize) -> Vec<WindowResult<'_, A>> {
        let spec = self.spec();
        let newest = spec.latest_start(now);
        (0..count as i64)
            .rev()
            .map(|k| {
                let start = newest - k * spec.slide_ms();
                WindowResult {
                    start_ms: start,
                    value: self.windows.get(&start),
                    is_final: start + spec.size_ms() <= now,
                }
            })
            .collect()
    }

    /// Every window held, by start.
    pub fn iter(&self) -> impl Iterator<Item = (&i64, &A)> {
        self.windows.iter()
    }

    /// Puts back a window read from a checkpoint.
    pub fn insert(&mut self, start: i64, value: A) {
        self.windows.insert(start, value);
    }
}

/// One-second panes `(end − 1 s, end]`, appended in event-time order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Panes<P> {
    panes: VecDeque<(i64, P)>,
}

impl<P> Default for Panes<P> {
    fn default() -> Self {
        Panes {
            panes: VecDeque::new(),
        }
    }
}

impl<P: Default> Panes<P> {
    /// The pane of an event at `ts`: events must come in event-time order.
    pub fn pane_for(&mut self, ts: i64) -> &mut P {
        let end = ceil_to(ts, SECOND_MS);
        if self.panes.back().is_none_or(|(e, _)| *e < end) {
            self.panes.push_back((end, P::default()));
        }
        let (last_end, pane) = self.panes.back_mut().expect("a pane exists");
        debug_assert_eq!(*last_end, end, "panes are filled in event-time order");
        pane
    }

    /// Panes with `lo < end ≤ hi`.
    pub fn range(&self, lo: i64, hi: i64) -> impl Iterator<Item = &P> {
        let from = self.panes.partition_point(|(e, _)| *e <= lo);
        let to = self.panes.partition_point(|(e, _)| *e <= hi);
        self.panes.range(from..to.max(from)).map(|(_, p)| p)
    }

    /// Drops panes with `end ≤ ts`.
    pub fn evict_through(&mut self, ts: i64) {
        self.evict_through_each(ts, |_| {});
    }

    /// [`Panes::evict_through`], handing each evicted pane to `evicted` first.
    pub fn evict_through_each(&mut self, ts: i64, mut evicted: impl FnMut(&P)) {
        while self.panes.front().is_some_and(|(e, _)| *e <= ts) {
            if let Some((_, pane)) = self.panes.pop_front() {
                evicted(&pane);
            }
        }
    }

    /// Every pane held, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &P> {
        self.panes.iter().map(|(_, p)| p)
    }

    /// Every pane held with its end, oldest first.
    pub fn iter_with_end(&self) -> impl Iterator<Item = (i64, &P)> {
        self.panes.iter().map(|(e, p)| (*e, p))
    }

    /// Panes read from a checkpoint, in any order (the newest of a duplicated end wins).
    pub fn from_unsorted(panes: impl IntoIterator<Item = (i64, P)>) -> Self {
        let sorted: BTreeMap<i64, P> = panes.into_iter().collect();
        Panes {
            panes: sorted.into_iter().collect(),
        }
    }

    /// Number of panes held.
    pub fn len(&self) -> usize {
        self.panes.len()
    }

    /// Whether no pane is held.
    pub fn is_empty(&self) -> bool {
        self.panes.is_empty()
    }
}

/// An aggregate that panes can be added to and removed from.
pub trait PaneAggregate<P>: Default {
    /// Adds a pane entering the window.
    fn add(&mut self, pane: &P);
    /// Removes a pane leaving the window.
    fn remove(&mut self, pane: &P);
}

/// A sliding window "the last `size`" (`now − size < ts ≤ now`), maintained incrementally as
/// `now` advances over a shared [`Panes`] store.
#[derive(Debug, Clone)]
pub struct Sliding<A> {
    size_ms: i64,
    now: Option<i64>,
    value: A,
}

impl<A> Sliding<A> {
    /// A window of `size_ms`.
    pub fn new(size_ms: i64) -> Self
    where
        A: Default,
    {
        Sliding {
            size_ms,
            now: None,
            value: A::default(),
        }
    }

    /// The aggregate as of the last [`Sliding::advance`].
    pub fn value(&self) -> &A {
        &self.value
    }

    /// Window length.
    pub fn size_ms(&self) -> i64 {
        self.size_ms
    }

    /// The aggregate over the panes with `now − size < end ≤ now`: the maintained value when the
    /// window was last advanced to `now`, else computed afresh from `panes` (for a caller that
    /// does not keep the window up to date, see [`Sliding::advance`]).
    pub fn value_at<P>(&self, panes: &Panes<P>, now: i64) -> Cow<'_, A>
    where
        A: PaneAggregate<P> + Clone,
        P: Default,
    {
        if self.now == Some(now) {
            return Cow::Borrowed(&self.value);
        }
        let mut fresh = A::default();
        for pane in panes.range(now - self.size_ms, now) {
            fresh.add(pane);
        }
        Cow::Owned(fresh)
    }

    /// Moves the window's end to `now` (never backwards): panes that entered are added, panes
    /// that left are removed.
    pub fn advance<P>(&mut self, panes: &Panes<P>, now: i64)
    where
        A: PaneAggregate<P>,
        P: Default,
    {
        match self.now {
            Some(prev) if now <= prev => {}
            Some(prev) => {
                for pane in panes.range(prev, now) {
                    self.value.add(pane);
                }
                // Panes that left: end in (prev − size, now − size].
                for pane in panes.range(prev - self.size_ms, now - self.size_ms) {
                    self.value.remove(pane);
                }
                self.now = Some(now);
            }
            None => {
                for pane in panes.range(now - self.size_ms, now) {
                    self.value.add(pane);
                }
                self.now = Some(now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tumbling_and_hopping_windows_of_an_event() {
        let t = WindowSpec::Tumbling { size_ms: 60_000 };
        assert_eq!(t.windows_for(125_000).collect::<Vec<_>>(), [120_000]);
        assert_eq!(t.windows_for(120_000).collect::<Vec<_>>(), [120_000]);
        assert_eq!(t.windows_for(-1).collect::<Vec<_>>(), [-60_000]);
        let h = WindowSpec::Hopping {
            size_ms: 60_000,
            slide_ms: 20_000,
        };
        assert_eq!(
            h.windows_for(125_000).collect::<Vec<_>>(),
            [80_000, 100_000, 120_000]
        );
        assert_eq!(
            h.windows_for(120_000).collect::<Vec<_>>(),
            [80_000, 100_000, 120_000]
        );
    }

    #[test]
    fn buckets_report_zeros_for_gaps_and_which_are_final() {
        let mut b: Buckets<u64> = Buckets::new(WindowSpec::Tumbling { size_ms: 60_000 });
        b.add(61_000, |n| *n += 1);
        b.add(185_000, |n| *n += 1);
        let last = b.last(185_000, 3);
        let starts: Vec<_> = last
            .iter()
            .map(|r| (r.start_ms, r.value.copied(), r.is_final))
            .collect();
        assert_eq!(
            starts,
            [
                (60_000, Some(1), true),
                (120_000, None, true),
                (180_000, Some(1), false)
            ]
        );
        b.evict_ended_by(180_000);
        assert_eq!(b.iter().count(), 1);
    }

    #[derive(Debug, Clone, Default)]
    struct Sum(u64);
    impl PaneAggregate<u64> for Sum {
        fn add(&mut self, pane: &u64) {
            self.0 += pane;
        }
        fn remove(&mut self, pane: &u64) {
            self.0 -= pane;
        }
    }

    #[test]
    fn sliding_window_is_exact_at_its_edges() {
        let mut panes: Panes<u64> = Panes::default();
        for ts in [1_000, 1_500, 2_000, 3_000, 61_000, 62_000] {
            *panes.pane_for(ts) += 1;
        }
        let mut w: Sliding<Sum> = Sliding::new(60_000);
        w.advance(&panes, 2_000);
        assert_eq!(w.value().0, 3, "events at 1.0, 1.5 and 2.0 s");
        w.advance(&panes, 61_000);
        // (1 s, 61 s]: 1.5, 2, 3, 61.
        assert_eq!(w.value().0, 4);
        w.advance(&panes, 62_000);
        // (2 s, 62 s]: 3, 61, 62.
        assert_eq!(w.value().0, 3);
        // Read at the window's own end: the maintained value; elsewhere: computed from panes.
        assert!(matches!(w.value_at(&panes, 62_000), Cow::Borrowed(Sum(3))));
        let unkept: Sliding<Sum> = Sliding::new(60_000);
        for (now, expected) in [(2_000, 3), (61_000, 4), (62_000, 3), (200_000, 0)] {
            let fresh = unkept.value_at(&panes, now);
            assert!(matches!(fresh, Cow::Owned(_)));
            assert_eq!(fresh.0, expected, "at {now}");
        }
    }
}
