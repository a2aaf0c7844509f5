//! Property: for random event sets — out of order across partitions, with late events and a
//! checkpoint/restore in the middle — the streamed dashboard equals a batch recomputation from
//! the definitions over the same events, at every watermark it is checked at.

use clickpulse_engine::topics::Topic;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clickpulse_engine::click::{Device, EnrichedClick, Gender};
use clickpulse_engine::operator::{Emitter, Operator, StateChanges, process_one};
use clickpulse_engine::pattern::Offer;
use clickpulse_engine::window::dashboard::DashboardConfig;
use clickpulse_engine::window::{AggregateOperator, DashboardAggregator, DashboardHandle};
use proptest::prelude::*;
use serde_json::{Value, json};

const MIN: i64 = 60_000;

fn click(
    ts_ms: i64,
    visitor: usize,
    product: usize,
    device: usize,
    country: usize,
) -> EnrichedClick {
    let products = [
        "P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8", "P9", "P10", "P11", "P12",
    ];
    let p = products[product % products.len()];
    EnrichedClick {
        ts_ms,
        visitor: format!("visitor-{visitor}"),
        ip: format!("10.0.0.{visitor}"),
        url: format!("http://www.acme.com/SH1/{p}"),
        product_id: Arc::from(p),
        category: Arc::from(["clothing", "shoes", "books"][product % 3]),
        title: Arc::from(format!("Title of {p}")),
        known_visitor: true,
        gender: Gender::U,
        age: None,
        country: Arc::from(["usa", "can", "deu"][country % 3]),
        city: None,
        region: None,
        device: [
            Device::Desktop,
            Device::Mobile,
            Device::Tablet,
            Device::Bot,
            Device::Other,
        ][device % 5],
        event: clickpulse_engine::event::EventType::PageView,
        detail: None,
    }
}

/// The dashboard straight from its definitions. `applied` are the non-late events, in arrival
/// order; `now` the watermark.
fn batch(applied: &[EnrichedClick], offers: &[Offer], now: i64) -> Value {
    let upto: Vec<(usize, &EnrichedClick)> = applied
        .iter()
        .enumerate()
        .filter(|(_, c)| c.ts_ms <= now)
        .collect();
    let in_last = |c: &EnrichedClick, span: i64| now - span < c.ts_ms && c.ts_ms <= now;
    let minute = now.div_euclid(MIN) * MIN;
    let page_views: Vec<Value> = (0..15)
        .rev()
        .map(|k| {
            let s = minute - k * MIN;
            let views = upto
                .iter()
                .filter(|(_, c)| s <= c.ts_ms && c.ts_ms < s + MIN)
                .count();
            json!({"start_ms": s, "views": views, "final": s + MIN <= now})
        })
        .collect();
    let distinct = |from: i64, to_excl: i64| {
        upto.iter()
            .filter(|(_, c)| from <= c.ts_ms && c.ts_ms < to_excl)
            .map(|(_, c)| c.visitor.as_str())
            .collect::<HashSet<_>>()
            .len()
    };
    let per_minute: Vec<Value> = (0..30)
        .rev()
        .map(|k| {
            let s = minute - k * MIN;
            json!({"start_ms": s, "visitors": distinct(s, s + MIN), "final": s + MIN <= now})
        })
        .collect();
    let half = now.div_euclid(30 * MIN) * 30 * MIN;
    let half_hours: Vec<Value> = (0..16)
        .rev()
        .map(|k| {
            let s = half - k * 30 * MIN;
            json!({"start_ms": s, "visitors": distinct(s, s + 30 * MIN), "final": s + 30 * MIN <= now})
        })
        .collect();
    let ranked = |key: &dyn Fn(&EnrichedClick) -> String, span: i64| {
        let mut counts: HashMap<String, u64> = HashMap::new();
        for (_, c) in upto.iter().filter(|(_, c)| in_last(c, span)) {
            *counts.entry(key(c)).or_default() += 1;
        }
        let mut v: Vec<(String, u64)> = counts.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    };
    let top: Vec<Value> = ranked(&|c| c.product_id.to_string(), 60 * MIN)
        .into_iter()
        .take(10)
        .map(|(p, n)| {
            let c = upto
                .iter()
                .rev()
                .find(|(_, c)| *c.product_id == *p)
                .unwrap()
                .1;
            json!({"product_id": p, "title": c.title, "category": c.category, "views": n})
        })
        .collect();
    let categories: Vec<Value> = ranked(&|c| c.category.to_string(), 60 * MIN)
        .into_iter()
        .map(|(k, n)| json!({"category": k, "views": n}))
        .collect();
    let countries: Vec<Value> = ranked(&|c| c.country.to_string(), 30 * MIN)
        .into_iter()
        .map(|(k, n)| json!({"country": k, "views": n}))
        .collect();
    let mut devices = BTreeMap::from([("Desktop", 0), ("Mobile", 0), ("Tablet", 0), ("Other", 0)]);
    for (_, c) in upto.iter().filter(|(_, c)| in_last(c, 10 * MIN)) {
        let name = match c.device {
            Device::Desktop => "Desktop",
            Device::Mobile => "Mobile",
            Device::Tablet => "Tablet",
            Device::Bot | Device::Other => "Other",
        };
        *devices.get_mut(name).unwrap() += 1;
    }
    let active = |span: i64| {
        upto.iter()
            .filter(|(_, c)| in_last(c, span))
            .map(|(_, c)| c.visitor.as_str())
            .collect::<HashSet<_>>()
            .len()
    };
    let mut by_time = upto.clone();
    // Equal event times in a fixed order (visitor, product, IP), not arrival order.
    by_time.sort_by(|(i, a), (j, b)| {
        (a.ts_ms, &a.visitor, &a.product_id, &a.ip, i).cmp(&(
            b.ts_ms,
            &b.visitor,
            &b.product_id,
            &b.ip,
            j,
        ))
    });
    let latest: Vec<Value> = by_time
        .iter()
        .rev()
        .take(10)
        .map(|(_, c)| json!({"ts_ms": c.ts_ms, "visitor": c.visitor, "ip": c.ip, "country": c.country, "product_id": c.product_id, "category": c.category}))
        .collect();
    let mut offers_by: BTreeMap<String, u64> = BTreeMap::new();
    let unique: HashMap<&str, &Offer> = offers.iter().map(|o| (o.offer_id.as_str(), o)).collect();
    for o in unique
        .values()
        .filter(|o| now - 60 * MIN < o.ts_ms && o.ts_ms <= now)
    {
        *offers_by.entry(o.pattern.clone()).or_default() += 1;
    }
    json!({
        "now_ms": now,
        "page_views_per_minute": page_views,
        "visitors_per_30min": half_hours,
        "top_products_1h": top,
        "category_views_1h": categories,
        "device_views_10m": devices,
        "latest_views": latest,
        "active_visitors_30m": active(30 * MIN),
        "active_visitors_5m": active(5 * MIN),
        "active_visitors_per_minute_30m": per_minute,
        "country_views_30m": countries,
        "offers_by_pattern_1h": offers_by,
    })
}

#[derive(Debug, Clone)]
enum Step {
    Click {
        partition: u32,
        gap_ms: i64,
        visitor: usize,
        product: usize,
        device: usize,
        country: usize,
    },
    Late {
        visitor: usize,
    },
    Offer {
        back_ms: i64,
        pattern: usize,
        dup: bool,
    },
    Tick,
    Check,
    Restart,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (0u32..3, prop_oneof![0i64..2_000, 0i64..120_000, 0i64..1_200_000], 0usize..30, 0usize..12, 0usize..5, 0usize..3)
            .prop_map(|(partition, gap_ms, visitor, product, device, country)| Step::Click { partition, gap_ms, visitor, product, device, country }),
        1 => (0usize..30).prop_map(|visitor| Step::Late { visitor }),
        1 => (0i64..7_200_000, 0usize..2, any::<bool>()).prop_map(|(back_ms, pattern, dup)| Step::Offer { back_ms, pattern, dup }),
        2 => Just(Step::Tick),
        1 => Just(Step::Check),
        1 => Just(Step::Restart),
    ]
}

fn config() -> DashboardConfig {
    DashboardConfig {
        allowed_lateness_ms: 30_000,
        idle_timeout: Duration::from_secs(3_600),
        partitions: 0,
        ..DashboardConfig::default()
    }
}

fn operator() -> AggregateOperator {
    AggregateOperator::new(config(), DashboardHandle::default())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn streamed_dashboard_equals_batch_recomputation(steps in prop::collection::vec(step(), 1..300)) {
        let mut op = operator();
        let handle = DashboardHandle::default();
        let mut out = Emitter::default();
        let mut clocks = [1_331_000_000_000i64; 3];
        let mut applied: Vec<EnrichedClick> = Vec::new();
        let mut offers: Vec<Offer> = Vec::new();
        let mut late_expected = 0u64;
        let mut watermark: Option<i64> = None;
        let tick = |op: &mut AggregateOperator, out: &mut Emitter| op.on_tick(Instant::now(), out);
        let current = |op: &AggregateOperator| op.stats()["watermark_ms"].as_i64();
        // What the store holds: every checkpoint's changes applied (deletes included), as the
        // runner commits them; a restart reads it all back.
        let mut store: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let commit = |store: &mut BTreeMap<String, Vec<u8>>, changes: &StateChanges| {
            for (k, v) in changes {
                match v {
                    Some(v) => store.insert(k.clone(), v.clone()),
                    None => store.remove(k),
                };
            }
        };
        for s in steps {
            match s {
                Step::Click { partition, gap_ms, visitor, product, device, country } => {
                    clocks[partition as usize] += gap_ms;
                    let c = click(clocks[partition as usize], visitor, product, device, country);
                    process_one(&mut op, Topic::EnrichedClickData, partition, &clickpulse_engine::codec::encode(&c), Instant::now(), &mut out).unwrap();
                    // A partition lagging more than the allowed lateness behind the others
                    // delivers late events: counted, not applied.
                    if watermark.is_some_and(|w| c.ts_ms <= w) {
                        late_expected += 1;
                    } else {
                        applied.push(c);
                    }
                }
                Step::Late { visitor } => {
                    if let Some(w) = watermark {
                        let c = click(w - 1_000, visitor, 0, 0, 0);
                        process_one(&mut op, Topic::EnrichedClickData, 0, &clickpulse_engine::codec::encode(&c), Instant::now(), &mut out).unwrap();
                        late_expected += 1;
                    }
                }
                Step::Offer { back_ms, pattern, dup } => {
                    let ts = clocks[0] - back_ms;
                    let o = Offer {
                        offer_id: format!("id-{}-{ts}", offers.len() - usize::from(dup && !offers.is_empty())),
                        visitor: "v".into(),
                        pattern: ["seed-a", "seed-b"][pattern].into(),
                        pattern_version: "1".into(),
                        offer: "offer1".into(),
                        ts_ms: ts,
                    };
                    let o = if dup && !offers.is_empty() { offers.last().unwrap().clone() } else { o };
                    process_one(&mut op, Topic::SpecialOffers, 0, &clickpulse_engine::codec::encode(&o), Instant::now(), &mut out).unwrap();
                    offers.push(o);
                }
                Step::Tick => {
                    tick(&mut op, &mut out);
                    watermark = current(&op);
                }
                Step::Check => {
                    tick(&mut op, &mut out);
                    watermark = current(&op);
                    if let Some(now) = watermark {
                        let mut changes = StateChanges::new();
                        op.checkpoint(&mut changes);
                        commit(&mut store, &changes);
                        let snapshot: Value = changes.iter().find(|(k, _)| k == "snapshot")
                            .map(|(_, v)| serde_json::from_slice(v.as_ref().unwrap()).unwrap())
                            .unwrap_or_else(|| serde_json::to_value(handle.snapshot().as_deref()).unwrap());
                        if snapshot != Value::Null {
                            prop_assert_eq!(&snapshot, &batch(&applied, &offers, now));
                        }
                    }
                }
                Step::Restart => {
                    let mut changes = StateChanges::new();
                    op.checkpoint(&mut changes);
                    commit(&mut store, &changes);
                    let mut fresh = operator();
                    for (k, v) in &store {
                        fresh.restore(k, v).unwrap();
                    }
                    // Nothing was ever checkpointed: there is nothing to restore (keep the
                    // operator, nothing to lose).
                    if !store.is_empty() {
                        op = fresh;
                    }
                }
            }
        }
        tick(&mut op, &mut out);
        if let Some(now) = current(&op) {
            let mut changes = StateChanges::new();
            op.checkpoint(&mut changes);
            if let Some((_, Some(v))) = changes.iter().find(|(k, _)| k == "snapshot") {
                let snapshot: Value = serde_json::from_slice(v).unwrap();
                prop_assert_eq!(snapshot, batch(&applied, &offers, now));
            }
        }
        prop_assert_eq!(op.stats()["late_events"].as_u64().unwrap(), late_expected);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The backtest's aggregation (sliding windows computed when a snapshot is taken, views
    /// taken borrowed) shows what the live stage's (sliding windows kept up to date, views
    /// taken owned) shows, at every watermark.
    #[test]
    fn sliding_windows_computed_on_read_equal_the_maintained_ones(steps in prop::collection::vec(step(), 1..300)) {
        let mut kept = DashboardAggregator::new(config(), Instant::now());
        let mut on_read = DashboardAggregator::new(config(), Instant::now()).sliding_windows_on_read();
        let wall = Instant::now();
        let mut clocks = [1_331_000_000_000i64; 3];
        let mut offers = 0usize;
        for s in steps {
            match s {
                Step::Click { partition, gap_ms, visitor, product, device, country } => {
                    clocks[partition as usize] += gap_ms;
                    let c = click(clocks[partition as usize], visitor, product, device, country);
                    on_read.on_click_ref(partition, &c.borrowed(), wall);
                    kept.on_click(partition, c, wall);
                }
                Step::Late { visitor } => {
                    if let Some(w) = kept.now() {
                        let c = click(w - 1_000, visitor, 0, 0, 0);
                        on_read.on_click_ref(0, &c.borrowed(), wall);
                        kept.on_click(0, c, wall);
                    }
                }
                Step::Offer { back_ms, pattern, .. } => {
                    offers += 1;
                    let o = Offer {
                        offer_id: format!("id-{offers}"),
                        visitor: "v".into(),
                        pattern: ["seed-a", "seed-b"][pattern].into(),
                        pattern_version: "1".into(),
                        offer: "offer1".into(),
                        ts_ms: clocks[0] - back_ms,
                    };
                    kept.on_offer(&o);
                    on_read.on_offer(&o);
                }
                Step::Tick | Step::Restart => {
                    prop_assert_eq!(kept.tick(wall), on_read.tick(wall));
                }
                Step::Check => {
                    kept.tick(wall);
                    on_read.tick(wall);
                    prop_assert_eq!(kept.snapshot(), on_read.snapshot());
                }
            }
        }
        prop_assert_eq!(kept.flush(), on_read.flush());
        prop_assert_eq!(kept.snapshot(), on_read.snapshot());
    }
}
