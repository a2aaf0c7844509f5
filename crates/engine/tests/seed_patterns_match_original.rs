//! Property: the shipped seed patterns (`patterns/*.toml`, read from the repository) emit exactly
//! the offers of the original detector (`behaviour_detector.py` of quixio/template-clickstream):
//! same visitor, same time, same offer, in the same order.
//!
//! The original is re-implemented here as a plain per-row loop over its transition tables; it
//! does not use the matcher. Its rules, in the order it applies them to a visitor's row:
//! 1. a row of the same product as the last recorded row is a page refresh: skipped (whatever
//!    its time);
//! 2. the first transition of the current state whose condition holds *and* whose row comes less
//!    than 30 minutes after the first recorded row is taken, and the row recorded;
//! 3. no transition taken: back to `init`, the recorded rows cleared (the row is dropped);
//! 4. `offer` reached: the offer (`offer1` for men, else `offer2`) is emitted, back to `init`.
//!
//! The random clicks are crowded where the two rule sets could differ: refreshes, and views at
//! 30 minutes (exactly, ±1 ms, ±1 s, ±1 min) after a match's first view or after one of the
//! visitor's recent views, with several visitors in and out of the audience.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use clickpulse_engine::click::{Device, EnrichedClick, Gender};
use clickpulse_engine::pattern::{DetectOperator, PatternRegistry, PatternSet};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

const WINDOW_MS: i64 = 30 * 60 * 1000;
const T0: i64 = 1_331_337_600_000; // 2012-03-10T00:00:00Z

/// The seed patterns and the original's table for each.
const SEEDS: [(&str, Table); 2] = [
    ("seed-clothes-shoes-clothes", Table::ThreeStep),
    ("seed-5-step", Table::FiveStep),
];

/// Products and their categories.
const PRODUCTS: [(&str, &str); 7] = [
    ("C1", "clothing"),
    ("C2", "clothing"),
    ("C3", "clothing"),
    ("S1", "shoes"),
    ("S2", "shoes"),
    ("S3", "shoes"),
    ("H1", "handbags"),
];

/// Demographics at the audience's edges (men 35–45, women 25–35), and unknown ones.
const PEOPLE: [(Gender, Option<u32>); 14] = [
    (Gender::F, Some(29)),
    (Gender::F, Some(25)),
    (Gender::F, Some(35)),
    (Gender::F, Some(24)),
    (Gender::F, Some(36)),
    (Gender::M, Some(40)),
    (Gender::M, Some(35)),
    (Gender::M, Some(45)),
    (Gender::M, Some(34)),
    (Gender::M, Some(46)),
    (Gender::U, Some(30)),
    (Gender::U, None),
    (Gender::F, None),
    (Gender::M, None),
];

// ---------------------------------------------------------------- the original, re-implemented

/// One row as the original sees it.
#[derive(Debug, Clone)]
struct Row {
    ts_ms: i64,
    product: &'static str,
    category: &'static str,
    gender: Gender,
    age: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    /// `behaviour_detector.py`'s table.
    ThreeStep,
    /// The 5-step table (clothes → shoes → other clothes → new shoes → new shoes, with the
    /// 3-step's back edge to the first clothing), in the original's style.
    FiveStep,
}

/// The original's audience: `(M and 35 <= age <= 45) or (F and 25 <= age <= 35)`; an unknown
/// age compares false (NaN in pandas).
fn audience(row: &Row) -> bool {
    match (row.gender, row.age) {
        (Gender::M, Some(age)) => (35..=45).contains(&age),
        (Gender::F, Some(age)) => (25..=35).contains(&age),
        _ => false,
    }
}

/// The transitions of `state` as `(condition, next state)`, in the original's order.
type Condition = fn(&Row, &[Row]) -> bool;

fn transitions(table: Table, state: &str) -> Vec<(Condition, &'static str)> {
    fn clothing(row: &Row) -> bool {
        row.category == "clothing"
    }
    fn shoes(row: &Row) -> bool {
        row.category == "shoes"
    }
    fn unseen(row: &Row, rows: &[Row]) -> bool {
        rows.iter().all(|r| r.product != row.product)
    }
    match (table, state) {
        (_, "init") => vec![(|row, _| clothing(row) && audience(row), "clothes_visited")],
        (_, "clothes_visited") => vec![
            (|row, _| shoes(row), "shoes_visited"),
            (|row, _| clothing(row), "clothes_visited"),
        ],
        (Table::ThreeStep, "shoes_visited") => vec![
            (
                |row, rows| clothing(row) && row.product != rows[0].product,
                "offer",
            ),
            (
                |row, rows| clothing(row) && row.product == rows[0].product,
                "clothes_visited",
            ),
        ],
        (Table::FiveStep, "shoes_visited") => vec![
            (
                |row, rows| clothing(row) && row.product != rows[0].product,
                "clothes_visited_2",
            ),
            (
                |row, rows| clothing(row) && row.product == rows[0].product,
                "clothes_visited",
            ),
        ],
        (Table::FiveStep, "clothes_visited_2") => vec![(
            |row, rows| shoes(row) && unseen(row, rows),
            "shoes_visited_2",
        )],
        (Table::FiveStep, "shoes_visited_2") => {
            vec![(|row, rows| shoes(row) && unseen(row, rows), "offer")]
        }
        (table, state) => panic!("{table:?} has no state {state}"),
    }
}

/// `check_time_elapsed`: less than 30 minutes after the first recorded row (or nothing recorded).
fn time_valid(row: &Row, rows: &[Row]) -> bool {
    rows.first()
        .is_none_or(|first| row.ts_ms - first.ts_ms < WINDOW_MS)
}

/// One visitor's state in the original.
#[derive(Debug, Clone)]
struct Original {
    state: &'static str,
    rows: Vec<Row>,
}

impl Default for Original {
    fn default() -> Self {
        Original {
            state: "init",
            rows: Vec::new(),
        }
    }
}

/// What happened to a row in the original, for the coverage counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Refresh,
    Transition,
    Reset,
    Offer(&'static str),
}

impl Original {
    /// The original's loop body for one row.
    fn process(&mut self, table: Table, row: &Row) -> Fate {
        let offer = if row.gender == Gender::M {
            "offer1"
        } else {
            "offer2"
        };
        if self.rows.last().is_some_and(|r| r.product == row.product) {
            return Fate::Refresh;
        }
        let mut transitioned = false;
        for (condition, next) in transitions(table, self.state) {
            if condition(row, &self.rows) && time_valid(row, &self.rows) {
                self.state = next;
                self.rows.push(row.clone());
                transitioned = true;
                break;
            }
        }
        if !transitioned {
            self.state = "init";
            self.rows.clear();
            Fate::Reset
        } else if self.state == "offer" {
            self.state = "init";
            self.rows.clear();
            Fate::Offer(offer)
        } else {
            Fate::Transition
        }
    }
}

// ---------------------------------------------------------------- random click sequences

/// When a view comes.
#[derive(Debug, Clone)]
enum When {
    /// Seconds after the visitor's previous view.
    Gap(i64),
    /// 30 minutes after an anchor, shifted by `offset_ms`.
    Edge { anchor: Anchor, offset_ms: i64 },
}

#[derive(Debug, Clone, Copy)]
enum Anchor {
    /// The first recorded view of the visitor's live match in the original with the table of
    /// `SEEDS[k]` (else their last view).
    MatchStart(usize),
    /// The visitor's `n`-th most recent view (1 = the last).
    Recent(usize),
}

/// What a view shows.
#[derive(Debug, Clone, Copy)]
enum What {
    /// The last recorded product of the visitor's live match in the original with the table of
    /// `SEEDS[k]` (else the last product they viewed).
    Refresh(usize),
    /// `PRODUCTS[i]`.
    Product(usize),
}

fn when() -> impl Strategy<Value = When> {
    let edge = (
        prop_oneof![
            3 => (0..SEEDS.len()).prop_map(Anchor::MatchStart),
            1 => (1usize..=4).prop_map(Anchor::Recent),
        ],
        prop_oneof![
            Just(0i64),
            Just(-1),
            Just(1),
            Just(-1000),
            Just(1000),
            Just(-60_000),
            Just(60_000),
        ],
    )
        .prop_map(|(anchor, offset_ms)| When::Edge { anchor, offset_ms });
    prop_oneof![
        6 => (0i64..=120).prop_map(When::Gap),
        1 => (600i64..=7200).prop_map(When::Gap),
        3 => edge,
    ]
}

fn what() -> impl Strategy<Value = What> {
    prop_oneof![
        2 => (0..SEEDS.len()).prop_map(What::Refresh),
        3 => (0..PRODUCTS.len()).prop_map(What::Product),
    ]
}

/// Per visitor: who they are and their views.
fn visitors() -> impl Strategy<Value = Vec<(usize, Vec<(When, What)>)>> {
    prop::collection::vec(
        (
            0..PEOPLE.len(),
            prop::collection::vec((when(), what()), 1..40),
        ),
        1..=4,
    )
}

/// A view of the test: the visitor's index and the row.
type View = (usize, Row);

/// Turns the abstract views into rows, visitor by visitor, following the original's state with
/// each table (for the anchors and refreshes), then merges them by time, as the replay does.
fn materialize(visitors: &[(usize, Vec<(When, What)>)]) -> Vec<View> {
    let mut all = Vec::new();
    for (v, (person, views)) in visitors.iter().enumerate() {
        let (gender, age) = PEOPLE[*person];
        let mut originals = [Original::default(), Original::default()];
        let mut rows: Vec<Row> = Vec::new();
        let mut t = T0 + v as i64 * 7_000;
        for (when, what) in views {
            let last = rows.last().map(|r| r.ts_ms);
            let ts = match when {
                When::Gap(secs) => last.map_or(t, |l| l + secs * 1000),
                When::Edge { anchor, offset_ms } => {
                    let base = match anchor {
                        Anchor::MatchStart(k) => {
                            originals[*k].rows.first().map(|r| r.ts_ms).or(last)
                        }
                        Anchor::Recent(n) => rows.iter().rev().nth(n - 1).map(|r| r.ts_ms),
                    };
                    match base {
                        Some(b) => (b + WINDOW_MS + offset_ms).max(last.unwrap_or(b)),
                        None => t,
                    }
                }
            };
            t = ts;
            let (product, category) = match what {
                What::Refresh(k) => {
                    let product = originals[*k]
                        .rows
                        .last()
                        .or(rows.last())
                        .map_or(PRODUCTS[0].0, |r| r.product);
                    *PRODUCTS.iter().find(|(p, _)| *p == product).unwrap()
                }
                What::Product(i) => PRODUCTS[*i],
            };
            let row = Row {
                ts_ms: ts,
                product,
                category,
                gender,
                age,
            };
            for (original, (_, table)) in originals.iter_mut().zip(SEEDS) {
                original.process(table, &row);
            }
            rows.push(row);
        }
        all.extend(rows.into_iter().map(|r| (v, r)));
    }
    all.sort_by_key(|(_, r)| r.ts_ms); // stable: a visitor's views keep their order
    all
}

// ---------------------------------------------------------------- the two sides

/// Offers per pattern: `(visitor, ts_ms, offer)` in emission order.
type Offers = BTreeMap<String, Vec<(String, i64, String)>>;

fn visitor_id(v: usize) -> String {
    format!("visitor-{v}")
}

fn enriched(v: usize, row: &Row) -> EnrichedClick {
    EnrichedClick {
        ts_ms: row.ts_ms,
        visitor: visitor_id(v),
        ip: "10.0.0.1".to_owned(),
        url: format!("http://www.acme.com/SH55126545/{}", row.product),
        product_id: Arc::from(row.product),
        category: Arc::from(row.category),
        title: Arc::from(row.product),
        known_visitor: row.gender != Gender::U,
        gender: row.gender,
        age: row.age,
        country: Arc::from("usa"),
        city: None,
        region: None,
        device: Device::Desktop,
        event: clickpulse_engine::event::EventType::PageView,
        detail: None,
    }
}

/// The shipped seed pattern files' texts.
fn seed_texts() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../patterns");
    SEEDS
        .iter()
        .map(|(name, _)| {
            let file = dir.join(format!("{name}.toml"));
            let text = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            (file.display().to_string(), text)
        })
        .collect()
}

fn pattern_set(texts: &[(String, String)]) -> PatternSet {
    PatternSet::parse(texts.iter().map(|(f, t)| (f.as_str(), t.as_str()))).unwrap()
}

/// Clickpulse's detection operator over the views.
fn detected(set: &PatternSet, views: &[View]) -> Offers {
    let mut detector = DetectOperator::new(PatternRegistry::new(set.clone()));
    let mut offers = Offers::new();
    for (name, _) in SEEDS {
        offers.insert(name.to_owned(), Vec::new());
    }
    for (v, row) in views {
        for o in detector.detect(&enriched(*v, row)) {
            offers
                .entry(o.pattern)
                .or_default()
                .push((o.visitor, o.ts_ms, o.offer));
        }
    }
    offers
}

/// How often the original met each situation the rules differ in.
#[derive(Debug, Default)]
struct Coverage {
    offers: usize,
    /// Refreshes skipped 30 minutes or more after the match's first row.
    late_refreshes: usize,
    /// Rows reset for lateness that, evaluated from `init`, would have started a match.
    late_would_start: usize,
    /// Rows exactly 30 minutes after the match's first row.
    exactly_30_min: usize,
    /// Rows 1 ms short of it.
    just_in_time: usize,
}

/// The original over the views.
fn original(views: &[View], coverage: &mut Coverage) -> Offers {
    let mut offers = Offers::new();
    for (name, table) in SEEDS {
        let mut states: BTreeMap<usize, Original> = BTreeMap::new();
        let out = offers.entry(name.to_owned()).or_default();
        for (v, row) in views {
            let state = states.entry(*v).or_default();
            let age_ms = state.rows.first().map(|first| row.ts_ms - first.ts_ms);
            coverage.exactly_30_min += usize::from(age_ms == Some(WINDOW_MS));
            coverage.just_in_time += usize::from(age_ms == Some(WINDOW_MS - 1));
            let late = age_ms.is_some_and(|a| a >= WINDOW_MS);
            let would_start = clothing_in_audience(row);
            match state.process(table, row) {
                Fate::Offer(offer) => {
                    coverage.offers += 1;
                    out.push((visitor_id(*v), row.ts_ms, offer.to_owned()));
                }
                Fate::Refresh if late => coverage.late_refreshes += 1,
                Fate::Reset if late && would_start => coverage.late_would_start += 1,
                _ => {}
            }
        }
    }
    offers
}

fn clothing_in_audience(row: &Row) -> bool {
    row.category == "clothing" && audience(row)
}

// ---------------------------------------------------------------- the tests

#[test]
fn seed_patterns_emit_exactly_the_original_detectors_offers() {
    let texts = seed_texts();
    let seeds = pattern_set(&texts);
    // The same files without `late = "reset"`: the default, today's `restart`. They must differ
    // from the original somewhere, or the generated clicks would not test the two rules.
    let restart_texts: Vec<(String, String)> = texts
        .iter()
        .map(|(f, t)| {
            let without: String = t
                .lines()
                .filter(|l| !l.starts_with("late ="))
                .map(|l| format!("{l}\n"))
                .collect();
            assert_ne!(&without, t, "{f} says `late`");
            (f.clone(), without)
        })
        .collect();
    let restart = pattern_set(&restart_texts);

    let coverage = RefCell::new(Coverage::default());
    let restart_differs = Cell::new(0usize);
    let mut runner = TestRunner::new(Config {
        cases: 2048,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&visitors(), |visitors| {
        let views = materialize(&visitors);
        let expected = original(&views, &mut coverage.borrow_mut());
        let actual = detected(&seeds, &views);
        prop_assert_eq!(&actual, &expected, "views: {:?}", views);
        if detected(&restart, &views) != expected {
            restart_differs.set(restart_differs.get() + 1);
        }
        Ok::<(), TestCaseError>(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let (coverage, restart_differs) = (coverage.into_inner(), restart_differs.get());
    eprintln!("coverage: {coverage:?}, cases where late = \"restart\" differs: {restart_differs}");
    assert!(coverage.offers >= 50, "{coverage:?}");
    assert!(coverage.late_refreshes >= 50, "{coverage:?}");
    assert!(coverage.late_would_start >= 50, "{coverage:?}");
    assert!(coverage.exactly_30_min >= 50, "{coverage:?}");
    assert!(coverage.just_in_time >= 20, "{coverage:?}");
    assert!(
        restart_differs >= 20,
        "restart differs in {restart_differs} cases"
    );
}

/// The two timelines of docs/patterns.md: the original emits no offer, and neither do the seeds;
/// without `late = "reset"` the 3-step pattern would emit one in each.
#[test]
fn the_documented_timelines_earn_no_offer() {
    let (f, a, b, c, s, s2) = (Gender::F, "C1", "C2", "C3", "S1", "S2");
    let row = |secs: i64, product: &'static str| Row {
        ts_ms: T0 + secs * 1000,
        product,
        category: PRODUCTS.iter().find(|(p, _)| *p == product).unwrap().1,
        gender: f,
        age: Some(29),
    };
    let timelines = [
        vec![
            row(0, a),
            row(100, s),
            row(1800, b),
            row(1850, s),
            row(1900, c),
        ],
        vec![
            row(0, a),
            row(100, s),
            row(1800, s),
            row(1850, b),
            row(1900, s2),
            row(1950, c),
        ],
    ];
    let texts = seed_texts();
    let seeds = pattern_set(&texts);
    let restart = pattern_set(
        &texts
            .iter()
            .map(|(f, t)| {
                (
                    f.clone(),
                    t.replace("late = \"reset\"", "late = \"restart\""),
                )
            })
            .collect::<Vec<_>>(),
    );
    for timeline in timelines {
        let views: Vec<View> = timeline.into_iter().map(|r| (0, r)).collect();
        let none = Offers::from([
            ("seed-5-step".to_owned(), vec![]),
            ("seed-clothes-shoes-clothes".to_owned(), vec![]),
        ]);
        assert_eq!(original(&views, &mut Coverage::default()), none);
        assert_eq!(detected(&seeds, &views), none);
        let offer_at = views.last().unwrap().1.ts_ms;
        assert_eq!(
            detected(&restart, &views)["seed-clothes-shoes-clothes"],
            [(visitor_id(0), offer_at, "offer2".to_owned())]
        );
    }
}
