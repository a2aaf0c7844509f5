//! `GET /metrics`: the process's metrics in the OpenMetrics text format Prometheus scrapes, with
//! the Prometheus project's own client (`prometheus-client`). Every process exports what it does
//! itself — the stages it hosts, its HTTP requests, the offers it made and delivered — so a
//! Prometheus scraping every process of a deployment sums them without counting anything twice
//! (the web stage's cluster-wide view in `/api/stats` is not exported).
//!
//! The names follow Prometheus' conventions: a `clickpulse_` prefix, base units in the name
//! (`_seconds`), `_total` on counters (added by the encoder). Labels have bounded values: stage
//! names, route templates (never a raw path), status codes, pattern names.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use clickpulse_engine::metrics::{PipelineMetrics, StageMetrics, duration_buckets};
use clickpulse_engine::replay::EventClock;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::AppState;

/// The content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of an HTTP request: its method, its route's template and its status code.
type HttpLabels = [(&'static str, String); 3];

/// A process's metrics registry.
#[derive(Debug)]
pub struct Telemetry {
    registry: Registry,
    http_requests: Family<HttpLabels, Counter>,
    http_seconds: Family<[(&'static str, String); 1], Histogram>,
}

impl Telemetry {
    /// The metrics of a process hosting `stages` (their counters in `metrics`), whose event
    /// clock is `clock` (the watermark delays are measured against it).
    pub fn new(
        metrics: Arc<PipelineMetrics>,
        stages: Vec<&'static str>,
        clock: Option<Arc<EventClock>>,
    ) -> Self {
        let mut registry = Registry::with_prefix("clickpulse");
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route and status",
            http_requests.clone(),
        );
        let http_seconds =
            Family::<[(&'static str, String); 1], Histogram>::new_with_constructor(|| {
                Histogram::new(duration_buckets())
            });
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request (to its response head), by route",
            http_seconds.clone(),
        );
        registry.register_collector(Box::new(PipelineCollector {
            metrics,
            stages,
            clock,
        }));
        Telemetry {
            registry,
            http_requests,
            http_seconds,
        }
    }

    /// The metrics now, in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }

    fn observe_request(&self, method: &str, route: String, status: u16, started: Instant) {
        self.http_requests
            .get_or_create(&[
                ("method", method.to_owned()),
                ("route", route.clone()),
                ("status", status.to_string()),
            ])
            .inc();
        self.http_seconds
            .get_or_create(&[("route", route)])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let mut response = state.telemetry.encode().into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}

/// Counts every request the router answers, by its route's template (a request no route
/// matches counts as `unmatched`, so a scanner cannot create series).
pub async fn track(
    State(telemetry): State<Arc<Telemetry>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    telemetry.observe_request(&method, route, response.status().as_u16(), started);
    response
}

/// The hosted stages' counters and the offers, read from [`PipelineMetrics`] at each scrape.
#[derive(Debug)]
struct PipelineCollector {
    metrics: Arc<PipelineMetrics>,
    stages: Vec<&'static str>,
    clock: Option<Arc<EventClock>>,
}

impl PipelineCollector {
    fn hosted(&self) -> Vec<Arc<StageMetrics>> {
        self.metrics
            .stages()
            .into_iter()
            .filter(|s| self.stages.contains(&s.name()))
            .collect()
    }
}

impl Collector for PipelineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stages = self.hosted();
        let snapshots: Vec<_> = stages.iter().map(|s| (s.name(), s.snapshot())).collect();
        let counter = |encoder: &mut DescriptorEncoder,
                       name: &str,
                       help: &str,
                       value: &dyn Fn(&clickpulse_engine::metrics::StageStats) -> u64|
         -> Result<(), std::fmt::Error> {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (stage, stats) in &snapshots {
                ConstCounter::new(value(stats))
                    .encode(family.encode_family(&[("stage", *stage)])?)?;
            }
            Ok(())
        };
        counter(
            &mut encoder,
            "stage_events",
            "Events a stage processed (sources: published), as committed.",
            &|s| s.events,
        )?;
        counter(
            &mut encoder,
            "stage_errors",
            "Errors a stage met and retried (failed commits, unreachable brokers).",
            &|s| s.errors,
        )?;
        counter(
            &mut encoder,
            "stage_dead_letters",
            "Records a stage could not process and sent to the dead letters, with the reason.",
            &|s| s.dead_letters,
        )?;
        let mut lag = encoder.encode_descriptor(
            "stage_lag_records",
            "Records waiting in a stage's input.",
            None,
            MetricType::Gauge,
        )?;
        for (stage, stats) in &snapshots {
            ConstGauge::new(stats.lag as i64).encode(lag.encode_family(&[("stage", *stage)])?)?;
        }
        if let Some(clock) = &self.clock {
            let now_ms = clock.now_ms();
            let mut delay = encoder.encode_descriptor(
                "stage_watermark_delay_seconds",
                "How far, in event time, a stage's watermark trails the event clock.",
                None,
                MetricType::Gauge,
            )?;
            for (stage, stats) in &snapshots {
                if let Some(watermark) = stats.details["watermark_ms"].as_i64() {
                    let seconds = (now_ms - watermark).max(0) as f64 / 1000.0;
                    ConstGauge::new(seconds).encode(delay.encode_family(&[("stage", *stage)])?)?;
                }
            }
        }
        for (name, help, histogram) in [
            (
                "stage_batch_duration_seconds",
                "Time from reading a batch's records to committing its results.",
                StageMetrics::batch_seconds as fn(&StageMetrics) -> &Histogram,
            ),
            (
                "stage_commit_duration_seconds",
                "Time to commit a batch (the store's transaction; distributed, the brokers' \
                 acknowledgements and Redis' transaction).",
                StageMetrics::commit_seconds,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for stage in &stages {
                histogram(stage).encode(family.encode_family(&[("stage", stage.name())])?)?;
            }
        }
        let mut offers = encoder.encode_descriptor(
            "offers",
            "Offers detection made, by pattern.",
            None,
            MetricType::Counter,
        )?;
        for (stage, stats) in &snapshots {
            let Some(by_pattern) = stats.details["offers_by_pattern"].as_object() else {
                continue;
            };
            for (pattern, n) in by_pattern {
                ConstCounter::new(n.as_u64().unwrap_or(0)).encode(
                    offers.encode_family(&[("stage", *stage), ("pattern", pattern.as_str())])?,
                )?;
            }
        }
        // The webhooks stage's deliveries, per endpoint (a configured name: bounded).
        let webhooks: Vec<(&str, &serde_json::Map<String, serde_json::Value>)> = snapshots
            .iter()
            .filter_map(|(stage, stats)| Some((*stage, stats.details["endpoints"].as_object()?)))
            .filter(|(stage, _)| *stage == "webhooks")
            .collect();
        if !webhooks.is_empty() {
            let mut deliveries = encoder.encode_descriptor(
                "webhook_deliveries",
                "Webhook attempts settled, by endpoint and outcome: delivered (2xx), retried (a \
                 failure to be tried again), dead_lettered (out of attempts, or a 410).",
                None,
                MetricType::Counter,
            )?;
            for (_, endpoints) in &webhooks {
                for (endpoint, counts) in endpoints.iter() {
                    for outcome in ["delivered", "retried", "dead_lettered"] {
                        ConstCounter::new(counts[outcome].as_u64().unwrap_or(0)).encode(
                            deliveries.encode_family(&[
                                ("endpoint", endpoint.as_str()),
                                ("outcome", outcome),
                            ])?,
                        )?;
                    }
                }
            }
            for (name, help, field) in [
                (
                    "webhook_pending",
                    "Deliveries in the outbox (waiting or under way), by endpoint.",
                    "pending",
                ),
                (
                    "webhook_dead_letters",
                    "Dead-lettered deliveries kept for `webhooks replay`, by endpoint.",
                    "dead_letters",
                ),
            ] {
                let mut gauge = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                for (_, endpoints) in &webhooks {
                    for (endpoint, counts) in endpoints.iter() {
                        ConstGauge::new(counts[field].as_i64().unwrap_or(0))
                            .encode(gauge.encode_family(&[("endpoint", endpoint.as_str())])?)?;
                    }
                }
            }
        }
        // Delivered here (a web stage): the click-to-offer latency as the browsers see it.
        if self.stages.contains(&"web") {
            let family = encoder.encode_descriptor(
                "offer_latency_seconds",
                "Time from the moment an offer was earned (its completing click, or its \
                 deadline) to its delivery to the browsers, in wall time.",
                None,
                MetricType::Histogram,
            )?;
            self.metrics.offer_latency_seconds().encode(family)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_process_exports_the_stages_it_hosts_in_openmetrics_text() {
        let metrics = Arc::new(PipelineMetrics::default());
        let detect = metrics.stage("detect");
        detect.record(
            7,
            1,
            json!({"watermark_ms": 1_000, "offers_by_pattern": {"cart-abandonment": 2}}),
        );
        detect.set_lag(3);
        detect.observe_commit(std::time::Duration::from_millis(3));
        // The web stage's view of another process's stage is not this process's to export.
        metrics.stage("enrich").record(99, 0, json!({}));
        let clock = Arc::new(EventClock::default());
        clock.set(61_000, Instant::now(), 0.0);
        let text = Telemetry::new(metrics, vec!["detect"], Some(clock)).encode();
        for line in [
            "clickpulse_stage_events_total{stage=\"detect\"} 7",
            "clickpulse_stage_dead_letters_total{stage=\"detect\"} 1",
            "clickpulse_stage_lag_records{stage=\"detect\"} 3",
            "clickpulse_stage_watermark_delay_seconds{stage=\"detect\"} 60.0",
            "clickpulse_offers_total{stage=\"detect\",pattern=\"cart-abandonment\"} 2",
            "clickpulse_stage_commit_duration_seconds_count{stage=\"detect\"} 1",
            "clickpulse_stage_commit_duration_seconds_bucket{le=\"0.004\",stage=\"detect\"} 1",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert!(!text.contains("enrich"), "{text}");
        assert!(!text.contains("webhook"), "no webhooks stage here: {text}");
        let metrics = Arc::new(PipelineMetrics::default());
        metrics.stage("webhooks").record(
            3,
            0,
            json!({"endpoints": {"crm": {"delivered": 2, "retried": 5, "dead_lettered": 1, "pending": 4, "dead_letters": 1}}}),
        );
        let text = Telemetry::new(metrics, vec!["webhooks"], None).encode();
        for line in [
            "clickpulse_webhook_deliveries_total{endpoint=\"crm\",outcome=\"delivered\"} 2",
            "clickpulse_webhook_deliveries_total{endpoint=\"crm\",outcome=\"retried\"} 5",
            "clickpulse_webhook_deliveries_total{endpoint=\"crm\",outcome=\"dead_lettered\"} 1",
            "clickpulse_webhook_pending{endpoint=\"crm\"} 4",
            "clickpulse_webhook_dead_letters{endpoint=\"crm\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert!(!text.contains("offer_latency"), "no web stage here: {text}");
    }
}
