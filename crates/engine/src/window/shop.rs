//! Sessions, sources and conversions: what a shop asks of the live stream beyond page views.
//!
//! The dashboard aggregation feeds [`ShopWindows`] every event (page views and interactions)
//! once the watermark has passed it, in the order it applies them (event time, equal times in a
//! fixed order), so the results depend only on which events have `ts ≤ now`.
//!
//! - **Sessions.** A visitor's session ends after [`SESSION_GAP_MS`] (30 minutes) without an
//!   event, GA's rule; an event whose client session id differs from the open session's starts a
//!   new one. A session is *closed* — final — once no event can continue it: when the watermark
//!   reaches its last event plus the gap. Its end (duration, pages, exit page, bounce) counts in
//!   the minute of that closing time; its start (source, campaign) in the minute of its first
//!   event, its entry page in the minute of its first page view. A session with one page view
//!   is a bounce.
//! - **Sources.** A session's source is its first event's ([`crate::source::classify`]); a
//!   session that starts with a referrer of the shop's own pages counts as direct, as GA does.
//! - **Conversions.** Adds to and removals from the cart, checkouts, purchases (an order id
//!   counts once within the hour), revenue per currency, products by revenue, searches and
//!   their queries, custom events.
//!
//! - **Funnels** ([`crate::funnel`]): per funnel and step, the distinct visitors whose session
//!   reached the step in the last hour, and the median time from the step before.
//!
//! "The last hour" is the 60 UTC minutes up to the one containing `now`; per-minute series are
//! the 15 up to it. Money is kept in hundredths of the currency's unit (integers, so adding
//! and removing minutes is exact). Each minute holds at most `max_keys` distinct keys per
//! dimension; further keys count under [`super::dashboard::OTHER_KEY`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use ahash::{AHashMap as HashMap, AHashSet as HashSet};
use serde::{Deserialize, Serialize};

use super::MINUTE_MS;
use super::dashboard::OTHER_KEY;
use super::snapshot::{
    ConversionMinute, ConversionTotals, FunnelResult, FunnelStepResult, Money, ProductRevenue,
    Ranked, SessionTotals, ShopSnapshot,
};
use super::visitor::Visitor;
use crate::event::{EventDetail, EventType};
use crate::funnel::{FunnelSet, Hits, hit};
use crate::source::Medium;

pub use crate::session::SESSION_GAP_MS;
/// The minutes "the last hour" spans.
const HOUR_MINUTES: i64 = 60;
/// The minutes of the per-minute conversion series.
const CHART_MINUTES: i64 = 15;
/// Entries in each ranked list of the snapshot.
const TOP: usize = 10;

/// What the shop windows read of one event.
#[derive(Debug, Clone, Copy)]
pub struct ShopEvent<'a> {
    /// Event time.
    pub ts_ms: i64,
    /// Who.
    pub visitor: &'a Visitor,
    /// What.
    pub event: &'a EventType,
    /// The page's path (`/shop/product/p1`).
    pub page: &'a Arc<str>,
    /// How the visitor came, by this event's referrer and campaign.
    pub medium: Medium,
    /// What the event carried beyond a page view.
    pub detail: Option<&'a EventDetail>,
    /// The funnel steps it meets, under the windows' current funnels ([`ShopWindows::set_funnels`]).
    pub hits: Hits,
}

/// Counts (or hundredths) per key.
type Counts = BTreeMap<Arc<str>, i64>;

/// One open session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Session {
    /// The client's session id, if it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<Arc<str>>,
    start_ms: i64,
    last_ms: i64,
    pages: u32,
    /// The last page viewed: the exit page if nothing follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exit: Option<Arc<str>>,
    /// How far the session got in each funnel it entered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    funnels: Vec<Progress>,
}

/// A session's progress in one funnel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Progress {
    funnel: Arc<str>,
    /// Steps reached.
    reached: u8,
    /// When the last of them was.
    at_ms: i64,
}

/// A funnel's steps reached in one minute (or, for a backtest's totals, in the whole log).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct FunnelCounts {
    /// Per step, the visitors whose session reached it.
    visitors: Vec<HashSet<Visitor>>,
    /// Per step, the milliseconds from the step before (none for the first step).
    times_ms: Vec<Vec<i64>>,
}

impl FunnelCounts {
    fn record(&mut self, step: usize, visitor: &Visitor, since_ms: Option<i64>) {
        if self.visitors.len() <= step {
            self.visitors.resize_with(step + 1, HashSet::default);
            self.times_ms.resize_with(step + 1, Vec::new);
        }
        if !self.visitors[step].contains(visitor) {
            self.visitors[step].insert(visitor.clone());
        }
        if let Some(ms) = since_ms {
            self.times_ms[step].push(ms);
        }
    }
}

/// The results of `funnels` from the counts `of` (merged over minutes) gives each.
fn funnel_results<'a>(
    funnels: &FunnelSet,
    of: impl Fn(&str) -> Vec<&'a FunnelCounts>,
) -> Vec<FunnelResult> {
    funnels
        .funnels()
        .iter()
        .map(|f| {
            let parts = of(&f.name);
            let steps = f
                .steps
                .iter()
                .enumerate()
                .map(|(i, step)| {
                    let mut visitors: HashSet<&Visitor> = HashSet::default();
                    let mut times: Vec<i64> = Vec::new();
                    for c in &parts {
                        if let Some(v) = c.visitors.get(i) {
                            visitors.extend(v.iter());
                        }
                        if let Some(t) = c.times_ms.get(i) {
                            times.extend(t.iter().copied());
                        }
                    }
                    times.sort_unstable();
                    FunnelStepResult {
                        name: step.name.clone(),
                        visitors: visitors.len() as i64,
                        // The middle value; of two, the lower.
                        median_ms_from_previous: (!times.is_empty())
                            .then(|| times[(times.len() - 1) / 2]),
                    }
                })
                .collect();
            FunnelResult {
                name: f.name.clone(),
                description: f.description.clone(),
                steps,
            }
        })
        .collect()
}

/// What happened in one UTC minute. Every field is a sum, so the last hour is the sum of its
/// minutes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct ShopMinute {
    sessions_started: i64,
    sources: Counts,
    referrer_hosts: Counts,
    utm_sources: Counts,
    utm_mediums: Counts,
    utm_campaigns: Counts,
    entry_pages: Counts,
    sessions_ended: i64,
    duration_ms: i64,
    pages: i64,
    bounces: i64,
    exit_pages: Counts,
    add_to_cart: i64,
    remove_from_cart: i64,
    begin_checkout: i64,
    purchases: i64,
    searches: i64,
    /// Currency → revenue in hundredths.
    revenue: Counts,
    /// Currency → orders.
    orders_by_currency: Counts,
    /// The order ids counted in this minute (an order sent twice counts once).
    order_ids: BTreeSet<Arc<str>>,
    /// Product → revenue in hundredths (of the order's currency).
    product_revenue: Counts,
    /// Product → units sold.
    product_units: Counts,
    queries: Counts,
    custom_events: Counts,
    /// Funnel name → steps reached in this minute.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    funnels: BTreeMap<Arc<str>, FunnelCounts>,
}

/// Adds `n` to `key` in `counts`, unless `counts` already holds `max` other keys: then to
/// [`OTHER_KEY`].
fn add(counts: &mut Counts, key: &str, n: i64, max: usize) {
    if let Some(v) = counts.get_mut(key) {
        *v += n;
        return;
    }
    let key: Arc<str> = if counts.len() < max {
        Arc::from(key)
    } else {
        Arc::from(OTHER_KEY)
    };
    *counts.entry(key).or_default() += n;
}

/// `amount` in hundredths.
fn hundredths(amount: f64) -> i64 {
    (amount * 100.0).round() as i64
}

/// A search query as it is counted: trimmed, lower case, inner runs of white space as one
/// space.
fn normal_query(q: &str) -> String {
    q.split_whitespace()
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The checkpointed part of the shop windows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct ShopState {
    sessions: HashMap<Visitor, Session>,
    minutes: BTreeMap<i64, ShopMinute>,
}

/// The shop windows' pure core.
#[derive(Debug, Clone)]
pub struct ShopWindows {
    s: ShopState,
    max_keys: usize,
    /// `(last event time, visitor)` of open sessions in the order they were last touched
    /// (event-time order); an entry whose session moved on since is skipped.
    expiry: VecDeque<(i64, Visitor)>,
    /// Sessions and minutes changed since the operator last took them (kept only for a
    /// caller that checkpoints: see [`ShopWindows::without_checkpoints`]).
    changed_sessions: HashSet<Visitor>,
    changed_minutes: BTreeSet<i64>,
    track_changes: bool,
    /// The funnels counted.
    funnels: Arc<FunnelSet>,
    /// Per funnel, its steps reached over the whole input (a backtest's report), if kept.
    totals: Option<BTreeMap<Arc<str>, FunnelCounts>>,
}

impl ShopWindows {
    /// Empty windows holding at most `max_keys` keys per dimension and minute.
    pub fn new(max_keys: usize) -> Self {
        Self::from_state(ShopState::default(), max_keys)
    }

    pub(crate) fn from_state(s: ShopState, max_keys: usize) -> Self {
        let mut open: Vec<(i64, Visitor)> = s
            .sessions
            .iter()
            .map(|(v, session)| (session.last_ms, v.clone()))
            .collect();
        open.sort();
        ShopWindows {
            s,
            max_keys: max_keys.max(1),
            expiry: open.into(),
            changed_sessions: HashSet::default(),
            changed_minutes: BTreeSet::new(),
            track_changes: true,
            funnels: Arc::default(),
            totals: None,
        }
    }

    /// Counts `funnels` from now on (a session keeps its progress in a funnel that keeps its
    /// name; a funnel renamed or removed is no longer counted).
    pub fn set_funnels(&mut self, funnels: Arc<FunnelSet>) {
        self.funnels = funnels;
    }

    /// Also keeps each funnel's steps over the whole input, for [`ShopWindows::funnel_totals`].
    pub fn with_funnel_totals(mut self) -> Self {
        self.totals = Some(BTreeMap::new());
        self
    }

    /// Each funnel over the whole input (with [`ShopWindows::with_funnel_totals`]).
    pub fn funnel_totals(&self) -> Vec<FunnelResult> {
        let totals = self.totals.as_ref();
        funnel_results(&self.funnels, |name| {
            totals.and_then(|t| t.get(name)).into_iter().collect()
        })
    }

    /// For a caller that never checkpoints (a backtest): what changed is not recorded.
    pub fn without_checkpoints(mut self) -> Self {
        self.track_changes = false;
        self
    }

    /// Open sessions.
    pub fn open_sessions(&self) -> usize {
        self.s.sessions.len()
    }

    /// The open sessions' checkpointed size: their JSON bytes, keys included.
    pub fn session_checkpoint_bytes(&self) -> usize {
        self.s
            .sessions
            .iter()
            .map(|(v, s)| v.as_str().len() + serde_json::to_vec(s).map_or(0, |json| json.len()))
            .sum()
    }

    fn minute(&mut self, ts: i64) -> &mut ShopMinute {
        let start = super::floor_to(ts, MINUTE_MS);
        if self.track_changes {
            self.changed_minutes.insert(start);
        }
        self.s.minutes.entry(start).or_default()
    }

    /// Applies one event (after every event with an earlier time).
    pub fn apply(&mut self, e: ShopEvent<'_>) {
        self.close_before(e.ts_ms);
        let max = self.max_keys;
        let client_id = e.detail.and_then(|d| d.session_id.as_deref());
        let session = self.s.sessions.get(e.visitor);
        let other_id = crate::session::other_id(session.and_then(|s| s.id.as_deref()), client_id);
        if other_id {
            let session = self.s.sessions.remove(e.visitor).expect("open");
            self.end(session, e.ts_ms);
        }
        let visitor = e.visitor;
        let is_new = !self.s.sessions.contains_key(visitor);
        if is_new {
            self.start(&e);
        }
        let session = self.s.sessions.get_mut(visitor).expect("open");
        if session.id.is_none() {
            session.id = client_id.map(Arc::from);
        }
        let moved = session.last_ms != e.ts_ms || is_new;
        session.last_ms = e.ts_ms;
        let first_page = e.event.is_page_view() && session.pages == 0;
        if e.event.is_page_view() {
            session.pages += 1;
            if !session
                .exit
                .as_ref()
                .is_some_and(|p| Arc::ptr_eq(p, e.page))
            {
                session.exit = Some(e.page.clone());
            }
        }
        if moved {
            self.expiry.push_back((e.ts_ms, visitor.clone()));
        }
        if self.track_changes {
            self.changed_sessions.insert(visitor.clone());
        }
        if e.hits != 0 {
            self.advance_funnels(&e);
        }
        if matches!(e.event, EventType::Purchase) {
            self.purchase(e);
        }
        // Most events are page views that are not a session's first: no minute changes.
        if e.event.is_page_view() && !first_page {
            return;
        }
        let m = self.minute(e.ts_ms);
        if first_page {
            add(&mut m.entry_pages, e.page, 1, max);
        }
        let detail = e.detail;
        match e.event {
            EventType::PageView | EventType::Purchase => {}
            EventType::AddToCart => m.add_to_cart += 1,
            EventType::RemoveFromCart => m.remove_from_cart += 1,
            EventType::BeginCheckout => m.begin_checkout += 1,
            EventType::Search => {
                m.searches += 1;
                if let Some(q) = detail.and_then(|d| d.query.as_deref()) {
                    let q = normal_query(q);
                    if !q.is_empty() {
                        add(&mut m.queries, &q, 1, max);
                    }
                }
            }
            EventType::Custom(name) => add(&mut m.custom_events, name, 1, max),
        }
    }

    /// Moves the visitor's session on in every funnel whose next step `e` meets (one step per
    /// funnel and event).
    fn advance_funnels(&mut self, e: &ShopEvent<'_>) {
        let funnels = self.funnels.clone();
        let session = self.s.sessions.get_mut(e.visitor).expect("open");
        let mut reached: Vec<(Arc<str>, usize, Option<i64>)> = Vec::new();
        for (f, funnel) in funnels.funnels().iter().enumerate() {
            let progress = session
                .funnels
                .iter_mut()
                .find(|p| *p.funnel == *funnel.name);
            let next = progress.as_ref().map_or(0, |p| usize::from(p.reached));
            if next >= funnel.steps.len() || !hit(e.hits, f, next) {
                continue;
            }
            let since = progress.as_ref().map(|p| e.ts_ms - p.at_ms);
            let name = match progress {
                Some(p) => {
                    p.reached += 1;
                    p.at_ms = e.ts_ms;
                    p.funnel.clone()
                }
                None => {
                    let name: Arc<str> = Arc::from(funnel.name.as_str());
                    session.funnels.push(Progress {
                        funnel: name.clone(),
                        reached: 1,
                        at_ms: e.ts_ms,
                    });
                    name
                }
            };
            reached.push((name, next, since));
        }
        for (name, step, since) in reached {
            if let Some(totals) = &mut self.totals {
                totals
                    .entry(name.clone())
                    .or_default()
                    .record(step, e.visitor, since);
            }
            let m = self.minute(e.ts_ms);
            m.funnels
                .entry(name)
                .or_default()
                .record(step, e.visitor, since);
        }
    }

    /// Counts a purchase, unless its order was counted within the hour already.
    fn purchase(&mut self, e: ShopEvent<'_>) {
        let max = self.max_keys;
        let detail = e.detail;
        let order = detail.and_then(|d| d.order.as_ref());
        if let Some(order) = order {
            let minute = super::floor_to(e.ts_ms, MINUTE_MS);
            let seen = self
                .s
                .minutes
                .range(minute - (HOUR_MINUTES - 1) * MINUTE_MS..=minute)
                .any(|(_, m)| m.order_ids.contains(order.id.as_str()));
            if seen {
                return;
            }
        }
        let currency = order
            .and_then(|o| o.currency.as_deref())
            .unwrap_or("")
            .to_ascii_uppercase();
        let m = self.minute(e.ts_ms);
        m.purchases += 1;
        add(&mut m.orders_by_currency, &currency, 1, max);
        // Validation lets no purchase through without an order; one without counts, with no
        // revenue.
        let Some(order) = order else { return };
        m.order_ids.insert(Arc::from(order.id.as_str()));
        add(&mut m.revenue, &currency, hundredths(order.revenue), max);
        for item in &order.items {
            let units = i64::from(item.quantity);
            let value = item.price.map_or(0, |p| hundredths(p * units as f64));
            add(&mut m.product_units, &item.product_id, units, max);
            add(&mut m.product_revenue, &item.product_id, value, max);
        }
    }

    /// A session starts with `e`.
    fn start(&mut self, e: &ShopEvent<'_>) {
        let max = self.max_keys;
        let detail = e.detail;
        let client_id = detail.and_then(|d| d.session_id.as_deref());
        self.s.sessions.insert(
            e.visitor.clone(),
            Session {
                id: client_id.map(Arc::from),
                start_ms: e.ts_ms,
                last_ms: e.ts_ms,
                pages: 0,
                exit: None,
                funnels: Vec::new(),
            },
        );
        let medium = match e.medium {
            Medium::Internal => Medium::Direct,
            m => m,
        };
        let m = self.minute(e.ts_ms);
        m.sessions_started += 1;
        add(&mut m.sources, medium.as_str(), 1, max);
        if matches!(medium, Medium::Direct) {
            return;
        }
        let Some(d) = detail else { return };
        if let Some(host) = d.referrer.as_deref().and_then(crate::source::host_of) {
            add(&mut m.referrer_hosts, &host, 1, max);
        }
        if let Some(utm) = &d.utm {
            for (counts, value) in [
                (&mut m.utm_sources, &utm.source),
                (&mut m.utm_mediums, &utm.medium),
                (&mut m.utm_campaigns, &utm.campaign),
            ] {
                if let Some(v) = value {
                    add(counts, v, 1, max);
                }
            }
        }
    }

    /// A session ends: counted in the minute of `closed_at`.
    fn end(&mut self, session: Session, closed_at: i64) {
        let max = self.max_keys;
        let m = self.minute(closed_at);
        m.sessions_ended += 1;
        m.duration_ms += session.last_ms - session.start_ms;
        m.pages += i64::from(session.pages);
        if session.pages == 1 {
            m.bounces += 1;
        }
        if let Some(exit) = &session.exit {
            add(&mut m.exit_pages, exit, 1, max);
        }
    }

    /// Closes every session whose last event plus the gap is before `ts`: no event at `ts` or
    /// later can continue it. Sessions closing at the same time close in visitor order.
    fn close_before(&mut self, ts: i64) {
        while let Some((last, _)) = self.expiry.front() {
            let closes_at = last + SESSION_GAP_MS;
            if closes_at >= ts {
                break;
            }
            let mut closing: Vec<Visitor> = Vec::new();
            while let Some((l, _)) = self.expiry.front() {
                if l + SESSION_GAP_MS != closes_at {
                    break;
                }
                let (l, v) = self.expiry.pop_front().expect("front");
                if self.s.sessions.get(&v).is_some_and(|s| s.last_ms == l) {
                    closing.push(v);
                }
            }
            closing.sort();
            closing.dedup();
            for v in closing {
                let session = self.s.sessions.remove(&v).expect("open");
                if self.track_changes {
                    self.changed_sessions.insert(v);
                }
                self.end(session, closes_at);
            }
        }
    }

    /// The watermark moved to `now`: closes the sessions no event can continue any more and
    /// forgets minutes that left the hour.
    pub fn advance(&mut self, now: i64) {
        self.close_before(now + 1);
        let oldest = super::floor_to(now, MINUTE_MS) - (HOUR_MINUTES - 1) * MINUTE_MS;
        while let Some((&start, _)) = self.s.minutes.first_key_value() {
            if start >= oldest {
                break;
            }
            self.s.minutes.remove(&start);
            self.changed_minutes.insert(start);
        }
    }

    /// Takes the keys changed since the last call: sessions (by visitor) and minutes (by
    /// start). A key no longer held was removed.
    pub(crate) fn take_changes(&mut self) -> (HashSet<Visitor>, BTreeSet<i64>) {
        (
            std::mem::take(&mut self.changed_sessions),
            std::mem::take(&mut self.changed_minutes),
        )
    }

    /// The session of `visitor`, as checkpointed (JSON), if open.
    pub(crate) fn session_json(&self, visitor: &Visitor) -> Option<Vec<u8>> {
        self.s
            .sessions
            .get(visitor)
            .map(|s| serde_json::to_vec(s).expect("session serializes"))
    }

    /// The minute starting at `start`, as checkpointed (JSON), if held.
    pub(crate) fn minute_json(&self, start: i64) -> Option<Vec<u8>> {
        self.s
            .minutes
            .get(&start)
            .map(|m| serde_json::to_vec(m).expect("minute serializes"))
    }

    /// Reads back a checkpointed session.
    pub(crate) fn restore_session(
        state: &mut ShopState,
        visitor: &str,
        value: &[u8],
    ) -> Result<(), serde_json::Error> {
        state
            .sessions
            .insert(Visitor::new(visitor), serde_json::from_slice(value)?);
        Ok(())
    }

    /// Reads back a checkpointed minute.
    pub(crate) fn restore_minute(
        state: &mut ShopState,
        start: i64,
        value: &[u8],
    ) -> Result<(), serde_json::Error> {
        state.minutes.insert(start, serde_json::from_slice(value)?);
        Ok(())
    }

    /// The shop's figures as of `now`; `title` names a product.
    pub fn snapshot(&self, now: i64, title: impl Fn(&str) -> Option<String>) -> ShopSnapshot {
        let current = super::floor_to(now, MINUTE_MS);
        let hour: Vec<&ShopMinute> = self
            .s
            .minutes
            .range(current - (HOUR_MINUTES - 1) * MINUTE_MS..=current)
            .map(|(_, m)| m)
            .collect();
        let sum = |f: &dyn Fn(&ShopMinute) -> i64| hour.iter().map(|m| f(m)).sum::<i64>();
        let merged = |f: &dyn Fn(&ShopMinute) -> &Counts| {
            let mut all: BTreeMap<&str, i64> = BTreeMap::new();
            for m in &hour {
                for (k, n) in f(m) {
                    *all.entry(k).or_default() += n;
                }
            }
            all
        };
        let ranked = |f: &dyn Fn(&ShopMinute) -> &Counts, top: usize| {
            let mut v: Vec<(&str, i64)> = merged(f).into_iter().filter(|(_, n)| *n != 0).collect();
            v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
            v.into_iter()
                .take(top)
                .map(|(key, count)| Ranked {
                    key: key.to_owned(),
                    count,
                })
                .collect::<Vec<_>>()
        };
        let money = |revenue: &BTreeMap<&str, i64>, orders: &BTreeMap<&str, i64>| {
            let mut currencies: BTreeSet<&str> = revenue.keys().copied().collect();
            currencies.extend(orders.keys().copied());
            currencies
                .into_iter()
                .map(|c| Money {
                    currency: c.to_owned(),
                    hundredths: revenue.get(c).copied().unwrap_or(0),
                    orders: orders.get(c).copied().unwrap_or(0),
                })
                .collect::<Vec<_>>()
        };
        let conversions_per_minute = (0..CHART_MINUTES)
            .rev()
            .map(|back| {
                let start = current - back * MINUTE_MS;
                let m = self.s.minutes.get(&start);
                let revenue: BTreeMap<&str, i64> = m
                    .map(|m| m.revenue.iter().map(|(k, v)| (&**k, *v)).collect())
                    .unwrap_or_default();
                let orders: BTreeMap<&str, i64> = m
                    .map(|m| {
                        m.orders_by_currency
                            .iter()
                            .map(|(k, v)| (&**k, *v))
                            .collect()
                    })
                    .unwrap_or_default();
                ConversionMinute {
                    start_ms: start,
                    add_to_cart: m.map_or(0, |m| m.add_to_cart),
                    begin_checkout: m.map_or(0, |m| m.begin_checkout),
                    purchases: m.map_or(0, |m| m.purchases),
                    revenue: money(&revenue, &orders),
                    is_final: start + MINUTE_MS <= now,
                }
            })
            .collect();
        let product_revenue = merged(&|m| &m.product_revenue);
        let product_units = merged(&|m| &m.product_units);
        let mut products: Vec<(&str, i64, i64)> = product_units
            .iter()
            .map(|(p, units)| (*p, product_revenue.get(p).copied().unwrap_or(0), *units))
            .collect();
        products.sort_by(|a, b| b.1.cmp(&a.1).then(b.2.cmp(&a.2)).then(a.0.cmp(b.0)));
        let top_products_by_revenue_1h = products
            .into_iter()
            .take(TOP)
            .map(|(product_id, hundredths, units)| ProductRevenue {
                product_id: product_id.to_owned(),
                title: title(product_id).unwrap_or_else(|| {
                    if product_id == OTHER_KEY {
                        "Other products".to_owned()
                    } else {
                        "Unknown".to_owned()
                    }
                }),
                units,
                hundredths,
            })
            .collect();
        ShopSnapshot {
            active_sessions: self.s.sessions.len() as u64,
            sessions_1h: SessionTotals {
                started: sum(&|m| m.sessions_started),
                ended: sum(&|m| m.sessions_ended),
                duration_ms: sum(&|m| m.duration_ms),
                pages: sum(&|m| m.pages),
                bounces: sum(&|m| m.bounces),
            },
            entry_pages_1h: ranked(&|m| &m.entry_pages, TOP),
            exit_pages_1h: ranked(&|m| &m.exit_pages, TOP),
            sources_1h: ranked(&|m| &m.sources, Medium::ALL.len()),
            referrer_hosts_1h: ranked(&|m| &m.referrer_hosts, TOP),
            utm_sources_1h: ranked(&|m| &m.utm_sources, TOP),
            utm_mediums_1h: ranked(&|m| &m.utm_mediums, TOP),
            utm_campaigns_1h: ranked(&|m| &m.utm_campaigns, TOP),
            conversions_per_minute,
            conversions_1h: ConversionTotals {
                add_to_cart: sum(&|m| m.add_to_cart),
                remove_from_cart: sum(&|m| m.remove_from_cart),
                begin_checkout: sum(&|m| m.begin_checkout),
                purchases: sum(&|m| m.purchases),
                searches: sum(&|m| m.searches),
                revenue: money(
                    &merged(&|m| &m.revenue),
                    &merged(&|m| &m.orders_by_currency),
                ),
            },
            top_products_by_revenue_1h,
            top_queries_1h: ranked(&|m| &m.queries, TOP),
            custom_events_1h: ranked(&|m| &m.custom_events, TOP),
            funnels_1h: funnel_results(&self.funnels, |name| {
                hour.iter().filter_map(|m| m.funnels.get(name)).collect()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Order;

    const T0: i64 = 1_331_000_000_000;

    struct Feed {
        w: ShopWindows,
        page: Arc<str>,
    }

    impl Feed {
        fn new(max_keys: usize) -> Self {
            Feed {
                w: ShopWindows::new(max_keys),
                page: Arc::from("/p"),
            }
        }

        fn event(&mut self, ts: i64, visitor: &str, event: EventType, detail: Option<EventDetail>) {
            let v = Visitor::new(visitor);
            self.w.apply(ShopEvent {
                ts_ms: ts,
                visitor: &v,
                event: &event,
                page: &self.page,
                medium: Medium::Direct,
                detail: detail.as_ref(),
                hits: 0,
            });
        }
    }

    #[test]
    fn a_session_is_final_once_the_watermark_is_30_minutes_past_its_last_event() {
        let mut f = Feed::new(10);
        f.event(T0, "a", EventType::PageView, None);
        f.event(T0 + 60_000, "a", EventType::PageView, None);
        let last = T0 + 60_000;
        f.w.advance(last + SESSION_GAP_MS - 1);
        let s = f.w.snapshot(last + SESSION_GAP_MS - 1, |_| None);
        assert_eq!((s.active_sessions, s.sessions_1h.ended), (1, 0));
        f.w.advance(last + SESSION_GAP_MS);
        let s = f.w.snapshot(last + SESSION_GAP_MS, |_| None);
        assert_eq!((s.active_sessions, s.sessions_1h.ended), (0, 1));
        assert_eq!(s.sessions_1h.duration_ms, 60_000);
        assert_eq!((s.sessions_1h.pages, s.sessions_1h.bounces), (2, 0));
        assert_eq!(s.exit_pages_1h[0].key, "/p");
    }

    #[test]
    fn an_event_exactly_30_minutes_later_continues_the_session_and_another_client_id_ends_it() {
        let mut f = Feed::new(10);
        f.event(T0, "a", EventType::PageView, None);
        f.event(T0 + SESSION_GAP_MS, "a", EventType::PageView, None);
        assert_eq!(
            f.w.snapshot(T0 + SESSION_GAP_MS, |_| None)
                .sessions_1h
                .started,
            1
        );
        let with_id = |id: &str| EventDetail {
            session_id: Some(id.into()),
            ..EventDetail::default()
        };
        let t = T0 + SESSION_GAP_MS + 1_000;
        f.event(t, "a", EventType::PageView, Some(with_id("s1")));
        f.event(t + 1_000, "a", EventType::PageView, Some(with_id("s2")));
        let s = f.w.snapshot(t + 1_000, |_| None);
        assert_eq!((s.sessions_1h.started, s.sessions_1h.ended), (2, 1));
        assert_eq!(s.sessions_1h.pages, 3);
    }

    #[test]
    fn keys_over_a_minute_s_bound_count_as_other_and_an_order_sent_twice_counts_once() {
        let mut f = Feed::new(2);
        for (i, q) in ["a", "b", "c", "d"].iter().enumerate() {
            let detail = EventDetail {
                query: Some((*q).into()),
                ..EventDetail::default()
            };
            f.event(T0 + i as i64, "v", EventType::Search, Some(detail));
        }
        let order = EventDetail {
            order: Some(Order {
                id: "o1".into(),
                revenue: 10.25,
                currency: Some("EUR".into()),
                items: vec![],
            }),
            ..EventDetail::default()
        };
        f.event(T0 + 10, "v", EventType::Purchase, Some(order.clone()));
        f.event(T0 + 20 * MINUTE_MS, "v", EventType::Purchase, Some(order));
        let s = f.w.snapshot(T0 + 20 * MINUTE_MS, |_| None);
        let queries: Vec<(&str, i64)> = s
            .top_queries_1h
            .iter()
            .map(|r| (r.key.as_str(), r.count))
            .collect();
        assert_eq!(queries, [(OTHER_KEY, 2), ("a", 1), ("b", 1)]);
        assert_eq!(s.conversions_1h.purchases, 1);
        assert_eq!(
            s.conversions_1h.revenue,
            [Money {
                currency: "EUR".into(),
                hundredths: 1025,
                orders: 1
            }]
        );
    }
}
