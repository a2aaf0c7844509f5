//! The live path end to end over HTTP: the collector takes page views, the pipeline detects the
//! seed pattern, and the offer reaches that visitor's — and only that visitor's — offer stream.

mod common;

use std::time::Instant;

use common::*;
use serde_json::{Value, json};

fn post(port: u16, path: &str, body: &str) -> (u16, Value, Option<String>) {
    let mut response = ureq::post(&format!("http://127.0.0.1:{port}{path}"))
        .config()
        .http_status_as_error(false)
        .build()
        .send(body)
        .unwrap();
    let status = response.status().as_u16();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = response.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        retry,
    )
}

fn identity(port: u16) -> (String, String) {
    let (status, body, _) = post(port, "/api/identity", "");
    assert_eq!(status, 200);
    (
        body["visitor"].as_str().unwrap().to_owned(),
        body["token"].as_str().unwrap().to_owned(),
    )
}

/// A product page view as the shop sends it: the visitor with its identity token.
fn view(port: u16, visitor: &str, token: &str, product: &str, gender: &str, age: u32) {
    let body = json!({"visitor": visitor, "token": token, "url": format!("http://127.0.0.1:{port}/shop/product/{product}"), "gender": gender, "age": age});
    let (status, body, _) = post(port, "/collect", &body.to_string());
    assert_eq!(status, 202, "{body}");
}

#[test]
fn target_visitor_gets_the_offer_others_do_not() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = Demo::start(tmp.path().to_str().unwrap(), &["--speed", "max"]);
    let port = demo.port;
    // Collected clicks are stamped with the pipeline's event-time clock, which follows the
    // replay while it runs (by leaps at max speed): the views below must be as far apart in
    // event time as they are in wall time, however slow the machine.
    demo.wait_replay_done();

    let (ann, ann_token) = identity(port);
    let (bob, bob_token) = identity(port);
    assert_ne!(ann, bob);
    let ann_offers = subscribe(port, &ann, &ann_token);
    let bob_offers = subscribe(port, &bob, &bob_token);

    // A 30-year-old woman: clothing, shoes, other clothing.
    view(port, &ann, &ann_token, "VD55177927", "F", 30);
    view(port, &ann, &ann_token, "VD55179433", "F", 30);
    let clicked = Instant::now();
    view(port, &ann, &ann_token, "VD55156528", "F", 30);
    let offer = next_offer(&ann_offers, "offer for ann");
    println!(
        "click -> offer on the visitor's stream: {:?}",
        clicked.elapsed()
    );
    assert_eq!(offer["visitor"], ann.as_str());
    assert_eq!(offer["pattern"], "seed-clothes-shoes-clothes");
    assert_eq!(offer["offer"], "offer2");
    assert_eq!(offer["image_url"], "/images/offers/offer2.png");

    // A 20-year-old man doing the same gets nothing, and never sees ann's offer. The barrier:
    // he then does it again as a 30-year-old woman (the audience is judged on a match's first
    // view), which earns offer2. A visitor's offers reach his stream in the order of his views,
    // and ann's came before, so anything his first three views earned (offer1: he was a man)
    // or ann's offer leaking to his stream would arrive first.
    view(port, &bob, &bob_token, "VD55177927", "M", 20);
    view(port, &bob, &bob_token, "VD55179433", "M", 20);
    view(port, &bob, &bob_token, "VD55156528", "M", 20);
    view(port, &bob, &bob_token, "VD55177927", "F", 30);
    view(port, &bob, &bob_token, "VD55179433", "F", 30);
    view(port, &bob, &bob_token, "VD55156528", "F", 30);
    let first = next_offer(&bob_offers, "offer for bob as a 30-year-old woman");
    assert_eq!(
        (first["visitor"].as_str(), first["offer"].as_str()),
        (Some(bob.as_str()), Some("offer2")),
        "bob's first offer is the one of his views as a 30-year-old woman: \
         as a 20-year-old man he is not in the audience ({first})"
    );
    assert_eq!(first["pattern"], "seed-clothes-shoes-clothes");
    assert_ne!(first["offer_id"], offer["offer_id"]);

    // A late subscriber still gets the offer of the last minute, once. The barrier: ann goes on
    // to two more pairs of shoes, completing the 5-step pattern (clothing, shoes, other
    // clothing, shoes, shoes); that new offer must be the next one on the late stream, and on
    // her first stream too.
    let late = subscribe(port, &ann, &ann_token);
    assert_eq!(
        next_offer(&late, "recent offer for a late subscriber")["offer_id"],
        offer["offer_id"]
    );
    view(port, &ann, &ann_token, "VD55147564", "F", 30);
    view(port, &ann, &ann_token, "VD55134536", "F", 30);
    let five = next_offer(&late, "5-step offer on the late stream");
    assert_eq!(
        five["pattern"], "seed-5-step",
        "the late stream's next offer is the new one, not the recent one again: {five}"
    );
    assert_ne!(five["offer_id"], offer["offer_id"]);
    assert_eq!(
        next_offer(&ann_offers, "5-step offer on ann's first stream")["offer_id"],
        five["offer_id"],
        "ann's first stream got nothing in between"
    );

    // Nobody reads ann's offers without her token.
    let forged = ureq::get(&format!(
        "http://127.0.0.1:{port}/api/offers/stream?visitor={ann}&token={bob_token}"
    ))
    .config()
    .http_status_as_error(false)
    .build()
    .call()
    .unwrap();
    assert_eq!(forged.status().as_u16(), 401);

    // The transition log shows ann her machine (with her token); to anyone else her id names
    // nobody.
    let log = get_json(
        port,
        &format!("/api/patterns/log?visitor={ann}&me={ann}&token={ann_token}"),
    )
    .unwrap();
    assert!(
        log["transitions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["to"] == "offer")
    );
    let public = get_json(port, &format!("/api/patterns/log?visitor={ann}")).unwrap();
    assert_eq!(public["transitions"].as_array().unwrap().len(), 0);
}

#[test]
fn collector_rejects_bad_input_and_sheds_load_with_retry_after() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = Demo::start(
        tmp.path().to_str().unwrap(),
        &["--speed", "max", "--collector-queue", "3"],
    );
    let port = demo.port;

    let (status, body, _) = post(port, "/collect", "{\"visitor\": \"v\"}");
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("missing field `url`"),
        "{body}"
    );
    let (status, _, _) = post(port, "/collect", &"x".repeat(300 * 1024));
    assert_eq!(status, 413);
    let (status, body, _) = post(
        port,
        "/collect",
        &format!("{}1{}", "[".repeat(200), "]".repeat(200)),
    );
    assert_eq!(status, 400, "{body}");
    // Four clicks do not fit a queue of three: 503 with Retry-After, nothing half-taken.
    let four = json!([{"url":"http://x/1"},{"url":"http://x/2"},{"url":"http://x/3"},{"url":"http://x/4"}]);
    let (status, _, retry) = post(port, "/collect", &four.to_string());
    assert_eq!((status, retry.as_deref()), (503, Some("1")));
    let (status, body, _) = post(
        port,
        "/collect",
        "[{\"url\":\"http://x/1\"},{\"url\":\"http://x/2\"}]",
    );
    assert_eq!((status, body["accepted"].as_u64()), (202, Some(2)));
}

#[test]
fn a_bad_click_in_a_batch_is_dead_lettered_and_its_neighbours_are_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    let mut demo = Demo::start(dir, &["--speed", "1"]);
    let batch = json!([
        {"visitor": "dl-good-1", "url": "http://www.acme.com/SH55126545/VD55177927"},
        {"visitor": "", "url": "http://www.acme.com/"},
        {"visitor": "dl-good-2", "url": "http://www.acme.com/", "gender": "X"},
        {"visitor": "dl-good-3", "url": "http://www.acme.com/"}
    ]);
    let (status, body) = post_as_server(demo.port, "/collect", &batch.to_string());
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], 2);
    let rejected: Vec<u64> = body["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    assert_eq!(rejected, [1, 2], "{body}");
    assert!(
        body["rejected"][0]["error"]
            .as_str()
            .unwrap()
            .contains("empty visitor id")
    );
    // A request with only bad clicks is refused, and its clicks are dead-lettered too.
    let (status, body, _) = post(demo.port, "/collect", r#"[{"visitor":"x"}]"#);
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("click 0: missing field `url`")
    );
    let port = demo.port;
    wait_until("the dead-letter counter", || {
        let stats = get_json(port, "/api/stats")?;
        (stats["stages"]["collector"]["dead_letters"].as_u64()? == 3).then_some(())
    });
    // SIGTERM, then read the topics from the data dir.
    sigterm(&demo.child);
    wait_exit(&mut demo.child, "the demo to exit after SIGTERM");
    let out = run_ok(&["topics", "dump", "dead-letters", "--data-dir", dir]);
    let letters: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|l: &Value| l["source"] == "collector")
        .collect();
    assert_eq!(letters.len(), 3, "{letters:?}");
    let mut positions: Vec<u64> = letters
        .iter()
        .map(|l| l["position"].as_u64().unwrap())
        .collect();
    positions.sort();
    assert_eq!(positions, [0, 1, 2]);
    assert!(
        letters
            .iter()
            .any(|l| l["raw"].as_str().unwrap().contains("\"gender\":\"X\""))
    );
    let out = run_ok(&[
        "topics",
        "dump",
        "click-data",
        "--data-dir",
        dir,
        "--limit",
        "1000000",
    ]);
    let clicks = String::from_utf8(out.stdout).unwrap();
    assert!(clicks.contains("dl-good-1") && clicks.contains("dl-good-3"));
    assert!(!clicks.contains("dl-good-2"));
}
