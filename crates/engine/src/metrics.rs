//! Live per-stage counters for the stats endpoint.
//!
//! Runners update a [`StageMetrics`] after each commit; the HTTP server renders
//! [`PipelineMetrics::snapshot`]. Totals here mirror what the stage persisted, so after a
//! restart they continue from the checkpoint rather than from zero.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
        }
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

    /// The stage as JSON.
    pub fn snapshot(&self) -> Value {
        json!({
            "events": self.events(),
            "events_per_second": (self.events_per_second() * 10.0).round() / 10.0,
            "errors": self.errors.load(Ordering::Relaxed),
            "dead_letters": self.dead_letters.load(Ordering::Relaxed),
            "lag": self.lag(),
            "done": self.is_done(),
            "details": self.details.lock().expect("metrics lock").clone(),
        })
    }
}

/// The counters of every stage of a running pipeline.
#[derive(Debug)]
pub struct PipelineMetrics {
    started: Instant,
    stages: Mutex<Vec<Arc<StageMetrics>>>,
    topics: Mutex<Value>,
}

impl Default for PipelineMetrics {
    fn default() -> Self {
        PipelineMetrics {
            started: Instant::now(),
            stages: Mutex::new(Vec::new()),
            topics: Mutex::new(json!({})),
        }
    }
}

impl PipelineMetrics {
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

    /// Every stage and topic as JSON.
    pub fn snapshot(&self) -> Value {
        let stages: serde_json::Map<String, Value> = self
            .stages
            .lock()
            .expect("metrics lock")
            .iter()
            .map(|s| (s.name.to_owned(), s.snapshot()))
            .collect();
        json!({
            "uptime_seconds": self.started.elapsed().as_secs(),
            "stages": stages,
            "topics": self.topics.lock().expect("metrics lock").clone(),
        })
    }
}
