//! `POST /collect`: live page views from websites (the shop, or any site using
//! `clickpulse.js`).
//!
//! The body is one click or an array of at most [`MAX_BATCH`] clicks, as JSON (any content
//! type, so `navigator.sendBeacon` and no-preflight `fetch` work):
//!
//! ```json
//! {"visitor": "amber-falcon-river-42", "url": "https://shop.example/product/VD55177927",
//!  "gender": "F", "age": 30}
//! ```
//! `visitor` and `url` are required; `user_agent`, `ip`, `country`, `city`, `region`, `gender`
//! (M/F/U) and `age` are optional (the user agent and IP default to the request's). The time is
//! stamped by the server with the pipeline's event-time clock (a client's `ts_ms` is ignored:
//! browser clocks cannot be trusted). Answers: `202 {"accepted": n}` (plus
//! `"rejected": [{"index", "error"}]` for invalid clicks of a batch: the valid ones are kept, the
//! others go to the `dead-letters` topic with their reason); `400 {"error"}` naming the
//! first bad click; `413` over the size limit; `503` with `Retry-After` when the pipeline cannot
//! take more — nothing is buffered without bound.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use clickpulse_engine::DeadLetter;
use clickpulse_engine::click::{Click, Gender};
use clickpulse_engine::replay::EventClock;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::oneshot;

use crate::{AppError, AppState};

/// The most clicks in one request.
pub const MAX_BATCH: usize = 500;
/// The largest accepted body, in bytes.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// Where accepted clicks go (the `click-data` topic, through a bounded queue), and rejected
/// ones (the `dead-letters` topic).
pub trait ClickSink: Send + Sync {
    /// Queues clicks and dead letters for publication; `Err` when the queue is full (nothing was
    /// queued). The receiver resolves once all of them are durable (or failed to be).
    fn offer(
        &self,
        clicks: Vec<Click>,
        dead_letters: Vec<DeadLetter>,
    ) -> Result<oneshot::Receiver<Result<(), String>>, SinkFull>;
}

/// The source name of the collector's dead letters.
pub const DEAD_LETTER_SOURCE: &str = "collector";

/// How long a request waits for its clicks to become durable before answering 503.
const DURABLE_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// The sink cannot take more now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkFull;

/// What the collector needs.
#[derive(Clone)]
pub struct Collector {
    /// Where clicks go.
    pub sink: Arc<dyn ClickSink>,
    /// Stamps event time.
    pub clock: Arc<EventClock>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CollectedClick {
    visitor: String,
    url: String,
    #[serde(default)]
    #[allow(dead_code)]
    ts_ms: Option<i64>,
    #[serde(default)]
    ip: Option<String>,
    #[serde(default)]
    user_agent: Option<String>,
    #[serde(default)]
    city: Option<String>,
    #[serde(default)]
    country: Option<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    gender: Option<Gender>,
    #[serde(default)]
    age: Option<u32>,
}

/// A click of a request that was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Its index in the request's batch.
    pub index: usize,
    /// Why (`click 3: missing field `url``).
    pub reason: String,
    /// The click as sent (JSON).
    pub raw: String,
}

/// A request body read into valid clicks and rejected ones: a bad click never costs its
/// neighbours their place.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParsedBody {
    /// The valid clicks, stamped with the server's time.
    pub clicks: Vec<Click>,
    /// The others, with their reasons.
    pub rejected: Vec<Rejected>,
}

/// Parses and validates a request body into clicks stamped at `ts_ms`. A body that is not a
/// JSON click or batch of 1 to [`MAX_BATCH`] clicks is an `Err` (the whole request is refused);
/// invalid clicks inside a batch are [`Rejected`] one by one.
pub fn parse_body(
    bytes: &[u8],
    ts_ms: i64,
    ip: &str,
    user_agent: &str,
) -> Result<ParsedBody, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("body is not UTF-8: {e}"))?;
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("body is not JSON: {e}"))?;
    let items = match value {
        serde_json::Value::Array(items) => items,
        one => vec![one],
    };
    if items.is_empty() {
        return Err("no clicks in the body".to_owned());
    }
    if items.len() > MAX_BATCH {
        return Err(format!(
            "{} clicks in one request; at most {MAX_BATCH}",
            items.len()
        ));
    }
    let mut parsed = ParsedBody::default();
    for (i, item) in items.into_iter().enumerate() {
        let raw = item.to_string();
        match parse_click(item, ts_ms, ip, user_agent) {
            Ok(click) => parsed.clicks.push(click),
            Err(e) => parsed.rejected.push(Rejected {
                index: i,
                reason: format!("click {i}: {e}"),
                raw,
            }),
        }
    }
    Ok(parsed)
}

fn parse_click(
    item: serde_json::Value,
    ts_ms: i64,
    ip: &str,
    user_agent: &str,
) -> Result<Click, String> {
    let c: CollectedClick = serde_json::from_value(item).map_err(|e| e.to_string())?;
    let click = Click {
        ts_ms,
        visitor: c.visitor.trim().to_owned(),
        url: c.url,
        ip: c.ip.unwrap_or_else(|| ip.to_owned()),
        user_agent: c.user_agent.unwrap_or_else(|| user_agent.to_owned()),
        city: c.city,
        country: c.country,
        region: c.region,
        gender: c.gender,
        age: c.age,
    };
    click.validate().map_err(|e| e.to_string())?;
    Ok(click)
}

pub(crate) async fn collect(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let Some(collector) = &state.collector else {
        return Err(AppError::NotFound(
            "the collector does not run in this process".to_owned(),
        ));
    };
    let metrics = state.metrics.stage("collector");
    let body = match body {
        Ok(body) if body.len() <= MAX_BODY_BYTES => body,
        Ok(_) => {
            metrics.error();
            return Err(AppError::TooLarge(format!(
                "body over {MAX_BODY_BYTES} bytes (the limit)"
            )));
        }
        Err(rejection) => {
            metrics.error();
            return Err(crate::limits::body_error(
                rejection.status(),
                &rejection,
                MAX_BODY_BYTES,
            ));
        }
    };
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let ip = peer
        .map(|Extension(ConnectInfo(addr))| addr.ip().to_string())
        .unwrap_or_default();
    let parsed = match parse_body(&body, collector.clock.now_ms(), &ip, user_agent) {
        Ok(parsed) => parsed,
        Err(reason) => {
            metrics.error();
            return Err(AppError::BadRequest(reason));
        }
    };
    let n = parsed.clicks.len();
    let rejected: Vec<serde_json::Value> = parsed
        .rejected
        .iter()
        .map(|r| json!({"index": r.index, "error": r.reason}))
        .collect();
    let letters: Vec<DeadLetter> = parsed
        .rejected
        .iter()
        .map(|r| {
            DeadLetter::new(
                DEAD_LETTER_SOURCE,
                r.index as u64,
                &r.reason,
                r.raw.as_bytes(),
            )
        })
        .collect();
    let unavailable = crate::limits::busy;
    let Ok(durable) = collector.sink.offer(parsed.clicks, letters) else {
        metrics.error();
        return Ok(unavailable("the pipeline is at capacity; retry shortly"));
    };
    // Answer only once the clicks are durable: an accepted click is never lost.
    match tokio::time::timeout(DURABLE_WITHIN, durable).await {
        Ok(Ok(Ok(()))) if n == 0 => {
            // Every click was bad: refused, and kept as dead letters.
            metrics.error();
            let first = parsed.rejected.first().map_or("", |r| r.reason.as_str());
            Ok((
                StatusCode::BAD_REQUEST,
                Json(json!({"error": first, "rejected": rejected})),
            )
                .into_response())
        }
        Ok(Ok(Ok(()))) if !rejected.is_empty() => Ok((
            StatusCode::ACCEPTED,
            Json(json!({"accepted": n, "rejected": rejected})),
        )
            .into_response()),
        Ok(Ok(Ok(()))) => Ok((StatusCode::ACCEPTED, Json(json!({"accepted": n}))).into_response()),
        Ok(Ok(Err(error))) => {
            tracing::warn!(%error, "Collected clicks could not be stored.");
            metrics.error();
            Ok(unavailable(
                "the pipeline cannot store clicks right now; retry shortly",
            ))
        }
        Ok(Err(_)) | Err(_) => {
            metrics.error();
            Ok(unavailable("the pipeline is not keeping up; retry shortly"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_click_or_a_batch_stamped_by_the_server() {
        let clicks = parse_body(
            br#"{"visitor":"v","url":"http://x/p/VD1","gender":"F","age":30,"ts_ms":1}"#,
            5_000,
            "1.2.3.4",
            "UA",
        )
        .unwrap()
        .clicks;
        assert_eq!(clicks.len(), 1);
        assert_eq!(
            (
                clicks[0].ts_ms,
                clicks[0].ip.as_str(),
                clicks[0].user_agent.as_str()
            ),
            (5_000, "1.2.3.4", "UA")
        );
        assert_eq!(
            (clicks[0].gender, clicks[0].age),
            (Some(Gender::F), Some(30))
        );
        let batch = parse_body(br#"[{"visitor":"a","url":"http://x/1"},{"visitor":"b","url":"http://x/2","ip":"9.9.9.9"}]"#, 1, "", "").unwrap().clicks;
        assert_eq!(batch[1].ip, "9.9.9.9");
    }

    #[test]
    fn a_bad_click_is_rejected_alone() {
        let parsed = parse_body(
            br#"[{"visitor":"a","url":"http://x/1"},{"visitor":"","url":"http://x/2"},{"url":"x"},{"visitor":"c","url":"http://x/3"}]"#,
            1,
            "",
            "",
        )
        .unwrap();
        let kept: Vec<&str> = parsed.clicks.iter().map(|c| c.visitor.as_str()).collect();
        assert_eq!(kept, ["a", "c"]);
        let rejected: Vec<(usize, &str)> = parsed
            .rejected
            .iter()
            .map(|r| (r.index, r.reason.as_str()))
            .collect();
        assert_eq!(
            rejected,
            [
                (1, "click 1: empty visitor id"),
                (2, "click 2: missing field `visitor`")
            ]
        );
        assert_eq!(parsed.rejected[1].raw, r#"{"url":"x"}"#);
    }

    #[test]
    fn bad_bodies_get_clear_reasons() {
        // The whole body's problems refuse it; a lone click's problem is its rejection.
        let err = |b: &[u8]| match parse_body(b, 1, "", "") {
            Err(reason) => reason,
            Ok(parsed) => {
                assert!(parsed.clicks.is_empty(), "{parsed:?}");
                parsed.rejected[0].reason.clone()
            }
        };
        assert!(err(b"not json").starts_with("body is not JSON"));
        assert!(err(b"[]").contains("no clicks"));
        assert!(err(br#"{"url":"http://x/1"}"#).contains("missing field `visitor`"));
        assert!(err(br#"{"visitor":"","url":"http://x/1"}"#).contains("click 0: empty visitor id"));
        assert!(err(br#"{"visitor":"v","url":"http://x/1","gender":"X"}"#).contains("click 0"));
        assert!(
            err(br#"{"visitor":"v","url":"http://x/1","shoe_size":42}"#)
                .contains("unknown field `shoe_size`")
        );
        assert!(err(&[0xff, 0xfe]).contains("not UTF-8"));
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(
            err(deep.as_bytes()).starts_with("body is not JSON"),
            "deep nesting is refused, not a stack overflow"
        );
        let many = format!(
            "[{}]",
            vec![r#"{"visitor":"v","url":"u"}"#; MAX_BATCH + 1].join(",")
        );
        assert!(err(many.as_bytes()).contains("at most 500"));
    }
}
