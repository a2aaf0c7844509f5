//! What bounds a client's hold on the server: sizes, times and counts, so hostile or broken
//! clients (huge bodies, slowloris, thousands of idle connections) cost bounded memory and get
//! a clear answer.
//!
//! | limit | value | what happens beyond it |
//! |---|---|---|
//! | request head (line + headers) | [`MAX_HEAD_BYTES`] = 64 KiB | hyper answers `431` and closes |
//! | time to send a request head | [`HEADER_READ_TIMEOUT`] = 10 s | the connection is closed (this also ends idle keep-alive connections) |
//! | body of `POST /collect` | [`collector::MAX_BODY_BYTES`](crate::collector::MAX_BODY_BYTES) = 256 KiB | `413`, after reading at most that much |
//! | body of any other route | [`MAX_BODY_BYTES`] = 64 KiB | `413`, after reading at most that much |
//! | time to send a request body | [`BODY_DEADLINE`] = 10 s from the request head | `408` and the connection is closed |
//! | open connections | [`MAX_CONNECTIONS`] = 1,024 | new ones wait in the listen backlog until one closes |
//! | requests being handled | [`MAX_IN_FLIGHT`] = 256 | `503` with `Retry-After: 1` |
//! | open event streams (`/api/dashboard/stream`, `/api/offers/stream`) | [`MAX_STREAMS`] = 256 | `503` with `Retry-After`, and the connection is closed |
//! | open event streams from one client address | [`MAX_STREAMS_PER_CLIENT`] = 8 | `429` with `Retry-After`, and the connection is closed |
//! | lifetime of an event stream | [`STREAM_MAX_LIFETIME`] = 5 min | the stream ends; EventSource reconnects by itself |
//! | request body encoding | none (`Content-Encoding` absent or `identity`) | `415` |
//! | graceful shutdown | [`SHUTDOWN_GRACE`] = 5 s | connections still open (event streams) are dropped |
//!
//! Event streams are the only long-lived requests. They have their own budget, well below the
//! connection cap, so however many a client opens they hold at most [`MAX_STREAMS`] of the
//! [`MAX_CONNECTIONS`] connections: the other 768 stay for short requests (`/collect`,
//! `/api/health`, pages). A refused stream is answered at once and its connection closed, so
//! refused clients do not sit on connection slots either; a stream in progress does not count
//! as a request in flight (it holds its stream slot instead). The per-address cap keys on the
//! TCP peer: behind a reverse proxy every client shares the proxy's address, so raise
//! `max_streams_per_client` there (or let the proxy bound its clients).
//!
//! hyper's head limit is soft: a head that arrives in one read may exceed it (a 100 KB head
//! sent in one write was served). The router therefore measures every parsed head and answers
//! `431` over [`MAX_HEAD_BYTES`], so the limit is exact; hyper's buffer itself stays below
//! twice the limit (it grows by at most its last read, itself at most the limit).
//!
//! So memory for requests is bounded by about `MAX_CONNECTIONS × 128 KiB` of connection buffers
//! plus `MAX_IN_FLIGHT × 256 KiB` of bodies being read (≈ 128 + 64 MiB at worst). Every error
//! the router produces is `{"error": "..."}` JSON ([`json_errors`]); only hyper's own answers to
//! unparsable request heads (`400`, `431`) come before the router and have no body.
//!
//! Every response carries [`security_headers`]: a `Content-Security-Policy` that lets the pages
//! load only this server's scripts, styles, images and streams (the pages in `web/` have no
//! inline scripts or styles), `X-Frame-Options: DENY` and `X-Content-Type-Options: nosniff`.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::body::Bytes;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::AppError;

/// Longest accepted request head (request line and headers), in bytes.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// How long a client may take to send a request head, counted from when the server starts
/// waiting for it (so it also closes keep-alive connections idle for that long).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest body of a route other than `POST /collect`, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// How long a client may take to send a whole request body, from the request head on.
pub const BODY_DEADLINE: Duration = Duration::from_secs(10);
/// Most open connections; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 1_024;
/// Most requests handled at once; more are answered `503` with `Retry-After`.
pub const MAX_IN_FLIGHT: usize = 256;
/// How long graceful shutdown waits for open connections before dropping them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Most event streams open at once, all clients and both kinds together: a quarter of
/// [`MAX_CONNECTIONS`], so streams never take the connections short requests need.
pub const MAX_STREAMS: usize = 256;
/// Most event streams open at once from one client (IP) address: a few tabs of the shop and
/// the dashboard.
pub const MAX_STREAMS_PER_CLIENT: usize = 8;
/// How long an event stream stays open before the server ends it (the client reconnects, as
/// EventSource does by itself), so no client keeps a stream slot for ever.
pub const STREAM_MAX_LIFETIME: Duration = Duration::from_secs(5 * 60);
/// The routes that are event streams.
pub const STREAM_PATHS: [&str; 2] = ["/api/dashboard/stream", "/api/offers/stream"];
/// The `Content-Security-Policy` of every response: this server's own scripts, styles, images
/// (and `data:` ones: the pages' icons), fetches and event streams only; no frames, no plugins.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
     object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The time and count limits, [`Default`] being the constants of this module (tests use
/// shorter ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// See [`HEADER_READ_TIMEOUT`].
    pub header_read_timeout: Duration,
    /// See [`BODY_DEADLINE`].
    pub body_deadline: Duration,
    /// See [`MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// See [`MAX_IN_FLIGHT`].
    pub max_in_flight: usize,
    /// See [`SHUTDOWN_GRACE`].
    pub shutdown_grace: Duration,
    /// See [`MAX_STREAMS`].
    pub max_streams: usize,
    /// See [`MAX_STREAMS_PER_CLIENT`].
    pub max_streams_per_client: usize,
    /// See [`STREAM_MAX_LIFETIME`].
    pub stream_max_lifetime: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_read_timeout: HEADER_READ_TIMEOUT,
            body_deadline: BODY_DEADLINE,
            max_connections: MAX_CONNECTIONS,
            max_in_flight: MAX_IN_FLIGHT,
            shutdown_grace: SHUTDOWN_GRACE,
            max_streams: MAX_STREAMS,
            max_streams_per_client: MAX_STREAMS_PER_CLIENT,
            stream_max_lifetime: STREAM_MAX_LIFETIME,
        }
    }
}

/// Wraps every route of `router` in the request limits: the head size and body encoding
/// checks, the stream budget, the default body size limit, the body deadline, the in-flight
/// cap (shedding with `503`), JSON error bodies and the security headers.
pub(crate) fn apply(router: Router, limits: &ServerLimits) -> Router {
    use axum::error_handling::HandleErrorLayer;
    use tower::ServiceBuilder;
    let gate = Arc::new(StreamGate::new(limits));
    router
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::timeout::RequestBodyDeadlineLayer::new(
            limits.body_deadline,
        ))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
                    busy("the server is handling too many requests; retry shortly")
                }))
                .load_shed()
                .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
                    limits.max_in_flight,
                )),
        )
        // Outside the in-flight cap: a stream is refused or admitted by its own budget, and a
        // stream that is refused never waits for a request slot.
        .layer(axum::middleware::from_fn_with_state(gate, gate_streams))
        .layer(axum::middleware::from_fn(check_head))
        .layer(axum::middleware::map_response(json_errors))
        .layer(axum::middleware::map_response(security_headers))
}

/// Adds the security headers to a response: [`CONTENT_SECURITY_POLICY`],
/// `X-Frame-Options: DENY`, `X-Content-Type-Options: nosniff`.
pub async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// The size of a parsed request head as sent: request line and header lines with their CRLFs.
fn head_bytes(request: &Request<Body>) -> usize {
    let line = request.method().as_str().len()
        + request
            .uri()
            .path_and_query()
            .map_or(1, |p| p.as_str().len())
        + " HTTP/1.1\r\n".len()
        + 1;
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    line + headers + 2
}

/// Refuses a head over [`MAX_HEAD_BYTES`] (`431`) and a compressed or otherwise encoded body
/// (`415`: every endpoint takes plain text or JSON), before any body is read.
async fn check_head(request: Request<Body>, next: Next) -> Response {
    let size = head_bytes(&request);
    if size > MAX_HEAD_BYTES {
        return closing(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            &format!("request head of {size} bytes; at most {MAX_HEAD_BYTES}"),
        );
    }
    if let Some(encoding) = encoded(request.headers()) {
        return closing(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &format!("Content-Encoding {encoding:?} is not supported: send the body uncompressed"),
        );
    }
    next.run(request).await
}

/// The request's `Content-Encoding` when it is not `identity`.
fn encoded(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_ENCODING)?;
    let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
    (!text.trim().eq_ignore_ascii_case("identity")).then_some(text)
}

/// `{"error": reason}` with `status` and `Connection: close` (the client's connection is not
/// kept for another request).
fn closing(status: StatusCode, reason: &str) -> Response {
    let mut response = (status, axum::Json(json!({"error": reason}))).into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The event streams' budget: [`ServerLimits::max_streams`] in all, at most
/// [`ServerLimits::max_streams_per_client`] per client address, each at most
/// [`ServerLimits::stream_max_lifetime`].
struct StreamGate {
    total: Arc<Semaphore>,
    per_client: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max_per_client: usize,
    max_total: usize,
    lifetime: Duration,
}

/// A client's share of the stream budget, returned when dropped.
struct ClientSlot {
    per_client: Arc<Mutex<HashMap<IpAddr, usize>>>,
    client: Option<IpAddr>,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let Some(client) = self.client else { return };
        if let Ok(mut map) = self.per_client.lock()
            && let Some(n) = map.get_mut(&client)
        {
            *n -= 1;
            if *n == 0 {
                map.remove(&client);
            }
        }
    }
}

impl StreamGate {
    fn new(limits: &ServerLimits) -> Self {
        StreamGate {
            total: Arc::new(Semaphore::new(limits.max_streams)),
            per_client: Arc::new(Mutex::new(HashMap::new())),
            max_per_client: limits.max_streams_per_client,
            max_total: limits.max_streams,
            lifetime: limits.stream_max_lifetime,
        }
    }

    /// A slot for one more stream of `client`, if it has fewer than its cap open.
    fn client_slot(&self, client: Option<IpAddr>) -> Option<ClientSlot> {
        if let Some(ip) = client {
            let mut map = self.per_client.lock().expect("stream gate lock");
            let n = map.entry(ip).or_insert(0);
            if *n >= self.max_per_client {
                return None;
            }
            *n += 1;
        }
        Some(ClientSlot {
            per_client: self.per_client.clone(),
            client,
        })
    }
}

/// Admits an event stream within the budget (else `429`/`503` at once, closing the connection)
/// and ends it at its maximum lifetime; other requests pass.
async fn gate_streams(
    axum::extract::State(gate): axum::extract::State<Arc<StreamGate>>,
    request: Request<Body>,
    next: Next,
) -> Response {
    if !STREAM_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    let Some(client_slot) = gate.client_slot(client) else {
        let mut response = closing(
            StatusCode::TOO_MANY_REQUESTS,
            &format!(
                "too many event streams open from your address (at most {}); close one or \
                 retry later",
                gate.max_per_client
            ),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
        return response;
    };
    let Ok(slot) = gate.total.clone().try_acquire_owned() else {
        let mut response = closing(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "the server has its {} event streams open; retry shortly",
                gate.max_total
            ),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return response;
    };
    let response = next.run(request).await;
    if !response.status().is_success() {
        return response;
    }
    let (parts, body) = response.into_parts();
    let body = BoundedStream {
        inner: body,
        end: Box::pin(tokio::time::sleep(gate.lifetime)),
        _slots: (slot, client_slot),
    };
    Response::from_parts(parts, Body::new(body))
}

/// An event stream's body, holding its budget slots, that ends at the stream's lifetime.
struct BoundedStream {
    inner: Body,
    end: Pin<Box<tokio::time::Sleep>>,
    _slots: (OwnedSemaphorePermit, ClientSlot),
}

impl hyper::body::Body for BoundedStream {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if this.end.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Pin::new(&mut this.inner).poll_frame(cx)
    }
}

/// `503 {"error": reason}` with `Retry-After: 1`.
pub(crate) fn busy(reason: &str) -> Response {
    let mut response = (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({"error": reason})),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// Turns an error response that is not JSON (axum's rejections, `405`, a missing asset) into
/// `{"error": text}`, keeping its status and headers.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4_096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
    } else {
        text
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(json!({"error": message}).to_string()))
}

/// The error for a body that could not be read: `408` past the [`BODY_DEADLINE`], `413` over
/// `limit` bytes, else `400`.
pub(crate) fn body_error(
    status: StatusCode,
    error: &(dyn std::error::Error + 'static),
    limit: usize,
) -> AppError {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<tower_http::timeout::TimeoutError>() {
            return AppError::Timeout(
                "the request body did not arrive within the body deadline".to_owned(),
            );
        }
        cause = e.source();
    }
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        AppError::TooLarge(format!("body over {limit} bytes (the limit)"))
    } else {
        AppError::BadRequest(format!(
            "cannot read the request body: {}",
            clickpulse_engine::error_chain_skipping(error, |text| {
                // hyper's generic layer, which says nothing its cause does not
                text.starts_with("Failed to buffer the request body")
            })
        ))
    }
}

/// Serves `router` on `listener` with `limits` until `shutdown` completes, then stops accepting,
/// lets open requests finish for up to `limits.shutdown_grace`, and returns.
///
/// HTTP/1.1 through hyper directly rather than `axum::serve`, which cannot bound the time a
/// client takes to send its request head (slowloris).
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: &ServerLimits,
) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            biased;
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors or an aborted handshake: wait a moment.
                    tracing::debug!(%error, "Accept failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = tower::ServiceExt::map_request(
            router.clone(),
            move |mut request: Request<Incoming>| {
                request
                    .extensions_mut()
                    .insert(ConnectInfo::<SocketAddr>(peer));
                request
            },
        );
        let connection = graceful
            .watch(http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service)));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "Connection closed with an error.");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::info!(
            grace_ms = limits.shutdown_grace.as_millis() as u64,
            "Connections still open after the shutdown grace period are dropped."
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The time limits run on tokio's paused clock (`start_paused`): hyper's header timer
    //! ([`TokioTimer`]), tower-http's body deadline and the shutdown grace all sleep on tokio
    //! time, which then stands still while any task can run or any socket has news, and jumps to
    //! the next timer once everything is idle. So the times measured here (tokio's [`Instant`])
    //! are the limits themselves, however slow or busy the machine; nothing is wall time.

    use super::*;
    use crate::AppState;
    use crate::collector::{ClickSink, Collector, SinkFull};
    use clickpulse_engine::click::Click;
    use clickpulse_engine::metrics::PipelineMetrics;
    use clickpulse_engine::replay::EventClock;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;
    use tokio::time::Instant;

    /// How long (paused time) a wait for something that must happen may last before the test
    /// gives up: only a guard against hanging forever on a broken server, never a measure.
    const HANG_GUARD: Duration = Duration::from_secs(600);
    /// Paused time between a limit's timer firing and the client seeing its effect: the clients
    /// below look every 100 ms, so a few such steps at most.
    const SLACK: Duration = Duration::from_millis(500);

    /// Panics (naming `what`) once `started` is [`HANG_GUARD`] ago.
    fn hang_guard(started: Instant, what: &str) {
        if started.elapsed() > HANG_GUARD {
            panic!("hang guard: still waiting for {what} after {HANG_GUARD:?} of paused time");
        }
    }

    /// Returns once every task is idle: paused time advances only then, so the server has done
    /// all it can with what was sent so far (accepted connections, read bytes).
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    /// Takes every batch at once.
    struct Instant202;

    impl ClickSink for Instant202 {
        fn offer(
            &self,
            _clicks: Vec<Click>,
            _dead_letters: Vec<clickpulse_engine::DeadLetter>,
        ) -> Result<oneshot::Receiver<Result<(), String>>, SinkFull> {
            let (tx, rx) = oneshot::channel();
            let _ = tx.send(Ok(()));
            Ok(rx)
        }
    }

    fn state() -> AppState {
        let mut state = AppState::new(
            Arc::new(PipelineMetrics::default()),
            "embedded",
            Arc::new(clickpulse_engine::topology::Topology::with_sources([])),
        );
        state.collector = Some(Collector {
            sink: Arc::new(Instant202),
            clock: Arc::new(EventClock::default()),
            identity: crate::collector::Identity::new(crate::offers::OfferTokens::new(b"test")),
            ignored: Default::default(),
        });
        state
    }

    fn short() -> ServerLimits {
        ServerLimits {
            header_read_timeout: Duration::from_millis(800),
            body_deadline: Duration::from_millis(800),
            max_connections: 64,
            max_in_flight: 64,
            shutdown_grace: Duration::from_secs(1),
            max_streams: 8,
            max_streams_per_client: 3,
            stream_max_lifetime: Duration::from_secs(120),
        }
    }

    /// Serves the app with `limits` on a loopback port; the server stops when the sender drops.
    async fn start(limits: ServerLimits) -> (SocketAddr, oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let router = crate::app_with(state(), &limits);
        tokio::spawn(async move {
            serve_with(
                listener,
                router,
                async {
                    let _ = stopped.await;
                },
                &limits,
            )
            .await
            .unwrap();
        });
        (addr, stop)
    }

    /// Sends `request` and reads until the server closes or `within` (paused time) passes;
    /// returns what came back and when the connection closed (`None`: still open).
    async fn exchange(
        addr: SocketAddr,
        request: &[u8],
        within: Duration,
    ) -> (String, Option<Duration>) {
        let started = Instant::now();
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let closed = loop {
            match tokio::time::timeout_at(started + within, stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break Some(started.elapsed()),
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Err(_) => break None,
            }
        };
        (String::from_utf8_lossy(&got).into_owned(), closed)
    }

    async fn health_ok(addr: SocketAddr) -> bool {
        let (text, _) = exchange(
            addr,
            b"GET /api/health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            HANG_GUARD,
        )
        .await;
        text.starts_with("HTTP/1.1 200") && text.contains(r#"{"status":"ok"}"#)
    }

    #[tokio::test(start_paused = true)]
    async fn slowloris_headers_are_dropped_while_others_are_served() {
        let limits = short();
        let (addr, _stop) = start(limits.clone()).await;
        let slow = tokio::spawn(async move {
            let started = Instant::now();
            let mut stream = TcpStream::connect(addr).await.unwrap();
            // One byte every 100 ms, forever: the head never completes.
            for byte in b"POST /collect HTTP/1.1\r\nhost: x\r\nx-slow: "
                .iter()
                .cycle()
            {
                if stream.write_all(&[*byte]).await.is_err() {
                    break;
                }
                let mut buf = [0u8; 1];
                if let Ok(Ok(0)) =
                    tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await
                {
                    break;
                }
                hang_guard(started, "the slowloris connection to be dropped");
            }
            started.elapsed()
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(health_ok(addr).await, "others are served meanwhile");
        assert!(
            !slow.is_finished(),
            "the health check was answered only after the slow client was dropped"
        );
        let dropped_after = slow.await.unwrap();
        // The header timer starts once the connection is made, so never earlier; and paused time
        // jumps to it as soon as everything is idle, so not later than a few 100 ms steps after.
        assert!(
            dropped_after >= limits.header_read_timeout
                && dropped_after < limits.header_read_timeout + SLACK,
            "dropped after {dropped_after:?} of paused time"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_keep_alive_connections_are_closed() {
        let limits = short();
        let (addr, _stop) = start(limits.clone()).await;
        let (text, closed) = exchange(
            addr,
            b"GET /api/health HTTP/1.1\r\nhost: x\r\n\r\n",
            HANG_GUARD,
        )
        .await;
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        let closed = closed.expect("the idle connection is closed (hang guard)");
        assert!(
            closed >= limits.header_read_timeout && closed < limits.header_read_timeout + SLACK,
            "closed after {closed:?} of paused time"
        );
        // A connection that never sends anything is closed too.
        let (text, closed) = exchange(addr, b"", HANG_GUARD).await;
        assert!(text.is_empty(), "{text}");
        let closed = closed.expect("the silent connection is closed (hang guard)");
        assert!(
            closed >= limits.header_read_timeout && closed < limits.header_read_timeout + SLACK,
            "closed after {closed:?} of paused time"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_body_gets_408_after_the_deadline() {
        let limits = short();
        let (addr, _stop) = start(limits.clone()).await;
        let started = Instant::now();
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"POST /collect HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n[")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            // One byte every 100 ms (ignoring write errors once the server gave up).
            let _ = stream.write_all(b" ").await;
            match tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
            hang_guard(started, "an answer to the slow body");
        }
        let answered = started.elapsed();
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(
            text.contains(
                r#"{"error":"the request body did not arrive within the body deadline"}"#
            ),
            "{text}"
        );
        // The deadline runs from the request head on, so never earlier.
        assert!(
            answered >= limits.body_deadline && answered < limits.body_deadline + SLACK,
            "answered after {answered:?} of paused time"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn connections_beyond_the_cap_wait_for_a_free_slot() {
        let limits = ServerLimits {
            max_connections: 2,
            ..short()
        };
        let (addr, _stop) = start(limits.clone()).await;
        let started = Instant::now();
        // Two idle connections take both slots until the header timeout closes them. The listen
        // backlog is first in, first out: they are accepted before the health check's.
        let idle: Vec<TcpStream> = vec![
            TcpStream::connect(addr).await.unwrap(),
            TcpStream::connect(addr).await.unwrap(),
        ];
        assert!(health_ok(addr).await);
        let waited = started.elapsed();
        assert!(
            waited >= limits.header_read_timeout && waited < limits.header_read_timeout + SLACK,
            "served after {waited:?} of paused time"
        );
        drop(idle);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_beyond_the_in_flight_cap_get_503_with_retry_after() {
        let limits = ServerLimits {
            max_in_flight: 1,
            body_deadline: Duration::from_secs(5),
            ..short()
        };
        let (addr, _stop) = start(limits).await;
        // A request whose body never comes holds the only slot once it reaches the handler; a
        // request answered before that is served (200). Ask until one is refused.
        let mut holder = TcpStream::connect(addr).await.unwrap();
        holder
            .write_all(b"POST /collect HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n")
            .await
            .unwrap();
        let started = Instant::now();
        let text = loop {
            let (text, _) = exchange(
                addr,
                b"GET /api/health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
                HANG_GUARD,
            )
            .await;
            if !text.starts_with("HTTP/1.1 200") {
                break text;
            }
            hang_guard(started, "a request to be refused while the slot is held");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert!(text.starts_with("HTTP/1.1 503"), "{text}");
        assert!(
            text.to_ascii_lowercase().contains("retry-after: 1"),
            "{text}"
        );
        assert!(
            text.contains(r#""error":"the server is handling too many requests"#),
            "{text}"
        );
        drop(holder);
    }

    #[tokio::test(start_paused = true)]
    async fn graceful_shutdown_is_bounded_with_open_connections() {
        let limits = ServerLimits {
            header_read_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_millis(300),
            ..short()
        };
        let grace = limits.shutdown_grace;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let router = crate::app_with(state(), &limits);
        let server = tokio::spawn(async move {
            serve_with(
                listener,
                router,
                async {
                    let _ = stopped.await;
                },
                &limits,
            )
            .await
        });
        let mut half = TcpStream::connect(addr).await.unwrap();
        half.write_all(b"GET /api/he").await.unwrap();
        // The server has accepted it and read what there is.
        settle().await;
        let started = Instant::now();
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
        // The open connection (its head never completes, its header timeout is a minute) holds
        // the shutdown for the whole grace period, and no longer.
        let took = started.elapsed();
        assert!(
            took >= grace && took < grace + SLACK,
            "shut down after {took:?} of paused time"
        );
        drop(half);
    }

    async fn call(request: Request<Body>) -> (StatusCode, serde_json::Value) {
        let response = tower::ServiceExt::oneshot(crate::app(state()), request)
            .await
            .unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)));
        (status, body)
    }

    fn post(uri: &str, body: Body) -> Request<Body> {
        Request::post(uri).body(body).unwrap()
    }

    /// A body that never ends: reading it all would never finish.
    fn endless() -> Body {
        let chunk = axum::body::Bytes::from(vec![b' '; 64 * 1024]);
        Body::from_stream(futures_util::stream::repeat_with(move || {
            Ok::<_, std::io::Error>(chunk.clone())
        }))
    }

    #[tokio::test]
    async fn oversized_bodies_get_413_without_being_read_whole() {
        // Declared length over the limit.
        let request = Request::post("/collect")
            .header(header::CONTENT_LENGTH, 10 * 1024 * 1024)
            .body(endless())
            .unwrap();
        let (status, body) = call(request).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body["error"], "body over 262144 bytes (the limit)");
        // No length (chunked), endless.
        let (status, body) = call(post("/collect", endless())).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
        // Other routes read at most the 64 KiB default limit: an endless body still gets an
        // answer (here the missing token; `tests/hostile_http.rs` sends one and gets 413).
        let request = Request::put("/api/patterns/x")
            .header(header::AUTHORIZATION, "Bearer nope")
            .body(endless())
            .unwrap();
        let (status, body) = call(request).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }

    #[tokio::test]
    async fn batches_at_and_over_the_limits() {
        // Anonymous clicks: a click naming a visitor needs that visitor's token.
        let click = |i: usize| format!(r#"{{"url":"http://x/p/VD1?n={i}"}}"#);
        let batch = |n: usize, pad: usize| {
            let items: Vec<String> = (0..n)
                .map(|i| {
                    let c = click(i);
                    format!(
                        "{}{}",
                        &c[..c.len() - 1],
                        format_args!(r#","city":"{}"}}"#, "c".repeat(pad))
                    )
                })
                .collect();
            format!("[{}]", items.join(","))
        };
        let (status, body) = call(post("/collect", Body::from(batch(501, 0)))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], "501 clicks in one request; at most 500");
        // 500 clicks just under the size limit are taken; a little more is 413.
        let one = batch(500, 0).len();
        let pad = (crate::collector::MAX_BODY_BYTES - one) / 500;
        let fits = batch(500, pad);
        assert!(fits.len() <= crate::collector::MAX_BODY_BYTES);
        let (status, body) = call(post("/collect", Body::from(fits))).await;
        assert_eq!(
            (status, body["accepted"].as_u64()),
            (StatusCode::ACCEPTED, Some(500))
        );
        let (status, body) = call(post("/collect", Body::from(batch(500, pad + 1)))).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body["error"], "body over 262144 bytes (the limit)");
    }

    #[tokio::test]
    async fn malformed_bodies_get_400_with_a_reason() {
        let cases: [(&[u8], &str); 6] = [
            (b"\xff\xfe{}", "body is not UTF-8"),
            // Lone surrogate escapes cannot become a Rust string.
            (
                br#"{"visitor":"\ud800","url":"http://x/1"}"#,
                "body is not JSON: unexpected end of hex escape",
            ),
            (
                br#"{"visitor":"\ud800\u0041","url":"http://x/1"}"#,
                "body is not JSON: lone leading surrogate in hex escape",
            ),
            (
                br#"{"visitor":"\udc00","url":"http://x/1"}"#,
                "body is not JSON: lone leading surrogate in hex escape",
            ),
            (
                b"{\"visitor\":\"v\",\"url\":\"http://x/\xc3\"}",
                "body is not UTF-8",
            ),
            (b"", "body is not JSON"),
        ];
        for (bytes, reason) in cases {
            let (status, body) = call(post("/collect", Body::from(bytes.to_vec()))).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            assert!(
                body["error"].as_str().unwrap().starts_with(reason),
                "{body}"
            );
        }
        // 100,000 nested arrays or objects: serde_json's recursion limit (128), no overflow.
        for (open, close) in [("[", "]"), (r#"{"a":"#, "}")] {
            let deep = format!("{}{}", open.repeat(100_000), close.repeat(100_000));
            let deep = deep.into_bytes();
            let truncated = deep[..deep.len().min(crate::collector::MAX_BODY_BYTES)].to_vec();
            let (status, body) = call(post("/collect", Body::from(truncated))).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            assert!(
                body["error"]
                    .as_str()
                    .unwrap()
                    .contains("recursion limit exceeded"),
                "{body}"
            );
        }
    }

    #[tokio::test]
    async fn every_router_error_is_json() {
        let (status, body) =
            call(Request::get("/no/such/thing").body(Body::empty()).unwrap()).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::NOT_FOUND, Some("no such endpoint"))
        );
        let (status, body) = call(Request::get("/collect").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(body["error"], "method not allowed");
        let (status, body) = call(
            Request::get("/api/offers/stream?visitor=a")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("missing field `token`"),
            "{body}"
        );
        let (status, body) = call(
            Request::get("/assets/nothing.js")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::NOT_FOUND, Some("not found"))
        );
    }

    // ---------------------------------------------------------------- event streams

    /// The test state with a dashboard and offer delivery, and a valid offer token for `v`.
    fn stream_state() -> (AppState, String) {
        let mut state = state();
        let dashboard = clickpulse_engine::window::DashboardHandle::default();
        dashboard.publish(clickpulse_engine::window::DashboardSnapshot {
            now_ms: Some(1),
            ..Default::default()
        });
        state.dashboard = Some(dashboard);
        let tokens = crate::offers::OfferTokens::new(b"stream test");
        let token = tokens.issue_stream("v");
        state.web = Some(crate::offers::WebDelivery {
            hub: crate::offers::OfferHub::new(|_| None),
            tokens,
        });
        (state, token)
    }

    async fn start_streams(limits: ServerLimits) -> (SocketAddr, String, oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let (state, token) = stream_state();
        let router = crate::app_with(state, &limits);
        tokio::spawn(async move {
            serve_with(
                listener,
                router,
                async {
                    let _ = stopped.await;
                },
                &limits,
            )
            .await
            .unwrap();
        });
        (addr, token, stop)
    }

    /// A connection to `addr` from loopback address 127.0.0.`client`.
    async fn connect_from(client: u8, addr: SocketAddr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::from(([127, 0, 0, client], 0)))
            .unwrap();
        socket.connect(addr).await.unwrap()
    }

    /// Sends `GET path` and reads the response head (lowercased).
    async fn open(stream: &mut TcpStream, path: &str) -> String {
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let started = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match tokio::time::timeout(HANG_GUARD, stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Err(_) => hang_guard(started, "a response head"),
            }
        }
        String::from_utf8_lossy(&got).to_ascii_lowercase()
    }

    /// Reads until the server closes the connection; `true` if it did (not a hang guard).
    async fn closed_by_server(stream: &mut TcpStream) -> bool {
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(HANG_GUARD, stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
    }

    async fn collect_ok(addr: SocketAddr) -> bool {
        let body = r#"{"url":"http://x/shop/product/VD1"}"#;
        let request = format!(
            "POST /collect HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let (text, _) = exchange(addr, request.as_bytes(), HANG_GUARD).await;
        text.starts_with("HTTP/1.1 202")
    }

    #[tokio::test(start_paused = true)]
    async fn streams_over_their_caps_are_refused_at_once_and_short_requests_are_served() {
        let limits = ServerLimits {
            max_connections: 16,
            ..short()
        };
        assert_eq!((limits.max_streams, limits.max_streams_per_client), (8, 3));
        let (addr, token, _stop) = start_streams(limits.clone()).await;
        let offers = format!("/api/offers/stream?visitor=v&token={token}");
        let mut open_streams = Vec::new();
        // One address: its first three streams (either kind) are served, the fourth is refused
        // with 429 and its connection closed.
        for path in [
            "/api/dashboard/stream",
            offers.as_str(),
            "/api/dashboard/stream",
        ] {
            let mut stream = connect_from(1, addr).await;
            let head = open(&mut stream, path).await;
            assert!(head.starts_with("http/1.1 200"), "{head}");
            assert!(head.contains("content-type: text/event-stream"), "{head}");
            open_streams.push(stream);
        }
        let mut refused = connect_from(1, addr).await;
        let head = open(&mut refused, &offers).await;
        assert!(head.starts_with("http/1.1 429"), "{head}");
        assert!(head.contains("retry-after: 10"), "{head}");
        assert!(head.contains("connection: close"), "{head}");
        assert!(
            closed_by_server(&mut refused).await,
            "hang guard: not closed"
        );
        // Many addresses, three attempts each: the budget of 8 fills up and the rest is 503,
        // each refused connection closed at once.
        let (mut served, mut busy) = (0, 0);
        for client in 2..=11 {
            for path in ["/api/dashboard/stream", offers.as_str(), offers.as_str()] {
                let mut stream = connect_from(client, addr).await;
                let head = open(&mut stream, path).await;
                if head.starts_with("http/1.1 200") {
                    served += 1;
                    open_streams.push(stream);
                } else {
                    assert!(head.starts_with("http/1.1 503"), "{head}");
                    assert!(head.contains("retry-after: 5"), "{head}");
                    assert!(
                        closed_by_server(&mut stream).await,
                        "hang guard: not closed"
                    );
                    busy += 1;
                }
            }
        }
        assert_eq!((served, busy), (5, 25));
        // 8 streams hold 8 of the 16 connections: short requests are still served, and no
        // stream counts as a request in flight.
        for _ in 0..20 {
            assert!(health_ok(addr).await);
            assert!(collect_ok(addr).await);
        }
        // A closed stream gives its slot back (the server notices at its next write: a
        // keep-alive comment at the latest).
        drop(open_streams.remove(0));
        let started = Instant::now();
        loop {
            let mut stream = connect_from(12, addr).await;
            if open(&mut stream, "/api/dashboard/stream")
                .await
                .starts_with("http/1.1 200")
            {
                break;
            }
            hang_guard(started, "the closed stream's slot to be given back");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_ends_at_its_maximum_lifetime_and_gives_its_slot_back() {
        let limits = short();
        let lifetime = limits.stream_max_lifetime;
        let (addr, token, _stop) = start_streams(limits).await;
        for path in [
            "/api/dashboard/stream".to_owned(),
            format!("/api/offers/stream?visitor=v&token={token}"),
        ] {
            let started = Instant::now();
            let mut stream = connect_from(1, addr).await;
            let head = open(&mut stream, &path).await;
            assert!(head.starts_with("http/1.1 200"), "{head}");
            // Read until the chunked body's last chunk: the server ended the stream.
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !got.ends_with(b"0\r\n\r\n") {
                match tokio::time::timeout(HANG_GUARD, stream.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                    Err(_) => hang_guard(started, "the stream to end"),
                }
            }
            let ended = started.elapsed();
            assert!(
                got.ends_with(b"0\r\n\r\n"),
                "{}",
                String::from_utf8_lossy(&got)
            );
            assert!(
                ended >= lifetime && ended < lifetime + SLACK,
                "{path} ended after {ended:?} of paused time"
            );
        }
        // Both slots are back: the address opens its three streams again.
        let mut again = Vec::new();
        for _ in 0..3 {
            let mut stream = connect_from(1, addr).await;
            let head = open(&mut stream, "/api/dashboard/stream").await;
            assert!(head.starts_with("http/1.1 200"), "{head}");
            again.push(stream);
        }
    }

    // ---------------------------------------------------------------- heads, bodies, headers

    #[tokio::test(start_paused = true)]
    async fn a_head_over_the_limit_sent_in_one_write_gets_431() {
        let (addr, _stop) = start(short()).await;
        for (size, status) in [(60 * 1024, "200"), (100 * 1024, "431")] {
            let request = format!(
                "GET /api/health HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-big: {}\r\n\r\n",
                "a".repeat(size)
            );
            let (text, _) = exchange(addr, request.as_bytes(), HANG_GUARD).await;
            assert!(
                text.starts_with(&format!("HTTP/1.1 {status}")),
                "{size}: {}",
                &text[..text.len().min(300)]
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreadable_body_is_explained_once() {
        let (addr, _stop) = start(short()).await;
        let (text, _) = exchange(
            addr,
            b"POST /collect HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            HANG_GUARD,
        )
        .await;
        assert!(text.starts_with("HTTP/1.1 400"), "{text}");
        assert!(
            text.contains(
                r#"{"error":"cannot read the request body: error reading a body from connection: Invalid chunk size line"#
            ),
            "{text}"
        );
    }

    #[tokio::test]
    async fn compressed_bodies_get_415() {
        for uri in ["/collect", "/api/patterns/x", "/api/identity"] {
            let request = Request::post(uri)
                .header(header::CONTENT_ENCODING, "gzip")
                .header(header::AUTHORIZATION, "Bearer nope")
                .body(Body::from(vec![0x1f, 0x8b, 8, 0]))
                .unwrap();
            let (status, body) = call(request).await;
            assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{uri}: {body}");
            assert!(
                body["error"]
                    .as_str()
                    .unwrap()
                    .contains("Content-Encoding \"gzip\" is not supported"),
                "{body}"
            );
        }
    }

    #[tokio::test]
    async fn every_response_has_the_security_headers() {
        for uri in ["/api/health", "/shop", "/assets/shop.js", "/no/such/thing"] {
            let response = tower::ServiceExt::oneshot(
                crate::app(state()),
                Request::get(uri).body(Body::empty()).unwrap(),
            )
            .await
            .unwrap();
            let headers = response.headers();
            assert_eq!(
                headers[header::CONTENT_SECURITY_POLICY],
                CONTENT_SECURITY_POLICY,
                "{uri}"
            );
            assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY", "{uri}");
            assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{uri}");
        }
        // The policy lets the pages load what they load: their own scripts and styles (none
        // inline), and nothing else.
        for page in ["index.html", "pipeline.html", "shop.html"] {
            let path = format!("{}/../../web/{page}", env!("CARGO_MANIFEST_DIR"));
            let html = std::fs::read_to_string(path).unwrap();
            for tag in html.split('<').skip(1) {
                let lower = tag.to_ascii_lowercase();
                if lower.starts_with("script") {
                    assert!(
                        lower.contains("src=\"/"),
                        "{page}: inline or foreign <{tag}"
                    );
                }
                assert!(!lower.starts_with("style"), "{page}: inline <style>");
                assert!(
                    !lower.contains(" style="),
                    "{page}: style attribute in <{tag}"
                );
                assert!(
                    !lower.contains(" onclick="),
                    "{page}: inline handler in <{tag}"
                );
            }
        }
    }

    #[tokio::test]
    async fn visitor_tokens_expire_and_are_renewed_with_the_identity_token() {
        let (state, _) = stream_state();
        let tokens = state.web.as_ref().unwrap().tokens.clone();
        let app = crate::app(state);
        let request = |req: Request<Body>| {
            let app = app.clone();
            async move {
                let response = tower::ServiceExt::oneshot(app, req).await.unwrap();
                let status = response.status();
                let headers = response.headers().clone();
                let bytes = response.into_body().collect().await.unwrap().to_bytes();
                let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
                (status, headers, body)
            }
        };
        let stream = |visitor: &str, token: &str| {
            Request::get(format!(
                "/api/offers/stream?visitor={visitor}&token={token}"
            ))
            .body(Body::empty())
            .unwrap()
        };
        let (status, headers, identity) =
            request(Request::post("/api/identity").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
        let visitor = identity["visitor"].as_str().unwrap().to_owned();
        let identity_token = identity["identity_token"].as_str().unwrap().to_owned();
        assert_eq!(identity["token_expires_in_s"], 900);
        let fresh = identity["token"].as_str().unwrap().to_owned();
        let response = tower::ServiceExt::oneshot(app.clone(), stream(&visitor, &fresh))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        drop(response);

        // A token issued 15 min + 1 s ago is expired; a wrong one is not this visitor's.
        // Neither answer talks about the admin token.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let old = tokens.issue_stream_at(&visitor, now - 901);
        let (status, _, body) = request(stream(&visitor, &old)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let error = body["error"].as_str().unwrap();
        assert!(
            error.contains("expired") && error.contains("POST /api/identity"),
            "{error}"
        );
        assert!(!error.contains("admin"), "{error}");
        let (status, _, body) = request(stream(&visitor, &format!("{fresh}0"))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let error = body["error"].as_str().unwrap();
        assert!(error.contains("not this visitor's"), "{error}");
        assert!(!error.contains("admin"), "{error}");
        // The identity token itself opens no stream (it never goes into a URL).
        let (status, _, _) = request(stream(&visitor, &identity_token)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);

        // Renewal: the same visitor, a fresh token.
        let renew = |body: String| {
            Request::post("/api/identity")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body))
                .unwrap()
        };
        let (status, _, renewed) = request(renew(
            serde_json::json!({"visitor": visitor, "identity_token": identity_token}).to_string(),
        ))
        .await;
        assert_eq!(status, StatusCode::OK, "{renewed}");
        assert_eq!(renewed["visitor"], visitor.as_str());
        let token = renewed["token"].as_str().unwrap();
        let response = tower::ServiceExt::oneshot(app.clone(), stream(&visitor, token))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        drop(response);
        // An offer token (leaked with a URL) renews nothing; nor does another visitor's.
        for (v, t) in [
            (visitor.as_str(), old.as_str()),
            ("someone-else", &identity_token),
        ] {
            let (status, _, body) = request(renew(
                serde_json::json!({"visitor": v, "identity_token": t}).to_string(),
            ))
            .await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        }
    }
}
