//! The log a replay or a backtest holds in memory: every click of its input, ordered by event
//! time, in a compact form.
//!
//! A log of millions of clicks held as [`Click`]s costs ~200 bytes of struct plus seven small
//! heap strings per click; the kernel zeroing that fresh memory was a quarter of a backtest, and
//! the strings of a time-sorted log lie scattered in file order. Here each click is one 28-byte
//! row of event time and ids, and every distinct text (visitor, URL, IP, user agent, place) is
//! stored once, as is every distinct [`Profile`] (place and demographics). A click is handed out borrowed ([`ClickLog::get`]) or copied on demand
//! ([`ClickLog::click`]).

use std::fmt;

use ahash::RandomState;
use hashbrown::HashTable;

use crate::click::{Click, ClickRef, Gender};
use crate::event::{EventDetail, EventType};

/// Id of an absent optional field.
const NONE: u32 = u32::MAX;

/// One click: its time and the ids of its texts and profile. Packed to 28 bytes (48 with a
/// field per place and the demographics): the rows are nearly all of a log's memory, and on a
/// machine where fresh memory costs ~3 ms per MB to fault in, their size is a share of a
/// backtest's time.
#[derive(Debug, Clone, Copy)]
#[repr(C, packed(4))]
struct Row {
    ts_ms: i64,
    visitor: u32,
    url: u32,
    ip: u32,
    user_agent: u32,
    profile: u32,
}

const _: () = assert!(std::mem::size_of::<Row>() == 28);

/// What a click says about where and who its visitor is: a few hundred distinct values in a log
/// of millions of clicks, so each is stored once and a row names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Profile {
    /// Place ids ([`NONE`] if absent).
    city: u32,
    country: u32,
    region: u32,
    age: Option<u32>,
    gender: Option<Gender>,
    /// The event's index in [`ClickLog::events`], [`NONE`] for a page view with no detail
    /// (then page views share profiles as before; an interaction has a profile of its own).
    event: u32,
}

/// Distinct profiles, each stored once, by id.
#[derive(Clone, Default)]
struct Profiles {
    by_id: Vec<Profile>,
    ids: ahash::AHashMap<Profile, u32>,
}

impl Profiles {
    /// The id of `p`, first comparing with the profile `last` names (which it then names).
    fn intern_after(&mut self, last: &mut Last, p: Profile) -> u32 {
        if last.0 != NONE && self.by_id[last.0 as usize] == p {
            return last.0;
        }
        let next = u32::try_from(self.by_id.len()).expect("fewer than 2^32 profiles");
        let id = *self.ids.entry(p).or_insert_with(|| {
            self.by_id.push(p);
            next
        });
        last.0 = id;
        id
    }
}

/// Distinct strings, each stored once, by id.
#[derive(Clone, Default)]
struct Strings {
    by_id: Vec<Box<str>>,
    table: HashTable<u32>,
    hasher: RandomState,
}

impl Strings {
    fn intern(&mut self, s: &str) -> u32 {
        let Strings {
            by_id,
            table,
            hasher,
        } = self;
        let hash = hasher.hash_one(s);
        if let Some(&id) = table.find(hash, |&id| &*by_id[id as usize] == s) {
            return id;
        }
        let id = u32::try_from(by_id.len()).expect("fewer than 2^32 distinct strings");
        by_id.push(s.into());
        table.insert_unique(hash, id, |&id| hasher.hash_one(&*by_id[id as usize]));
        id
    }

    /// [`Strings::intern`], first comparing with the text `last` names (which it then names).
    fn intern_after(&mut self, last: &mut Last, s: &str) -> u32 {
        if last.0 != NONE && *self.by_id[last.0 as usize] == *s {
            return last.0;
        }
        let id = self.intern(s);
        last.0 = id;
        id
    }

    fn optional_after(&mut self, last: &mut Last, s: Option<&str>) -> u32 {
        s.map_or(NONE, |s| self.intern_after(last, s))
    }

    fn get(&self, id: u32) -> &str {
        &self.by_id[id as usize]
    }

    fn get_optional(&self, id: u32) -> Option<&str> {
        (id != NONE).then(|| self.get(id))
    }
}

/// The id of the text a column had in the previous click. A session's clicks follow each other
/// in a log (most rows repeat the previous row's visitor, IP and user agent), and comparing
/// with that one text skips hashing and probing the table: most of interning's cost.
#[derive(Clone, Copy)]
struct Last(u32);

impl Default for Last {
    fn default() -> Self {
        Last(NONE)
    }
}

/// Clicks being collected for a [`ClickLog`], in any order.
#[derive(Default)]
pub struct ClickLogBuilder {
    log: ClickLog,
    /// Per column: visitor, URL, IP, user agent, city, country, region, profile.
    last: [Last; 8],
}

impl ClickLogBuilder {
    /// An empty builder with room for `clicks` rows (reserving does not touch the memory, so an
    /// estimate on the high side costs nothing).
    pub fn with_capacity(clicks: usize) -> Self {
        let mut builder = ClickLogBuilder::default();
        builder.log.rows.reserve(clicks);
        builder
    }

    /// Adds a click (its texts are copied only when first seen).
    pub fn push(&mut self, click: ClickRef<'_>) {
        let log = &mut self.log;
        let [visitor, url, ip, agent, city, country, region, profile] = &mut self.last;
        let place = Profile {
            city: log.places.optional_after(city, click.city),
            country: log.places.optional_after(country, click.country),
            region: log.places.optional_after(region, click.region),
            age: click.age,
            gender: click.gender,
            event: if click.event.is_page_view() && click.detail.is_none() {
                NONE
            } else {
                let id = u32::try_from(log.events.len()).expect("fewer than 2^32 interactions");
                log.events.push((
                    click.event.clone(),
                    click.detail.map(|d| Box::new(d.clone())),
                ));
                id
            },
        };
        let row = Row {
            ts_ms: click.ts_ms,
            visitor: log.visitors.intern_after(visitor, click.visitor),
            url: log.urls.intern_after(url, click.url),
            ip: log.ips.intern_after(ip, click.ip),
            user_agent: log.agents.intern_after(agent, click.user_agent),
            profile: log.profiles.intern_after(profile, place),
        };
        log.rows.push(row);
    }

    /// Clicks added so far.
    pub fn len(&self) -> usize {
        self.log.rows.len()
    }

    /// Whether no click was added.
    pub fn is_empty(&self) -> bool {
        self.log.rows.is_empty()
    }

    /// The log, ordered by event time; clicks with the same time keep the order they were added
    /// in (a stable sort: the real log is grouped by visitor session, not sorted).
    pub fn finish(mut self) -> ClickLog {
        if !self.log.rows.is_sorted_by_key(|r| r.ts_ms) {
            self.log.rows = sort_by_time(&self.log.rows);
        }
        self.log
    }
}

/// `rows` sorted stably by time. Sorts keys of time and position (unique, so an unstable sort
/// is stable here), then gathers the rows in key order into a new vector: its reads are
/// independent, so the processor overlaps their cache misses. (Moving each row once in place,
/// following the permutation's cycles, makes every read wait for the one before; a merge sort
/// of the rows moves each of them at every pass.) When the log spans
/// less than 2³² ms (49 days) and has fewer than 2³² rows, a key is one `u64`: the time since
/// the first click, then the position, and a stable radix sort by the time half alone orders
/// them (the positions are already in order).
fn sort_by_time(rows: &[Row]) -> Vec<Row> {
    let first = rows.iter().map(|r| r.ts_ms).min().unwrap_or(0);
    let last = rows.iter().map(|r| r.ts_ms).max().unwrap_or(0);
    let span = u64::try_from(last.wrapping_sub(first)).unwrap_or(u64::MAX);
    // `sources[i]`: the position of the row that goes to position `i`.
    let sources: Vec<u64> = if span <= u64::from(u32::MAX) && u32::try_from(rows.len()).is_ok() {
        let mut keys: Vec<u64> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| ((r.ts_ms - first) as u64) << 32 | i as u64)
            .collect();
        radsort::sort_by_key(&mut keys, |k| (k >> 32) as u32);
        for k in &mut keys {
            *k &= 0xffff_ffff;
        }
        keys
    } else {
        let mut keys: Vec<(i64, u64)> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| (r.ts_ms, i as u64))
            .collect();
        keys.sort_unstable();
        keys.into_iter().map(|(_, i)| i).collect()
    };
    sources.iter().map(|&i| rows[i as usize]).collect()
}

/// Clicks in event-time order, held compactly (see the module docs).
#[derive(Clone, Default)]
pub struct ClickLog {
    rows: Vec<Row>,
    visitors: Strings,
    urls: Strings,
    ips: Strings,
    agents: Strings,
    places: Strings,
    profiles: Profiles,
    /// The events that are not bare page views: their type and detail.
    events: Vec<(EventType, Option<Box<EventDetail>>)>,
}

impl ClickLog {
    /// A log of `clicks`, sorted by event time (stable).
    pub fn from_clicks<'a>(clicks: impl IntoIterator<Item = &'a Click>) -> Self {
        let mut builder = ClickLogBuilder::default();
        for click in clicks {
            builder.push(click.borrowed());
        }
        builder.finish()
    }

    /// Number of clicks.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the log holds no click.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The `i`th click, borrowed. Panics if `i >= len()`.
    pub fn get(&self, i: usize) -> ClickRef<'_> {
        let r = self.rows[i];
        let p = self.profiles.by_id[r.profile as usize];
        let (event, detail) = match self.events.get(p.event as usize) {
            Some((event, detail)) => (event, detail.as_deref()),
            None => (&EventType::PageView, None),
        };
        ClickRef {
            ts_ms: r.ts_ms,
            visitor: self.visitors.get(r.visitor),
            url: self.urls.get(r.url),
            ip: self.ips.get(r.ip),
            user_agent: self.agents.get(r.user_agent),
            city: self.places.get_optional(p.city),
            country: self.places.get_optional(p.country),
            region: self.places.get_optional(p.region),
            gender: p.gender,
            age: p.age,
            event,
            detail,
        }
    }

    /// The `i`th click, copied. Panics if `i >= len()`.
    pub fn click(&self, i: usize) -> Click {
        self.get(i).to_click()
    }

    /// Every click in order, borrowed.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = ClickRef<'_>> + '_ {
        (0..self.rows.len()).map(|i| self.get(i))
    }

    /// The `i`th click's event time. Panics if `i >= len()`.
    pub fn ts_ms(&self, i: usize) -> i64 {
        self.rows[i].ts_ms
    }

    /// The earliest event time.
    pub fn first_ts_ms(&self) -> Option<i64> {
        self.rows.first().map(|r| r.ts_ms)
    }

    /// The latest event time.
    pub fn last_ts_ms(&self) -> Option<i64> {
        self.rows.last().map(|r| r.ts_ms)
    }

    /// The index of the first click at or after `ts_ms` (`len()` if none).
    pub fn first_at_or_after(&self, ts_ms: i64) -> usize {
        self.rows.partition_point(|r| r.ts_ms < ts_ms)
    }

    /// The `i`th click's visitor as a dense id in `0..distinct_visitors()`: equal ids, equal
    /// visitors. Panics if `i >= len()`.
    pub fn visitor_id(&self, i: usize) -> u32 {
        self.rows[i].visitor
    }

    /// Number of distinct visitors in the log.
    pub fn distinct_visitors(&self) -> usize {
        self.visitors.by_id.len()
    }

    /// Dense ids of the `i`th click's texts. Panics if `i >= len()`.
    pub fn text_ids(&self, i: usize) -> TextIds {
        let r = self.rows[i];
        let country = self.profiles.by_id[r.profile as usize].country;
        TextIds {
            visitor: r.visitor,
            url: r.url,
            ip: r.ip,
            user_agent: r.user_agent,
            country: (country != NONE).then_some(country),
        }
    }

    /// How many distinct texts each column has: the bounds of [`TextIds`].
    pub fn distinct_texts(&self) -> TextIds {
        let n = |s: &Strings| u32::try_from(s.by_id.len()).expect("fewer than 2^32 texts");
        TextIds {
            visitor: n(&self.visitors),
            url: n(&self.urls),
            ip: n(&self.ips),
            user_agent: n(&self.agents),
            country: Some(n(&self.places)),
        }
    }
}

/// A click's texts as dense ids, per column (equal ids, equal texts): what a consumer of a
/// [`ClickLog`] can remember per distinct text instead of hashing the text again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextIds {
    /// Visitor id, in `0..distinct_visitors()`.
    pub visitor: u32,
    /// URL.
    pub url: u32,
    /// Client IP address.
    pub ip: u32,
    /// User agent.
    pub user_agent: u32,
    /// Country, when the click has one (ids shared with city and region: one table of places).
    pub country: Option<u32>,
}

impl fmt::Debug for ClickLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClickLog")
            .field("clicks", &self.rows.len())
            .field("visitors", &self.visitors.by_id.len())
            .field("first_ts_ms", &self.first_ts_ms())
            .field("last_ts_ms", &self.last_ts_ms())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn click(ts_ms: i64, visitor: &str) -> Click {
        Click::new(ts_ms, visitor, "http://www.acme.com/")
    }

    #[test]
    fn every_field_comes_back_as_it_went_in() {
        let full = crate::click::full_click_for_tests(5, "v1");
        let bare = click(3, "v2");
        let same_texts = Click {
            ts_ms: 9,
            ..full.clone()
        };
        let log = ClickLog::from_clicks([&full, &bare, &same_texts]);
        assert_eq!(log.len(), 3);
        assert_eq!(log.click(0), bare);
        assert_eq!(log.click(1), full);
        assert_eq!(log.click(2), same_texts);
        assert_eq!(log.get(1), full.borrowed());
        assert_eq!(log.distinct_visitors(), 2);
        assert_eq!(log.visitor_id(1), log.visitor_id(2));
        assert_ne!(log.visitor_id(0), log.visitor_id(1));
        assert_eq!((log.first_ts_ms(), log.last_ts_ms()), (Some(3), Some(9)));
        assert_eq!(log.first_at_or_after(4), 1);
        assert_eq!(log.first_at_or_after(10), 3);
    }

    #[test]
    fn an_empty_log_has_no_times() {
        let log = ClickLogBuilder::with_capacity(10).finish();
        assert!(log.is_empty());
        assert_eq!((log.first_ts_ms(), log.last_ts_ms()), (None, None));
        assert_eq!(log.first_at_or_after(0), 0);
    }

    proptest::proptest! {
        /// The log is the clicks in a stable sort by time: ties keep the order they came in.
        #[test]
        fn the_log_is_a_stable_sort_by_time(
            times in proptest::collection::vec(0i64..50, 0..300),
            // A step of 2³⁰ ms makes logs spanning more than 2³² ms (the wide-key sort).
            step in proptest::prop_oneof![proptest::strategy::Just(1i64), proptest::strategy::Just(1 << 30)],
        ) {
            let clicks: Vec<Click> = times
                .iter()
                .enumerate()
                // Runs of three clicks by one visitor (a session), seven visitors in turn.
                .map(|(i, &t)| click(t * step, &format!("v{}", (i / 3) % 7)).with_position(i))
                .collect();
            let mut expected = clicks.clone();
            expected.sort_by_key(|c| c.ts_ms);
            let log = ClickLog::from_clicks(&clicks);
            let got: Vec<Click> = (0..log.len()).map(|i| log.click(i)).collect();
            proptest::prop_assert_eq!(got, expected);
            // Each distinct visitor is stored once, whether or not it repeats the click before.
            let distinct: std::collections::HashSet<&str> =
                clicks.iter().map(|c| c.visitor.as_str()).collect();
            proptest::prop_assert_eq!(log.distinct_visitors(), distinct.len());
        }
    }

    trait WithPosition {
        fn with_position(self, i: usize) -> Self;
    }

    impl WithPosition for Click {
        /// Marks the click with its position (in its URL), so ties are told apart.
        fn with_position(mut self, i: usize) -> Self {
            self.url = format!("http://www.acme.com/p{i}");
            self
        }
    }
}
