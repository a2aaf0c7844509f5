//! `[webhooks]` and its `[[webhooks.endpoint]]`s: where offers go, signed with which secrets,
//! how patiently, and which outbound addresses are allowed.

use std::time::Duration;

use serde::Deserialize;

use super::address::AddressPolicy;
use super::outbox::{RetryPolicy, SCHEDULE};
use super::signature::Secret;

/// `[webhooks]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Allow endpoints in private, link-local and shared address space.
    pub allow_private: bool,
    /// Allow endpoints on loopback (a receiver on this machine: tests, a local relay).
    pub allow_loopback: bool,
    /// Addresses or CIDR blocks always allowed.
    pub allow: Vec<ipnet::IpNet>,
    /// The endpoints (`[[webhooks.endpoint]]`).
    pub endpoint: Vec<EndpointConfig>,
    /// Slack incoming webhooks (`[[webhooks.slack]]`).
    pub slack: Vec<SlackConfig>,
}

/// One `[[webhooks.slack]]`: digests posted to a Slack incoming webhook.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// Its name (as an endpoint's; the two share one namespace).
    pub name: String,
    /// The incoming webhook's URL (`https://hooks.slack.com/services/…`; it is the secret).
    pub url: Option<String>,
    /// An environment variable holding the URL instead (to keep it out of the file).
    pub url_env: Option<String>,
    /// What it is sent: `alert` (each firing and resolution), `offer` (digests of the offers)
    /// [required].
    pub events: Vec<EventKind>,
    /// Only the offers of these patterns [default: every pattern's].
    #[serde(default)]
    pub patterns: Vec<String>,
    /// The least time between two messages, in ms (Slack takes about one a second per
    /// webhook; what arrives meanwhile is merged into the next) [default: 1000].
    #[serde(default = "default_min_interval_ms")]
    pub min_interval_ms: u64,
    /// Most offers in one message (1 to 49) [default: 20].
    #[serde(default = "default_max_items")]
    pub max_items: usize,
    /// How long one attempt may take, in ms [default: 15000].
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// The delays before each retry [default: the endpoints' default].
    pub retry_schedule: Option<Vec<String>>,
}

fn default_min_interval_ms() -> u64 {
    1_000
}

fn default_max_items() -> usize {
    20
}

/// What an endpoint is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// Every offer a pattern makes (`offer.created`).
    Offer,
    /// Every alert rule's firing and resolution (`alert.firing`, `alert.resolved`).
    Alert,
}

/// One `[[webhooks.endpoint]]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Its name: in state keys, metrics, logs and dead letters (letters, digits, `-`, `_`).
    pub name: String,
    /// Where to `POST` (`http://` or `https://`).
    pub url: String,
    /// What it is sent: `offer`, `alert` [default: offers].
    #[serde(default = "default_events")]
    pub events: Vec<EventKind>,
    /// Only the offers of these patterns [default: every pattern's].
    #[serde(default)]
    pub patterns: Vec<String>,
    /// Its signing secrets (`whsec_…`); during a rotation both the new and the old one, and
    /// every message carries a signature for each.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// An environment variable holding more secrets, separated by spaces (to keep them out of
    /// the file).
    pub secrets_env: Option<String>,
    /// How long one attempt may take, connection included, in ms [default: 15000].
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Most attempts under way at once [default: 4].
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// The delays before each retry (`"5s"`, `"30m"`, …) [default: Standard Webhooks' schedule:
    /// 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h].
    pub retry_schedule: Option<Vec<String>>,
}

fn default_events() -> Vec<EventKind> {
    vec![EventKind::Offer]
}

fn default_timeout_ms() -> u64 {
    15_000
}

fn default_max_in_flight() -> usize {
    4
}

/// Most endpoints (each has its own worker threads).
pub const MAX_ENDPOINTS: usize = 32;
/// Most attempts under way at once for one endpoint.
pub const MAX_IN_FLIGHT: usize = 64;

/// What kind of receiver an endpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointKind {
    /// Standard Webhooks: one signed message per offer.
    Webhook,
    /// A Slack incoming webhook: digests, at most one message per `min_interval`.
    Slack {
        /// The least time between two messages.
        min_interval: Duration,
        /// Most offers per message.
        max_items: usize,
    },
}

/// An endpoint as the sender uses it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Its name.
    pub name: String,
    /// Webhook or Slack.
    pub kind: EndpointKind,
    /// Its URL.
    pub url: String,
    /// Whether it takes offers.
    pub offers: bool,
    /// Whether it takes alerts.
    pub alerts: bool,
    /// The patterns whose offers it takes (empty: all).
    pub patterns: Vec<String>,
    /// Its secrets, each signing every message.
    pub secrets: Vec<Secret>,
    /// One attempt's time limit.
    pub timeout: Duration,
    /// Most attempts under way at once.
    pub max_in_flight: usize,
    /// How it is retried.
    pub retry: RetryPolicy,
}

impl Endpoint {
    /// Whether it takes the offers of `pattern`.
    pub fn takes_offer_of(&self, pattern: &str) -> bool {
        self.offers && (self.patterns.is_empty() || self.patterns.iter().any(|p| p == pattern))
    }
}

impl WebhooksConfig {
    /// The outbound address policy.
    pub fn policy(&self) -> AddressPolicy {
        AddressPolicy {
            allow_private: self.allow_private,
            allow_loopback: self.allow_loopback,
            allow: self.allow.clone(),
        }
    }

    /// The endpoints, with their secrets read (`env`: the environment), or every problem.
    pub fn endpoints(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Vec<Endpoint>, Vec<String>> {
        let mut problems = Vec::new();
        let mut endpoints = Vec::new();
        if self.endpoint.len() + self.slack.len() > MAX_ENDPOINTS {
            problems.push(format!(
                "webhooks: at most {MAX_ENDPOINTS} endpoints, not {}",
                self.endpoint.len() + self.slack.len()
            ));
        }
        for (i, e) in self.endpoint.iter().enumerate() {
            let at = format!("webhooks.endpoint[{i}] ({:?})", e.name);
            let before = problems.len();
            if e.name.is_empty()
                || e.name.len() > 64
                || !e
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                problems.push(format!("{at}.name: 1 to 64 letters, digits, `-` or `_`"));
            }
            if self.endpoint[..i].iter().any(|o| o.name == e.name) {
                problems.push(format!("{at}.name: used by an earlier endpoint"));
            }
            if let Err(problem) = check_url(&e.url) {
                problems.push(format!("{at}.url: {problem}"));
            }
            let mut texts: Vec<String> = e.secrets.clone();
            if let Some(var) = &e.secrets_env {
                match env(var) {
                    Some(value) => texts.extend(value.split_whitespace().map(str::to_owned)),
                    None => problems.push(format!(
                        "{at}.secrets_env: the environment variable {var} is not set"
                    )),
                }
            }
            let mut secrets = Vec::new();
            for text in &texts {
                match Secret::parse(text) {
                    Ok(s) => secrets.push(s),
                    Err(err) => problems.push(format!("{at}.secrets: {err}")),
                }
            }
            if texts.is_empty() && e.secrets_env.is_none() {
                problems.push(format!(
                    "{at}: needs at least one secret (`secrets` or `secrets_env`); \
                     `clickpulse webhooks secret` makes one"
                ));
            }
            if e.timeout_ms == 0 || e.timeout_ms > 120_000 {
                problems.push(format!("{at}.timeout_ms: 1 to 120000"));
            }
            if e.max_in_flight == 0 || e.max_in_flight > MAX_IN_FLIGHT {
                problems.push(format!("{at}.max_in_flight: 1 to {MAX_IN_FLIGHT}"));
            }
            let schedule = parse_schedule(&at, e.retry_schedule.as_deref(), &mut problems);
            if problems.len() == before {
                endpoints.push(Endpoint {
                    name: e.name.clone(),
                    kind: EndpointKind::Webhook,
                    url: e.url.clone(),
                    offers: e.events.contains(&EventKind::Offer),
                    alerts: e.events.contains(&EventKind::Alert),
                    patterns: e.patterns.clone(),
                    secrets,
                    timeout: Duration::from_millis(e.timeout_ms),
                    max_in_flight: e.max_in_flight,
                    retry: RetryPolicy {
                        schedule,
                        ..RetryPolicy::default()
                    },
                });
            }
        }
        for (i, e) in self.slack.iter().enumerate() {
            let at = format!("webhooks.slack[{i}] ({:?})", e.name);
            let before = problems.len();
            if let Err(problem) = check_name(&e.name) {
                problems.push(format!("{at}.name: {problem}"));
            }
            let taken = self.endpoint.iter().any(|o| o.name == e.name)
                || self.slack[..i].iter().any(|o| o.name == e.name);
            if taken {
                problems.push(format!("{at}.name: used by an earlier endpoint"));
            }
            let url = match (&e.url, &e.url_env) {
                (Some(url), None) => Some(url.clone()),
                (None, Some(var)) => {
                    let url = env(var);
                    if url.is_none() {
                        problems.push(format!(
                            "{at}.url_env: the environment variable {var} is not set"
                        ));
                    }
                    url
                }
                _ => {
                    problems.push(format!("{at}: give one of `url` and `url_env`"));
                    None
                }
            };
            if let Some(url) = &url
                && let Err(problem) = check_url(url)
            {
                // Not the URL itself: it is the webhook's secret.
                problems.push(format!(
                    "{at}.url: {}",
                    problem.replace(url.as_str(), "the URL")
                ));
            }
            if e.events.is_empty() {
                problems.push(format!(
                    "{at}.events: name what it is sent ([\"alert\"], [\"offer\"] or both)"
                ));
            }
            if e.min_interval_ms > 3_600_000 {
                problems.push(format!("{at}.min_interval_ms: at most 3600000"));
            }
            if !(1..=super::slack::MAX_ITEMS).contains(&e.max_items) {
                problems.push(format!("{at}.max_items: 1 to {}", super::slack::MAX_ITEMS));
            }
            if e.timeout_ms == 0 || e.timeout_ms > 120_000 {
                problems.push(format!("{at}.timeout_ms: 1 to 120000"));
            }
            let schedule = parse_schedule(&at, e.retry_schedule.as_deref(), &mut problems);
            if let (Some(url), true) = (url, problems.len() == before) {
                endpoints.push(Endpoint {
                    name: e.name.clone(),
                    kind: EndpointKind::Slack {
                        min_interval: Duration::from_millis(e.min_interval_ms),
                        max_items: e.max_items,
                    },
                    url,
                    offers: e.events.contains(&EventKind::Offer),
                    alerts: e.events.contains(&EventKind::Alert),
                    patterns: e.patterns.clone(),
                    secrets: Vec::new(),
                    timeout: Duration::from_millis(e.timeout_ms),
                    // One message at a time.
                    max_in_flight: e.max_items,
                    retry: RetryPolicy {
                        schedule,
                        ..RetryPolicy::default()
                    },
                });
            }
        }
        if problems.is_empty() {
            Ok(endpoints)
        } else {
            Err(problems)
        }
    }

    /// What is wrong with it (secrets from the process's environment).
    pub fn problems(&self) -> Vec<String> {
        self.endpoints(&|var| std::env::var(var).ok())
            .err()
            .unwrap_or_default()
    }

    /// A line for `config check`.
    pub fn summary(&self) -> String {
        if self.endpoint.is_empty() && self.slack.is_empty() {
            return "webhooks: no endpoints".to_owned();
        }
        let names: Vec<&str> = self
            .endpoint
            .iter()
            .map(|e| e.name.as_str())
            .chain(self.slack.iter().map(|e| e.name.as_str()))
            .collect();
        format!(
            "webhooks: {} endpoint(s): {}",
            names.len(),
            names.join(", ")
        )
    }
}

fn check_name(name: &str) -> Result<(), &'static str> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err("1 to 64 letters, digits, `-` or `_`")
    }
}

/// A `retry_schedule`'s delays (the spec's schedule when not given).
fn parse_schedule(
    at: &str,
    delays: Option<&[String]>,
    problems: &mut Vec<String>,
) -> Vec<Duration> {
    let Some(delays) = delays else {
        return SCHEDULE.to_vec();
    };
    if delays.len() > 20 {
        problems.push(format!("{at}.retry_schedule: at most 20 retries"));
    }
    let mut parsed = Vec::new();
    for d in delays {
        match humantime::parse_duration(d) {
            Ok(d) if d <= Duration::from_secs(7 * 24 * 3600) => parsed.push(d),
            Ok(_) => problems.push(format!("{at}.retry_schedule: {d:?} is over a week")),
            Err(err) => problems.push(format!("{at}.retry_schedule: {d:?}: {err}")),
        }
    }
    parsed
}

fn check_url(url: &str) -> Result<(), String> {
    let uri: ureq::http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("{url:?}: only http:// and https:// URLs")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{url:?} has no host"));
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(format!(
            "{url:?}: no user or password in the URL (receivers verify the signature)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> WebhooksConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn an_endpoint_with_its_secrets_from_the_file_and_the_environment() {
        let (a, b) = (Secret::generate().to_text(), Secret::generate().to_text());
        let config = parse(&format!(
            r#"
            allow_loopback = true
            [[endpoint]]
            name = "crm"
            url = "https://crm.example.com/hooks"
            secrets = ["{a}"]
            secrets_env = "CRM_SECRETS"
            retry_schedule = ["1s", "2m"]
            "#
        ));
        let env_b = b.clone();
        let endpoints = config
            .endpoints(&|var| (var == "CRM_SECRETS").then(|| env_b.clone()))
            .unwrap();
        assert_eq!(endpoints.len(), 1);
        let crm = &endpoints[0];
        assert_eq!(crm.secrets.len(), 2);
        assert_eq!(
            crm.retry.schedule,
            [Duration::from_secs(1), Duration::from_secs(120)]
        );
        assert!(crm.takes_offer_of("anything"));
        assert!(config.policy().allow_loopback);
        assert_eq!(config.summary(), "webhooks: 1 endpoint(s): crm");
    }

    #[test]
    fn every_mistake_is_reported() {
        let config = parse(
            r#"
            [[endpoint]]
            name = "no spaces"
            url = "ftp://x"
            secrets = ["plain"]
            max_in_flight = 0
            retry_schedule = ["soon"]
            [[endpoint]]
            name = "b"
            url = "https://user:pw@example.com/"
            secrets_env = "UNSET"
            "#,
        );
        let problems = config.endpoints(&|_| None).unwrap_err();
        let joined = problems.join("\n");
        for expected in [
            "webhooks.endpoint[0] (\"no spaces\").name",
            "only http:// and https://",
            "starts with \"whsec_\"",
            "max_in_flight: 1 to 64",
            "retry_schedule: \"soon\"",
            "no user or password",
            "UNSET is not set",
        ] {
            assert!(joined.contains(expected), "{expected} in:\n{joined}");
        }
        assert!(
            toml::from_str::<WebhooksConfig>("[[endpoint]]\nname='a'\nurl='http://x'\nsecret='x'")
                .is_err(),
            "unknown fields are errors"
        );
    }

    #[test]
    fn a_slack_webhook_takes_its_url_from_the_environment_and_never_shows_it() {
        let config = parse(
            r#"
            [[slack]]
            name = "ops"
            url_env = "OPS_SLACK"
            events = ["offer"]
            max_items = 10
            "#,
        );
        let url = "https://hooks.slack.com/services/T0/B0/secret";
        let endpoints = config
            .endpoints(&|var| (var == "OPS_SLACK").then(|| url.to_owned()))
            .unwrap();
        assert_eq!(endpoints[0].url, url);
        assert!(endpoints[0].secrets.is_empty());
        assert_eq!(
            endpoints[0].kind,
            EndpointKind::Slack {
                min_interval: Duration::from_secs(1),
                max_items: 10
            }
        );
        let broken = parse(
            r#"
            [[endpoint]]
            name = "ops"
            url = "https://crm.example.com/"
            secrets_env = "S"
            [[slack]]
            name = "ops"
            url = "ftp://hooks.slack.com/services/secret"
            events = []
            max_items = 50
            "#,
        );
        let problems = broken
            .endpoints(&|_| Some(Secret::generate().to_text()))
            .unwrap_err()
            .join("\n");
        for expected in [
            "webhooks.slack[0] (\"ops\").name: used by an earlier endpoint",
            "only http:// and https://",
            "events: name what it is sent",
            "max_items: 1 to 49",
        ] {
            assert!(problems.contains(expected), "{expected} in:\n{problems}");
        }
        assert!(
            !problems.contains("secret"),
            "the URL is not shown: {problems}"
        );
    }
}
