//! Property: for random event sets — page views and interactions, out of order across
//! partitions, with late events and a checkpoint/restore in the middle — the streamed dashboard
//! (view windows, and sessions, sources and conversions) equals a batch recomputation from the
//! definitions over the same events, at every watermark it is checked at.

use clickpulse_engine::topics::Topic;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clickpulse_engine::click::{Device, EnrichedClick, Gender};
use clickpulse_engine::event::{EventDetail, EventProduct, EventType, LineItem, Order, Utm};
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
    kind: usize,
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
        event: EventType::PageView,
        detail: None,
    }
    .with_kind(kind, product)
}

/// Turns a page view into the event of `kind`: most stay page views without detail; the
/// others carry a referrer, a campaign, a client session id, or are interactions.
trait WithKind {
    fn with_kind(self, kind: usize, product: usize) -> Self;
}

impl WithKind for EnrichedClick {
    fn with_kind(mut self, kind: usize, product: usize) -> Self {
        let p = self.product_id.to_string();
        let product_detail = || EventProduct {
            id: Some(p.clone()),
            price: Some(9.99),
            quantity: Some(1),
            currency: Some("EUR".into()),
            ..EventProduct::default()
        };
        let (event, detail) = match kind {
            0..=5 => return self,
            6 => (
                EventType::PageView,
                EventDetail {
                    referrer: Some(
                        [
                            "https://www.google.com/search?q=x",
                            "https://blog.example.org/post",
                            "http://www.acme.com/SH1/P2",
                        ][product % 3]
                            .into(),
                    ),
                    ..EventDetail::default()
                },
            ),
            7 => (
                EventType::PageView,
                EventDetail {
                    utm: Some(Utm {
                        source: Some(["newsletter", "facebook"][product % 2].into()),
                        medium: Some(["email", "social"][product % 2].into()),
                        campaign: Some("spring".into()),
                        ..Utm::default()
                    }),
                    ..EventDetail::default()
                },
            ),
            8 => (
                EventType::AddToCart,
                EventDetail {
                    product: Some(product_detail()),
                    ..EventDetail::default()
                },
            ),
            9 => (
                EventType::RemoveFromCart,
                EventDetail {
                    product: Some(product_detail()),
                    ..EventDetail::default()
                },
            ),
            10 => (EventType::BeginCheckout, EventDetail::default()),
            11 => (
                EventType::Purchase,
                EventDetail {
                    order: Some(Order {
                        id: format!("O{}", product % 4),
                        revenue: 12.34 + product as f64,
                        currency: Some(["EUR", "USD"][product % 2].into()),
                        items: vec![LineItem {
                            product_id: p.clone(),
                            category: None,
                            price: Some(6.17),
                            quantity: 2,
                        }],
                    }),
                    ..EventDetail::default()
                },
            ),
            12 => (
                EventType::Search,
                EventDetail {
                    query: Some(["  Red  SHOES ", "boots", "red shoes"][product % 3].into()),
                    ..EventDetail::default()
                },
            ),
            13 => (
                EventType::parse("newsletter_signup").unwrap(),
                EventDetail::default(),
            ),
            _ => (
                EventType::PageView,
                EventDetail {
                    session_id: Some(format!("s{}", product % 2)),
                    ..EventDetail::default()
                },
            ),
        };
        self.event = event;
        self.detail = Some(Box::new(detail));
        self
    }
}

/// The path of a test URL.
fn path(url: &str) -> &str {
    url.strip_prefix("http://www.acme.com").unwrap()
}

/// Sessions, sources and conversions straight from their definitions (see
/// `clickpulse_engine::window::shop`).
fn batch_shop(upto: &[(usize, &EnrichedClick)], now: i64) -> Value {
    const GAP: i64 = 30 * MIN;
    let current = now.div_euclid(MIN) * MIN;
    let in_hour = |ts: i64| {
        let m = ts.div_euclid(MIN) * MIN;
        current - 59 * MIN <= m && m <= current && ts <= now
    };
    let mut ordered = upto.to_vec();
    ordered.sort_by(|(i, a), (j, b)| {
        (a.ts_ms, &a.visitor, &a.product_id, &a.ip, i).cmp(&(
            b.ts_ms,
            &b.visitor,
            &b.product_id,
            &b.ip,
            j,
        ))
    });
    let mut funnel: Vec<(i64, String, usize, Option<i64>)> = Vec::new();
    let mut by_visitor: BTreeMap<&str, Vec<&EnrichedClick>> = BTreeMap::new();
    for (_, c) in &ordered {
        by_visitor.entry(c.visitor.as_str()).or_default().push(c);
    }
    type Tally = BTreeMap<String, i64>;
    let bump = |t: &mut Tally, k: &str| *t.entry(k.to_owned()).or_default() += 1;
    let (mut started, mut ended, mut duration, mut pages_sum, mut bounces, mut active) =
        (0, 0, 0, 0, 0, 0);
    let (mut sources, mut hosts, mut utm_s, mut utm_m, mut utm_c, mut entries, mut exits) = (
        Tally::new(),
        Tally::new(),
        Tally::new(),
        Tally::new(),
        Tally::new(),
        Tally::new(),
        Tally::new(),
    );
    for events in by_visitor.values() {
        // Split into sessions: a gap over 30 minutes, or another client session id.
        let mut sessions: Vec<(Vec<&EnrichedClick>, Option<i64>)> = Vec::new();
        let mut current_id: Option<String> = None;
        for (k, c) in events.iter().enumerate() {
            let id = c.detail.as_ref().and_then(|d| d.session_id.clone());
            let new = match sessions.last() {
                None => true,
                Some((s, _)) => {
                    let last = s.last().unwrap().ts_ms;
                    let gap = c.ts_ms - last > GAP;
                    let other = matches!((&current_id, &id), (Some(a), Some(b)) if a != b);
                    if gap || other {
                        // The session closed: at its last event plus the gap, or at this event.
                        sessions.last_mut().unwrap().1 =
                            Some(if gap { last + GAP } else { c.ts_ms });
                    }
                    gap || other
                }
            };
            if new {
                sessions.push((Vec::new(), None));
                current_id = None;
            }
            if current_id.is_none() {
                current_id = id;
            }
            sessions.last_mut().unwrap().0.push(c);
            let _ = k;
        }
        if let Some((s, closed)) = sessions.last_mut() {
            let last = s.last().unwrap().ts_ms;
            if closed.is_none() && last + GAP <= now {
                *closed = Some(last + GAP);
            }
        }
        for (s, _) in &sessions {
            // The funnel: each step reached by an event after the one that reached the step
            // before, one step per event.
            let mut at: Option<i64> = None;
            let mut next = 0;
            for c in s {
                if next < FUNNEL_STEPS && funnel_step(c, next) {
                    funnel.push((c.ts_ms, c.visitor.clone(), next, at.map(|a| c.ts_ms - a)));
                    at = Some(c.ts_ms);
                    next += 1;
                }
            }
        }
        for (s, closed) in &sessions {
            let first = s[0];
            if in_hour(first.ts_ms) {
                started += 1;
                let medium =
                    match clickpulse_engine::source::classify(&first.url, first.detail.as_deref())
                        .medium
                    {
                        clickpulse_engine::source::Medium::Internal => {
                            clickpulse_engine::source::Medium::Direct
                        }
                        m => m,
                    };
                bump(&mut sources, medium.as_str());
                if medium != clickpulse_engine::source::Medium::Direct
                    && let Some(d) = first.detail.as_deref()
                {
                    if let Some(h) = d
                        .referrer
                        .as_deref()
                        .and_then(clickpulse_engine::source::host_of)
                    {
                        bump(&mut hosts, &h);
                    }
                    if let Some(u) = &d.utm {
                        for (t, v) in [
                            (&mut utm_s, &u.source),
                            (&mut utm_m, &u.medium),
                            (&mut utm_c, &u.campaign),
                        ] {
                            if let Some(v) = v {
                                bump(t, v)
                            }
                        }
                    }
                }
            }
            let views: Vec<&&EnrichedClick> = s.iter().filter(|c| c.event.is_page_view()).collect();
            if let Some(v) = views.first()
                && in_hour(v.ts_ms)
            {
                bump(&mut entries, path(&v.url));
            }
            match closed {
                Some(at) => {
                    if in_hour(*at) {
                        ended += 1;
                        duration += s.last().unwrap().ts_ms - first.ts_ms;
                        pages_sum += views.len() as i64;
                        bounces += i64::from(views.len() == 1);
                        if let Some(v) = views.last() {
                            bump(&mut exits, path(&v.url));
                        }
                    }
                }
                None => active += 1,
            }
        }
    }
    let ranked = |t: &Tally, top: usize| {
        let mut v: Vec<(&String, &i64)> = t.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        v.into_iter()
            .take(top)
            .map(|(k, n)| json!({"key": k, "count": n}))
            .collect::<Vec<_>>()
    };
    // Conversions, an order id counting once within the hour of minutes before it.
    let mut counted: Vec<(i64, &str)> = Vec::new();
    let mut by_minute: BTreeMap<i64, [i64; 6]> = BTreeMap::new();
    let mut revenue: BTreeMap<i64, BTreeMap<String, (i64, i64)>> = BTreeMap::new();
    let mut products: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let mut queries = Tally::new();
    let mut custom = Tally::new();
    for (_, c) in &ordered {
        let m = c.ts_ms.div_euclid(MIN) * MIN;
        let slot = match &c.event {
            EventType::AddToCart => 0,
            EventType::RemoveFromCart => 1,
            EventType::BeginCheckout => 2,
            EventType::Purchase => {
                let order = c.detail.as_ref().unwrap().order.as_ref().unwrap();
                if counted
                    .iter()
                    .any(|(at, id)| *id == order.id && *at >= m - 59 * MIN)
                {
                    continue;
                }
                counted.push((m, &order.id));
                if in_hour(c.ts_ms) {
                    let cur = order.currency.clone().unwrap_or_default();
                    let e = revenue.entry(m).or_default().entry(cur).or_default();
                    e.0 += (order.revenue * 100.0).round() as i64;
                    e.1 += 1;
                    for item in &order.items {
                        let p = products.entry(item.product_id.clone()).or_default();
                        p.0 += (item.price.unwrap() * item.quantity as f64 * 100.0).round() as i64;
                        p.1 += i64::from(item.quantity);
                    }
                }
                3
            }
            EventType::Search => {
                if in_hour(c.ts_ms) {
                    let q = c.detail.as_ref().unwrap().query.as_deref().unwrap();
                    bump(
                        &mut queries,
                        &q.split_whitespace()
                            .map(str::to_lowercase)
                            .collect::<Vec<_>>()
                            .join(" "),
                    );
                }
                4
            }
            EventType::Custom(name) => {
                if in_hour(c.ts_ms) {
                    bump(&mut custom, name);
                }
                5
            }
            EventType::PageView => continue,
        };
        by_minute.entry(m).or_default()[slot] += 1;
    }
    let money = |per: &BTreeMap<String, (i64, i64)>| {
        per.iter()
            .map(|(c, (h, n))| json!({"currency": c, "hundredths": h, "orders": n}))
            .collect::<Vec<_>>()
    };
    let per_minute: Vec<Value> = (0..15)
        .rev()
        .map(|k| {
            let s = current - k * MIN;
            let n = by_minute.get(&s).copied().unwrap_or_default();
            json!({"start_ms": s, "add_to_cart": n[0], "begin_checkout": n[2], "purchases": n[3],
                   "revenue": money(&revenue.get(&s).cloned().unwrap_or_default()), "final": s + MIN <= now})
        })
        .collect();
    let hour_sum = |slot: usize| {
        by_minute
            .iter()
            .filter(|(m, _)| in_hour(**m))
            .map(|(_, n)| n[slot])
            .sum::<i64>()
    };
    let mut hour_revenue: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for per in revenue.values() {
        for (c, (h, n)) in per {
            let e = hour_revenue.entry(c.clone()).or_default();
            e.0 += h;
            e.1 += n;
        }
    }
    let viewed: HashSet<&str> = upto
        .iter()
        .filter(|(_, c)| c.event.is_page_view())
        .map(|(_, c)| &*c.product_id)
        .collect();
    let mut top: Vec<(&String, &(i64, i64))> = products.iter().collect();
    top.sort_by(|a, b| {
        (b.1)
            .0
            .cmp(&(a.1).0)
            .then((b.1).1.cmp(&(a.1).1))
            .then(a.0.cmp(b.0))
    });
    let top: Vec<Value> = top
        .into_iter()
        .take(10)
        .map(|(p, (h, units))| {
            let title = if viewed.contains(p.as_str()) {
                format!("Title of {p}")
            } else {
                "Unknown".into()
            };
            json!({"product_id": p, "title": title, "units": units, "hundredths": h})
        })
        .collect();
    json!({
        "active_sessions": active,
        "sessions_1h": {"started": started, "ended": ended, "duration_ms": duration, "pages": pages_sum, "bounces": bounces},
        "entry_pages_1h": ranked(&entries, 10),
        "exit_pages_1h": ranked(&exits, 10),
        "sources_1h": ranked(&sources, 7),
        "referrer_hosts_1h": ranked(&hosts, 10),
        "utm_sources_1h": ranked(&utm_s, 10),
        "utm_mediums_1h": ranked(&utm_m, 10),
        "utm_campaigns_1h": ranked(&utm_c, 10),
        "conversions_per_minute": per_minute,
        "conversions_1h": {
            "add_to_cart": hour_sum(0), "remove_from_cart": hour_sum(1), "begin_checkout": hour_sum(2),
            "purchases": hour_sum(3), "searches": hour_sum(4), "revenue": money(&hour_revenue),
        },
        "top_products_by_revenue_1h": top,
        "top_queries_1h": ranked(&queries, 10),
        "custom_events_1h": ranked(&custom, 10),
        "funnels_1h": [{
            "name": "test",
            "description": "shoes, cart, checkout, order",
            "steps": (0..FUNNEL_STEPS).map(|step| {
                let reached: Vec<&(i64, String, usize, Option<i64>)> =
                    funnel.iter().filter(|(ts, _, s, _)| *s == step && in_hour(*ts)).collect();
                let visitors: HashSet<&str> = reached.iter().map(|(_, v, _, _)| v.as_str()).collect();
                let mut times: Vec<i64> = reached.iter().filter_map(|(_, _, _, t)| *t).collect();
                times.sort_unstable();
                json!({
                    "name": (["Shoes", "Cart", "Checkout", "Order"][step]),
                    "visitors": visitors.len(),
                    "median_ms_from_previous": (!times.is_empty()).then(|| times[(times.len() - 1) / 2]),
                })
            }).collect::<Vec<_>>(),
        }],
    })
}

/// The dashboard straight from its definitions. `applied` are the non-late events, in arrival
/// order; `now` the watermark.
fn batch(applied: &[EnrichedClick], offers: &[Offer], now: i64) -> Value {
    let all: Vec<(usize, &EnrichedClick)> = applied
        .iter()
        .enumerate()
        .filter(|(_, c)| c.ts_ms <= now)
        .collect();
    // The view windows count page views.
    let upto: Vec<(usize, &EnrichedClick)> = all
        .iter()
        .copied()
        .filter(|(_, c)| c.event.is_page_view())
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
        "shop": batch_shop(&all, now),
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
        kind: usize,
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
        8 => (0u32..3, prop_oneof![0i64..2_000, 0i64..120_000, 0i64..1_200_000], 0usize..30, 0usize..12, 0usize..5, 0usize..3, 0usize..15)
            .prop_map(|(partition, gap_ms, visitor, product, device, country, kind)| Step::Click { partition, gap_ms, visitor, product, device, country, kind }),
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

/// The funnel the streamed side counts, and its definition for the batch side.
const FUNNEL: &str = r#"
name = "test"
description = "shoes, cart, checkout, order"
[[step]]
name = "Shoes"
when = { category = "shoes" }
[[step]]
name = "Cart"
when = { type = "add_to_cart" }
[[step]]
name = "Checkout"
when = { type = "begin_checkout" }
[[step]]
name = "Order"
when = { type = "purchase" }
"#;
const FUNNEL_STEPS: usize = 4;

fn funnel_step(c: &EnrichedClick, step: usize) -> bool {
    match step {
        0 => c.event.is_page_view() && &*c.category == "shoes",
        1 => c.event == EventType::AddToCart,
        2 => c.event == EventType::BeginCheckout,
        _ => c.event == EventType::Purchase,
    }
}

fn funnels() -> clickpulse_engine::funnel::FunnelRegistry {
    clickpulse_engine::funnel::FunnelRegistry::new(
        clickpulse_engine::funnel::FunnelSet::parse([("test.toml", FUNNEL)]).unwrap(),
    )
}

fn operator() -> AggregateOperator {
    AggregateOperator::new(config(), DashboardHandle::default()).with_funnels(funnels())
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
                Step::Click { partition, gap_ms, visitor, product, device, country, kind } => {
                    clocks[partition as usize] += gap_ms;
                    let c = click(clocks[partition as usize], visitor, product, device, country, kind);
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
                        let c = click(w - 1_000, visitor, 0, 0, 0, 0);
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
                        product: None,
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
        let mut kept = DashboardAggregator::new(config(), Instant::now()).with_funnels(funnels());
        let mut on_read = DashboardAggregator::new(config(), Instant::now())
            .sliding_windows_on_read()
            .with_funnels(funnels());
        let wall = Instant::now();
        let mut clocks = [1_331_000_000_000i64; 3];
        let mut offers = 0usize;
        for s in steps {
            match s {
                Step::Click { partition, gap_ms, visitor, product, device, country, kind } => {
                    clocks[partition as usize] += gap_ms;
                    let c = click(clocks[partition as usize], visitor, product, device, country, kind);
                    on_read.on_click_ref(partition, &c.borrowed(), wall);
                    kept.on_click(partition, c, wall);
                }
                Step::Late { visitor } => {
                    if let Some(w) = kept.now() {
                        let c = click(w - 1_000, visitor, 0, 0, 0, 0);
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
                        product: None,
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
