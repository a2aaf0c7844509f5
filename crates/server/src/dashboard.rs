//! The dashboard endpoints: the latest snapshot, and a Server-Sent-Events stream of it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use clickpulse_engine::window::{DashboardHandle, DashboardSnapshot};
use futures_util::Stream;

use crate::privacy::{Audience, Privacy};
use crate::{AppError, AppState};

fn handle(state: &AppState) -> Result<DashboardHandle, AppError> {
    state.dashboard.clone().ok_or_else(|| {
        AppError::NotFound("the aggregation stage does not run in this process".to_owned())
    })
}

/// Who asks: the viewer token (`?viewer=`, or a bearer token), and a visitor's own id and
/// identity token (`?me=&token=`). See [`crate::privacy`].
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct Access {
    viewer: Option<String>,
    me: Option<String>,
    token: Option<String>,
}

impl Access {
    /// What this request may see.
    pub(crate) fn audience(&self, privacy: &Privacy, headers: &HeaderMap) -> Audience {
        privacy.audience(
            headers,
            self.viewer.as_deref(),
            self.me.as_deref(),
            self.token.as_deref(),
        )
    }
}

pub(crate) async fn snapshot(
    State(state): State<AppState>,
    Query(access): Query<Access>,
    headers: HeaderMap,
) -> Result<Json<Option<DashboardSnapshot>>, AppError> {
    let privacy = crate::privacy::of(&state);
    let audience = access.audience(&privacy, &headers);
    Ok(Json(
        handle(&state)?
            .snapshot()
            .map(|s| privacy.snapshot_for(&audience, &s)),
    ))
}

/// How often the stream looks for a new snapshot: at most one event per interval.
const INTERVAL: Duration = Duration::from_secs(1);

pub(crate) async fn stream(
    State(state): State<AppState>,
    Query(access): Query<Access>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, AppError> {
    let handle = handle(&state)?;
    let privacy = crate::privacy::of(&state);
    let audience = access.audience(&privacy, &headers);
    let seen = move |snapshot: Option<Arc<DashboardSnapshot>>| {
        snapshot.map(|s| privacy.snapshot_for(&audience, &s))
    };
    // At most one event per INTERVAL: after sending, wait out the interval, then send the
    // newest snapshot as soon as one differs from what was sent (read at send time, not before
    // the wait, so it is never stale).
    let state = (handle, None::<u64>, None::<tokio::time::Instant>, seen);
    let events = futures_util::stream::unfold(state, |(handle, last, sent_at, seen)| async move {
        if let Some(at) = sent_at {
            tokio::time::sleep_until(at + INTERVAL).await;
        }
        loop {
            let generation = handle.generation();
            if last != Some(generation) {
                let data = serde_json::to_string(&seen(handle.snapshot()))
                    .unwrap_or_else(|_| "null".to_owned());
                let event = Event::default().event("snapshot").data(data);
                let now = tokio::time::Instant::now();
                return Some((Ok(event), (handle, Some(generation), Some(now), seen)));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use clickpulse_engine::metrics::PipelineMetrics;
    use http_body_util::BodyExt;
    use serde_json::Value;
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn snapshot_and_stream_serve_the_latest_dashboard() {
        let handle = DashboardHandle::default();
        handle.publish(DashboardSnapshot {
            now_ms: Some(1000),
            active_visitors_5m: 3,
            ..DashboardSnapshot::default()
        });
        let router = crate::app(AppState {
            dashboard: Some(handle.clone()),
            ..AppState::new(
                Arc::new(PipelineMetrics::default()),
                "embedded",
                Arc::new(clickpulse_engine::topology::Topology::with_sources([])),
            )
        });
        let response = router
            .clone()
            .oneshot(
                Request::builder()
                    .uri("/api/dashboard")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            serde_json::from_slice::<Value>(&body).unwrap()["active_visitors_5m"],
            3
        );

        let response = router
            .oneshot(
                Request::builder()
                    .uri("/api/dashboard/stream")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let mut body = response.into_body();
        let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
        let text = String::from_utf8(frame.to_vec()).unwrap();
        assert!(text.starts_with("event: snapshot\ndata: {"), "{text}");
        assert!(text.contains("\"now_ms\":1000"), "{text}");
        // A new snapshot is pushed once published.
        handle.publish(DashboardSnapshot {
            now_ms: Some(2000),
            ..DashboardSnapshot::default()
        });
        // A hang guard only: the frame is pushed on publish, however slow the machine.
        let frame = tokio::time::timeout(Duration::from_secs(300), body.frame())
            .await
            .expect("hang guard: no frame after a publish")
            .unwrap()
            .unwrap();
        let text = String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap();
        assert!(text.contains("\"now_ms\":2000"), "{text}");
    }
}
