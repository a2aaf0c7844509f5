//! Hostile clients against the collector: nobody acts as another visitor, pages on other sites
//! cannot send, and one address cannot flood the pipeline with made-up visitors.

mod common;

use common::*;
use serde_json::Value;

/// `POST /collect` with `headers`; the status, the JSON body and `Retry-After`.
fn post(port: u16, body: &str, headers: &[(&str, &str)]) -> (u16, Value, Option<String>) {
    let mut request = ureq::post(&format!("http://127.0.0.1:{port}/collect"));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let mut response = request
        .config()
        .http_status_as_error(false)
        .build()
        .send(body)
        .expect("the demo answers");
    let status = response.status().as_u16();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        retry,
    )
}

fn view(visitor: &str, token: Option<&str>, product: &str) -> String {
    let token = token.map_or(String::new(), |t| format!(r#","token":"{t}""#));
    format!(
        r#"{{"visitor":"{visitor}"{token},"url":"http://www.acme.com/SH55126545/{product}","gender":"F","age":30}}"#
    )
}

const CLOTHING: &str = "VD55177927";
const SHOES: &str = "VD55179433";
const OTHER_CLOTHING: &str = "VD55156528";

#[test]
fn nobody_can_send_views_as_another_visitor() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = Demo::start(tmp.path().to_str().unwrap(), &["--speed", "max"]);
    demo.wait_replay_done();
    let port = demo.port;
    let (b, b_token) = new_identity(port);
    let (_, a_token) = new_identity(port);
    let b_offers = subscribe(port, &b, &b_token);
    // The attack seen: three views naming B (as a 30-year-old woman) to make B's stream get an
    // offer. Without B's token, or with another visitor's, every one is refused.
    for (product, token) in [
        (CLOTHING, None),
        (SHOES, Some(a_token.as_str())),
        (OTHER_CLOTHING, None),
    ] {
        let (status, body, _) = post(port, &view(&b, token, product), &[]);
        assert_eq!(status, 400, "{body}");
        let reason = body["error"].as_str().unwrap();
        assert!(
            reason.contains("needs its identity token") || reason.contains("is not visitor"),
            "{reason}"
        );
    }
    // B's own views, with B's token: the first offer on B's stream is the one they earn (a
    // barrier: had the forged views counted, their offer would have come first).
    for product in [CLOTHING, SHOES, OTHER_CLOTHING] {
        let (status, body, _) = post(port, &view(&b, Some(&b_token), product), &[]);
        assert_eq!(status, 202, "{body}");
    }
    let offer = next_offer(&b_offers, "B's own offer");
    assert_eq!(offer["visitor"], b.as_str());
    // The detector's counters are published after its commit, which may come after the web
    // stage delivered the offer: wait for them to count it, then there must be only it.
    // (The replayed log's own offers, of the other shipped patterns, are not B's doing.)
    let offers = wait_until("the detector to count B's offer", || {
        let stats = demo.get("/api/stats")?;
        let by_pattern = &stats["stages"]["detect"]["details"]["offers_by_pattern"];
        let n = by_pattern["seed-clothes-shoes-clothes"].as_u64()?;
        (n >= 1).then_some(n)
    });
    assert_eq!(offers, 1, "one offer of the pattern in all: B's own");
    // The same in the header instead of the body.
    let (status, _, _) = post(
        port,
        &view(&b, None, CLOTHING),
        &[("x-clickpulse-token", &b_token)],
    );
    assert_eq!(status, 202);
    // No visitor at all: counted anonymously.
    let (status, body, _) = post(port, r#"{"url":"http://www.acme.com/"}"#, &[]);
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (202, Some(1)),
        "{body}"
    );
}

#[test]
fn pages_on_other_sites_cannot_send_and_a_client_cannot_give_its_own_address() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = Demo::start(
        tmp.path().to_str().unwrap(),
        &["--speed", "max", "--cors-origin", "https://shop.example"],
    );
    let port = demo.port;
    let anonymous = r#"{"url":"http://www.acme.com/","ip":"not-an-ip"}"#;
    // No-cors fetch, sendBeacon and form posts from another site carry its origin or referer.
    for headers in [
        vec![("origin", "https://evil.example")],
        vec![("referer", "https://evil.example/page")],
        vec![("origin", "null")],
    ] {
        let (status, body, _) = post(port, anonymous, &headers);
        assert_eq!(status, 403, "{headers:?}: {body}");
    }
    let own = format!("http://127.0.0.1:{port}");
    for headers in [
        vec![("origin", "https://shop.example")],
        vec![("origin", own.as_str())],
        vec![],
    ] {
        let (status, body, _) = post(port, anonymous, &headers);
        // The client's `ip` is not believed (not even checked): the connection's is used.
        assert_eq!(status, 202, "{headers:?}: {body}");
    }
    // A trusted server-side sender may give it, and it must be an address.
    let (status, body) = post_as_server(port, "/collect", anonymous);
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("not an IP address")
    );
    // A compressed body is 415, not "not UTF-8".
    let (status, _, _) = post(port, anonymous, &[("content-encoding", "gzip")]);
    assert_eq!(status, 415);
}

#[test]
fn one_address_cannot_flood_the_pipeline_with_made_up_visitors() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = Demo::start(
        tmp.path().to_str().unwrap(),
        &["--speed", "max", "--collect-rate", "60"],
    );
    let port = demo.port;
    // The attack seen: a new made-up visitor per view (here: a new user agent per view, each an
    // anonymous visitor of its own). The burst is a sixth of a minute's rate.
    let mut accepted = 0;
    let mut limited = None;
    for i in 0..40 {
        let ua = format!("bot/{i}");
        let (status, body, retry) = post(
            port,
            r#"{"url":"http://www.acme.com/"}"#,
            &[("user-agent", &ua)],
        );
        match status {
            202 => accepted += 1,
            429 => {
                limited = Some((body, retry));
                break;
            }
            other => panic!("{other}: {body}"),
        }
    }
    let (body, retry) = limited.expect("the address is limited");
    assert_eq!(accepted, 10, "the burst, then 429");
    assert!(retry.is_some_and(|r| r.parse::<u64>().unwrap() >= 1));
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("60 events a minute")
    );
    // The server still answers, and a trusted server-side sender is not limited.
    assert!(demo.get("/api/health").is_some());
    let (status, _) = post_as_server(
        port,
        "/collect",
        r#"{"visitor":"server-side","url":"http://www.acme.com/"}"#,
    );
    assert_eq!(status, 202);
}
