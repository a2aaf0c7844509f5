//! A private Prometheus server (Debian's `prometheus` package, or `CLICKPULSE_PROMETHEUS`)
//! scraping the given targets every second, with its HTTP API for the tests' queries.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use super::{free_port, wait_until};

/// A Prometheus server; killed on drop.
pub struct Prometheus {
    /// Its HTTP API's port.
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

fn binary() -> PathBuf {
    std::env::var_os("CLICKPULSE_PROMETHEUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("prometheus"))
}

impl Prometheus {
    /// Starts one that scrapes `targets` (`host:port`, each its own job instance) every
    /// second as job `clickpulse`, and waits until it answers.
    pub fn start(targets: &[String]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n\
                 scrape_configs:\n  - job_name: clickpulse\n    static_configs:\n      \
                 - targets: [{}]\n",
                list.join(", ")
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(binary())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} (install Debian's prometheus package, or set \
                     CLICKPULSE_PROMETHEUS): {e}",
                    binary().display()
                )
            });
        let prometheus = Prometheus {
            port,
            child,
            _dir: dir,
        };
        wait_until("Prometheus to answer", || {
            ureq::get(&format!("http://127.0.0.1:{port}/-/ready"))
                .call()
                .ok()
                .filter(|r| r.status() == 200)
        });
        prometheus
    }

    /// The result vector of an instant query (`[]` while nothing matches).
    pub fn query(&self, query: &str) -> Vec<Value> {
        let mut response = ureq::get(&format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .query("query", query)
            .call()
            .unwrap();
        let body: Value =
            serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
        assert_eq!(body["status"], "success", "{query}: {body}");
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until `query` returns a series whose value passes `ok`; returns the series.
    pub fn wait_for(&self, query: &str, ok: impl Fn(f64) -> bool) -> Vec<Value> {
        wait_until(&format!("Prometheus to return {query}"), || {
            let result = self.query(query);
            let value = |s: &Value| s["value"][1].as_str()?.parse::<f64>().ok();
            (!result.is_empty() && result.iter().all(|s| value(s).is_some_and(&ok)))
                .then_some(result)
        })
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
