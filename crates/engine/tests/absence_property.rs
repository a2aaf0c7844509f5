//! Patterns that react to what a visitor did not do, checked against a batch recomputation:
//! for random events of a few visitors (page views, adds to cart, purchases), the cart
//! abandonment pattern (added to the cart, no purchase within 15 minutes) gives exactly the
//! offers a plain per-visitor scan says — once each, at the deadline — in the backtest's path
//! and in the runner's (records, then the watermark), also when the operator is checkpointed
//! and restored from its checkpoint at any point. The same for the shipped browse abandonment
//! pattern (a product's third view in a session, not in the cart, not added within 10 minutes:
//! an offer for that product), which also needs the session rule.

use std::collections::BTreeSet;
use std::time::Instant;

use clickpulse_engine::click::{Click, EnrichedClick};
use clickpulse_engine::event::{EventDetail, EventProduct, EventType, LineItem, Order};
use clickpulse_engine::lookups::Lookups;
use clickpulse_engine::operator::{Context, Emitter, Operator, PartitionTimes, StateChanges};
use clickpulse_engine::pattern::{DetectOperator, Offer, PatternRegistry, PatternSet};
use clickpulse_engine::topics::Topic;
use clickpulse_engine::{Enricher, codec};
use proptest::prelude::*;

const PATTERN: &str = r#"
name = "cart-abandonment"
[offer]
default = "cart-discount"
[[step]]
when = { type = "add_to_cart" }
[[step]]
absent = { type = "purchase" }
for = "15m"
"#;
const WAIT_MS: i64 = 15 * 60_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    View,
    Add,
    Purchase,
}

/// Events in time order: (ts, visitor, kind).
fn events() -> impl Strategy<Value = Vec<(i64, usize, Kind)>> {
    prop::collection::vec(
        (
            0i64..400_000,
            0usize..4,
            prop_oneof![Just(Kind::View), Just(Kind::Add), Just(Kind::Purchase)],
        ),
        1..60,
    )
    .prop_map(|steps| {
        let mut ts = 1_330_560_000_000;
        steps
            .into_iter()
            .map(|(gap, visitor, kind)| {
                ts += gap;
                (ts, visitor, kind)
            })
            .collect()
    })
}

fn click(ts_ms: i64, visitor: usize, kind: Kind) -> EnrichedClick {
    let mut c = Click::new(ts_ms, format!("v{visitor}"), "http://shop/p/VD1");
    match kind {
        Kind::View => {}
        Kind::Add => {
            c.event = EventType::AddToCart;
            c.detail = Some(Box::new(EventDetail {
                product: Some(EventProduct {
                    id: Some("VD1".into()),
                    ..EventProduct::default()
                }),
                ..EventDetail::default()
            }));
        }
        Kind::Purchase => {
            c.event = EventType::Purchase;
            c.detail = Some(Box::new(EventDetail {
                order: Some(Order {
                    id: format!("o-{ts_ms}"),
                    revenue: 10.0,
                    currency: None,
                    items: vec![LineItem {
                        product_id: "VD1".into(),
                        category: None,
                        price: None,
                        quantity: 1,
                    }],
                }),
                ..EventDetail::default()
            }));
        }
    }
    c.validate().unwrap();
    Enricher::new().enrich(c, &Lookups::default())
}

/// The batch recomputation: each visitor's events in order; a wait starts at an add to cart
/// (when not waiting) and ends with a purchase before its deadline; it fires at the deadline
/// once event time (anyone's event) reaches it.
fn expected(events: &[(i64, usize, Kind)]) -> BTreeSet<(String, i64)> {
    let mut offers = BTreeSet::new();
    let mut deadline: [Option<i64>; 4] = [None; 4];
    for &(ts, visitor, kind) in events {
        for (v, d) in deadline.iter_mut().enumerate() {
            if let Some(at) = *d
                && at <= ts
            {
                offers.insert((format!("v{v}"), at));
                *d = None;
            }
        }
        match (kind, deadline[visitor]) {
            (Kind::Add, None) => deadline[visitor] = Some(ts + WAIT_MS),
            (Kind::Purchase, Some(at)) if ts < at => deadline[visitor] = None,
            _ => {}
        }
    }
    offers
}

fn registry() -> PatternRegistry {
    PatternRegistry::new(PatternSet::parse([("cart.toml", PATTERN)]).unwrap())
}

const BROWSE: &str = include_str!("../../../patterns/browse-abandonment.toml");
const BROWSE_WAIT_MS: i64 = 10 * 60_000;
const SESSION_GAP_MS: i64 = 30 * 60_000;
const DAY_MS: i64 = 86_400_000;

fn browse_registry() -> PatternRegistry {
    PatternRegistry::new(PatternSet::parse([("browse.toml", BROWSE)]).unwrap())
}

/// (gap before it, visitor, product, added to the cart rather than viewed): gaps from seconds
/// to over an hour, so sessions end between events.
fn browse_events() -> impl Strategy<Value = Vec<(i64, usize, usize, bool)>> {
    prop::collection::vec(
        (
            prop_oneof![4 => 0i64..400_000, 1 => 1_700_000i64..4_000_000],
            0usize..3,
            0usize..2,
            prop::bool::weighted(0.2),
        ),
        1..80,
    )
    .prop_map(|steps| {
        let mut ts = 1_330_560_000_000;
        steps
            .into_iter()
            .map(|(gap, visitor, product, add)| {
                ts += gap;
                (ts, visitor, product, add)
            })
            .collect()
    })
}

/// A view (with the product named, in a catalogue category) or an add to the cart.
fn browse_click(ts_ms: i64, visitor: usize, product: usize, add: bool) -> EnrichedClick {
    let id = format!("VD{product}");
    let mut c = Click::new(ts_ms, format!("v{visitor}"), format!("http://shop/p/{id}"));
    if add {
        c.event = EventType::AddToCart;
    }
    c.detail = Some(Box::new(EventDetail {
        product: Some(EventProduct {
            id: Some(id),
            category: Some("clothing".into()),
            ..EventProduct::default()
        }),
        ..EventDetail::default()
    }));
    c.validate().unwrap();
    Enricher::new().enrich(c, &catalogue())
}

/// A catalogue of the two products (the pattern is about catalogue products).
fn catalogue() -> Lookups {
    let mut lookups = Lookups::default();
    let products = r#"[{"id":"VD0","category":"clothing","title":"Zero"},
                       {"id":"VD1","category":"clothing","title":"One"}]"#;
    lookups
        .load_products_json("products.json", products.as_bytes())
        .unwrap();
    lookups
}

/// The batch recomputation from the pattern's words: per visitor, sessions end after 30 minutes
/// without an event; in a session each product's visits are counted (a view right after a view
/// of the same product is a reload, not another) and an add puts it in the cart; the third view of a product not in the cart starts a wait (unless one runs), which an
/// add of that product before the deadline cancels; at the deadline (event time) the offer for
/// that product is given unless the visitor got one less than a day before.
fn browse_expected(events: &[(i64, usize, usize, bool)]) -> BTreeSet<(String, i64, String)> {
    #[derive(Default, Clone)]
    struct V {
        last: Option<i64>,
        last_viewed: Option<usize>,
        views: [u32; 2],
        in_cart: [bool; 2],
        waiting: Option<(usize, i64)>,
        last_offer: Option<i64>,
    }
    let mut offers = BTreeSet::new();
    let mut vs = vec![V::default(); 3];
    for &(ts, visitor, product, add) in events {
        for (i, v) in vs.iter_mut().enumerate() {
            if let Some((p, at)) = v.waiting
                && at <= ts
            {
                v.waiting = None;
                if v.last_offer.is_none_or(|last| at - last >= DAY_MS) {
                    v.last_offer = Some(at);
                    offers.insert((format!("v{i}"), at, format!("VD{p}")));
                }
            }
        }
        let v = &mut vs[visitor];
        if v.last.is_none_or(|last| ts - last >= SESSION_GAP_MS) {
            v.views = [0; 2];
            v.in_cart = [false; 2];
            v.last_viewed = None;
        }
        v.last = Some(ts);
        if add {
            v.in_cart[product] = true;
        } else if v.last_viewed != Some(product) {
            // A view right after a view of the same product is a reload: not another visit.
            v.views[product] += 1;
            v.last_viewed = Some(product);
        }
        match v.waiting {
            Some((p, at)) if add && p == product && ts < at => v.waiting = None,
            Some(_) => {}
            None if !add && v.views[product] == 3 && !v.in_cart[product] => {
                v.waiting = Some((product, ts + BROWSE_WAIT_MS));
            }
            None => {}
        }
    }
    offers
}

fn keys(offers: &[Offer]) -> Vec<(String, i64)> {
    offers
        .iter()
        .map(|o| (o.visitor.clone(), o.ts_ms))
        .collect()
}

/// Both paths gave each expected offer (by `key`) exactly once, and the same offers, ids
/// included, whichever path and wherever the restart.
fn same_offers_once_each<K: Ord + Clone + std::fmt::Debug>(
    batch: &[Offer],
    live: &[Offer],
    want: &BTreeSet<K>,
    key: impl Fn(&[Offer]) -> Vec<K>,
) -> Result<(), TestCaseError> {
    for (path, offers) in [("backtest", batch), ("runner", live)] {
        let got = key(offers);
        let unique: BTreeSet<K> = got.iter().cloned().collect();
        prop_assert_eq!(
            unique.len(),
            got.len(),
            "{} gave an offer twice: {:?}",
            path,
            got
        );
        prop_assert_eq!(&unique, want, "{}", path);
    }
    let ids = |o: &[Offer]| {
        o.iter()
            .map(|o| o.offer_id.clone())
            .collect::<BTreeSet<_>>()
    };
    prop_assert_eq!(ids(batch), ids(live));
    Ok(())
}

/// The runner's path: each record, then the watermark when it moved; checkpointed and
/// restored into a new operator before record `restart`.
fn through_the_runner(
    registry: fn() -> PatternRegistry,
    clicks: &[EnrichedClick],
    restart: usize,
) -> Vec<Offer> {
    let mut op = DetectOperator::new(registry());
    let (mut emitter, mut times) = (Emitter::default(), PartitionTimes::default());
    let mut announced: Option<i64> = None;
    let mut offers = Vec::new();
    for (i, c) in clicks.iter().enumerate() {
        if i == restart {
            let mut changes = StateChanges::default();
            op.checkpoint(&mut changes);
            op = DetectOperator::new(registry());
            for (key, value) in changes {
                if let Some(value) = value {
                    op.restore(&key, &value).unwrap();
                }
            }
        }
        let bytes = codec::encode(c);
        let mut ctx = Context::new(
            Topic::EnrichedClickData,
            0,
            i as u64,
            Instant::now(),
            &mut emitter,
            &mut times,
        );
        op.process_record(&bytes, &mut ctx).unwrap();
        if let Some(w) = times.watermark()
            && announced.is_none_or(|a| w > a)
        {
            announced = Some(w);
            op.on_watermark(w, &mut emitter);
        }
        for out in emitter.drain() {
            assert_eq!(out.topic, Topic::SpecialOffers);
            offers.push(codec::decode::<Offer>(&out.value).unwrap());
        }
    }
    offers
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn absence_offers_fire_once_at_the_deadline_in_every_path(
        events in events(),
        restart in 0usize..60,
    ) {
        let want = expected(&events);
        let clicks: Vec<EnrichedClick> =
            events.iter().map(|&(ts, v, k)| click(ts, v, k)).collect();
        let mut backtest = DetectOperator::new(registry());
        let batch: Vec<Offer> = clicks.iter().flat_map(|c| backtest.detect(c)).collect();
        let live = through_the_runner(registry, &clicks, restart.min(clicks.len()));
        same_offers_once_each(&batch, &live, &want, keys)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn browse_abandonment_offers_the_product_once_at_the_deadline_in_every_path(
        events in browse_events(),
        restart in 0usize..80,
    ) {
        let want = browse_expected(&events);
        let clicks: Vec<EnrichedClick> =
            events.iter().map(|&(ts, v, p, add)| browse_click(ts, v, p, add)).collect();
        let mut backtest = DetectOperator::new(browse_registry());
        let batch: Vec<Offer> = clicks.iter().flat_map(|c| backtest.detect(c)).collect();
        let live = through_the_runner(browse_registry, &clicks, restart.min(clicks.len()));
        let with_product = |offers: &[Offer]| -> Vec<(String, i64, String)> {
            offers
                .iter()
                .map(|o| (o.visitor.clone(), o.ts_ms, o.product.clone().unwrap_or_default()))
                .collect()
        };
        same_offers_once_each(&batch, &live, &want, with_product)?;
    }
}

/// A pattern replaced while a match waits: the old version's deadline gives nothing (the match
/// is dropped, as the next event would drop it), in the runner's path too.
#[test]
fn a_replaced_pattern_s_waiting_match_gives_no_offer() {
    let registry = registry();
    let mut op = DetectOperator::new(registry.clone());
    let start = 1_330_560_000_000;
    assert!(op.detect(&click(start, 0, Kind::Add)).is_empty());
    registry
        .replace(PatternSet::parse([("cart.toml", &PATTERN.replace("15m", "20m")[..])]).unwrap());
    // Another visitor's event: it picks the new set up, and event time passes the old deadline.
    let offers = op.detect(&click(start + WAIT_MS + 1, 1, Kind::View));
    assert!(offers.is_empty(), "{offers:?}");
    let mut emitter = Emitter::default();
    op.on_watermark(start + 2 * WAIT_MS, &mut emitter);
    assert_eq!(emitter.drain().count(), 0);
}
