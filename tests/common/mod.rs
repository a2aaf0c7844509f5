//! Helpers shared by the integration tests: running the real `clickpulse` binary.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

/// The binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_clickpulse"))
}

/// The repository's bundled data folder.
pub fn data(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join(path)
}

pub use clickpulse_chaos::get_json;

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    clickpulse_chaos::free_port().unwrap()
}

/// Runs `clickpulse args…` to completion and returns its output, failing on a non-zero exit.
pub fn run_ok(args: &[&str]) -> Output {
    let output = Command::new(bin())
        .args(args)
        .output()
        .expect("run clickpulse");
    assert!(
        output.status.success(),
        "clickpulse {args:?} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs `clickpulse args…` and parses its standard output as JSON.
pub fn run_json(args: &[&str]) -> Value {
    let output = run_ok(args);
    serde_json::from_slice(&output.stdout).expect("stdout is JSON")
}

/// Starts `clickpulse args…` in the background.
pub fn spawn(args: &[&str]) -> Child {
    Command::new(bin())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn clickpulse")
}

/// Polls `check` every few milliseconds until it returns `Some`, or panics after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, check: impl FnMut() -> Option<T>) -> T {
    clickpulse_chaos::poll(timeout, what, check).unwrap_or_else(|e| panic!("{e}"))
}

/// The arguments that run `clickpulse demo` on data dir `dir` as fast as possible until every
/// stage has caught up, on a free port, followed by `extra`.
pub fn demo_to_end_args(dir: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "demo",
        "--original-time",
        "--data-dir",
        dir,
        "--speed",
        "max",
        "--exit-when-done",
        "--idle-timeout-ms",
        "300",
        "--listen",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("127.0.0.1:{}", free_port()));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Runs the demo on `dir` to the end of its input (see [`demo_to_end_args`]).
pub fn demo_to_end(dir: &str, extra: &[&str]) -> Output {
    let args = demo_to_end_args(dir, extra);
    run_ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// A `clickpulse demo` running in the background on a free port (killed when dropped).
pub struct Demo {
    /// Its HTTP port.
    pub port: u16,
    /// The process.
    pub child: Child,
}

impl Demo {
    /// Starts `demo --original-time --data-dir DIR --listen 127.0.0.1:PORT EXTRA…` and waits
    /// until it answers `/api/health`.
    pub fn start(dir: &str, extra: &[&str]) -> Demo {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec![
            "demo",
            "--original-time",
            "--data-dir",
            dir,
            "--listen",
            &listen,
        ];
        args.extend_from_slice(extra);
        let child = spawn(&args);
        let demo = Demo { port, child };
        wait_for(Duration::from_secs(60), "the demo to serve HTTP", || {
            get_json(port, "/api/health")
        });
        demo
    }

    /// `GET path` as JSON.
    pub fn get(&self, path: &str) -> Option<Value> {
        get_json(self.port, path)
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first `n` rows of the bundled log, as a file in `dir`.
pub fn log_slice(dir: &Path, n: usize) -> PathBuf {
    use std::io::{BufRead, Write};
    let zst = zstd::Decoder::new(std::fs::File::open(data("omniture/Omniture.1.tsv.zst")).unwrap())
        .unwrap();
    let path = dir.join("slice.tsv");
    let mut out = std::fs::File::create(&path).unwrap();
    for line in std::io::BufReader::new(zst).lines().take(n) {
        writeln!(out, "{}", line.unwrap()).unwrap();
    }
    path
}
