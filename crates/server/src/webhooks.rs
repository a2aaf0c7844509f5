//! The webhooks' routes. `GET /api/webhooks` shows each endpoint's deliveries (pending,
//! delivered, retried, dead-lettered, disabled: the webhooks stage's counters, no visitor data
//! and no URLs, which may hold credentials). `POST /api/webhooks/replay` (admin token) puts the
//! dead letters back into the outbox: the webhooks stage of this process takes the request at
//! its next poll, re-queues the matching deliveries with their attempts reset (same
//! `webhook-id`, so receivers still de-duplicate), re-enables an endpoint a `410` disabled when
//! asked to, and answers how many it re-queued. `clickpulse webhooks replay` calls it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::{AppError, AppState};

/// How long a replay request waits for the stage's answer (it polls far more often; no answer
/// means no active webhooks stage here: a standby, or one not started).
pub const REPLAY_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Which dead letters a replay sends again (every one when both are empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplayFilter {
    /// Only this endpoint's.
    pub endpoint: Option<String>,
    /// Only this delivery (its `webhook-id`, the offer id).
    pub id: Option<String>,
    /// Also re-enable the endpoint(s) a `410 Gone` disabled.
    pub enable: bool,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct ReplayReport {
    /// Deliveries put back into the outbox.
    pub requeued: u64,
    /// Endpoints re-enabled.
    pub enabled: Vec<String>,
    /// Dead letters left (not matching, or of an endpoint still disabled).
    pub dead_letters_left: u64,
}

/// One replay request, for the stage to answer.
pub struct ReplayRequest {
    /// What to replay.
    pub filter: ReplayFilter,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Result<ReplayReport, String>>,
}

/// The routes' end of the channel to the webhooks stage (in [`AppState`]).
#[derive(Clone)]
pub struct WebhookControl {
    requests: mpsc::Sender<ReplayRequest>,
}

/// The stage's end: it takes the requests waiting at each poll (shared by the stage's
/// successive tasks, one at a time: distributed, a new one after each rebalance).
#[derive(Clone)]
pub struct ControlInbox {
    requests: Arc<Mutex<mpsc::Receiver<ReplayRequest>>>,
}

impl ControlInbox {
    /// The next request waiting, if any (never blocks).
    pub fn try_next(&mut self) -> Option<ReplayRequest> {
        self.requests.lock().ok()?.try_recv().ok()
    }
}

/// A connected pair.
pub fn control() -> (WebhookControl, ControlInbox) {
    // Few requests, each answered at the stage's next poll.
    let (requests, inbox) = mpsc::channel(16);
    (
        WebhookControl { requests },
        ControlInbox {
            requests: Arc::new(Mutex::new(inbox)),
        },
    )
}

/// `GET /api/webhooks`: the webhooks stage's counters, per endpoint.
pub(crate) async fn status(State(state): State<AppState>) -> Json<Value> {
    let snapshot = state.metrics.snapshot();
    let stage = &snapshot["stages"]["webhooks"];
    Json(json!({
        "hosted": !stage.is_null(),
        "endpoints": stage["details"]["endpoints"].clone(),
    }))
}

/// `POST /api/webhooks/replay` (admin): re-queues the dead letters the body's filter matches.
pub(crate) async fn replay(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<ReplayReport>, AppError> {
    crate::require_admin(&state, &headers)?;
    let filter: ReplayFilter = if body.iter().all(u8::is_ascii_whitespace) {
        ReplayFilter::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| AppError::BadRequest(format!("the replay filter: {e}")))?
    };
    let Some(control) = &state.webhooks else {
        return Err(AppError::NotFound(
            "the webhooks stage does not run in this process".to_owned(),
        ));
    };
    let (reply, answer) = oneshot::channel();
    control
        .requests
        .try_send(ReplayRequest { filter, reply })
        .map_err(|_| unavailable())?;
    match tokio::time::timeout(REPLAY_ANSWER_TIMEOUT, answer).await {
        Ok(Ok(Ok(report))) => Ok(Json(report)),
        Ok(Ok(Err(problem))) => Err(AppError::BadRequest(problem)),
        Ok(Err(_)) | Err(_) => Err(unavailable()),
    }
}

fn unavailable() -> AppError {
    AppError::NotFound(
        "the webhooks stage of this process is not active (a standby holds no outbox); ask the \
         process that holds its lease"
            .to_owned(),
    )
}
