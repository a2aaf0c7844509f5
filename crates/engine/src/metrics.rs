//! Live per-stage counters for the stats endpoint.
//!
//! Runners update a [`StageMetrics`] after each commit; the HTTP server renders
//! [`PipelineMetrics::snapshot`]. Totals here mirror what the stage persisted, so after a
//! restart they continue from the checkpoint rather than from zero.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The window over which events/s is measured.
const RATE_WINDOW: Duration = Duration::from_secs(5);

/// Counters of one stage.
#[derive(Debug)]
pub struct StageMetrics {
    name: &'static str,
    events: AtomicU64,
    errors: AtomicU64,
    dead_letters: AtomicU64,
    lag: AtomicU64,
    done: AtomicBool,
    details: Mutex<Value>,
    samples: Mutex<VecDeque<(Instant, u64)>>,
    batch_seconds: Histogram,
    commit_seconds: Histogram,
}

/// Duration buckets from half a millisecond to about 16 s, doubling.
pub fn duration_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0005, 2.0, 16)
}

impl StageMetrics {
    fn new(name: &'static str) -> Self {
        StageMetrics {
            name,
            events: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            lag: AtomicU64::new(0),
            done: AtomicBool::new(false),
            details: Mutex::new(json!({})),
            samples: Mutex::new(VecDeque::new()),
            batch_seconds: Histogram::new(duration_buckets()),
            commit_seconds: Histogram::new(duration_buckets()),
        }
    }

    /// Counts how long one batch took, from reading its records to committing its results.
    pub fn observe_batch(&self, took: Duration) {
        self.batch_seconds.observe(took.as_secs_f64());
    }

    /// Counts how long one commit took (the store's transaction, or the brokers' and Redis').
    pub fn observe_commit(&self, took: Duration) {
        self.commit_seconds.observe(took.as_secs_f64());
    }

    /// The batch durations so far.
    pub fn batch_seconds(&self) -> &Histogram {
        &self.batch_seconds
    }

    /// The commit durations so far.
    pub fn commit_seconds(&self) -> &Histogram {
        &self.commit_seconds
    }

    /// The stage's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Records the stage's totals after a commit.
    pub fn record(&self, events: u64, dead_letters: u64, details: Value) {
        self.events.store(events, Ordering::Relaxed);
        self.dead_letters.store(dead_letters, Ordering::Relaxed);
        *self.details.lock().expect("metrics lock") = details;
        let now = Instant::now();
        let mut samples = self.samples.lock().expect("metrics lock");
        samples.push_back((now, events));
        while samples.len() > 2 && now.duration_since(samples[1].0) > RATE_WINDOW {
            samples.pop_front();
        }
    }

    /// Counts an error (a failed commit, an unreadable record).
    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets the number of records waiting in the stage's input.
    pub fn set_lag(&self, lag: u64) {
        self.lag.store(lag, Ordering::Relaxed);
    }

    /// Marks the stage as finished (a replay that reached the end of its log).
    pub fn set_done(&self, done: bool) {
        self.done.store(done, Ordering::Relaxed);
    }

    /// Total events processed.
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// Records waiting in the input.
    pub fn lag(&self) -> u64 {
        self.lag.load(Ordering::Relaxed)
    }

    /// One field of the stage's details (as last recorded).
    pub fn detail(&self, key: &str) -> Option<Value> {
        self.details.lock().expect("metrics lock").get(key).cloned()
    }

    /// Whether the stage is finished.
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::Relaxed)
    }

    /// Events per second over the last few seconds (decays to zero when the stage stalls).
    pub fn events_per_second(&self) -> f64 {
        let now = Instant::now();
        let samples = self.samples.lock().expect("metrics lock");
        let Some(&(_, latest)) = samples.back() else {
            return 0.0;
        };
        // The baseline is the newest sample older than the window, else the oldest one.
        let &(t0, e0) = samples
            .iter()
            .rev()
            .find(|(t, _)| now.duration_since(*t) >= RATE_WINDOW)
            .unwrap_or(&samples[0]);
        let secs = now.duration_since(t0).as_secs_f64();
        if secs < 0.001 {
            return 0.0;
        }
        latest.saturating_sub(e0) as f64 / secs
    }

    /// The stage's counters now.
    pub fn snapshot(&self) -> StageStats {
        StageStats {
            events: self.events(),
            events_per_second: (self.events_per_second() * 10.0).round() / 10.0,
            errors: self.errors.load(Ordering::Relaxed),
            dead_letters: self.dead_letters.load(Ordering::Relaxed),
            lag: self.lag(),
            done: self.is_done(),
            details: self.details.lock().expect("metrics lock").clone(),
        }
    }
}

/// A stage's counters, as `/api/stats` shows them and distributed workers publish them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageStats {
    /// Events processed (a source: published).
    pub events: u64,
    /// Over the last few seconds.
    pub events_per_second: f64,
    /// Failed commits and unreadable records.
    pub errors: u64,
    /// Records sent to the dead-letter topic.
    pub dead_letters: u64,
    /// Records waiting in the input.
    pub lag: u64,
    /// Whether the stage is finished (a replay at the end of its log).
    pub done: bool,
    /// The operator's own figures (its `stats()`); combine several with [`merge_details`].
    pub details: Value,
}

/// What one distributed worker publishes of a stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStats {
    /// The worker's id.
    pub worker: String,
    /// When it published, in unix ms.
    pub ts_ms: i64,
    /// Its counters.
    #[serde(flatten)]
    pub stats: StageStats,
}

/// The fields of a stage's details that are positions (an event time reached, a place in the
/// log), not amounts: several tasks' or workers' figures combine to the most advanced, never to
/// their sum.
pub const POSITION_FIELDS: &[&str] = &[
    "watermark_ms",
    "event_time_ms",
    "position",
    "log_events",
    "pass",
];

/// Combines several tasks' or workers' details: amounts are summed (also inside objects, key by
/// key), [`POSITION_FIELDS`] take the most advanced value, anything else is the first one's.
pub fn merge_details(values: &[Value]) -> Value {
    let mut merged = serde_json::Map::new();
    for v in values {
        let Some(obj) = v.as_object() else { continue };
        for (k, x) in obj {
            let position = POSITION_FIELDS.contains(&k.as_str());
            match (merged.get_mut(k), x) {
                (Some(Value::Number(a)), Value::Number(b)) if position => {
                    if let (Some(a), Some(b)) = (a.as_i64(), b.as_i64()) {
                        merged.insert(k.clone(), a.max(b).into());
                    }
                }
                (Some(Value::Null), Value::Number(_)) if position => {
                    merged.insert(k.clone(), x.clone());
                }
                (Some(Value::Number(a)), Value::Number(b)) => {
                    if let (Some(a), Some(b)) = (a.as_u64(), b.as_u64()) {
                        merged.insert(k.clone(), (a + b).into());
                    } else if let (Some(a), Some(b)) = (a.as_f64(), b.as_f64()) {
                        merged.insert(k.clone(), json!(a + b));
                    }
                }
                // Per-key amounts (detection's offers per pattern): merged key by key.
                (Some(a @ Value::Object(_)), Value::Object(_)) => {
                    *a = merge_details(&[a.clone(), x.clone()]);
                }
                (None, _) => {
                    merged.insert(k.clone(), x.clone());
                }
                _ => {}
            }
        }
    }
    Value::Object(merged)
}

/// The counters of every stage of a running pipeline.
#[derive(Debug)]
pub struct PipelineMetrics {
    started: Instant,
    stages: Mutex<Vec<Arc<StageMetrics>>>,
    topics: Mutex<Value>,
    offer_latency: Histogram,
}

impl Default for PipelineMetrics {
    fn default() -> Self {
        PipelineMetrics {
            started: Instant::now(),
            stages: Mutex::new(Vec::new()),
            topics: Mutex::new(json!({})),
            offer_latency: Histogram::new(duration_buckets()),
        }
    }
}

impl PipelineMetrics {
    /// Counts an offer delivered to the browsers `behind_ms` of event time after it was earned
    /// (its completing click or its deadline), the event clock running at `rate`: the latency
    /// in wall time.
    pub fn observe_offer_delivery(&self, behind_ms: i64, rate: f64) {
        let rate = if rate > 0.0 { rate } else { 1.0 };
        self.offer_latency
            .observe(behind_ms.max(0) as f64 / 1000.0 / rate);
    }

    /// The click-to-offer latencies so far.
    pub fn offer_latency_seconds(&self) -> &Histogram {
        &self.offer_latency
    }

    /// The metrics of stage `name`, created on first use.
    pub fn stage(&self, name: &'static str) -> Arc<StageMetrics> {
        let mut stages = self.stages.lock().expect("metrics lock");
        if let Some(s) = stages.iter().find(|s| s.name == name) {
            return s.clone();
        }
        let s = Arc::new(StageMetrics::new(name));
        stages.push(s.clone());
        s
    }

    /// Replaces the topic summary (record counts per topic).
    pub fn set_topics(&self, topics: Value) {
        *self.topics.lock().expect("metrics lock") = topics;
    }

    /// Every stage's metrics, in the order they were first asked for.
    pub fn stages(&self) -> Vec<Arc<StageMetrics>> {
        self.stages.lock().expect("metrics lock").clone()
    }

    /// Every stage and topic as JSON.
    pub fn snapshot(&self) -> Value {
        let stages: serde_json::Map<String, Value> = self
            .stages
            .lock()
            .expect("metrics lock")
            .iter()
            .map(|s| {
                let stats = serde_json::to_value(s.snapshot()).expect("stats serialize");
                (s.name.to_owned(), stats)
            })
            .collect();
        json!({
            "uptime_seconds": self.started.elapsed().as_secs(),
            "stages": stages,
            "topics": self.topics.lock().expect("metrics lock").clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_per_key_are_summed_key_by_key() {
        // Two detect tasks' offers per pattern: the first task's alone hid the second's.
        let merged = merge_details(&[
            json!({"offers": 3, "offers_by_pattern": {"a": 2, "b": 1}}),
            json!({"offers": 2, "offers_by_pattern": {"a": 1, "c": 1}}),
        ]);
        assert_eq!(
            merged,
            json!({"offers": 5, "offers_by_pattern": {"a": 3, "b": 1, "c": 1}})
        );
    }

    #[test]
    fn positions_combine_to_the_most_advanced_and_amounts_to_their_sum() {
        // Two detect tasks of one worker (two partitions): their watermarks are event times.
        // Summed, two 2012 watermarks made one in 2054.
        let merged = merge_details(&[
            json!({"events": 3, "watermark_ms": 1_330_588_800_000i64, "rate": 0.5, "mode": "a"}),
            json!({"events": 4, "watermark_ms": 1_330_588_900_000i64, "rate": 0.25, "mode": "b"}),
            json!({"events": 1, "watermark_ms": null}),
        ]);
        assert_eq!(merged["events"], 8);
        assert_eq!(merged["watermark_ms"], 1_330_588_900_000i64);
        assert_eq!(merged["rate"], 0.75);
        assert_eq!(merged["mode"], "a");
        // A task without a watermark yet does not hide another's.
        let merged = merge_details(&[
            json!({"watermark_ms": null}),
            json!({"watermark_ms": 5, "position": 9}),
        ]);
        assert_eq!(merged["watermark_ms"], 5);
        assert_eq!(merged["position"], 9);
    }

    #[test]
    fn what_a_worker_publishes_reads_back_as_it_was() {
        let metrics = PipelineMetrics::default();
        let stage = metrics.stage("detect");
        stage.record(10, 2, json!({"watermark_ms": 42}));
        stage.set_lag(3);
        let published = WorkerStats {
            worker: "w-1".into(),
            ts_ms: 7,
            stats: stage.snapshot(),
        };
        let text = serde_json::to_string(&published).unwrap();
        let flat: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(flat["worker"], "w-1");
        assert_eq!(flat["events"], 10);
        assert_eq!(flat["lag"], 3);
        assert_eq!(flat["details"]["watermark_ms"], 42);
        assert_eq!(
            serde_json::from_str::<WorkerStats>(&text).unwrap(),
            published
        );
    }
}
