//! Event streams against a real `clickpulse demo`: more streams than the caps, from one
//! loopback address and from many (127.0.0.x), of both kinds (`/api/dashboard/stream`, and
//! `/api/offers/stream` with tokens anyone can get from `POST /api/identity`). Beyond the caps
//! each is refused at once (`429`/`503` with `Retry-After`, connection closed), and with every
//! stream slot taken `/api/health` and `POST /collect` are still served.
//!
//! The stream lifetime (5 min here) is tested on tokio's paused clock in
//! `crates/server/src/limits.rs` (`a_stream_ends_at_its_maximum_lifetime_and_gives_its_slot_back`).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use clickpulse_server::limits::{MAX_STREAMS, MAX_STREAMS_PER_CLIENT};
use common::*;
use serde_json::Value;

/// A blocking connection to `port` from loopback address 127.0.0.`client`.
fn connect_from(runtime: &tokio::runtime::Runtime, client: u8, port: u16) -> TcpStream {
    let stream = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::from(([127, 0, 0, client], 0)))
            .unwrap();
        socket
            .connect(SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .unwrap()
    });
    let stream = stream.into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(HANG_GUARD)).unwrap();
    stream
}

/// Sends `GET path` and reads the response head (lowercased).
fn open(stream: &mut TcpStream, path: &str) -> String {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("no response head (hang guard or reset): {e}"),
        }
    }
    String::from_utf8_lossy(&got).to_ascii_lowercase()
}

/// Whether the server closes the connection (reads to the end; a read error counts as closed,
/// the hang guard's timeout does not).
fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

fn identity(port: u16) -> (String, String) {
    let mut response = ureq::post(&format!("http://127.0.0.1:{port}/api/identity"))
        .send("")
        .unwrap();
    let body: Value = serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    (
        body["visitor"].as_str().unwrap().to_owned(),
        body["token"].as_str().unwrap().to_owned(),
    )
}

fn collect_status(port: u16) -> u16 {
    let body = r#"{"url":"http://127.0.0.1/shop/product/VD55177927"}"#;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(HANG_GUARD)).unwrap();
    stream
        .write_all(
            format!(
                "POST /collect HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .unwrap();
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[test]
fn streams_beyond_their_caps_are_refused_and_short_requests_still_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = Demo::start(tmp.path().to_str().unwrap(), &["--speed", "1"]);
    let port = demo.port;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let offer_path = || {
        let (visitor, token) = identity(port);
        format!("/api/offers/stream?visitor={visitor}&token={token}")
    };
    let mut open_streams = Vec::new();

    // One address: MAX_STREAMS_PER_CLIENT streams, then 429 (a few more tries, all refused).
    for i in 0..MAX_STREAMS_PER_CLIENT + 4 {
        let path = if i % 2 == 0 {
            "/api/dashboard/stream".to_owned()
        } else {
            offer_path()
        };
        let mut stream = connect_from(&runtime, 1, port);
        let head = open(&mut stream, &path);
        if i < MAX_STREAMS_PER_CLIENT {
            assert!(head.starts_with("http/1.1 200"), "{i}: {head}");
            assert!(head.contains("text/event-stream"), "{head}");
            open_streams.push(stream);
        } else {
            assert!(head.starts_with("http/1.1 429"), "{i}: {head}");
            assert!(head.contains("retry-after:"), "{head}");
            assert!(
                closed_by_server(&mut stream),
                "a refused stream's connection stays open"
            );
        }
    }

    // Many addresses, MAX_STREAMS_PER_CLIENT attempts each, far more than MAX_STREAMS in all:
    // the budget fills up, then every attempt is refused with 503 at once.
    let addresses = 2..=(2 + (MAX_STREAMS / MAX_STREAMS_PER_CLIENT) as u8 + 8);
    let (mut served, mut refused) = (open_streams.len(), 0);
    let started = Instant::now();
    for client in addresses.clone() {
        for i in 0..MAX_STREAMS_PER_CLIENT {
            let path = if i % 4 == 0 {
                offer_path()
            } else {
                "/api/dashboard/stream".to_owned()
            };
            let mut stream = connect_from(&runtime, client, port);
            let head = open(&mut stream, &path);
            if head.starts_with("http/1.1 200") {
                served += 1;
                open_streams.push(stream);
            } else {
                assert!(head.starts_with("http/1.1 503"), "{head}");
                assert!(head.contains("retry-after:"), "{head}");
                assert!(
                    closed_by_server(&mut stream),
                    "a refused stream's connection stays open"
                );
                refused += 1;
            }
        }
    }
    let attempts = MAX_STREAMS_PER_CLIENT * addresses.count();
    println!(
        "{} stream attempts from {} addresses in {:?}: {served} open (the cap), {refused} refused",
        attempts + MAX_STREAMS_PER_CLIENT + 4,
        (MAX_STREAMS / MAX_STREAMS_PER_CLIENT) + 10,
        started.elapsed()
    );
    assert_eq!(served, MAX_STREAMS);
    assert_eq!(refused, attempts + MAX_STREAMS_PER_CLIENT - MAX_STREAMS);

    // Every stream slot taken: short requests are served all the same.
    let started = Instant::now();
    for _ in 0..20 {
        assert_eq!(
            get_json(port, "/api/health").map(|v| v["status"].clone()),
            Some(Value::from("ok"))
        );
        assert_eq!(collect_status(port), 202);
    }
    println!(
        "with {MAX_STREAMS} streams open: 20 × (/api/health + POST /collect) in {:?}",
        started.elapsed()
    );
    // And the streams are alive: one of them still has its connection.
    let mut probe = open_streams.pop().unwrap();
    probe
        .set_read_timeout(Some(std::time::Duration::from_millis(1)))
        .unwrap();
    assert!(
        !closed_by_server(&mut probe),
        "an admitted stream was closed"
    );
    drop(open_streams);
}
