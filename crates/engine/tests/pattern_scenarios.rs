//! Golden scenarios for the behaviour patterns: one test per folder of `tests/scenarios/`.
//!
//! Each folder holds `views.txt` (who the visitors are and what they view) and `expected.txt`
//! (every state transition the patterns make, in order, with the offers). Views go through the
//! real enrichment (so ages come from birth dates at the event's UTC date) and the real
//! detection operator.
//!
//! `views.txt`:
//! ```text
//! patterns seed-clothes-shoes-clothes        # files of patterns/ (or a pattern.toml here)
//! start 2012-03-10T00:00:00Z                 # time origin of the +seconds below
//! visitor ann F 1982-03-10                   # id, gender, birth date (or -); no line = unknown
//! +0 ann C1 clothing                         # +seconds, visitor, product, category
//! +5 ann C1 clothing add_to_cart price=20     # an event of another type, with its fields:
//!                                             # price=, quantity=, revenue=, query=, prop.KEY=
//! ```
//! `expected.txt`: `+seconds visitor pattern from -> to cause [offer]`, one per transition.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, NaiveDate};
use clickpulse_engine::Enricher;
use clickpulse_engine::click::{Click, Gender};
use clickpulse_engine::event::{EventDetail, EventProduct, EventType, LineItem, Order, PropValue};
use clickpulse_engine::lookups::{Lookups, Product, User};
use clickpulse_engine::pattern::{DetectOperator, PatternRegistry, PatternSet, TransitionLog};

/// A catalogue entry titled with its id.
fn product(id: &str, category: &str) -> Product {
    Product {
        id: id.into(),
        category: Arc::from(category),
        title: Arc::from(id),
        description: String::new(),
        image: None,
        price: None,
    }
}

/// An event's detail from `price=20 quantity=2 revenue=50 query=red prop.plan=gold`: its
/// product is the line's product; an order (for `revenue=`) has one line of it.
fn event_detail(product: &str, fields: &[&str]) -> EventDetail {
    let mut detail = EventDetail {
        product: Some(EventProduct {
            id: Some(product.to_owned()),
            ..EventProduct::default()
        }),
        ..EventDetail::default()
    };
    for field in fields {
        let (key, value) = field.split_once('=').expect("key=value");
        let item = detail.product.as_mut().unwrap();
        match key {
            "price" => item.price = Some(value.parse().unwrap()),
            "quantity" => item.quantity = Some(value.parse().unwrap()),
            "revenue" => {
                detail.order = Some(Order {
                    id: format!("order-{product}"),
                    revenue: value.parse().unwrap(),
                    currency: None,
                    items: vec![LineItem {
                        product_id: product.to_owned(),
                        category: None,
                        price: None,
                        quantity: 1,
                    }],
                });
            }
            "query" => detail.query = Some(value.replace('+', " ")),
            prop => {
                let name = prop
                    .strip_prefix("prop.")
                    .expect("price, quantity, revenue, query or prop.KEY");
                let value = match value.parse::<f64>() {
                    Ok(n) => PropValue::Number(n),
                    Err(_) => match value {
                        "true" | "false" => PropValue::Bool(value == "true"),
                        text => PropValue::Text(text.to_owned()),
                    },
                };
                detail.properties.insert(name.to_owned(), value);
            }
        }
    }
    detail
}

fn repo_patterns() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../patterns")
}

fn run_scenario(name: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/scenarios")
        .join(name);
    let views = std::fs::read_to_string(dir.join("views.txt")).expect("views.txt");
    let expected = std::fs::read_to_string(dir.join("expected.txt")).expect("expected.txt");

    let mut start_ms = 0;
    let mut pattern_files = Vec::new();
    let mut users = Vec::new();
    let mut products = Vec::new();
    let mut clicks = Vec::new();
    for line in views.lines() {
        let line = line.split('#').next().unwrap().trim();
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            [] => {}
            ["patterns", names @ ..] => pattern_files.extend(
                names
                    .iter()
                    .map(|n| repo_patterns().join(format!("{n}.toml"))),
            ),
            ["start", t] => start_ms = DateTime::parse_from_rfc3339(t).unwrap().timestamp_millis(),
            ["visitor", id, gender, birth] => users.push((
                id.to_string(),
                User {
                    gender: gender.parse::<Gender>().unwrap(),
                    birth_date: (*birth != "-")
                        .then(|| NaiveDate::parse_from_str(birth, "%Y-%m-%d").unwrap()),
                },
            )),
            [t, visitor, product, category, rest @ ..] if t.starts_with('+') => {
                let secs: i64 = t[1..].parse().unwrap();
                products.push(Product {
                    id: (*product).into(),
                    category: Arc::from(*category),
                    title: Arc::from(*product),
                    description: String::new(),
                    image: None,
                    price: None,
                });
                let url = format!("http://www.acme.com/SH55126545/{product}");
                let mut click = Click::new(start_ms + secs * 1000, *visitor, url);
                if let Some((event, fields)) = rest.split_first() {
                    click.event = EventType::parse(event).unwrap();
                    click.detail = Some(Box::new(event_detail(product, fields)));
                }
                click.validate().unwrap();
                clicks.push(click);
            }
            other => panic!("{name}/views.txt: cannot read {other:?}"),
        }
    }
    if dir.join("pattern.toml").exists() {
        pattern_files.push(dir.join("pattern.toml"));
    }
    let texts: Vec<(String, String)> = pattern_files
        .iter()
        .map(|p| (p.display().to_string(), std::fs::read_to_string(p).unwrap()))
        .collect();
    let set = PatternSet::parse(texts.iter().map(|(f, t)| (f.as_str(), t.as_str()))).unwrap();
    let lookups = Lookups::from_parts(users, products);
    let log = Arc::new(Mutex::new(TransitionLog::new(100_000, 100_000, 100_000)));
    let mut detector = DetectOperator::new(PatternRegistry::new(set)).with_log(log.clone());
    let mut enricher = Enricher::new();
    for click in clicks {
        let enriched = enricher.enrich(click, &lookups);
        detector.detect(&enriched);
    }
    let mut actual = String::new();
    let mut records = log.lock().unwrap().recent(None, usize::MAX);
    records.reverse();
    for r in records {
        let cause = serde_json::to_value(r.cause).unwrap();
        write!(
            actual,
            "+{} {} {} {} -> {} {}",
            (r.ts_ms - start_ms) / 1000,
            r.visitor,
            r.pattern,
            r.from,
            r.to,
            cause.as_str().unwrap()
        )
        .unwrap();
        if let Some(offer) = r.offer {
            write!(actual, " {offer}").unwrap();
        }
        actual.push('\n');
    }
    let expected: String = expected
        .lines()
        .map(|l| l.split('#').next().unwrap().trim())
        .filter(|l| !l.is_empty())
        .map(|l| format!("{}\n", l.split_whitespace().collect::<Vec<_>>().join(" ")))
        .collect();
    assert_eq!(
        actual, expected,
        "scenario {name}: transitions differ (left: actual, right: expected.txt)"
    );
}

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run_scenario(stringify!($name));
            }
        )*

        #[test]
        fn every_scenario_folder_has_a_test() {
            let listed = [$(stringify!($name)),*];
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
            for entry in std::fs::read_dir(dir).unwrap() {
                let name = entry.unwrap().file_name().into_string().unwrap();
                assert!(listed.contains(&name.as_str()), "scenario folder {name} has no test in scenarios!()");
            }
        }
    };
}

scenarios!(
    three_step_every_row,
    three_step_male_gets_offer1,
    three_step_back_to_first_clothing,
    refresh_is_ignored,
    unrelated_view_resets,
    thirty_minute_edge,
    age_edges_on_birthdays,
    unknown_visitors_never_match,
    offer_can_be_earned_again,
    five_step_every_row,
    five_step_shoes_must_be_new,
    five_step_reset_view_starts_nothing,
    steps_with_repeat_distinct_and_abort,
    relaxed_contiguity_and_frequency_cap,
    one_step_frequency_cap,
    three_step_late_view_starts_nothing,
    three_step_late_refresh_is_ignored,
    five_step_late_view_starts_nothing,
    five_step_late_refresh_is_ignored,
    late_restart_three_step,
    late_restart_five_step,
    interactions_leave_page_view_patterns_as_they_are,
    typed_steps_see_their_events,
    cart_abandonment_fires_at_the_deadline,
);

/// Under `late = "reset"` an expired match still decides the visitor's next view (it is dropped),
/// so the sweep must not forget it: with a sweep between the match and a view three hours later,
/// that view still starts nothing, and the 3-step seed emits no offer, as when nothing is swept.
#[test]
fn the_sweep_keeps_an_expired_match_that_decides_the_next_view() {
    use clickpulse_engine::operator::{Emitter, PartitionTimes};
    let file = repo_patterns().join("seed-clothes-shoes-clothes.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    let set = PatternSet::parse([("seed-clothes-shoes-clothes.toml", text.as_str())]).unwrap();
    let lookups = Lookups::from_parts(
        vec![(
            "ann".to_owned(),
            User {
                gender: Gender::F,
                birth_date: NaiveDate::from_ymd_opt(1983, 1, 1),
            },
        )],
        vec![
            product("A", "clothing"),
            product("B", "clothing"),
            product("C", "clothing"),
            product("S", "shoes"),
        ],
    );
    let t0 = 1_331_000_000_000_i64;
    let view = |ts: i64, visitor: &str, id: &str| {
        let click = Click::new(ts, visitor, format!("http://www.acme.com/SH55126545/{id}"));
        clickpulse_engine::codec::encode(&Enricher::new().enrich(click, &lookups))
    };
    // Ann: A, S, then (three hours later) B, S, C. B is late: the match is reset and B dropped,
    // S starts nothing and C only starts a match. Had the sweep dropped the match, B would start
    // one and C earn an offer.
    let later = 3 * 3_600;
    let ann = [
        (0, "A"),
        (100, "S"),
        (later, "B"),
        (later + 50, "S"),
        (later + 100, "C"),
    ];
    let run = |sweep: bool| -> (Vec<String>, Vec<(String, String, String)>) {
        let log = Arc::new(Mutex::new(TransitionLog::new(100_000, 100_000, 100_000)));
        let mut detector =
            DetectOperator::new(PatternRegistry::new(set.clone())).with_log(log.clone());
        let mut out = Emitter::default();
        // The runner's watermark over the input partitions.
        let mut times = PartitionTimes::default();
        let mut offers = Vec::new();
        for (i, (s, id)) in ann.iter().enumerate() {
            feed(
                &mut detector,
                &mut times,
                0,
                &view(t0 + s * 1000, "ann", id),
                &mut out,
            );
            if sweep && i == 1 {
                // Others' views two hours on: enough of them to sweep, with the watermark far
                // past Ann's expiry plus the sweep's grace.
                for n in 0..20_000 {
                    let v = view(t0 + (later - 60) * 1000, &format!("v{n}"), "A");
                    feed(&mut detector, &mut times, 0, &v, &mut out);
                }
                assert_eq!(detector.active_visitors(), 1, "Ann's expired match is kept");
            }
            offers.extend(out.drain().map(|o| {
                clickpulse_engine::codec::decode::<clickpulse_engine::pattern::Offer>(&o.value)
                    .unwrap()
                    .offer_id
            }));
        }
        let mut steps: Vec<_> = log
            .lock()
            .unwrap()
            .recent(Some("ann"), usize::MAX)
            .into_iter()
            .map(|r| {
                let cause = serde_json::to_value(r.cause).unwrap();
                (r.from, r.to, cause.as_str().unwrap().to_owned())
            })
            .collect();
        steps.reverse();
        (offers, steps)
    };
    let (offers, steps) = run(false);
    assert!(offers.is_empty());
    let step =
        |from: &str, to: &str, cause: &str| (from.to_owned(), to.to_owned(), cause.to_owned());
    assert_eq!(
        steps,
        [
            step("init", "clothes_visited", "transition"),
            step("clothes_visited", "shoes_visited", "transition"),
            step("shoes_visited", "init", "expired"),
            step("init", "clothes_visited", "transition"),
        ]
    );
    assert_eq!(run(true), (offers, steps));
}

/// A partition running hours ahead of another must not let the sweep drop a match that the
/// slower partition's visitor is still in: the offer (and its id, which names the match's
/// start) is the same as when the partitions are read in step.
#[test]
fn a_partition_running_ahead_does_not_sweep_another_partitions_live_match() {
    use clickpulse_engine::operator::{Emitter, PartitionTimes};
    let pattern = r#"
name = "clothes-then-shoes"
within = "30m"
contiguity = "relaxed"
[offer]
default = "offer1"
[[step]]
when = { category = "clothing" }
[[step]]
when = { category = "shoes" }
"#;
    let set = PatternSet::parse([("p.toml", pattern)]).unwrap();
    let lookups = Lookups::from_parts(
        Vec::new(),
        vec![product("C1", "clothing"), product("S1", "shoes")],
    );
    let t0 = 1_331_000_000_000_i64;
    let min = 60_000;
    let view = |ts: i64, visitor: &str, id: &str| {
        let click = Click::new(ts, visitor, format!("http://www.acme.com/SH55126545/{id}"));
        clickpulse_engine::codec::encode(&Enricher::new().enrich(click, &lookups))
    };
    // Ann (partition 0): clothing at 0, 26 and 38 minutes (the first match expires at 30), shoes
    // at 45: the offer's match started at 38.
    let ann = [(0, "C1"), (26, "C1"), (38, "C1"), (45, "S1")];
    let run = |ahead: bool| -> Vec<String> {
        let mut detector = DetectOperator::new(PatternRegistry::new(set.clone()));
        let mut out = Emitter::default();
        // The runner's watermark over the input partitions.
        let mut times = PartitionTimes::default();
        let mut offers = Vec::new();
        for (i, (m, id)) in ann.iter().enumerate() {
            feed(
                &mut detector,
                &mut times,
                0,
                &view(t0 + m * min, "ann", id),
                &mut out,
            );
            if ahead && i == 0 {
                // Partition 1 races three hours ahead: enough views to trigger a sweep.
                for n in 0..20_000 {
                    let v = view(t0 + 180 * min, &format!("v{n}"), "C1");
                    feed(&mut detector, &mut times, 1, &v, &mut out);
                }
            }
            offers.extend(out.drain().map(|o| {
                clickpulse_engine::codec::decode::<clickpulse_engine::pattern::Offer>(&o.value)
                    .unwrap()
                    .offer_id
            }));
        }
        offers
    };
    let in_step = run(false);
    assert_eq!(in_step.len(), 1);
    assert_eq!(run(true), in_step);
}

/// Patterns with the same audience share one evaluation of it per view, and it changes nothing:
/// with the two seed patterns and one whose audience differs, each pattern's offers, audience
/// and transitions are those it makes when it runs alone.
#[test]
fn patterns_sharing_an_audience_detect_as_each_would_alone() {
    let seeds: Vec<(String, String)> = ["seed-5-step", "seed-clothes-shoes-clothes"]
        .iter()
        .map(|name| {
            let file = repo_patterns().join(format!("{name}.toml"));
            (name.to_string(), std::fs::read_to_string(file).unwrap())
        })
        .collect();
    // The 3-step seed for women of 25–35 only.
    let women = seeds[1]
        .1
        .replace(
            "name = \"seed-clothes-shoes-clothes\"",
            "name = \"women-clothes-shoes-clothes\"",
        )
        .replace("  { gender = \"M\", age = { min = 35, max = 45 } },\n", "");
    assert_ne!(women, seeds[1].1);
    let mut files = seeds.clone();
    files.push(("women".to_owned(), women));
    let set = |files: &[(String, String)]| {
        PatternSet::parse(files.iter().map(|(f, t)| (f.as_str(), t.as_str()))).unwrap()
    };
    let all = set(&files);
    let names: Vec<String> = all.patterns().iter().map(|p| p.name.clone()).collect();
    assert_eq!(
        names,
        [
            "seed-5-step",
            "seed-clothes-shoes-clothes",
            "women-clothes-shoes-clothes"
        ]
    );
    assert_eq!(
        (0..3).map(|i| all.audience_of(i)).collect::<Vec<_>>(),
        [0, 0, 2]
    );

    // Visitors of both genders and several ages browsing clothing and shoes.
    let user = |id: &str, gender: Gender, year: i32| {
        (
            id.to_owned(),
            User {
                gender,
                birth_date: NaiveDate::from_ymd_opt(year, 1, 1),
            },
        )
    };
    let lookups = Lookups::from_parts(
        vec![
            user("ann", Gender::F, 1982),
            user("bob", Gender::M, 1972),
            user("cid", Gender::M, 1990),
            user("dee", Gender::F, 1960),
        ],
        ["C1", "C2", "C3"]
            .iter()
            .map(|id| product(id, "clothing"))
            .chain(["S1", "S2", "S3"].iter().map(|id| product(id, "shoes")))
            .collect::<Vec<_>>(),
    );
    let mut enricher = Enricher::new();
    let t0 = 1_331_000_000_000_i64;
    let browse = ["C1", "S1", "C2", "S2", "S3", "C3", "S1", "C1", "S2", "C2"];
    let mut views = Vec::new();
    for (n, visitor) in ["ann", "bob", "cid", "dee", "eve"].iter().enumerate() {
        for (k, id) in browse.iter().cycle().skip(n).take(12).enumerate() {
            let ts = t0 + (k as i64 * 5 + n as i64) * 60_000;
            let click = Click::new(ts, *visitor, format!("http://www.acme.com/SH55126545/{id}"));
            views.push(enricher.enrich(click, &lookups));
        }
    }
    views.sort_by_key(|v| v.ts_ms);
    let run = |set: PatternSet| {
        let log = Arc::new(Mutex::new(TransitionLog::new(100_000, 100_000, 100_000)));
        let mut detector = DetectOperator::new(PatternRegistry::new(set))
            .with_audience_tracking()
            .with_log(log.clone());
        let offers: Vec<_> = views.iter().flat_map(|v| detector.detect(v)).collect();
        let steps = log.lock().unwrap().recent(None, usize::MAX);
        (offers, detector.audience_counts(), steps)
    };
    let (offers, audience, steps) = run(all);
    assert!(!offers.is_empty(), "the scenario earns offers");
    for (i, name) in names.iter().enumerate() {
        let (alone_offers, alone_audience, alone_steps) = run(set(&files[i..=i]));
        let offers: Vec<_> = offers.iter().filter(|o| o.pattern == *name).collect();
        assert_eq!(offers, alone_offers.iter().collect::<Vec<_>>(), "{name}");
        assert_eq!(audience.get(name), alone_audience.get(name), "{name}");
        let steps: Vec<_> = steps.iter().filter(|s| s.pattern == *name).collect();
        assert_eq!(steps, alone_steps.iter().collect::<Vec<_>>(), "{name}");
    }
}

/// An expired match of a `late = "reset"` pattern decides the visitor's next view, so it is
/// kept past its time limit — for a week, not for ever: a visitor who never comes back costs
/// state for a bounded time, and the next view and the sweep agree on when it is forgotten.
#[test]
fn an_expired_reset_match_is_remembered_for_a_week_then_forgotten() {
    use clickpulse_engine::pattern::machine::RESET_MEMORY_MS;
    let file = repo_patterns().join("seed-clothes-shoes-clothes.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    let set = PatternSet::parse([("seed-clothes-shoes-clothes.toml", text.as_str())]).unwrap();
    let pattern = &set.patterns()[0];
    let lookups = Lookups::from_parts(
        vec![(
            "ann".to_owned(),
            User {
                gender: Gender::F,
                birth_date: NaiveDate::from_ymd_opt(1983, 1, 1),
            },
        )],
        vec![
            product("A", "clothing"),
            product("B", "clothing"),
            product("S", "shoes"),
        ],
    );
    let view = |ts: i64, id: &str| {
        let click = Click::new(ts, "ann", format!("http://www.acme.com/SH55126545/{id}"));
        Enricher::new().enrich(click, &lookups)
    };
    let t0 = 1_331_000_000_000_i64;
    let limit = t0 + 30 * 60_000;
    let mut m = None;
    pattern.advance(&mut m, &view(t0, "A"));
    pattern.advance(&mut m, &view(t0 + 100_000, "S"));
    assert!(m.is_some());
    // Six days past the limit: remembered (the sweep only trims it), and a view is dropped.
    let mut swept = m.clone();
    pattern.forget_expired(&mut swept, limit + 6 * 86_400_000);
    assert!(swept.is_some());
    let mut next = m.clone();
    pattern.advance(&mut next, &view(limit + 6 * 86_400_000, "B"));
    assert!(next.is_none(), "reset, and the view dropped");
    // A week past it: forgotten by the sweep, and the next view starts afresh.
    let after = limit + RESET_MEMORY_MS;
    let mut swept = m.clone();
    pattern.forget_expired(&mut swept, after);
    assert!(swept.is_none());
    pattern.advance(&mut m, &view(after, "B"));
    assert_eq!(m.map(|m| m.started_ms), Some(after), "B starts a match");
}

/// Hands `value` of input `partition` to `detector`, as a runner keeping `times` does.
fn feed(
    detector: &mut DetectOperator,
    times: &mut clickpulse_engine::operator::PartitionTimes,
    partition: u32,
    value: &[u8],
    out: &mut clickpulse_engine::operator::Emitter,
) {
    use clickpulse_engine::operator::{Context, Operator};
    let mut ctx = Context::new(
        clickpulse_engine::topics::Topic::EnrichedClickData,
        partition,
        0,
        std::time::Instant::now(),
        out,
        times,
    );
    detector.process_record(value, &mut ctx).unwrap();
}
