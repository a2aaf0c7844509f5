//! `clickpulse config check`: the distributed configuration is checked without connecting to
//! anything, and every problem of the file is reported in one run with its line and column.

use std::process::Command;

fn check(text: &str) -> (bool, String, String, std::path::PathBuf, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("clickpulse.toml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_clickpulse"))
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
        file,
        tmp,
    )
}

#[test]
fn the_example_configuration_passes() {
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/clickpulse.example.toml"
    ))
    .unwrap();
    let (ok, stdout, stderr, _, _tmp) = check(&example);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(": OK — brokers 127.0.0.1:9092, 6 partitions"),
        "{stdout}"
    );
}

#[test]
fn every_mistake_of_every_table_is_reported_at_once() {
    let text = "\
[kafak]
brokers = \"x\"

[kafka]
partitions = \"six\"

[pipeline]
batch_size = 0

[replay]
speed = \"fast\"

[web]
time_zone = \"Europe/Berln\"
listen = \"127.0.0.1:8080\"
";
    let (ok, _, stderr, file, _tmp) = check(text);
    assert!(!ok);
    let f = file.display();
    for expected in [
        format!(
            "error: {f}:1:2: unknown table `kafak`; expected one of kafka, redis, pipeline, replay, web"
        ),
        format!("error: {f}:5:14: "),
        format!("error: {f}: pipeline.batch_size must be at least 1"),
        format!("error: {f}: replay.speed: "),
        format!("error: {f}: web.time_zone: \"Europe/Berln\" is not a time zone"),
    ] {
        assert!(stderr.contains(&expected), "{expected}\nin\n{stderr}");
    }
    assert!(stderr.contains("5 error(s) in"), "{stderr}");
}

#[test]
fn a_syntax_error_is_named_with_its_line() {
    let (ok, _, stderr, file, _tmp) = check("[kafka\nbrokers = 1\n");
    assert!(!ok);
    assert!(
        stderr.starts_with(&format!("error: {}:1:", file.display())),
        "{stderr}"
    );
    assert!(stderr.contains("1 error(s) in"), "{stderr}");
}

#[test]
fn a_source_s_own_table_is_checked_with_the_rest_and_summarised() {
    // A source plug-in's table (here the Snowplow topic's and PostgreSQL's) is read by the same
    // check: its type's mistakes with their line, its own problems, beside the core tables'.
    let text = "\
[web]
time_zone = \"Mars/Olympus\"

[snowplow]
enriched_topic = \"\"

[postgres]
database = \"shop\"
slott = \"x\"
";
    let (ok, _, stderr, file, _tmp) = check(text);
    assert!(!ok);
    let f = file.display();
    for expected in [
        format!("error: {f}: web.time_zone: \"Mars/Olympus\" is not a time zone"),
        format!("error: {f}: [snowplow] enriched_topic must not be empty"),
        format!("error: {f}:9:1: unknown field `slott`"),
    ] {
        assert!(stderr.contains(&expected), "{expected}\nin\n{stderr}");
    }
    assert!(stderr.contains("3 error(s) in"), "{stderr}");

    let (ok, stdout, stderr, file, _tmp) = check(
        "[snowplow]\nenriched_topic = \"enriched\"\n\n[postgres]\ndatabase = \"shop\"\n\n\
             [[postgres.table]]\nname = \"carts\"\nevent = \"search\"\nvisitor = \"visitor_id\"\nfields = { query = \"q\" }\n",
    );
    assert!(ok, "{stderr}");
    let f = file.display();
    assert!(
        stdout.contains(&format!(
            "{f}: snowplow enriched events from topic enriched"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{f}: postgres postgres@")),
        "{stdout}"
    );
}
