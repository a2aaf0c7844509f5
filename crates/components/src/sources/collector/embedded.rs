//! The collector on the embedded store: `POST /collect` hands each request's clicks to the
//! collector stage through a queue bounded in clicks; the stage commits everything waiting at
//! once (group commit) and acknowledges each request once its clicks are durable.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clickpulse_connectors::embedded::runner::{
    RunnerConfig, RunnerCounts, commit_with_retry, decode, runner_key,
};
use clickpulse_connectors::embedded::{CommitBatch, EmbeddedStore, StoreError};
use clickpulse_engine::DeadLetter;
use clickpulse_engine::click::Click;
use clickpulse_engine::codec;
use clickpulse_engine::metrics::StageMetrics;
use clickpulse_engine::topics;
use clickpulse_server::collector::{ClickSink, SinkFull};
use serde_json::json;
use tokio::sync::oneshot;

/// The newest event time the collector committed (its newest stamp).
pub fn newest_event_time(store: &EmbeddedStore) -> Result<Option<i64>, StoreError> {
    let key = runner_key("collector");
    Ok(match store.state(&key)? {
        Some(bytes) => decode::<RunnerCounts>(&key, &bytes)?.newest_ms,
        None => None,
    })
}

/// Most requests' batches waiting for the collector stage (each also counts against
/// `--collector-queue` clicks).
pub const COLLECTOR_BATCHES: usize = 4_096;

/// Feeds `POST /collect` into the collector stage through a queue bounded in clicks: when it is
/// full the collector answers 503 instead of buffering without limit.
pub struct QueueSink {
    queue: std::sync::mpsc::SyncSender<CollectedBatch>,
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    max_in_flight: usize,
}

impl QueueSink {
    /// A sink into `queue` holding at most `max_in_flight` clicks not yet durable.
    pub fn new(queue: std::sync::mpsc::SyncSender<CollectedBatch>, max_in_flight: usize) -> Self {
        QueueSink {
            queue,
            in_flight: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            max_in_flight,
        }
    }
}

impl QueueSink {
    /// Clicks handed to the sink and not yet durable (or failed).
    pub fn pending(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
}

impl ClickSink for QueueSink {
    fn offer(
        &self,
        clicks: Vec<Click>,
        dead_letters: Vec<DeadLetter>,
    ) -> Result<oneshot::Receiver<Result<(), String>>, SinkFull> {
        let n = clicks.len() + dead_letters.len();
        let before = self.in_flight.fetch_add(n, Ordering::SeqCst);
        if before + n > self.max_in_flight {
            self.in_flight.fetch_sub(n, Ordering::SeqCst);
            return Err(SinkFull);
        }
        let (tx, rx) = oneshot::channel();
        let in_flight = self.in_flight.clone();
        let batch = CollectedBatch {
            clicks,
            dead_letters,
            ack: Box::new(move |outcome| {
                in_flight.fetch_sub(n, Ordering::SeqCst);
                let _ = tx.send(outcome);
            }),
        };
        self.queue.try_send(batch).map_err(|_| {
            self.in_flight.fetch_sub(n, Ordering::SeqCst);
            SinkFull
        })?;
        Ok(rx)
    }
}

/// A batch of live clicks waiting for the collector, with what to call once it is durable (or
/// failed).
pub struct CollectedBatch {
    /// The clicks.
    pub clicks: Vec<Click>,
    /// The request's rejected clicks, for the `dead-letters` topic.
    pub dead_letters: Vec<DeadLetter>,
    /// Called with the outcome after the commit.
    pub ack: Box<dyn FnOnce(Result<(), String>) + Send>,
}

/// The collector stage: appends live clicks to `click-data`, committing everything waiting in
/// the queue at once (group commit) and acknowledging each request only after its clicks are
/// durable. Runs until `shutdown` is set and the queue is drained.
pub fn run(
    store: &EmbeddedStore,
    queue: &std::sync::mpsc::Receiver<CollectedBatch>,
    metrics: &StageMetrics,
    shutdown: &AtomicBool,
    config: &RunnerConfig,
) -> Result<(), StoreError> {
    use std::sync::mpsc::RecvTimeoutError;
    let key = runner_key("collector");
    let mut counts: RunnerCounts = match store.state(&key)? {
        Some(bytes) => decode(&key, &bytes)?,
        None => RunnerCounts::default(),
    };
    metrics.record(
        counts.events,
        counts.dead_letters,
        json!({"accepted": counts.events}),
    );
    loop {
        let first = match queue.recv_timeout(config.idle_wait) {
            Ok(b) => b,
            Err(RecvTimeoutError::Timeout) if shutdown.load(Ordering::Relaxed) => return Ok(()),
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        };
        let mut waiting = vec![first];
        let mut n = waiting[0].clicks.len();
        let mut letters = waiting[0].dead_letters.len();
        while n < config.batch_size {
            match queue.try_recv() {
                Ok(b) => {
                    n += b.clicks.len();
                    letters += b.dead_letters.len();
                    waiting.push(b);
                }
                Err(_) => break,
            }
        }
        let mut batch = CommitBatch::default();
        for b in &waiting {
            for click in &b.clicks {
                let value = codec::encode(click);
                batch
                    .appends
                    .push((topics::CLICK_DATA.to_owned(), click.visitor.clone(), value));
            }
            for letter in &b.dead_letters {
                batch.appends.push((
                    topics::DEAD_LETTERS.to_owned(),
                    letter.source.clone(),
                    codec::encode(letter),
                ));
            }
        }
        let before = counts;
        let newest = waiting
            .iter()
            .flat_map(|b| &b.clicks)
            .map(|c| c.ts_ms)
            .max();
        counts.newest_ms = counts.newest_ms.max(newest);
        counts.events += n as u64;
        counts.dead_letters += letters as u64;
        batch.state.push((
            key.clone(),
            Some(serde_json::to_vec(&counts).expect("counts serialize")),
        ));
        let outcome = commit_with_retry(store, &batch, "collector", metrics, shutdown, None);
        if outcome.is_err() {
            counts = before;
        }
        for b in waiting {
            (b.ack)(outcome.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        }
        outcome?;
        metrics.record(
            counts.events,
            counts.dead_letters,
            json!({"accepted": counts.events}),
        );
    }
}
