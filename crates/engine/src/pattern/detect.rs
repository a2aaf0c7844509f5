//! The detection operator: every active pattern over every visitor's views.
//!
//! Per visitor it keeps one slot per pattern with a live [`Match`] and, for patterns with a
//! frequency cap, the time of the last offer. An idle visitor (no live match, no cap pending)
//! has no entry at all; a visitor whose match expired under `late = "reset"` keeps it (trimmed
//! to its start and last product) until their next view, which it decides. Offers are emitted
//! to `special-offers` with a deterministic `offer_id` (a hash of visitor, pattern, version,
//! match start and completing view time), so reprocessing after a crash yields the same ids and
//! downstream can de-duplicate.
//!
//! Pattern reloads: a slot whose pattern changed version is dropped on the visitor's next view
//! (in-flight matches of the old version do not complete under the new rules); the frequency
//! cap carries over. A removed pattern's slots are dropped.

use ahash::{AHashMap as HashMap, AHashSet as HashSet};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::machine::{Cause, Earned, Fired, Match, Pattern, Step};
use super::{PatternRegistry, PatternSet};
use crate::click::{EnrichedClick, EnrichedRef};
use crate::operator::{Context, Operator, RecordError, RestoreError, StateChanges};
use crate::session::VisitorSession;
use crate::topics::Topic;

/// A special offer for one visitor (topic `special-offers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// Deterministic id: same input, same id.
    pub offer_id: String,
    /// Visitor id.
    pub visitor: String,
    /// Pattern name.
    pub pattern: String,
    /// Pattern version (content hash of its file).
    pub pattern_version: String,
    /// The offer (`offer1`, `offer2`, …).
    pub offer: String,
    /// Event time of the completing view.
    pub ts_ms: i64,
    /// The product the offer is for, when the pattern says (`[offer] product_from`): the shop
    /// shows and links it in place of the offer's own.
    #[serde(default)]
    pub product: Option<String>,
}

/// One entry of the transition log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitionRecord {
    /// Event time of the view.
    pub ts_ms: i64,
    /// Visitor id.
    pub visitor: String,
    /// Pattern name.
    pub pattern: String,
    /// From state.
    pub from: String,
    /// To state (`offer` when the offer was reached).
    pub to: String,
    /// Why.
    pub cause: Cause,
    /// The view's product.
    pub product_id: String,
    /// The view's category.
    pub category: String,
    /// The offer emitted, if this step emitted one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offer: Option<String>,
}

/// A bounded log of recent transitions, globally and per visitor.
#[derive(Debug)]
pub struct TransitionLog {
    global: VecDeque<TransitionRecord>,
    per_visitor: HashMap<String, VecDeque<TransitionRecord>>,
    visitor_order: VecDeque<String>,
    global_cap: usize,
    per_visitor_cap: usize,
    visitors_cap: usize,
    /// Entries not yet taken by [`TransitionLog::drain_outbox`], when an outbox is kept.
    outbox: Option<VecDeque<TransitionRecord>>,
}

/// Most entries an outbox holds; older ones are dropped when nobody drains it.
const OUTBOX_CAP: usize = 10_000;

impl Default for TransitionLog {
    fn default() -> Self {
        Self::new(1_000, 50, 10_000)
    }
}

impl TransitionLog {
    /// A log keeping `global_cap` entries overall and `per_visitor_cap` for each of the
    /// `visitors_cap` most recently started visitors.
    pub fn new(global_cap: usize, per_visitor_cap: usize, visitors_cap: usize) -> Self {
        TransitionLog {
            global: VecDeque::new(),
            per_visitor: HashMap::new(),
            visitor_order: VecDeque::new(),
            global_cap,
            per_visitor_cap,
            visitors_cap,
            outbox: None,
        }
    }

    /// Also keeps every new entry in an outbox, for shipping the log elsewhere (the distributed
    /// detection stage copies it to a Redis stream).
    pub fn with_outbox(mut self) -> Self {
        self.outbox = Some(VecDeque::new());
        self
    }

    /// Takes the entries added since the last call (oldest first).
    pub fn drain_outbox(&mut self) -> Vec<TransitionRecord> {
        self.outbox
            .as_mut()
            .map(|o| o.drain(..).collect())
            .unwrap_or_default()
    }

    /// Adds an entry.
    pub fn push(&mut self, record: TransitionRecord) {
        if !self.per_visitor.contains_key(&record.visitor) {
            if self.visitor_order.len() >= self.visitors_cap
                && let Some(old) = self.visitor_order.pop_front()
            {
                self.per_visitor.remove(&old);
            }
            self.visitor_order.push_back(record.visitor.clone());
        }
        let mine = self.per_visitor.entry(record.visitor.clone()).or_default();
        if mine.len() >= self.per_visitor_cap {
            mine.pop_front();
        }
        mine.push_back(record.clone());
        if let Some(outbox) = self.outbox.as_mut() {
            if outbox.len() >= OUTBOX_CAP {
                outbox.pop_front();
            }
            outbox.push_back(record.clone());
        }
        if self.global.len() >= self.global_cap {
            self.global.pop_front();
        }
        self.global.push_back(record);
    }

    /// The newest entries (newest first), of one visitor or of everyone.
    pub fn recent(&self, visitor: Option<&str>, limit: usize) -> Vec<TransitionRecord> {
        let source = match visitor {
            Some(v) => match self.per_visitor.get(v) {
                Some(q) => q,
                None => return Vec::new(),
            },
            None => &self.global,
        };
        source.iter().rev().take(limit).cloned().collect()
    }
}

/// Counters of the detection stage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetectStats {
    /// Views processed.
    pub events: u64,
    /// Offers emitted.
    pub offers: u64,
    /// Offers reached but suppressed by a frequency cap.
    pub offers_suppressed: u64,
    /// Offers emitted per pattern.
    pub offers_by_pattern: BTreeMap<String, u64>,
    /// Highest event time seen.
    pub watermark_ms: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Slot {
    pattern: Arc<str>,
    version: Arc<str>,
    // Every field is written (no `skip_serializing_if`): checkpoints are postcard, which has no
    // field names to tell a left-out field by. `default` still reads JSON states that left it out.
    #[serde(default)]
    live: Option<Match>,
    #[serde(default)]
    last_offer_ms: Option<i64>,
}

/// Everything Clickpulse keeps about one visitor's pattern progress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct VisitorState {
    slots: Vec<Slot>,
    /// The visitor's current session, while a pattern asks about sessions and it has not ended.
    #[serde(default)]
    session: Option<VisitorSession>,
}

/// The first byte of a visitor state checkpointed as postcard. States written before it are JSON
/// objects and begin with `{`: both read back.
const STATE_POSTCARD: u8 = 1;

impl VisitorState {
    /// Its checkpoint value. Every event a session-tracking pattern sees changes its visitor's
    /// state, so the state of every visitor active since the last checkpoint is written at each
    /// one: postcard, not JSON, keeps that cheap.
    fn encode(&self) -> Vec<u8> {
        postcard::to_extend(self, vec![STATE_POSTCARD]).expect("visitor state serializes")
    }

    /// Reads a value [`VisitorState::encode`] wrote, or a JSON one of an older data dir.
    fn decode(bytes: &[u8]) -> Result<VisitorState, String> {
        match bytes.split_first() {
            Some((&STATE_POSTCARD, rest)) => postcard::from_bytes(rest).map_err(|e| e.to_string()),
            Some((b'{', _)) => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
            _ => Err("not a visitor state (neither postcard nor JSON)".to_owned()),
        }
    }
}

impl VisitorState {
    /// Whether nothing of it matters any more.
    fn is_empty(&self) -> bool {
        self.slots.is_empty() && self.session.is_none()
    }
}

/// How far behind the highest event time a visitor's views may arrive before its expired
/// matches are swept (sweeping is only memory hygiene: an expired match is discarded on the
/// visitor's next view anyway, and of one whose pattern says `late = "reset"` the sweep keeps
/// what decides that view).
const SWEEP_GRACE_MS: i64 = 3_600_000;
/// Views between sweeps.
const SWEEP_EVERY: u64 = 10_000;

/// Per-pattern audience tracking for backtests.
#[derive(Debug, Default)]
struct AudienceTracker {
    in_audience: HashMap<String, HashSet<String>>,
    offered: HashMap<String, HashSet<String>>,
}

/// Adds `visitor` to `pattern`'s set, copying the two names only when they are new (most views
/// of an audience visitor find both already there).
fn record_visitor(sets: &mut HashMap<String, HashSet<String>>, pattern: &str, visitor: &str) {
    if !sets.contains_key(pattern) {
        sets.insert(pattern.to_owned(), HashSet::new());
    }
    let visitors = sets.get_mut(pattern).expect("inserted above");
    if !visitors.contains(visitor) {
        visitors.insert(visitor.to_owned());
    }
}

/// The detection stage: `enriched-click-data` → `special-offers`.
pub struct DetectOperator {
    registry: PatternRegistry,
    set: Arc<PatternSet>,
    generation: u64,
    visitors: HashMap<String, VisitorState>,
    dirty: HashSet<String>,
    log: Option<Arc<Mutex<TransitionLog>>>,
    stats: DetectStats,
    since_sweep: u64,
    audience: Option<AudienceTracker>,
    checkpointing: bool,
    checkpointed_events: u64,
    /// Deadlines of waiting matches, by event time (an entry may outlive its match: firing
    /// looks at the match itself).
    deadlines: BTreeSet<(i64, String)>,
    /// What the deadlines' watermark follows (the windows' rules), when run by a runner.
    event_time: Option<crate::operator::EventTimeRules>,
}

impl DetectOperator {
    /// A detector running the registry's current patterns (and picking up replacements).
    pub fn new(registry: PatternRegistry) -> Self {
        let set = registry.current();
        DetectOperator {
            generation: registry.generation(),
            registry,
            set,
            visitors: HashMap::new(),
            dirty: HashSet::new(),
            log: None,
            stats: DetectStats::default(),
            since_sweep: 0,
            audience: None,
            checkpointing: true,
            checkpointed_events: 0,
            deadlines: BTreeSet::new(),
            event_time: None,
        }
    }

    /// Fires deadlines by the windows' watermark rules (lateness, idle partitions, the live
    /// frontier) instead of the lowest partition's newest event: an absence completes on time
    /// also while some partitions, or the whole shop, are quiet.
    pub fn with_event_time_rules(mut self, rules: crate::operator::EventTimeRules) -> Self {
        self.event_time = Some(rules);
        self
    }

    /// Also writes every transition to `log`.
    pub fn with_log(mut self, log: Arc<Mutex<TransitionLog>>) -> Self {
        self.log = Some(log);
        self
    }

    /// Also tracks, per pattern, which visitors were in the audience and which got an offer.
    pub fn with_audience_tracking(mut self) -> Self {
        self.audience = Some(AudienceTracker::default());
        self
    }

    /// Stops tracking which visitors changed since the last checkpoint (for in-process runs
    /// such as backtests that never checkpoint).
    pub fn without_checkpoints(mut self) -> Self {
        self.checkpointing = false;
        self
    }

    /// The counters.
    pub fn counters(&self) -> &DetectStats {
        &self.stats
    }

    /// Visitors with live state.
    pub fn active_visitors(&self) -> usize {
        self.visitors.len()
    }

    /// Per pattern: (visitors in the audience, visitors who got an offer). Empty unless
    /// [`DetectOperator::with_audience_tracking`] was used.
    pub fn audience_counts(&self) -> BTreeMap<String, (usize, usize)> {
        let Some(a) = &self.audience else {
            return BTreeMap::new();
        };
        self.set
            .patterns()
            .iter()
            .map(|p| {
                let n =
                    |m: &HashMap<String, HashSet<String>>| m.get(&p.name).map_or(0, |s| s.len());
                (p.name.clone(), (n(&a.in_audience), n(&a.offered)))
            })
            .collect()
    }

    /// Runs one view through every pattern; returns the offers it earned. For a caller with
    /// one input in event-time order (a backtest): the highest event time seen is the
    /// watermark.
    pub fn detect(&mut self, click: &EnrichedClick) -> Vec<Offer> {
        self.detect_ref(&click.borrowed())
    }

    /// [`DetectOperator::detect`] for a borrowed view: first the deadlines its time passes
    /// fire (every visitor's), then the view goes through the patterns.
    pub fn detect_ref(&mut self, click: &EnrichedRef<'_>) -> Vec<Offer> {
        let watermark = self
            .stats
            .watermark_ms
            .map_or(click.ts_ms, |w| w.max(click.ts_ms));
        if self.deadlines.is_empty() {
            return self.detect_at(click, watermark);
        }
        let mut offers = self.fire_due(watermark);
        offers.extend(self.detect_at(click, watermark));
        offers
    }

    /// Takes the registry's current patterns if they were replaced.
    fn pick_up_replacements(&mut self) {
        let generation = self.registry.generation();
        if generation != self.generation {
            self.set = self.registry.current();
            self.generation = generation;
        }
    }

    /// Fires every deadline at or before `watermark` (event time): the offers they earn.
    pub fn fire_due(&mut self, watermark: i64) -> Vec<Offer> {
        self.pick_up_replacements();
        let mut offers = Vec::new();
        while self
            .deadlines
            .first()
            .is_some_and(|(at, _)| *at <= watermark)
        {
            let (_, visitor) = self.deadlines.pop_first().expect("checked above");
            offers.extend(self.fire_visitor(&visitor, watermark));
        }
        offers
    }

    /// Fires `visitor`'s deadlines at or before `now_ms`.
    fn fire_visitor(&mut self, visitor: &str, now_ms: i64) -> Vec<Offer> {
        let Some((key, mut state)) = self.visitors.remove_entry(visitor) else {
            return Vec::new();
        };
        let set = self.set.clone();
        let mut offers = Vec::new();
        let mut changed = false;
        for slot in &mut state.slots {
            let Some(pattern) = set.get(&slot.pattern) else {
                continue;
            };
            // A match of an earlier version of the pattern is dropped, as an event would drop it.
            if *slot.version != *pattern.version {
                if slot.live.take().is_some() {
                    changed = true;
                }
                continue;
            }
            let Some(fired) = pattern.fire_due(&mut slot.live, now_ms) else {
                continue;
            };
            changed = true;
            offers.extend(deadline_passed(
                (&mut self.stats, &mut self.audience, self.log.as_ref()),
                pattern,
                visitor,
                &mut slot.last_offer_ms,
                &fired,
            ));
        }
        state.slots.retain(|s| !is_idle(&set, s, now_ms));
        if changed && self.checkpointing {
            self.dirty.insert(key.clone());
        }
        if !state.is_empty() {
            self.visitors.insert(key, state);
        }
        offers
    }

    /// Runs one view through every pattern at the runner's `watermark` (what state can be
    /// swept by); returns the offers it earned.
    pub fn detect_at(&mut self, click: &EnrichedRef<'_>, watermark: i64) -> Vec<Offer> {
        self.pick_up_replacements();
        self.stats.events += 1;
        self.stats.watermark_ms = Some(
            self.stats
                .watermark_ms
                .map_or(click.ts_ms, |w| w.max(click.ts_ms)),
        );
        let mut offers = Vec::new();
        // Borrowed, not cloned: reference counts cost an atomic operation each, and with the
        // blank slot below they were two thirds of this function's time.
        let set: &PatternSet = &self.set;
        // Take the visitor's slots out (keeping the key's allocation) and put back what is left.
        let (key, mut slots, mut session) = match self.visitors.remove_entry(click.visitor) {
            Some((key, state)) => (Some(key), state.slots, state.session),
            None => (None, Vec::new(), None),
        };
        let before = slots.len();
        slots.retain(|s| set.get(&s.pattern).is_some());
        let mut changed = slots.len() != before;
        // The session is kept only while a pattern asks about it; then every event changes it.
        let with_session;
        let click = if set.uses_sessions() {
            let facts = VisitorSession::apply(&mut session, click);
            changed = true;
            with_session = EnrichedRef {
                session: Some(facts),
                ..*click
            };
            &with_session
        } else {
            changed |= session.take().is_some();
            click
        };
        // Whether the view is in each distinct audience (bit `g` of `in_audience` for the
        // audience of pattern `g`), evaluated when first asked (bit `g` of `asked`). Patterns
        // after the 64th evaluate their own.
        let (mut asked, mut in_audience) = (0u64, 0u64);
        for (i, pattern) in set.patterns().iter().enumerate() {
            // An event of a type the pattern does not see leaves its match as it is (a
            // deadline it passes still fires first).
            let has_timers = !pattern.timers.is_empty();
            if !has_timers && !pattern.events.sees(click.event) {
                continue;
            }
            let index = slots.iter().position(|s| *s.pattern == *pattern.name);
            // A visitor without a slot for the pattern starts from a blank one, made a `Slot`
            // only if it is kept.
            let (mut blank_live, mut blank_last_offer) = (None, None);
            let (live, last_offer_ms) = match index {
                Some(i) => {
                    let slot = &mut slots[i];
                    if *slot.version != *pattern.version {
                        slot.version = Arc::from(pattern.version.as_str());
                        slot.live = None;
                        changed = true;
                    }
                    (&mut slot.live, &mut slot.last_offer_ms)
                }
                None => (&mut blank_live, &mut blank_last_offer),
            };
            // A deadline due by this event's time fires before the event is looked at.
            if has_timers && let Some(fired) = pattern.fire_due(live, click.ts_ms) {
                offers.extend(deadline_passed(
                    (&mut self.stats, &mut self.audience, self.log.as_ref()),
                    pattern,
                    click.visitor,
                    last_offer_ms,
                    &fired,
                ));
                changed = true;
            }
            if !pattern.events.sees(click.event) {
                continue;
            }
            let outcome = pattern.advance_with(live, click, || {
                let group = set.audience_of(i);
                let Some(bit) = 1u64.checked_shl(group as u32) else {
                    return pattern.audience.eval(click, None);
                };
                if asked & bit == 0 {
                    asked |= bit;
                    if pattern.audience.eval(click, None) {
                        in_audience |= bit;
                    }
                }
                in_audience & bit != 0
            });
            if let Some(tracker) = self.audience.as_mut()
                && outcome.in_audience
            {
                record_visitor(&mut tracker.in_audience, &pattern.name, click.visitor);
            }
            let given = outcome.offer.as_ref().and_then(|earned| {
                give_offer(
                    &mut self.stats,
                    &mut self.audience,
                    pattern,
                    last_offer_ms,
                    click.visitor,
                    earned,
                    click.ts_ms,
                )
            });
            changed |= !outcome.steps.is_empty() || given.is_some();
            if !outcome.steps.is_empty() {
                log_steps(
                    self.log.as_ref(),
                    pattern,
                    click.visitor,
                    &outcome.steps,
                    (click.ts_ms, click.product_id, click.category),
                    given.as_ref().map(|o| &o.offer),
                );
            }
            offers.extend(given);
            if !outcome.steps.is_empty()
                && let Some(d) = live.as_ref().and_then(|m| m.deadline.as_ref())
            {
                self.deadlines.insert((d.at_ms, click.visitor.to_owned()));
            }
            if index.is_none()
                && !idle(
                    &blank_live,
                    blank_last_offer,
                    pattern.frequency_cap_ms,
                    click.ts_ms,
                )
            {
                slots.push(Slot {
                    pattern: Arc::from(pattern.name.as_str()),
                    version: Arc::from(pattern.version.as_str()),
                    live: blank_live,
                    last_offer_ms: blank_last_offer,
                });
            }
        }
        let before = slots.len();
        slots.retain(|s| !is_idle(set, s, click.ts_ms));
        changed |= slots.len() != before;
        if changed && self.checkpointing {
            self.dirty.insert(click.visitor.to_owned());
        }
        if !slots.is_empty() || session.is_some() {
            let key = key.unwrap_or_else(|| click.visitor.to_owned());
            self.visitors.insert(key, VisitorState { slots, session });
        }
        self.since_sweep += 1;
        // Sweeping visits every visitor, so it runs once per that many views: O(1) amortized.
        if self.since_sweep >= SWEEP_EVERY.max(self.visitors.len() as u64) {
            self.since_sweep = 0;
            self.sweep(watermark);
        }
        offers
    }

    /// Drops state that can no longer matter: matches expired well before the watermark (or,
    /// for a pattern with `late = "reset"`, whose expired match still decides the visitor's next
    /// view, what of them can no longer matter: see [`Pattern::forget_expired`]).
    fn sweep(&mut self, watermark: i64) {
        let now = watermark - SWEEP_GRACE_MS;
        let set = self.set.clone();
        let dirty = &mut self.dirty;
        let checkpointing = self.checkpointing;
        self.visitors.retain(|visitor, state| {
            let before = state.slots.len();
            let mut trimmed = false;
            for slot in &mut state.slots {
                if let Some(p) = set.get(&slot.pattern) {
                    trimmed |= p.forget_expired(&mut slot.live, now);
                }
            }
            state.slots.retain(|s| !is_idle(&set, s, now));
            // A session ended (by the same grace) cannot be continued by a view still to come.
            if state
                .session
                .as_ref()
                .is_some_and(|s| !set.uses_sessions() || s.has_ended(now))
            {
                state.session = None;
                trimmed = true;
            }
            if checkpointing && (trimmed || state.slots.len() != before || state.is_empty()) {
                dirty.insert(visitor.clone());
            }
            !state.is_empty()
        });
    }
}

/// A slot with no live match and no frequency cap still running holds nothing worth keeping.
fn is_idle(set: &PatternSet, slot: &Slot, now_ms: i64) -> bool {
    let cap = set.get(&slot.pattern).and_then(|p| p.frequency_cap_ms);
    idle(&slot.live, slot.last_offer_ms, cap, now_ms)
}

/// Whether a slot with this match and last offer holds nothing that matters at `now_ms`.
fn idle(
    live: &Option<Match>,
    last_offer_ms: Option<i64>,
    frequency_cap_ms: Option<i64>,
    now_ms: i64,
) -> bool {
    if live.is_some() {
        return false;
    }
    match (last_offer_ms, frequency_cap_ms) {
        (Some(last), Some(cap)) => now_ms - last >= cap,
        _ => true,
    }
}

/// The offer `pattern` gives `visitor` for a match started at `started_ms` and completed at
/// `at_ms` (by an event then, or by a deadline passing): its id is derived from these, so a
/// replay or a restart gives the same one.
fn make_offer(visitor: &str, pattern: &Pattern, earned: &Earned, at_ms: i64) -> Offer {
    let key = format!(
        "{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}",
        visitor, pattern.name, pattern.version, earned.started_ms, at_ms
    );
    Offer {
        offer_id: format!("{:032x}", xxhash_rust::xxh3::xxh3_128(key.as_bytes())),
        visitor: visitor.to_owned(),
        pattern: pattern.name.clone(),
        pattern_version: pattern.version.clone(),
        offer: earned.offer.clone(),
        ts_ms: at_ms,
        product: earned.product.as_deref().map(str::to_owned),
    }
}

/// An offer reached at `at_ms`: given (and counted), or held back by the pattern's frequency
/// cap (counted as suppressed).
fn give_offer(
    stats: &mut DetectStats,
    audience: &mut Option<AudienceTracker>,
    pattern: &Pattern,
    last_offer_ms: &mut Option<i64>,
    visitor: &str,
    earned: &Earned,
    at_ms: i64,
) -> Option<Offer> {
    let capped = match (pattern.frequency_cap_ms, *last_offer_ms) {
        (Some(cap), Some(last)) => at_ms - last < cap,
        _ => false,
    };
    if capped {
        stats.offers_suppressed += 1;
        return None;
    }
    if pattern.frequency_cap_ms.is_some() {
        *last_offer_ms = Some(at_ms);
    }
    stats.offers += 1;
    *stats
        .offers_by_pattern
        .entry(pattern.name.clone())
        .or_default() += 1;
    if let Some(tracker) = audience.as_mut() {
        record_visitor(&mut tracker.offered, &pattern.name, visitor);
    }
    Some(make_offer(visitor, pattern, earned, at_ms))
}

/// A deadline that passed: its offer (if it earned one the cap allows), counted and logged.
fn deadline_passed(
    (stats, audience, log): (
        &mut DetectStats,
        &mut Option<AudienceTracker>,
        Option<&Arc<Mutex<TransitionLog>>>,
    ),
    pattern: &Pattern,
    visitor: &str,
    last_offer_ms: &mut Option<i64>,
    fired: &Fired,
) -> Option<Offer> {
    let given = fired.offer.as_ref().and_then(|earned| {
        give_offer(
            stats,
            audience,
            pattern,
            last_offer_ms,
            visitor,
            earned,
            fired.at_ms,
        )
    });
    log_steps(
        log,
        pattern,
        visitor,
        std::slice::from_ref(&fired.step),
        (fired.at_ms, &fired.product, ""),
        given.as_ref().map(|o| &o.offer),
    );
    given
}

/// Writes state changes to the transition log, if there is one: `(time, product, category)`
/// of what made them, and the offer the last one gave.
fn log_steps(
    log: Option<&Arc<Mutex<TransitionLog>>>,
    pattern: &Pattern,
    visitor: &str,
    steps: &[Step],
    (ts_ms, product, category): (i64, &str, &str),
    offer: Option<&String>,
) {
    let Some(log) = log else {
        return;
    };
    if steps.is_empty() {
        return;
    }
    let mut log = log.lock().expect("transition log lock");
    for step in steps {
        log.push(TransitionRecord {
            ts_ms,
            visitor: visitor.to_owned(),
            pattern: pattern.name.clone(),
            from: pattern.state_name(Some(step.from)).to_owned(),
            to: pattern.state_name(step.to).to_owned(),
            cause: step.cause,
            product_id: product.to_owned(),
            category: category.to_owned(),
            offer: if step.to.is_none() {
                offer.cloned()
            } else {
                None
            },
        });
    }
}

const STATS_KEY: &str = "stats";
const VISITOR_PREFIX: &str = "v/";

impl Operator for DetectOperator {
    fn name(&self) -> &'static str {
        "detect"
    }

    fn input_topics(&self) -> Vec<Topic> {
        vec![Topic::EnrichedClickData]
    }

    fn process_record(&mut self, value: &[u8], ctx: &mut Context<'_>) -> Result<(), RecordError> {
        let click = crate::codec::decode::<EnrichedClick>(value)?;
        ctx.event_time(click.ts_ms);
        let watermark = ctx.watermark().unwrap_or(click.ts_ms);
        for offer in self.detect_at(&click.borrowed(), watermark) {
            ctx.out.emit(Topic::SpecialOffers, &offer.visitor, &offer);
        }
        Ok(())
    }

    fn event_time_rules(&self) -> Option<crate::operator::EventTimeRules> {
        self.event_time.clone()
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut crate::operator::Emitter) {
        for offer in self.fire_due(watermark) {
            out.emit(Topic::SpecialOffers, &offer.visitor, &offer);
        }
    }

    fn checkpoint(&mut self, changes: &mut StateChanges) {
        if self.dirty.is_empty() && self.checkpointed_events == self.stats.events {
            return;
        }
        self.checkpointed_events = self.stats.events;
        for visitor in self.dirty.drain() {
            let value = self.visitors.get(&visitor).map(VisitorState::encode);
            changes.push((format!("{VISITOR_PREFIX}{visitor}"), value));
        }
        changes.push((
            STATS_KEY.to_owned(),
            Some(serde_json::to_vec(&self.stats).expect("stats serialize")),
        ));
    }

    fn restore(&mut self, key: &str, value: &[u8]) -> Result<(), RestoreError> {
        let err = |message: String| RestoreError {
            operator: "detect",
            key: key.to_owned(),
            message,
        };
        if key == STATS_KEY {
            self.stats = serde_json::from_slice(value).map_err(|e| err(e.to_string()))?;
            self.checkpointed_events = self.stats.events;
        } else if let Some(visitor) = key.strip_prefix(VISITOR_PREFIX) {
            let state = VisitorState::decode(value).map_err(err)?;
            for m in state.slots.iter().filter_map(|s| s.live.as_ref()) {
                if let Some(d) = &m.deadline {
                    self.deadlines.insert((d.at_ms, visitor.to_owned()));
                }
            }
            self.visitors.insert(visitor.to_owned(), state);
        }
        Ok(())
    }

    fn stats(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.stats).expect("stats serialize");
        v["active_visitors"] = self.visitors.len().into();
        v["patterns"] = self
            .set
            .patterns()
            .iter()
            .map(|p| serde_json::json!({"name": p.name, "version": p.version}))
            .collect::<Vec<_>>()
            .into();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pattern::machine::Deadline;

    fn waiting_state() -> VisitorState {
        let product: Arc<str> = "VD55177927".into();
        VisitorState {
            slots: vec![
                Slot {
                    pattern: "cart-abandonment".into(),
                    version: "3".into(),
                    live: Some(Match {
                        state: 1,
                        started_ms: 1_330_588_819_000,
                        last_product: product.clone(),
                        entered: vec![(1, product.clone())],
                        seen: vec![product],
                        deadline: Some(Deadline {
                            at_ms: 1_330_589_719_000,
                            offer: Some("cart-discount".into()),
                        }),
                    }),
                    last_offer_ms: None,
                },
                Slot {
                    pattern: "seed".into(),
                    version: "1".into(),
                    live: None,
                    last_offer_ms: Some(1_330_500_000_000),
                },
            ],
            session: None,
        }
    }

    /// Drops every `null` member, as JSON states were written before postcard
    /// (`skip_serializing_if`).
    fn without_nulls(value: serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::Object(map) => map
                .into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, without_nulls(v)))
                .collect(),
            serde_json::Value::Array(items) => items.into_iter().map(without_nulls).collect(),
            other => other,
        }
    }

    #[test]
    fn visitor_states_round_trip_as_postcard_and_older_json_states_still_restore() {
        let state = waiting_state();
        let bytes = state.encode();
        assert_eq!(bytes[0], STATE_POSTCARD);
        assert_eq!(VisitorState::decode(&bytes).unwrap(), state);
        let old = without_nulls(serde_json::to_value(&state).unwrap()).to_string();
        assert!(!old.contains("null"), "{old}");
        assert_eq!(VisitorState::decode(old.as_bytes()).unwrap(), state);
        for bad in [&b""[..], b"\x02junk", b"[1]", &bytes[..bytes.len() - 1]] {
            assert!(VisitorState::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_restored_postcard_state_brings_its_deadline_back() {
        let mut op = DetectOperator::new(PatternRegistry::new(PatternSet::default()));
        op.restore("v/amber-falcon", &waiting_state().encode())
            .unwrap();
        assert_eq!(
            op.deadlines.iter().collect::<Vec<_>>(),
            [&(1_330_589_719_000, "amber-falcon".to_owned())]
        );
        let err = op.restore("v/x", b"\x07").unwrap_err();
        assert!(err.message.contains("neither postcard nor JSON"), "{err:?}");
    }
}
