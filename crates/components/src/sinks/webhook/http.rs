//! The webhooks' I/O: each endpoint's worker threads (as many as its `max_in_flight`), each
//! sending one attempt at a time with a blocking HTTP client and reporting its outcome back to
//! the stage, which settles it in the outbox at its next poll. The stage's thread never waits
//! on a receiver.
//!
//! Client: `ureq` (already the tests' HTTP client; blocking, small, with a pluggable resolver
//! and native TLS, the TLS the Redis client uses too). Redirects are not followed (a receiver
//! could point them anywhere), proxies from the environment are not used (they would hide the
//! address checked), and every address a name resolves to is checked against the
//! [`AddressPolicy`] before connecting — at every attempt, so a name re-pointed at a private
//! address later is refused too.

use std::io::Read as _;
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

use super::address::AddressPolicy;
use super::config::{Endpoint, EndpointKind};
use super::outbox::{Entry, Outcome, parse_retry_after};
use super::signature::signature_header;

/// The `User-Agent` of every attempt.
pub const USER_AGENT: &str = concat!("Clickpulse-Webhooks/", env!("CARGO_PKG_VERSION"));

/// How much of a response body is read (then the connection is reused).
const RESPONSE_BYTES: u64 = 64 << 10;

/// One attempt's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// The endpoint's name.
    pub endpoint: String,
    /// The delivery's id.
    pub id: String,
    /// What it got.
    pub outcome: Outcome,
}

/// Where the stage hands its attempts (the HTTP workers, or a test's recorder).
pub trait Transport: Send {
    /// Starts an attempt of `entry` (never blocks).
    fn send(&mut self, entry: Entry);
    /// The attempts finished since the last call.
    fn finished(&mut self) -> Vec<Finished>;
}

/// The HTTP workers of every endpoint.
pub struct HttpTransport {
    jobs: Vec<(String, Sender<Entry>)>,
    done: Receiver<Finished>,
}

impl HttpTransport {
    /// Starts `endpoint.max_in_flight` worker threads per endpoint (one per Slack webhook). They end when the
    /// transport is dropped (after the attempt under way, whose outcome is then dropped: the
    /// delivery is still in the outbox's last checkpoint, so it is tried again).
    pub fn start(endpoints: &[Endpoint], policy: &AddressPolicy) -> std::io::Result<Self> {
        let (report, done) = channel();
        let mut jobs = Vec::new();
        for endpoint in endpoints {
            let (tx, rx) = channel::<Entry>();
            let rx = Arc::new(Mutex::new(rx));
            let endpoint = Arc::new(endpoint.clone());
            // A Slack webhook has one message under way at a time.
            let workers = match endpoint.kind {
                EndpointKind::Slack { .. } => 1,
                EndpointKind::Webhook => endpoint.max_in_flight,
            };
            for n in 0..workers {
                let (rx, report, endpoint) = (rx.clone(), report.clone(), endpoint.clone());
                let agent = agent(&endpoint, policy.clone());
                std::thread::Builder::new()
                    .name(format!("webhook-{}-{n}", endpoint.name))
                    .spawn(move || work(&agent, &endpoint, &rx, &report))?;
            }
            jobs.push((endpoint.name.clone(), tx));
        }
        Ok(HttpTransport { jobs, done })
    }
}

impl Transport for HttpTransport {
    fn send(&mut self, entry: Entry) {
        if let Some((_, tx)) = self.jobs.iter().find(|(name, _)| *name == entry.endpoint) {
            // The workers only stop when this transport is dropped.
            let _ = tx.send(entry);
        }
    }

    fn finished(&mut self) -> Vec<Finished> {
        let mut out = Vec::new();
        loop {
            match self.done.try_recv() {
                Ok(f) => out.push(f),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return out,
            }
        }
    }
}

fn agent(endpoint: &Endpoint, policy: AddressPolicy) -> ureq::Agent {
    let tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::NativeTls)
        .build();
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .timeout_global(Some(endpoint.timeout))
        .user_agent(USER_AGENT)
        .tls_config(tls)
        .build();
    ureq::Agent::with_parts(
        config,
        DefaultConnector::new(),
        CheckedResolver {
            policy,
            inner: DefaultResolver::default(),
        },
    )
}

fn work(
    agent: &ureq::Agent,
    endpoint: &Endpoint,
    jobs: &Mutex<Receiver<Entry>>,
    report: &Sender<Finished>,
) {
    loop {
        let next = jobs
            .lock()
            .map_err(|_| ())
            .and_then(|rx| rx.recv().map_err(|_| ()));
        let Ok(entry) = next else { return };
        let outcome = attempt(agent, endpoint, &entry);
        tracing::debug!(endpoint = %endpoint.name, id = %entry.id, attempt = entry.attempts + 1, ?outcome, "Webhook attempt.");
        let finished = Finished {
            endpoint: entry.endpoint,
            id: entry.id,
            outcome,
        };
        if report.send(finished).is_err() {
            return;
        }
    }
}

/// One `POST` of `entry`: signed per Standard Webhooks, or to Slack as it is.
pub fn attempt(agent: &ureq::Agent, endpoint: &Endpoint, entry: &Entry) -> Outcome {
    let timestamp = unix_ms() / 1000;
    let request = agent
        .post(&endpoint.url)
        .header("content-type", "application/json");
    let request = match endpoint.kind {
        EndpointKind::Slack { .. } => request,
        EndpointKind::Webhook => request
            .header("webhook-id", &entry.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                signature_header(
                    &endpoint.secrets,
                    &entry.id,
                    timestamp,
                    entry.body.as_bytes(),
                ),
            ),
    };
    let sent = request.send(entry.body.as_bytes());
    match sent {
        Ok(mut response) => {
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, timestamp));
            // Read (a bounded part of) the body, so the connection can be reused.
            let mut sink = Vec::new();
            let _ = response
                .body_mut()
                .as_reader()
                .take(RESPONSE_BYTES)
                .read_to_end(&mut sink);
            Outcome::of_status(status, retry_after)
        }
        Err(error) => Outcome::Failed {
            reason: describe(&error),
            retry_after: None,
        },
    }
}

fn describe(error: &ureq::Error) -> String {
    match error {
        ureq::Error::Timeout(_) => "the endpoint did not answer in time".to_owned(),
        ureq::Error::Other(inner) => inner.to_string(),
        other => other.to_string(),
    }
}

/// The Unix time in ms.
pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Resolves as usual, then keeps only the addresses the policy allows.
#[derive(Debug)]
struct CheckedResolver {
    policy: AddressPolicy,
    inner: DefaultResolver,
}

impl Resolver for CheckedResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let resolved = self.inner.resolve(uri, config, timeout)?;
        let mut kept = self.inner.empty();
        let mut refused = None;
        for address in resolved.iter() {
            match self.policy.check(address.ip()) {
                Ok(()) => kept.push(*address),
                Err(why) => refused = Some(why),
            }
        }
        match (kept.is_empty(), refused) {
            (true, Some(why)) => Err(ureq::Error::Other(Box::new(why))),
            _ => Ok(kept),
        }
    }
}

/// A transport that sends nothing (its deliveries stay pending): what a stage whose workers
/// could not be started runs with while its process fails.
pub struct NoTransport;

impl Transport for NoTransport {
    fn send(&mut self, _entry: Entry) {}

    fn finished(&mut self) -> Vec<Finished> {
        Vec::new()
    }
}
