//! The pattern admin API is linearisable: 200 concurrent PUTs and DELETEs against a running
//! demo each get the answer that matches what happened, and no pattern that is active (its
//! PUT answered, its DELETE not yet) is ever missing from the active set in between.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use common::*;
use serde_json::Value;

/// A pattern giving `offer`, declared with a title (the admin API rejects an offer the shop
/// could not show).
fn pattern(name: &str, offer: &str) -> String {
    format!(
        "name = \"{name}\"\n[offer]\ndefault = \"{offer}\"\n[offers.{offer}]\ntitle = \"Shoes\"\n\
         [[step]]\nwhen = {{ category = \"shoes\" }}\n"
    )
}

fn request(port: u16, method: &str, name: &str, body: &str) -> (u16, Value) {
    let url = format!("http://127.0.0.1:{port}/api/patterns/{name}");
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let response = match method {
        "PUT" => ureq::put(&url)
            .header("authorization", &auth)
            .config()
            .http_status_as_error(false)
            .build()
            .send(body),
        _ => ureq::delete(&url)
            .header("authorization", &auth)
            .config()
            .http_status_as_error(false)
            .build()
            .call(),
    };
    let mut response = response.expect("the demo answers");
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn active(port: u16) -> BTreeSet<String> {
    let list = get_json(port, "/api/patterns").expect("the pattern list");
    list["patterns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Polls the active set until `done`, checking after each poll that every name `must_be_active`
/// held before it is in it and none of `must_be_gone`; returns the number of polls.
fn watch(
    port: u16,
    done: &AtomicBool,
    must_be_active: &Mutex<BTreeSet<String>>,
    must_be_gone: &Mutex<BTreeSet<String>>,
) -> usize {
    let mut polls = 0;
    while !done.load(Ordering::SeqCst) {
        let (present, gone) = (
            must_be_active.lock().unwrap().clone(),
            must_be_gone.lock().unwrap().clone(),
        );
        let now = active(port);
        let missing: Vec<_> = present.difference(&now).collect();
        assert!(missing.is_empty(), "active patterns missing: {missing:?}");
        let back: Vec<_> = gone.intersection(&now).collect();
        assert!(back.is_empty(), "deleted patterns active again: {back:?}");
        polls += 1;
    }
    polls
}

#[test]
fn two_hundred_concurrent_puts_and_deletes_answer_what_happened() {
    let tmp = tempfile::tempdir().unwrap();
    let patterns = tmp.path().join("patterns");
    std::fs::create_dir_all(&patterns).unwrap();
    let log = log_slice(tmp.path(), 100);
    let data = tmp.path().join("data");
    let demo = Demo::start(
        data.to_str().unwrap(),
        &[
            "--patterns",
            patterns.to_str().unwrap(),
            "--log",
            log.to_str().unwrap(),
        ],
    );
    let port = demo.port;
    // The demo seeds an empty pattern dir; those stay active throughout.
    let seeded = active(port);
    let names: Vec<String> = (0..200).map(|i| format!("p{i:03}")).collect();
    let active_now = Arc::new(Mutex::new(seeded.clone()));
    let gone = Arc::new(Mutex::new(BTreeSet::new()));

    // 200 PUTs of different names at once: each answers 200, and from its answer on its
    // pattern is always active.
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (done, a, g) = (done.clone(), active_now.clone(), gone.clone());
        thread::spawn(move || watch(port, &done, &a, &g))
    };
    let puts: Vec<_> = names
        .iter()
        .map(|name| {
            let (name, a) = (name.clone(), active_now.clone());
            thread::spawn(move || {
                let (status, body) = request(port, "PUT", &name, &pattern(&name, "o"));
                assert_eq!(status, 200, "PUT {name}: {body}");
                a.lock().unwrap().insert(name);
            })
        })
        .collect();
    for p in puts {
        p.join().unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let polls = watcher.join().unwrap();
    println!("200 PUTs: all 200 OK, {polls} polls of the active set saw none missing");
    assert_eq!(
        active(port),
        seeded
            .iter()
            .chain(&names)
            .cloned()
            .collect::<BTreeSet<_>>()
    );

    // 200 PUTs of one name at once: all succeed, the last one written is what is active.
    let puts: Vec<_> = (0..200)
        .map(|i| {
            thread::spawn(move || {
                let (status, body) =
                    request(port, "PUT", "same", &pattern("same", &format!("o{i}")));
                assert_eq!(status, 200, "PUT same #{i}: {body}");
                body["version"].as_str().unwrap().to_owned()
            })
        })
        .collect();
    let versions: BTreeSet<String> = puts.into_iter().map(|p| p.join().unwrap()).collect();
    assert_eq!(versions.len(), 200, "each PUT activated its own version");
    let list = get_json(port, "/api/patterns").unwrap();
    let same = list["patterns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "same")
        .unwrap();
    assert!(versions.contains(same["version"].as_str().unwrap()));
    active_now.lock().unwrap().insert("same".to_owned());

    // 200 DELETEs at once, two of each of the first 100 names: one of each pair deletes (200),
    // the other finds it gone (404); none is refused; the other patterns stay active.
    let done = Arc::new(AtomicBool::new(false));
    for name in &names[..100] {
        active_now.lock().unwrap().remove(name);
    }
    let watcher = {
        let (done, a, g) = (done.clone(), active_now.clone(), gone.clone());
        thread::spawn(move || watch(port, &done, &a, &g))
    };
    let deletes: Vec<_> = names[..100]
        .iter()
        .flat_map(|name| [name.clone(), name.clone()])
        .map(|name| {
            let g = gone.clone();
            thread::spawn(move || {
                let (status, body) = request(port, "DELETE", &name, "");
                if status == 200 {
                    g.lock().unwrap().insert(name.clone());
                }
                (name, status, body)
            })
        })
        .collect();
    let mut answers: Vec<(String, u16, Value)> =
        deletes.into_iter().map(|d| d.join().unwrap()).collect();
    done.store(true, Ordering::SeqCst);
    let polls = watcher.join().unwrap();
    answers.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    for pair in answers.chunks(2) {
        assert_eq!(
            (pair[0].1, pair[1].1),
            (200, 404),
            "DELETE {} twice: {:?} {:?}",
            pair[0].0,
            pair[0].2,
            pair[1].2
        );
        assert!(!patterns.join(format!("{}.toml", pair[0].0)).exists());
    }
    println!("200 DELETEs: 100 × 200, 100 × 404, 0 × 400; {polls} polls saw none missing");
    let mut expected: BTreeSet<String> = seeded.iter().chain(&names[100..]).cloned().collect();
    expected.insert("same".to_owned());
    assert_eq!(active(port), expected);
}
