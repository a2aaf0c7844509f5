//! The embedded collector's sink: `POST /collect` hands its clicks to the collector stage through
//! a queue bounded in clicks (used by `demo` and `bench collector`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use clickpulse_connectors::embedded::runner::CollectedBatch;
use clickpulse_engine::DeadLetter;
use clickpulse_engine::click::Click;
use clickpulse_server::collector::{ClickSink, SinkFull};
use tokio::sync::oneshot;

/// Most requests' batches waiting for the collector stage (each also counts against
/// `--collector-queue` clicks).
pub(crate) const COLLECTOR_BATCHES: usize = 4_096;

/// Feeds `POST /collect` into the collector stage through a queue bounded in clicks: when it is
/// full the collector answers 503 instead of buffering without limit.
pub(crate) struct QueueSink {
    queue: std::sync::mpsc::SyncSender<CollectedBatch>,
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    max_in_flight: usize,
}

impl QueueSink {
    /// A sink into `queue` holding at most `max_in_flight` clicks not yet durable.
    pub(crate) fn new(
        queue: std::sync::mpsc::SyncSender<CollectedBatch>,
        max_in_flight: usize,
    ) -> Self {
        QueueSink {
            queue,
            in_flight: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            max_in_flight,
        }
    }
}

impl QueueSink {
    /// Clicks handed to the sink and not yet durable (or failed).
    pub(crate) fn pending(&self) -> usize {
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
