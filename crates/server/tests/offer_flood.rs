//! An offer flood (offers for fresh visitor ids, as many as the web stage can deliver) against
//! a real server on loopback: a real visitor's offer, delivered in the middle of the flood,
//! reaches that visitor's open stream, and the stream carries nothing of anybody else; the
//! hub's work per offer stays what it is with no flood at all.
//!
//! How fast is not asserted (a busy machine may take its time): `cargo bench --bench offers`
//! prints the real visitor's delivery latency during a flood. What is asserted is the cause of
//! the old slowness gone: no per-offer work that grows with the visitors with recent offers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clickpulse_engine::metrics::PipelineMetrics;
use clickpulse_engine::pattern::Offer;
use clickpulse_server::AppState;
use clickpulse_server::limits::{ServerLimits, serve_with};
use clickpulse_server::offers::{MAX_RECENT_OFFERS, OfferHub, OfferTokens, WebDelivery};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Only a guard against hanging for ever on a broken build, never a measure.
const HANG_GUARD: Duration = Duration::from_secs(300);
/// More than the hub keeps (100,000 recent offers, 100,000 remembered ids): the caps at work.
const FLOOD: usize = 150_000;

fn offer(id: &str, visitor: &str) -> Offer {
    Offer {
        offer_id: id.to_owned(),
        visitor: visitor.to_owned(),
        pattern: "flood".to_owned(),
        pattern_version: "1".to_owned(),
        offer: "offer1".to_owned(),
        ts_ms: 1,
        product: None,
    }
}

async fn start(hub: OfferHub, tokens: OfferTokens) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = AppState {
        web: Some(WebDelivery { hub, tokens }),
        ..AppState::new(
            Arc::new(PipelineMetrics::default()),
            "embedded",
            Arc::new(clickpulse_engine::topology::Topology::with_sources([])),
        )
    };
    let limits = ServerLimits::default();
    let router = clickpulse_server::app_with(state, &limits);
    tokio::spawn(async move {
        serve_with(listener, router, std::future::pending(), &limits)
            .await
            .unwrap();
    });
    addr
}

/// Reads from `stream` until `got` holds `needle` (hang guard only).
async fn read_until(stream: &mut TcpStream, got: &mut Vec<u8>, needle: &str) {
    let mut buf = [0u8; 8192];
    while !String::from_utf8_lossy(got).contains(needle) {
        let n = tokio::time::timeout(HANG_GUARD, stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("hang guard: no {needle:?} after {HANG_GUARD:?}"))
            .unwrap();
        assert!(n > 0, "the stream closed before {needle:?}");
        got.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_visitors_offer_gets_through_a_flood_of_fresh_visitor_offers() {
    let hub = OfferHub::new(|_| None);
    let tokens = OfferTokens::new(b"flood test");
    let token = tokens.issue_stream("real-visitor");
    let addr = start(hub.clone(), tokens).await;

    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!(
                "GET /api/offers/stream?visitor=real-visitor&token={token} HTTP/1.1\r\nhost: x\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    // The head comes once the stream is subscribed.
    read_until(&mut stream, &mut got, "\r\n\r\n").await;
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );

    // Per-offer work with no flood, for comparison.
    let before = hub.work();
    assert!(hub.deliver(offer("baseline", "fresh-baseline")));
    let quiet_cost = hub.work() - before;

    // The flood, from the web stage's side (another thread, as the runner), with the real
    // visitor's offer in the middle of it.
    let flood_hub = hub.clone();
    let costs = tokio::task::spawn_blocking(move || {
        let mut costs = Vec::new();
        for i in 0..FLOOD {
            if i == FLOOD / 2 {
                assert!(flood_hub.deliver(offer("the-real-offer", "real-visitor")));
            }
            let before = flood_hub.work();
            assert!(flood_hub.deliver(offer(&format!("flood-{i}"), &format!("fresh-{i}"))));
            costs.push(flood_hub.work() - before);
        }
        costs
    })
    .await
    .unwrap();
    // Every offer of the flood cost what one offer costs on a quiet hub, plus, once the hub is
    // full, forgetting the oldest remembered id and the oldest recent offer: the same for the
    // last offer (100,000 visitors with an offer in the last minute) as for the first. Summed,
    // since expiring by age may take several offers at once after a pause (amortized).
    let total: u64 = costs.iter().sum();
    let bound = (quiet_cost + 2) * FLOOD as u64;
    assert!(
        total <= bound,
        "per-offer work: {quiet_cost} on a quiet hub; {total} for the {FLOOD} offers of the \
         flood (bound {bound}), max {:?}",
        costs.iter().max()
    );
    let tail = &costs[costs.len() - 1000..];
    assert!(
        tail.iter().sum::<u64>() <= (quiet_cost + 2) * 1000,
        "the last offers of the flood cost more: {tail:?}"
    );
    assert_eq!(hub.load().0, MAX_RECENT_OFFERS, "recent offers are capped");

    // The real visitor's offer reached its stream, and nothing else did.
    read_until(&mut stream, &mut got, "the-real-offer").await;
    let text = String::from_utf8_lossy(&got);
    assert!(
        !text.contains("flood-"),
        "another visitor's offer on the stream"
    );
    assert_eq!(text.matches("event: offer").count(), 1, "{text}");
    let (delivered, duplicates, subscribers) = hub.counters();
    assert_eq!(
        (delivered, duplicates, subscribers),
        (FLOOD as u64 + 2, 0, 1)
    );
    // A stream that is not read only ever holds its own bounded queue.
    assert_eq!(hub.load().1, 0, "the real stream missed nothing");
}
