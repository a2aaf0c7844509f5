//! The event clock shared across processes in distributed mode: the replay publishes its
//! anchor in Redis, and collectors elsewhere stamp live clicks with it.

use std::time::{Duration, Instant};

use clickpulse_engine::replay::{EventClock, wall_clock_ms};
use serde::{Deserialize, Serialize};

/// The Redis key (after the prefix) of the published event clock.
pub const CLOCK_KEY: &str = "clock";

/// The event clock as published for other processes (the collectors stamp live clicks with it).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct PublishedClock {
    /// Event time at `wall_ms`.
    pub ts_ms: i64,
    /// Wall-clock unix ms of the anchor.
    pub wall_ms: i64,
    /// Event-time ms per wall ms.
    pub rate: f64,
    /// The replay's next unpublished event time as of this anchor (`None`: nothing left to
    /// publish). Events it publishes later are at or after it, also after a restart, which
    /// resumes from a saved position behind it and skips what it finds published.
    #[serde(default)]
    pub next_ms: Option<i64>,
}

impl PublishedClock {
    /// Sets `clock` to this anchor.
    pub fn apply(&self, clock: &EventClock) {
        let ago = Duration::from_millis((wall_clock_ms() - self.wall_ms).max(0) as u64);
        let wall = Instant::now().checked_sub(ago).unwrap_or_else(Instant::now);
        clock.set(self.ts_ms, wall, self.rate);
    }
}
