//! Pattern hot reload, end to end: a running demo picks up a pattern changed through the admin
//! API and through its watched directory, rejects an invalid file while the old version keeps
//! running, and every offer names the version that produced it.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const SHOES: [&str; 7] = [
    "VD55179433",
    "VD55147564",
    "VD55134536",
    "VD55137665",
    "VD55167939",
    "VD55178312",
    "VD55178699",
];

fn pattern(offer: &str) -> String {
    format!(
        "name = \"any-shoes\"\n[offer]\ndefault = \"{offer}\"\n[[step]]\nwhen = {{ category = \"shoes\" }}\n"
    )
}

fn offers_seen(port: u16) -> u64 {
    get_json(port, "/api/stats")
        .and_then(|s| s["stages"]["detect"]["details"]["offers"].as_u64())
        .unwrap_or(0)
}

#[test]
fn patterns_hot_reload_through_the_api_and_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let patterns = tmp.path().join("patterns");
    std::fs::create_dir_all(&patterns).unwrap();
    std::fs::write(patterns.join("any-shoes.toml"), pattern("offer-a")).unwrap();
    // One shoes view every 10 s of event time, replayed at 5x: one every 2 s.
    let log = tmp.path().join("views.jsonl");
    let lines: String = SHOES
        .iter()
        .enumerate()
        .map(|(i, p)| {
            format!(
                "{{\"ts_ms\":{},\"visitor\":\"v{i}\",\"url\":\"http://www.acme.com/SH55126545/{p}\"}}\n",
                1_330_588_819_000i64 + i as i64 * 10_000
            )
        })
        .collect();
    std::fs::write(&log, lines).unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut demo = spawn(&[
        "demo",
        "--original-time",
        "--data-dir",
        data.to_str().unwrap(),
        "--patterns",
        patterns.to_str().unwrap(),
        "--log",
        log.to_str().unwrap(),
        "--speed",
        "5",
        "--listen",
        &listen,
        "--admin-token",
        "test-token",
        "--exit-when-done",
    ]);

    // The first offer comes from version a; then switch to b through the API.
    wait_for(Duration::from_secs(30), "the first offer", || {
        (offers_seen(port) >= 1).then_some(())
    });
    let put = |body: &str, token: &str| {
        ureq::put(&format!("http://127.0.0.1:{port}/api/patterns/any-shoes"))
            .header("authorization", &format!("Bearer {token}"))
            .config()
            .http_status_as_error(false)
            .build()
            .send(body)
            .unwrap()
    };
    assert_eq!(put(&pattern("offer-b"), "wrong").status(), 401);
    assert_eq!(put(&pattern("offer-b"), "test-token").status(), 200);
    let invalid = put(
        &pattern("offer-b").replace("category", "colour"),
        "test-token",
    );
    assert_eq!(invalid.status(), 400, "an invalid pattern is rejected");

    // Then to c by editing the file; an invalid edit in between is reported and ignored.
    wait_for(Duration::from_secs(30), "an offer of version b", || {
        (offers_seen(port) >= 2).then_some(())
    });
    std::fs::write(
        patterns.join("any-shoes.toml"),
        "name = \"any-shoes\"\n[offer\n",
    )
    .unwrap();
    let error = wait_for(
        Duration::from_secs(10),
        "the watcher to report the broken file",
        || {
            get_json(port, "/api/patterns")
                .and_then(|p| p["last_error"].as_str().map(str::to_owned))
        },
    );
    assert!(error.contains("any-shoes.toml:2"), "{error}");
    std::fs::write(patterns.join("any-shoes.toml"), pattern("offer-c")).unwrap();
    wait_for(
        Duration::from_secs(10),
        "the watcher to load version c",
        || {
            get_json(port, "/api/patterns")
                .filter(|p| p["last_error"].is_null())
                .and_then(|p| {
                    (p["patterns"][0]["explanation"]
                        .as_str()?
                        .contains("offer-c"))
                    .then_some(())
                })
        },
    );
    assert!(demo.wait().unwrap().success());

    let dump = run_ok(&[
        "topics",
        "dump",
        "special-offers",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let mut offers: Vec<Value> = String::from_utf8(dump.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    offers.sort_by_key(|o| o["ts_ms"].as_i64());
    assert_eq!(
        offers.len(),
        SHOES.len(),
        "one offer per shoes view: {offers:?}"
    );
    let names: Vec<&str> = offers
        .iter()
        .map(|o| o["offer"].as_str().unwrap())
        .collect();
    assert_eq!(names.first(), Some(&"offer-a"));
    assert_eq!(names.last(), Some(&"offer-c"), "{names:?}");
    assert!(names.contains(&"offer-b"), "{names:?}");
    // Versions change exactly when the offer does, and never go back.
    let mut order = vec![];
    for o in &offers {
        let key = (
            o["offer"].as_str().unwrap(),
            o["pattern_version"].as_str().unwrap(),
        );
        if order.last() != Some(&key) {
            order.push(key);
        }
    }
    assert_eq!(order.len(), 3, "{order:?}");
}
