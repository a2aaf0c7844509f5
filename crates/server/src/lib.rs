//! Clickpulse's HTTP server.
//!
//! # Layout
//! - [`app`] builds the router from an [`AppState`]; `main` only binds a socket and calls
//!   [`serve`], so tests drive the router with `oneshot` and no socket.
//! - [`AppError`] is the one error type handlers return: clients get a status and a clear
//!   message, never internals.
//!
//! Endpoints:
//! - `GET /api/health`: `{"status":"ok"}` while the process serves.
//! - `GET /api/stats`: per-stage counters, events/s, lag and topic sizes.
//! - `GET /api/patterns`: the active patterns, their versions and explanations.
//! - `PUT /api/patterns/{name}` (admin): validate and activate a pattern file (TOML body).
//! - `DELETE /api/patterns/{name}` (admin): remove a pattern.
//! - `GET /api/patterns/log?visitor=&limit=`: recent state-machine transitions.
//! - `GET /api/dashboard`: the dashboard snapshot (event-time windows as of the watermark).
//! - `GET /api/dashboard/stream`: the same as Server-Sent Events, at most one per second while
//!   it changes.
//! - `GET /api/products`: the catalogue, with image URLs.
//! - `POST /collect`: live page views ([`collector`]); `GET /clickpulse.js`: the snippet.
//! - `POST /api/identity`, `GET /api/offers/stream?visitor=&token=`: offer delivery ([`offers`]).
//! - `/`, `/pipeline`, `/shop`, `/shop/product/{id}`: the pages ([`static_files`]).
//!
//! Every route is bounded in body size, body time and concurrency, and the server loop bounds
//! request heads and connections: see [`limits`].

pub mod collector;
mod dashboard;
#[doc(hidden)]
pub mod fuzzing;
pub mod limits;
pub mod offers;
mod patterns;
pub mod privacy;
pub mod rate;
pub mod static_files;
pub mod telemetry;
pub mod webhooks;

use clickpulse_engine::topology::Topology;
use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use clickpulse_engine::metrics::PipelineMetrics;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Live counters of the running pipeline.
    pub metrics: Arc<PipelineMetrics>,
    /// What runs: `embedded` or `distributed`, shown in stats.
    pub mode: &'static str,
    /// The pipeline's stages, topics and sinks (`GET /api/topology`).
    pub topology: Arc<Topology>,
    /// What `GET /metrics` exports: this process's stages and requests.
    pub telemetry: Arc<telemetry::Telemetry>,
    /// The pattern registry and its directory, when the detection stage runs here.
    pub patterns: Option<patterns::PatternAdmin>,
    /// The bearer token admin endpoints require.
    pub admin_token: Option<Arc<str>>,
    /// The dashboard snapshot, when the aggregation stage runs here.
    pub dashboard: Option<clickpulse_engine::window::DashboardHandle>,
    /// The collector, when it runs here.
    pub collector: Option<collector::Collector>,
    /// Offer delivery, when the web stage runs here.
    pub web: Option<offers::WebDelivery>,
    /// The webhooks stage's replay requests, when it runs here.
    pub webhooks: Option<webhooks::WebhookControl>,
    /// The product catalogue for the shop.
    pub products: Arc<Vec<Value>>,
    /// Origins allowed to call `POST /collect` from other sites (`*` for any).
    pub cors_origins: Vec<String>,
    /// Who may see visitors and addresses on the dashboard and the state-machine log (`None`:
    /// nobody; everything is pseudonymised with a key of its own).
    pub privacy: Option<privacy::Privacy>,
    /// The site's time zone (an IANA name, validated by whoever configures it): the pages show
    /// times in it unless the viewer picks their own.
    pub time_zone: Arc<str>,
    /// Which tracker the demo shop sends its events with.
    pub shop_tracker: ShopTracker,
    /// The write keys the Segment endpoints take (empty: any key; one is always required).
    pub segment_write_keys: Vec<String>,
}

/// Which tracker the demo shop's pages send their events with (`GET /api/site` tells them):
/// the same events and the same offers either way, through a different collector protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ShopTracker {
    /// `clickpulse.js`'s protocol: `POST /collect`.
    #[default]
    Clickpulse,
    /// Snowplow's browser tracker and e-commerce plugin, to the Snowplow endpoints
    /// ([`collector::snowplow`]).
    Snowplow,
    /// Segment's analytics.js (`@segment/analytics-next`), to the Segment endpoints
    /// ([`collector::segment`]).
    Segment,
}

impl std::str::FromStr for ShopTracker {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "clickpulse" => Ok(ShopTracker::Clickpulse),
            "snowplow" => Ok(ShopTracker::Snowplow),
            "segment" => Ok(ShopTracker::Segment),
            other => Err(format!("{other:?} is not clickpulse, snowplow or segment")),
        }
    }
}

impl AppState {
    /// A state with only metrics and the topology: every optional part off, `/metrics`
    /// exporting every stage of the topology without an event clock.
    pub fn new(metrics: Arc<PipelineMetrics>, mode: &'static str, topology: Arc<Topology>) -> Self {
        AppState {
            telemetry: Arc::new(telemetry::Telemetry::new(
                metrics.clone(),
                topology.stage_names(),
                None,
            )),
            metrics,
            mode,
            topology,
            patterns: None,
            admin_token: None,
            dashboard: None,
            collector: None,
            web: None,
            webhooks: None,
            products: Arc::new(Vec::new()),
            cors_origins: Vec::new(),
            privacy: None,
            time_zone: Arc::from("UTC"),
            shop_tracker: ShopTracker::default(),
            segment_write_keys: Vec::new(),
        }
    }
}

pub use patterns::{PatternAdmin, watch_funnels, watch_patterns};

/// A router with only `GET /metrics`, `GET /api/health` and the webhooks' routes: for a process
/// that serves no pages (`run --metrics-listen`).
pub fn metrics_app(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(telemetry::metrics))
        .route("/api/health", get(health))
        .route("/api/webhooks", get(webhooks::status))
        .route(
            "/api/webhooks/replay",
            axum::routing::post(webhooks::replay),
        )
        .layer(axum::middleware::from_fn_with_state(
            state.telemetry.clone(),
            telemetry::track,
        ))
        .with_state(state)
}

/// The catalogue as the shop shows it (the home page is not a product).
pub fn shop_products(lookups: &clickpulse_engine::lookups::Lookups) -> Vec<serde_json::Value> {
    lookups
        .products()
        .iter()
        .filter(|p| p.price.is_some())
        .map(|p| {
            let image = format!("products/{}.png", p.id);
            serde_json::json!({
                "id": p.id,
                "category": p.category,
                "title": p.title,
                "description": p.description,
                "price": p.price,
                "image_url": format!("/images/{image}"),
            })
        })
        .collect()
}

/// The error every handler returns; rendered as `{"error": message}`.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The request is invalid.
    #[error("{0}")]
    BadRequest(String),
    /// The request lacks a valid admin token.
    #[error("this endpoint needs `Authorization: Bearer <admin token>`")]
    Unauthorized,
    /// A visitor's token is wrong or expired (`401`, with what to do).
    #[error("{0}")]
    InvalidToken(String),
    /// Nothing here.
    #[error("{0}")]
    NotFound(String),
    /// The body is over the size limit.
    #[error("{0}")]
    TooLarge(String),
    /// The body did not arrive in time.
    #[error("{0}")]
    Timeout(String),
    /// The body's encoding is not one the endpoint takes.
    #[error("{0}")]
    UnsupportedMedia(String),
    /// The request may not do this (an origin not allowed to send).
    #[error("{0}")]
    Forbidden(String),
    /// Something failed inside; details are logged, not sent.
    #[error("internal error")]
    Internal(String),
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = match &self {
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Unauthorized | AppError::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            AppError::UnsupportedMedia(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::Internal(detail) => {
                tracing::error!(detail = %detail, "Request failed.");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (status, Json(json!({"error": self.to_string()}))).into_response()
    }
}

/// The router, with the default [`limits::ServerLimits`].
pub fn app(state: AppState) -> Router {
    app_with(state, &limits::ServerLimits::default())
}

/// The router, with the request limits of `limits`.
pub fn app_with(state: AppState, limits: &limits::ServerLimits) -> Router {
    let cors = cors_layer(&state.cors_origins);
    let collect = Router::new()
        .route("/collect", axum::routing::post(collector::collect))
        .layer(axum::extract::DefaultBodyLimit::max(
            collector::MAX_BODY_BYTES,
        ))
        .layer(cors);
    let snowplow = Router::new()
        .route(
            collector::snowplow::TP2_PATH,
            axum::routing::post(collector::snowplow::post),
        )
        .route(
            collector::snowplow::PIXEL_PATH,
            get(collector::snowplow::pixel),
        )
        .layer(axum::extract::DefaultBodyLimit::max(
            collector::MAX_BODY_BYTES,
        ))
        .layer(collector::snowplow::cors_layer(&state.cors_origins));
    let segment = Router::new()
        .route("/v1/{path}", axum::routing::post(collector::segment::post))
        .layer(axum::extract::DefaultBodyLimit::max(
            collector::segment::MAX_BATCH_BYTES,
        ))
        .layer(cors_layer(&state.cors_origins));
    let router = Router::new()
        .merge(collect)
        .merge(snowplow)
        .merge(segment)
        .route("/", get(static_files::dashboard))
        .route("/pipeline", get(static_files::pipeline))
        .route("/shop", get(static_files::shop))
        .route("/shop/product/{id}", get(static_files::shop_product))
        .route("/shop/cart", get(static_files::shop))
        .route("/clickpulse.js", get(static_files::snippet))
        .route("/assets/{*path}", get(static_files::asset))
        .route("/vendor/{*path}", get(static_files::vendor))
        .route("/images/{*path}", get(static_files::image))
        .route("/api/products", get(products))
        .route("/api/identity", axum::routing::post(offers::identity))
        .route("/api/offers/stream", get(offers::stream))
        .route("/api/health", get(health))
        .route("/api/site", get(site))
        .route("/api/topology", get(topology))
        .route("/api/stats", get(stats))
        .route("/api/patterns", get(patterns::list))
        .route("/api/patterns/log", get(patterns::log))
        .route(
            "/api/patterns/{name}",
            put(patterns::put).delete(patterns::delete),
        )
        .route("/api/dashboard", get(dashboard::snapshot))
        .route("/api/dashboard/stream", get(dashboard::stream))
        .route("/api/webhooks", get(webhooks::status))
        .route(
            "/api/webhooks/replay",
            axum::routing::post(webhooks::replay),
        )
        .route("/metrics", get(telemetry::metrics))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.telemetry.clone(),
            telemetry::track,
        ))
        .with_state(state);
    limits::apply(router, limits)
}

async fn not_found() -> AppError {
    AppError::NotFound("no such endpoint".to_owned())
}

fn cors_layer(origins: &[String]) -> tower_http::cors::CorsLayer {
    use tower_http::cors::{AllowOrigin, Any, CorsLayer};
    let layer = CorsLayer::new()
        .allow_methods([axum::http::Method::POST])
        .allow_headers([axum::http::header::CONTENT_TYPE]);
    if origins.iter().any(|o| o == "*") {
        layer.allow_origin(Any)
    } else {
        let list: Vec<axum::http::HeaderValue> =
            origins.iter().filter_map(|o| o.parse().ok()).collect();
        layer.allow_origin(AllowOrigin::list(list))
    }
}

async fn products(State(state): State<AppState>) -> Json<Value> {
    Json(Value::Array(state.products.as_ref().clone()))
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The pipeline's stages, topics and sinks (the pipeline view draws its diagram from it).
async fn topology(State(state): State<AppState>) -> Json<Topology> {
    Json(state.topology.as_ref().clone())
}

/// What every page needs to know of the site: its time zone, and the shop's tracker.
async fn site(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"time_zone": &*state.time_zone, "shop_tracker": state.shop_tracker}))
}

async fn stats(State(state): State<AppState>) -> Result<Json<Value>, AppError> {
    let mut snapshot = state.metrics.snapshot();
    if let Value::Object(map) = &mut snapshot {
        map.insert("mode".to_owned(), Value::from(state.mode));
        if let Some(collector) = &state.collector {
            // The event-time clock live clicks are stamped with (the top bar's clock).
            let clock = &collector.clock;
            map.insert(
                "clock".to_owned(),
                json!({"now_ms": clock.now_ms(), "rate": clock.rate()}),
            );
            map.insert("collector_ignored".to_owned(), collector.ignored.snapshot());
        }
    }
    Ok(Json(snapshot))
}

/// Checks `Authorization: Bearer <token>` against the admin token (constant-time).
fn require_admin(state: &AppState, headers: &axum::http::HeaderMap) -> Result<(), AppError> {
    match &state.admin_token {
        Some(expected) if bearer_matches(headers, expected) => Ok(()),
        _ => Err(AppError::Unauthorized),
    }
}

/// Whether the request carries `Authorization: Bearer <expected>` (constant-time comparison).
pub(crate) fn bearer_matches(headers: &axum::http::HeaderMap, expected: &str) -> bool {
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    tokens_equal(given, expected)
}

/// Whether two tokens are equal, in time that does not depend on where they differ.
pub(crate) fn tokens_equal(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Serves `router` on `listener` with the default [`limits::ServerLimits`] until `shutdown`
/// completes (see [`limits::serve_with`]).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    limits::serve_with(listener, router, shutdown, &limits::ServerLimits::default()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get_json(router: Router, uri: &str) -> (StatusCode, Value) {
        let response = router
            .oneshot(Request::builder().uri(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn health_and_stats() {
        let metrics = Arc::new(PipelineMetrics::default());
        metrics
            .stage("enrich")
            .record(42, 1, json!({"unknown_product_events": 3}));
        let router = app(AppState::new(
            metrics,
            "embedded",
            Arc::new(Topology::with_sources([])),
        ));
        let (status, body) = get_json(router.clone(), "/api/health").await;
        assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
        let (status, body) = get_json(router.clone(), "/api/site").await;
        assert_eq!(
            (status, body),
            (
                StatusCode::OK,
                json!({"time_zone": "UTC", "shop_tracker": "clickpulse"})
            )
        );
        let (status, body) = get_json(router, "/api/stats").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["mode"], "embedded");
        assert_eq!(body["stages"]["enrich"]["events"], 42);
        assert_eq!(body["stages"]["enrich"]["dead_letters"], 1);
        assert_eq!(
            body["stages"]["enrich"]["details"]["unknown_product_events"],
            3
        );
    }
}
