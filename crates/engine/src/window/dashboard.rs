//! The dashboard metrics, computed incrementally in event time.
//!
//! `now` is the watermark. Events wait in an [`EventTimeBuffer`] until the watermark passes
//! them, so every structure holds exactly the events with `ts ≤ now`; "last N minutes" means
//! `now − N < ts ≤ now`; minute and 30-minute buckets are aligned to the UTC epoch.
//!
//! | snapshot key | window |
//! |---|---|
//! | `page_views_per_minute` | tumbling 1 min, the 15 up to the one containing `now` |
//! | `visitors_per_30min` | tumbling 30 min, distinct visitors, 16 buckets |
//! | `top_products_1h`, `category_views_1h` | sliding 1 h |
//! | `device_views_10m` | sliding 10 min |
//! | `country_views_30m`, `active_visitors_30m` | sliding 30 min |
//! | `active_visitors_5m` | sliding 5 min |
//! | `active_visitors_per_minute_30m` | tumbling 1 min, distinct visitors, 30 buckets |
//! | `latest_views` | the 10 newest views (equal event times ordered by visitor, product, IP) |
//! | `offers_by_pattern_1h` | offers with `ts` in the last hour, by pattern |
//!
//! Distinct counts are exact (sets, not sketches). The result depends only on which events have
//! `ts ≤ now`, never on how fast they arrived.

use ahash::{AHashMap as HashMap, AHashSet as HashSet};
use smallvec::SmallVec;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::alert::AlertEvaluator;

use super::MINUTE_MS;
use super::buckets::{Buckets, PaneAggregate, Panes, Sliding, WindowSpec};
use super::shop::{ShopEvent, ShopState, ShopWindows};
use super::snapshot::{
    BucketVisitors, CategoryViews, CountryViews, DashboardSnapshot, DeviceViews, LatestView,
    MinuteViews, ProductViews,
};
use super::visitor::{TextInterner, Visitor, VisitorInterner};
use super::watermark::{EventTimeBuffer, Frontier, Watermarks};
use crate::click::{Device, EnrichedClick, EnrichedRef};
use crate::event::{EventDetail, EventType};
use crate::funnel::{FunnelRegistry, FunnelSet, Hits};
use crate::operator::{Context, Emitter, Operator, RecordError, RestoreError, StateChanges};
use crate::pattern::Offer;
use crate::source::Medium;
use crate::topics::Topic;

const HOUR_MS: i64 = 60 * MINUTE_MS;
const HALF_HOUR_MS: i64 = 30 * MINUTE_MS;

/// Knobs of the dashboard aggregation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DashboardConfig {
    /// How far behind the newest event of a partition an event may arrive and still count.
    pub allowed_lateness_ms: i64,
    /// Wall-clock silence after which a partition stops holding the watermark back.
    pub idle_timeout: Duration,
    /// Input partitions `0..partitions`: each holds the watermark back from the start until it
    /// delivers a view or goes idle (0: a partition counts from its first view).
    pub partitions: u32,
    /// The most distinct keys each dimension (products, categories, countries) holds across
    /// the windows; views with further keys count under [`OTHER_KEY`]. What clients send then
    /// cannot grow the state or the snapshot (see [`KeyCap`]).
    pub max_keys: usize,
}

/// The most distinct keys per dimension by default: far above a shop's catalogue, its
/// categories and the world's 249 countries.
pub const DEFAULT_MAX_KEYS: usize = 1_000;

/// The key views over a dimension's [`DashboardConfig::max_keys`] count under.
pub const OTHER_KEY: &str = "(other)";

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig {
            allowed_lateness_ms: 5_000,
            idle_timeout: Duration::from_secs(5),
            partitions: 0,
            max_keys: DEFAULT_MAX_KEYS,
        }
    }
}

/// Bounds one dimension's distinct keys: a key is admitted while it is already held (in some
/// pane) or fewer than `max` are; any other counts as [`OTHER_KEY`]. Which panes hold a key is
/// derived from the panes (rebuilt on restore, updated as panes are filled and evicted), so the
/// decision is the same live, in a backtest and after a restart.
#[derive(Debug, Clone)]
struct KeyCap {
    max: usize,
    /// Key → how many panes hold it.
    held: HashMap<Arc<str>, u32>,
    other: Arc<str>,
}

impl KeyCap {
    fn new(max: usize) -> Self {
        KeyCap {
            max: max.max(1),
            held: HashMap::default(),
            other: Arc::from(OTHER_KEY),
        }
    }

    /// The key `key` counts under.
    fn admit(&self, key: Arc<str>) -> Arc<str> {
        if self.held.len() < self.max || self.held.contains_key(&key) {
            key
        } else {
            self.other.clone()
        }
    }

    /// A pane now holds `key` (it did not before).
    fn held_by_one_more(&mut self, key: &Arc<str>) {
        match self.held.get_mut(key) {
            Some(n) => *n += 1,
            None => {
                self.held.insert(key.clone(), 1);
            }
        }
    }

    /// A pane holding these keys was evicted.
    fn released(&mut self, counts: &SmallCounts) {
        for (key, _) in counts.iter() {
            if let Some(n) = self.held.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    self.held.remove(key);
                }
            }
        }
    }
}

/// The three capped dimensions.
#[derive(Debug, Clone)]
struct Caps {
    products: KeyCap,
    categories: KeyCap,
    countries: KeyCap,
}

impl Caps {
    fn new(max: usize, panes: &Panes<Pane>) -> Self {
        let mut caps = Caps {
            products: KeyCap::new(max),
            categories: KeyCap::new(max),
            countries: KeyCap::new(max),
        };
        for pane in panes.iter() {
            for (k, _) in pane.products.iter() {
                caps.products.held_by_one_more(k);
            }
            for (k, _) in pane.categories.iter() {
                caps.categories.held_by_one_more(k);
            }
            for (k, _) in pane.countries.iter() {
                caps.countries.held_by_one_more(k);
            }
        }
        caps
    }

    fn released(&mut self, pane: &Pane) {
        self.products.released(&pane.products);
        self.categories.released(&pane.categories);
        self.countries.released(&pane.countries);
    }
}

/// What the aggregation keeps of an event (a view, or an interaction for the shop windows).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct View {
    ts_ms: i64,
    visitor: Visitor,
    ip: String,
    country: Arc<str>,
    product_id: Arc<str>,
    category: Arc<str>,
    title: Arc<str>,
    device: Device,
    #[serde(default, skip_serializing_if = "EventType::is_page_view")]
    event: EventType,
    /// The URL's path (shared).
    #[serde(default)]
    page: Arc<str>,
    /// The source by this event's referrer and campaign (direct without detail).
    #[serde(default, skip_serializing_if = "is_direct")]
    medium: Medium,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    detail: Option<Box<EventDetail>>,
    /// The funnel steps it met, under the funnels of fingerprint `funnel_set`.
    #[serde(default, skip_serializing_if = "is_zero")]
    hits: Hits,
    #[serde(default, skip_serializing_if = "is_zero")]
    funnel_set: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_direct(m: &Medium) -> bool {
    *m == Medium::Direct
}

/// The source of an event (only one with detail can have a referrer or a campaign).
fn medium_of(url: &str, detail: Option<&EventDetail>) -> Medium {
    match detail {
        Some(d) if d.referrer.is_some() || d.utm.is_some() => {
            crate::source::classify(url, Some(d)).medium
        }
        _ => Medium::Direct,
    }
}

/// The path of `url` (`/` for none), without query and fragment, cut at
/// [`crate::event::MAX_SHORT_BYTES`]: a dashboard key, so what a client sends cannot make the
/// shop windows' state large.
fn path_of(url: &str) -> &str {
    let path = full_path_of(url);
    &path[..crate::event::floor_char_boundary(path, crate::event::MAX_SHORT_BYTES)]
}

fn full_path_of(url: &str) -> &str {
    // Byte searches (memchr): this runs for every event, and `str` pattern searches built a
    // substring searcher per call.
    let bytes = url.as_bytes();
    let rest = match memchr::memmem::find(bytes, b"://") {
        // After the scheme: the path starts at the first `/` after the host (none: `/`).
        Some(i) => {
            let after = &url[i + 3..];
            match memchr::memchr3(b'/', b'?', b'#', after.as_bytes()) {
                Some(j) if after.as_bytes()[j] == b'/' => &after[j..],
                _ => return "/",
            }
        }
        None => url,
    };
    let end = memchr::memchr2(b'?', b'#', rest.as_bytes()).unwrap_or(rest.len());
    if end == 0 { "/" } else { &rest[..end] }
}

/// One shared text per page path, so a view's page costs a lookup, not an allocation.
#[derive(Debug, Default)]
struct Pages(HashSet<Arc<str>>);

impl Pages {
    /// Paths are forgotten (not the views holding them) once this many are held.
    const MAX: usize = 100_000;

    fn get(&mut self, url: &str) -> Arc<str> {
        let path = path_of(url);
        if let Some(p) = self.0.get(path) {
            return p.clone();
        }
        if self.0.len() >= Self::MAX {
            self.0.clear();
        }
        let p: Arc<str> = Arc::from(path);
        self.0.insert(p.clone());
        p
    }
}

impl View {
    /// Takes what it keeps out of the click: cloning the four shared strings and copying the
    /// IP cost eight atomic reference-count operations and an allocation per view.
    fn new(
        c: EnrichedClick,
        visitors: &mut VisitorInterner,
        pages: &mut Pages,
        funnels: &FunnelSet,
    ) -> Self {
        let hits = if funnels.is_empty() {
            0
        } else {
            funnels.hits(&c.borrowed())
        };
        View {
            hits,
            funnel_set: funnels.fingerprint(),
            ts_ms: c.ts_ms,
            visitor: visitors.get(&c.visitor),
            medium: medium_of(&c.url, c.detail.as_deref()),
            page: pages.get(&c.url),
            ip: c.ip,
            country: c.country,
            product_id: c.product_id,
            category: c.category,
            title: c.title,
            device: c.device,
            event: c.event,
            detail: c.detail,
        }
    }

    /// Copies what it keeps out of a borrowed view.
    fn from_ref(
        c: &EnrichedRef<'_>,
        visitors: &mut VisitorInterner,
        pages: &mut Pages,
        funnels: &FunnelSet,
    ) -> Self {
        View {
            hits: if funnels.is_empty() {
                0
            } else {
                funnels.hits(c)
            },
            funnel_set: funnels.fingerprint(),
            ts_ms: c.ts_ms,
            visitor: visitors.get(c.visitor),
            ip: c.ip.to_owned(),
            country: c.country.clone(),
            product_id: c.product_id.clone(),
            category: c.category.clone(),
            title: c.title.clone(),
            device: c.device,
            event: c.event.clone(),
            page: pages.get(c.url),
            medium: medium_of(c.url, c.detail),
            detail: c.detail.map(|d| Box::new(d.clone())),
        }
    }

    /// What the shop windows read of it; its funnel steps count only under the funnels they
    /// were decided with (`current`: the set's fingerprint).
    fn shop_event(&self, current: u64) -> ShopEvent<'_> {
        ShopEvent {
            hits: if self.funnel_set == current {
                self.hits
            } else {
                0
            },
            ts_ms: self.ts_ms,
            visitor: &self.visitor,
            event: &self.event,
            page: &self.page,
            medium: self.medium,
            detail: self.detail.as_deref(),
        }
    }
}

/// Keeps the title and category of a view's product for `top_products_1h`.
fn note_title(
    titles: &mut HashMap<Arc<str>, (Arc<str>, Arc<str>)>,
    product_id: &Arc<str>,
    title: &Arc<str>,
    category: &Arc<str>,
) {
    // Nearly always already there with the same title and category: then no new key and no
    // reference counts to move.
    match titles.get_mut(product_id) {
        Some((t, c)) => {
            if !Arc::ptr_eq(t, title) && *t != *title {
                *t = title.clone();
            }
            if !Arc::ptr_eq(c, category) && *c != *category {
                *c = category.clone();
            }
        }
        None => {
            titles.insert(product_id.clone(), (title.clone(), category.clone()));
        }
    }
}

/// Adds `v` to `set`, cloning it (an atomic reference count) only when it is new: most views
/// come from a visitor already in the minute's and the half hour's set.
fn insert_visitor(set: &mut HashSet<Visitor>, v: &Visitor) {
    if !set.contains(v) {
        set.insert(v.clone());
    }
}

/// The slot of a device class in [`Devices`], in [`DeviceViews`]' order: a Bot counts as Other.
fn device_slot(d: Device) -> usize {
    match d {
        Device::Desktop => 0,
        Device::Mobile => 1,
        Device::Tablet => 2,
        Device::Bot | Device::Other => 3,
    }
}

/// One second of views.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Pane {
    products: SmallCounts,
    categories: SmallCounts,
    countries: SmallCounts,
    devices: [u64; 4],
    /// One entry per view (repeats included): the sliding aggregates count occurrences, so
    /// a pane never has to de-duplicate. Up to four views are kept inline: a busy log (the
    /// 10M-event one has ~8 views a second) spilled and regrew these vectors in most panes.
    visitors: SmallVec<[Visitor; 4]>,
}

/// Counts over a few keys (a catalogue's products, a handful of countries): a vector beats a
/// hash map for the one-second panes, most of which hold a few views; the first two keys are
/// kept inline (allocating three vectors per pane was a few percent of a backtest).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct SmallCounts(SmallVec<[(Arc<str>, u64); 2]>);

impl SmallCounts {
    /// Counts `key`, keeping it if it is new (a view's own text, moved in: cloning it, and
    /// dropping the view's copy later, were two atomic reference-count operations per key).
    /// Whether `key` is new to these counts.
    fn bump(&mut self, key: Arc<str>) -> bool {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => {
                *n += 1;
                false
            }
            None => {
                self.0.push((key, 1));
                true
            }
        }
    }

    /// [`SmallCounts::bump`] of `key` as `cap` admits it, telling `cap` when the pane gains a
    /// key (the map is looked into only then, not for a key the pane already counts).
    fn bump_capped(&mut self, key: Arc<str>, cap: &mut KeyCap) {
        if let Some((_, n)) = self.0.iter_mut().find(|(k, _)| *k == key) {
            *n += 1;
            return;
        }
        let key = cap.admit(key);
        if self.bump(key.clone()) {
            cap.held_by_one_more(&key);
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&Arc<str>, u64)> {
        self.0.iter().map(|(k, n)| (k, *n))
    }
}

/// Counts per key over the panes in a sliding window.
#[derive(Debug, Clone, Default)]
struct KeyCounts(HashMap<Arc<str>, u64>);

impl KeyCounts {
    fn add_all<'a>(&mut self, items: impl Iterator<Item = (&'a Arc<str>, u64)>) {
        for (k, n) in items {
            *self.0.entry(k.clone()).or_default() += n;
        }
    }

    fn remove_all<'a>(&mut self, items: impl Iterator<Item = (&'a Arc<str>, u64)>) {
        for (k, n) in items {
            if let Some(v) = self.0.get_mut(k) {
                *v -= n;
                if *v == 0 {
                    self.0.remove(k);
                }
            }
        }
    }

    /// `(key, count)` by count descending, then key ascending.
    fn ranked(&self) -> Vec<(&Arc<str>, u64)> {
        let mut v: Vec<_> = self.0.iter().map(|(k, n)| (k, *n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        v
    }
}

#[derive(Debug, Clone, Default)]
struct LastHour {
    products: KeyCounts,
    categories: KeyCounts,
}

impl PaneAggregate<Pane> for LastHour {
    fn add(&mut self, p: &Pane) {
        self.products.add_all(p.products.iter());
        self.categories.add_all(p.categories.iter());
    }
    fn remove(&mut self, p: &Pane) {
        self.products.remove_all(p.products.iter());
        self.categories.remove_all(p.categories.iter());
    }
}

#[derive(Debug, Clone, Default)]
struct Devices([u64; 4]);

impl PaneAggregate<Pane> for Devices {
    fn add(&mut self, p: &Pane) {
        for (a, b) in self.0.iter_mut().zip(p.devices) {
            *a += b;
        }
    }
    fn remove(&mut self, p: &Pane) {
        for (a, b) in self.0.iter_mut().zip(p.devices) {
            *a -= b;
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Countries(KeyCounts);

impl PaneAggregate<Pane> for Countries {
    fn add(&mut self, p: &Pane) {
        self.0.add_all(p.countries.iter());
    }
    fn remove(&mut self, p: &Pane) {
        self.0.remove_all(p.countries.iter());
    }
}

/// Distinct visitors: for each visitor, how many views in the window it has.
#[derive(Debug, Clone, Default)]
struct Visitors(HashMap<Visitor, u32>);

impl PaneAggregate<Pane> for Visitors {
    fn add(&mut self, p: &Pane) {
        for v in &p.visitors {
            *self.0.entry(v.clone()).or_default() += 1;
        }
    }
    fn remove(&mut self, p: &Pane) {
        for v in &p.visitors {
            if let Some(n) = self.0.get_mut(v) {
                *n -= 1;
                if *n == 0 {
                    self.0.remove(v);
                }
            }
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Minute {
    views: u64,
    visitors: HashSet<Visitor>,
}

/// The part of the aggregation that is checkpointed (sliding aggregates are rebuilt from panes).
/// The operator writes it in parts (see [`AggregateOperator::checkpoint`]): the head under
/// `state`, and each pane, minute, half hour and second of offers under its own key.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
struct Persisted {
    watermark: Option<i64>,
    /// Each input partition's newest event time: what the watermark is computed from. Without
    /// it a stage restarted while its inputs were quiet held its pending views forever.
    #[serde(default)]
    partition_times: BTreeMap<u32, i64>,
    buffer: EventTimeBuffer<View>,
    panes: Panes<Pane>,
    minutes: Option<Buckets<Minute>>,
    half_hours: Option<Buckets<HashSet<Visitor>>>,
    latest: VecDeque<View>,
    offers: BTreeMap<i64, BTreeMap<String, String>>,
    product_titles: HashMap<Arc<str>, (Arc<str>, Arc<str>)>,
    events: u64,
    late_events: u64,
    offers_seen: u64,
    /// Sessions and shop minutes (checkpointed under their own keys; here when assembled).
    #[serde(default, skip_serializing)]
    shop: ShopState,
}

const MINUTE: WindowSpec = WindowSpec::Tumbling { size_ms: MINUTE_MS };
const HALF_HOUR: WindowSpec = WindowSpec::Tumbling {
    size_ms: HALF_HOUR_MS,
};
const LATEST: usize = 10;

/// The dashboard aggregation's pure core.
pub struct DashboardAggregator {
    watermarks: Watermarks,
    /// How many input partitions there are (see [`DashboardAggregator::start`]).
    partitions: u32,
    s: Persisted,
    last_hour: Sliding<LastHour>,
    devices_10m: Sliding<Devices>,
    countries_30m: Sliding<Countries>,
    visitors_30m: Sliding<Visitors>,
    visitors_5m: Sliding<Visitors>,
    /// One shared [`Visitor`] per id in the state (not checkpointed: ids read back from a
    /// checkpoint stay unshared until they leave the windows, which costs memory, not results).
    visitor_ids: VisitorInterner,
    /// Whether the sliding aggregates follow the watermark (see
    /// [`DashboardAggregator::sliding_windows_on_read`]).
    keep_sliding: bool,
    /// The bounds on each dimension's distinct keys (derived from the panes).
    caps: Caps,
    /// Seconds of `offers` changed since the operator last checkpointed them.
    offers_changed: std::collections::BTreeSet<i64>,
    /// Sessions, sources and conversions.
    shop: ShopWindows,
    pages: Pages,
    /// The active funnels (followed at every event) and the set in use.
    funnels: Option<(FunnelRegistry, u64)>,
    funnel_set: Arc<FunnelSet>,
}

impl DashboardAggregator {
    /// An empty aggregation whose input partitions are expected from wall time `wall` on.
    pub fn new(config: DashboardConfig, wall: Instant) -> Self {
        let mut agg = Self::from_persisted(config, Persisted::default());
        agg.start(wall);
        agg
    }

    /// Starts the idle timers at wall time `wall`: every input partition (and every one the
    /// state was read back with) holds the watermark until it delivers an event or has been
    /// silent for the idle timeout.
    fn start(&mut self, wall: Instant) {
        self.watermarks
            .restore_partitions(&self.s.partition_times, wall);
        self.watermarks.expect(0..self.partitions, wall);
    }

    fn from_persisted(config: DashboardConfig, mut s: Persisted) -> Self {
        s.minutes = Some(
            s.minutes
                .take()
                .unwrap_or_else(|| Buckets::new(MINUTE))
                .with_spec(MINUTE),
        );
        s.half_hours = Some(
            s.half_hours
                .take()
                .unwrap_or_else(|| Buckets::new(HALF_HOUR))
                .with_spec(HALF_HOUR),
        );
        let mut watermarks = Watermarks::new(config.allowed_lateness_ms, config.idle_timeout);
        watermarks.restore(s.watermark);
        let shop = ShopWindows::from_state(std::mem::take(&mut s.shop), config.max_keys);
        let mut agg = DashboardAggregator {
            watermarks,
            partitions: config.partitions,
            s,
            last_hour: Sliding::new(HOUR_MS),
            devices_10m: Sliding::new(10 * MINUTE_MS),
            countries_30m: Sliding::new(HALF_HOUR_MS),
            visitors_30m: Sliding::new(HALF_HOUR_MS),
            visitors_5m: Sliding::new(5 * MINUTE_MS),
            visitor_ids: VisitorInterner::default(),
            keep_sliding: true,
            caps: Caps::new(config.max_keys, &Panes::default()),
            offers_changed: std::collections::BTreeSet::new(),
            shop,
            pages: Pages::default(),
            funnels: None,
            funnel_set: Arc::default(),
        };
        agg.caps = Caps::new(config.max_keys, &agg.s.panes);
        if let Some(now) = agg.s.watermark {
            agg.advance_windows(now);
        }
        agg
    }

    /// For a caller that takes few snapshots (a backtest takes one, at the end): the sliding
    /// windows are no longer updated as the watermark moves, and each snapshot computes them
    /// from the one-second panes instead. Snapshots are the same; a live stage, which takes one
    /// per tick, keeps them up to date (updating them was a tenth of a backtest's time).
    /// Nothing is recorded for checkpoints either: such a caller takes none.
    pub fn sliding_windows_on_read(mut self) -> Self {
        self.keep_sliding = false;
        self.shop = self.shop.without_checkpoints();
        self.last_hour = Sliding::new(HOUR_MS);
        self.devices_10m = Sliding::new(10 * MINUTE_MS);
        self.countries_30m = Sliding::new(HALF_HOUR_MS);
        self.visitors_30m = Sliding::new(HALF_HOUR_MS);
        self.visitors_5m = Sliding::new(5 * MINUTE_MS);
        self
    }

    /// Counts the funnels of `registry`, following its changes.
    pub fn with_funnels(mut self, registry: FunnelRegistry) -> Self {
        self.set_funnel_registry(registry);
        self
    }

    fn set_funnel_registry(&mut self, registry: FunnelRegistry) {
        self.funnels = Some((registry, 0));
        self.refresh_funnels();
    }

    /// Takes up a changed funnel set (a generation check: one atomic load). Whether it changed.
    pub fn refresh_funnels(&mut self) -> bool {
        let Some((registry, seen)) = &mut self.funnels else {
            return false;
        };
        let generation = registry.generation();
        if generation == *seen {
            return false;
        }
        *seen = generation;
        self.funnel_set = registry.current();
        self.shop.set_funnels(self.funnel_set.clone());
        true
    }

    /// Also counts each funnel over the whole input ([`DashboardAggregator::funnel_totals`]).
    pub fn with_funnel_totals(mut self) -> Self {
        self.shop = self.shop.with_funnel_totals();
        self
    }

    /// Each funnel over every event applied (with [`DashboardAggregator::with_funnel_totals`]).
    pub fn funnel_totals(&self) -> Vec<super::snapshot::FunnelResult> {
        self.shop.funnel_totals()
    }

    /// The watermark: the dashboard's `now`.
    pub fn now(&self) -> Option<i64> {
        self.s.watermark
    }

    /// Views counted so far (applied or waiting), and late views (counted, not applied).
    pub fn counters(&self) -> (u64, u64) {
        (self.s.events, self.s.late_events)
    }

    /// Views waiting for the watermark.
    pub fn pending(&self) -> usize {
        self.s.buffer.len()
    }

    /// Takes one enriched click from input `partition`, seen at wall time `wall`.
    pub fn on_click(&mut self, partition: u32, click: EnrichedClick, wall: Instant) {
        if self.admit(partition, click.ts_ms, wall) {
            self.refresh_funnels();
            let view = View::new(
                click,
                &mut self.visitor_ids,
                &mut self.pages,
                &self.funnel_set,
            );
            self.s.buffer.push(view.ts_ms, view);
        }
    }

    /// [`DashboardAggregator::on_click`] for a borrowed view: only what the aggregation keeps is
    /// copied.
    pub fn on_click_ref(&mut self, partition: u32, click: &EnrichedRef<'_>, wall: Instant) {
        if self.admit(partition, click.ts_ms, wall) {
            self.refresh_funnels();
            let view = View::from_ref(
                click,
                &mut self.visitor_ids,
                &mut self.pages,
                &self.funnel_set,
            );
            self.s.buffer.push(view.ts_ms, view);
        }
    }

    /// Counts a view with time `ts_ms`; whether it is on time (a late one is counted and left
    /// out of the windows).
    fn admit(&mut self, partition: u32, ts_ms: i64, wall: Instant) -> bool {
        self.s.events += 1;
        if self.watermarks.is_late(ts_ms) {
            self.s.late_events += 1;
            if self.s.late_events.is_power_of_two() {
                tracing::warn!(
                    partition,
                    ts_ms,
                    watermark = ?self.watermarks.current(),
                    late_events = self.s.late_events,
                    "A late view was counted and left out of the windows."
                );
            }
            return false;
        }
        self.watermarks.observe(partition, ts_ms, wall);
        true
    }

    /// Takes one offer (de-duplicated by `offer_id`).
    pub fn on_offer(&mut self, offer: &Offer) {
        let at = self.s.offers.entry(offer.ts_ms).or_default();
        if at
            .insert(offer.offer_id.clone(), offer.pattern.clone())
            .is_none()
        {
            self.s.offers_seen += 1;
            self.offers_changed.insert(offer.ts_ms);
        }
    }

    /// Records whether input `partition` has unread records (see [`Watermarks::set_backlog`]).
    pub fn set_backlog(&mut self, partition: u32, pending: bool) {
        self.watermarks.set_backlog(partition, pending);
    }

    /// Advances the watermark at wall time `wall` and applies what it released. Returns whether
    /// anything changed.
    pub fn tick(&mut self, wall: Instant) -> bool {
        self.tick_with(wall, None)
    }

    /// [`DashboardAggregator::tick`] in live mode, with what the sources say about event time
    /// (see [`Frontier`]): the windows then move on with the clock while the stream is quiet.
    pub fn tick_with(&mut self, wall: Instant, frontier: Option<Frontier>) -> bool {
        match self.watermarks.advance_with(wall, frontier) {
            Some(w) => self.move_to(w),
            None => false,
        }
    }

    /// End of input: applies every waiting event (`now` becomes the newest event time,
    /// rounded up to a whole second).
    pub fn flush(&mut self) -> bool {
        match self.watermarks.flush() {
            Some(w) => self.move_to(w),
            None => false,
        }
    }

    /// Moves the watermark to `ts` (floored to a whole second; never backwards), applying every
    /// waiting event up to it: a snapshot "as of `ts`" (backtest `--until`).
    pub fn advance_to(&mut self, ts: i64) -> bool {
        let target = super::floor_to(ts, super::SECOND_MS);
        match self.s.watermark {
            Some(w) if w >= target => false,
            _ => {
                self.watermarks.restore(Some(target));
                self.move_to(target)
            }
        }
    }

    fn move_to(&mut self, watermark: i64) -> bool {
        if self.s.watermark == Some(watermark) && self.s.buffer.is_empty() {
            return false;
        }
        let mut released = self.s.buffer.release(watermark);
        // Views with equal event times apply in a fixed order, not in arrival order, so the
        // result is the same however the input partitions interleave. They come out in time
        // order, so only runs of equal times need sorting (sorting everything again would cost
        // every release a full sort).
        for ties in released.chunk_by_mut(|a, b| a.ts_ms == b.ts_ms) {
            if ties.len() > 1 {
                ties.sort_by(|a, b| {
                    (&a.visitor, &a.product_id, &a.ip).cmp(&(&b.visitor, &b.product_id, &b.ip))
                });
            }
        }
        // Only the last page views applied can be among the newest kept for `latest_views`:
        // the others give their texts to the panes instead of a copy.
        let newest = released
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, v)| v.event.is_page_view())
            .nth(LATEST - 1)
            .map_or(0, |(i, _)| i);
        // The view windows count page views; the shop windows see every event.
        let funnels = self.funnel_set.fingerprint();
        for (i, view) in released.into_iter().enumerate() {
            self.shop.apply(view.shop_event(funnels));
            if view.event.is_page_view() {
                self.apply(view, i >= newest);
            }
        }
        self.s.watermark = Some(watermark);
        self.advance_windows(watermark);
        true
    }

    /// Applies a released view; `keep` says whether it may be among the newest kept for
    /// `latest_views` (else its texts go to the pane, and nothing keeps the rest).
    fn apply(&mut self, v: View, keep: bool) {
        let ts = v.ts_ms;
        self.s.minutes.as_mut().expect("set").add(ts, |m| {
            m.views += 1;
            insert_visitor(&mut m.visitors, &v.visitor);
        });
        self.s.half_hours.as_mut().expect("set").add(ts, |h| {
            insert_visitor(h, &v.visitor);
        });
        let pane = self.s.panes.pane_for(ts);
        pane.devices[device_slot(v.device)] += 1;
        let caps = &mut self.caps;
        if !keep {
            let View {
                visitor,
                product_id,
                category,
                country,
                title,
                ..
            } = v;
            let known = caps.products.held.len() < caps.products.max
                || caps.products.held.contains_key(&product_id);
            if known {
                note_title(&mut self.s.product_titles, &product_id, &title, &category);
            }
            pane.products.bump_capped(product_id, &mut caps.products);
            pane.categories.bump_capped(category, &mut caps.categories);
            pane.countries.bump_capped(country, &mut caps.countries);
            pane.visitors.push(visitor);
            return;
        }
        let known = caps.products.held.len() < caps.products.max
            || caps.products.held.contains_key(&v.product_id);
        if known {
            note_title(
                &mut self.s.product_titles,
                &v.product_id,
                &v.title,
                &v.category,
            );
        }
        pane.products
            .bump_capped(v.product_id.clone(), &mut caps.products);
        pane.categories
            .bump_capped(v.category.clone(), &mut caps.categories);
        pane.countries
            .bump_capped(v.country.clone(), &mut caps.countries);
        pane.visitors.push(v.visitor.clone());
        self.s.latest.push_back(v);
        if self.s.latest.len() > LATEST {
            self.s.latest.pop_front();
        }
    }

    fn advance_windows(&mut self, now: i64) {
        self.shop.advance(now);
        if self.keep_sliding {
            let panes = &self.s.panes;
            self.last_hour.advance(panes, now);
            self.devices_10m.advance(panes, now);
            self.countries_30m.advance(panes, now);
            self.visitors_30m.advance(panes, now);
            self.visitors_5m.advance(panes, now);
        }
        let caps = &mut self.caps;
        self.s
            .panes
            .evict_through_each(now - HOUR_MS, |pane| caps.released(pane));
        let minute = MINUTE.latest_start(now);
        self.s
            .minutes
            .as_mut()
            .expect("set")
            .evict_ended_by(minute - 29 * MINUTE_MS);
        let half = HALF_HOUR.latest_start(now);
        self.s
            .half_hours
            .as_mut()
            .expect("set")
            .evict_ended_by(half - 15 * HALF_HOUR_MS);
        self.s.offers = self.s.offers.split_off(&(now - HOUR_MS + 1));
        // Titles of products that left the last hour: dropped once they are most of the table.
        const MIN_TITLES: usize = 256;
        if self.s.product_titles.len() > 4 * MIN_TITLES {
            let last_hour = self.last_hour.value_at(&self.s.panes, now);
            let in_use = &last_hour.products.0;
            if self.s.product_titles.len() > 4 * in_use.len().max(MIN_TITLES) {
                self.s.product_titles.retain(|k, _| in_use.contains_key(k));
            }
        }
    }

    /// The dashboard as of the watermark.
    pub fn snapshot(&self) -> DashboardSnapshot {
        let Some(now) = self.s.watermark else {
            return DashboardSnapshot::default();
        };
        let minutes = self.s.minutes.as_ref().expect("set");
        let page_views_per_minute = minutes
            .last(now, 15)
            .iter()
            .map(|r| MinuteViews {
                start_ms: r.start_ms,
                views: r.value.map_or(0, |m| m.views),
                is_final: r.is_final,
            })
            .collect();
        let active_visitors_per_minute_30m = minutes
            .last(now, 30)
            .iter()
            .map(|r| BucketVisitors {
                start_ms: r.start_ms,
                visitors: r.value.map_or(0, |m| m.visitors.len() as u64),
                is_final: r.is_final,
            })
            .collect();
        let visitors_per_30min = self
            .s
            .half_hours
            .as_ref()
            .expect("set")
            .last(now, 16)
            .iter()
            .map(|r| BucketVisitors {
                start_ms: r.start_ms,
                visitors: r.value.map_or(0, |s| s.len() as u64),
                is_final: r.is_final,
            })
            .collect();
        let panes = &self.s.panes;
        let last_hour = self.last_hour.value_at(panes, now);
        let top_products_1h = last_hour
            .products
            .ranked()
            .into_iter()
            .take(10)
            .map(|(id, views)| {
                let (title, category) = self.s.product_titles.get(id).map_or(
                    if &**id == OTHER_KEY {
                        ("Other products", OTHER_KEY)
                    } else {
                        ("Unknown", "Unknown")
                    },
                    |(t, c)| (&**t, &**c),
                );
                ProductViews {
                    product_id: id.to_string(),
                    title: title.to_owned(),
                    category: category.to_owned(),
                    views,
                }
            })
            .collect();
        let category_views_1h = last_hour
            .categories
            .ranked()
            .into_iter()
            .map(|(category, views)| CategoryViews {
                category: category.to_string(),
                views,
            })
            .collect();
        let [desktop, mobile, tablet, other] = self.devices_10m.value_at(panes, now).0;
        let latest_views = self
            .s
            .latest
            .iter()
            .rev()
            .map(|v| LatestView {
                ts_ms: v.ts_ms,
                visitor: v.visitor.as_str().to_owned(),
                ip: v.ip.clone(),
                country: v.country.to_string(),
                product_id: v.product_id.to_string(),
                category: v.category.to_string(),
            })
            .collect();
        let country_views_30m = self
            .countries_30m
            .value_at(panes, now)
            .0
            .ranked()
            .into_iter()
            .map(|(country, views)| CountryViews {
                country: country.to_string(),
                views,
            })
            .collect();
        let mut offers_by_pattern_1h: BTreeMap<String, u64> = BTreeMap::new();
        for (_, at) in self.s.offers.range(now - HOUR_MS + 1..=now) {
            for pattern in at.values() {
                *offers_by_pattern_1h.entry(pattern.clone()).or_default() += 1;
            }
        }
        DashboardSnapshot {
            now_ms: Some(now),
            page_views_per_minute,
            visitors_per_30min,
            top_products_1h,
            category_views_1h,
            device_views_10m: DeviceViews {
                desktop,
                mobile,
                tablet,
                other,
            },
            latest_views,
            active_visitors_30m: self.visitors_30m.value_at(panes, now).0.len() as u64,
            active_visitors_5m: self.visitors_5m.value_at(panes, now).0.len() as u64,
            active_visitors_per_minute_30m,
            country_views_30m,
            offers_by_pattern_1h,
            shop: self.shop.snapshot(now, |id| {
                self.s.product_titles.get(id).map(|(t, _)| t.to_string())
            }),
        }
    }

    /// Open sessions (each holds a little state until 30 minutes after its last event).
    pub fn open_sessions(&self) -> usize {
        self.shop.open_sessions()
    }

    /// What the open sessions take in a checkpoint, in bytes.
    pub fn session_checkpoint_bytes(&self) -> usize {
        self.shop.session_checkpoint_bytes()
    }

    fn persisted(&mut self) -> &Persisted {
        self.s.watermark = self.watermarks.current().or(self.s.watermark);
        self.s.partition_times = self.watermarks.partition_times();
        &self.s
    }
}

/// The latest snapshot, shared with the HTTP server; `generation` changes with every update.
#[derive(Debug, Clone, Default)]
pub struct DashboardHandle {
    inner: Arc<(RwLock<Option<Arc<DashboardSnapshot>>>, AtomicU64)>,
}

impl DashboardHandle {
    /// The latest snapshot (`None` before the first: served as `null`).
    pub fn snapshot(&self) -> Option<Arc<DashboardSnapshot>> {
        self.inner.0.read().expect("dashboard lock").clone()
    }

    /// Bumped on every update.
    pub fn generation(&self) -> u64 {
        self.inner.1.load(Ordering::Acquire)
    }

    /// Publishes a new snapshot.
    pub fn publish(&self, snapshot: DashboardSnapshot) {
        *self.inner.0.write().expect("dashboard lock") = Some(Arc::new(snapshot));
        self.inner.1.fetch_add(1, Ordering::AcqRel);
    }
}

/// The aggregation stage: `enriched-click-data` and `special-offers` → the dashboard snapshot.
///
/// State keys (under `op/aggregate/` in the embedded store): `state` (the window state, JSON),
/// `snapshot` (the latest dashboard snapshot, JSON, as served at `/api/dashboard`).
pub struct AggregateOperator {
    core: DashboardAggregator,
    /// Shares the texts of the views decoded from the topic (see [`TextInterner`]).
    texts: TextInterner,
    config: DashboardConfig,
    handle: DashboardHandle,
    dirty: bool,
    /// The sources' event-time frontier, in live mode (see [`AggregateOperator::with_frontier`]).
    frontier: Option<FrontierFn>,
    /// The frontier as sampled before the inputs were read ([`Operator::on_poll`]).
    sampled: Option<Frontier>,
    /// What the last checkpoints wrote, to write only what changed since.
    written: Written,
    /// A state being read back key by key ([`Operator::restore`]), made the aggregation at its
    /// first use.
    restoring: Option<Restoring>,
    /// Whether the aggregation runs (see [`AggregateOperator::settle`]).
    started: bool,
    /// The funnels counted, if any.
    funnels: Option<FunnelRegistry>,
    /// The alert rules, judged once per minute of event time when the watermark has passed it,
    /// and the start of the next minute to judge.
    alerts: Option<(AlertEvaluator, Option<i64>)>,
    alerts_dirty: bool,
}

/// The parts of a window state read back so far.
#[derive(Debug, Default)]
struct Restoring {
    head: Persisted,
    panes: BTreeMap<i64, Pane>,
    minutes: BTreeMap<i64, Minute>,
    half_hours: BTreeMap<i64, HashSet<Visitor>>,
    offers: BTreeMap<i64, BTreeMap<String, String>>,
    shop: ShopState,
}

impl Restoring {
    /// The whole state: the head with the parts put back (a head written whole, before
    /// checkpoints came in parts, has its parts in it already).
    fn assemble(self) -> Persisted {
        let mut s = self.head;
        if !self.panes.is_empty() {
            let old: Vec<(i64, Pane)> = s
                .panes
                .iter_with_end()
                .map(|(e, p)| (e, p.clone()))
                .collect();
            s.panes = Panes::from_unsorted(old.into_iter().chain(self.panes));
        }
        let minutes = s.minutes.get_or_insert_with(|| Buckets::new(MINUTE));
        for (k, v) in self.minutes {
            minutes.insert(k, v);
        }
        let halves = s.half_hours.get_or_insert_with(|| Buckets::new(HALF_HOUR));
        for (k, v) in self.half_hours {
            halves.insert(k, v);
        }
        s.offers.extend(self.offers);
        s.shop = self.shop;
        s
    }
}

fn to_json<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("window state serializes")
}

/// The keys of the window state the store holds, by part, and the watermark they were written
/// at: everything at or before it that is still held is unchanged since.
#[derive(Debug, Default)]
struct Written {
    watermark: Option<i64>,
    panes: std::collections::BTreeSet<i64>,
    minutes: std::collections::BTreeSet<i64>,
    half_hours: std::collections::BTreeSet<i64>,
    offers: std::collections::BTreeSet<i64>,
}

/// The head of the window state: [`Persisted`] without the parts kept under their own keys.
#[derive(Serialize)]
struct HeadRef<'a> {
    watermark: Option<i64>,
    partition_times: &'a BTreeMap<u32, i64>,
    buffer: &'a EventTimeBuffer<View>,
    latest: &'a VecDeque<View>,
    product_titles: &'a HashMap<Arc<str>, (Arc<str>, Arc<str>)>,
    events: u64,
    late_events: u64,
    offers_seen: u64,
}

const PANE_PREFIX: &str = "pane/";
const MINUTE_PREFIX: &str = "minute/";
const HALF_HOUR_PREFIX: &str = "half/";
const OFFERS_PREFIX: &str = "offers/";
const SESSION_PREFIX: &str = "shop/session/";
const SHOP_MINUTE_PREFIX: &str = "shop/minute/";

/// Writes what of `held` changed since `written` (keys after `since`, or not written yet) with
/// `encode`, deletes what is written and no longer held, and records what is written now.
fn write_parts<'a, T: 'a>(
    changes: &mut StateChanges,
    prefix: &str,
    held: impl Iterator<Item = (i64, &'a T)>,
    changed: impl Fn(i64) -> bool,
    written: &mut std::collections::BTreeSet<i64>,
    encode: impl Fn(&T) -> Vec<u8>,
) {
    let mut now = std::collections::BTreeSet::new();
    for (at, part) in held {
        if changed(at) || !written.contains(&at) {
            changes.push((format!("{prefix}{at}"), Some(encode(part))));
        }
        now.insert(at);
    }
    for gone in written.difference(&now) {
        changes.push((format!("{prefix}{gone}"), None));
    }
    *written = now;
}

/// Reads the sources' [`Frontier`] now (`None`: not known yet, e.g. before the replay
/// started).
pub type FrontierFn = Arc<dyn Fn() -> Option<Frontier> + Send + Sync>;

impl AggregateOperator {
    /// A stage publishing to `handle`.
    pub fn new(config: DashboardConfig, handle: DashboardHandle) -> Self {
        AggregateOperator {
            core: DashboardAggregator::from_persisted(config, Persisted::default()),
            started: false,
            texts: TextInterner::default(),
            config,
            handle,
            dirty: false,
            frontier: None,
            sampled: None,
            written: Written::default(),
            restoring: None,
            funnels: None,
            alerts: None,
            alerts_dirty: false,
        }
    }

    /// Judges `evaluator`'s rules each minute (their transitions go to the `alerts` topic).
    pub fn with_alerts(mut self, evaluator: AlertEvaluator) -> Self {
        self.alerts = Some((evaluator, None));
        self
    }

    /// Judges every minute the watermark has passed since the last: from the per-minute charts
    /// (the last 15 minutes, exact) and, for the gauges, the dashboard as of now.
    fn judge_alerts(&mut self, out: &mut Emitter) {
        let Some((evaluator, next)) = self.alerts.as_mut() else {
            return;
        };
        let Some(watermark) = self.core.now() else {
            return;
        };
        let mut minute = *next.get_or_insert(watermark.div_euclid(MINUTE_MS) * MINUTE_MS);
        if minute + MINUTE_MS > watermark {
            return;
        }
        let snapshot = self.core.snapshot();
        while minute + MINUTE_MS <= watermark {
            for event in evaluator.minute(minute, &snapshot) {
                out.emit(Topic::Alerts, &event.alert.clone(), &event);
            }
            minute += MINUTE_MS;
        }
        *next = Some(minute);
        self.alerts_dirty = true;
    }

    /// Counts the funnels of `registry` (hot-reloaded: a new set counts from the events that
    /// arrive after it).
    pub fn with_funnels(mut self, registry: FunnelRegistry) -> Self {
        self.core.set_funnel_registry(registry.clone());
        self.funnels = Some(registry);
        self
    }

    /// Makes a state read back by [`Operator::restore`] the aggregation (once every key is in)
    /// and starts its idle timers at wall time `wall`: at [`Operator::on_start`], or at the
    /// first record or tick of a caller that did not call it.
    fn settle(&mut self, wall: Instant) {
        if self.started {
            return;
        }
        self.started = true;
        let restored = self.restoring.take();
        let publish = restored.is_some();
        if let Some(r) = restored {
            self.core = DashboardAggregator::from_persisted(self.config, r.assemble());
            if let Some(registry) = &self.funnels {
                self.core.set_funnel_registry(registry.clone());
            }
        }
        self.core.start(wall);
        if publish {
            self.publish();
        }
    }

    /// Live mode: at every poll the stage asks `frontier` how far the sources' event time has
    /// got, so the windows follow the clock while the stream is quiet and never pass an event a
    /// source has yet to publish. Without it (a replay of past time, a backtest) only the
    /// events move the watermark.
    pub fn with_frontier(mut self, frontier: FrontierFn) -> Self {
        self.frontier = Some(frontier);
        self
    }

    fn publish(&mut self) {
        self.handle.publish(self.core.snapshot());
    }
}

const STATE_KEY: &str = "state";
/// State key prefix of an alert rule's state.
const ALERT_PREFIX: &str = "alert/";
/// State key of the next minute the alert rules judge.
const ALERTS_NEXT_KEY: &str = "alerts-next";
/// See [`AggregateOperator::checkpoint_interval`].
const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);
/// The aggregate's state key of the dashboard snapshot at its last checkpoint (for inspection:
/// the dashboard store sink reads it back for `chaos` and tools).
pub const SNAPSHOT_KEY: &str = "snapshot";

impl Operator for AggregateOperator {
    fn name(&self) -> &'static str {
        "aggregate"
    }

    fn input_topics(&self) -> Vec<Topic> {
        vec![Topic::EnrichedClickData, Topic::SpecialOffers]
    }

    fn on_start(&mut self, now: Instant) {
        self.settle(now);
    }

    fn process_record(&mut self, value: &[u8], ctx: &mut Context<'_>) -> Result<(), RecordError> {
        self.settle(ctx.now);
        if ctx.topic == Topic::SpecialOffers {
            let offer: Offer = crate::codec::decode(value)?;
            self.core.on_offer(&offer);
        } else {
            let mut click: EnrichedClick = crate::codec::decode(value)?;
            for text in [
                &mut click.product_id,
                &mut click.category,
                &mut click.title,
                &mut click.country,
            ] {
                self.texts.share(text);
            }
            self.core.on_click(ctx.partition, click, ctx.now);
        }
        self.dirty = true;
        Ok(())
    }

    fn input_backlog(&mut self, topic: Topic, partition: u32, pending: bool) {
        if topic == Topic::EnrichedClickData {
            self.core.set_backlog(partition, pending);
        }
    }

    /// The frontier is read before the inputs: an event published before it was read is then
    /// in this batch, or the runner reports its partition's backlog. (Read at the tick, after
    /// the batch, it let a view that reached the input meanwhile be passed by the watermark.)
    fn on_poll(&mut self) {
        self.sampled = self.frontier.as_ref().and_then(|f| f());
    }

    fn on_tick(&mut self, wall: Instant, out: &mut Emitter) {
        self.settle(wall);
        let frontier = self.sampled.take();
        // A reloaded funnel set shows at once, even while no event arrives.
        self.dirty |= self.core.refresh_funnels();
        if self.core.tick_with(wall, frontier) || self.dirty {
            self.dirty = true;
            self.publish();
        }
        self.judge_alerts(out);
    }

    /// A checkpoint writes what changed, at most twice a second under load (a crash re-reads
    /// at most that much input; the served snapshot is published as it changes, not at
    /// checkpoints).
    fn checkpoint_interval(&self) -> std::time::Duration {
        CHECKPOINT_INTERVAL
    }

    /// Writes what changed since the last checkpoint, not the whole window state: the head
    /// (watermark, waiting views, the newest views, counters) under `state`, and of the parts
    /// under their own keys only those that can have changed — a one-second pane is final once
    /// the watermark passed it, so each is written once and deleted when it leaves the hour; a
    /// minute or half hour is rewritten while the watermark is inside it; a second of offers
    /// when an offer for it arrives. Bytes written per view stay constant however long the
    /// windows are (`clickpulse bench windows` measures them).
    fn checkpoint(&mut self, changes: &mut StateChanges) {
        if let (Some((evaluator, next)), true) = (&self.alerts, self.alerts_dirty) {
            self.alerts_dirty = false;
            for (name, bytes) in evaluator.checkpoint() {
                changes.push((format!("{ALERT_PREFIX}{name}"), Some(bytes)));
            }
            if let Some(next) = next {
                changes.push((
                    ALERTS_NEXT_KEY.to_owned(),
                    Some(next.to_string().into_bytes()),
                ));
            }
        }
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let since = self.written.watermark;
        let s = self.core.persisted();
        let head = HeadRef {
            watermark: s.watermark,
            partition_times: &s.partition_times,
            buffer: &s.buffer,
            latest: &s.latest,
            product_titles: &s.product_titles,
            events: s.events,
            late_events: s.late_events,
            offers_seen: s.offers_seen,
        };
        let head = serde_json::to_vec(&head).expect("window state serializes");
        changes.push((STATE_KEY.to_owned(), Some(head)));
        let after = |end: i64| since.is_none_or(|w| end > w);
        write_parts(
            changes,
            PANE_PREFIX,
            s.panes.iter_with_end(),
            after,
            &mut self.written.panes,
            |p: &Pane| to_json(p),
        );
        let minutes = s.minutes.as_ref().expect("set");
        write_parts(
            changes,
            MINUTE_PREFIX,
            minutes.iter().map(|(k, v)| (*k, v)),
            |start| after(start + MINUTE_MS),
            &mut self.written.minutes,
            |m: &Minute| to_json(m),
        );
        let halves = s.half_hours.as_ref().expect("set");
        write_parts(
            changes,
            HALF_HOUR_PREFIX,
            halves.iter().map(|(k, v)| (*k, v)),
            |start| after(start + HALF_HOUR_MS),
            &mut self.written.half_hours,
            |h: &HashSet<Visitor>| to_json(h),
        );
        let offers_changed = std::mem::take(&mut self.core.offers_changed);
        write_parts(
            changes,
            OFFERS_PREFIX,
            self.core.s.offers.iter().map(|(k, v)| (*k, v)),
            |ts| offers_changed.contains(&ts),
            &mut self.written.offers,
            |o: &BTreeMap<String, String>| to_json(o),
        );
        // Sessions and shop minutes: those an event or the watermark changed.
        let (sessions, minutes) = self.core.shop.take_changes();
        for v in sessions {
            let json = self.core.shop.session_json(&v);
            changes.push((format!("{SESSION_PREFIX}{}", v.as_str()), json));
        }
        for start in minutes {
            let json = self.core.shop.minute_json(start);
            changes.push((format!("{SHOP_MINUTE_PREFIX}{start}"), json));
        }
        self.written.watermark = self.core.s.watermark;
        let snapshot =
            serde_json::to_vec(&self.handle.snapshot().as_deref()).expect("snapshot serializes");
        changes.push((SNAPSHOT_KEY.to_owned(), Some(snapshot)));
    }

    fn restore(&mut self, key: &str, value: &[u8]) -> Result<(), RestoreError> {
        let bad = |message: String| RestoreError {
            operator: "aggregate",
            key: key.to_owned(),
            message,
        };
        fn parse<T: for<'de> Deserialize<'de>>(value: &[u8]) -> Result<T, String> {
            serde_json::from_slice(value).map_err(|e| e.to_string())
        }
        let at = |prefix: &str| -> Result<Option<i64>, RestoreError> {
            key.strip_prefix(prefix)
                .map(|n| n.parse::<i64>().map_err(|e| bad(e.to_string())))
                .transpose()
        };
        if let Some(name) = key.strip_prefix(ALERT_PREFIX) {
            if let Some((evaluator, _)) = self.alerts.as_mut() {
                evaluator
                    .restore(name, value)
                    .map_err(|e| bad(e.to_string()))?;
            }
            return Ok(());
        }
        if key == ALERTS_NEXT_KEY {
            if let Some((_, next)) = self.alerts.as_mut() {
                *next = Some(
                    std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| bad("not a minute".to_owned()))?,
                );
            }
            return Ok(());
        }
        let r = self.restoring.get_or_insert_with(Restoring::default);
        if key == STATE_KEY {
            r.head = parse(value).map_err(bad)?;
            self.written.watermark = r.head.watermark;
        } else if let Some(end) = at(PANE_PREFIX)? {
            r.panes.insert(end, parse(value).map_err(bad)?);
            self.written.panes.insert(end);
        } else if let Some(start) = at(MINUTE_PREFIX)? {
            r.minutes.insert(start, parse(value).map_err(bad)?);
            self.written.minutes.insert(start);
        } else if let Some(start) = at(HALF_HOUR_PREFIX)? {
            r.half_hours.insert(start, parse(value).map_err(bad)?);
            self.written.half_hours.insert(start);
        } else if let Some(ts) = at(OFFERS_PREFIX)? {
            r.offers.insert(ts, parse(value).map_err(bad)?);
            self.written.offers.insert(ts);
        } else if let Some(visitor) = key.strip_prefix(SESSION_PREFIX) {
            ShopWindows::restore_session(&mut r.shop, visitor, value)
                .map_err(|e| bad(e.to_string()))?;
        } else if let Some(start) = at(SHOP_MINUTE_PREFIX)? {
            ShopWindows::restore_minute(&mut r.shop, start, value)
                .map_err(|e| bad(e.to_string()))?;
        }
        Ok(())
    }

    fn stats(&self) -> Value {
        if let Some(Restoring { head: s, .. }) = &self.restoring {
            // Read back, not yet in use.
            return json!({
                "events": s.events,
                "late_events": s.late_events,
                "pending": s.buffer.len(),
                "watermark_ms": s.watermark,
                "offers": s.offers_seen,
            });
        }
        let (events, late) = self.core.counters();
        json!({
            "events": events,
            "late_events": late,
            "pending": self.core.pending(),
            "watermark_ms": self.core.now(),
            "offers": self.core.s.offers_seen,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::funnel::FunnelSet;

    fn funnel(name: &str, description: &str) -> String {
        format!(
            "name = \"{name}\"\ndescription = \"{description}\"\n[[step]]\nname = \"Shoes\"\n\
             when = {{ category = \"shoes\" }}\n[[step]]\nname = \"Cart\"\n\
             when = {{ type = \"add_to_cart\" }}\n"
        )
    }

    #[test]
    fn a_reloaded_funnel_keeps_its_counts_by_name_and_a_new_one_counts_from_then_on() {
        let t0 = 1_331_000_000_000;
        let registry = FunnelRegistry::new(
            FunnelSet::parse([("f.toml", funnel("f", "one").as_str())]).unwrap(),
        );
        let wall = Instant::now();
        let mut agg = DashboardAggregator::new(DashboardConfig::default(), wall)
            .with_funnels(registry.clone());
        let event = |ts: i64, event: EventType| EnrichedClick {
            ts_ms: ts,
            visitor: "v".into(),
            ip: "10.0.0.1".into(),
            url: "http://www.acme.com/SH1/P1".into(),
            product_id: Arc::from("P1"),
            category: Arc::from("shoes"),
            title: Arc::from("P1"),
            known_visitor: false,
            gender: crate::click::Gender::U,
            age: None,
            country: Arc::from("usa"),
            city: None,
            region: None,
            device: Device::Desktop,
            event,
            detail: None,
        };
        let steps = |agg: &DashboardAggregator, name: &str| -> Vec<i64> {
            let snap = agg.snapshot();
            let f = snap
                .shop
                .funnels_1h
                .iter()
                .find(|f| f.name == name)
                .expect("listed");
            f.steps.iter().map(|s| s.visitors).collect()
        };
        agg.on_click(0, event(t0, EventType::PageView), wall);
        agg.advance_to(t0 + 10_000);
        assert_eq!(steps(&agg, "f"), [1, 0]);
        // Edited (same name) and a new one.
        let both = [
            ("f.toml", funnel("f", "two")),
            ("g.toml", funnel("g", "new")),
        ];
        registry.replace(FunnelSet::parse(both.iter().map(|(f, t)| (*f, t.as_str()))).unwrap());
        assert!(agg.refresh_funnels());
        agg.on_click(0, event(t0 + 20_000, EventType::AddToCart), wall);
        agg.advance_to(t0 + 30_000);
        assert_eq!(
            steps(&agg, "f"),
            [1, 1],
            "the session kept its progress in f"
        );
        assert_eq!(
            steps(&agg, "g"),
            [0, 0],
            "g starts with the events after it"
        );
        assert_eq!(agg.snapshot().shop.funnels_1h[0].description, "two");
    }

    #[test]
    fn pane_counts_checkpoint_as_the_vectors_they_replaced() {
        let (shoes, clothing): (Arc<str>, Arc<str>) = (Arc::from("shoes"), Arc::from("clothing"));
        let mut counts = SmallCounts::default();
        counts.bump(shoes.clone());
        counts.bump(clothing.clone());
        // Another copy of a text counts as the same key.
        counts.bump(Arc::from("shoes"));
        assert_eq!(
            serde_json::to_value(&counts).unwrap(),
            json!([["shoes", 2], ["clothing", 1]])
        );
        let as_vec: Vec<(Arc<str>, u64)> = vec![(shoes.clone(), 2), (clothing, 1)];
        assert_eq!(
            postcard::to_allocvec(&counts).unwrap(),
            postcard::to_allocvec(&as_vec).unwrap()
        );
        let back: SmallCounts = serde_json::from_value(json!([["shoes", 2]])).unwrap();
        assert_eq!(back.iter().collect::<Vec<_>>(), [(&shoes, 2)]);
    }
}
