//! Command-line behaviour: clean shutdown on SIGTERM, loading custom lookups, pattern checks,
//! the figures `bench backtest` prints.

mod common;

use std::time::Instant;

use common::*;

#[test]
fn sigterm_drains_commits_and_exits_zero_then_a_restart_continues() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    let mut demo = Demo::start(dir, &["--speed", "max", "--batch-size", "50"]);
    let port = demo.port;
    wait_until("the replay to be under way", || {
        let s = get_json(port, "/api/stats")?;
        (s["stages"]["enrich"]["events"].as_u64()? > 1_000).then_some(())
    });
    let signalled = Instant::now();
    sigterm(&demo.child);
    // Without `--exit-when-done` the demo never ends by itself: exiting at all is SIGTERM's
    // doing. How fast is not asserted (a busy machine may take its time draining).
    let status = wait_exit(&mut demo.child, "the demo to exit after SIGTERM");
    println!("SIGTERM to exit: {:?}", signalled.elapsed());
    assert!(status.success(), "exit 0 after SIGTERM, got {status}");
    // Whatever was committed is consistent: a restart finishes the log exactly.
    demo_to_end(dir, &[]);
    let s = run_json(&["status", "--json", "--data-dir", dir]);
    assert_eq!(s["topics"]["enriched-click-data"]["records"], 116_607);
    let offers = assert_aggregate_read_the_log_and_its_offers(&s);
    // Without `--json`, a short summary for people.
    let text = String::from_utf8(run_ok(&["status", "--data-dir", dir]).stdout).unwrap();
    let aggregated = format!("116,{:03} events", 607 + offers);
    for (stage, events) in [
        ("enrich", "116,607 events"),
        ("detect", "116,607 events"),
        ("aggregate", aggregated.as_str()),
    ] {
        assert!(
            text.lines().any(|l| l.trim_start().starts_with(stage)
                && l.contains(events)
                && l.ends_with("lag 0")),
            "{stage} in:\n{text}"
        );
    }
    assert!(
        text.lines()
            .any(|l| l.contains("enriched-click-data") && l.contains("116,607 records")),
        "{text}"
    );
    assert!(
        text.contains("Replay: last commit at log position 116,607"),
        "{text}"
    );
    assert!(text.contains("Offers: "), "{text}");
    assert!(
        serde_json::from_str::<serde_json::Value>(&text).is_err(),
        "{text}"
    );
}

#[test]
fn custom_lookups_load_into_the_data_dir_and_enrich_the_replay() {
    let tmp = tempfile::tempdir().unwrap();
    let lookups = tmp.path().join("lookups");
    std::fs::create_dir_all(&lookups).unwrap();
    std::fs::write(lookups.join("users.json"), "{\"userId\":\"V1\",\"gender\":\"F\",\"birthDate\":\"1982-03-01\"}\n{\"userId\":null,\"gender\":null,\"birthDate\":null}\n").unwrap();
    std::fs::write(
        lookups.join("products.json"),
        r#"[{"id":"P1","category":"hats","title":"Top Hat","description":"","image":null,"price":9.5}]"#,
    )
    .unwrap();
    let dir = tmp.path().join("data");
    let dir = dir.to_str().unwrap();
    let out = run_ok(&[
        "lookups",
        "load",
        "--data-dir",
        dir,
        "--data",
        lookups.to_str().unwrap(),
    ]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("loaded 1 users (1 empty records skipped) and 1 products"),
        "{text}"
    );
    let log = tmp.path().join("views.jsonl");
    std::fs::write(
        &log,
        "{\"ts_ms\":1330588819000,\"visitor\":\"V1\",\"url\":\"http://www.acme.com/SH1/P1\"}\n",
    )
    .unwrap();
    demo_to_end(dir, &["--log", log.to_str().unwrap()]);
    let dump = run_ok(&["topics", "dump", "enriched-click-data", "--data-dir", dir]);
    let enriched: serde_json::Value = serde_json::from_slice(&dump.stdout).unwrap();
    assert_eq!(enriched["category"], "hats");
    assert_eq!(enriched["title"], "Top Hat");
    assert_eq!(enriched["gender"], "F");
    assert_eq!(enriched["age"], 30);
    // A broken lookups file is refused with its line.
    std::fs::write(
        lookups.join("users.json"),
        "{\"userId\":\"V2\",\"gender\":\"Q\"}\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args([
            "lookups",
            "load",
            "--data-dir",
            dir,
            "--data",
            lookups.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("users.json:1: field gender"));
}

#[test]
fn patterns_check_reports_every_error_with_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("a.toml"),
        "name = \"a\"\n[offer]\ndefault = \"offer1\"\n[[step]]\nwhen = { colour = \"red\" }\n",
    )
    .unwrap();
    std::fs::write(tmp.path().join("b.toml"), "name = \"b\"\nwithin = \"soon\"\n[offer]\ndefault = \"offer1\"\n[[step]]\nwhen = { category = \"shoes\" }\n").unwrap();
    let out = std::process::Command::new(bin())
        .args(["patterns", "check", tmp.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    // `FILE:LINE:` (a column may follow), then the field.
    let reported = |file_line: &str, field: &str| {
        err.lines()
            .any(|l| l.contains(file_line) && l.contains(field))
    };
    assert!(
        reported("a.toml:5:", " step[0].when.colour: unknown field"),
        "{err}"
    );
    assert!(reported("b.toml:2:", " within:"), "{err}");
    assert!(err.contains("2 error(s)"), "{err}");
    let ok = run_ok(&[
        "patterns",
        "check",
        &format!("{}/patterns", env!("CARGO_MANIFEST_DIR")),
    ]);
    assert!(String::from_utf8_lossy(&ok.stdout).contains("4 pattern(s) OK"));
}

#[test]
fn bench_backtest_prints_every_phase_and_the_read_floor_for_the_log_given() {
    let tmp = tempfile::tempdir().unwrap();
    let slice = log_slice(tmp.path(), 500);
    let output = std::process::Command::new(bin())
        .args(["bench", "backtest", "--runs", "1", "--log"])
        .arg(&slice)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary = stdout
        .lines()
        .find_map(|l| l.strip_prefix("bench backtest: "))
        .unwrap_or_else(|| panic!("no summary line in:\n{stdout}"));
    let figures: std::collections::HashMap<&str, f64> = summary
        .split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("key=value");
            (k, v.parse().expect("a number"))
        })
        .collect();
    assert_eq!(figures["events"], 500.0, "{summary}");
    for key in [
        "read_eps",
        "enrich_eps",
        "detect_eps",
        "aggregate_eps",
        "operators_eps",
        "total_eps",
        "backtest_eps",
        "inflate_eps",
        "locate_eps",
    ] {
        assert!(figures[key] > 0.0, "{key} in {summary}");
    }
    // The human summary names the floor lines too.
    assert!(stdout.contains("(floor: decompression alone)"), "{stdout}");
}

#[test]
fn demo_on_a_taken_port_fails_before_touching_the_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let out = std::process::Command::new(bin())
        .args(["demo", "--original-time", "--data-dir"])
        .arg(&dir)
        .args(["--listen", &address])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot listen on {address}")),
        "{err}"
    );
    assert!(err.contains("Address already in use"), "{err}");
    assert!(err.contains("--listen"), "{err}");
    // Nothing was set up: no one-time admin token generated (and shown) for nothing.
    assert!(!dir.join("admin-token").exists());
    assert!(!err.contains("admin token"), "{err}");
    drop(taken);
}

#[test]
fn demo_says_where_it_is_running_once_it_serves() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    let address = format!("127.0.0.1:{}", free_port());
    let mut child = std::process::Command::new(bin())
        .args(["demo", "--original-time", "--data-dir", dir, "--listen"])
        .args([&address, "--admin-token", ADMIN_TOKEN])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let expected = format!(
        "Clickpulse is running: dashboard http://{address}/  shop http://{address}/shop  \
         pipeline http://{address}/pipeline  (Ctrl-C stops it)"
    );
    let mut seen = Vec::new();
    wait_until("the start line on stderr", || {
        seen.extend(rx.try_iter());
        seen.iter().any(|l| l == &expected).then_some(())
    });
    // It is printed once the server is bound: the address answers.
    assert!(
        get_json(
            address.rsplit(':').next().unwrap().parse().unwrap(),
            "/api/health"
        )
        .is_some()
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_redirected_log_has_no_colour_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("views.jsonl");
    std::fs::write(
        &log,
        "{\"ts_ms\":1330588819000,\"visitor\":\"V1\",\"url\":\"http://www.acme.com/SH1/P1\"}\n",
    )
    .unwrap();
    let dir = tmp.path().join("data");
    let out = demo_to_end(dir.to_str().unwrap(), &["--log", log.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Serving HTTP."), "{err}");
    assert!(!err.contains('\x1b'), "{err:?}");
}

#[test]
fn topics_dump_help_shows_no_limit_by_default() {
    let out = run_ok(&["topics", "dump", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(!help.contains("18446744073709551615"), "{help}");
    assert!(help.contains("no limit"), "{help}");
}
