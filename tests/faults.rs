//! Storage faults: a data dir that cannot be created, and a disk that fills up mid-replay. Each
//! is a clear error and an exit code, and the state on disk stays consistent: a restart with
//! room to write finishes the log exactly.

mod common;

use std::process::Command;

use common::*;

#[test]
fn a_data_dir_that_cannot_be_created_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let dir = file.join("data");
    let out = Command::new(bin())
        .args(demo_to_end_args(dir.to_str().unwrap(), &[]))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&dir.display().to_string()) && stderr.contains("error:"),
        "the error names the data dir: {stderr}"
    );
}

#[test]
fn a_full_disk_stops_the_pipeline_cleanly_and_a_restart_finishes_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let dir = dir.to_str().unwrap();
    // The file-size limit plays the full disk: writes past 24 MiB fail with EFBIG (the signal
    // that would otherwise kill the process is ignored, as a full disk sends none).
    let args: Vec<String> = demo_to_end_args(dir, &["--batch-size", "200"])
        .into_iter()
        .map(|a| format!("'{a}'"))
        .collect();
    let script = format!(
        "trap '' XFSZ; ulimit -f 24576; exec '{}' {}",
        bin().display(),
        args.join(" ")
    );
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stderr}");
    assert!(
        !out.status.success(),
        "the pipeline cannot have finished within the limit"
    );
    assert!(
        stderr.contains("error:") && stderr.to_lowercase().contains("file too large"),
        "a clear error names the cause: {stderr}"
    );
    // What was committed is intact: the store opens, and a run with room finishes exactly.
    let before = run_json(&["status", "--json", "--data-dir", dir]);
    let replayed = before["state"]["replay/state"]["events"]
        .as_u64()
        .unwrap_or(0);
    assert!(replayed < 116_607, "{before}");
    demo_to_end(dir, &[]);
    let after = run_json(&["status", "--json", "--data-dir", dir]);
    assert_eq!(after["topics"]["click-data"]["records"], 116_607);
    assert_eq!(after["topics"]["enriched-click-data"]["records"], 116_607);
    assert_aggregate_read_the_log_and_its_offers(&after);
}
