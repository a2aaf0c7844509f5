//! The pattern file format (TOML) and its compilation into a [`Pattern`].
//!
//! See `docs/patterns.md` for the full reference. Two equivalent ways to declare the machine:
//! - `[[step]]`s: a sequence, each with a `when` condition, optional `loop = true` (more such
//!   views keep the step), `repeat = N` and `distinct = true` (N views of products not yet seen);
//!   the last step earns the offer;
//! - `[[transition]]`s: explicit `from` → `to` edges (`init` is the start, `offer` the goal), for
//!   machines with back-edges such as the seed patterns.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::machine::{
    Amount, Condition, Contiguity, EventFilter, Field, INIT, Late, OfferContent, OfferRule,
    Pattern, PropertyTest, SessionTest, StateId, Target, Timer, Transition,
};
use super::{PatternError, PatternErrors, sort_errors};
use crate::click::Device;
use crate::event::EventType;
use crate::lookups::Lookups;
use crate::source::Medium;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPattern {
    name: Spanned<String>,
    #[serde(default)]
    description: String,
    within: Option<Spanned<String>>,
    late: Option<Spanned<String>>,
    #[serde(default)]
    contiguity: Contiguity,
    #[serde(default = "default_true")]
    ignore_refresh: bool,
    frequency_cap: Option<Spanned<String>>,
    audience: Option<Spanned<toml::Table>>,
    abort_if: Option<Spanned<toml::Table>>,
    offer: Spanned<RawOffer>,
    #[serde(default)]
    offers: BTreeMap<String, Spanned<RawOfferContent>>,
    #[serde(default)]
    step: Vec<Spanned<RawStep>>,
    #[serde(default)]
    transition: Vec<Spanned<RawTransition>>,
}

fn default_true() -> bool {
    true
}

fn default_one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOffer {
    default: String,
    #[serde(default)]
    rules: Vec<RawOfferRule>,
    /// A state: the offer is for the first product the match recorded there.
    product_from: Option<String>,
}

/// `[offers.<name>]`: what the shop shows for an offer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOfferContent {
    title: Spanned<String>,
    #[serde(default)]
    text: String,
    image: Option<Spanned<String>>,
    product: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOfferRule {
    when: toml::Table,
    offer: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    name: Option<String>,
    when: Option<Spanned<toml::Table>>,
    /// What must not happen (instead of `when`), for how long.
    absent: Option<Spanned<toml::Table>>,
    #[serde(rename = "for")]
    for_: Option<Spanned<String>>,
    #[serde(default, rename = "loop")]
    loops: bool,
    #[serde(default = "default_one")]
    repeat: u32,
    #[serde(default)]
    distinct: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTransition {
    from: Spanned<String>,
    to: Spanned<String>,
    when: Option<Spanned<toml::Table>>,
}

/// The longest `within` a pattern may have, and the time limit of a pattern that gives none: a
/// live match is state kept for its visitor, so it must end.
pub const MAX_WITHIN_MS: i64 = 7 * 86_400_000;
/// Line and column numbers from byte offsets, and the errors found so far: a file's errors are
/// all collected, not just the first.
struct Source<'a> {
    file: &'a str,
    text: &'a str,
    errors: RefCell<Vec<PatternError>>,
}

impl Source<'_> {
    fn error(
        &self,
        span: Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> PatternError {
        let (line, column) = position(self.text, span.start);
        PatternError {
            file: self.file.to_owned(),
            line,
            column,
            field: field.into(),
            message: message.into(),
        }
    }

    /// Records an error and carries on.
    fn report(&self, error: PatternError) {
        self.errors.borrow_mut().push(error);
    }

    fn fail(&self, span: Range<usize>, field: impl Into<String>, message: impl Into<String>) {
        self.report(self.error(span, field, message));
    }

    fn has_errors(&self) -> bool {
        !self.errors.borrow().is_empty()
    }
}

/// The 1-based line and column (in characters) of byte `offset` of `text`.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

/// The line and column of top-level key `key`'s value, if the file parses and has it.
pub(crate) fn key_position(text: &str, key: &str) -> Option<(usize, usize)> {
    let doc = DeTable::parse(text).ok()?;
    let (_, value) = doc.get_ref().iter().find(|(k, _)| k.get_ref() == key)?;
    Some(position(text, value.span().start))
}

/// `text` as a file's TOML table of type `T`; a syntax or type error stops there, as nothing
/// after it can be read.
fn parse_toml<T: serde::de::DeserializeOwned>(file: &str, text: &str) -> Result<T, PatternErrors> {
    toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map_or((0, 0), |s| position(text, s.start));
        PatternErrors(vec![PatternError {
            file: file.to_owned(),
            line,
            column,
            field: String::new(),
            message: e.message().trim().to_owned(),
        }])
    })
}

/// A pattern's or funnel's `name`, reported unless it is non-empty a-z, 0-9, `-` and `_`.
fn checked_name(src: &Source<'_>, name: &Spanned<String>) -> String {
    let text = name.get_ref();
    if text.is_empty()
        || !text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        src.fail(
            name.span(),
            "name",
            "must be non-empty and use only a-z, 0-9, - and _",
        );
    }
    text.clone()
}

/// The most states a pattern may have.
const MAX_STATES: usize = 64;

/// Parses and validates a pattern file. `file` names it in errors. Returns the first error (in
/// file order); [`compile_pattern`] returns them all.
pub fn parse_pattern(file: &str, text: &str) -> Result<Pattern, PatternError> {
    compile_pattern(file, text).map_err(|mut e| e.0.swap_remove(0))
}

/// Parses and validates a pattern file, reporting every error it finds (in file order; a TOML
/// syntax or type error stops there, as nothing after it can be read). `file` names it in errors.
pub fn compile_pattern(file: &str, text: &str) -> Result<Pattern, PatternErrors> {
    let src = Source {
        file,
        text,
        errors: RefCell::new(Vec::new()),
    };
    let raw: RawPattern = parse_toml(file, text)?;
    let name = checked_name(&src, &raw.name);
    let duration = |d: &Spanned<String>, field: &str| -> Option<i64> {
        let parsed = match humantime::parse_duration(d.get_ref()) {
            Ok(parsed) => parsed,
            Err(e) => {
                src.fail(
                    d.span(),
                    field,
                    format!(
                        "{:?} is not a duration like \"30m\" or \"6h\": {e}",
                        d.get_ref()
                    ),
                );
                return None;
            }
        };
        if parsed.is_zero() {
            src.fail(d.span(), field, "must be longer than zero");
            return None;
        }
        Some(parsed.as_millis().min(i64::MAX as u128) as i64)
    };
    let within_ms = match raw.within.as_ref() {
        Some(d) => match duration(d, "within") {
            Some(ms) if ms > MAX_WITHIN_MS => {
                src.fail(
                    d.span(),
                    "within",
                    format!(
                        "{:?} is longer than the longest time limit, 7 days (a match is state \
                         kept for the visitor that long)",
                        d.get_ref()
                    ),
                );
                Some(MAX_WITHIN_MS)
            }
            Some(ms) => Some(ms),
            None => Some(MAX_WITHIN_MS),
        },
        // No time limit given: the longest, so no match is kept for ever.
        None => Some(MAX_WITHIN_MS),
    };
    let late = match &raw.late {
        None => Late::default(),
        Some(value) => {
            let late = match Late::ALL.iter().find(|(n, _)| *n == value.get_ref()) {
                Some((_, late)) => *late,
                None => {
                    src.fail(
                        value.span(),
                        "late",
                        format!(
                            "unknown value {:?}; expected \"reset\" (a late view resets the \
                             match and is dropped, as in the original detector) or \"restart\" \
                             (a late view is evaluated from init; the default)",
                            value.get_ref()
                        ),
                    );
                    Late::default()
                }
            };
            if raw.within.is_none() {
                src.fail(
                    value.span(),
                    "late",
                    "says what a view after the time limit does, but there is no time limit: \
                     add `within` (e.g. \"30m\") or remove `late`",
                );
            }
            late
        }
    };
    let frequency_cap_ms = raw
        .frequency_cap
        .as_ref()
        .and_then(|d| duration(d, "frequency_cap"));

    let machine = match (raw.step.is_empty(), raw.transition.is_empty()) {
        (false, true) => steps_to_edges(&src, &raw.step),
        (true, false) => transitions_to_edges(&src, &raw.transition),
        (true, true) => {
            src.fail(
                0..0,
                "step",
                "declare the machine with [[step]] or [[transition]] tables",
            );
            None
        }
        (false, false) => {
            src.fail(
                raw.transition[0].span(),
                "transition",
                "use either [[step]] or [[transition]], not both",
            );
            None
        }
    };
    let machine_ok = machine.is_some();
    let (states, edges) = machine.unwrap_or_else(|| (vec!["init".to_owned()], Vec::new()));
    // Which events the pattern sees: page views only unless a condition names a type; then
    // a condition that names none is about page views.
    let tables: Vec<&toml::Table> = edges
        .iter()
        .filter_map(|e| e.when.map(|t| t.get_ref()))
        .chain(raw.abort_if.as_ref().map(|t| t.get_ref()))
        .collect();
    let mut named = Vec::new();
    let mut under_not = false;
    for t in &tables {
        under_not |= named_types(t, false, &mut named);
    }
    let typed = under_not || !named.is_empty();
    let untyped_edge = edges
        .iter()
        .any(|e| e.when.is_none_or(|t| !names_type(t.get_ref())))
        || raw
            .abort_if
            .as_ref()
            .is_some_and(|t| !names_type(t.get_ref()));
    let events = match (typed, under_not) {
        (false, _) => EventFilter::PageViews,
        (true, true) => EventFilter::All,
        (true, false) => {
            if untyped_edge && !named.contains(&EventType::PageView) {
                named.insert(0, EventType::PageView);
            }
            EventFilter::Only(named)
        }
    };
    let page_views_only = |when: Condition, table: Option<&toml::Table>| {
        if typed && table.is_none_or(|t| !names_type(t)) {
            and(
                Condition::OneOf(Field::Type, vec!["page_view".to_owned()]),
                when,
            )
        } else {
            when
        }
    };
    let mut transitions: Vec<Vec<Transition>> = vec![Vec::new(); states.len()];
    let mut timers: Vec<Option<Timer>> = vec![None; states.len()];
    for edge in edges {
        let when = match &edge.when {
            Some(table) => {
                compile_condition(&src, table.get_ref(), table.span(), &edge.field, &states)
            }
            None => Condition::True,
        };
        let when = page_views_only(when, edge.when.map(|t| t.get_ref()));
        if let Some(d) = edge.absent_for {
            let field = edge.field.replace(".absent", ".for");
            let after_ms = match duration(d, &field) {
                Some(ms) if ms > MAX_WITHIN_MS => {
                    src.fail(
                        d.span(),
                        field,
                        "is longer than 7 days (a waiting match is state kept for the visitor)",
                    );
                    MAX_WITHIN_MS
                }
                Some(ms) => ms,
                None => continue,
            };
            timers[edge.from as usize] = Some(Timer {
                after_ms,
                absent: when,
                to: edge.to,
            });
            continue;
        }
        let when = match edge.extra {
            Some(extra) => and(when, extra),
            None => when,
        };
        transitions[edge.from as usize].push(Transition { when, to: edge.to });
    }
    // With errors in the machine, edges were left out: these would only repeat them.
    if machine_ok && !src.has_errors() {
        if transitions[INIT as usize].is_empty() {
            src.fail(0..0, "transition", "no transition leaves `init`");
        }
        let timer_reaches = timers.iter().flatten().any(|t| t.to == Target::Offer);
        if !timer_reaches && !transitions.iter().flatten().any(|t| t.to == Target::Offer) {
            src.fail(0..0, "transition", "no transition reaches `offer`");
        }
    }
    let table = |t: &Option<Spanned<toml::Table>>, field: &str| -> Option<Condition> {
        t.as_ref()
            .map(|t| compile_condition(&src, t.get_ref(), t.span(), field, &states))
    };
    let audience = table(&raw.audience, "audience").unwrap_or(Condition::True);
    let abort_if = table(&raw.abort_if, "abort_if")
        .map(|c| page_views_only(c, raw.abort_if.as_ref().map(|t| t.get_ref())));
    let mut rules = Vec::new();
    for (i, rule) in raw.offer.get_ref().rules.iter().enumerate() {
        let field = format!("offer.rules[{i}].when");
        rules.push((
            compile_condition(&src, &rule.when, raw.offer.span(), &field, &states),
            rule.offer.clone(),
        ));
    }
    let offers = compile_offers(&src, &raw);
    let product_from = raw.offer.get_ref().product_from.as_ref().and_then(|state| {
        let id = states
            .iter()
            .position(|s| s == state)
            .filter(|id| *id != INIT as usize);
        if id.is_none() {
            src.fail(
                raw.offer.span(),
                "offer.product_from",
                format!(
                    "unknown state {state:?}; states are {}",
                    states[1..].join(", ")
                ),
            );
        }
        id.map(|id| id as StateId)
    });
    let mut errors = src.errors.into_inner();
    if !errors.is_empty() {
        sort_errors(&mut errors);
        return Err(PatternErrors(errors));
    }
    Ok(Pattern {
        name,
        version: format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes())),
        description: raw.description,
        source: file.to_owned(),
        within_ms,
        late,
        contiguity: raw.contiguity,
        ignore_refresh: raw.ignore_refresh,
        audience,
        abort_if,
        events,
        states,
        transitions,
        // Empty when no state keeps one: detection then skips deadlines at no cost.
        timers: if timers.iter().any(Option::is_some) {
            timers
        } else {
            Vec::new()
        },
        offer: OfferRule {
            rules,
            default: raw.offer.get_ref().default.clone(),
            product_from,
        },
        frequency_cap_ms,
        offers,
    })
}

/// The `[offers.<name>]` tables: each must be an offer the pattern gives, with a title, and a
/// picture the shop can load (its own `/images/...` or `https://`).
fn compile_offers(src: &Source<'_>, raw: &RawPattern) -> BTreeMap<String, OfferContent> {
    let given: Vec<&str> = std::iter::once(raw.offer.get_ref().default.as_str())
        .chain(raw.offer.get_ref().rules.iter().map(|r| r.offer.as_str()))
        .collect();
    let mut offers = BTreeMap::new();
    for (name, content) in &raw.offers {
        let field = format!("offers.{name}");
        if !given.contains(&name.as_str()) {
            src.fail(
                content.span(),
                field.as_str(),
                format!(
                    "{name:?} is declared but the pattern never gives it (offer.default and \
                     offer.rules give {})",
                    given.join(", ")
                ),
            );
        }
        let c = content.get_ref();
        if c.title.get_ref().trim().is_empty() {
            src.fail(
                c.title.span(),
                format!("{field}.title"),
                "must not be empty",
            );
        }
        if let Some(image) = &c.image {
            let url = image.get_ref();
            if !(url.starts_with("/images/") || url.starts_with("https://")) {
                src.fail(
                    image.span(),
                    format!("{field}.image"),
                    format!(
                        "{url:?} is neither a picture this server serves (\"/images/...\", from \
                         data/images/) nor an https:// URL"
                    ),
                );
            }
        }
        offers.insert(
            name.clone(),
            OfferContent {
                title: c.title.get_ref().trim().to_owned(),
                text: c.text.trim().to_owned(),
                image: c.image.as_ref().map(|i| i.get_ref().clone()),
                product: c.product.clone(),
            },
        );
    }
    offers
}

fn and(a: Condition, b: Condition) -> Condition {
    match (a, b) {
        (Condition::True, b) => b,
        (a, Condition::True) => a,
        (Condition::All(mut cs), b) => {
            cs.push(b);
            Condition::All(cs)
        }
        (a, b) => Condition::All(vec![a, b]),
    }
}

/// An edge before its condition is compiled (conditions need every state's name first).
struct Edge<'a> {
    from: StateId,
    to: Target,
    when: Option<&'a Spanned<toml::Table>>,
    extra: Option<Condition>,
    field: String,
    /// For an absence (`when` is then what must not happen): how long.
    absent_for: Option<&'a Spanned<String>>,
}

type Machine<'a> = (Vec<String>, Vec<Edge<'a>>);

/// The states and edges of `[[transition]]`s; errors are reported, and `None` means the machine
/// could not be built at all.
fn transitions_to_edges<'a>(
    src: &Source<'_>,
    raw: &'a [Spanned<RawTransition>],
) -> Option<Machine<'a>> {
    let mut states = vec!["init".to_owned()];
    for (i, t) in raw.iter().enumerate() {
        let to = t.get_ref().to.get_ref();
        if to != "offer" && to != "init" && !states.contains(to) {
            check_state_name(src, &t.get_ref().to, &format!("transition[{i}].to"));
            states.push(to.clone());
        }
    }
    if states.len() > MAX_STATES {
        src.fail(
            raw[0].span(),
            "transition",
            format!("more than {MAX_STATES} states"),
        );
        return None;
    }
    let mut edges = Vec::new();
    for (i, t) in raw.iter().enumerate() {
        let t = t.get_ref();
        let from = t.from.get_ref();
        let Some(from_id) = states.iter().position(|s| s == from) else {
            let hint = if from == "offer" {
                "`offer` is the goal; no transition leaves it"
            } else {
                "no transition enters this state"
            };
            src.fail(
                t.from.span(),
                format!("transition[{i}].from"),
                format!("unknown state {from:?}: {hint}"),
            );
            continue;
        };
        let to = match t.to.get_ref().as_str() {
            "offer" => Target::Offer,
            "init" => {
                src.fail(
                    t.to.span(),
                    format!("transition[{i}].to"),
                    "a transition cannot lead to `init`; views that fit nothing reset the match",
                );
                continue;
            }
            name => Target::State(
                states
                    .iter()
                    .position(|s| s == name)
                    .expect("collected above") as StateId,
            ),
        };
        edges.push(Edge {
            from: from_id as StateId,
            to,
            when: t.when.as_ref(),
            extra: None,
            field: format!("transition[{i}].when"),
            absent_for: None,
        });
    }
    Some((states, edges))
}

fn check_state_name(src: &Source<'_>, name: &Spanned<String>, field: &str) {
    let n = name.get_ref();
    if n.is_empty()
        || n == "init"
        || n == "offer"
        || !n
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        src.fail(
            name.span(),
            field,
            format!("{n:?} is not a usable state name (a-z, 0-9, _ and -; not init/offer)"),
        );
    }
}

/// The states and edges of `[[step]]`s; errors are reported, and `None` means the machine could
/// not be built at all.
fn steps_to_edges<'a>(src: &Source<'_>, raw: &'a [Spanned<RawStep>]) -> Option<Machine<'a>> {
    // Each step becomes `repeat` states; its name refers to the first of them.
    let mut states = vec!["init".to_owned()];
    let mut step_states: Vec<Vec<StateId>> = Vec::new();
    for (i, step) in raw.iter().enumerate() {
        let s = step.get_ref();
        let field = format!("step[{i}]");
        let mut repeat = s.repeat;
        if repeat == 0 {
            src.fail(step.span(), format!("{field}.repeat"), "must be at least 1");
            repeat = 1;
        }
        let last = i + 1 == raw.len();
        check_absence(src, raw, i, &field);
        if last && s.loops {
            src.fail(
                step.span(),
                format!("{field}.loop"),
                "the last step earns the offer, so it cannot loop",
            );
        }
        let mut base = s.name.clone().unwrap_or_else(|| format!("step{}", i + 1));
        if states.contains(&base) || base == "init" || base == "offer" {
            src.fail(
                step.span(),
                format!("{field}.name"),
                format!("{base:?} is used twice or reserved"),
            );
            // A name no file can write, so the other steps are still checked.
            base = format!("{base}#{i}");
        }
        let count = if last { repeat - 1 } else { repeat };
        // Checked before the states are made: `repeat = 4000000000` must not allocate them.
        if states.len() + count as usize > MAX_STATES {
            src.fail(step.span(), field, format!("more than {MAX_STATES} states"));
            return None;
        }
        let mut ids = Vec::new();
        for r in 0..count {
            let name = if r == 0 {
                base.clone()
            } else {
                format!("{base}_{}", r + 1)
            };
            ids.push(states.len() as StateId);
            states.push(name);
        }
        step_states.push(ids);
    }
    let mut edges = Vec::new();
    let mut previous: StateId = INIT;
    for (i, step) in raw.iter().enumerate() {
        let s = step.get_ref();
        let targets: Vec<Target> = step_states[i]
            .iter()
            .map(|id| Target::State(*id))
            .chain((i + 1 == raw.len()).then_some(Target::Offer))
            .collect();
        for (r, to) in targets.iter().enumerate() {
            let from = if r == 0 {
                previous
            } else {
                match targets[r - 1] {
                    Target::State(id) => id,
                    Target::Offer => unreachable!(),
                }
            };
            edges.push(Edge {
                from,
                to: *to,
                when: s.when.as_ref().or(s.absent.as_ref()),
                extra: (s.distinct && (r > 0 || previous != INIT))
                    .then_some(Condition::ProductNotSeen),
                field: format!(
                    "step[{i}].{}",
                    if s.absent.is_some() { "absent" } else { "when" }
                ),
                absent_for: s.absent.as_ref().and(s.for_.as_ref()),
            });
        }
        if let Some(Target::State(last)) = targets.last() {
            if s.loops {
                edges.push(Edge {
                    from: *last,
                    to: Target::State(*last),
                    when: s.when.as_ref(),
                    extra: None,
                    field: format!("step[{i}].when"),
                    absent_for: None,
                });
            }
            previous = *last;
        }
    }
    Some((states, edges))
}

/// The rules of a step's `when`, `absent` and `for` (errors are reported).
fn check_absence(src: &Source<'_>, raw: &[Spanned<RawStep>], i: usize, field: &str) {
    let (step, s) = (&raw[i], raw[i].get_ref());
    let fail = |key: &str, message: &str| src.fail(step.span(), format!("{field}.{key}"), message);
    match (&s.when, &s.absent, &s.for_) {
        (Some(_), None, None) => return,
        (None, None, _) => fail(
            "when",
            "a step needs `when` (what the visitor does) or `absent` with `for` (what must not \
             happen, for how long)",
        ),
        (Some(_), Some(_), _) => fail("absent", "a step has either `when` or `absent`, not both"),
        (_, None, Some(_)) => fail("for", "`for` belongs to an `absent` step"),
        (None, Some(_), None) => fail(
            "for",
            "an `absent` step needs `for`: how long, like \"15m\"",
        ),
        (None, Some(_), Some(_)) => {}
    }
    if s.absent.is_none() {
        return;
    }
    if i == 0 {
        fail(
            "absent",
            "an absent step waits after the step before it, so it cannot be the first",
        );
    } else if raw[i - 1].get_ref().absent.is_some() {
        fail("absent", "two absent steps in a row: merge them into one");
    } else if raw[i - 1].get_ref().loops {
        fail(
            "absent",
            "the step before an absent step cannot loop (its match waits for the deadline)",
        );
    }
    if s.loops || s.repeat != 1 || s.distinct {
        fail(
            "absent",
            "an absent step cannot loop, repeat or be distinct",
        );
    }
}

/// Compiles a condition table. Keys combine with AND. Errors are reported; a key in error is
/// left out.
fn compile_condition(
    src: &Source<'_>,
    table: &toml::Table,
    span: Range<usize>,
    field: &str,
    states: &[String],
) -> Condition {
    let mut all = Vec::new();
    for (key, value) in table {
        let path = format!("{field}.{key}");
        match compile_key(src, key, value, span.clone(), &path, states) {
            Ok(condition) => all.push(condition),
            Err(e) => src.report(e),
        }
    }
    match all.len() {
        0 => Condition::True,
        1 => all.pop().expect("one condition"),
        _ => Condition::All(all),
    }
}

/// Compiles one key of a condition table.
fn compile_key(
    src: &Source<'_>,
    key: &str,
    value: &toml::Value,
    span: Range<usize>,
    path: &str,
    states: &[String],
) -> Result<Condition, PatternError> {
    let err = |message: String| src.error(span.clone(), path, message);
    let nested = |v: &toml::Value, path: &str| -> Result<Condition, PatternError> {
        match v {
            toml::Value::Table(t) => Ok(compile_condition(src, t, span.clone(), path, states)),
            _ => Err(src.error(span.clone(), path, "expected a table of conditions")),
        }
    };
    let condition = match key {
        "all" | "any" => {
            let toml::Value::Array(items) = value else {
                return Err(err("expected an array of condition tables".to_owned()));
            };
            let mut cs = Vec::new();
            for (i, v) in items.iter().enumerate() {
                match nested(v, &format!("{path}[{i}]")) {
                    Ok(c) => cs.push(c),
                    Err(e) => src.report(e),
                }
            }
            if key == "all" {
                Condition::All(cs)
            } else {
                Condition::Any(cs)
            }
        }
        "not" => Condition::Not(Box::new(nested(value, path)?)),
        "age" => match value {
            toml::Value::Integer(n) => {
                let n = u32::try_from(*n).map_err(|_| err("age must be 0 or more".to_owned()))?;
                Condition::AgeBetween(n, n)
            }
            toml::Value::Table(t) => {
                let bound = |k: &str, default: u32| -> Result<u32, PatternError> {
                    match t.get(k) {
                        None => Ok(default),
                        Some(toml::Value::Integer(n)) => {
                            u32::try_from(*n).map_err(|_| err(format!("{k} must be 0 or more")))
                        }
                        Some(_) => Err(err(format!("{k} must be an integer"))),
                    }
                };
                if let Some(unknown) = t.keys().find(|k| *k != "min" && *k != "max") {
                    return Err(err(format!(
                        "unknown key {unknown:?}; expected min and/or max"
                    )));
                }
                let (min, max) = (bound("min", 0)?, bound("max", u32::MAX)?);
                if min > max {
                    return Err(err(format!("min {min} is greater than max {max}")));
                }
                Condition::AgeBetween(min, max)
            }
            _ => return Err(err("expected an age or { min = .., max = .. }".to_owned())),
        },
        "catalogue_product" => match value {
            toml::Value::Boolean(b) => Condition::CatalogueProduct(*b),
            _ => return Err(err("expected true or false".to_owned())),
        },
        "known_visitor" => match value {
            toml::Value::Boolean(b) => Condition::KnownVisitor(*b),
            _ => return Err(err("expected true or false".to_owned())),
        },
        "product_not_seen" => match value {
            toml::Value::Boolean(true) => Condition::ProductNotSeen,
            toml::Value::Boolean(false) => Condition::True,
            _ => return Err(err("expected true or false".to_owned())),
        },
        "product_differs_from" | "product_same_as" => {
            let toml::Value::String(state) = value else {
                return Err(err("expected a state name".to_owned()));
            };
            let Some(id) = states
                .iter()
                .position(|s| s == state)
                .filter(|id| *id != INIT as usize)
            else {
                return Err(err(format!(
                    "unknown state {state:?}; states are {}",
                    states[1..].join(", ")
                )));
            };
            if key == "product_differs_from" {
                Condition::ProductDiffersFrom(id as StateId)
            } else {
                Condition::ProductSameAs(id as StateId)
            }
        }
        "price" | "quantity" | "revenue" => {
            let (_, amount) = *Amount::ALL
                .iter()
                .find(|(n, _)| *n == key)
                .expect("one of the amounts");
            let (min, max) = number_range(value).map_err(err)?;
            Condition::Amount(amount, min, max)
        }
        "source" => Condition::Source(media(value, &err)?),
        "session" => {
            let toml::Value::Table(t) = value else {
                return Err(err(
                    "expected a table of session conditions ({ pages = { min = 3 } })".to_owned(),
                ));
            };
            let mut all = Vec::new();
            for (name, test) in t {
                let sub = |m: String| err(format!("session.{name}: {m}"));
                let count = |v: &toml::Value| -> Result<(u32, u32), PatternError> {
                    let (min, max) = number_range(v).map_err(sub)?;
                    let whole = |x: f64| x.is_infinite() || (x >= 0.0 && x.fract() == 0.0);
                    if !whole(min) || !whole(max) {
                        return Err(sub("counts are whole numbers, 0 or more".to_owned()));
                    }
                    let to_u32 = |x: f64, inf: u32| {
                        if x.is_infinite() {
                            inf
                        } else {
                            x.min(u32::MAX as f64) as u32
                        }
                    };
                    Ok((to_u32(min, 0), to_u32(max, u32::MAX)))
                };
                let test = match name.as_str() {
                    "pages" => {
                        let (min, max) = count(test)?;
                        SessionTest::Pages(min, max)
                    }
                    "product_views" => {
                        let (min, max) = count(test)?;
                        SessionTest::ProductViews(min, max)
                    }
                    "product_in_cart" => match test {
                        toml::Value::Boolean(b) => SessionTest::ProductInCart(*b),
                        _ => return Err(sub("expected true or false".to_owned())),
                    },
                    "source" => SessionTest::Source(media(test, &sub)?),
                    other => {
                        let tail = format!("expected one of {}", SessionTest::KEYS.join(", "));
                        return Err(err(unknown(
                            &format!("unknown session condition {other:?}"),
                            other,
                            &SessionTest::KEYS,
                            &tail,
                        )));
                    }
                };
                all.push(Condition::Session(test));
            }
            match all.len() {
                0 => return Err(err("expected at least one session condition".to_owned())),
                1 => all.pop().expect("one"),
                _ => Condition::All(all),
            }
        }
        "properties" => {
            let toml::Value::Table(t) = value else {
                return Err(err(
                    "expected a table of property conditions ({ plan = \"gold\" })".to_owned(),
                ));
            };
            let mut all = Vec::new();
            for (name, test) in t {
                let test = match test {
                    toml::Value::Boolean(b) => PropertyTest::Is(*b),
                    toml::Value::Table(_) | toml::Value::Integer(_) | toml::Value::Float(_) => {
                        let (min, max) = number_range(test)
                            .map_err(|m| err(format!("property {name:?}: {m}")))?;
                        PropertyTest::Between(min, max)
                    }
                    other => PropertyTest::OneOf(strings(other).map_err(|m| {
                        err(format!(
                            "property {name:?}: {m}, a boolean, a number or {{ min = .., max = .. }}"
                        ))
                    })?),
                };
                all.push(Condition::Property(name.clone(), test));
            }
            match all.len() {
                0 => return Err(err("expected at least one property".to_owned())),
                1 => all.pop().expect("one"),
                _ => Condition::All(all),
            }
        }
        other => {
            let Some((_, f)) = Field::ALL.iter().find(|(n, _)| *n == other) else {
                let mut known: Vec<&str> = Field::ALL.iter().map(|(n, _)| *n).collect();
                known.extend([
                    "source",
                    "session",
                    "price",
                    "quantity",
                    "revenue",
                    "properties",
                    "age",
                    "known_visitor",
                    "catalogue_product",
                    "product_not_seen",
                    "product_differs_from",
                    "product_same_as",
                    "all",
                    "any",
                    "not",
                ]);
                let tail = format!("expected one of {}", known.join(", "));
                return Err(err(unknown(
                    &format!("unknown field {other:?}"),
                    other,
                    &known,
                    &tail,
                )));
            };
            let values = strings(value).map_err(err)?;
            if *f == Field::Type {
                for v in &values {
                    EventType::parse(v).map_err(|e| err(e.to_string()))?;
                }
            }
            if *f == Field::Gender
                && values
                    .iter()
                    .any(|v| !["M", "F", "U"].contains(&v.to_ascii_uppercase().as_str()))
            {
                return Err(err("gender values are M, F or U".to_owned()));
            }
            Condition::OneOf(*f, values)
        }
    };
    Ok(condition)
}

/// Sources by name: a string or a non-empty array of them.
fn media(
    value: &toml::Value,
    err: &impl Fn(String) -> PatternError,
) -> Result<Vec<Medium>, PatternError> {
    strings(value)
        .map_err(err)?
        .iter()
        .map(|name| {
            Medium::parse(name).ok_or_else(|| {
                let all: Vec<&str> = Medium::ALL.iter().map(|m| m.as_str()).collect();
                err(format!(
                    "unknown source {name:?}; expected one of {}",
                    all.join(", ")
                ))
            })
        })
        .collect()
}

/// A string or a non-empty array of strings.
fn strings(value: &toml::Value) -> Result<Vec<String>, String> {
    match value {
        toml::Value::String(s) => Ok(vec![s.clone()]),
        toml::Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| "expected strings".to_owned())
            })
            .collect(),
        _ => Err("expected a string or a non-empty array of strings".to_owned()),
    }
}

/// A number (`= 10`) or a range (`{ min = 10, max = 50 }`, either bound optional).
fn number_range(value: &toml::Value) -> Result<(f64, f64), String> {
    let number = |v: &toml::Value, what: &str| match v {
        toml::Value::Integer(n) => Ok(*n as f64),
        toml::Value::Float(x) if x.is_finite() => Ok(*x),
        _ => Err(format!("{what} must be a number")),
    };
    match value {
        toml::Value::Table(t) => {
            if let Some(unknown) = t.keys().find(|k| *k != "min" && *k != "max") {
                return Err(format!("unknown key {unknown:?}; expected min and/or max"));
            }
            let min = t.get("min").map(|v| number(v, "min")).transpose()?;
            let max = t.get("max").map(|v| number(v, "max")).transpose()?;
            let (min, max) = (
                min.unwrap_or(f64::NEG_INFINITY),
                max.unwrap_or(f64::INFINITY),
            );
            if min > max {
                return Err(format!("min {min} is greater than max {max}"));
            }
            if t.is_empty() {
                return Err("expected min and/or max".to_owned());
            }
            Ok((min, max))
        }
        other => {
            let n = number(other, "the value")
                .map_err(|_| "expected a number or { min = .., max = .. }".to_owned())?;
            Ok((n, n))
        }
    }
}

/// The event types a condition table names (`type = ...` anywhere in it), and whether one is
/// named under a `not` (then the pattern must see every event to tell).
fn named_types(table: &toml::Table, negated: bool, types: &mut Vec<EventType>) -> bool {
    let mut under_not = false;
    for (key, value) in table {
        match (key.as_str(), value) {
            ("type", v) => {
                under_not |= negated;
                for name in strings(v).unwrap_or_default() {
                    if let Ok(t) = EventType::parse(&name)
                        && !types.contains(&t)
                    {
                        types.push(t);
                    }
                }
            }
            ("not", toml::Value::Table(t)) => under_not |= named_types(t, true, types),
            ("all" | "any", toml::Value::Array(items)) => {
                for item in items {
                    if let toml::Value::Table(t) = item {
                        under_not |= named_types(t, negated, types);
                    }
                }
            }
            _ => {}
        }
    }
    under_not
}

/// Whether a condition table names a type anywhere.
fn names_type(table: &toml::Table) -> bool {
    let mut types = Vec::new();
    named_types(table, false, &mut types) || !types.is_empty()
}

/// What exists, for [`check_values`]: the catalogue's categories and product ids, and the offers
/// the shop has a picture for. (Device classes are fixed: [`Device::ALL`].)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalogue {
    /// Every product category.
    pub categories: Vec<String>,
    /// Every product id.
    pub products: Vec<String>,
    /// The shop's own offers, which a pattern may give without declaring them (they have a
    /// popup picture). Empty: offers are not checked.
    pub offers: Vec<String>,
    /// The pictures the server serves (`/images/...`), for declared offers' `image`. Empty:
    /// not checked.
    pub images: Vec<String>,
}

impl Catalogue {
    /// The categories and products of `lookups`, and `offers`.
    pub fn from_lookups<S: Into<String>>(
        lookups: &Lookups,
        offers: impl IntoIterator<Item = S>,
    ) -> Self {
        let products = lookups.products();
        let mut categories: Vec<String> = products.iter().map(|p| p.category.to_string()).collect();
        categories.sort();
        categories.dedup();
        let mut ids: Vec<String> = products.iter().map(|p| p.id.to_string()).collect();
        ids.sort();
        ids.dedup();
        Catalogue {
            categories,
            products: ids,
            offers: offers.into_iter().map(Into::into).collect(),
            images: Vec::new(),
        }
    }

    /// The same, with the pictures the server serves (`/images/...` paths).
    pub fn with_images<S: Into<String>>(mut self, images: impl IntoIterator<Item = S>) -> Self {
        self.images = images.into_iter().map(Into::into).collect();
        self.images.sort();
        self
    }
}

/// Checks every value of a pattern file against what exists: `category` and `product` against
/// the catalogue, `device` against the device classes, offer names against the offers with a
/// picture. Every error names its file, line and column, with a suggestion for a near miss.
/// A file that is not valid TOML yields nothing here ([`compile_pattern`] reports it). Separate
/// from compiling: the live pipeline does not depend on the catalogue.
pub fn check_values(file: &str, text: &str, catalogue: &Catalogue) -> Vec<PatternError> {
    let Ok(doc) = DeTable::parse(text) else {
        return Vec::new();
    };
    let declared: Vec<String> = doc
        .get_ref()
        .iter()
        .find(|(k, _)| k.get_ref() == "offers")
        .and_then(|(_, v)| v.get_ref().as_table())
        .map(|t| t.iter().map(|(k, _)| k.get_ref().to_string()).collect())
        .unwrap_or_default();
    let checker = Checker {
        file,
        text,
        catalogue,
        declared,
        errors: RefCell::new(Vec::new()),
    };
    for (key, value) in doc.get_ref() {
        let key = key.get_ref().as_ref();
        match key {
            "audience" | "abort_if" => checker.condition(value, key),
            "step" | "transition" => {
                for (i, item) in as_array(value).iter().enumerate() {
                    if let Some(when) = member(item, "when") {
                        checker.condition(when, &format!("{key}[{i}].when"));
                    }
                }
            }
            "offers" => {
                if let Some(table) = value.get_ref().as_table() {
                    for (name, content) in table {
                        checker.offer_content(content, &format!("offers.{}", name.get_ref()));
                    }
                }
            }
            "offer" => {
                if let Some(default) = member(value, "default") {
                    checker.offer(default, "offer.default");
                }
                if let Some(rules) = member(value, "rules") {
                    for (i, rule) in as_array(rules).iter().enumerate() {
                        if let Some(when) = member(rule, "when") {
                            checker.condition(when, &format!("offer.rules[{i}].when"));
                        }
                        if let Some(offer) = member(rule, "offer") {
                            checker.offer(offer, &format!("offer.rules[{i}].offer"));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let mut errors = checker.errors.into_inner();
    sort_errors(&mut errors);
    errors
}

fn as_array<'a, 'i>(value: &'a Spanned<DeValue<'i>>) -> &'a [Spanned<DeValue<'i>>] {
    value.get_ref().as_array().map_or(&[], |a| &a[..])
}

fn member<'a, 'i>(value: &'a Spanned<DeValue<'i>>, key: &str) -> Option<&'a Spanned<DeValue<'i>>> {
    value
        .get_ref()
        .as_table()?
        .iter()
        .find(|(k, _)| k.get_ref() == key)
        .map(|(_, v)| v)
}

struct Checker<'a> {
    file: &'a str,
    text: &'a str,
    catalogue: &'a Catalogue,
    /// The offers the file declares (`[offers.<name>]`).
    declared: Vec<String>,
    errors: RefCell<Vec<PatternError>>,
}

impl Checker<'_> {
    fn fail(&self, value: &Spanned<DeValue<'_>>, field: &str, message: String) {
        let (line, column) = position(self.text, value.span().start);
        self.errors.borrow_mut().push(PatternError {
            file: self.file.to_owned(),
            line,
            column,
            field: field.to_owned(),
            message,
        });
    }

    /// The string values of a field (`"x"` or `["x", "y"]`); other types are the compiler's.
    fn strings<'a, 'i>(
        value: &'a Spanned<DeValue<'i>>,
    ) -> Vec<(&'a Spanned<DeValue<'i>>, &'a str)> {
        match value.get_ref() {
            DeValue::String(s) => vec![(value, s.as_ref())],
            DeValue::Array(items) => items
                .iter()
                .filter_map(|v| v.get_ref().as_str().map(|s| (v, s)))
                .collect(),
            _ => Vec::new(),
        }
    }

    fn condition(&self, value: &Spanned<DeValue<'_>>, field: &str) {
        let Some(table) = value.get_ref().as_table() else {
            return;
        };
        for (key, value) in table {
            let key = key.get_ref().as_ref();
            let path = format!("{field}.{key}");
            match key {
                "all" | "any" => {
                    for (i, item) in as_array(value).iter().enumerate() {
                        self.condition(item, &format!("{path}[{i}]"));
                    }
                }
                "not" => self.condition(value, &path),
                "category" => {
                    let known: Vec<&str> = self
                        .catalogue
                        .categories
                        .iter()
                        .map(String::as_str)
                        .collect();
                    let tail = format!("the catalogue's categories are {}", known.join(", "));
                    self.one_of(value, &path, "category", &known, &tail);
                }
                "product" => {
                    let known: Vec<&str> =
                        self.catalogue.products.iter().map(String::as_str).collect();
                    let tail = format!(
                        "no product of the catalogue ({} products, GET /api/products lists them) \
                         has this id",
                        known.len()
                    );
                    self.one_of(value, &path, "product", &known, &tail);
                }
                "device" => {
                    let known = Device::ALL.map(Device::as_str);
                    let tail = format!("the device classes are {}", known.join(", "));
                    self.one_of(value, &path, "device class", &known, &tail);
                }
                _ => {}
            }
        }
    }

    /// A declared offer's picture must be one the server serves, and its product must exist.
    fn offer_content(&self, value: &Spanned<DeValue<'_>>, field: &str) {
        if let Some(image) = member(value, "image")
            && let Some(url) = image.get_ref().as_str()
            && url.starts_with("/images/")
            && !self.catalogue.images.is_empty()
            && !self.catalogue.images.iter().any(|i| i == url)
        {
            let known: Vec<&str> = self.catalogue.images.iter().map(String::as_str).collect();
            let offers: Vec<&str> = known
                .iter()
                .copied()
                .filter(|i| i.starts_with("/images/offers/"))
                .collect();
            let tail = format!(
                "the server has no such picture (add it under data/images/, or link a product \
                 with `product`); the offer pictures are {}",
                offers.join(", ")
            );
            self.fail(
                image,
                &format!("{field}.image"),
                unknown(&format!("unknown picture {url:?}"), url, &known, &tail),
            );
        }
        if let Some(product) = member(value, "product") {
            let known: Vec<&str> = self.catalogue.products.iter().map(String::as_str).collect();
            let tail = format!(
                "no product of the catalogue ({} products, GET /api/products lists them) has \
                 this id",
                known.len()
            );
            self.one_of(
                product,
                &format!("{field}.product"),
                "product",
                &known,
                &tail,
            );
        }
    }

    /// Each string of `value` must be one of `known` (ignoring ASCII case, as conditions do).
    fn one_of(
        &self,
        value: &Spanned<DeValue<'_>>,
        field: &str,
        what: &str,
        known: &[&str],
        tail: &str,
    ) {
        if known.is_empty() {
            return;
        }
        for (v, s) in Self::strings(value) {
            if !known.iter().any(|k| k.eq_ignore_ascii_case(s)) {
                let message = unknown(&format!("unknown {what} {s:?}"), s, known, tail);
                self.fail(v, field, message);
            }
        }
    }

    fn offer(&self, value: &Spanned<DeValue<'_>>, field: &str) {
        let known: Vec<&str> = self.catalogue.offers.iter().map(String::as_str).collect();
        let Some(s) = value.get_ref().as_str() else {
            return;
        };
        if known.is_empty() || known.contains(&s) || self.declared.iter().any(|d| d == s) {
            return;
        }
        let tail = format!(
            "the shop has no such offer, so its popup would be broken: declare it in \
             [offers.{s}] with a title and a picture, or give one of the shop's own, {}",
            known.join(", ")
        );
        self.fail(
            value,
            field,
            unknown(&format!("unknown offer {s:?}"), s, &known, &tail),
        );
    }
}

/// `what: did you mean "x"? (tail)` when a known value is near enough to `value` to be a typo
/// (edit distance, ignoring ASCII case), else `what; tail`.
fn unknown(what: &str, value: &str, known: &[&str], tail: &str) -> String {
    let value_lower = value.to_ascii_lowercase();
    let limit = 1 + value.chars().count() / 4;
    let nearest = known
        .iter()
        .map(|k| (edit_distance(&value_lower, &k.to_ascii_lowercase()), *k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d);
    match nearest {
        Some((_, k)) => format!("{what}: did you mean {k:?}? ({tail})"),
        None => format!("{what}; {tail}"),
    }
}

/// Levenshtein distance in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ca == *cb {
                diagonal
            } else {
                1 + diagonal.min(above).min(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

/// A funnel file: steps a visitor takes in order within a session (`docs/funnels.md`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFunnel {
    name: Spanned<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    step: Vec<Spanned<RawFunnelStep>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFunnelStep {
    name: Spanned<String>,
    when: Spanned<toml::Table>,
}

/// Parses and validates a funnel file, reporting every error: the step conditions are the
/// patterns' ([`compile_condition`], without state references); a step whose condition names no
/// `type` is about page views.
pub fn compile_funnel(file: &str, text: &str) -> Result<crate::funnel::Funnel, PatternErrors> {
    use crate::funnel::{Funnel, FunnelStep, MAX_STEPS};
    let src = Source {
        file,
        text,
        errors: RefCell::new(Vec::new()),
    };
    let raw: RawFunnel = parse_toml(file, text)?;
    let name = checked_name(&src, &raw.name);
    if !(2..=MAX_STEPS).contains(&raw.step.len()) {
        src.fail(
            0..0,
            "step",
            format!(
                "a funnel has 2 to {MAX_STEPS} [[step]] tables, this one has {}",
                raw.step.len()
            ),
        );
    }
    let mut steps = Vec::new();
    for (i, step) in raw.step.iter().enumerate() {
        let field = format!("step[{i}].when");
        let s = step.get_ref();
        let step_name = s.name.get_ref().trim();
        if step_name.is_empty() || step_name.len() > 80 {
            src.fail(
                s.name.span(),
                format!("step[{i}].name"),
                "must be 1 to 80 bytes",
            );
        }
        let table = s.when.get_ref();
        let when = compile_condition(&src, table, s.when.span(), &field, &[]);
        let mut named = Vec::new();
        let under_not = named_types(table, false, &mut named);
        let (when, types) = if under_not {
            (when, None)
        } else if named.is_empty() {
            // The type is checked first (`FunnelStep::types`): the condition need not repeat it.
            (when, Some(vec![EventType::PageView]))
        } else {
            (when, Some(named))
        };
        steps.push(FunnelStep {
            name: step_name.to_owned(),
            when,
            types,
        });
    }
    let mut errors = src.errors.into_inner();
    if !errors.is_empty() {
        sort_errors(&mut errors);
        return Err(PatternErrors(errors));
    }
    Ok(Funnel {
        name,
        description: raw.description,
        steps,
        source: file.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = include_str!("../../../../patterns/seed-clothes-shoes-clothes.toml");

    /// The first error, without its column (`p.toml:3: …`).
    fn error(text: &str) -> String {
        let e = parse_pattern("p.toml", text).unwrap_err();
        assert!(e.line > 0 && e.column > 0, "{e}");
        PatternError { column: 0, ..e }.to_string()
    }

    #[test]
    fn seed_pattern_compiles_and_explains_itself() {
        let p = parse_pattern("seed.toml", SEED).unwrap();
        assert_eq!(p.states, ["init", "clothes_visited", "shoes_visited"]);
        assert_eq!(p.within_ms, Some(1_800_000));
        assert_eq!(p.version.len(), 16);
        let text = p.explain();
        assert!(text.contains("gender is M and aged 35–45"), "{text}");
        assert!(text.contains("From shoes_visited, a view where category is clothing and a different product than at clothes_visited earns the offer."), "{text}");
        assert!(
            text.contains("offer1 if gender is M, else offer2."),
            "{text}"
        );
        let phones = "name = \"p\"\naudience = { device = \"Mobile\" }\n[offer]\n\
                      default = \"offer1\"\n[[step]]\nwhen = { category = \"shoes\" }\n";
        let text = parse_pattern("p.toml", phones).unwrap().explain();
        assert!(
            text.starts_with("A visitor can start a match on a view where device is Mobile."),
            "{text}"
        );
        let anyone = phones.replace("audience = { device = \"Mobile\" }\n", "");
        let text = parse_pattern("p.toml", &anyone).unwrap().explain();
        assert!(text.starts_with("Any visitor can start a match."), "{text}");
    }

    #[test]
    fn event_types_and_amounts_compile_and_bad_ones_are_reported() {
        let base = "name = \"p\"\n[offer]\ndefault = \"offer1\"\n[[step]]\nwhen = { category = \"shoes\" }\n";
        // No type named: page views only, conditions as written.
        let plain = parse_pattern("p.toml", base).unwrap();
        assert_eq!(plain.events, EventFilter::PageViews);
        let typed = format!(
            "{base}[[step]]\nwhen = {{ type = [\"add_to_cart\", \"wishlist_add\"], price = {{ min = 10, max = 99.5 }}, quantity = 2 }}\n"
        );
        let p = parse_pattern("p.toml", &typed).unwrap();
        assert_eq!(
            p.events,
            EventFilter::Only(vec![
                EventType::PageView,
                EventType::AddToCart,
                EventType::parse("wishlist_add").unwrap()
            ])
        );
        // The step that names no type is about page views.
        let text = p.explain();
        assert!(
            text.contains("type is page_view and category is shoes"),
            "{text}"
        );
        assert!(
            text.contains("price from 10 to 99.5") && text.contains("quantity is 2"),
            "{text}"
        );
        let negated = base.replace(
            "[offer]",
            "abort_if = { not = { type = \"page_view\" } }\n[offer]",
        );
        assert_eq!(
            parse_pattern("p.toml", &negated).unwrap().events,
            EventFilter::All
        );
        for (when, message) in [
            ("type = \"Add To Cart\"", "is neither a built-in type"),
            (
                "price = \"cheap\"",
                "expected a number or { min = .., max = .. }",
            ),
            (
                "price = { min = 5, max = 1 }",
                "min 5 is greater than max 1",
            ),
            ("revenue = { above = 5 }", "unknown key \"above\""),
            (
                "properties = { plan = [1] }",
                "property \"plan\": expected strings",
            ),
            ("properties = 3", "expected a table of property conditions"),
            (
                "source = \"google\"",
                "unknown source \"google\"; expected one of direct, search",
            ),
        ] {
            let text = format!("{base}[[step]]\nwhen = {{ {when} }}\n");
            let e = error(&text);
            assert!(e.contains(message), "{when}: {e}");
        }
    }

    #[test]
    fn a_source_condition_holds_for_events_from_that_source() {
        let text = "name = \"p\"\n[offer]\ndefault = \"offer1\"\n[[step]]\nwhen = { source = [\"search\", \"email\"] }\n";
        let p = parse_pattern("p.toml", text).unwrap();
        let when = &p.transitions[INIT as usize][0].when;
        let view = |referrer: Option<&str>| {
            let mut c = crate::click::Click::new(0, "v", "https://shop.example/p/VD1");
            c.detail = referrer.map(|r| {
                Box::new(crate::event::EventDetail {
                    referrer: Some(r.to_owned()),
                    ..Default::default()
                })
            });
            crate::Enricher::new().enrich(c, &Lookups::default())
        };
        assert!(when.eval(
            &view(Some("https://www.bing.com/search?q=x")).borrowed(),
            None
        ));
        assert!(when.eval(
            &view(Some("https://outlook.live.com/mail/")).borrowed(),
            None
        ));
        assert!(!when.eval(&view(Some("https://www.facebook.com/")).borrowed(), None));
        assert!(!when.eval(&view(None).borrowed(), None));
        assert!(
            p.explain().contains("source is search or email"),
            "{}",
            p.explain()
        );
        assert!(
            p.in_plain_words().contains("coming from search or email"),
            "{}",
            p.in_plain_words()
        );
    }

    #[test]
    fn catalogue_product_holds_for_the_catalogue_s_products_only() {
        let text = "name = \"p\"\n[offer]\ndefault = \"offer1\"\n\
                    [[step]]\nwhen = { catalogue_product = true }\n";
        let p = parse_pattern("p.toml", text).unwrap();
        let when = &p.transitions[INIT as usize][0].when;
        let mut lookups = Lookups::default();
        let products = r#"[{"id":"VD1","category":"shoes","title":"Red shoes"}]"#;
        lookups
            .load_products_json("products.json", products.as_bytes())
            .unwrap();
        lookups
            .load_products_tsv(
                "products.tsv",
                "url\tcategory\nhttp://www.acme.com/\tbooks\n".as_bytes(),
            )
            .unwrap();
        let holds = |url: &str| {
            let c = crate::click::Click::new(0, "v", url);
            let view = crate::Enricher::new().enrich(c, &lookups);
            when.eval(&view.borrowed(), None)
        };
        assert!(holds("http://www.acme.com/SH1/VD1"));
        assert!(!holds("http://www.acme.com/"), "the home page");
        assert!(
            !holds("http://www.acme.com/shop/cart"),
            "a page without a product"
        );
        assert!(
            !holds("http://www.acme.com/SH1/VD9"),
            "an id the catalogue does not have"
        );
        assert!(
            p.in_plain_words().starts_with("Look at a product"),
            "{}",
            p.in_plain_words()
        );
        let e = error(
            "name = \"p\"\n[offer]\ndefault = \"offer1\"\n[[step]]\nwhen = { catalogue_product = 1 }\n",
        );
        assert!(e.contains("expected true or false"), "{e}");
    }

    #[test]
    fn session_conditions_compile_and_their_errors_say_what_is_wrong() {
        let base = "name = \"p\"\n[offer]\ndefault = \"offer1\"\n";
        let text = format!(
            "{base}[[step]]\nwhen = {{ session = {{ pages = {{ min = 3 }}, product_views = 2, \
             product_in_cart = false, source = \"search\" }} }}\n"
        );
        let p = parse_pattern("p.toml", &text).unwrap();
        let when = &p.transitions[INIT as usize][0].when;
        let Condition::All(tests) = when else {
            panic!("four session tests: {when:?}")
        };
        assert_eq!(
            tests,
            &[
                Condition::Session(SessionTest::Pages(3, u32::MAX)),
                Condition::Session(SessionTest::ProductViews(2, 2)),
                Condition::Session(SessionTest::ProductInCart(false)),
                Condition::Session(SessionTest::Source(vec![Medium::Search])),
            ]
        );
        assert!(p.uses_session());
        let plain = parse_pattern("p.toml", &format!("{base}[[step]]\nwhen = {{}}\n")).unwrap();
        assert!(!plain.uses_session());
        let words = p.in_plain_words();
        assert!(
            words.contains("(its visit number 2 in the session) (not in the cart)"),
            "{words}"
        );
        // The condition reads the facts detection attaches; without them it does not hold.
        let c = crate::click::Click::new(0, "v", "https://shop.example/p/VD1");
        let view = crate::Enricher::new().enrich(c, &Lookups::default());
        let mut r = view.borrowed();
        assert!(!when.eval(&r, None));
        r.session = Some(crate::session::SessionFacts {
            pages: 3,
            product_views: 2,
            product_in_cart: false,
            source: Medium::Search,
        });
        assert!(when.eval(&r, None));
        for (when, message) in [
            ("session = 3", "expected a table of session conditions"),
            ("session = {}", "expected at least one session condition"),
            (
                "session = { page = 3 }",
                "unknown session condition \"page\": did you mean \"pages\"?",
            ),
            (
                "session = { pages = 2.5 }",
                "session.pages: counts are whole numbers",
            ),
            (
                "session = { product_in_cart = 1 }",
                "expected true or false",
            ),
            ("session = { source = \"tv\" }", "unknown source \"tv\""),
        ] {
            let text = format!("{base}[[step]]\nwhen = {{ {when} }}\n");
            let e = error(&text);
            assert!(e.contains(message), "{when}: {e}");
        }
        let unknown_state = "name = \"p\"\n[offer]\ndefault = \"offer1\"\nproduct_from = \"nowhere\"\n\
             [[step]]\nname = \"seen\"\nwhen = {}\n[[step]]\nwhen = {}\n";
        let e = error(unknown_state);
        assert!(
            e.contains("offer.product_from: unknown state \"nowhere\"; states are seen"),
            "{e}"
        );
    }

    #[test]
    fn absent_steps_compile_to_a_timer_and_their_rules_are_checked() {
        let text = "name = \"p\"\n[offer]\ndefault = \"offer1\"\n\
                    [[step]]\nname = \"carted\"\nwhen = { type = \"add_to_cart\" }\n\
                    [[step]]\nabsent = { type = \"purchase\" }\nfor = \"15m\"\n";
        let p = parse_pattern("p.toml", text).unwrap();
        let carted = p.states.iter().position(|s| s == "carted").unwrap();
        let timer = p.timers[carted].as_ref().expect("carted waits");
        assert_eq!((timer.after_ms, timer.to), (900_000, Target::Offer));
        assert!(
            p.transitions[carted].is_empty(),
            "a waiting state has no event transition"
        );
        assert_eq!(
            p.events,
            EventFilter::Only(vec![EventType::AddToCart, EventType::Purchase])
        );
        let head = "name = \"p\"\n[offer]\ndefault = \"offer1\"\n";
        let view = "[[step]]\nwhen = { category = \"shoes\" }\n";
        let absent = "[[step]]\nabsent = { type = \"purchase\" }\nfor = \"15m\"\n";
        for (steps, message) in [
            (format!("{absent}{view}"), "cannot be the first"),
            (
                format!("{view}{absent}{absent}"),
                "two absent steps in a row",
            ),
            (
                format!("{}{absent}", view.replace("}\n", "}\nloop = true\n")),
                "the step before an absent step cannot loop",
            ),
            (
                format!("{view}[[step]]\nabsent = {{ type = \"purchase\" }}\n"),
                "needs `for`",
            ),
            (
                format!("{view}[[step]]\nwhen = {{ category = \"shoes\" }}\nfor = \"1m\"\n"),
                "`for` belongs to an `absent` step",
            ),
            (
                format!("{view}[[step]]\nname = \"x\"\n"),
                "a step needs `when`",
            ),
            (
                format!("{view}[[step]]\nabsent = {{ type = \"purchase\" }}\nfor = \"8d\"\n"),
                "longer than 7 days",
            ),
            (
                format!("{view}[[step]]\nabsent = {{ type = \"purchase\" }}\nfor = \"soon\"\n"),
                "is not a duration",
            ),
        ] {
            let e = error(&format!("{head}{steps}"));
            assert!(e.contains(message), "{steps}: {e}");
        }
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let bad_field = SEED.replace(
            "when = { category = \"shoes\" }",
            "when = { categry = \"shoes\" }",
        );
        let line = bad_field
            .lines()
            .position(|l| l.contains("categry"))
            .unwrap()
            + 1;
        let e = error(&bad_field);
        assert!(
            e.starts_with(&format!(
                "p.toml:{line}: transition[1].when.categry: unknown field \"categry\""
            )),
            "{e}"
        );

        let e = error(&SEED.replace(
            "from = \"shoes_visited\"\nto = \"offer\"",
            "from = \"shoe_visited\"\nto = \"offer\"",
        ));
        assert!(
            e.contains("transition[3].from: unknown state \"shoe_visited\""),
            "{e}"
        );

        let line_of = |needle: &str| SEED.lines().position(|l| l.starts_with(needle)).unwrap() + 1;
        let e = error(&SEED.replace("within = \"30m\"", "within = \"half an hour\""));
        let expected = format!(
            "p.toml:{}: within: \"half an hour\" is not a duration",
            line_of("within")
        );
        assert!(e.starts_with(&expected), "{e}");

        let e = error(&SEED.replace("contiguity = \"strict\"", "contiguity = \"loose\""));
        assert!(
            e.starts_with(&format!(
                "p.toml:{}: unknown variant `loose`",
                line_of("contiguity")
            )),
            "{e}"
        );

        let e = error(&SEED.replace(
            "ignore_refresh = true",
            "ignore_refresh = true\nsurprise = 1",
        ));
        assert!(e.contains("unknown field `surprise`"), "{e}");

        let e = error(&SEED.replace(
            "product_differs_from = \"clothes_visited\"",
            "product_differs_from = \"nowhere\"",
        ));
        assert!(e.contains("unknown state \"nowhere\""), "{e}");

        let e = error(&SEED.replace(
            "{ gender = \"M\", age = { min = 35, max = 45 } }",
            "{ gender = \"X\", age = { min = 35, max = 45 } }",
        ));
        assert!(
            e.contains("audience.any[0].gender: gender values are M, F or U"),
            "{e}"
        );

        let e = error("name = \"x\"\n[offer]\ndefault = \"o\"\n");
        assert!(e.contains("declare the machine"), "{e}");

        let e = error("name = \"x\"\n[offer\n");
        assert!(e.starts_with("p.toml:2:"), "{e}");
    }

    #[test]
    fn every_match_ends_within_seven_days() {
        let long = SEED.replace("within = \"30m\"", "within = \"1000000y\"");
        let e = parse_pattern("p.toml", &long).unwrap_err().to_string();
        assert!(
            e.contains("longer than the longest time limit, 7 days"),
            "{e}"
        );
        let week = SEED.replace("within = \"30m\"", "within = \"7d\"");
        assert_eq!(
            parse_pattern("p.toml", &week).unwrap().within_ms,
            Some(MAX_WITHIN_MS)
        );
        // No time limit given: the longest (and `late` needs one to be given).
        let none = SEED
            .replace("within = \"30m\"", "")
            .replace("late = \"reset\"", "");
        assert_eq!(
            parse_pattern("p.toml", &none).unwrap().within_ms,
            Some(MAX_WITHIN_MS)
        );
    }

    #[test]
    fn late_is_validated_and_defaults_to_restart() {
        let p = parse_pattern("seed.toml", SEED).unwrap();
        assert_eq!(
            p.late,
            Late::Reset,
            "the seed behaves as the original detector"
        );
        let text = p.explain();
        assert!(
            text.contains("A later view starts over and counts for nothing")
                && text.contains("Reloading the last product page is ignored even then."),
            "{text}"
        );

        // A file that does not say keeps the behaviour it always had.
        let line_of = |text: &str, needle: &str| {
            text.lines().position(|l| l.starts_with(needle)).unwrap() + 1
        };
        let without = SEED.replace(SEED.lines().nth(line_of(SEED, "late") - 1).unwrap(), "");
        let p = parse_pattern("old.toml", &without).unwrap();
        assert_eq!(p.late, Late::Restart);
        assert!(!p.explain().contains("counts for nothing"));
        let restart = SEED.replace("late = \"reset\"", "late = \"restart\"");
        assert_eq!(
            parse_pattern("p.toml", &restart).unwrap().late,
            Late::Restart
        );

        let bad = SEED.replace("late = \"reset\"", "late = \"drop\"");
        let e = error(&bad);
        assert!(
            e.starts_with(&format!(
                "p.toml:{}: late: unknown value \"drop\"; expected \"reset\"",
                line_of(&bad, "late")
            )),
            "{e}"
        );
        assert!(e.contains("or \"restart\""), "{e}");
        // Values are exact, like `contiguity`'s.
        let e = error(&SEED.replace("late = \"reset\"", "late = \"Reset\""));
        assert!(e.contains("late: unknown value \"Reset\""), "{e}");

        let bad = SEED.replace("late = \"reset\"", "late = true");
        let e = error(&bad);
        assert!(
            e.starts_with(&format!("p.toml:{}:", line_of(&bad, "late"))),
            "{e}"
        );
        assert!(
            e.contains("invalid type: boolean `true`, expected a string"),
            "{e}"
        );

        let bad = SEED.replace("within = \"30m\"", "");
        let e = error(&bad);
        assert!(
            e.starts_with(&format!(
                "p.toml:{}: late: says what a view after the time limit does, but there is no time limit",
                line_of(&bad, "late")
            )),
            "{e}"
        );
    }

    #[test]
    fn steps_compile_to_chained_states() {
        let p = parse_pattern(
            "s.toml",
            r#"
name = "s"
[offer]
default = "o"
[[step]]
name = "a"
when = { category = "clothing" }
loop = true
[[step]]
name = "b"
when = { category = "shoes" }
repeat = 2
distinct = true
"#,
        )
        .unwrap();
        assert_eq!(p.states, ["init", "a", "b"]);
        assert_eq!(p.transitions[1].len(), 2, "a -> b and the a -> a loop");
        assert_eq!(p.transitions[2][0].to, Target::Offer);
        assert!(
            matches!(&p.transitions[2][0].when, Condition::All(cs) if cs.contains(&Condition::ProductNotSeen))
        );
        let e = error(
            "name = \"s\"\n[offer]\ndefault = \"o\"\n[[step]]\nwhen = { category = \"x\" }\nloop = true\n",
        );
        assert!(
            e.contains("step[0].loop: the last step earns the offer"),
            "{e}"
        );
    }

    #[test]
    fn every_error_of_a_file_is_reported_with_line_and_column() {
        let text = "name = \"Bad\"\nwithin = \"soon\"\nlate = \"drop\"\n[offer]\ndefault = \"o\"\n\
                    [[step]]\nwhen = { colour = \"red\", age = { min = 9, max = 1 } }\n";
        let errors = compile_pattern("p.toml", text).unwrap_err();
        let shown: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
        let expected = [
            "p.toml:1:8: name: must be non-empty",
            "p.toml:2:10: within: \"soon\" is not a duration",
            "p.toml:3:8: late: unknown value \"drop\"",
            "p.toml:7:8: step[0].when.age: min 9 is greater than max 1",
            "p.toml:7:8: step[0].when.colour: unknown field \"colour\"",
        ];
        assert_eq!(shown.len(), expected.len(), "{shown:#?}");
        for (shown, expected) in shown.iter().zip(expected) {
            assert!(shown.starts_with(expected), "{shown} / {expected}");
        }
        // The first one, for callers that want one.
        assert_eq!(parse_pattern("p.toml", text).unwrap_err(), errors.0[0]);
    }

    #[test]
    fn values_are_checked_against_the_catalogue_with_suggestions() {
        let catalogue = Catalogue {
            categories: vec!["clothing".into(), "shoes".into()],
            products: vec!["VD1".into(), "VD55129406".into(), "VD55178549".into()],
            offers: vec!["offer1".into(), "offer2".into()],
            images: vec![
                "/images/offers/offer1.png".into(),
                "/images/offers/offer2.png".into(),
            ],
        };
        assert!(check_values("seed.toml", SEED, &catalogue).is_empty());
        let text = "name = \"x\"\naudience = { any = [{ device = \"Mobil\" }, { not = { product = \"VD2\" } }] }\n\
                    [offer]\ndefault = \"offer3\"\nrules = [{ when = { category = \"Shoes\" }, offer = \"free\" }]\n\
                    [[step]]\nwhen = { category = [\"clothing\", \"shoez\"] }\n";
        let shown: Vec<String> = check_values("p.toml", text, &catalogue)
            .iter()
            .map(ToString::to_string)
            .collect();
        let expected = [
            "p.toml:2:32: audience.any[0].device: unknown device class \"Mobil\": did you mean \"Mobile\"?",
            "p.toml:2:63: audience.any[1].not.product: unknown product \"VD2\": did you mean \"VD1\"?",
            "p.toml:4:11: offer.default: unknown offer \"offer3\": did you mean \"offer1\"?",
            "p.toml:5:51: offer.rules[0].offer: unknown offer \"free\"; the shop has no such offer",
            "p.toml:7:34: step[0].when.category: unknown category \"shoez\": did you mean \"shoes\"?",
        ];
        assert_eq!(shown.len(), expected.len(), "{shown:#?}");
        for (shown, expected) in shown.iter().zip(expected) {
            assert!(shown.starts_with(expected), "{shown} / {expected}");
        }
        // Without offers, offers are not checked; a file that is not TOML is the compiler's.
        let no_offers = Catalogue {
            offers: Vec::new(),
            ..catalogue.clone()
        };
        assert_eq!(check_values("p.toml", text, &no_offers).len(), 3);
        assert!(check_values("p.toml", "name = ", &catalogue).is_empty());
    }

    /// An offer the shop does not have is declared with what to show; the declaration's
    /// picture and product must exist, and it must be an offer the pattern gives.
    #[test]
    fn declared_offers_are_checked() {
        let catalogue = Catalogue {
            categories: vec!["shoes".into()],
            products: vec!["VD1".into()],
            offers: vec!["offer1".into()],
            images: vec![
                "/images/offers/offer1.png".into(),
                "/images/products/VD1.png".into(),
            ],
        };
        let ok = "name = \"x\"\n[offer]\ndefault = \"free-shipping\"\n\
                  [offers.free-shipping]\ntitle = \"Free shipping\"\nproduct = \"VD1\"\n\
                  [[step]]\nwhen = { category = \"shoes\" }\n";
        let p = compile_pattern("x.toml", ok).unwrap();
        assert_eq!(p.offers["free-shipping"].title, "Free shipping");
        assert!(check_values("x.toml", ok, &catalogue).is_empty());

        let wrong = "name = \"x\"\n[offer]\ndefault = \"free-shipping\"\n\
                     [offers.free-shipping]\ntitle = \"Free shipping\"\n\
                     image = \"/images/offers/free-shipping.png\"\nproduct = \"VD2\"\n\
                     [[step]]\nwhen = { category = \"shoes\" }\n";
        let errors: Vec<String> = check_values("x.toml", wrong, &catalogue)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert!(
            errors[0].starts_with("x.toml:6:9: offers.free-shipping.image: unknown picture"),
            "{errors:#?}"
        );
        assert!(
            errors[1]
                .starts_with("x.toml:7:11: offers.free-shipping.product: unknown product \"VD2\""),
            "{errors:#?}"
        );

        let undeclared = ok.replace(
            "[offers.free-shipping]\ntitle = \"Free shipping\"\nproduct = \"VD1\"\n",
            "",
        );
        let errors = check_values("x.toml", &undeclared, &catalogue);
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0]
                .message
                .contains("declare it in [offers.free-shipping]"),
            "{}",
            errors[0]
        );

        let stray = ok.replace("[offers.free-shipping]", "[offers.other]");
        let e = compile_pattern("x.toml", &stray).unwrap_err();
        assert!(
            e.to_string()
                .contains("\"other\" is declared but the pattern never gives it"),
            "{e}"
        );
        let no_title = ok.replace("title = \"Free shipping\"", "title = \" \"");
        assert!(
            compile_pattern("x.toml", &no_title)
                .unwrap_err()
                .to_string()
                .contains("title: must not be empty")
        );
        let remote = ok.replace("product = \"VD1\"", "image = \"http://x/y.png\"");
        assert!(
            compile_pattern("x.toml", &remote)
                .unwrap_err()
                .to_string()
                .contains("https:// URL")
        );
    }

    #[test]
    fn edit_distance_counts_characters() {
        assert_eq!(edit_distance("shoez", "shoes"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("größe", "grösse"), 2);
    }
}
