//! A shop's webhook receiver (`tests/browser/webhook-receiver.mjs`: the Standard Webhooks
//! spec's npm library verifying every message, failures by plan), as a child process the tests
//! stop and restart on the same port, with what it got read back from its log.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

pub struct Receiver {
    pub port: u16,
    pub secret: String,
    log: PathBuf,
    plan: PathBuf,
    child: Option<Child>,
}

impl Receiver {
    /// A receiver on a free port verifying with a new secret, answering by `plan` (see the
    /// script), logging into `dir`.
    pub fn start(dir: &Path, plan: &Value) -> Receiver {
        let secret = clickpulse_components::sinks::webhook::signature::Secret::generate().to_text();
        let mut r = Receiver {
            port: super::free_port(),
            secret,
            log: dir.join("received.jsonl"),
            plan: dir.join("plan.json"),
            child: None,
        };
        r.restart(plan);
        r
    }

    /// `url` of path `path` on it.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// A `[[webhooks.endpoint]]` named `name` posting to `path` on it, signed with its
    /// secret, with more `lines` (`retry_schedule = [...]`, ...).
    pub fn endpoint(&self, name: &str, path: &str, lines: &str) -> String {
        format!(
            "[[webhooks.endpoint]]\nname = \"{name}\"\nurl = \"{}\"\nsecrets = [\"{}\"]\n{lines}\n",
            self.url(path),
            self.secret
        )
    }

    /// Writes `dir/clickpulse.toml`: a `[webhooks]` table allowing loopback, with `endpoints`
    /// (from [`Receiver::endpoint`]); returns its path.
    pub fn write_config(dir: &Path, endpoints: &[String]) -> PathBuf {
        let path = dir.join("clickpulse.toml");
        let text = format!(
            "[webhooks]\nallow_loopback = true\n\n{}",
            endpoints.join("\n")
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Stops it (connections are refused until it is started again).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again (after [`Receiver::stop`]) with `plan`.
    pub fn restart(&mut self, plan: &Value) {
        self.stop();
        std::fs::write(&self.plan, plan.to_string()).unwrap();
        let browser = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
        let mut child = Command::new("node")
            .arg(browser.join("webhook-receiver.mjs"))
            .arg(self.port.to_string())
            .arg(&self.log)
            .arg(&self.plan)
            .env("WEBHOOK_SECRET", &self.secret)
            .current_dir(&browser)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node runs (scripts/test.sh installs the npm packages)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "listening", "the receiver started");
        self.child = Some(child);
    }

    /// Every request it got, in order (a line it is still writing is left for the next read).
    pub fn requests(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        complete
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The ids answered `ok` on `path`.
    pub fn delivered(&self, path: &str) -> std::collections::BTreeSet<String> {
        self.requests()
            .into_iter()
            .filter(|r| r["path"] == path && r["answer"] == "ok")
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `clickpulse webhooks replay --url URL --admin-token … EXTRA…`; its standard output.
pub fn replay(url: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "webhooks",
        "replay",
        "--url",
        url,
        "--admin-token",
        super::ADMIN_TOKEN,
    ];
    args.extend_from_slice(extra);
    String::from_utf8_lossy(&super::run_ok(&args).stdout).to_string()
}
