//! The pattern file format (TOML) and its compilation into a [`Pattern`].
//!
//! See `docs/patterns.md` for the full reference. Two equivalent ways to declare the machine:
//! - `[[step]]`s: a sequence, each with a `when` condition, optional `loop = true` (more such
//!   views keep the step), `repeat = N` and `distinct = true` (N views of products not yet seen);
//!   the last step earns the offer;
//! - `[[transition]]`s: explicit `from` → `to` edges (`init` is the start, `offer` the goal), for
//!   machines with back-edges such as the seed patterns.

use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use super::PatternError;
use super::machine::{
    Condition, Contiguity, Field, INIT, Late, OfferRule, Pattern, StateId, Target, Transition,
};

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
    when: Spanned<toml::Table>,
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
/// Line numbers from byte offsets.
struct Source<'a> {
    file: &'a str,
    text: &'a str,
}

impl Source<'_> {
    fn line(&self, span: Range<usize>) -> usize {
        self.text[..span.start.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    fn error(
        &self,
        span: Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> PatternError {
        PatternError {
            file: self.file.to_owned(),
            line: self.line(span),
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The most states a pattern may have.
const MAX_STATES: usize = 64;

/// Parses and validates a pattern file. `file` names it in errors.
pub fn parse_pattern(file: &str, text: &str) -> Result<Pattern, PatternError> {
    let src = Source { file, text };
    let raw: RawPattern = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(0, |s| src.line(s));
        PatternError {
            file: file.to_owned(),
            line,
            field: String::new(),
            message: e.message().trim().to_owned(),
        }
    })?;
    let name = raw.name.get_ref().clone();
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(src.error(
            raw.name.span(),
            "name",
            "must be non-empty and use only a-z, 0-9, - and _",
        ));
    }
    let duration = |d: &Spanned<String>, field: &str| -> Result<i64, PatternError> {
        let parsed = humantime::parse_duration(d.get_ref()).map_err(|e| {
            src.error(
                d.span(),
                field,
                format!(
                    "{:?} is not a duration like \"30m\" or \"6h\": {e}",
                    d.get_ref()
                ),
            )
        })?;
        if parsed.is_zero() {
            return Err(src.error(d.span(), field, "must be longer than zero"));
        }
        Ok(parsed.as_millis().min(i64::MAX as u128) as i64)
    };
    let within_ms = match raw.within.as_ref() {
        Some(d) => {
            let ms = duration(d, "within")?;
            if ms > MAX_WITHIN_MS {
                return Err(src.error(
                    d.span(),
                    "within",
                    format!(
                        "{:?} is longer than the longest time limit, 7 days (a match is state \
                         kept for the visitor that long)",
                        d.get_ref()
                    ),
                ));
            }
            Some(ms)
        }
        // No time limit given: the longest, so no match is kept for ever.
        None => Some(MAX_WITHIN_MS),
    };
    let late = match &raw.late {
        None => Late::default(),
        Some(value) => {
            let Some((_, late)) = Late::ALL.iter().find(|(n, _)| *n == value.get_ref()) else {
                return Err(src.error(
                    value.span(),
                    "late",
                    format!(
                        "unknown value {:?}; expected \"reset\" (a late view resets the match \
                         and is dropped, as in the original detector) or \"restart\" (a late \
                         view is evaluated from init; the default)",
                        value.get_ref()
                    ),
                ));
            };
            if raw.within.is_none() {
                return Err(src.error(
                    value.span(),
                    "late",
                    "says what a view after the time limit does, but there is no time limit: \
                     add `within` (e.g. \"30m\") or remove `late`",
                ));
            }
            *late
        }
    };
    let frequency_cap_ms = raw
        .frequency_cap
        .as_ref()
        .map(|d| duration(d, "frequency_cap"))
        .transpose()?;

    let (states, edges) = match (raw.step.is_empty(), raw.transition.is_empty()) {
        (false, true) => steps_to_edges(&src, &raw.step)?,
        (true, false) => transitions_to_edges(&src, &raw.transition)?,
        (true, true) => {
            return Err(src.error(
                0..0,
                "step",
                "declare the machine with [[step]] or [[transition]] tables",
            ));
        }
        (false, false) => {
            return Err(src.error(
                raw.transition[0].span(),
                "transition",
                "use either [[step]] or [[transition]], not both",
            ));
        }
    };
    let mut transitions: Vec<Vec<Transition>> = vec![Vec::new(); states.len()];
    for edge in edges {
        let when = match &edge.when {
            Some(table) => {
                compile_condition(&src, table.get_ref(), table.span(), &edge.field, &states)?
            }
            None => Condition::True,
        };
        let when = match edge.extra {
            Some(extra) => and(when, extra),
            None => when,
        };
        transitions[edge.from as usize].push(Transition { when, to: edge.to });
    }
    if transitions[INIT as usize].is_empty() {
        return Err(src.error(0..0, "transition", "no transition leaves `init`"));
    }
    if !transitions.iter().flatten().any(|t| t.to == Target::Offer) {
        return Err(src.error(0..0, "transition", "no transition reaches `offer`"));
    }
    let table = |t: &Option<Spanned<toml::Table>>,
                 field: &str|
     -> Result<Option<Condition>, PatternError> {
        t.as_ref()
            .map(|t| compile_condition(&src, t.get_ref(), t.span(), field, &states))
            .transpose()
    };
    let audience = table(&raw.audience, "audience")?.unwrap_or(Condition::True);
    let abort_if = table(&raw.abort_if, "abort_if")?;
    let mut rules = Vec::new();
    for (i, rule) in raw.offer.get_ref().rules.iter().enumerate() {
        let field = format!("offer.rules[{i}].when");
        rules.push((
            compile_condition(&src, &rule.when, raw.offer.span(), &field, &states)?,
            rule.offer.clone(),
        ));
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
        states,
        transitions,
        offer: OfferRule {
            rules,
            default: raw.offer.get_ref().default.clone(),
        },
        frequency_cap_ms,
    })
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
}

fn transitions_to_edges<'a>(
    src: &Source<'_>,
    raw: &'a [Spanned<RawTransition>],
) -> Result<(Vec<String>, Vec<Edge<'a>>), PatternError> {
    let mut states = vec!["init".to_owned()];
    for t in raw {
        let to = t.get_ref().to.get_ref();
        if to != "offer" && !states.contains(to) {
            check_state_name(src, &t.get_ref().to, "transition.to")?;
            states.push(to.clone());
        }
    }
    if states.len() > MAX_STATES {
        return Err(src.error(
            raw[0].span(),
            "transition",
            format!("more than {MAX_STATES} states"),
        ));
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
            return Err(src.error(
                t.from.span(),
                format!("transition[{i}].from"),
                format!("unknown state {from:?}: {hint}"),
            ));
        };
        let to =
            match t.to.get_ref().as_str() {
                "offer" => Target::Offer,
                "init" => return Err(src.error(
                    t.to.span(),
                    format!("transition[{i}].to"),
                    "a transition cannot lead to `init`; views that fit nothing reset the match",
                )),
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
        });
    }
    Ok((states, edges))
}

fn check_state_name(
    src: &Source<'_>,
    name: &Spanned<String>,
    field: &str,
) -> Result<(), PatternError> {
    let n = name.get_ref();
    if n.is_empty()
        || n == "init"
        || n == "offer"
        || !n
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(src.error(
            name.span(),
            field,
            format!("{n:?} is not a usable state name (a-z, 0-9, _ and -; not init/offer)"),
        ));
    }
    Ok(())
}

fn steps_to_edges<'a>(
    src: &Source<'_>,
    raw: &'a [Spanned<RawStep>],
) -> Result<(Vec<String>, Vec<Edge<'a>>), PatternError> {
    // Each step becomes `repeat` states; its name refers to the first of them.
    let mut states = vec!["init".to_owned()];
    let mut step_states: Vec<Vec<StateId>> = Vec::new();
    for (i, step) in raw.iter().enumerate() {
        let s = step.get_ref();
        let field = format!("step[{i}]");
        if s.repeat == 0 {
            return Err(src.error(step.span(), format!("{field}.repeat"), "must be at least 1"));
        }
        let last = i + 1 == raw.len();
        if last && s.loops {
            return Err(src.error(
                step.span(),
                format!("{field}.loop"),
                "the last step earns the offer, so it cannot loop",
            ));
        }
        let base = s.name.clone().unwrap_or_else(|| format!("step{}", i + 1));
        if states.contains(&base) || base == "init" || base == "offer" {
            return Err(src.error(
                step.span(),
                format!("{field}.name"),
                format!("{base:?} is used twice or reserved"),
            ));
        }
        let count = if last { s.repeat - 1 } else { s.repeat };
        // Checked before the states are made: `repeat = 4000000000` must not allocate them.
        if states.len() + count as usize > MAX_STATES {
            return Err(src.error(step.span(), field, format!("more than {MAX_STATES} states")));
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
                when: Some(&s.when),
                extra: (s.distinct && (r > 0 || previous != INIT))
                    .then_some(Condition::ProductNotSeen),
                field: format!("step[{i}].when"),
            });
        }
        if let Some(Target::State(last)) = targets.last() {
            if s.loops {
                edges.push(Edge {
                    from: *last,
                    to: Target::State(*last),
                    when: Some(&s.when),
                    extra: None,
                    field: format!("step[{i}].when"),
                });
            }
            previous = *last;
        }
    }
    Ok((states, edges))
}

/// Compiles a condition table. Keys combine with AND.
fn compile_condition(
    src: &Source<'_>,
    table: &toml::Table,
    span: Range<usize>,
    field: &str,
    states: &[String],
) -> Result<Condition, PatternError> {
    let mut all = Vec::new();
    for (key, value) in table {
        let path = format!("{field}.{key}");
        let err = |message: String| src.error(span.clone(), path.clone(), message);
        let nested = |v: &toml::Value, path: &str| -> Result<Condition, PatternError> {
            match v {
                toml::Value::Table(t) => compile_condition(src, t, span.clone(), path, states),
                _ => Err(src.error(span.clone(), path, "expected a table of conditions")),
            }
        };
        let condition = match key.as_str() {
            "all" | "any" => {
                let toml::Value::Array(items) = value else {
                    return Err(err("expected an array of condition tables".to_owned()));
                };
                let cs = items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| nested(v, &format!("{path}[{i}]")))
                    .collect::<Result<Vec<_>, _>>()?;
                if key == "all" {
                    Condition::All(cs)
                } else {
                    Condition::Any(cs)
                }
            }
            "not" => Condition::Not(Box::new(nested(value, &path)?)),
            "age" => match value {
                toml::Value::Integer(n) => {
                    let n =
                        u32::try_from(*n).map_err(|_| err("age must be 0 or more".to_owned()))?;
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
            other => {
                let Some((_, f)) = Field::ALL.iter().find(|(n, _)| *n == other) else {
                    let mut known: Vec<&str> = Field::ALL.iter().map(|(n, _)| *n).collect();
                    known.extend([
                        "age",
                        "known_visitor",
                        "product_not_seen",
                        "product_differs_from",
                        "product_same_as",
                        "all",
                        "any",
                        "not",
                    ]);
                    return Err(err(format!(
                        "unknown field {other:?}; expected one of {}",
                        known.join(", ")
                    )));
                };
                let values = match value {
                    toml::Value::String(s) => vec![s.clone()],
                    toml::Value::Array(items) if !items.is_empty() => items
                        .iter()
                        .map(|v| {
                            v.as_str()
                                .map(str::to_owned)
                                .ok_or_else(|| err("expected strings".to_owned()))
                        })
                        .collect::<Result<_, _>>()?,
                    _ => {
                        return Err(err(
                            "expected a string or a non-empty array of strings".to_owned()
                        ));
                    }
                };
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
        all.push(condition);
    }
    Ok(match all.len() {
        0 => Condition::True,
        1 => all.pop().expect("one condition"),
        _ => Condition::All(all),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = include_str!("../../../../patterns/seed-clothes-shoes-clothes.toml");

    fn error(text: &str) -> String {
        parse_pattern("p.toml", text).unwrap_err().to_string()
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
            e.starts_with(&format!("p.toml:{}: ", line_of(&bad, "late"))),
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
}
