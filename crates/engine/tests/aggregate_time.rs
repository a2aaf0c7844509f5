//! The aggregate's watermark across a restart and through a quiet live stream, with injected
//! wall time: a restarted stage releases what it holds (the `chaos --seed 5` stall), and in live
//! mode the windows move on with the sources' clock while nothing arrives.

use clickpulse_engine::topics::Topic;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clickpulse_engine::click::{Device, EnrichedClick, Gender};
use clickpulse_engine::operator::{Emitter, Operator, StateChanges, process_one};
use clickpulse_engine::window::dashboard::DashboardConfig;
use clickpulse_engine::window::{AggregateOperator, DashboardHandle, Frontier};
use serde_json::Value;

const IDLE: Duration = Duration::from_secs(5);

fn view(ts_ms: i64, visitor: &str) -> EnrichedClick {
    EnrichedClick {
        ts_ms,
        visitor: visitor.to_owned(),
        ip: "10.0.0.1".to_owned(),
        url: "http://www.acme.com/SH1/P1".to_owned(),
        product_id: Arc::from("P1"),
        category: Arc::from("clothing"),
        title: Arc::from("Title of P1"),
        known_visitor: true,
        gender: Gender::F,
        age: Some(30),
        country: Arc::from("usa"),
        city: None,
        region: None,
        device: Device::Desktop,
        event: clickpulse_engine::event::EventType::PageView,
        detail: None,
    }
}

fn config() -> DashboardConfig {
    DashboardConfig {
        allowed_lateness_ms: 5_000,
        idle_timeout: IDLE,
        partitions: 2,
        ..DashboardConfig::default()
    }
}

fn feed(op: &mut AggregateOperator, partition: u32, click: &EnrichedClick) {
    let value = clickpulse_engine::codec::encode(click);
    process_one(
        op,
        Topic::EnrichedClickData,
        partition,
        &value,
        Instant::now(),
        &mut Emitter::default(),
    )
    .expect("a valid view");
}

/// Polls and ticks once a second from `from` for `seconds` seconds (a runner listening to quiet
/// inputs: each poll reads nothing).
fn listen(op: &mut AggregateOperator, from: Instant, seconds: u64) {
    for s in 0..=seconds {
        op.on_poll();
        op.on_tick(from + Duration::from_secs(s), &mut Emitter::default());
    }
}

fn stat(op: &AggregateOperator, key: &str) -> Value {
    op.stats()[key].clone()
}

/// The stall `clickpulse chaos --log data/omniture/Omniture.4.tsv.zst --kills 20 --seed 5` hit:
/// the aggregate consumed everything, was killed before the watermark released the newest
/// views, and after the restart its inputs stayed quiet. The restored watermark came back, but
/// not what it is computed from, so nothing ever released them.
#[test]
fn a_restarted_aggregate_releases_what_it_holds_when_its_inputs_stay_quiet() {
    let views: Vec<(u32, EnrichedClick)> = (0..40)
        .map(|i| {
            (
                (i % 2) as u32,
                view(1_000_000 + i * 700, &format!("v{}", i % 7)),
            )
        })
        .collect();

    // Uninterrupted: everything arrives, the inputs go quiet, the stage releases it all.
    let handle = DashboardHandle::default();
    let mut uninterrupted = AggregateOperator::new(config(), handle.clone());
    for (p, v) in &views {
        feed(&mut uninterrupted, *p, v);
    }
    let t0 = Instant::now();
    listen(&mut uninterrupted, t0, 0);
    assert!(
        stat(&uninterrupted, "pending").as_u64().unwrap() > 0,
        "the newest views wait for the watermark"
    );
    listen(&mut uninterrupted, t0, IDLE.as_secs() + 1);
    assert_eq!(stat(&uninterrupted, "pending"), 0);

    // Interrupted: the same views, a checkpoint while the newest still wait, a restart.
    let mut first = AggregateOperator::new(config(), DashboardHandle::default());
    for (p, v) in &views {
        feed(&mut first, *p, v);
    }
    listen(&mut first, t0, 0);
    let held = stat(&first, "pending").as_u64().unwrap();
    assert!(held > 0);
    let mut changes = StateChanges::new();
    first.checkpoint(&mut changes);
    drop(first); // kill -9

    let restarted_handle = DashboardHandle::default();
    let mut restarted = AggregateOperator::new(config(), restarted_handle.clone());
    for (key, value) in &changes {
        restarted
            .restore(key, value.as_deref().expect("written"))
            .unwrap();
    }
    assert_eq!(stat(&restarted, "pending").as_u64().unwrap(), held);
    // Nothing more arrives. Once the inputs are idle the stage finishes what it holds.
    let t1 = Instant::now();
    listen(&mut restarted, t1, IDLE.as_secs() + 1);
    assert_eq!(stat(&restarted, "pending"), 0, "released after the restart");
    assert_eq!(
        stat(&restarted, "watermark_ms"),
        stat(&uninterrupted, "watermark_ms")
    );
    assert_eq!(restarted_handle.snapshot(), handle.snapshot());
}

/// The sources' frontier, as a test sets it.
#[derive(Clone, Default)]
struct Sources(Arc<Mutex<Option<Frontier>>>);

impl Sources {
    fn set(&self, low_ms: i64, drained: bool) {
        *self.0.lock().unwrap() = Some(Frontier {
            low_ms,
            drained,
            exact: true,
        });
    }
}

fn live(sources: &Sources, handle: &DashboardHandle) -> AggregateOperator {
    let sources = sources.clone();
    AggregateOperator::new(config(), handle.clone())
        .with_frontier(Arc::new(move || *sources.0.lock().unwrap()))
}

/// The handle's snapshot as the dashboard page reads it.
fn as_json(handle: &DashboardHandle) -> serde_json::Value {
    serde_json::to_value(handle.snapshot().as_deref()).unwrap()
}

fn snapshot_minutes(handle: &DashboardHandle) -> Vec<(i64, u64)> {
    as_json(handle)["page_views_per_minute"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["start_ms"].as_i64().unwrap(),
                m["views"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn live_windows_move_on_with_the_clock_through_a_quiet_stream() {
    let minute = 60_000;
    let start = 1_800_000_000_000 - 1_800_000_000_000 % minute;
    let sources = Sources::default();
    let handle = DashboardHandle::default();
    let mut op = live(&sources, &handle);
    // Before the replay says where it is, nothing moves.
    listen(&mut op, Instant::now(), 2);
    assert_eq!(stat(&op, "watermark_ms"), Value::Null);
    // Three views in the first minute; then nothing for ten minutes of the clock.
    for (i, p) in [0u32, 1, 0].into_iter().enumerate() {
        feed(&mut op, p, &view(start + 10_000 + i as i64 * 1_000, "a"));
    }
    let t0 = Instant::now();
    sources.set(start + 13_000, true);
    listen(&mut op, t0, 0);
    assert_eq!(
        stat(&op, "watermark_ms").as_i64(),
        Some(start + 12_000),
        "drained: the watermark follows the clock, below it"
    );
    assert_eq!(stat(&op, "pending"), 0);
    assert_eq!(as_json(&handle)["active_visitors_5m"], 1);
    // The clock runs on ten minutes with nothing published: the minutes move on and read zero,
    // and the visitor leaves the last five minutes.
    sources.set(start + 10 * minute + 13_000, true);
    listen(&mut op, t0 + Duration::from_secs(1), 0);
    assert_eq!(
        stat(&op, "watermark_ms").as_i64(),
        Some(start + 10 * minute + 12_000)
    );
    let minutes = snapshot_minutes(&handle);
    assert_eq!(minutes.last(), Some(&(start + 10 * minute, 0)));
    assert!(minutes.contains(&(start, 3)));
    assert_eq!(as_json(&handle)["active_visitors_5m"], 0);
    assert_eq!(as_json(&handle)["active_visitors_30m"], 1);
    // A live view stamped with the clock is on time.
    feed(&mut op, 1, &view(start + 10 * minute + 13_000, "b"));
    assert_eq!(stat(&op, "late_events"), 0);
}

#[test]
fn the_watermark_never_passes_what_a_source_has_yet_to_publish() {
    let sources = Sources::default();
    let handle = DashboardHandle::default();
    let mut op = live(&sources, &handle);
    // A replay catching up (its next event is an hour back) while live views arrive at now on
    // every partition: the live views wait, the catch-up is not late.
    let now = 1_800_000_000_000;
    sources.set(now - 3_600_000, false);
    feed(&mut op, 0, &view(now, "live-0"));
    feed(&mut op, 1, &view(now, "live-1"));
    let t0 = Instant::now();
    listen(&mut op, t0, IDLE.as_secs() * 3);
    assert!(stat(&op, "watermark_ms").as_i64().unwrap() < now - 3_600_000);
    feed(&mut op, 0, &view(now - 3_600_000, "replayed"));
    assert_eq!(stat(&op, "late_events"), 0);
    // Caught up: everything is released in order.
    sources.set(now + 2_000, true);
    listen(&mut op, t0 + Duration::from_secs(16), 0);
    assert_eq!(stat(&op, "pending"), 0);
    assert_eq!(stat(&op, "events"), 3);
}

/// Seen in a live demo: the frontier read at the tick, after the batch, said "drained, past X"
/// for a view at X that reached the aggregate's input after the batch was read; the next batch
/// found it late. The frontier is read before the inputs ([`Operator::on_poll`]).
#[test]
fn a_view_published_while_a_batch_was_read_is_not_late() {
    let sources = Sources::default();
    let handle = DashboardHandle::default();
    let mut op = live(&sources, &handle);
    let x = 1_800_000_000_000;
    feed(&mut op, 0, &view(x - 10_000, "early"));
    sources.set(x, true);
    let t0 = Instant::now();
    // One runner iteration: poll (the replay still holds the view at `x`), read nothing, tick.
    op.on_poll();
    // Meanwhile the view at `x` is published and enriched: the sources are past it, drained.
    sources.set(x + 5_000, true);
    op.on_tick(t0, &mut Emitter::default());
    assert!(stat(&op, "watermark_ms").as_i64().unwrap() < x);
    // The next iteration reads it.
    op.on_poll();
    feed(&mut op, 1, &view(x, "published-meanwhile"));
    op.on_tick(t0 + Duration::from_millis(100), &mut Emitter::default());
    assert_eq!(stat(&op, "late_events"), 0);
    assert_eq!(stat(&op, "pending"), 0);
    assert_eq!(stat(&op, "watermark_ms").as_i64(), Some(x + 4_000));
}

/// The attack: every view brings its own 3.9 KB country and its own product. The windows keep
/// at most `max_keys` of each; the rest count as `(other)`, and every view is still counted.
#[test]
fn free_text_keys_cannot_grow_the_windows() {
    use clickpulse_engine::window::dashboard::OTHER_KEY;
    let handle = DashboardHandle::default();
    let config = DashboardConfig {
        max_keys: 10,
        ..config()
    };
    let mut op = AggregateOperator::new(config, handle.clone());
    let t0 = Instant::now();
    let start = 1_800_000_000_000;
    for i in 0..2_000i64 {
        let mut v = view(start + i * 10, &format!("v{i}"));
        v.country = Arc::from(format!("{i:04}{}", "x".repeat(3_900)));
        v.product_id = Arc::from(format!("P{i}"));
        v.category = Arc::from(format!("cat-{i}"));
        feed(&mut op, (i % 2) as u32, &v);
    }
    op.on_poll();
    op.on_tick(t0, &mut Emitter::default());
    listen(&mut op, t0, IDLE.as_secs() + 1);
    let snap = as_json(&handle);
    let countries = snap["country_views_30m"].as_array().unwrap();
    assert_eq!(countries.len(), 11, "ten countries and (other)");
    let total: u64 = countries.iter().map(|c| c["views"].as_u64().unwrap()).sum();
    assert_eq!(total, 2_000, "every view counted");
    assert!(countries.iter().any(|c| c["country"] == OTHER_KEY));
    assert_eq!(snap["category_views_1h"].as_array().unwrap().len(), 11);
    let top = snap["top_products_1h"].as_array().unwrap();
    assert_eq!(top[0]["product_id"], OTHER_KEY, "{top:?}");
    assert_eq!(top[0]["views"], 1_990);
    // The checkpoint holds at most the capped keys' texts, not 2,000 of them.
    let mut changes = StateChanges::new();
    op.checkpoint(&mut changes);
    let state: usize = changes
        .iter()
        .filter_map(|(_, v)| v.as_ref().map(Vec::len))
        .sum();
    assert!(state < 2_000 * 3_900 / 10, "{state} bytes");
    // Restored, the caps hold the same keys: a new key is still (other), a held one is itself.
    let restored_handle = DashboardHandle::default();
    let mut restored = AggregateOperator::new(config, restored_handle.clone());
    for (k, v) in &changes {
        restored.restore(k, v.as_deref().unwrap()).unwrap();
    }
    let mut held = view(start + 30_000, "late-but-known");
    held.product_id = Arc::from("P0");
    let mut fresh = view(start + 30_000, "new");
    fresh.product_id = Arc::from("P-new");
    feed(&mut restored, 0, &held);
    feed(&mut restored, 1, &fresh);
    listen(&mut restored, Instant::now(), IDLE.as_secs() + 1);
    let top = as_json(&restored_handle)["top_products_1h"].clone();
    let views_of = |id: &str| {
        top.as_array()
            .unwrap()
            .iter()
            .find(|p| p["product_id"] == id)
            .map(|p| p["views"].as_u64().unwrap())
    };
    assert_eq!(views_of(OTHER_KEY), Some(1_991));
    assert_eq!(views_of("P-new"), None);
}

/// A checkpoint writes what changed, not the whole window state: with an hour of views held,
/// one more second of views writes a few panes' worth, and deletes the pane that left the hour.
#[test]
fn a_checkpoint_writes_what_changed_not_the_whole_window_state() {
    use std::collections::BTreeMap;
    let handle = DashboardHandle::default();
    let mut op = AggregateOperator::new(config(), handle.clone());
    let mut store: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let start = 1_800_000_000_000;
    let t0 = Instant::now();
    let mut checkpoint = |op: &mut AggregateOperator| {
        let mut changes = StateChanges::new();
        op.checkpoint(&mut changes);
        let mut written = 0;
        for (k, v) in changes {
            if k == "snapshot" {
                continue;
            }
            match v {
                Some(v) => {
                    written += v.len();
                    store.insert(k, v);
                }
                None => {
                    store.remove(&k);
                }
            }
        }
        (written, store.values().map(Vec::len).sum::<usize>())
    };
    // Two views a second for 70 minutes, one checkpoint a second.
    let mut last = (0, 0);
    for second in 0..4_200i64 {
        for (p, i) in [(0u32, 0i64), (1, 1)] {
            let ts = start + second * 1_000 + i * 400;
            feed(
                &mut op,
                p,
                &view(ts, &format!("v{}", (second * 2 + i) % 500)),
            );
        }
        op.on_poll();
        op.on_tick(t0, &mut Emitter::default());
        last = checkpoint(&mut op);
    }
    let (written, held) = last;
    println!("one second of 2 views: {written} bytes written; {held} bytes of window state held");
    assert!(held > 200_000, "an hour of panes is held: {held} bytes");
    assert!(
        written * 20 < held,
        "one second wrote {written} of {held} bytes"
    );
    // The store read back is the same state: the same snapshot once restored.
    let restored_handle = DashboardHandle::default();
    let mut restored = AggregateOperator::new(config(), restored_handle.clone());
    for (k, v) in &store {
        restored.restore(k, v).unwrap();
    }
    restored.on_poll();
    restored.on_tick(t0, &mut Emitter::default());
    assert_eq!(restored_handle.snapshot(), handle.snapshot());
    assert!(store.keys().filter(|k| k.starts_with("pane/")).count() <= 3_601);
}
