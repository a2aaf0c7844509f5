//! Pattern hot reload, end to end: a running demo picks up a pattern changed through the admin
//! API and through its watched directory, rejects an invalid file while the old version keeps
//! running, and every offer names the version that produced it.

mod common;

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

/// Each version gives an offer of its own, declared with what the shop shows (the admin API
/// rejects an offer the shop could not show).
fn pattern(offer: &str) -> String {
    format!(
        "name = \"any-shoes\"\n[offer]\ndefault = \"{offer}\"\n[offers.{offer}]\n\
         title = \"Shoes for you\"\nproduct = \"VD55179433\"\n\
         [[step]]\nwhen = {{ category = \"shoes\" }}\n"
    )
}

fn offers_seen(port: u16) -> u64 {
    get_json(port, "/api/stats")
        .and_then(|s| s["stages"]["detect"]["details"]["offers"].as_u64())
        .unwrap_or(0)
}

/// Offers the web stage has taken from `special-offers` (duplicates included).
fn offers_delivered(port: u16) -> u64 {
    get_json(port, "/api/stats")
        .and_then(|s| {
            let web = &s["stages"]["web"]["details"];
            Some(web["delivered"].as_u64()? + web["duplicates"].as_u64()?)
        })
        .unwrap_or(0)
}

#[test]
fn patterns_hot_reload_through_the_api_and_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let patterns = tmp.path().join("patterns");
    std::fs::create_dir_all(&patterns).unwrap();
    std::fs::write(patterns.join("any-shoes.toml"), pattern("offer-a")).unwrap();
    // The replay has just one home page view: the shoes views come through the collector, each
    // sent once the version it must meet is known to be active, so no reload races a view.
    let log = tmp.path().join("views.jsonl");
    std::fs::write(
        &log,
        "{\"ts_ms\":1330588819000,\"visitor\":\"warm-up\",\"url\":\"http://www.acme.com/\"}\n",
    )
    .unwrap();
    let mut demo = Demo::start(
        data.to_str().unwrap(),
        &[
            "--patterns",
            patterns.to_str().unwrap(),
            "--log",
            log.to_str().unwrap(),
            "--speed",
            "max",
            "--admin-token",
            "test-token",
        ],
    );
    let port = demo.port;
    demo.wait_replay_done();
    // One visitor viewing one pair of shoes after another: one offer per view, all in one
    // partition of `special-offers`, in the order of the views.
    let mut shoes = SHOES.iter();
    let (shopper, token) = new_identity(port);
    let mut view = || {
        let product = shoes.next().expect("a pair of shoes left");
        collect_view(port, &shopper, &token, product);
    };
    let offers_reach = |n: u64, what: &str| {
        wait_until(what, || (offers_seen(port) >= n).then_some(()));
    };

    // Two offers from version a; then switch to b through the API.
    view();
    view();
    offers_reach(2, "two offers of version a");
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
    view();
    view();
    offers_reach(4, "two offers of version b");

    // Then to c by editing the file; an invalid edit in between is reported and ignored: b
    // keeps running.
    std::fs::write(
        patterns.join("any-shoes.toml"),
        "name = \"any-shoes\"\n[offer\n",
    )
    .unwrap();
    let error = wait_until("the watcher to report the broken file", || {
        get_json(port, "/api/patterns").and_then(|p| p["last_error"].as_str().map(str::to_owned))
    });
    assert!(error.contains("any-shoes.toml:2"), "{error}");
    view();
    offers_reach(5, "an offer of version b despite the broken file");
    std::fs::write(patterns.join("any-shoes.toml"), pattern("offer-c")).unwrap();
    wait_until("the watcher to load version c", || {
        get_json(port, "/api/patterns")
            .filter(|p| p["last_error"].is_null())
            .and_then(|p| {
                (p["patterns"][0]["explanation"]
                    .as_str()?
                    .contains("offer-c"))
                .then_some(())
            })
    });
    view();
    view();
    offers_reach(7, "two offers of version c");
    // Every offer in the topic (the web stage has read them all), then a clean stop.
    wait_until("the web stage to take every offer", || {
        (offers_delivered(port) >= SHOES.len() as u64).then_some(())
    });
    sigterm(&demo.child);
    assert!(wait_exit(&mut demo.child, "the demo to exit after SIGTERM").success());

    let dump = run_ok(&[
        "topics",
        "dump",
        "special-offers",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let offers: Vec<Value> = String::from_utf8(dump.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = offers
        .iter()
        .map(|o| o["offer"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "offer-a", "offer-a", "offer-b", "offer-b", "offer-b", "offer-c", "offer-c"
        ],
        "one offer per shoes view, from the version active when it was sent: {offers:?}"
    );
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
