//! The chaos run: one kill schedule over a [`Deployment`] and one comparison with the
//! uninterrupted backtest ([`Reference`]).
//!
//! Timing: the replay is paced (event-time speed, [`Reference::speed_for`]) so that the
//! planned kills fall inside the log — `kills × mean interval × 1.5` of wall time covers the
//! whole log's event time — and each life between two kills lasts a seeded random time (uniform
//! in 0.2–1.8 × the mean). A kill therefore lands anywhere: in a batch, in a commit, in a
//! checkpoint or in the recovery of the previous kill.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use clickpulse_engine::window::DashboardSnapshot;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};
use tracing::info;

use crate::Result;

/// When the run must be over: every wait checks it.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(pub Instant);

impl Deadline {
    /// Whether it has passed.
    pub fn passed(self) -> bool {
        Instant::now() >= self.0
    }

    /// The time left.
    pub fn remaining(self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }
}

/// What an uninterrupted backtest of the log computes.
#[derive(Debug, Clone)]
pub struct Reference {
    /// Events in the log.
    pub events: u64,
    /// The offers it fires.
    pub offers: BTreeSet<String>,
    /// The end-of-log dashboard.
    pub dashboard: DashboardSnapshot,
    /// The log's first and last event times.
    pub first_event_ms: i64,
    /// See `first_event_ms`.
    pub last_event_ms: i64,
}

impl Reference {
    /// The replay speed that spreads the log over `kills` lives of `mean` each, with half as
    /// much again to spare.
    pub fn speed_for(&self, kills: u32, mean: Duration) -> f64 {
        let span_ms = (self.last_event_ms - self.first_event_ms).max(1) as f64;
        let wall_ms = kills as f64 * mean.as_millis().max(1) as f64 * 1.5;
        (span_ms / wall_ms).max(1.0)
    }
}

/// How the run is scheduled.
#[derive(Debug, Clone)]
pub struct Plan {
    /// How many `kill -9`s.
    pub kills: u32,
    /// The seed of every random choice (life times, victims).
    pub seed: u64,
    /// The mean life between two kills.
    pub mean: Duration,
    /// How long the whole run may take.
    pub deadline: Duration,
}

/// How a life (the time between two kills) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Life {
    /// Still running through its planned time: it can be killed.
    Running,
    /// The pipeline exited by itself (it finished the log): nothing to kill this time.
    Exited,
    /// The run's deadline passed first.
    OutOfTime,
}

/// What a deployment observed at the end of a run.
#[derive(Debug, Default)]
pub struct Observed {
    /// Events in the first and in the last topic of the pipeline.
    pub events_in: u64,
    /// See `events_in`.
    pub events_out: u64,
    /// The offer ids delivered to the visitors' browsers.
    pub offers_delivered: BTreeSet<String>,
    /// Offers delivered or published more than once.
    pub duplicate_offers: u64,
    /// The end-of-log dashboard (`None` if none was published).
    pub dashboard: Option<DashboardSnapshot>,
    /// Checks that the durable state opened and read cleanly after a kill.
    pub store_checks: u32,
    /// Services restarted besides the pipeline's own processes.
    pub service_restarts: Vec<&'static str>,
    /// Webhook deliveries still in the outbox at the end (`endpoint/offer id`): with every
    /// delivery the receiver got, each offer must be one or the other (none lost).
    pub webhooks_pending: BTreeSet<String>,
}

/// A pipeline the schedule can run, kill and inspect: the embedded one
/// ([`crate::embedded::EmbeddedDeployment`]) or the distributed one
/// ([`crate::distributed::DistributedDeployment`]).
pub trait Deployment {
    /// `embedded` or `distributed`.
    fn mode(&self) -> &'static str;

    /// Runs for `planned` (what the pipeline's first life, or the life after a kill, gets),
    /// starting what the last kill stopped first.
    fn live(&mut self, planned: Duration, deadline: Deadline) -> Result<Life>;

    /// Kill number `kill` of `of`: `kill -9` of one of the pipeline's processes (picked with
    /// `rng`). Returns the events the replay had made durable by then.
    fn kill(&mut self, kill: u32, of: u32, rng: &mut ChaCha8Rng) -> Result<u64>;

    /// Lets the pipeline run to the end of the log; `Some(why)` when the deadline passed
    /// first, also before this call (see [`unfinished`]).
    fn finish(&mut self, reference: &Reference, deadline: Deadline) -> Result<Option<Value>>;

    /// What the pipeline delivered.
    fn observe(&mut self) -> Result<Observed>;

    /// Keeps what a failed run needs to be understood in the work dir (the processes' logs).
    fn keep_logs(&self) {}
}

/// Runs `plan` on `deployment` and compares the result with `reference`: the report's `ok` is
/// false on any difference (see [`Outcome::report`]).
pub fn run(
    plan: &Plan,
    reference: &Reference,
    deployment: &mut dyn Deployment,
    speed: f64,
) -> Result<Outcome> {
    let started = Instant::now();
    let deadline = Deadline(started + plan.deadline);
    let mut rng = ChaCha8Rng::seed_from_u64(plan.seed);
    let mut kill_points = Vec::new();
    while (kill_points.len() as u32) < plan.kills {
        let planned = plan.mean.mul_f64(rng.random_range(0.2..1.8));
        match deployment.live(planned, deadline)? {
            Life::Running => {}
            Life::Exited => continue,
            Life::OutOfTime => break,
        }
        let kill = kill_points.len() as u32 + 1;
        let replayed = deployment.kill(kill, plan.kills, &mut rng)?;
        info!(
            kill,
            replayed,
            life_ms = planned.as_millis() as u64,
            "kill -9"
        );
        kill_points.push(replayed);
    }
    // Out of time, the deadline has passed: `finish` then only says what was not done.
    let unfinished = deployment.finish(reference, deadline)?;
    Ok(Outcome {
        mode: deployment.mode(),
        kill_points,
        observed: deployment.observe()?,
        speed,
        unfinished,
        elapsed: started.elapsed(),
    })
}

/// What a chaos run observed.
#[derive(Debug)]
pub struct Outcome {
    mode: &'static str,
    /// Where the replay stood at each kill (events it had made durable).
    kill_points: Vec<u64>,
    observed: Observed,
    speed: f64,
    /// Set when the deadline passed first: why ([`unfinished`]).
    unfinished: Option<Value>,
    elapsed: Duration,
}

impl Outcome {
    /// The report: `ok` unless an event was lost or repeated, an offer is missing, unexpected
    /// or repeated, the dashboard differs, fewer kills were made than planned or the deadline
    /// passed.
    pub fn report(&self, plan: &Plan, reference: &Reference) -> Value {
        let o = &self.observed;
        let lost_events = reference
            .events
            .saturating_sub(o.events_in.min(o.events_out));
        let duplicate_events = o
            .events_in
            .max(o.events_out)
            .saturating_sub(reference.events);
        let missing: Vec<&String> = reference.offers.difference(&o.offers_delivered).collect();
        let unexpected: Vec<&String> = o.offers_delivered.difference(&reference.offers).collect();
        let snapshot_equal = o.dashboard.as_ref() == Some(&reference.dashboard);
        let kills = self.kill_points.len() as u32;
        let ok = self.unfinished.is_none()
            && kills >= plan.kills
            && lost_events == 0
            && duplicate_events == 0
            && o.duplicate_offers == 0
            && missing.is_empty()
            && unexpected.is_empty()
            && snapshot_equal;
        json!({
            "ok": ok,
            "mode": self.mode,
            "seed": plan.seed,
            "kills": kills,
            "events": reference.events,
            "offers_expected": reference.offers.len(),
            "offers_delivered": o.offers_delivered.len(),
            "lost_events": lost_events,
            "duplicate_events": duplicate_events,
            "duplicate_offers": o.duplicate_offers,
            "missing_offers": missing.iter().take(10).collect::<Vec<_>>(),
            "unexpected_offers": unexpected.iter().take(10).collect::<Vec<_>>(),
            "snapshot_equal": snapshot_equal,
            "store_checks": o.store_checks,
            "service_restarts": o.service_restarts,
            "webhooks_pending": o.webhooks_pending,
            "kill_points": self.kill_points,
            "replay_speed": self.speed.round(),
            "elapsed_ms": self.elapsed.as_millis() as u64,
            "unfinished": self.unfinished,
        })
    }
}

/// Why a run did not finish: the deadline of `deadline` passed while these stages (from the
/// pipeline's `/api/stats`) still had work.
pub fn unfinished(deadline: Duration, stats: Option<&Value>) -> Value {
    let stages = stats.map(|s| &s["stages"]);
    let not_done: Vec<Value> = ["replay", "enrich", "detect", "aggregate", "web"]
        .iter()
        .filter_map(|name| {
            let stage = &stages?[*name];
            let details = &stage["details"];
            let pending = details["pending"].as_u64().unwrap_or(0);
            let lag = stage["lag"].as_u64().unwrap_or(0);
            let replay_running = *name == "replay" && stage["done"] != true;
            (replay_running || lag > 0 || pending > 0).then(|| {
                json!({
                    "stage": name,
                    "events": stage["events"],
                    "lag": lag,
                    "pending": pending,
                    "watermark_ms": details["watermark_ms"],
                })
            })
        })
        .collect();
    json!({
        "reason": format!("the pipeline did not finish within the deadline of {}", humantime::format_duration(deadline)),
        "stages_not_done": not_done,
        "stats_available": stats.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deployment that exits by itself after `finishes_after` lives and counts what it is
    /// asked to do.
    struct Scripted {
        lives: u32,
        finishes_after: u32,
        kills: Vec<(u32, u32)>,
        dashboard: DashboardSnapshot,
    }

    impl Deployment for Scripted {
        fn mode(&self) -> &'static str {
            "scripted"
        }
        fn live(&mut self, _planned: Duration, _deadline: Deadline) -> Result<Life> {
            self.lives += 1;
            Ok(if self.lives == self.finishes_after {
                Life::Exited
            } else {
                Life::Running
            })
        }
        fn kill(&mut self, kill: u32, of: u32, _rng: &mut ChaCha8Rng) -> Result<u64> {
            self.kills.push((kill, of));
            Ok(u64::from(kill) * 10)
        }
        fn finish(&mut self, _: &Reference, _: Deadline) -> Result<Option<Value>> {
            Ok(None)
        }
        fn observe(&mut self) -> Result<Observed> {
            Ok(Observed {
                events_in: 5,
                events_out: 5,
                offers_delivered: ["o1".to_owned()].into(),
                dashboard: Some(self.dashboard.clone()),
                ..Observed::default()
            })
        }
    }

    fn reference() -> Reference {
        Reference {
            events: 5,
            offers: ["o1".to_owned()].into(),
            dashboard: DashboardSnapshot {
                now_ms: Some(60_000),
                ..DashboardSnapshot::default()
            },
            first_event_ms: 0,
            last_event_ms: 60_000,
        }
    }

    fn plan() -> Plan {
        Plan {
            kills: 3,
            seed: 7,
            mean: Duration::ZERO,
            deadline: Duration::from_secs(3600),
        }
    }

    #[test]
    fn every_planned_kill_is_made_and_a_life_that_finished_the_log_is_not_counted_as_one() {
        let reference = reference();
        let mut d = Scripted {
            lives: 0,
            finishes_after: 2,
            kills: Vec::new(),
            dashboard: reference.dashboard.clone(),
        };
        let outcome = run(&plan(), &reference, &mut d, 1.0).unwrap();
        assert_eq!(d.kills, vec![(1, 3), (2, 3), (3, 3)]);
        assert_eq!(d.lives, 4, "the second life exited by itself");
        let report = outcome.report(&plan(), &reference);
        assert_eq!(report["ok"], true, "{report}");
        assert_eq!(report["kill_points"], json!([10, 20, 30]));
    }

    #[test]
    fn a_different_dashboard_fails_the_run() {
        let reference = reference();
        let mut d = Scripted {
            lives: 0,
            finishes_after: 0,
            kills: Vec::new(),
            dashboard: DashboardSnapshot::default(),
        };
        let report = run(&plan(), &reference, &mut d, 1.0)
            .unwrap()
            .report(&plan(), &reference);
        assert_eq!(report["ok"], false);
        assert_eq!(report["snapshot_equal"], false);
    }
}
