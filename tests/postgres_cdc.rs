//! PostgreSQL change data capture against a real server (a private instance with
//! `wal_level = logical`): the shop's orders, order lines and carts become events in
//! `click-data`, and `kill -9` of the source at any moment — while a shop transaction is open,
//! while a 20,000-row transaction streams in — loses and repeats nothing.

mod common;

use std::collections::BTreeMap;
use std::io::Write;

use common::postgres::{MAPPING, Postgres, SCHEMA};
use common::{Demo, log_slice, run_ok, wait_until};
use serde_json::Value;

fn start(dir: &str, config: &str, log: &str) -> Demo {
    Demo::start(
        dir,
        &[
            "--config",
            config,
            "--log",
            log,
            "--speed",
            "max",
            "--sync-interval-ms",
            "50",
        ],
    )
}

fn postgres_stats(demo: &Demo) -> Option<Value> {
    let stats = demo.get("/api/stats")?;
    let stage = stats["stages"]["postgres"].clone();
    (!stage.is_null()).then_some(stage)
}

/// Waits until the source holds the slot (replication started).
fn wait_streaming(pg: &Postgres) {
    wait_until("the source to hold its replication slot", || {
        (pg.sql(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'clickpulse' AND active",
        ) == "1")
            .then_some(())
    });
}

fn wait_events(demo: &Demo, n: u64) -> Value {
    wait_until(&format!("{n} events from PostgreSQL"), || {
        let s = postgres_stats(demo)?;
        (s["events"].as_u64()? >= n).then_some(s)
    })
}

/// Every record of `topic` in the data dir (the demo stopped).
fn dump(dir: &str, topic: &str) -> Vec<Value> {
    let out = run_ok(&["topics", "dump", topic, "--data-dir", dir]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A private server with the shop's tables, and a temp dir holding a configuration mapping them
/// and a 20-row log.
fn shop() -> (Postgres, tempfile::TempDir) {
    let pg = Postgres::start();
    pg.sql(SCHEMA);
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("clickpulse.toml"),
        format!("{}{MAPPING}", pg.config_table()),
    )
    .unwrap();
    log_slice(tmp.path(), 20);
    (pg, tmp)
}

/// The data dir, the configuration and the log of [`shop`]'s temp dir.
fn paths(tmp: &tempfile::TempDir) -> (String, String, String) {
    let path = |name: &str| tmp.path().join(name).to_str().unwrap().to_owned();
    (path("data"), path("clickpulse.toml"), path("slice.tsv"))
}

#[test]
fn orders_and_carts_become_events_exactly_once_across_kill_9() {
    let (pg, tmp) = shop();
    let (dir, config, log) = paths(&tmp);
    let (dir, config, log) = (dir.as_str(), config.as_str(), log.as_str());

    let mut demo = start(dir, config, log);
    wait_streaming(&pg);
    // An order with its lines; an order paid later (its line came with the unpaid insert);
    // carts added and one removed; a row of an unmapped table; a row that cannot be an event.
    pg.sql(
        "BEGIN;
         INSERT INTO orders VALUES (1, 'pg-v1', 59.90, 'EUR', 'paid', '2026-12-07 10:00:00+00');
         INSERT INTO order_lines VALUES (1, 1, 'p-a', 19.95, 2), (1, 2, 'p-b', 20, 1);
         COMMIT;",
    );
    pg.sql(
        "BEGIN;
         INSERT INTO orders VALUES (2, 'pg-v2', 5, 'EUR', 'open', '2026-12-07 10:05:00+00');
         INSERT INTO order_lines VALUES (2, 1, 'p-c', 5, 1);
         COMMIT;",
    );
    pg.sql("UPDATE orders SET status = 'paid' WHERE id = 2");
    pg.sql(
        "INSERT INTO cart_items (visitor_id, product_id, quantity) VALUES
         ('pg-v3', 'c-1', 1), ('pg-v3', 'c-2', 3), ('pg-v4', 'c-3', 1);
         INSERT INTO audit (note) VALUES ('x');
         INSERT INTO cart_items (visitor_id, product_id, quantity) VALUES (NULL, 'c-null', 1);",
    );
    pg.sql("DELETE FROM cart_items WHERE product_id = 'c-2'");
    let stats = wait_events(&demo, 6);
    assert_eq!(stats["dead_letters"], 1, "{stats}");

    // Three rounds of kills: while a shop transaction is open, and while a large one streams.
    let mut expected_carts = 3u64;
    for round in 0..3 {
        let mut open = pg.session();
        let stdin = open.stdin.as_mut().unwrap();
        writeln!(
            stdin,
            "BEGIN; INSERT INTO cart_items (visitor_id, product_id, quantity) \
             SELECT 'pg-r{round}', 'open-{round}-' || n, 1 FROM generate_series(1, 500) n;"
        )
        .unwrap();
        stdin.flush().unwrap();
        demo.child.kill().unwrap();
        demo.child.wait().unwrap();
        writeln!(open.stdin.as_mut().unwrap(), "COMMIT;").unwrap();
        drop(open.stdin.take());
        assert!(open.wait().unwrap().success());
        pg.sql(&format!(
            "INSERT INTO cart_items (visitor_id, product_id, quantity) \
             SELECT 'pg-big' || (n % 50), 'big-{round}-' || n, 1 FROM generate_series(1, 20000) n"
        ));
        expected_carts += 20_500;
        drop(demo);
        demo = start(dir, config, log);
        // Killed as soon as it has committed anything new: mid-stream of the large transaction
        // or just after it.
        let before = 6 + (expected_carts - 3 - 20_500);
        wait_until("the restarted source to commit more", || {
            let s = postgres_stats(&demo)?;
            (s["events"].as_u64()? > before).then_some(())
        });
        demo.child.kill().unwrap();
        demo.child.wait().unwrap();
        drop(demo);
        demo = start(dir, config, log);
    }
    let total = 3 + expected_carts; // two purchases, one removal, the carts
    let stats = wait_events(&demo, total);
    assert_eq!(stats["events"].as_u64(), Some(total), "{stats}");
    // The slot's confirmed position reaches the server's end once everything is committed.
    wait_until("the slot to confirm everything", || {
        (pg.sql(
            "SELECT confirmed_flush_lsn >= pg_current_wal_flush_lsn() - 1024 \
             FROM pg_replication_slots WHERE slot_name = 'clickpulse'",
        ) == "t")
            .then_some(())
    });
    common::sigterm(&demo.child);
    common::wait_exit(&mut demo.child, "the demo to stop");

    let events: Vec<Value> = dump(dir, "click-data")
        .into_iter()
        .filter(|e| {
            e["url"]
                .as_str()
                .is_some_and(|u| u.starts_with("postgres://"))
        })
        .collect();
    assert_eq!(events.len() as u64, total, "every row once");
    let mut per_product: BTreeMap<String, u32> = BTreeMap::new();
    for e in events.iter().filter(|e| e["type"] == "add_to_cart") {
        *per_product
            .entry(e["product"]["id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(per_product.len() as u64, expected_carts, "no cart row lost");
    assert!(per_product.values().all(|&n| n == 1), "no cart row twice");
    let purchases: Vec<&Value> = events.iter().filter(|e| e["type"] == "purchase").collect();
    assert_eq!(purchases.len(), 2);
    assert_eq!(purchases[0]["visitor"], "pg-v1");
    assert_eq!(purchases[0]["ts_ms"], 1_796_637_600_000i64);
    assert_eq!(purchases[0]["order"]["id"], "1");
    assert_eq!(purchases[0]["order"]["revenue"], 59.9);
    assert_eq!(purchases[0]["order"]["items"].as_array().unwrap().len(), 2);
    assert_eq!(purchases[0]["order"]["items"][0]["quantity"], 2);
    assert_eq!(purchases[1]["order"]["id"], "2");
    let removed: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "remove_from_cart")
        .collect();
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0]["product"]["id"], "c-2");
    assert_eq!(removed[0]["visitor"], "pg-v3");
    let letters = dump(dir, "dead-letters");
    let pg_letters: Vec<&Value> = letters
        .iter()
        .filter(|l| l["source"] == "postgres:public.cart_items")
        .collect();
    assert_eq!(pg_letters.len(), 1, "{letters:?}");
    assert_eq!(pg_letters[0]["reason"], "column \"visitor_id\" is NULL");
}

/// The database restarting under a running source (every connection cut): the source
/// reconnects, resumes at its position and misses nothing of what was committed meanwhile.
#[test]
fn the_source_reconnects_after_the_database_restarts_and_misses_nothing() {
    let (pg, tmp) = shop();
    let (dir, config, log) = paths(&tmp);
    let demo = start(&dir, &config, &log);
    wait_streaming(&pg);
    let carts = |from: u32, n: u32| {
        pg.sql(&format!(
            "INSERT INTO cart_items (visitor_id, product_id, quantity) \
             SELECT 'pg-r', 'r-' || n, 1 FROM generate_series({from}, {}) n",
            from + n - 1
        ))
    };
    carts(1, 100);
    wait_events(&demo, 100);
    pg.restart();
    carts(101, 100);
    let stats = wait_events(&demo, 200);
    assert_eq!(stats["events"].as_u64(), Some(200), "{stats}");
    assert!(
        stats["errors"].as_u64().unwrap() >= 1,
        "the cut was seen: {stats}"
    );
    wait_streaming(&pg);
}
