//! Funnel hot reload, end to end: a running demo counts the funnels of its watched directory and
//! shows a funnel added to it at once, counting the events after it, while the first funnel
//! keeps its counts.

mod common;

use common::*;
use serde_json::Value;

const SHOES: &str = "VD55179433";
const CLOTHING: &str = "VD55177927";

fn funnel(name: &str, first: &str, second: &str) -> String {
    format!(
        "name = \"{name}\"\ndescription = \"{first}, then {second}\"\n\
         [[step]]\nname = \"{first}\"\nwhen = {{ category = \"{first}\" }}\n\
         [[step]]\nname = \"{second}\"\nwhen = {{ category = \"{second}\" }}\n"
    )
}

/// Visitors per step of funnel `name` on the dashboard, if it is there.
fn steps(port: u16, name: &str) -> Option<Vec<i64>> {
    let dashboard = get_json(port, "/api/dashboard")?;
    let funnels = dashboard["shop"]["funnels_1h"].as_array()?;
    let f = funnels.iter().find(|f| f["name"] == name)?;
    f["steps"]
        .as_array()?
        .iter()
        .map(|s| s["visitors"].as_i64())
        .collect()
}

fn names(port: u16) -> Vec<String> {
    get_json(port, "/api/dashboard")
        .and_then(|d| {
            d["shop"]["funnels_1h"].as_array().map(|fs| {
                fs.iter()
                    .filter_map(|f| f["name"].as_str().map(str::to_owned))
                    .collect()
            })
        })
        .unwrap_or_default()
}

#[test]
fn funnels_count_live_and_hot_reload_from_their_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let funnels = tmp.path().join("funnels");
    std::fs::create_dir_all(&funnels).unwrap();
    std::fs::write(
        funnels.join("outfit.toml"),
        funnel("outfit", "shoes", "clothing"),
    )
    .unwrap();
    let log = tmp.path().join("views.jsonl");
    std::fs::write(
        &log,
        "{\"ts_ms\":1330588819000,\"visitor\":\"warm-up\",\"url\":\"http://www.acme.com/\"}\n",
    )
    .unwrap();
    let demo = Demo::start(
        data.to_str().unwrap(),
        &[
            "--funnels",
            funnels.to_str().unwrap(),
            "--log",
            log.to_str().unwrap(),
            "--speed",
            "max",
        ],
    );
    let port = demo.port;
    demo.wait_replay_done();
    let (shopper, token) = new_identity(port);
    let view = |product: &str| collect_view(port, &shopper, &token, product);
    view(SHOES);
    view(CLOTHING);
    wait_until("the shopper to reach both steps", || {
        (steps(port, "outfit")? == [1, 1]).then_some(())
    });

    // A funnel added to the directory shows at once, and counts the events after it.
    std::fs::write(
        funnels.join("reverse.toml"),
        funnel("reverse", "clothing", "shoes"),
    )
    .unwrap();
    wait_until("the new funnel to show", || {
        (names(port) == ["outfit", "reverse"]).then_some(())
    });
    assert_eq!(steps(port, "reverse").unwrap(), [0, 0]);
    view(CLOTHING);
    view(SHOES);
    wait_until("the shopper to go through the new funnel", || {
        (steps(port, "reverse")? == [1, 1]).then_some(())
    });
    // The first funnel kept its counts (one visitor per step: the same shopper).
    assert_eq!(steps(port, "outfit").unwrap(), [1, 1]);
    let stats: Value = get_json(port, "/api/stats").unwrap();
    assert!(stats["stages"]["aggregate"].is_object(), "{stats}");
}
