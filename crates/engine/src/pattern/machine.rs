//! Compiled patterns and the per-visitor state machine that runs them.
//!
//! A [`Pattern`] is plain data: states, and for each state an ordered list of [`Transition`]s
//! guarded by a [`Condition`]. [`Condition`] is an `enum` evaluated by a `match` — no closures —
//! so patterns loaded at run time cost the same as hand-written ones, can be explained back to
//! people, and serialize with their state.
//!
//! # Semantics (one view of one visitor, for one pattern)
//! 1. A view that comes `within` or longer after the live match's first recorded view (event
//!    time) is late. Under [`Late::Restart`] (the default) the match has expired: it is
//!    discarded, and the view is evaluated from `init` (so such a match can be dropped at any
//!    time without changing a result). Under [`Late::Reset`] (the original detector's rule) a
//!    page refresh (below) is still ignored, and any other late view resets the match to `init`
//!    and is dropped: it starts nothing. Such a match matters until the visitor's next view, so
//!    it is kept, trimmed by [`Pattern::forget_expired`] to what can still matter.
//! 2. With `ignore_refresh`, a view of the product of the match's last recorded view is a page
//!    refresh: ignored entirely.
//! 3. A view matching `abort_if` ends the match (back to `init`); it starts nothing.
//! 4. From `init`, a view starts a match only if the visitor is in the audience and a transition
//!    from `init` accepts it. From another state, the first transition (in file order) whose
//!    condition holds is taken; the view is recorded (last product, products seen, the first
//!    product of each state entered).
//! 5. A view no transition accepts resets the match to `init` under strict contiguity (the view
//!    starts nothing); under relaxed contiguity it is skipped.
//! 6. Reaching `offer` emits the offer chosen by the offer rules (unless the frequency cap
//!    suppresses it) and returns to `init`.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::click::{EnrichedClick, EnrichedRef};
use crate::event::{EventType, PropValue};
use crate::source::Medium;

/// Index of a state in [`Pattern::states`]; 0 is `init`.
pub type StateId = u16;

/// The initial state.
pub const INIT: StateId = 0;

/// A field of an enriched click that conditions can test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// Product category.
    Category,
    /// Product id.
    Product,
    /// Product title.
    Title,
    /// Country (lower-case alpha-3).
    Country,
    /// City.
    City,
    /// State or region.
    Region,
    /// Device class.
    Device,
    /// Gender `M`/`F`/`U`.
    Gender,
    /// Visitor id.
    Visitor,
    /// Page URL.
    Url,
    /// The event's type (`page_view`, `add_to_cart`, …).
    Type,
    /// A search's query.
    Query,
}

impl Field {
    /// Every field with its name in pattern files.
    pub const ALL: [(&'static str, Field); 12] = [
        ("category", Field::Category),
        ("product", Field::Product),
        ("title", Field::Title),
        ("country", Field::Country),
        ("city", Field::City),
        ("region", Field::Region),
        ("device", Field::Device),
        ("gender", Field::Gender),
        ("visitor", Field::Visitor),
        ("url", Field::Url),
        ("type", Field::Type),
        ("query", Field::Query),
    ];

    /// The field's name in pattern files.
    pub fn name(self) -> &'static str {
        name_in(&Field::ALL, self)
    }

    fn value<'a>(self, click: &EnrichedRef<'a>) -> &'a str {
        match self {
            Field::Category => click.category,
            Field::Product => click.product_id,
            Field::Title => click.title,
            Field::Country => click.country,
            Field::City => click.city.unwrap_or(""),
            Field::Region => click.region.unwrap_or(""),
            Field::Device => click.device.as_str(),
            Field::Gender => match click.gender {
                crate::Gender::M => "M",
                crate::Gender::F => "F",
                crate::Gender::U => "U",
            },
            Field::Visitor => click.visitor,
            Field::Url => click.url,
            Field::Type => click.event.as_str(),
            Field::Query => click.detail.and_then(|d| d.query.as_deref()).unwrap_or(""),
        }
    }
}

/// The name `value` has in a table of names (`?` if none: every value is in its table, tested).
fn name_in<T: PartialEq>(table: &[(&'static str, T)], value: T) -> &'static str {
    table
        .iter()
        .find(|(_, v)| *v == value)
        .map_or("?", |(n, _)| n)
}

/// A number an event may carry, that conditions can bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    /// The product's unit price (`product.price`).
    Price,
    /// How many (`product.quantity`).
    Quantity,
    /// An order's revenue (`order.revenue`).
    Revenue,
}

impl Amount {
    /// Every amount with its name in pattern files.
    pub const ALL: [(&'static str, Amount); 3] = [
        ("price", Amount::Price),
        ("quantity", Amount::Quantity),
        ("revenue", Amount::Revenue),
    ];

    /// Its name in pattern files.
    pub fn name(self) -> &'static str {
        name_in(&Amount::ALL, self)
    }

    fn value(self, click: &EnrichedRef<'_>) -> Option<f64> {
        let detail = click.detail?;
        match self {
            Amount::Price => detail.product.as_ref()?.price,
            Amount::Quantity => detail.product.as_ref()?.quantity.map(f64::from),
            Amount::Revenue => detail.order.as_ref().map(|o| o.revenue),
        }
    }
}

/// What a condition asks of a custom property.
#[derive(Debug, Clone, PartialEq)]
pub enum PropertyTest {
    /// A text (or a number or boolean written as text) equal to one of these (ASCII
    /// case-insensitive).
    OneOf(Vec<String>),
    /// A number within `min..=max`.
    Between(f64, f64),
    /// A boolean equal to this.
    Is(bool),
}

impl PropertyTest {
    fn eval(&self, value: Option<&PropValue>) -> bool {
        match (self, value) {
            (PropertyTest::OneOf(values), Some(v)) => {
                let text = v.to_string();
                values.iter().any(|x| x.eq_ignore_ascii_case(&text))
            }
            (PropertyTest::Between(min, max), Some(PropValue::Number(n))) => {
                (*min..=*max).contains(n)
            }
            (PropertyTest::Is(b), Some(PropValue::Bool(v))) => b == v,
            _ => false,
        }
    }
}

/// Which events a pattern sees: a pattern whose conditions name no `type` sees page views only
/// (every other event leaves its matches as they are); one that names types sees those, and
/// page views where a condition names none.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum EventFilter {
    /// Page views only.
    #[default]
    PageViews,
    /// These types.
    Only(Vec<EventType>),
    /// Every event (a condition excludes a type with `not`).
    All,
}

impl EventFilter {
    /// Whether the pattern sees an event of type `event`.
    pub fn sees(&self, event: &EventType) -> bool {
        match self {
            EventFilter::PageViews => event.is_page_view(),
            EventFilter::Only(types) => types.contains(event),
            EventFilter::All => true,
        }
    }
}

/// A predicate over a view (and the match it would extend).
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// Always true.
    True,
    /// Every condition holds.
    All(Vec<Condition>),
    /// At least one condition holds.
    Any(Vec<Condition>),
    /// The condition does not hold.
    Not(Box<Condition>),
    /// The field equals one of the values (ASCII case-insensitive).
    OneOf(Field, Vec<String>),
    /// The age is known and within `min..=max`.
    AgeBetween(u32, u32),
    /// Whether the visitor has a users record.
    KnownVisitor(bool),
    /// Whether the event's product is one of the catalogue's (not the home page, a cart or a
    /// search page, nor an id the catalogue does not have).
    CatalogueProduct(bool),
    /// The product differs from the first product recorded in that state in this match.
    ProductDiffersFrom(StateId),
    /// The product is the first product recorded in that state in this match.
    ProductSameAs(StateId),
    /// The product was not recorded in this match yet.
    ProductNotSeen,
    /// The event carries the amount, within `min..=max`.
    Amount(Amount, f64, f64),
    /// The event's custom property passes the test.
    Property(String, PropertyTest),
    /// The event's source ([`crate::source::classify`]) is one of these.
    Source(Vec<Medium>),
    /// The visitor's session as of the event passes the test ([`crate::session`]).
    Session(SessionTest),
}

/// What a condition asks of the visitor's session (`session = { pages = { min = 3 } }`), as of
/// the event looked at, which counts.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionTest {
    /// Page views in the session, within `min..=max`.
    Pages(u32, u32),
    /// Page views of the event's product in the session, within `min..=max`.
    ProductViews(u32, u32),
    /// Whether the event's product is in the cart (added in the session and not removed).
    ProductInCart(bool),
    /// The session's source (its first event's) is one of these.
    Source(Vec<Medium>),
}

impl SessionTest {
    /// Every test with its key in `session = { .. }`.
    pub const KEYS: [&'static str; 4] = ["pages", "product_views", "product_in_cart", "source"];

    fn eval(&self, s: &crate::session::SessionFacts) -> bool {
        match self {
            SessionTest::Pages(min, max) => (*min..=*max).contains(&s.pages),
            SessionTest::ProductViews(min, max) => (*min..=*max).contains(&s.product_views),
            SessionTest::ProductInCart(b) => s.product_in_cart == *b,
            SessionTest::Source(media) => media.contains(&s.source),
        }
    }

    /// In words: "the session's pages at least 3", "its product viewed 3 times in the session".
    pub fn words(&self) -> String {
        let count = |min: u32, max: u32, what: &str| match (min, max) {
            (a, b) if a == b => format!("{what} {a} times"),
            (0, b) => format!("{what} at most {b} times"),
            (a, u32::MAX) => format!("{what} at least {a} times"),
            (a, b) => format!("{what} {a} to {b} times"),
        };
        match self {
            SessionTest::Pages(min, max) => count(*min, *max, "pages viewed in the session"),
            SessionTest::ProductViews(n, m) if n == m => {
                format!("its visit number {n} in the session")
            }
            SessionTest::ProductViews(min, max) => count(*min, *max, "visited in the session"),
            SessionTest::ProductInCart(true) => "in the cart".to_owned(),
            SessionTest::ProductInCart(false) => "not in the cart".to_owned(),
            SessionTest::Source(media) => {
                let names: Vec<&str> = media.iter().map(|m| m.as_str()).collect();
                format!("a session from {}", names.join(" or "))
            }
        }
    }
}

impl Condition {
    /// Whether this condition or one nested in it satisfies `f`.
    pub fn mentions(&self, f: &impl Fn(&Condition) -> bool) -> bool {
        f(self)
            || match self {
                Condition::All(cs) | Condition::Any(cs) => cs.iter().any(|c| c.mentions(f)),
                Condition::Not(c) => c.mentions(f),
                _ => false,
            }
    }

    /// Evaluates the condition for `click`, extending `current` (if a match is live).
    pub fn eval(&self, click: &EnrichedRef<'_>, current: Option<&Match>) -> bool {
        match self {
            Condition::True => true,
            Condition::All(cs) => cs.iter().all(|c| c.eval(click, current)),
            Condition::Any(cs) => cs.iter().any(|c| c.eval(click, current)),
            Condition::Not(c) => !c.eval(click, current),
            Condition::OneOf(field, values) => {
                let v = field.value(click);
                values.iter().any(|x| x.eq_ignore_ascii_case(v))
            }
            Condition::AgeBetween(min, max) => {
                click.age.is_some_and(|a| (*min..=*max).contains(&a))
            }
            Condition::KnownVisitor(known) => click.known_visitor == *known,
            Condition::CatalogueProduct(wanted) => {
                let known = &**click.title != crate::enrich::UNKNOWN
                    && &**click.product_id != crate::lookups::HOME_PRODUCT_ID;
                known == *wanted
            }
            Condition::ProductDiffersFrom(state) => current
                .and_then(|m| m.first_product_of(*state))
                .is_none_or(|p| **p != **click.product_id),
            Condition::ProductSameAs(state) => current
                .and_then(|m| m.first_product_of(*state))
                .is_some_and(|p| **p == **click.product_id),
            Condition::ProductNotSeen => current.is_none_or(|m| !m.has_seen(click.product_id)),
            Condition::Amount(amount, min, max) => amount
                .value(click)
                .is_some_and(|v| (*min..=*max).contains(&v)),
            Condition::Property(key, test) => {
                test.eval(click.detail.and_then(|d| d.properties.get(key)))
            }
            Condition::Source(media) => {
                media.contains(&crate::source::classify(click.url, click.detail).medium)
            }
            Condition::Session(test) => click.session.as_ref().is_some_and(|s| test.eval(s)),
        }
    }

    fn describe(&self, states: &[String], f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |f: &mut fmt::Formatter<'_>, cs: &[Condition], sep: &str| -> fmt::Result {
            for (i, c) in cs.iter().enumerate() {
                if i > 0 {
                    f.write_str(sep)?;
                }
                c.describe(states, f)?;
            }
            Ok(())
        };
        match self {
            Condition::True => f.write_str("any view"),
            Condition::All(cs) => list(f, cs, " and "),
            Condition::Any(cs) => {
                f.write_str("(")?;
                list(f, cs, " or ")?;
                f.write_str(")")
            }
            Condition::Not(c) => {
                f.write_str("not ")?;
                c.describe(states, f)
            }
            Condition::OneOf(field, values) => {
                write!(f, "{} is {}", field.name(), values.join(" or "))
            }
            Condition::AgeBetween(min, max) => write!(f, "aged {min}–{max}"),
            Condition::KnownVisitor(true) => f.write_str("a known visitor"),
            Condition::KnownVisitor(false) => f.write_str("an unknown visitor"),
            Condition::CatalogueProduct(true) => f.write_str("a product of the catalogue"),
            Condition::CatalogueProduct(false) => f.write_str("not a product of the catalogue"),
            Condition::ProductDiffersFrom(s) => {
                write!(f, "a different product than at {}", states[*s as usize])
            }
            Condition::ProductSameAs(s) => {
                write!(f, "the same product as at {}", states[*s as usize])
            }
            Condition::ProductNotSeen => f.write_str("a product not yet seen in this match"),
            Condition::Amount(amount, min, max) => {
                write!(f, "{} {}", amount.name(), range_words(*min, *max))
            }
            Condition::Property(key, PropertyTest::OneOf(values)) => {
                write!(f, "property {key} is {}", values.join(" or "))
            }
            Condition::Property(key, PropertyTest::Between(min, max)) => {
                write!(f, "property {key} {}", range_words(*min, *max))
            }
            Condition::Property(key, PropertyTest::Is(b)) => write!(f, "property {key} is {b}"),
            Condition::Source(media) => {
                let names: Vec<&str> = media.iter().map(|m| m.as_str()).collect();
                write!(f, "source is {}", names.join(" or "))
            }
            Condition::Session(test) => f.write_str(&test.words()),
        }
    }
}

/// "is 10", "from 10 to 50", "at least 10", "at most 50".
pub(crate) fn range_words(min: f64, max: f64) -> String {
    match (min == f64::NEG_INFINITY, max == f64::INFINITY) {
        _ if min == max => format!("is {min}"),
        (false, false) => format!("from {min} to {max}"),
        (false, true) => format!("at least {min}"),
        (true, false) => format!("at most {max}"),
        (true, true) => "is any number".to_owned(),
    }
}

/// A deadline kept by a state: a match that enters it waits `after_ms` (event time) for an
/// event meeting `absent`; if one comes first the match is cancelled, else at the deadline it
/// moves on to `to` (`absent = { type = "purchase" }, for = "15m"`). Every other event leaves
/// the waiting match as it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Timer {
    /// How long after entering the state the deadline is.
    pub after_ms: i64,
    /// What must not happen before it.
    pub absent: Condition,
    /// Where the match goes at the deadline.
    pub to: Target,
}

/// Where a transition leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Another (or the same) state.
    State(StateId),
    /// The offer: emit it and return to `init`.
    Offer,
}

/// A guarded edge of the state machine.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The guard.
    pub when: Condition,
    /// The destination.
    pub to: Target,
}

/// Strict: a view that fits no transition resets the match. Relaxed: it is skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Contiguity {
    /// Unrelated views reset the match.
    #[default]
    Strict,
    /// Unrelated views are skipped.
    Relaxed,
}

/// What a view that comes `within` or later after the match's first recorded view does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Late {
    /// The match has expired: it is discarded and the view is evaluated from `init`, where it
    /// may start a new match. The expiry is checked before the page-refresh rule.
    #[default]
    Restart,
    /// As the original detector: a page refresh is still ignored (the refresh rule comes first);
    /// any other late view resets the match to `init` and is dropped — it starts nothing, like a
    /// view that fits no transition.
    Reset,
}

impl Late {
    /// Every value with its name in pattern files.
    pub const ALL: [(&'static str, Late); 2] = [("restart", Late::Restart), ("reset", Late::Reset)];
}

/// What the shop shows for an offer: declared in the pattern file (`[offers.<name>]`). Offer
/// records name only the pattern and the offer (their format stays), and whoever shows one
/// looks this up in the active patterns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferContent {
    /// The headline, in the shop's words.
    pub title: String,
    /// The text under it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub text: String,
    /// The picture: a path the server serves (`/images/...`) or an `https://` URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// A catalogue product the offer links to (its picture stands in for a missing `image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
}

/// Which offer to emit, by the completing view's visitor.
#[derive(Debug, Clone, PartialEq)]
pub struct OfferRule {
    /// Checked in order; the first that holds chooses the offer.
    pub rules: Vec<(Condition, String)>,
    /// The offer when no rule holds.
    pub default: String,
    /// The state whose first recorded product the offer is for (`product_from`), if any: the
    /// offer record carries it, and the shop shows that product.
    pub product_from: Option<StateId>,
}

impl OfferRule {
    /// The offer for `click`.
    pub fn choose(&self, click: &EnrichedRef<'_>) -> &str {
        self.rules
            .iter()
            .find(|(c, _)| c.eval(click, None))
            .map_or(self.default.as_str(), |(_, o)| o.as_str())
    }
}

/// A validated, compiled behaviour pattern.
#[derive(Debug, Clone, PartialEq)]
pub struct Pattern {
    /// Unique name (`[a-z0-9_-]+`).
    pub name: String,
    /// Content hash of the file it came from: changes whenever the file does.
    pub version: String,
    /// What it is for, in words.
    pub description: String,
    /// Where it came from.
    pub source: String,
    /// Every transition must happen less than this long after the match's first view.
    pub within_ms: Option<i64>,
    /// What a view that comes `within_ms` or later after the match's first view does.
    pub late: Late,
    /// Strict or relaxed contiguity.
    pub contiguity: Contiguity,
    /// Whether a view of the last recorded product is ignored as a page refresh.
    pub ignore_refresh: bool,
    /// Who may start a match.
    pub audience: Condition,
    /// Views that abort a match.
    pub abort_if: Option<Condition>,
    /// Which events it sees (the others leave its matches as they are).
    pub events: EventFilter,
    /// State names; index 0 is `init`.
    pub states: Vec<String>,
    /// Outgoing transitions of each state, in priority order.
    pub transitions: Vec<Vec<Transition>>,
    /// Each state's deadline, if it keeps one (index: state; empty when none does).
    pub timers: Vec<Option<Timer>>,
    /// Which offer to emit.
    pub offer: OfferRule,
    /// At most one offer per visitor per this many milliseconds.
    pub frequency_cap_ms: Option<i64>,
    /// What the shop shows for the offers this pattern gives, by offer name (those it does not
    /// declare are the shop's own, e.g. the bundled `offer1` and `offer2`).
    pub offers: std::collections::BTreeMap<String, OfferContent>,
}

impl Pattern {
    /// A readable explanation generated from the declaration (shown in the shop and the CLI).
    pub fn explain(&self) -> String {
        Explain(self).to_string()
    }
}

struct Explain<'a>(&'a Pattern);

impl fmt::Display for Explain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.0;
        let describe = |c: &Condition, f: &mut fmt::Formatter<'_>| c.describe(&p.states, f);
        if p.audience == Condition::True {
            f.write_str("Any visitor can start a match.")?;
        } else {
            f.write_str("A visitor can start a match on a view where ")?;
            describe(&p.audience, f)?;
            f.write_str(".")?;
        }
        for (from, edges) in p.transitions.iter().enumerate() {
            for t in edges {
                write!(f, " From {}, a view where ", p.states[from])?;
                describe(&t.when, f)?;
                match t.to {
                    Target::State(s) if s as usize == from => {
                        write!(f, " stays at {}.", p.states[from])?
                    }
                    Target::State(s) => write!(f, " leads to {}.", p.states[s as usize])?,
                    Target::Offer => f.write_str(" earns the offer.")?,
                }
            }
            if let Some(Some(timer)) = p.timers.get(from) {
                write!(
                    f,
                    " At {}, the match waits {}: an event where ",
                    p.states[from],
                    humantime::format_duration(std::time::Duration::from_millis(
                        timer.after_ms as u64
                    ))
                )?;
                describe(&timer.absent, f)?;
                f.write_str(" cancels it; if none comes, it ")?;
                match timer.to {
                    Target::State(s) => write!(f, "moves on to {}.", p.states[s as usize])?,
                    Target::Offer => f.write_str("earns the offer then.")?,
                }
            }
        }
        if let Some(ms) = p.within_ms {
            write!(
                f,
                " Everything must happen within {} of the first view.",
                humantime::format_duration(std::time::Duration::from_millis(ms as u64))
            )?;
            if p.late == Late::Reset {
                f.write_str(
                    " A later view starts over and counts for nothing, not even as a new start.",
                )?;
                if p.ignore_refresh {
                    f.write_str(" Reloading the last product page is ignored even then.")?;
                }
            }
        }
        match p.contiguity {
            Contiguity::Strict => f.write_str(" Any other view starts over.")?,
            Contiguity::Relaxed => f.write_str(" Other views in between are ignored.")?,
        }
        if p.ignore_refresh {
            f.write_str(" Reloading the same product page does not count.")?;
        }
        if let Some(abort) = &p.abort_if {
            f.write_str(" The match is abandoned on a view where ")?;
            describe(abort, f)?;
            f.write_str(".")?;
        }
        f.write_str(" Offer: ")?;
        for (c, offer) in &p.offer.rules {
            write!(f, "{offer} if ")?;
            describe(c, f)?;
            f.write_str(", else ")?;
        }
        write!(f, "{}.", p.offer.default)?;
        if let Some(ms) = p.frequency_cap_ms {
            write!(
                f,
                " At most one offer per visitor every {}.",
                humantime::format_duration(std::time::Duration::from_millis(ms as u64))
            )?;
        }
        Ok(())
    }
}

/// How long past its time limit an expired match of a `late = "reset"` pattern is remembered
/// (see [`Pattern::forget_expired`]).
pub const RESET_MEMORY_MS: i64 = 7 * 86_400_000;

/// A live match of one visitor against one pattern.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Match {
    /// Current state (never `init`: an idle visitor has no match at all).
    pub state: StateId,
    /// Event time of the match's first recorded view.
    pub started_ms: i64,
    /// Product of the last recorded view.
    pub last_product: Arc<str>,
    /// The first product recorded in each state entered.
    pub entered: Vec<(StateId, Arc<str>)>,
    /// Every product recorded in this match.
    pub seen: Vec<Arc<str>>,
    /// The deadline of its state's [`Timer`], while it waits for an absence.
    #[serde(default)]
    pub deadline: Option<Deadline>,
}

/// When a waiting match moves on, and the offer it then earns (chosen by the offer rules on the
/// event that started the wait).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deadline {
    /// Event time of the deadline.
    pub at_ms: i64,
    /// The offer, when the deadline earns one.
    pub offer: Option<String>,
}

/// A deadline that passed: the state change it made and the offer it earned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fired {
    /// The state change.
    pub step: Step,
    /// The offer, if the deadline earned one.
    pub offer: Option<Earned>,
    /// The deadline's event time (the offer's time).
    pub at_ms: i64,
    /// The product of the match's last recorded event.
    pub product: Arc<str>,
}

impl Match {
    fn first_product_of(&self, state: StateId) -> Option<&Arc<str>> {
        self.entered
            .iter()
            .find(|(s, _)| *s == state)
            .map(|(_, p)| p)
    }

    fn has_seen(&self, product: &str) -> bool {
        self.seen.iter().any(|p| &**p == product)
    }

    fn record(&mut self, state: StateId, product: &Arc<str>) {
        self.state = state;
        self.last_product = product.clone();
        if self.first_product_of(state).is_none() {
            self.entered.push((state, product.clone()));
        }
        if !self.has_seen(product) {
            self.seen.push(product.clone());
        }
    }
}

/// Why a match changed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// A transition accepted the view.
    Transition,
    /// No transition accepted the view (strict contiguity).
    Reset,
    /// The match ran past `within`.
    Expired,
    /// An `abort_if` view.
    Aborted,
    /// A deadline passed without the event it waited for not to happen.
    Absent,
    /// What the deadline waited for not to happen, happened.
    Cancelled,
}

/// An offer a match earned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Earned {
    /// The chosen offer.
    pub offer: String,
    /// When the match started.
    pub started_ms: i64,
    /// The product it is for ([`OfferRule::product_from`]).
    pub product: Option<Arc<str>>,
}

/// One state change, for the transition log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// From state (name).
    pub from: StateId,
    /// To state; `None` for the offer.
    pub to: Option<StateId>,
    /// Why.
    pub cause: Cause,
}

/// The result of one view for one pattern.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// State changes, in order (an expiry may precede a new start).
    pub steps: Vec<Step>,
    /// The offer reached, if any.
    pub offer: Option<Earned>,
    /// Whether the visitor was in the audience when evaluated from `init`.
    pub in_audience: bool,
}

impl Pattern {
    /// Runs one view through the state machine. `current` is the visitor's match (`None` when
    /// idle) and is updated in place.
    pub fn advance(&self, current: &mut Option<Match>, click: &EnrichedClick) -> Outcome {
        let click = click.borrowed();
        self.advance_with(current, &click, || self.audience.eval(&click, None))
    }

    /// [`Pattern::advance`], asking `in_audience` (at most once) whether the view is in this
    /// pattern's audience: a caller running several patterns with the same audience evaluates
    /// it once per view.
    pub fn advance_with(
        &self,
        current: &mut Option<Match>,
        click: &EnrichedRef<'_>,
        in_audience: impl FnOnce() -> bool,
    ) -> Outcome {
        let mut out = Outcome::default();
        // A match waiting for an absence (its due deadline is fired first: [`Pattern::fire_due`]):
        // the awaited event cancels it, any other leaves it as it is; `within` is not its limit.
        if let Some(m) = current.as_ref()
            && let Some(deadline) = &m.deadline
        {
            let cancelled = click.ts_ms < deadline.at_ms
                && self.timers[m.state as usize]
                    .as_ref()
                    .is_some_and(|t| t.absent.eval(click, Some(m)));
            if cancelled {
                out.steps.push(Step {
                    from: m.state,
                    to: Some(INIT),
                    cause: Cause::Cancelled,
                });
                *current = None;
            }
            return out;
        }
        if let (Some(m), Some(within)) = (current.as_ref(), self.within_ms)
            && click.ts_ms - m.started_ms >= within
        {
            // Remembered no longer (see `forget_expired`): as if swept, whenever the sweep ran.
            let remembered = click.ts_ms - m.started_ms < within.saturating_add(RESET_MEMORY_MS);
            // Under `Late::Reset` the refresh rule comes first: a late refresh leaves the match
            // as it is. (Before the limit the order of the two checks makes no difference.)
            if self.late == Late::Reset
                && remembered
                && self.ignore_refresh
                && click.event.is_page_view()
                && *m.last_product == **click.product_id
            {
                return out;
            }
            out.steps.push(Step {
                from: m.state,
                to: Some(INIT),
                cause: Cause::Expired,
            });
            *current = None;
            if self.late == Late::Reset && remembered {
                // Reset to `init`, and the view is dropped: it starts nothing.
                return out;
            }
        }
        if let Some(m) = current.as_mut() {
            // A refresh is a page view: adding the product just viewed to the cart is not one.
            if self.ignore_refresh
                && click.event.is_page_view()
                && *m.last_product == **click.product_id
            {
                return out;
            }
            if self
                .abort_if
                .as_ref()
                .is_some_and(|c| c.eval(click, Some(m)))
            {
                out.steps.push(Step {
                    from: m.state,
                    to: Some(INIT),
                    cause: Cause::Aborted,
                });
                *current = None;
                return out;
            }
            let from = m.state;
            let taken = self.transitions[from as usize]
                .iter()
                .find(|t| t.when.eval(click, Some(m)));
            match taken.map(|t| t.to) {
                Some(Target::State(to)) => {
                    m.record(to, click.product_id);
                    m.deadline = self.deadline_of(to, click);
                    out.steps.push(Step {
                        from,
                        to: Some(to),
                        cause: Cause::Transition,
                    });
                }
                Some(Target::Offer) => {
                    out.steps.push(Step {
                        from,
                        to: None,
                        cause: Cause::Transition,
                    });
                    out.offer = Some(Earned {
                        offer: self.offer.choose(click).to_owned(),
                        started_ms: m.started_ms,
                        product: self.offer_product(m),
                    });
                    *current = None;
                }
                None if self.contiguity == Contiguity::Relaxed => {}
                None => {
                    out.steps.push(Step {
                        from,
                        to: Some(INIT),
                        cause: Cause::Reset,
                    });
                    *current = None;
                }
            }
            return out;
        }
        if self.abort_if.as_ref().is_some_and(|c| c.eval(click, None)) {
            return out;
        }
        out.in_audience = in_audience();
        if !out.in_audience {
            return out;
        }
        let Some(t) = self.transitions[INIT as usize]
            .iter()
            .find(|t| t.when.eval(click, None))
        else {
            return out;
        };
        match t.to {
            Target::State(to) => {
                let mut m = Match {
                    state: to,
                    started_ms: click.ts_ms,
                    last_product: click.product_id.clone(),
                    entered: Vec::new(),
                    seen: Vec::new(),
                    deadline: self.deadline_of(to, click),
                };
                m.record(to, click.product_id);
                *current = Some(m);
                out.steps.push(Step {
                    from: INIT,
                    to: Some(to),
                    cause: Cause::Transition,
                });
            }
            Target::Offer => {
                out.steps.push(Step {
                    from: INIT,
                    to: None,
                    cause: Cause::Transition,
                });
                out.offer = Some(Earned {
                    offer: self.offer.choose(click).to_owned(),
                    started_ms: click.ts_ms,
                    product: None,
                });
            }
        }
        out
    }

    /// The product an offer earned by `m` is for, if the pattern names a state for it.
    fn offer_product(&self, m: &Match) -> Option<Arc<str>> {
        m.first_product_of(self.offer.product_from?).cloned()
    }

    /// The deadline a match entering `state` on `click` waits for, if the state keeps one.
    fn deadline_of(&self, state: StateId, click: &EnrichedRef<'_>) -> Option<Deadline> {
        let timer = self.timers.get(state as usize)?.as_ref()?;
        Some(Deadline {
            at_ms: click.ts_ms.saturating_add(timer.after_ms),
            offer: (timer.to == Target::Offer).then(|| self.offer.choose(click).to_owned()),
        })
    }

    /// Moves a match whose deadline is at or before event time `now_ms` on, as its state's
    /// timer says; `None` when it has none due. Callers fire what is due before a visitor's
    /// next event at or after the deadline reaches [`Pattern::advance_with`], and when the
    /// watermark passes it, so it fires once, at the deadline, whichever comes first.
    pub fn fire_due(&self, current: &mut Option<Match>, now_ms: i64) -> Option<Fired> {
        let m = current.as_mut()?;
        let deadline = m.deadline.clone().filter(|d| d.at_ms <= now_ms)?;
        let timer = self.timers.get(m.state as usize)?.as_ref()?;
        let from = m.state;
        let product = m.last_product.clone();
        m.deadline = None;
        match timer.to {
            Target::Offer => {
                let started = m.started_ms;
                let offer_product = self.offer_product(m);
                *current = None;
                Some(Fired {
                    step: Step {
                        from,
                        to: None,
                        cause: Cause::Absent,
                    },
                    offer: Some(Earned {
                        offer: deadline.offer.unwrap_or_else(|| self.offer.default.clone()),
                        started_ms: started,
                        product: offer_product,
                    }),
                    at_ms: deadline.at_ms,
                    product,
                })
            }
            Target::State(to) => {
                m.record(to, &product);
                Some(Fired {
                    step: Step {
                        from,
                        to: Some(to),
                        cause: Cause::Absent,
                    },
                    offer: None,
                    at_ms: deadline.at_ms,
                    product,
                })
            }
        }
    }

    /// Whether a match has expired by event time `now_ms`: any view at `now_ms` or later is late
    /// for it.
    pub fn is_expired(&self, m: &Match, now_ms: i64) -> bool {
        self.within_ms.is_some_and(|w| now_ms - m.started_ms >= w)
    }

    /// Forgets what of `current` can no longer matter to a view at event time `now_ms` or later;
    /// returns whether it changed anything. Under [`Late::Restart`] an expired match is dropped.
    /// Under [`Late::Reset`] it still decides the visitor's next view (a refresh of its last
    /// product is ignored, any other view is dropped), so only its start and last product are
    /// kept: the products it recorded are released. It is remembered for
    /// [`RESET_MEMORY_MS`] past its time limit, then dropped as well (a visitor who comes back
    /// later starts afresh): the state of a visitor who never comes back is bounded in time.
    pub fn forget_expired(&self, current: &mut Option<Match>, now_ms: i64) -> bool {
        let Some(m) = current.as_mut() else {
            return false;
        };
        // A waiting match lives until its deadline fires.
        if m.deadline.is_some() || !self.is_expired(m, now_ms) {
            return false;
        }
        let forgotten = self
            .within_ms
            .is_some_and(|w| now_ms - m.started_ms >= w.saturating_add(RESET_MEMORY_MS));
        match self.late {
            Late::Restart => {
                *current = None;
                true
            }
            Late::Reset if forgotten => {
                *current = None;
                true
            }
            Late::Reset if m.entered.is_empty() && m.seen.is_empty() => false,
            Late::Reset => {
                m.entered = Vec::new();
                m.seen = Vec::new();
                true
            }
        }
    }

    /// Whether a condition of the pattern asks about the visitor's session (detection then
    /// keeps every visitor's session: [`crate::session::VisitorSession`]).
    pub fn uses_session(&self) -> bool {
        let is = |c: &Condition| matches!(c, Condition::Session(_));
        self.audience.mentions(&is)
            || self.abort_if.as_ref().is_some_and(|c| c.mentions(&is))
            || self
                .transitions
                .iter()
                .flatten()
                .any(|t| t.when.mentions(&is))
            || self.timers.iter().flatten().any(|t| t.absent.mentions(&is))
            || self.offer.rules.iter().any(|(c, _)| c.mentions(&is))
    }

    /// The name of a state, `offer` for the offer.
    pub fn state_name(&self, state: Option<StateId>) -> &str {
        match state {
            Some(s) => &self.states[s as usize],
            None => "offer",
        }
    }
}
