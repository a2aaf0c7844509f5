//! Property: for random click sequences, the live embedded pipeline (replay → enrich → detect
//! over durable topics, in small batches, with the detector stopped and restarted from its
//! checkpoint half-way) emits exactly the offers the in-process backtest computes.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use clickpulse_components::sources::replay::embedded::run as run_replay;
use clickpulse_connectors::embedded::EmbeddedStore;
use clickpulse_connectors::embedded::runner::{RunnerConfig, run_operator};
use clickpulse_connectors::replay_cursor::{ReplayInput, ReplayOptions};
use clickpulse_engine::click::{Click, Gender};
use clickpulse_engine::click_log::ClickLog;
use clickpulse_engine::enrich::EnrichOperator;
use clickpulse_engine::lookups::{Lookups, Product, User};
use clickpulse_engine::metrics::PipelineMetrics;
use clickpulse_engine::pattern::{DetectOperator, Offer, PatternRegistry, PatternSet};
use clickpulse_engine::replay::{EventClock, Speed};
use clickpulse_engine::topics;
use proptest::prelude::*;

const PRODUCTS: [(&str, &str); 8] = [
    ("C1", "clothing"),
    ("C2", "clothing"),
    ("C3", "clothing"),
    ("S1", "shoes"),
    ("S2", "shoes"),
    ("S3", "shoes"),
    ("B1", "books"),
    ("H1", "handbags"),
];

fn lookups() -> Lookups {
    let user = |g: Gender, y: i32| User {
        gender: g,
        birth_date: NaiveDate::from_ymd_opt(y, 6, 15),
    };
    Lookups::from_parts(
        [
            ("v0".to_owned(), user(Gender::F, 1982)),
            ("v1".to_owned(), user(Gender::M, 1972)),
            ("v2".to_owned(), user(Gender::F, 1990)),
            ("v4".to_owned(), user(Gender::M, 1977)),
        ],
        PRODUCTS.iter().map(|(id, cat)| Product {
            id: (*id).into(),
            category: Arc::from(*cat),
            title: Arc::from(*id),
            description: String::new(),
            image: None,
            price: None,
        }),
    )
}

fn patterns() -> PatternSet {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let files = [
        root.join("patterns/seed-clothes-shoes-clothes.toml"),
        root.join("patterns/seed-5-step.toml"),
        root.join(
            "crates/engine/tests/scenarios/relaxed_contiguity_and_frequency_cap/pattern.toml",
        ),
        root.join(
            "crates/engine/tests/scenarios/steps_with_repeat_distinct_and_abort/pattern.toml",
        ),
    ];
    let texts: Vec<(String, String)> = files
        .iter()
        .map(|f| (f.display().to_string(), std::fs::read_to_string(f).unwrap()))
        .collect();
    PatternSet::parse(texts.iter().map(|(f, t)| (f.as_str(), t.as_str()))).unwrap()
}

fn clicks(views: &[(usize, i64, usize)]) -> Vec<Click> {
    let mut t = 1_340_000_000_000i64; // mid-2012
    let mut out: Vec<Click> = views
        .iter()
        .map(|&(visitor, gap_s, product)| {
            t += gap_s * 1000;
            Click::new(
                t,
                format!("v{visitor}"),
                format!("http://www.acme.com/SH1/{}", PRODUCTS[product].0),
            )
        })
        .collect();
    out.sort_by_key(|c| c.ts_ms); // stable, as the replay's order
    out
}

fn backtest(clicks: &[Click]) -> Vec<Offer> {
    let mut enrich = EnrichOperator::new(lookups());
    let mut detect = DetectOperator::new(PatternRegistry::new(patterns()));
    let mut offers: Vec<Offer> = clicks
        .iter()
        .flat_map(|c| detect.detect(&enrich.enrich(c.clone())))
        .collect();
    offers.sort_by(|a, b| a.offer_id.cmp(&b.offer_id));
    offers
}

fn live(clicks: &[Click], partitions: u32, batch_size: usize) -> Vec<Offer> {
    let dir = tempfile::tempdir().unwrap();
    let layout = [
        (topics::CLICK_DATA, partitions),
        (topics::ENRICHED_CLICK_DATA, partitions),
        (topics::SPECIAL_OFFERS, partitions),
        (topics::DEAD_LETTERS, 1),
    ];
    let store = EmbeddedStore::open(dir.path(), &layout).unwrap();
    let input = ReplayInput {
        clicks: ClickLog::from_clicks(clicks),
        malformed: vec![],
        fingerprint: "prop".into(),
    };
    let options = ReplayOptions {
        speed: Speed::Max,
        loop_forever: false,
        align_warmup_ms: None,
        overlay: false,
    };
    let clock = EventClock::default();
    let config = RunnerConfig {
        batch_size,
        idle_wait: Duration::from_millis(2),
        // The replay waits for enrich: a stopped detector must not hold it up.
        replay_consumers: vec!["enrich"],
        ..RunnerConfig::default()
    };
    let metrics = PipelineMetrics::default();
    let total = clicks.len() as u64;
    let wait = |stage: &str, n: u64| {
        let guard = Instant::now() + Duration::from_secs(300);
        while metrics
            .stage(match stage {
                "enrich" => "enrich",
                _ => "detect",
            })
            .events()
            < n
        {
            // A hang guard only (minutes): never a measure of speed.
            assert!(
                Instant::now() < guard,
                "hang guard: {stage} stalled for 5 minutes"
            );
            thread::sleep(Duration::from_millis(1));
        }
    };
    // Phase 1: everything runs; the detector stops once it has seen about half the views.
    let stop_all = AtomicBool::new(false);
    let stop_detect = AtomicBool::new(false);
    thread::scope(|s| {
        s.spawn(|| {
            run_replay(
                &store,
                &input,
                options,
                &clock,
                &metrics.stage("replay"),
                &stop_all,
                &config,
            )
            .unwrap()
        });
        s.spawn(|| {
            run_operator(
                &store,
                EnrichOperator::new(lookups()),
                &metrics.stage("enrich"),
                &stop_all,
                &config,
            )
            .unwrap()
        });
        s.spawn(|| {
            let detector = DetectOperator::new(PatternRegistry::new(patterns()));
            run_operator(
                &store,
                detector,
                &metrics.stage("detect"),
                &stop_detect,
                &config,
            )
            .unwrap()
        });
        wait("detect", total / 2);
        stop_detect.store(true, Ordering::SeqCst);
        wait("enrich", total);
        stop_all.store(true, Ordering::SeqCst);
    });
    // Phase 2: a fresh detector restores its checkpoint and finishes.
    let stop = AtomicBool::new(false);
    thread::scope(|s| {
        s.spawn(|| {
            let detector = DetectOperator::new(PatternRegistry::new(patterns()));
            run_operator(&store, detector, &metrics.stage("detect"), &stop, &config).unwrap()
        });
        wait("detect", total);
        stop.store(true, Ordering::SeqCst);
    });
    let mut offers = Vec::new();
    for p in 0..partitions {
        for r in store
            .fetch(topics::SPECIAL_OFFERS, p, 0, usize::MAX)
            .unwrap()
        {
            offers.push(clickpulse_engine::codec::decode::<Offer>(&r.value).unwrap());
        }
    }
    offers.sort_by(|a, b| a.offer_id.cmp(&b.offer_id));
    offers
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn live_pipeline_emits_exactly_the_backtest_offers(
        views in prop::collection::vec((0usize..5, prop_oneof![0i64..120, 0i64..2400], 0usize..8), 2..120),
        partitions in 1u32..5,
        batch_size in 1usize..40,
    ) {
        let clicks = clicks(&views);
        let expected = backtest(&clicks);
        let actual = live(&clicks, partitions, batch_size);
        prop_assert_eq!(actual, expected);
    }
}

#[test]
fn the_generator_does_produce_offers() {
    // Guards the property above against passing vacuously.
    let views: Vec<(usize, i64, usize)> = vec![
        (0, 10, 0),
        (0, 10, 3),
        (0, 10, 1),
        (1, 10, 0),
        (1, 10, 4),
        (1, 10, 2),
    ];
    let offers = backtest(&clicks(&views));
    assert!(offers.len() >= 2, "{offers:?}");
    assert_eq!(live(&clicks(&views), 3, 2), offers);
}
