//! A real visitor's offer delivery during an offer flood (`cargo bench --bench offers`): the
//! web stage's side of "91,850 offers in 10 s from fresh visitor ids made a real visitor's
//! popup take 81 s".
//!
//! A server on loopback (the real router and server loop) with an [`OfferHub`]; the real
//! visitor's browser is an open `GET /api/offers/stream` connection, read on its own thread. A
//! flood thread delivers offers for fresh visitor ids as fast as it can (as the web stage does
//! when `special-offers` is flooded), with 1,000 other visitors' streams subscribed; every
//! 100 ms the real visitor gets an offer, and the clock runs from `deliver` to the moment its
//! `event: offer` is read off the socket. Prints the flood's rate and the real visitor's
//! latency (median, p99, max). Nothing is asserted: `crates/server/tests/offer_flood.rs`
//! proves the per-offer work is constant.
//!
//! `CLICKPULSE_BENCH_SECS` sets the flood's duration (default 10).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clickpulse_engine::metrics::PipelineMetrics;
use clickpulse_engine::pattern::Offer;
use clickpulse_server::AppState;
use clickpulse_server::limits::{ServerLimits, serve_with};
use clickpulse_server::offers::{OfferHub, OfferTokens, WebDelivery};

fn offer(id: String, visitor: &str) -> Offer {
    Offer {
        offer_id: id,
        visitor: visitor.to_owned(),
        pattern: "seed-clothes-shoes-clothes".to_owned(),
        pattern_version: "bench".to_owned(),
        offer: "offer1".to_owned(),
        ts_ms: 1,
        product: None,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    // `cargo bench` passes `--bench`; anything else (a test run) returns at once.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let secs: u64 = std::env::var("CLICKPULSE_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let hub = OfferHub::new(clickpulse_server::static_files::offer_image);
    let tokens = OfferTokens::new(b"offer bench");
    let token = tokens.issue_stream("real-visitor");
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let state = AppState {
        web: Some(WebDelivery {
            hub: hub.clone(),
            tokens,
        }),
        ..AppState::new(
            Arc::new(PipelineMetrics::default()),
            "embedded",
            Arc::new(clickpulse_components::PIPELINE.clone()),
        )
    };
    let limits = ServerLimits::default();
    let router = clickpulse_server::app_with(state, &limits);
    runtime.spawn(async move {
        serve_with(listener, router, std::future::pending(), &limits)
            .await
            .unwrap();
    });

    // The real visitor's browser.
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(
            format!(
                "GET /api/offers/stream?visitor=real-visitor&token={token} HTTP/1.1\r\nhost: x\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
    let (seen_tx, seen_rx) = mpsc::channel::<(String, Instant)>();
    let (head_tx, head_rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        let mut head = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
            line.clear();
        }
        let _ = head_tx.send(head);
        line.clear();
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            if let Some(id) = line.trim_end().strip_prefix("id: ") {
                let _ = seen_tx.send((id.to_owned(), Instant::now()));
            }
            line.clear();
        }
    });
    let head = head_rx.recv_timeout(Duration::from_secs(60)).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // Other visitors' open streams (in-process subscriptions).
    let others: Vec<_> = (0..1_000)
        .map(|i| hub.subscribe(&format!("other-{i}")))
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let flooded = Arc::new(AtomicU64::new(0));
    let flood = {
        let (hub, stop, flooded) = (hub.clone(), stop.clone(), flooded.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                hub.deliver(offer(format!("flood-{i}"), &format!("fresh-visitor-{i}")));
                i += 1;
                if i.is_multiple_of(1024) {
                    flooded.store(i, Ordering::Relaxed);
                }
            }
            flooded.store(i, Ordering::Relaxed);
        })
    };

    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut k = 0;
    while started.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(100));
        let id = format!("real-{k}");
        k += 1;
        let sent = Instant::now();
        hub.deliver(offer(id.clone(), "real-visitor"));
        loop {
            let (seen, at) = seen_rx
                .recv_timeout(Duration::from_secs(600))
                .expect("the real visitor's offer never arrived");
            if seen == id {
                latencies.push(at - sent);
                break;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();
    let elapsed = started.elapsed();
    let total = flooded.load(Ordering::Relaxed);
    let (recent, slow_drops) = hub.load();
    drop(others);
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "flood: {total} offers for fresh visitors in {:.1} s ({:.0} offers/s), {recent} kept for late subscribers, {slow_drops} dropped for slow streams",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    println!(
        "real visitor: {} offers, deliver → event on its stream: median {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(*latencies.last().unwrap_or(&Duration::ZERO)),
    );
    println!(
        "bench offers: flood_offers_per_s={:.0} real_median_ms={:.2} real_p99_ms={:.2} real_max_ms={:.2}",
        total as f64 / elapsed.as_secs_f64(),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(*latencies.last().unwrap_or(&Duration::ZERO)),
    );
}
