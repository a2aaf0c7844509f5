//! A pattern in a shopper's words: who it is for and which views earn its offer, without the
//! state machine's names (those are for [`Pattern::explain`], which the CLI and the pattern
//! author see). The shop shows this, and tells a shopper whether their profile is in the
//! audience ([`Pattern::admits`]).

use std::fmt::Write as _;
use std::sync::Arc;

use super::machine::{Condition, Contiguity, Field, INIT, Pattern, PropertyTest, StateId, Target};
use crate::click::{Device, EnrichedRef, Gender};

/// What the shop knows of a shopper before any view: what they chose, and the device class
/// of their browser's user agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Profile {
    /// The chosen gender.
    pub gender: Gender,
    /// The chosen age.
    pub age: Option<u32>,
    /// The device class of the user agent.
    pub device: Device,
}

impl Pattern {
    /// "For men aged 35–45 and women aged 25–35: look at clothing, then shoes, then a
    /// different clothing item, one right after the other, within 30 minutes."
    pub fn in_plain_words(&self) -> String {
        let mut out = String::new();
        if self.audience != Condition::True {
            let _ = write!(out, "For {}: ", who(&self.audience));
        }
        let steps = self.main_path();
        let views: Vec<Step> = steps
            .iter()
            .map(|(c, absent_for)| match absent_for {
                None => step(c),
                // "not place an order within 15 minutes"
                Some(ms) => Step {
                    verb: "{}",
                    object: format!(
                        "don't {} within {}",
                        step(c).with_verb(),
                        duration_words(*ms)
                    ),
                },
            })
            .collect();
        let mut sentence = match views.split_first() {
            Some((first, rest)) => {
                let mut s = first.with_verb();
                let mut verb = first.verb;
                for v in rest {
                    // "look at clothing, then shoes": a verb is said when it changes.
                    let words = if v.verb == verb && v.verb == LOOK {
                        v.object.clone()
                    } else {
                        v.with_verb()
                    };
                    let _ = write!(s, ", then {words}");
                    verb = v.verb;
                }
                s
            }
            None => "look at any product".to_owned(),
        };
        // What a waiting step allows is said by the step itself.
        let events = steps.iter().filter(|(_, wait)| wait.is_none()).count();
        if self.contiguity == Contiguity::Strict && events > 1 {
            sentence.push_str(", one right after the other");
        }
        // A wait says its own time; `within` does not apply while a match waits.
        let waits = events < steps.len();
        if let Some(ms) = self.within_ms.filter(|_| !waits) {
            let _ = write!(sentence, ", within {}", duration_words(ms));
        }
        if out.is_empty() {
            // Capitalised when it starts the sentence.
            let mut chars = sentence.chars();
            if let Some(c) = chars.next() {
                sentence = c.to_uppercase().chain(chars).collect();
            }
        }
        out.push_str(&sentence);
        out.push('.');
        out
    }

    /// Whether a shopper with `profile` is in the audience; `None` when the audience depends
    /// on more than gender, age and device (where they are, whether they have an account).
    pub fn admits(&self, profile: &Profile) -> Option<bool> {
        if !decidable(&self.audience) {
            return None;
        }
        let empty: Arc<str> = Arc::from("");
        let click = EnrichedRef {
            ts_ms: 0,
            visitor: "",
            ip: "",
            url: "",
            product_id: &empty,
            category: &empty,
            title: &empty,
            known_visitor: false,
            gender: profile.gender,
            age: profile.age,
            country: &empty,
            city: None,
            region: None,
            device: profile.device,
            event: &crate::event::EventType::PageView,
            detail: None,
            session: None,
        };
        Some(self.audience.eval(&click, None))
    }

    /// The conditions of the shortest way from `init` to the offer (loops left out), each with
    /// its wait when it is an absence (a state's deadline).
    fn main_path(&self) -> Vec<(&Condition, Option<i64>)> {
        // Breadth-first from init: each state's first way in (`usize::MAX`: its timer).
        let n = self.states.len();
        let mut via: Vec<Option<(StateId, usize)>> = vec![None; n];
        let mut seen = vec![false; n];
        seen[INIT as usize] = true;
        let mut queue = std::collections::VecDeque::from([INIT]);
        let edge = |from: StateId, i: usize| -> (&Condition, Option<i64>, Target) {
            if i == usize::MAX {
                let t = self.timers[from as usize].as_ref().expect("a timer edge");
                (&t.absent, Some(t.after_ms), t.to)
            } else {
                let t = &self.transitions[from as usize][i];
                (&t.when, None, t.to)
            }
        };
        while let Some(s) = queue.pop_front() {
            let timer = self
                .timers
                .get(s as usize)
                .is_some_and(Option::is_some)
                .then_some(usize::MAX);
            let ways = (0..self.transitions[s as usize].len()).chain(timer);
            for i in ways {
                let (_, _, to) = edge(s, i);
                match to {
                    Target::Offer => {
                        let (c, wait, _) = edge(s, i);
                        let mut path = vec![(c, wait)];
                        let mut at = s;
                        while let Some((from, j)) = via[at as usize] {
                            let (c, wait, _) = edge(from, j);
                            path.push((c, wait));
                            at = from;
                        }
                        path.reverse();
                        return path;
                    }
                    Target::State(to) if !seen[to as usize] => {
                        seen[to as usize] = true;
                        via[to as usize] = Some((s, i));
                        queue.push_back(to);
                    }
                    Target::State(_) => {}
                }
            }
        }
        Vec::new()
    }
}

/// Whether the condition reads only what a [`Profile`] has.
fn decidable(c: &Condition) -> bool {
    match c {
        Condition::True | Condition::AgeBetween(..) => true,
        Condition::OneOf(field, _) => matches!(field, Field::Gender | Field::Device),
        Condition::All(cs) | Condition::Any(cs) => cs.iter().all(decidable),
        Condition::Not(c) => decidable(c),
        _ => false,
    }
}

/// Who an audience condition admits: "women aged 25–35 and men aged 35–45".
fn who(c: &Condition) -> String {
    match c {
        Condition::True => "everyone".to_owned(),
        Condition::Any(cs) => join(&cs.iter().map(who).collect::<Vec<_>>(), "and"),
        Condition::All(cs) => group(cs),
        Condition::Not(inner) => format!("everyone except {}", who(inner)),
        other => group(std::slice::from_ref(other)),
    }
}

/// One group of shoppers: a noun from the gender, then what else they must be.
fn group(cs: &[Condition]) -> String {
    let mut noun = "shoppers".to_owned();
    let mut qualifiers = Vec::new();
    for c in cs {
        match c {
            Condition::OneOf(Field::Gender, values) => {
                let nouns: Vec<&str> = values
                    .iter()
                    .map(|v| match v.to_ascii_uppercase().as_str() {
                        "F" => "women",
                        "M" => "men",
                        _ => "shoppers who did not give their gender",
                    })
                    .collect();
                noun = join(&nouns, "and");
            }
            Condition::AgeBetween(min, max) => qualifiers.push(format!("aged {min}–{max}")),
            Condition::OneOf(Field::Device, values) => {
                let places: Vec<&str> = values.iter().map(|v| device_words(v)).collect();
                qualifiers.push(join(&places, "or"));
            }
            Condition::OneOf(Field::Country, values) => {
                let upper: Vec<String> = values.iter().map(|v| v.to_ascii_uppercase()).collect();
                qualifiers.push(format!("in {}", join(&upper, "or")));
            }
            Condition::OneOf(field @ (Field::City | Field::Region), values) => {
                qualifiers.push(format!("in the {} {}", field.name(), join(values, "or")));
            }
            Condition::KnownVisitor(true) => qualifiers.push("with a customer account".into()),
            Condition::KnownVisitor(false) => qualifiers.push("without a customer account".into()),
            composite @ (Condition::All(_) | Condition::Any(_) | Condition::Not(_)) => {
                qualifiers.push(format!("who match {}", who(composite)));
            }
            leaf => qualifiers.push(fact(leaf)),
        }
    }
    if qualifiers.is_empty() {
        noun
    } else {
        format!("{noun} {}", qualifiers.join(" "))
    }
}

fn device_words(device: &str) -> &'static str {
    match device.to_ascii_lowercase().as_str() {
        "mobile" => "on a phone",
        "tablet" => "on a tablet",
        "desktop" => "on a computer",
        "bot" => "that are robots",
        _ => "on another kind of device",
    }
}

/// One step of the way to the offer: what the visitor does and to what.
struct Step {
    /// What the visitor does (`LOOK` for a page view).
    verb: &'static str,
    /// What to: "shoes", "a different clothing item".
    object: String,
}

const LOOK: &str = "look at {}";

impl Step {
    /// "look at shoes", "add shoes to the cart".
    fn with_verb(&self) -> String {
        self.verb.replace("{}", &self.object)
    }
}

/// A transition's condition as a step: its event type gives the verb, the rest the object.
fn step(c: &Condition) -> Step {
    let parts: &[Condition] = match c {
        Condition::All(cs) => cs,
        other => std::slice::from_ref(other),
    };
    let mut types: Vec<&str> = Vec::new();
    let mut rest = Vec::new();
    for part in parts {
        match part {
            Condition::OneOf(Field::Type, values) => {
                types.extend(values.iter().map(String::as_str));
            }
            other => rest.push(other.clone()),
        }
    }
    let object = view(&Condition::All(rest));
    let nothing = object == "any product";
    let extras_only = object.starts_with('(');
    // "a product (price at least 50)" where only extras constrain it.
    let noun = match (nothing, extras_only) {
        (true, _) => "a product".to_owned(),
        (false, true) => format!("a product {object}"),
        (false, false) => object.clone(),
    };
    // What follows a verb without an object: " (price at least 50)", " (shoes)".
    let suffix = match (nothing, extras_only) {
        (true, _) => String::new(),
        (false, true) => format!(" {object}"),
        (false, false) => format!(" ({object})"),
    };
    let (verb, object) = match types.as_slice() {
        [] | ["page_view"] => (LOOK, object),
        ["add_to_cart"] => ("add {} to the cart", noun),
        ["remove_from_cart"] => ("take {} out of the cart", noun),
        ["purchase"] if nothing || extras_only => ("place an order{}", suffix),
        ["purchase"] => ("buy {}", noun),
        ["begin_checkout"] => ("start the checkout{}", suffix),
        ["search"] => ("search the shop{}", suffix),
        _ => {
            let named: Vec<String> = types.iter().map(|t| format!("“{t}”")).collect();
            ("do {}", format!("{}{suffix}", join(&named, "or")))
        }
    };
    Step { verb, object }
}

/// A condition on one fact of an event, in words: "price from 10 to 50", "plan is gold".
fn fact(c: &Condition) -> String {
    match c {
        Condition::Amount(amount, min, max) => {
            format!(
                "{} {}",
                amount.name(),
                super::machine::range_words(*min, *max)
            )
        }
        Condition::Property(key, PropertyTest::OneOf(values)) => {
            format!("{key} is {}", join(values, "or"))
        }
        Condition::Property(key, PropertyTest::Between(min, max)) => {
            format!("{key} {}", super::machine::range_words(*min, *max))
        }
        Condition::Property(key, PropertyTest::Is(true)) => key.clone(),
        Condition::Property(key, PropertyTest::Is(false)) => format!("not {key}"),
        Condition::OneOf(Field::Query, values) => {
            let quoted: Vec<String> = values.iter().map(|v| format!("“{v}”")).collect();
            format!("searching for {}", join(&quoted, "or"))
        }
        Condition::Source(media) => {
            let names: Vec<&str> = media.iter().map(|m| m.as_str()).collect();
            format!("coming from {}", join(&names, "or"))
        }
        Condition::Session(test) => test.words(),
        Condition::OneOf(field, values) => format!("{} {}", field.name(), join(values, "or")),
        Condition::AgeBetween(min, max) => format!("aged {min}–{max}"),
        Condition::KnownVisitor(true) => "with a customer account".to_owned(),
        Condition::KnownVisitor(false) => "without a customer account".to_owned(),
        Condition::CatalogueProduct(true) => "a product of the shop".to_owned(),
        Condition::CatalogueProduct(false) => "a page without a product".to_owned(),
        Condition::True => "anything".to_owned(),
        Condition::ProductDiffersFrom(_) => "a different product".to_owned(),
        Condition::ProductSameAs(_) => "the same product".to_owned(),
        Condition::ProductNotSeen => "a new product".to_owned(),
        // Composites: `who` words each part, never this condition itself again.
        composite @ (Condition::All(_) | Condition::Any(_) | Condition::Not(_)) => who(composite),
    }
}

/// The products a transition's view must show: "shoes", "a different clothing item".
fn view(c: &Condition) -> String {
    // A table nested in `all` (a `session` table of several tests) reads as its parts.
    fn flatten<'c>(c: &'c Condition, out: &mut Vec<&'c Condition>) {
        match c {
            Condition::All(cs) => cs.iter().for_each(|c| flatten(c, out)),
            other => out.push(other),
        }
    }
    let mut parts = Vec::new();
    flatten(c, &mut parts);
    let mut what: Option<String> = None;
    let mut which: Option<&str> = None;
    let mut extra = Vec::new();
    for part in parts {
        match part {
            Condition::True => {}
            Condition::OneOf(Field::Category, values) => what = Some(join(values, "or")),
            Condition::OneOf(Field::Product, values) => {
                what = Some(format!("the product {}", join(values, "or")));
            }
            Condition::OneOf(Field::Title, values) => {
                let quoted: Vec<String> = values.iter().map(|v| format!("“{v}”")).collect();
                what = Some(join(&quoted, "or"));
            }
            Condition::OneOf(Field::Url, values) => {
                what = Some(format!("the page {}", join(values, "or")));
            }
            Condition::ProductDiffersFrom(_) => which = Some("a different"),
            Condition::ProductSameAs(_) => which = Some("the same"),
            Condition::ProductNotSeen => which = Some("a new"),
            Condition::CatalogueProduct(true) => {
                what.get_or_insert_with(|| "a product".to_owned());
            }
            Condition::CatalogueProduct(false) => extra.push(fact(part)),
            Condition::Any(cs) => {
                what = Some(join(&cs.iter().map(view).collect::<Vec<_>>(), "or"));
            }
            Condition::Not(inner) => extra.push(format!("anything but {}", view(inner))),
            // Flattened above.
            Condition::All(_) => {}
            leaf @ (Condition::Amount(..)
            | Condition::Property(..)
            | Condition::Source(..)
            | Condition::Session(..)
            | Condition::OneOf(Field::Query | Field::Type, _)) => extra.push(fact(leaf)),
            other => extra.push(who(other)),
        }
    }
    let mut out = match (which, what) {
        (Some(which), Some(what)) => format!("{which} {what} item"),
        (Some(which), None) => format!("{which} product"),
        (None, Some(what)) => what,
        (None, None) if extra.is_empty() => "any product".to_owned(),
        (None, None) => String::new(),
    };
    for e in extra {
        if !out.is_empty() {
            out.push(' ');
        }
        let _ = write!(out, "({e})");
    }
    out
}

/// "a, b and c".
fn join<S: AsRef<str>>(items: &[S], last: &str) -> String {
    match items {
        [] => String::new(),
        [one] => one.as_ref().to_owned(),
        [init @ .., tail] => {
            let init: Vec<&str> = init.iter().map(AsRef::as_ref).collect();
            format!("{} {last} {}", init.join(", "), tail.as_ref())
        }
    }
}

/// "30 minutes", "2 hours", "7 days", "90 seconds".
fn duration_words(ms: i64) -> String {
    let plural = |n: i64, unit: &str| {
        if n == 1 {
            format!("1 {unit}")
        } else {
            format!("{n} {unit}s")
        }
    };
    const MINUTE: i64 = 60_000;
    const HOUR: i64 = 60 * MINUTE;
    const DAY: i64 = 24 * HOUR;
    if ms >= DAY && ms % DAY == 0 {
        plural(ms / DAY, "day")
    } else if ms >= HOUR && ms % HOUR == 0 {
        plural(ms / HOUR, "hour")
    } else if ms >= MINUTE && ms % MINUTE == 0 {
        plural(ms / MINUTE, "minute")
    } else {
        plural((ms + 999) / 1000, "second")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pattern::compile_pattern;

    const SEED: &str = include_str!("../../../../patterns/seed-clothes-shoes-clothes.toml");
    const FIVE: &str = include_str!("../../../../patterns/seed-5-step.toml");

    fn profile(gender: Gender, age: u32, device: Device) -> Profile {
        Profile {
            gender,
            age: Some(age),
            device,
        }
    }

    #[test]
    fn interactions_in_a_shoppers_words() {
        let text = "name = \"p\"\nwithin = \"15m\"\ncontiguity = \"relaxed\"\n[offer]\ndefault = \"offer1\"\n\
                    [[step]]\nwhen = { category = \"shoes\" }\n\
                    [[step]]\nwhen = { type = \"add_to_cart\", price = { min = 50 } }\n\
                    [[step]]\nwhen = { type = \"search\", query = \"socks\" }\n\
                    [[step]]\nwhen = { type = \"purchase\", revenue = { max = 100 }, properties = { coupon = true } }\n";
        let p = compile_pattern("p.toml", text).unwrap();
        assert_eq!(
            p.in_plain_words(),
            "Look at shoes, then add a product (price at least 50) to the cart, then search the \
             shop (searching for “socks”), then place an order (revenue at most 100) (coupon), \
             within 15 minutes."
        );
    }

    #[test]
    fn the_seed_in_a_shoppers_words() {
        let p = compile_pattern("seed.toml", SEED).unwrap();
        assert_eq!(
            p.in_plain_words(),
            "For men aged 35–45 and women aged 25–35: look at clothing, then shoes, then a \
             different clothing item, one right after the other, within 30 minutes."
        );
        let text = compile_pattern("five.toml", FIVE).unwrap().in_plain_words();
        for state in compile_pattern("five.toml", FIVE).unwrap().states {
            assert!(
                state == "init" || !text.contains(&state),
                "no state names: {state} in {text}"
            );
        }
    }

    #[test]
    fn steps_and_devices_read_as_words() {
        let p = compile_pattern(
            "p.toml",
            r#"
name = "phones"
contiguity = "relaxed"
within = "2h"
audience = { device = "Mobile" }
offer = { default = "offer1" }
[[step]]
when = { category = "shoes" }
[[step]]
when = { category = ["books", "movies"], product_not_seen = true }
"#,
        )
        .unwrap();
        assert_eq!(
            p.in_plain_words(),
            "For shoppers on a phone: look at shoes, then a new books or movies item, within 2 \
             hours."
        );
    }

    #[test]
    fn audience_membership_from_the_profile() {
        let p = compile_pattern("seed.toml", SEED).unwrap();
        assert_eq!(
            p.admits(&profile(Gender::F, 30, Device::Desktop)),
            Some(true)
        );
        assert_eq!(
            p.admits(&profile(Gender::M, 20, Device::Mobile)),
            Some(false)
        );
        assert_eq!(
            p.admits(&profile(Gender::M, 40, Device::Mobile)),
            Some(true)
        );
        let anyone = compile_pattern(
            "p.toml",
            "name = \"c\"\naudience = { country = \"usa\" }\noffer = { default = \"offer1\" }\n\
             [[step]]\nwhen = { category = \"shoes\" }\n",
        )
        .unwrap();
        assert_eq!(
            anyone.admits(&profile(Gender::F, 30, Device::Desktop)),
            None
        );
        assert_eq!(
            anyone.in_plain_words(),
            "For shoppers in USA: look at shoes, within 7 days."
        );
    }
}
