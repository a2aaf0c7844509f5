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
//! | graceful shutdown | [`SHUTDOWN_GRACE`] = 5 s | connections still open (event streams) are dropped |
//!
//! So memory for requests is bounded by about `MAX_CONNECTIONS × 64 KiB` of connection buffers
//! plus `MAX_IN_FLIGHT × 256 KiB` of bodies being read (≈ 64 + 64 MiB at worst). Every error
//! the router produces is `{"error": "..."}` JSON ([`json_errors`]); only hyper's own answers to
//! unparsable request heads (`400`, `431`) come before the router and have no body.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

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
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_read_timeout: HEADER_READ_TIMEOUT,
            body_deadline: BODY_DEADLINE,
            max_connections: MAX_CONNECTIONS,
            max_in_flight: MAX_IN_FLIGHT,
            shutdown_grace: SHUTDOWN_GRACE,
        }
    }
}

/// Wraps every route of `router` in the request limits: the default body size limit, the body
/// deadline, the in-flight cap (shedding with `503`), and JSON error bodies.
pub(crate) fn apply(router: Router, limits: &ServerLimits) -> Router {
    use axum::error_handling::HandleErrorLayer;
    use tower::ServiceBuilder;
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
        .layer(axum::middleware::map_response(json_errors))
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
        AppError::BadRequest(format!("cannot read the request body: {error}"))
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
        let mut state = AppState::new(Arc::new(PipelineMetrics::default()), "embedded");
        state.collector = Some(Collector {
            sink: Arc::new(Instant202),
            clock: Arc::new(EventClock::default()),
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
        let click = |i: usize| format!(r#"{{"visitor":"v{i}","url":"http://x/p/VD1"}}"#);
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
}
