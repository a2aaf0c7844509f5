//! The webhook outbox's pure core: which deliveries are due, and what an attempt's outcome
//! means for each (delivered; tried again on the Standard Webhooks schedule with jitter, no
//! sooner than a `Retry-After`; dead-lettered after the last attempt; the endpoint disabled by a
//! 410). No I/O and no clock: the sender hands it the wall time and the jitter, and persists
//! the entries it changes (each entry serializes on its own), so a restarted sender resumes
//! every delivery where it was: at least once, with the same `webhook-id` (the offer id) for
//! the receivers to de-duplicate.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The delays before each retry (Standard Webhooks' recommended schedule: at once, then after
/// 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and 10 h — eight attempts over about 27 hours).
pub const SCHEDULE: [Duration; 7] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
];

/// The most a `Retry-After` may push one retry out (a receiver cannot park a delivery for
/// ever).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// How attempts are retried.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// The delay before each retry; attempts are one more than its length.
    pub schedule: Vec<Duration>,
    /// Each delay is stretched or shrunk by up to this fraction (0.2: ±20 %), so that
    /// deliveries failed together are not retried together.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            schedule: SCHEDULE.to_vec(),
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// Attempts in all.
    pub fn attempts(&self) -> u32 {
        self.schedule.len() as u32 + 1
    }

    /// When attempt `attempts + 1` is due after attempt `attempts` failed at `now_ms`, with
    /// `jitter` in [-1, 1] (the sender's random draw) and the receiver's `Retry-After`; `None`
    /// after the last attempt.
    pub fn next_at(
        &self,
        attempts: u32,
        now_ms: i64,
        jitter: f64,
        retry_after: Option<Duration>,
    ) -> Option<i64> {
        let delay = self.schedule.get(attempts.checked_sub(1)? as usize)?;
        let stretched = delay.as_secs_f64() * (1.0 + self.jitter * jitter.clamp(-1.0, 1.0));
        let at_least = retry_after.map_or(0.0, |r| r.min(MAX_RETRY_AFTER).as_secs_f64());
        Some(now_ms + (stretched.max(at_least) * 1000.0) as i64)
    }
}

/// What one attempt got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx.
    Delivered,
    /// `410 Gone`: the receiver wants no more; the endpoint is disabled.
    Gone,
    /// Anything else: another status (a 429 or 5xx worth waiting for, another 4xx that may be
    /// fixed meanwhile), a timeout, a refused connection. `retry_after` from the response.
    Failed {
        /// The reason, for the dead letter and the logs.
        reason: String,
        /// The receiver's `Retry-After`.
        retry_after: Option<Duration>,
    },
}

impl Outcome {
    /// The outcome of a response with `status` (and its `Retry-After`).
    pub fn of_status(status: u16, retry_after: Option<Duration>) -> Outcome {
        match status {
            200..=299 => Outcome::Delivered,
            410 => Outcome::Gone,
            _ => Outcome::Failed {
                reason: format!("the endpoint answered {status}"),
                retry_after,
            },
        }
    }
}

/// A `Retry-After` header's delay: seconds, or an HTTP date (`now_s`: the Unix time now).
pub fn parse_retry_after(value: &str, now_s: i64) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value)
        .ok()?
        .timestamp();
    Some(Duration::from_secs((at - now_s).max(0) as u64))
}

/// One message to one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The endpoint's name.
    pub endpoint: String,
    /// The `webhook-id`: the offer's id, the same on every attempt.
    pub id: String,
    /// The body, as sent on every attempt.
    pub body: String,
    /// Attempts made.
    pub attempts: u32,
    /// When the next attempt is due (wall clock, Unix ms).
    pub due_ms: i64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
}

/// What settling an attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Delivered: the entry is gone.
    Delivered(Entry),
    /// To be tried again at `due_ms` (the entry, updated, stays).
    Retrying(Entry),
    /// The attempts are spent: the entry is gone, to the dead letters with its last error.
    DeadLetter(Entry),
    /// A 410: the endpoint is disabled and its entries are gone, to the dead letters.
    Disabled(Vec<Entry>),
    /// No such entry (settled twice).
    Unknown,
}

/// Every pending delivery, by endpoint and id.
#[derive(Debug, Clone, Default)]
pub struct Outbox {
    entries: BTreeMap<(String, String), Entry>,
    due: BTreeSet<(i64, String, String)>,
    in_flight: BTreeSet<(String, String)>,
    disabled: BTreeSet<String>,
    policy: RetryPolicy,
}

impl Outbox {
    /// An empty outbox retrying by `policy`.
    pub fn new(policy: RetryPolicy) -> Outbox {
        Outbox {
            policy,
            ..Outbox::default()
        }
    }

    /// Puts back entries as persisted (a restart), and the endpoints disabled before.
    pub fn restore(
        &mut self,
        entries: impl IntoIterator<Item = Entry>,
        disabled: impl IntoIterator<Item = String>,
    ) {
        self.disabled.extend(disabled);
        for e in entries {
            self.insert(e);
        }
    }

    fn insert(&mut self, e: Entry) {
        self.due
            .insert((e.due_ms, e.endpoint.clone(), e.id.clone()));
        self.entries.insert((e.endpoint.clone(), e.id.clone()), e);
    }

    /// Adds a message for `endpoint`, due at once; `None` when it is already pending (the same
    /// offer read again after a restart) or the endpoint is disabled.
    pub fn enqueue(
        &mut self,
        endpoint: &str,
        id: &str,
        body: String,
        now_ms: i64,
    ) -> Option<Entry> {
        let key = (endpoint.to_owned(), id.to_owned());
        if self.disabled.contains(endpoint) || self.entries.contains_key(&key) {
            return None;
        }
        let entry = Entry {
            endpoint: endpoint.to_owned(),
            id: id.to_owned(),
            body,
            attempts: 0,
            due_ms: now_ms,
            last_error: None,
        };
        self.insert(entry.clone());
        Some(entry)
    }

    /// Takes the entries due at `now_ms` that are not being attempted, oldest due first, at
    /// most `limit(endpoint)` in flight per endpoint (its concurrency) counting those already
    /// out; they are in flight until settled.
    pub fn take_due(&mut self, now_ms: i64, limit: impl Fn(&str) -> usize) -> Vec<Entry> {
        let mut taken = Vec::new();
        let mut busy: BTreeMap<String, usize> = BTreeMap::new();
        for (endpoint, _) in &self.in_flight {
            *busy.entry(endpoint.clone()).or_default() += 1;
        }
        let ready: Vec<(i64, String, String)> = self
            .due
            .iter()
            .take_while(|(due, _, _)| *due <= now_ms)
            .cloned()
            .collect();
        for key in ready {
            let n = busy.entry(key.1.clone()).or_default();
            if *n >= limit(&key.1) {
                continue;
            }
            *n += 1;
            self.due.remove(&key);
            let (_, endpoint, id) = key;
            self.in_flight.insert((endpoint.clone(), id.clone()));
            taken.push(self.entries[&(endpoint, id)].clone());
        }
        taken
    }

    /// When the next entry not in flight is due.
    pub fn next_due_ms(&self) -> Option<i64> {
        self.due.first().map(|(due, _, _)| *due)
    }

    /// Records what the attempt of `endpoint`/`id` made at `now_ms` got (`jitter` in [-1, 1]).
    pub fn settle(
        &mut self,
        endpoint: &str,
        id: &str,
        outcome: Outcome,
        now_ms: i64,
        jitter: f64,
    ) -> Settled {
        let key = (endpoint.to_owned(), id.to_owned());
        self.in_flight.remove(&key);
        let Some(mut entry) = self.entries.remove(&key) else {
            return Settled::Unknown;
        };
        self.due
            .remove(&(entry.due_ms, key.0.clone(), key.1.clone()));
        entry.attempts += 1;
        match outcome {
            Outcome::Delivered => Settled::Delivered(entry),
            Outcome::Gone => {
                entry.last_error = Some("the endpoint answered 410 Gone".to_owned());
                self.disabled.insert(endpoint.to_owned());
                let mut gone = vec![entry];
                let rest: Vec<(String, String)> = self
                    .entries
                    .keys()
                    .filter(|(e, _)| e == endpoint)
                    .cloned()
                    .collect();
                for k in rest {
                    let e = self.entries.remove(&k).expect("listed");
                    self.due.remove(&(e.due_ms, k.0.clone(), k.1.clone()));
                    self.in_flight.remove(&k);
                    gone.push(e);
                }
                Settled::Disabled(gone)
            }
            Outcome::Failed {
                reason,
                retry_after,
            } => {
                entry.last_error = Some(reason);
                match self
                    .policy
                    .next_at(entry.attempts, now_ms, jitter, retry_after)
                {
                    Some(due) => {
                        entry.due_ms = due;
                        self.insert(entry.clone());
                        Settled::Retrying(entry)
                    }
                    None => Settled::DeadLetter(entry),
                }
            }
        }
    }

    /// The pending entry of `endpoint`/`id`.
    pub fn get(&self, endpoint: &str, id: &str) -> Option<&Entry> {
        self.entries.get(&(endpoint.to_owned(), id.to_owned()))
    }

    /// Re-enables `endpoint` after a 410 (a replay asked to); whether it was disabled.
    pub fn enable(&mut self, endpoint: &str) -> bool {
        self.disabled.remove(endpoint)
    }

    /// Puts a dead-lettered entry back, due at `now_ms` with its attempts reset; `false` when
    /// it is pending already or its endpoint is disabled.
    pub fn requeue(&mut self, mut entry: Entry, now_ms: i64) -> bool {
        let key = (entry.endpoint.clone(), entry.id.clone());
        if self.disabled.contains(&entry.endpoint) || self.entries.contains_key(&key) {
            return false;
        }
        entry.attempts = 0;
        entry.due_ms = now_ms;
        self.insert(entry);
        true
    }

    /// Whether `endpoint` was disabled by a 410.
    pub fn is_disabled(&self, endpoint: &str) -> bool {
        self.disabled.contains(endpoint)
    }

    /// Entries pending (in flight or waiting).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const S: i64 = 1_000;

    fn failed(retry_after: Option<u64>) -> Outcome {
        Outcome::Failed {
            reason: "the endpoint answered 503".to_owned(),
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    #[test]
    fn a_failing_delivery_follows_the_schedule_then_goes_to_the_dead_letters() {
        let mut outbox = Outbox::new(RetryPolicy::default());
        outbox
            .enqueue("crm", "offer-1", "{}".to_owned(), 0)
            .unwrap();
        let mut now = 0;
        let mut waits = Vec::new();
        loop {
            let due = outbox.take_due(now, |_| 1);
            assert_eq!(due.len(), 1, "due at {now}");
            match outbox.settle("crm", "offer-1", failed(None), now, 0.0) {
                Settled::Retrying(e) => {
                    waits.push(e.due_ms - now);
                    assert!(outbox.take_due(e.due_ms - 1, |_| 1).is_empty());
                    now = e.due_ms;
                }
                Settled::DeadLetter(e) => {
                    assert_eq!(e.attempts, 8);
                    assert_eq!(e.last_error.as_deref(), Some("the endpoint answered 503"));
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            waits,
            [
                5 * S,
                300 * S,
                1_800 * S,
                7_200 * S,
                18_000 * S,
                36_000 * S,
                36_000 * S
            ]
        );
        assert!(outbox.is_empty());
    }

    #[test]
    fn retry_after_jitter_and_a_410() {
        let policy = RetryPolicy::default();
        // Jitter stretches or shrinks by up to 20 %; a Retry-After is a floor, capped at a day.
        assert_eq!(policy.next_at(1, 0, 1.0, None), Some(6 * S));
        assert_eq!(policy.next_at(1, 0, -1.0, None), Some(4 * S));
        assert_eq!(
            policy.next_at(1, 0, 0.0, Some(Duration::from_secs(60))),
            Some(60 * S)
        );
        assert_eq!(
            policy.next_at(2, 0, 0.0, Some(Duration::from_secs(1))),
            Some(300 * S)
        );
        assert_eq!(
            policy.next_at(1, 0, 0.0, Some(Duration::from_secs(10 * 86_400))),
            Some(86_400 * S)
        );
        assert_eq!(policy.next_at(8, 0, 0.0, None), None);
        assert_eq!(Outcome::of_status(204, None), Outcome::Delivered);
        assert_eq!(Outcome::of_status(410, None), Outcome::Gone);
        assert_eq!(parse_retry_after("120", 0), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 1970 00:02:00 GMT", 60),
            Some(Duration::from_secs(60))
        );
        assert_eq!(parse_retry_after("soon", 0), None);
        // A 410 disables the endpoint: its other entries go to the dead letters with it, and
        // nothing more is queued for it; other endpoints carry on.
        let mut outbox = Outbox::new(policy);
        for id in ["a", "b", "c"] {
            outbox.enqueue("crm", id, "{}".to_owned(), 0).unwrap();
        }
        outbox.enqueue("ads", "a", "{}".to_owned(), 0).unwrap();
        assert_eq!(
            outbox.take_due(0, |_| 1).len(),
            2,
            "one in flight per endpoint"
        );
        let Settled::Disabled(gone) = outbox.settle("crm", "a", Outcome::Gone, 0, 0.0) else {
            panic!()
        };
        assert_eq!(
            gone.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert!(outbox.is_disabled("crm"));
        assert_eq!(outbox.enqueue("crm", "d", "{}".to_owned(), 0), None);
        assert_eq!(outbox.len(), 1);
        assert!(matches!(
            outbox.settle("ads", "a", Outcome::Delivered, 0, 0.0),
            Settled::Delivered(_)
        ));
        assert_eq!(
            outbox.settle("ads", "a", Outcome::Delivered, 0, 0.0),
            Settled::Unknown
        );
    }

    proptest! {
        /// Whatever the outcomes, every message ends delivered or dead-lettered exactly once,
        /// never more attempts than the policy allows, never more in flight per endpoint than
        /// its limit; and a restart from the persisted entries loses none.
        #[test]
        fn every_message_ends_once_within_its_attempts(
            messages in 1usize..12,
            outcomes in prop::collection::vec(0u8..4, 1..400),
            restart_at in 0usize..400,
        ) {
            let policy = RetryPolicy { schedule: vec![Duration::from_secs(1); 3], jitter: 0.0 };
            let mut outbox = Outbox::new(policy.clone());
            let endpoints = ["a", "b"];
            for i in 0..messages {
                outbox.enqueue(endpoints[i % 2], &format!("m{i}"), "{}".to_owned(), 0);
            }
            let mut ended: BTreeMap<(String, String), u32> = BTreeMap::new();
            let (mut now, mut step) = (0i64, 0usize);
            let mut persisted: BTreeMap<(String, String), Entry> = outbox.entries.clone();
            while !outbox.is_empty() {
                if step == restart_at {
                    // A crash: what was in flight comes back due, from what was persisted.
                    let mut fresh = Outbox::new(policy.clone());
                    fresh.restore(persisted.values().cloned(), outbox.disabled.clone());
                    outbox = fresh;
                }
                let due = outbox.take_due(now, |_| 2);
                let mut flight: BTreeMap<String, usize> = BTreeMap::new();
                for e in &due {
                    *flight.entry(e.endpoint.clone()).or_default() += 1;
                }
                prop_assert!(flight.values().all(|n| *n <= 2));
                for e in due {
                    let outcome = match outcomes[step % outcomes.len()] {
                        0 => Outcome::Delivered,
                        1 => Outcome::of_status(429, Some(Duration::from_secs(2))),
                        2 => Outcome::of_status(500, None),
                        _ => Outcome::of_status(404, None),
                    };
                    step += 1;
                    let key = (e.endpoint.clone(), e.id.clone());
                    match outbox.settle(&e.endpoint, &e.id, outcome, now, 0.0) {
                        Settled::Delivered(x) | Settled::DeadLetter(x) => {
                            prop_assert!(x.attempts <= policy.attempts());
                            *ended.entry(key.clone()).or_default() += 1;
                            persisted.remove(&key);
                        }
                        Settled::Retrying(x) => { persisted.insert(key, x); }
                        Settled::Disabled(_) | Settled::Unknown => prop_assert!(false),
                    }
                }
                // Nothing stays in flight between steps, so what is pending is due some time.
                prop_assert!(outbox.is_empty() || outbox.next_due_ms().is_some());
                now = outbox.next_due_ms().map_or(now, |d| d.max(now));
            }
            prop_assert_eq!(ended.len(), messages);
            prop_assert!(ended.values().all(|n| *n == 1));
        }
    }
}
