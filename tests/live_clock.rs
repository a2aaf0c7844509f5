//! The default demo runs on the real clock, and restarts never lose the timeline: with a steady
//! stream of live clicks and `kill -9` and clean restarts at seeded random moments, no live click
//! is late and every accepted click is counted once in the windows; at another speed the clock
//! resumes where it was, not behind.

mod common;

use std::path::Path;
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use clickpulse_chaos::get_json;
use common::*;
use rand::{Rng, SeedableRng};
use serde_json::Value;

fn start(dir: &str, port: u16, log: &Path, extra: &[&str]) -> Child {
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "demo",
        "--data-dir",
        dir,
        "--listen",
        &listen,
        "--log",
        log.to_str().unwrap(),
        "--idle-timeout-ms",
        "300",
    ];
    args.extend_from_slice(extra);
    let child = spawn(&args);
    wait_until("the demo to serve HTTP", || get_json(port, "/api/health"));
    child
}

/// What became of a posted view.
#[derive(Debug, PartialEq)]
enum Sent {
    /// 202: durable.
    Accepted,
    /// Refused with an answer, or no server listening: not stored.
    Refused,
    /// No answer (the server was killed while it handled the request): stored or not.
    Unknown,
}

/// Posts one live view as `visitor` (an identity: its id and token).
fn send(port: u16, (visitor, token): &(String, String)) -> Sent {
    let answer = ureq::post(&format!("http://127.0.0.1:{port}/collect"))
        .config()
        .http_status_as_error(false)
        .build()
        .send(format!(
            r#"{{"visitor":"{visitor}","token":"{token}","url":"http://www.acme.com/SH55126545/VD55149415"}}"#
        ));
    match answer {
        Ok(r) if r.status() == 202 => Sent::Accepted,
        Ok(_) => Sent::Refused,
        Err(ureq::Error::ConnectionFailed) => Sent::Refused,
        Err(ureq::Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            Sent::Refused
        }
        Err(_) => Sent::Unknown,
    }
}

fn collect(port: u16, shopper: &(String, String)) -> bool {
    send(port, shopper) == Sent::Accepted
}

fn aggregate(port: u16) -> Option<Value> {
    Some(get_json(port, "/api/stats")?["stages"]["aggregate"]["details"].clone())
}

fn clock(port: u16) -> i64 {
    wait_until("the event clock", || {
        get_json(port, "/api/stats")?["clock"]["now_ms"].as_i64()
    })
}

#[test]
fn kills_and_restarts_of_a_live_demo_lose_no_live_click_and_count_each_once() {
    let tmp = tempfile::tempdir().unwrap();
    let log = far_away_log(tmp.path());
    let dir = tmp.path().join("data");
    let dir = dir.to_str().unwrap();
    let port = free_port();
    let mut demo = start(dir, port, &log, &[]);

    // A steady stream of live clicks, from a dozen visitors, through every restart.
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let unknown = Arc::new(AtomicU64::new(0));
    // Their identities (and tokens) outlive the restarts: the secret is in the data dir.
    let shoppers: Vec<(String, String)> = (0..12).map(|_| new_identity(port)).collect();
    let sender = {
        let (stop, accepted, unknown) = (stop.clone(), accepted.clone(), unknown.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                match send(port, &shoppers[(i % 12) as usize]) {
                    Sent::Accepted => accepted.fetch_add(1, Ordering::SeqCst),
                    Sent::Unknown => unknown.fetch_add(1, Ordering::SeqCst),
                    Sent::Refused => 0,
                };
                i += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(25);
    let mut clean_restarts = 0;
    for life in 0..6 {
        // Each life lasts until a seeded number of further clicks were accepted (not a time).
        let until = accepted.load(Ordering::SeqCst) + rng.random_range(20..200);
        wait_until("live clicks to be accepted", || {
            (accepted.load(Ordering::SeqCst) >= until).then_some(())
        });
        let before = clock(port);
        if life % 3 == 2 {
            sigterm(&demo);
            clean_restarts += 1;
        } else {
            demo.kill().unwrap();
        }
        demo.wait().unwrap();
        demo = start(dir, port, &log, &[]);
        assert!(
            clock(port) >= before,
            "the clock went back across restart {life}"
        );
    }
    let more = accepted.load(Ordering::SeqCst) + 50;
    wait_until("live clicks after the last restart", || {
        (accepted.load(Ordering::SeqCst) >= more).then_some(())
    });
    stop.store(true, Ordering::SeqCst);
    sender.join().unwrap();
    let accepted = accepted.load(Ordering::SeqCst);
    let unknown = unknown.load(Ordering::SeqCst);
    assert_eq!(clean_restarts, 2);

    // Every accepted click reaches the windows once: counted, none late, none pending. (A view
    // whose answer a kill cut off may have been stored too: at most those come on top.)
    let stats = wait_until("the aggregate to apply every accepted click", || {
        let a = aggregate(port)?;
        (a["events"].as_u64()? >= accepted && a["pending"] == 0).then_some(a)
    });
    assert_eq!(stats["late_events"], 0, "{stats}");
    let counted = stats["events"].as_u64().unwrap();
    assert!(
        (accepted..=accepted + unknown).contains(&counted),
        "{counted} counted, {accepted} accepted, {unknown} unanswered: {stats}"
    );
    let dashboard = get_json(port, "/api/dashboard").unwrap();
    let in_windows: u64 = dashboard["page_views_per_minute"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["views"].as_u64().unwrap())
        .sum();
    assert_eq!(
        in_windows, counted,
        "every counted click is in a minute, once"
    );
    println!(
        "{accepted} live clicks accepted ({unknown} unanswered, {counted} counted) across 4 kill -9 and 2 clean restarts: all in the windows once, 0 late"
    );
    // The dashboard's now is the clock's (the windows follow it), not an old event's.
    let now = dashboard["now_ms"].as_i64().unwrap();
    assert!(clock(port) - now < 10_000, "{now}");
    demo.kill().unwrap();
    demo.wait().unwrap();
}

#[test]
fn at_another_speed_a_restart_resumes_the_clock_where_it_was() {
    let tmp = tempfile::tempdir().unwrap();
    let log = far_away_log(tmp.path());
    let dir = tmp.path().join("data");
    let dir = dir.to_str().unwrap();
    let port = free_port();
    let mut demo = start(dir, port, &log, &["--speed", "600"]);
    // Event time runs 600× the wall clock: ten minutes a second.
    let first = clock(port);
    wait_until("event time to run ahead", || {
        (clock(port) > first + 3_600_000).then_some(())
    });
    let shopper = new_identity(port);
    let before_click = clock(port);
    assert!(collect(port, &shopper));
    demo.kill().unwrap();
    demo.wait().unwrap();
    let mut demo = start(dir, port, &log, &["--speed", "600"]);
    assert!(
        clock(port) >= before_click,
        "the clock resumed behind the last click accepted before the kill"
    );
    assert!(collect(port, &shopper));
    let stats = wait_until("the aggregate to count both clicks", || {
        let a = aggregate(port)?;
        (a["events"].as_u64()? >= 2 && a["pending"] == 0).then_some(a)
    });
    assert_eq!(stats["late_events"], 0, "{stats}");
    demo.kill().unwrap();
    demo.wait().unwrap();
}

/// A quiet shop: one visitor adds something to the cart and nothing else happens anywhere.
/// Detection's deadlines follow the sources' frontier (the clock) once everything published has
/// reached it, so the cart-abandonment offer comes when the clock passes its 15 minutes; it
/// used to wait for the next event on every partition (here: forever).
#[test]
fn in_a_quiet_shop_the_cart_abandonment_offer_comes_when_the_clock_passes_its_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    let log = far_away_log(tmp.path());
    let dir = tmp.path().join("data");
    let port = free_port();
    // At 60× the 15 minutes pass in 15 s of wall time.
    let mut demo = start(dir.to_str().unwrap(), port, &log, &["--speed", "60"]);
    let (visitor, token) = new_identity(port);
    let offers = subscribe(port, &visitor, &token);
    collect_add_to_cart(port, &visitor, &token);
    let added_ms = clock(port);
    let offer = next_offer(&offers, "the cart-abandonment offer in a quiet shop");
    assert_eq!(offer["pattern"], "cart-abandonment", "{offer}");
    assert_eq!(offer["visitor"], visitor.as_str());
    assert!(
        clock(port) >= added_ms + 15 * 60_000 - 1_000,
        "not before the deadline (the add was stamped at most a second before {added_ms})"
    );
    let _ = demo.kill();
    let _ = demo.wait();
}
