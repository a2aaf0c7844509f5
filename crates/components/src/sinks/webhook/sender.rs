//! The webhooks stage: `special-offers` → the outbox → the shop's endpoints.
//!
//! Its state is the outbox itself, checkpointed by the task driver with the input offsets in
//! one atomic step (embedded: the data dir; distributed: Redis), so every offer read is either
//! not yet consumed or in the outbox. An offer becomes one entry per endpoint that takes it
//! (`entry/<endpoint>/<id>`, the body as it will be sent every time); the stage hands due
//! entries to the [`Transport`] (the HTTP workers) and settles their outcomes at its next poll:
//! a delivered entry is deleted, a failed one is due again on the retry schedule, one out of
//! attempts goes to the dead letters (the dead-letter topic, and `dead/<endpoint>/<id>` for
//! `webhooks replay`), and a `410` disables the endpoint (`disabled/<endpoint>`). After a
//! crash the entries of the last checkpoint are sent again: at least once, with the same
//! `webhook-id` (the offer id) for the receivers to de-duplicate.
//!
//! The stage never reads the clock: it converts the runner's `Instant`s to Unix ms from an
//! anchor it is given, and its retry jitter is a hash of the delivery and attempt, so a test
//! drives it with any time it likes.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

use clickpulse_engine::alert::AlertEvent;
use clickpulse_engine::operator::{
    Context, Emitter, Operator, RecordError, RestoreError, StateChanges,
};
use clickpulse_engine::pattern::{Offer, OfferContent};
use clickpulse_engine::reader::DeadLetter;
use clickpulse_engine::topics::Topic;
use clickpulse_server::webhooks::{ControlInbox, ReplayFilter, ReplayReport};
use serde_json::{Value, json};

use super::config::{Endpoint, EndpointKind};
use super::http::Transport;
use super::outbox::{Entry, Outbox, Outcome, Settled};

/// The stage's name.
pub const STAGE: &str = "webhooks";
/// State key prefix of a pending delivery.
pub const ENTRY_PREFIX: &str = "entry/";
/// State key prefix of a dead-lettered delivery.
pub const DEAD_PREFIX: &str = "dead/";
/// State key prefix of an endpoint a `410` disabled.
pub const DISABLED_PREFIX: &str = "disabled/";
/// Most dead-lettered deliveries kept per endpoint for replay; beyond it the oldest are
/// forgotten (they stay on the dead-letter topic, without their whole body).
pub const MAX_DEAD_PER_ENDPOINT: usize = 10_000;

/// What an offer's content is, for the body (`None`: the pattern declares none).
pub type ContentFn = Arc<dyn Fn(&Offer) -> Option<OfferContent> + Send + Sync>;

/// A wall-clock reading the stage converts its `Instant`s from.
#[derive(Debug, Clone, Copy)]
pub struct Anchor {
    /// An instant…
    pub at: Instant,
    /// …and the Unix time in ms at it.
    pub unix_ms: i64,
}

impl Anchor {
    /// Now.
    pub fn now() -> Anchor {
        Anchor {
            at: Instant::now(),
            unix_ms: super::http::unix_ms(),
        }
    }

    fn unix_ms(&self, at: Instant) -> i64 {
        match at.checked_duration_since(self.at) {
            Some(after) => self.unix_ms + after.as_millis() as i64,
            None => self.unix_ms - self.at.duration_since(at).as_millis() as i64,
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Counts {
    enqueued: u64,
    delivered: u64,
    retried: u64,
    dead_lettered: u64,
    replayed: u64,
}

/// One endpoint's outbox and counters.
struct Lane {
    endpoint: Endpoint,
    outbox: Outbox,
    dead: BTreeMap<String, Entry>,
    counts: Counts,
    /// Ids whose pending or dead entry changed since the last checkpoint.
    touched: BTreeSet<String>,
    disabled_touched: bool,
    /// Slack: the digest under way (its id, the offers it holds), and when the next may go.
    batch: Option<(String, Vec<String>)>,
    next_send_ms: i64,
}

/// The webhooks stage.
pub struct WebhookOperator {
    lanes: Vec<Lane>,
    transport: Box<dyn Transport>,
    anchor: Anchor,
    content: Option<ContentFn>,
    control: Option<ControlInbox>,
    /// Restored entries of endpoints no longer configured: dead-lettered at the first tick.
    orphans: Vec<Entry>,
    /// State keys of those, to delete.
    orphan_keys: Vec<String>,
}

impl WebhookOperator {
    /// A stage sending to `endpoints` through `transport`, its clock read from `anchor`.
    pub fn new(endpoints: Vec<Endpoint>, transport: Box<dyn Transport>, anchor: Anchor) -> Self {
        WebhookOperator {
            lanes: endpoints
                .into_iter()
                .map(|endpoint| Lane {
                    outbox: Outbox::new(endpoint.retry.clone()),
                    endpoint,
                    dead: BTreeMap::new(),
                    counts: Counts::default(),
                    touched: BTreeSet::new(),
                    disabled_touched: false,
                    batch: None,
                    next_send_ms: i64::MIN,
                })
                .collect(),
            transport,
            anchor,
            content: None,
            control: None,
            orphans: Vec::new(),
            orphan_keys: Vec::new(),
        }
    }

    /// With the offers' content (title and text) in the bodies.
    pub fn with_content(mut self, content: ContentFn) -> Self {
        self.content = Some(content);
        self
    }

    /// Taking replay requests from `inbox`.
    pub fn with_control(mut self, inbox: ControlInbox) -> Self {
        self.control = Some(inbox);
        self
    }

    fn lane(&mut self, endpoint: &str) -> Option<&mut Lane> {
        self.lanes.iter_mut().find(|l| l.endpoint.name == endpoint)
    }

    /// The body every attempt of `offer` sends.
    pub fn body(&self, offer: &Offer) -> String {
        let mut data = serde_json::to_value(offer).expect("an offer serializes");
        if let (Some(content), Value::Object(map)) =
            (self.content.as_ref().and_then(|c| c(offer)), &mut data)
        {
            map.insert("title".to_owned(), Value::from(content.title));
            if !content.text.is_empty() {
                map.insert("text".to_owned(), Value::from(content.text));
            }
        }
        let timestamp = chrono::DateTime::from_timestamp_millis(offer.ts_ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        json!({"type": "offer.created", "timestamp": timestamp, "data": data}).to_string()
    }

    /// Puts an alert's transition in the outbox of every endpoint that takes alerts, as
    /// `alert.firing` or `alert.resolved`; its id (rule, state, event time) is the same when
    /// the aggregation emits it again after a restart.
    fn take_alert(&mut self, alert: &AlertEvent, now_ms: i64) {
        let id = format!("alert-{}-{}-{}", alert.alert, alert.state, alert.ts_ms);
        let timestamp = chrono::DateTime::from_timestamp_millis(alert.ts_ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        let body = json!({
            "type": format!("alert.{}", alert.state),
            "timestamp": timestamp,
            "data": alert,
        })
        .to_string();
        for lane in self.lanes.iter_mut().filter(|l| l.endpoint.alerts) {
            if lane.dead.contains_key(&id) {
                continue;
            }
            if lane
                .outbox
                .enqueue(&lane.endpoint.name, &id, body.clone(), now_ms)
                .is_some()
            {
                lane.counts.enqueued += 1;
                lane.touched.insert(id.clone());
            }
        }
    }

    fn replay(&mut self, filter: &ReplayFilter, now_ms: i64) -> Result<ReplayReport, String> {
        if let Some(name) = &filter.endpoint
            && !self.lanes.iter().any(|l| l.endpoint.name == *name)
        {
            return Err(format!("no endpoint {name:?} is configured"));
        }
        let mut report = ReplayReport::default();
        for lane in &mut self.lanes {
            if filter
                .endpoint
                .as_ref()
                .is_some_and(|e| *e != lane.endpoint.name)
            {
                report.dead_letters_left += lane.dead.len() as u64;
                continue;
            }
            if filter.enable && lane.outbox.enable(&lane.endpoint.name) {
                lane.disabled_touched = true;
                report.enabled.push(lane.endpoint.name.clone());
            }
            let ids: Vec<String> = lane
                .dead
                .keys()
                .filter(|id| filter.id.as_ref().is_none_or(|want| want == *id))
                .cloned()
                .collect();
            for id in ids {
                let entry = lane.dead[&id].clone();
                if lane.outbox.requeue(entry, now_ms) {
                    lane.dead.remove(&id);
                    lane.touched.insert(id);
                    lane.counts.replayed += 1;
                    report.requeued += 1;
                }
            }
            report.dead_letters_left += lane.dead.len() as u64;
        }
        Ok(report)
    }
}

/// A deterministic draw in [-1, 1] for the jitter of `id`'s attempt `attempts`.
fn jitter(endpoint: &str, id: &str, attempts: u32) -> f64 {
    let mut h = std::hash::DefaultHasher::new();
    (endpoint, id, attempts).hash(&mut h);
    (h.finish() % 2_000_001) as f64 / 1_000_000.0 - 1.0
}

fn dead_letter(entry: &Entry, reason: &str) -> DeadLetter {
    DeadLetter::new(
        &format!("{STAGE}/{}", entry.endpoint),
        u64::from(entry.attempts),
        format!("webhook {} to {}: {reason}", entry.id, entry.endpoint),
        entry.body.as_bytes(),
    )
}

impl Lane {
    /// Records what the attempt of `id` got.
    fn settle(&mut self, id: &str, outcome: Outcome, now_ms: i64, out: &mut Emitter) {
        let name = self.endpoint.name.clone();
        let attempts = self.outbox.get(&name, id).map_or(0, |e| e.attempts);
        let j = jitter(&name, id, attempts);
        match self.outbox.settle(&name, id, outcome, now_ms, j) {
            Settled::Delivered(entry) => {
                self.counts.delivered += 1;
                self.touched.insert(entry.id);
            }
            Settled::Retrying(entry) => {
                self.counts.retried += 1;
                self.touched.insert(entry.id);
            }
            Settled::DeadLetter(entry) => self.bury(entry, now_ms, out),
            Settled::Disabled(entries) => {
                tracing::warn!(endpoint = %name, "Webhook endpoint answered 410 Gone: disabled.");
                self.disabled_touched = true;
                for entry in entries {
                    self.bury(entry, now_ms, out);
                }
            }
            Settled::Unknown => {}
        }
    }

    fn bury(&mut self, mut entry: Entry, now_ms: i64, out: &mut Emitter) {
        let reason = entry
            .last_error
            .clone()
            .unwrap_or_else(|| "failed".to_owned());
        out.emit(
            Topic::DeadLetters,
            &entry.endpoint,
            &dead_letter(&entry, &reason),
        );
        tracing::warn!(endpoint = %entry.endpoint, id = %entry.id, attempts = entry.attempts, %reason, "Webhook dead-lettered.");
        entry.due_ms = now_ms;
        self.counts.dead_lettered += 1;
        self.touched.insert(entry.id.clone());
        self.dead.insert(entry.id.clone(), entry);
        while self.dead.len() > MAX_DEAD_PER_ENDPOINT {
            let oldest = self
                .dead
                .iter()
                .min_by_key(|(_, e)| e.due_ms)
                .map(|(id, _)| id.clone())
                .expect("not empty");
            self.dead.remove(&oldest);
            self.touched.insert(oldest);
        }
    }
}

impl Operator for WebhookOperator {
    fn name(&self) -> &'static str {
        STAGE
    }

    fn input_topics(&self) -> Vec<Topic> {
        vec![Topic::SpecialOffers, Topic::Alerts]
    }

    fn process_record(&mut self, value: &[u8], ctx: &mut Context<'_>) -> Result<(), RecordError> {
        if ctx.topic == Topic::Alerts {
            let alert: AlertEvent = clickpulse_engine::codec::decode(value)?;
            self.take_alert(&alert, self.anchor.unix_ms(ctx.now));
            return Ok(());
        }
        let offer: Offer = clickpulse_engine::codec::decode(value)?;
        if !self
            .lanes
            .iter()
            .any(|l| l.endpoint.takes_offer_of(&offer.pattern))
        {
            return Ok(());
        }
        let body = self.body(&offer);
        let now_ms = self.anchor.unix_ms(ctx.now);
        for lane in &mut self.lanes {
            if !lane.endpoint.takes_offer_of(&offer.pattern) {
                continue;
            }
            // Already pending, or dead-lettered (an offer read again after a restart), or the
            // endpoint is disabled: nothing new.
            if lane.dead.contains_key(&offer.offer_id) {
                continue;
            }
            if lane
                .outbox
                .enqueue(&lane.endpoint.name, &offer.offer_id, body.clone(), now_ms)
                .is_some()
            {
                lane.counts.enqueued += 1;
                lane.touched.insert(offer.offer_id.clone());
            }
        }
        Ok(())
    }

    fn on_tick(&mut self, wall: Instant, out: &mut Emitter) {
        let now_ms = self.anchor.unix_ms(wall);
        for entry in std::mem::take(&mut self.orphans) {
            let reason = "its endpoint is no longer configured";
            out.emit(
                Topic::DeadLetters,
                &entry.endpoint,
                &dead_letter(&entry, reason),
            );
            tracing::warn!(endpoint = %entry.endpoint, id = %entry.id, "Webhook dead-lettered: {reason}.");
        }
        for finished in self.transport.finished() {
            let Some(lane) = self.lane(&finished.endpoint) else {
                continue;
            };
            // A Slack digest settles every offer it held.
            let ids = match lane.batch.take() {
                Some((batch, ids)) if batch == finished.id => ids,
                other => {
                    lane.batch = other;
                    vec![finished.id]
                }
            };
            for id in ids {
                lane.settle(&id, finished.outcome.clone(), now_ms, out);
            }
        }
        while let Some(request) = self.control.as_mut().and_then(ControlInbox::try_next) {
            let report = self.replay(&request.filter, now_ms);
            let _ = request.reply.send(report);
        }
        for lane in &mut self.lanes {
            let limit = lane.endpoint.max_in_flight;
            match lane.endpoint.kind {
                EndpointKind::Webhook => {
                    for entry in lane.outbox.take_due(now_ms, |_| limit) {
                        self.transport.send(entry);
                    }
                }
                EndpointKind::Slack { min_interval, .. } => {
                    if lane.batch.is_some() || now_ms < lane.next_send_ms {
                        continue;
                    }
                    let entries = lane.outbox.take_due(now_ms, |_| limit);
                    let Some(first) = entries.first() else {
                        continue;
                    };
                    let batch = format!("digest-{}", first.id);
                    self.transport.send(Entry {
                        endpoint: lane.endpoint.name.clone(),
                        id: batch.clone(),
                        body: super::slack::digest(&entries),
                        attempts: first.attempts,
                        due_ms: now_ms,
                        last_error: None,
                    });
                    lane.batch = Some((batch, entries.into_iter().map(|e| e.id).collect()));
                    lane.next_send_ms = now_ms + min_interval.as_millis() as i64;
                }
            }
        }
    }

    fn checkpoint(&mut self, changes: &mut StateChanges) {
        changes.extend(self.orphan_keys.drain(..).map(|k| (k, None)));
        for lane in &mut self.lanes {
            let name = &lane.endpoint.name;
            for id in std::mem::take(&mut lane.touched) {
                let pending = lane.outbox.get(name, &id);
                changes.push((
                    format!("{ENTRY_PREFIX}{name}/{id}"),
                    pending.map(|e| serde_json::to_vec(e).expect("an entry serializes")),
                ));
                changes.push((
                    format!("{DEAD_PREFIX}{name}/{id}"),
                    lane.dead
                        .get(&id)
                        .map(|e| serde_json::to_vec(e).expect("an entry serializes")),
                ));
            }
            if std::mem::take(&mut lane.disabled_touched) {
                changes.push((
                    format!("{DISABLED_PREFIX}{name}"),
                    lane.outbox.is_disabled(name).then(|| b"1".to_vec()),
                ));
            }
        }
    }

    fn restore(&mut self, key: &str, value: &[u8]) -> Result<(), RestoreError> {
        let bad = |message: String| RestoreError {
            operator: STAGE,
            key: key.to_owned(),
            message,
        };
        if let Some(name) = key.strip_prefix(DISABLED_PREFIX) {
            if let Some(lane) = self.lane(name) {
                lane.outbox.restore([], [name.to_owned()]);
            } else {
                self.orphan_keys.push(key.to_owned());
            }
            return Ok(());
        }
        let (dead, rest) = if let Some(rest) = key.strip_prefix(ENTRY_PREFIX) {
            (false, rest)
        } else if let Some(rest) = key.strip_prefix(DEAD_PREFIX) {
            (true, rest)
        } else {
            return Err(bad("not a key of the webhooks stage".to_owned()));
        };
        let entry: Entry = serde_json::from_slice(value).map_err(|e| bad(e.to_string()))?;
        if rest.split_once('/') != Some((entry.endpoint.as_str(), entry.id.as_str())) {
            return Err(bad(format!(
                "holds the entry of {}/{}",
                entry.endpoint, entry.id
            )));
        }
        match self.lane(&entry.endpoint.clone()) {
            Some(lane) if dead => {
                lane.dead.insert(entry.id.clone(), entry);
            }
            Some(lane) => lane.outbox.restore([entry], []),
            None => {
                self.orphan_keys.push(key.to_owned());
                if !dead {
                    self.orphans.push(entry);
                }
            }
        }
        Ok(())
    }

    fn stats(&self) -> Value {
        let endpoints: serde_json::Map<String, Value> = self
            .lanes
            .iter()
            .map(|l| {
                (
                    l.endpoint.name.clone(),
                    json!({
                        "pending": l.outbox.len(),
                        "enqueued": l.counts.enqueued,
                        "delivered": l.counts.delivered,
                        "retried": l.counts.retried,
                        "dead_lettered": l.counts.dead_lettered,
                        "dead_letters": l.dead.len(),
                        "replayed": l.counts.replayed,
                        "disabled": l.outbox.is_disabled(&l.endpoint.name),
                    }),
                )
            })
            .collect();
        json!({"endpoints": endpoints})
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use clickpulse_engine::operator::process_one;

    use super::super::http::Finished;
    use super::super::outbox::RetryPolicy;
    use super::*;

    /// Records what is sent; the test decides each outcome.
    #[derive(Clone, Default)]
    struct Recorder {
        sent: Arc<Mutex<Vec<Entry>>>,
        outcomes: Arc<Mutex<Vec<Finished>>>,
    }

    impl Transport for Recorder {
        fn send(&mut self, entry: Entry) {
            self.sent.lock().unwrap().push(entry);
        }
        fn finished(&mut self) -> Vec<Finished> {
            std::mem::take(&mut *self.outcomes.lock().unwrap())
        }
    }

    impl Recorder {
        fn sent(&self) -> Vec<(String, String, u32)> {
            std::mem::take(&mut *self.sent.lock().unwrap())
                .into_iter()
                .map(|e| (e.endpoint, e.id, e.attempts))
                .collect()
        }
        fn answer(&self, endpoint: &str, id: &str, outcome: Outcome) {
            self.outcomes.lock().unwrap().push(Finished {
                endpoint: endpoint.to_owned(),
                id: id.to_owned(),
                outcome,
            });
        }
    }

    fn endpoint(name: &str, patterns: &[&str]) -> Endpoint {
        Endpoint {
            name: name.to_owned(),
            kind: EndpointKind::Webhook,
            url: "https://example.com/hook".to_owned(),
            offers: true,
            alerts: false,
            patterns: patterns.iter().map(|p| p.to_string()).collect(),
            secrets: vec![super::super::signature::Secret::generate()],
            timeout: Duration::from_secs(1),
            max_in_flight: 1,
            retry: RetryPolicy {
                schedule: vec![Duration::from_secs(10), Duration::from_secs(60)],
                jitter: 0.0,
            },
        }
    }

    fn offer(id: &str, pattern: &str) -> Vec<u8> {
        clickpulse_engine::codec::encode(&Offer {
            offer_id: id.to_owned(),
            visitor: "v-1".to_owned(),
            pattern: pattern.to_owned(),
            pattern_version: "1".to_owned(),
            offer: "offer1".to_owned(),
            ts_ms: 1_700_000_000_000,
            product: None,
        })
    }

    struct Harness {
        op: WebhookOperator,
        rec: Recorder,
        t0: Instant,
    }

    impl Harness {
        fn new(endpoints: Vec<Endpoint>) -> Harness {
            let rec = Recorder::default();
            let t0 = Instant::now();
            let anchor = Anchor {
                at: t0,
                unix_ms: 1_000_000,
            };
            Harness {
                op: WebhookOperator::new(endpoints, Box::new(rec.clone()), anchor),
                rec,
                t0,
            }
        }
        fn at(&self, s: u64) -> Instant {
            self.t0 + Duration::from_secs(s)
        }
        fn offer(&mut self, id: &str, pattern: &str, s: u64) {
            let now = self.at(s);
            let mut out = Emitter::default();
            process_one(
                &mut self.op,
                Topic::SpecialOffers,
                0,
                &offer(id, pattern),
                now,
                &mut out,
            )
            .unwrap();
        }
        fn tick(&mut self, s: u64) -> Vec<DeadLetter> {
            let mut out = Emitter::default();
            self.op.on_tick(self.at(s), &mut out);
            out.drain()
                .map(|o| {
                    assert_eq!(o.topic, Topic::DeadLetters);
                    clickpulse_engine::codec::decode(&o.value).unwrap()
                })
                .collect()
        }
        fn checkpoint(&mut self) -> StateChanges {
            let mut changes = StateChanges::new();
            self.op.checkpoint(&mut changes);
            changes
        }
    }

    fn failed() -> Outcome {
        Outcome::Failed {
            reason: "the endpoint answered 500".to_owned(),
            retry_after: None,
        }
    }

    #[test]
    fn an_offer_is_sent_to_each_endpoint_that_takes_it_and_retried_until_delivered() {
        let mut h = Harness::new(vec![endpoint("crm", &[]), endpoint("mail", &["cart"])]);
        h.offer("o-1", "browse", 0);
        h.offer("o-2", "cart", 0);
        h.tick(0);
        // One in flight per endpoint: crm gets o-1 first.
        assert_eq!(
            h.rec.sent(),
            [
                ("crm".into(), "o-1".into(), 0),
                ("mail".into(), "o-2".into(), 0)
            ]
        );
        let changes = h.checkpoint();
        assert_eq!(changes.len(), 6, "{changes:?}");
        assert!(
            changes
                .iter()
                .any(|(k, v)| k == "entry/crm/o-2" && v.is_some())
        );
        h.rec.answer("crm", "o-1", failed());
        h.rec.answer("mail", "o-2", Outcome::Delivered);
        h.tick(1);
        // o-1 waits 10 s; o-2 of crm goes out now.
        assert_eq!(h.rec.sent(), [("crm".into(), "o-2".into(), 0)]);
        let changes = h.checkpoint();
        assert!(changes.contains(&("entry/mail/o-2".to_owned(), None)));
        h.tick(10);
        assert!(h.rec.sent().is_empty(), "o-2 still in flight");
        h.rec.answer("crm", "o-2", Outcome::Delivered);
        h.tick(11);
        assert_eq!(h.rec.sent(), [("crm".into(), "o-1".into(), 1)]);
        h.rec.answer("crm", "o-1", Outcome::Delivered);
        h.tick(12);
        assert_eq!(h.op.stats()["endpoints"]["crm"]["delivered"], 2);
        assert_eq!(h.op.stats()["endpoints"]["crm"]["pending"], 0);
    }

    #[test]
    fn out_of_attempts_is_a_dead_letter_that_a_replay_sends_again() {
        let mut h = Harness::new(vec![endpoint("crm", &[])]);
        h.offer("o-1", "cart", 0);
        // Each failure is settled at the next tick; the retries wait 10 s, then 60 s.
        let mut dead = Vec::new();
        for s in [0, 11, 72] {
            assert!(h.tick(s).is_empty());
            assert_eq!(h.rec.sent().len(), 1, "attempt at {s}");
            h.rec.answer("crm", "o-1", failed());
            dead = h.tick(s + 1);
            assert!(h.rec.sent().is_empty(), "nothing due at {}", s + 1);
        }
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].source, "webhooks/crm");
        assert!(
            dead[0].reason.contains("answered 500"),
            "{}",
            dead[0].reason
        );
        let changes = h.checkpoint();
        assert!(changes.contains(&("entry/crm/o-1".to_owned(), None)));
        let (_, kept) = changes.iter().find(|(k, _)| k == "dead/crm/o-1").unwrap();
        // Read again after a restart: not enqueued again.
        h.offer("o-1", "cart", 72);
        h.tick(72);
        assert!(h.rec.sent().is_empty());
        // A restarted stage knows the dead letter and replays it.
        let mut restarted = Harness::new(vec![endpoint("crm", &[])]);
        restarted
            .op
            .restore("dead/crm/o-1", kept.as_ref().unwrap())
            .unwrap();
        let report = restarted
            .op
            .replay(&ReplayFilter::default(), 1_100_000)
            .unwrap();
        assert_eq!(report.requeued, 1);
        assert_eq!(report.dead_letters_left, 0);
        restarted.tick(100);
        assert_eq!(restarted.rec.sent(), [("crm".into(), "o-1".into(), 0)]);
        assert!(
            restarted
                .op
                .replay(
                    &ReplayFilter {
                        endpoint: Some("nope".into()),
                        ..ReplayFilter::default()
                    },
                    0
                )
                .is_err()
        );
    }

    #[test]
    fn a_410_disables_the_endpoint_until_a_replay_enables_it() {
        let mut h = Harness::new(vec![endpoint("crm", &[])]);
        h.offer("o-1", "cart", 0);
        h.offer("o-2", "cart", 0);
        h.tick(0);
        h.rec.sent();
        h.rec.answer("crm", "o-1", Outcome::Gone);
        let dead = h.tick(1);
        assert_eq!(dead.len(), 2, "both its deliveries are dead letters");
        let changes = h.checkpoint();
        assert!(changes.contains(&("disabled/crm".to_owned(), Some(b"1".to_vec()))));
        h.offer("o-3", "cart", 2);
        h.tick(2);
        assert!(h.rec.sent().is_empty(), "a disabled endpoint gets nothing");
        let report =
            h.op.replay(
                &ReplayFilter {
                    endpoint: Some("crm".into()),
                    enable: true,
                    ..ReplayFilter::default()
                },
                1_000_000 + 3_000,
            )
            .unwrap();
        assert_eq!(report.requeued, 2);
        assert_eq!(report.enabled, ["crm"]);
        h.tick(3);
        assert_eq!(h.rec.sent().len(), 1);
        assert!(h.checkpoint().contains(&("disabled/crm".to_owned(), None)));
    }

    #[test]
    fn a_restart_sends_the_checkpointed_entries_again_with_their_bodies() {
        let mut h = Harness::new(vec![endpoint("crm", &[])]);
        h.offer("o-1", "cart", 0);
        h.tick(0);
        let sent_body = h.rec.sent.lock().unwrap()[0].body.clone();
        let changes = h.checkpoint();
        // Killed before the answer: the restarted stage has the entry and sends it again.
        let mut restarted = Harness::new(vec![endpoint("crm", &[])]);
        for (k, v) in &changes {
            if let Some(v) = v {
                restarted.op.restore(k, v).unwrap();
            }
        }
        restarted.tick(0);
        let again = restarted.rec.sent.lock().unwrap().clone();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].body, sent_body);
        let body: Value = serde_json::from_str(&sent_body).unwrap();
        assert_eq!(body["type"], "offer.created");
        assert_eq!(body["data"]["offer_id"], "o-1");
        assert_eq!(body["timestamp"], "2023-11-14T22:13:20.000Z");
        // An endpoint removed from the configuration: its entries become dead letters.
        let mut other = Harness::new(vec![endpoint("mail", &[])]);
        for (k, v) in &changes {
            if let Some(v) = v {
                other.op.restore(k, v).unwrap();
            }
        }
        let dead = other.tick(0);
        assert_eq!(dead.len(), 1);
        assert!(dead[0].reason.contains("no longer configured"));
        assert!(
            other
                .checkpoint()
                .contains(&("entry/crm/o-1".to_owned(), None))
        );
    }

    fn slack(name: &str) -> Endpoint {
        Endpoint {
            kind: EndpointKind::Slack {
                min_interval: Duration::from_secs(1),
                max_items: 3,
            },
            secrets: Vec::new(),
            max_in_flight: 3,
            ..endpoint(name, &[])
        }
    }

    #[test]
    fn slack_gets_one_digest_a_second_of_what_piled_up_and_retries_it_whole() {
        let mut h = Harness::new(vec![slack("ops")]);
        h.offer("o-1", "cart", 0);
        h.tick(0);
        let first = h.rec.sent.lock().unwrap().clone();
        h.rec.sent();
        assert_eq!(first.len(), 1);
        let message: Value = serde_json::from_str(&first[0].body).unwrap();
        assert_eq!(message["text"], "1 new offer");
        // Four more arrive while it is out: nothing is sent before it settles, nor within a
        // second of the last message.
        for id in ["o-2", "o-3", "o-4", "o-5"] {
            h.offer(id, "cart", 0);
        }
        h.tick(0);
        assert!(h.rec.sent().is_empty());
        h.rec.answer("ops", &first[0].id, Outcome::Delivered);
        h.tick(0);
        assert!(
            h.rec.sent().is_empty(),
            "within a second of the last message"
        );
        h.tick(1);
        let second = h.rec.sent.lock().unwrap().clone();
        h.rec.sent();
        assert_eq!(second.len(), 1);
        let message: Value = serde_json::from_str(&second[0].body).unwrap();
        assert_eq!(message["text"], "3 new offers", "at most max_items");
        let ids: Vec<&str> = message["blocks"].as_array().unwrap()[1..]
            .iter()
            .map(|b| b["block_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["o-2", "o-3", "o-4"]);
        // Rate-limited: every offer of the digest waits for the Retry-After.
        h.rec.answer(
            "ops",
            &second[0].id,
            Outcome::Failed {
                reason: "the endpoint answered 429".into(),
                retry_after: Some(Duration::from_secs(30)),
            },
        );
        h.tick(2);
        let third: Vec<Entry> = std::mem::take(&mut *h.rec.sent.lock().unwrap());
        let message: Value = serde_json::from_str(&third[0].body).unwrap();
        assert_eq!(
            message["text"], "1 new offer",
            "o-5, the one not in the digest"
        );
        h.rec.answer("ops", &third[0].id, Outcome::Delivered);
        h.tick(3);
        h.tick(31);
        assert!(h.rec.sent().is_empty(), "the Retry-After is 30 s from 2 s");
        h.tick(32);
        let again: Vec<Entry> = std::mem::take(&mut *h.rec.sent.lock().unwrap());
        let message: Value = serde_json::from_str(&again[0].body).unwrap();
        assert_eq!(message["text"], "3 new offers");
        h.rec.answer("ops", &again[0].id, Outcome::Delivered);
        h.tick(33);
        assert_eq!(h.op.stats()["endpoints"]["ops"]["delivered"], 5);
        assert_eq!(h.op.stats()["endpoints"]["ops"]["pending"], 0);
    }
}
