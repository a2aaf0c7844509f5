//! The data dir under hostile conditions: damaged bytes, a pipeline running on it, a missing
//! dir, other users. Read-only commands (`status`, `topics dump`, `verify`) never create,
//! change or repair anything; damage is an error naming what is damaged, never a silently
//! different record, and never a panic.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;
use serde_json::Value;

const TOPICS: [&str; 4] = [
    "click-data",
    "enriched-click-data",
    "special-offers",
    "dead-letters",
];

/// A data dir made by a short demo run on the first 3,000 rows of the bundled log.
fn made_data_dir(tmp: &Path) -> String {
    let log = log_slice(tmp, 3_000);
    let dir = tmp.join("data");
    let dir = dir.to_str().unwrap().to_owned();
    demo_to_end(&dir, &["--log", log.to_str().unwrap()]);
    dir
}

fn run(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("run clickpulse")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn file_bytes(dir: &str) -> Vec<u8> {
    std::fs::read(Path::new(dir).join("clickpulse.redb")).unwrap()
}

fn copy_dir(from: &str, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// A small deterministic generator (xorshift64*), so every run flips the same bits.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// Runs every read-only command on `dir` and checks each either gives the undamaged answer
/// or fails cleanly (exit 1, never 101). Returns whether `verify` found damage, and how many
/// commands failed.
fn read_all(dir: &str, reference: &[Vec<u8>]) -> (bool, usize) {
    let mut failed = 0;
    for (topic, want) in TOPICS.iter().zip(reference) {
        let out = run(&["topics", "dump", topic, "--data-dir", dir]);
        match out.status.code() {
            Some(0) => assert_eq!(
                &out.stdout, want,
                "`topics dump {topic}` exited 0 with changed records"
            ),
            Some(1) => {
                failed += 1;
                let e = stderr(&out);
                assert!(e.starts_with("error: "), "a clear error: {e}");
                if e.contains("damaged record") {
                    assert!(
                        e.contains(&format!("topic \"{topic}\"")) && e.contains("offset"),
                        "the error names the record: {e}"
                    );
                }
            }
            other => panic!("`topics dump {topic}` exited {other:?}: {}", stderr(&out)),
        }
    }
    let status = run(&["status", "--data-dir", dir]);
    assert!(
        matches!(status.status.code(), Some(0 | 1)),
        "status exited {:?} (101 is a panic): {}",
        status.status.code(),
        stderr(&status)
    );
    failed += usize::from(status.status.code() == Some(1));
    let verify = run(&["verify", "--data-dir", dir]);
    let damaged = match verify.status.code() {
        Some(0) => false,
        Some(1) => true,
        other => panic!("verify exited {other:?}: {}", stderr(&verify)),
    };
    if failed > 0 {
        assert!(damaged, "commands failed but verify found nothing");
    }
    (damaged, failed)
}

#[test]
fn bit_flips_are_errors_naming_the_damage_never_silent_changes_and_never_made_worse() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = made_data_dir(tmp.path());
    let clean = run(&["verify", "--data-dir", &dir]);
    assert!(clean.status.success(), "{}", stderr(&clean));
    assert!(String::from_utf8_lossy(&clean.stdout).contains("no damage found"));
    let reference: Vec<Vec<u8>> = TOPICS
        .iter()
        .map(|t| run_ok(&["topics", "dump", t, "--data-dir", &dir]).stdout)
        .collect();
    let original = file_bytes(&dir);

    // 8 trials of 5 random bit flips each, as in the report.
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut detected = 0;
    for trial in 0..8 {
        let copy = tmp.path().join(format!("flipped-{trial}"));
        copy_dir(&dir, &copy);
        let mut bytes = original.clone();
        for _ in 0..5 {
            let bit = rng.below(bytes.len() as u64 * 8);
            bytes[(bit / 8) as usize] ^= 1 << (bit % 8);
        }
        let copy = copy.to_str().unwrap();
        std::fs::write(Path::new(copy).join("clickpulse.redb"), &bytes).unwrap();
        let (damaged, failed) = read_all(copy, &reference);
        detected += usize::from(damaged);
        println!("trial {trial}: verify found damage: {damaged}; commands failing: {failed}");
        assert_eq!(
            file_bytes(copy),
            bytes,
            "read-only commands left the damaged file as it was"
        );
        let again = run(&["status", "--data-dir", copy]);
        assert!(
            matches!(again.status.code(), Some(0 | 1)),
            "{}",
            stderr(&again)
        );
    }
    println!("verify found damage in {detected} of 8 trials");

    // A flipped bit inside a record's value: the record is named, by every reader.
    let dump = String::from_utf8_lossy(&reference[0]).into_owned();
    let first: Value = serde_json::from_str(dump.lines().next().unwrap()).unwrap();
    let visitor = first["visitor"].as_str().unwrap();
    let mut needle = (visitor.len() as u32).to_le_bytes().to_vec();
    needle.extend_from_slice(visitor.as_bytes());
    let at = original
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the record's key in the file");
    let mut bytes = original.clone();
    bytes[at + needle.len() + 4 + 3] ^= 0x10;
    let copy = tmp.path().join("one-record");
    copy_dir(&dir, &copy);
    std::fs::write(copy.join("clickpulse.redb"), &bytes).unwrap();
    let copy = copy.to_str().unwrap();
    let (damaged, failed) = read_all(copy, &reference);
    assert!(damaged && failed >= 1);
    let verify = String::from_utf8_lossy(&run(&["verify", "--data-dir", copy]).stdout).into_owned();
    println!("{verify}");
    assert!(
        verify.contains("DAMAGED") && verify.contains("checksum mismatch"),
        "{verify}"
    );
    assert_eq!(file_bytes(copy), bytes, "nothing was written");
}

#[test]
fn read_only_commands_create_nothing_and_say_what_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    // Plain `status` with the default data dir, which does not exist.
    for args in [
        &["status"][..],
        &["verify"],
        &["topics", "dump", "special-offers"],
    ] {
        let out = Command::new(bin())
            .args(args)
            .env("HOME", &home)
            .env_remove("XDG_DATA_HOME")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(stderr(&out).contains("no data dir at"), "{}", stderr(&out));
        assert_eq!(
            std::fs::read_dir(&home).unwrap().count(),
            0,
            "{args:?} created nothing in $HOME"
        );
    }
    let missing = tmp.path().join("nonexistent");
    let out = run(&[
        "topics",
        "dump",
        "special-offer",
        "--data-dir",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(missing.to_str().unwrap()));
    assert!(!missing.exists(), "no folder was created");
    // An empty dir is not a data dir, and stays empty.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = run(&["status", "--data-dir", empty.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("holds no clickpulse database"));
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);

    // An unknown topic lists the topics there are.
    let dir = made_data_dir(tmp.path());
    let before = file_bytes(&dir);
    let out = run(&["topics", "dump", "special-offer", "--data-dir", &dir]);
    assert_eq!(out.status.code(), Some(1));
    let e = stderr(&out);
    assert!(
        e.contains("unknown topic \"special-offer\"") && TOPICS.iter().all(|t| e.contains(t)),
        "{e}"
    );
    assert_eq!(file_bytes(&dir), before);
}

#[cfg(unix)]
#[test]
fn the_data_dir_is_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let tmp = tempfile::tempdir().unwrap();
    let dir = made_data_dir(tmp.path());
    let dir = Path::new(&dir);
    assert_eq!(mode(dir), 0o700);
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            assert_eq!(mode(&entry.path()), 0o600, "{}", entry.path().display());
        }
    }
    // One made before this rule is tightened when the pipeline opens it.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let db = dir.join("clickpulse.redb");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    demo_to_end(
        dir.to_str().unwrap(),
        &["--log", tmp.path().join("slice.tsv").to_str().unwrap()],
    );
    assert_eq!((mode(dir), mode(&db)), (0o700, 0o600));
}

#[test]
fn status_is_a_summary_and_keys_prints_every_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = made_data_dir(tmp.path());
    let summary = run_ok(&["status", "--json", "--data-dir", &dir]).stdout;
    let keys = run_ok(&["status", "--keys", "--data-dir", &dir]).stdout;
    println!(
        "status: {} bytes; status --keys: {} bytes",
        summary.len(),
        keys.len()
    );
    let summary: Value = serde_json::from_slice(&summary).unwrap();
    let keys: Value = serde_json::from_slice(&keys).unwrap();
    for stage in ["enrich", "detect", "aggregate"] {
        assert_eq!(summary["stages"][stage]["events"], 3_000, "{stage}");
        assert_eq!(summary["stages"][stage]["dead_letters"], 0, "{stage}");
        let positions = summary["stages"][stage]["positions"].as_object().unwrap();
        assert!(positions.values().all(|p| p["lag"] == 0), "{stage}");
    }
    assert_eq!(summary["topics"]["click-data"]["records"], 3_000);
    assert_eq!(summary["topics"]["click-data"]["partitions"], 4);
    let visitors = &summary["state_keys"]["op/detect/v/"];
    assert!(visitors["keys"].as_u64().unwrap() > 16, "{visitors}");
    assert!(
        summary["state"]
            .as_object()
            .unwrap()
            .keys()
            .all(|k| !k.starts_with("op/detect/v/")),
        "per-visitor keys are only counted"
    );
    let raw = keys["state"].as_object().unwrap();
    assert_eq!(
        raw.keys().filter(|k| k.starts_with("op/detect/v/")).count() as u64,
        visitors["keys"].as_u64().unwrap()
    );
    assert_eq!(keys["state"]["replay/state"]["events"], 3_000);
}

#[test]
fn beside_a_running_pipeline_read_only_commands_point_to_its_http_figures() {
    let tmp = tempfile::tempdir().unwrap();
    let log = log_slice(tmp.path(), 3_000);
    let dir = tmp.path().join("data");
    let dir = dir.to_str().unwrap();
    let demo = Demo::start(dir, &["--log", log.to_str().unwrap(), "--speed", "max"]);
    demo.wait_replay_done();
    for args in [
        &["status"][..],
        &["verify"],
        &["topics", "dump", "click-data"],
    ] {
        let mut args = args.to_vec();
        args.extend(["--data-dir", dir]);
        let out = run(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let e = stderr(&out);
        assert!(
            e.contains("is running on the data dir")
                && e.contains("/api/stats")
                && e.contains("/pipeline"),
            "{e}"
        );
    }
    // The pipeline was not disturbed.
    assert!(demo.get("/api/stats").is_some());
    drop(demo); // SIGKILL: the file is left not closed cleanly
    let before = file_bytes(dir);
    let out = run(&["status", "--json", "--data-dir", dir]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not closed cleanly"),
        "{}",
        stderr(&out)
    );
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(status["topics"]["click-data"]["records"].as_u64().unwrap() > 0);
    let verify = run(&["verify", "--data-dir", dir]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    assert_eq!(
        file_bytes(dir),
        before,
        "read from a copy, the file left as it was"
    );
    // And the pipeline still opens it and finishes.
    demo_to_end(dir, &["--log", log.to_str().unwrap()]);
    let after = run_json(&["status", "--json", "--data-dir", dir]);
    assert_eq!(after["topics"]["click-data"]["records"], 3_000);
}
