//! The HTTP collector's protocols: `POST /collect` ([`collect`], below) and Snowplow's tracker
//! protocol ([`snowplow`]). Each reads its requests into clicks; admission (size, encoding,
//! origin, who sent it) and delivery (rate limit, queue, durability) are shared.
//!
//! `POST /collect`: live page views from websites (the shop, or any site using
//! `clickpulse.js`).
//!
//! The body is one click or an array of at most [`MAX_BATCH`] clicks, as JSON (any content
//! type, so `navigator.sendBeacon` and no-preflight `fetch` work):
//!
//! ```json
//! {"visitor": "amber-falcon-river-42", "token": "…", "url": "https://shop.example/product/VD55177927",
//!  "gender": "F", "age": 30}
//! ```
//! `url` is required; `visitor`, `token`, `user_agent`, `ip`, `country`, `city`, `region`,
//! `gender` (M/F/U) and `age` are optional. The time is stamped by the server with the
//! pipeline's event-time clock (a client's `ts_ms` is ignored: browser clocks cannot be trusted).
//!
//! **Nobody can act as another visitor** ([`Identity`]): a click that names a `visitor` must
//! carry that visitor's identity token (the one `POST /api/identity` issued with the id; field
//! `token` or header `X-Clickpulse-Token`), or it is refused. A click that names no visitor is
//! counted under an anonymous id the server derives from the day, the client's address and its
//! user agent (as Plausible does: no cookie, a new id every UTC day, and nobody can choose
//! another visitor's). The client's address is the connection's; a click's `ip` and
//! `X-Forwarded-For` count only from a configured trusted proxy. A server-side sender that
//! authenticates with the admin token (`Authorization: Bearer`) is trusted: it may name any
//! visitor and give its address.
//!
//! Answers: `202 {"accepted": n}` (plus `"rejected": [{"index", "error"}]` for invalid clicks of
//! a batch: the valid ones are kept, the others go to the `dead-letters` topic with their
//! reason); `400 {"error"}` naming the first bad click; `403` for a page on an origin that is not
//! allowed to send; `413` over the size limit; `415` for a compressed body; `503` with
//! `Retry-After` when the pipeline cannot take more — nothing is buffered without bound.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use clickpulse_engine::DeadLetter;
use clickpulse_engine::click::{Click, ClickJson};
use clickpulse_engine::replay::EventClock;
use serde_json::json;
use tokio::sync::oneshot;

use crate::{AppError, AppState};

pub mod segment;
pub mod snowplow;
mod values;

/// The most clicks in one request.
pub const MAX_BATCH: usize = 500;
/// The largest accepted body, in bytes.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// Where accepted clicks go (the `click-data` topic, through a bounded queue), and rejected
/// ones (the `dead-letters` topic).
pub trait ClickSink: Send + Sync {
    /// Queues clicks and dead letters for publication; `Err` when the queue is full (nothing was
    /// queued). The receiver resolves once all of them are durable (or failed to be).
    fn offer(
        &self,
        clicks: Vec<Click>,
        dead_letters: Vec<DeadLetter>,
    ) -> Result<oneshot::Receiver<Result<(), String>>, SinkFull>;
}

/// The source name of the collector's dead letters.
pub const DEAD_LETTER_SOURCE: &str = "collector";

/// How long a request waits for its clicks to become durable before answering 503.
const DURABLE_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// The sink cannot take more now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkFull;

/// What the collector needs.
#[derive(Clone)]
pub struct Collector {
    /// Where clicks go.
    pub sink: Arc<dyn ClickSink>,
    /// Stamps event time.
    pub clock: Arc<EventClock>,
    /// Who may name which visitor, and whose word about the client's address counts.
    pub identity: Identity,
    /// Valid events of other trackers' protocols that mean nothing here (page pings, ...).
    pub ignored: Arc<IgnoredEvents>,
}

/// Counts of events a protocol takes and drops on purpose, by protocol and kind (shown by
/// `/api/stats` under `collector_ignored`): accepted, so the tracker does not send them again,
/// and not kept. Since this process started.
#[derive(Debug, Default)]
pub struct IgnoredEvents(
    std::sync::Mutex<std::collections::BTreeMap<(&'static str, &'static str), u64>>,
);

impl IgnoredEvents {
    /// Counts `n` events of `kind` from `protocol`.
    pub fn add(&self, protocol: &'static str, kind: &'static str, n: u64) {
        *self
            .0
            .lock()
            .expect("ignored counts lock")
            .entry((protocol, kind))
            .or_default() += n;
    }

    /// `{protocol: {kind: count}}`.
    pub fn snapshot(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for ((protocol, kind), n) in self.0.lock().expect("ignored counts lock").iter() {
            out.entry(*protocol)
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("an object")
                .insert((*kind).to_owned(), json!(n));
        }
        serde_json::Value::Object(out)
    }
}

/// The collector's rules on identity (see the module docs).
#[derive(Clone)]
pub struct Identity {
    /// Verifies visitor tokens, and keys the anonymous ids.
    pub tokens: crate::offers::OfferTokens,
    /// Peers whose `X-Forwarded-For` and click `ip` fields are believed (reverse proxies).
    pub trusted_proxies: Arc<[ipnet::IpNet]>,
    /// A request with this bearer token is a trusted server-side sender.
    pub admin_token: Option<Arc<str>>,
    /// The most clicks a minute from one client address (a sender with the admin token is not
    /// limited):
    /// however it varies its user agent or visitor ids, one address cannot make state grow
    /// faster than this.
    pub per_client: Option<crate::rate::PerClient>,
}

impl Identity {
    /// Rules with identity tokens under `tokens` and nothing else trusted.
    pub fn new(tokens: crate::offers::OfferTokens) -> Self {
        Identity {
            tokens,
            trusted_proxies: Arc::from(Vec::new()),
            admin_token: None,
            per_client: None,
        }
    }

    /// The anonymous id of a client at `ip` with `user_agent` on the UTC day of `ts_ms`.
    pub fn anonymous_id(&self, ts_ms: i64, ip: &str, user_agent: &str) -> String {
        let day = ts_ms.div_euclid(86_400_000);
        let mac = self
            .tokens
            .issue(&format!("anonymous\0{day}\0{ip}\0{user_agent}"));
        format!("anon-{}", &mac[..16])
    }

    fn is_trusted_proxy(&self, peer: std::net::IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&peer))
    }
}

/// Who sent a request, as far as the collector can tell.
#[derive(Debug, Clone, Copy)]
pub struct Sender<'a> {
    /// The client's address (the peer's, or the one a trusted proxy forwarded).
    pub ip: &'a str,
    /// The request's user agent.
    pub user_agent: &'a str,
    /// A trusted proxy or server-side sender: a click's `ip` and `visitor` are believed.
    pub trusted: bool,
    /// The `X-Clickpulse-Token` header, for clicks without a `token` field.
    pub token: Option<&'a str>,
}

/// A click of a request that was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Its index in the request's batch.
    pub index: usize,
    /// Why (`click 3: missing field `url``).
    pub reason: String,
    /// The click as sent (JSON).
    pub raw: String,
}

/// A request body read into valid clicks and rejected ones: a bad click never costs its
/// neighbours their place.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParsedBody {
    /// The valid clicks, stamped with the server's time.
    pub clicks: Vec<Click>,
    /// The others, with their reasons.
    pub rejected: Vec<Rejected>,
}

/// Parses and validates a body from a trusted sender (every `visitor` and `ip` believed; no
/// anonymous ids): the parse the fuzzer drives. See [`parse_body_from`].
pub fn parse_body(
    bytes: &[u8],
    ts_ms: i64,
    ip: &str,
    user_agent: &str,
) -> Result<ParsedBody, String> {
    let sender = Sender {
        ip,
        user_agent,
        trusted: true,
        token: None,
    };
    parse_body_from(bytes, ts_ms, &sender, None)
}

/// Parses and validates a request body into clicks stamped at `ts_ms`, attributing each to its
/// visitor by `identity`'s rules for `sender`. A body that is not a JSON click or batch of 1 to
/// [`MAX_BATCH`] clicks is an `Err` (the whole request is refused); invalid clicks inside a
/// batch are [`Rejected`] one by one.
pub fn parse_body_from(
    bytes: &[u8],
    ts_ms: i64,
    sender: &Sender<'_>,
    identity: Option<&Identity>,
) -> Result<ParsedBody, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("body is not UTF-8: {e}"))?;
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("body is not JSON: {e}"))?;
    let items = match value {
        serde_json::Value::Array(items) => items,
        one => vec![one],
    };
    if items.is_empty() {
        return Err("no clicks in the body".to_owned());
    }
    if items.len() > MAX_BATCH {
        return Err(format!(
            "{} clicks in one request; at most {MAX_BATCH}",
            items.len()
        ));
    }
    let mut parsed = ParsedBody::default();
    for (i, item) in items.into_iter().enumerate() {
        let raw = item.to_string();
        match parse_click(item, ts_ms, sender, identity) {
            Ok(click) => parsed.clicks.push(click),
            Err(e) => parsed.rejected.push(Rejected {
                index: i,
                reason: format!("click {i}: {e}"),
                raw,
            }),
        }
    }
    Ok(parsed)
}

fn parse_click(
    item: serde_json::Value,
    ts_ms: i64,
    sender: &Sender<'_>,
    identity: Option<&Identity>,
) -> Result<Click, String> {
    // The JSON-lines format's fields (`ts_ms` is ignored: the server stamps event time).
    let mut c =
        <ClickJson<'_> as serde::Deserialize>::deserialize(item).map_err(|e| e.to_string())?;
    let (event, detail) = c.take_event();
    let ip = match c.ip {
        Some(ip) if sender.trusted => {
            let ip = ip.trim();
            ip.parse::<std::net::IpAddr>()
                .map_err(|_| format!("ip {ip:?} is not an IP address"))?;
            ip.to_owned()
        }
        // An untrusted client's word about its own address is not taken.
        _ => sender.ip.to_owned(),
    };
    let user_agent = c
        .user_agent
        .map_or_else(|| sender.user_agent.to_owned(), Cow::into_owned);
    // A country becomes a dashboard key: only ISO 3166-1 (a code or a name), as the lower-case
    // alpha-3 code the log uses.
    let country = match c.country {
        Some(given) => {
            let code = given.trim();
            let country = (code.len() <= 64)
                .then(|| code.to_ascii_lowercase().parse::<celes::Country>().ok())
                .flatten()
                .ok_or_else(|| {
                    let shown: String = code.chars().take(40).collect();
                    format!("country {shown:?} is not an ISO 3166-1 code or name")
                })?;
            Some(country.alpha3.to_ascii_lowercase())
        }
        None => None,
    };
    let visitor = match (c.visitor.map(|v| v.trim().to_owned()), identity) {
        (Some(visitor), _) if sender.trusted => visitor,
        (Some(visitor), Some(identity)) => {
            let token = c.token.as_deref().or(sender.token).ok_or_else(|| {
                format!(
                    "visitor {visitor:?} needs its identity token (field `token` or header \
                     X-Clickpulse-Token, from POST /api/identity); leave out `visitor` to be \
                     counted anonymously"
                )
            })?;
            if !identity.tokens.verify(&visitor, token) {
                return Err(format!("the token is not visitor {visitor:?}'s"));
            }
            visitor
        }
        (Some(_), None) => return Err("visitor ids cannot be checked here".to_owned()),
        (None, Some(identity)) => identity.anonymous_id(ts_ms, &ip, &user_agent),
        (None, None) => return Err("missing field `visitor`".to_owned()),
    };
    let detail = clickpulse_engine::event::with_url_utm(&c.url, detail);
    let click = Click {
        ts_ms,
        visitor,
        url: c.url.into_owned(),
        ip,
        user_agent,
        city: c.city.map(Cow::into_owned),
        country,
        region: c.region.map(Cow::into_owned),
        gender: c.gender,
        age: c.age,
        event,
        detail,
    };
    click.validate().map_err(|e| e.to_string())?;
    Ok(click)
}

/// Whether the page that sent the request may send page views: the origin a browser names
/// (`Origin`, else `Referer`) must be this site's own (its host is the request's `Host`) or one of
/// `allowed` (`*`: any). A request without either is not from a page (a server, `curl`): it is
/// judged by its identity alone. CORS only decides which pages may *read* an answer; this
/// decides which may *send* (no-cors `fetch`, `sendBeacon` and forms included). `Err` names the
/// refused origin.
fn origin_may_send(allowed: &[String], headers: &HeaderMap) -> Result<(), String> {
    let named = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let origin = match (named(header::ORIGIN), named(header::REFERER)) {
        (Some(origin), _) => origin.trim_end_matches('/').to_owned(),
        (None, Some(referer)) => match referer.find("://") {
            Some(i) => {
                let end = referer[i + 3..]
                    .find('/')
                    .map_or(referer.len(), |j| i + 3 + j);
                referer[..end].to_owned()
            }
            None => return Err(referer.to_owned()),
        },
        (None, None) => return Ok(()),
    };
    let host = origin.split_once("://").map_or("", |(_, h)| h);
    let own = named(header::HOST).is_some_and(|h| h.eq_ignore_ascii_case(host));
    if own
        || allowed
            .iter()
            .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(&origin))
    {
        Ok(())
    } else {
        Err(origin)
    }
}

/// The client's address: the peer's, or from a trusted proxy the right-most address of
/// `X-Forwarded-For` that is not itself a trusted proxy.
fn client_ip(identity: &Identity, peer: Option<std::net::IpAddr>, headers: &HeaderMap) -> String {
    let Some(peer) = peer else {
        return String::new();
    };
    if identity.is_trusted_proxy(peer) {
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
            .collect::<Vec<_>>();
        if let Some(client) = forwarded
            .iter()
            .rev()
            .find(|a| !identity.is_trusted_proxy(**a))
        {
            return client.to_string();
        }
    }
    peer.to_string()
}

/// A request to one of the collector's endpoints that passed its admission checks (within the
/// size limit, not compressed, from a page allowed to send), with who sent it. Each protocol
/// (`/collect`, Snowplow's) parses its body into clicks and hands them to [`Admitted::deliver`].
pub(crate) struct Admitted {
    pub(crate) collector: Collector,
    pub(crate) metrics: Arc<clickpulse_engine::metrics::StageMetrics>,
    pub(crate) body: Bytes,
    ip: String,
    user_agent: String,
    admin: bool,
    trusted: bool,
    token: Option<String>,
}

/// Why accepted clicks could not be taken now: the client should retry later.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The client's address sent too much (`429` with `Retry-After`).
    RateLimited { retry_after_s: u64, per_minute: u32 },
    /// The pipeline cannot take or store them now (`503` with `Retry-After`).
    Busy(&'static str),
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::RateLimited {
                retry_after_s,
                per_minute,
            } => (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, retry_after_s.to_string())],
                Json(json!({"error": format!(
                    "this address sent more than {per_minute} events a minute; retry in \
                     {retry_after_s} s"
                )})),
            )
                .into_response(),
            Refused::Busy(reason) => crate::limits::busy(reason),
        }
    }
}

/// What [`Admitted::deliver`] did with a request's clicks.
pub(crate) struct Delivered {
    /// Clicks now durable.
    pub(crate) accepted: usize,
    /// Clicks refused, now durable as dead letters.
    pub(crate) rejected: Vec<Rejected>,
}

/// Checks a request before its body is read as clicks: size, encoding, origin; and works out
/// who sent it.
pub(crate) fn admit(
    state: &AppState,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Admitted, AppError> {
    admit_within(state, peer, headers, body, MAX_BODY_BYTES)
}

/// [`admit`] with a size limit of the protocol's own (Segment's batches: 500 KB).
pub(crate) fn admit_within(
    state: &AppState,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<Admitted, AppError> {
    let Some(collector) = &state.collector else {
        return Err(AppError::NotFound(
            "the collector does not run in this process".to_owned(),
        ));
    };
    let metrics = state.metrics.stage("collector");
    let refuse = |e: AppError| {
        metrics.error();
        Err(e)
    };
    let body = match body {
        Ok(body) if body.len() <= limit => body,
        Ok(_) => {
            return refuse(AppError::TooLarge(format!(
                "body over {limit} bytes (the limit)"
            )));
        }
        Err(rejection) => {
            return refuse(crate::limits::body_error(
                rejection.status(),
                &rejection,
                limit,
            ));
        }
    };
    if let Some(encoding) = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .filter(|e| !e.eq_ignore_ascii_case("identity"))
    {
        return refuse(AppError::UnsupportedMedia(format!(
            "Content-Encoding {encoding:?} is not supported: send the JSON uncompressed"
        )));
    }
    if let Err(origin) = origin_may_send(&state.cors_origins, headers) {
        return refuse(AppError::Forbidden(format!(
            "pages on {origin} may not send events here (allowed: this site's own pages{})",
            if state.cors_origins.is_empty() {
                String::new()
            } else {
                format!(" and {}", state.cors_origins.join(", "))
            }
        )));
    }
    let identity = &collector.identity;
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let peer_ip = peer.map(|Extension(ConnectInfo(addr))| addr.ip());
    let ip = client_ip(identity, peer_ip, headers);
    let admin = identity
        .admin_token
        .as_deref()
        .is_some_and(|t| crate::bearer_matches(headers, t));
    Ok(Admitted {
        collector: collector.clone(),
        metrics,
        body,
        ip,
        user_agent,
        admin,
        trusted: admin || peer_ip.is_some_and(|p| identity.is_trusted_proxy(p)),
        token: headers
            .get("x-clickpulse-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    })
}

impl Admitted {
    /// Who sent it.
    pub(crate) fn sender(&self) -> Sender<'_> {
        Sender {
            ip: &self.ip,
            user_agent: &self.user_agent,
            trusted: self.trusted,
            token: self.token.as_deref(),
        }
    }

    /// The event time a click received now gets.
    pub(crate) fn now_ms(&self) -> i64 {
        self.collector.clock.now_ms()
    }

    /// Counts a request refused for its content.
    pub(crate) fn refused(&self) {
        self.metrics.error();
    }

    /// Hands `parsed` to the pipeline (its rejected clicks as dead letters of `source`) and
    /// waits until all of it is durable: an accepted click is never lost.
    pub(crate) async fn deliver(
        &self,
        parsed: ParsedBody,
        source: &str,
    ) -> Result<Delivered, Refused> {
        let n = parsed.clicks.len();
        // Per client: behind a trusted proxy, the forwarded address; a server-side sender with
        // the admin token is not limited.
        if let (Some(limit), false, Ok(client)) = (
            &self.collector.identity.per_client,
            self.admin,
            self.ip.parse::<std::net::IpAddr>(),
        ) && let Err(wait) = limit.check(client, (n + parsed.rejected.len()) as u32)
        {
            self.metrics.error();
            return Err(Refused::RateLimited {
                retry_after_s: wait.as_secs().max(1),
                per_minute: limit.per_minute,
            });
        }
        let letters: Vec<DeadLetter> = parsed
            .rejected
            .iter()
            .map(|r| DeadLetter::new(source, r.index as u64, &r.reason, r.raw.as_bytes()))
            .collect();
        let Ok(durable) = self.collector.sink.offer(parsed.clicks, letters) else {
            self.metrics.error();
            return Err(Refused::Busy("the pipeline is at capacity; retry shortly"));
        };
        match tokio::time::timeout(DURABLE_WITHIN, durable).await {
            Ok(Ok(Ok(()))) => {
                if n == 0 {
                    self.metrics.error();
                }
                Ok(Delivered {
                    accepted: n,
                    rejected: parsed.rejected,
                })
            }
            Ok(Ok(Err(error))) => {
                tracing::warn!(%error, "Collected clicks could not be stored.");
                self.metrics.error();
                Err(Refused::Busy(
                    "the pipeline cannot store clicks right now; retry shortly",
                ))
            }
            Ok(Err(_)) | Err(_) => {
                self.metrics.error();
                Err(Refused::Busy(
                    "the pipeline is not keeping up; retry shortly",
                ))
            }
        }
    }
}

/// What the events of one request in another tracker's protocol (Snowplow's, Segment's) came
/// to.
#[derive(Debug, Default, PartialEq)]
pub struct ParsedEvents {
    /// Events taken as clicks, and events refused with their reasons.
    pub body: ParsedBody,
    /// Events that are valid in their protocol but mean nothing to Clickpulse (page pings,
    /// `screen` calls, ...), by what they are: counted, not kept.
    pub ignored: std::collections::BTreeMap<&'static str, u64>,
}

/// What one event of another tracker's protocol becomes.
#[derive(Debug)]
pub(crate) enum Mapped {
    Click(Box<Click>),
    Ignored(&'static str),
}

impl ParsedEvents {
    /// Adds event `index` (`what` in its reason: `event 3: …`), mapped or refused.
    pub(crate) fn take(
        &mut self,
        index: usize,
        what: &str,
        taken: Result<Mapped, String>,
        raw: impl FnOnce() -> String,
    ) {
        match taken {
            Ok(Mapped::Click(click)) => self.body.clicks.push(*click),
            Ok(Mapped::Ignored(kind)) => *self.ignored.entry(kind).or_default() += 1,
            Err(e) => self.body.rejected.push(Rejected {
                index,
                reason: format!("{what} {index}: {e}"),
                raw: raw(),
            }),
        }
    }
}

#[cfg(test)]
impl ParsedEvents {
    /// The one click of a request whose events were all taken (tests).
    pub(crate) fn the_click(self) -> Click {
        assert!(self.body.rejected.is_empty(), "{:?}", self.body.rejected);
        self.body.clicks.into_iter().next().expect("a click")
    }
}

/// Checks a batch's number of events (`what`: "events", "messages").
pub(crate) fn batch_len(len: usize, what: &str) -> Result<(), String> {
    match len {
        0 => Err(format!("no {what} in the request")),
        n if n > MAX_BATCH => Err(format!("{n} {what} in one request; at most {MAX_BATCH}")),
        _ => Ok(()),
    }
}

impl Admitted {
    /// Counts `parsed`'s ignored events under `source`, hands the rest to the pipeline and
    /// answers `ok(rejected)` once they are durable; `400` when no event of the request could
    /// be taken (the tracker must not send it again; the events are kept as dead letters).
    pub(crate) async fn deliver_events(
        &self,
        parsed: ParsedEvents,
        source: &'static str,
        ok: impl FnOnce(&[Rejected]) -> Response,
    ) -> Response {
        for (kind, n) in &parsed.ignored {
            self.collector.ignored.add(source, kind, *n);
        }
        if parsed.body.clicks.is_empty() && parsed.body.rejected.is_empty() {
            return ok(&[]);
        }
        match self.deliver(parsed.body, source).await {
            Ok(d) if d.accepted == 0 => {
                AppError::BadRequest(d.rejected[0].reason.clone()).into_response()
            }
            Ok(d) => ok(&d.rejected),
            Err(refused) => refused.into_response(),
        }
    }
}

/// `POST /collect`.
pub(crate) async fn collect(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let request = admit(&state, peer, &headers, body)?;
    let parsed = match parse_body_from(
        &request.body,
        request.now_ms(),
        &request.sender(),
        Some(&request.collector.identity),
    ) {
        Ok(parsed) => parsed,
        Err(reason) => {
            request.refused();
            return Err(AppError::BadRequest(reason));
        }
    };
    let delivered = match request.deliver(parsed, DEAD_LETTER_SOURCE).await {
        Ok(delivered) => delivered,
        Err(refused) => return Ok(refused.into_response()),
    };
    let rejected: Vec<serde_json::Value> = delivered
        .rejected
        .iter()
        .map(|r| json!({"index": r.index, "error": r.reason}))
        .collect();
    Ok(match (delivered.accepted, rejected.is_empty()) {
        // Every click was bad: refused, and kept as dead letters.
        (0, _) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": delivered.rejected.first().map_or("", |r| r.reason.as_str()), "rejected": rejected})),
        )
            .into_response(),
        (n, true) => (StatusCode::ACCEPTED, Json(json!({"accepted": n}))).into_response(),
        (n, false) => (
            StatusCode::ACCEPTED,
            Json(json!({"accepted": n, "rejected": rejected})),
        )
            .into_response(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_click_or_a_batch_stamped_by_the_server() {
        let clicks = parse_body(
            br#"{"visitor":"v","url":"http://x/p/VD1","gender":"F","age":30,"ts_ms":1}"#,
            5_000,
            "1.2.3.4",
            "UA",
        )
        .unwrap()
        .clicks;
        assert_eq!(clicks.len(), 1);
        assert_eq!(
            (
                clicks[0].ts_ms,
                clicks[0].ip.as_str(),
                clicks[0].user_agent.as_str()
            ),
            (5_000, "1.2.3.4", "UA")
        );
        assert_eq!(
            (clicks[0].gender, clicks[0].age),
            (Some(clickpulse_engine::click::Gender::F), Some(30))
        );
        let batch = parse_body(br#"[{"visitor":"a","url":"http://x/1"},{"visitor":"b","url":"http://x/2","ip":"9.9.9.9"}]"#, 1, "", "").unwrap().clicks;
        assert_eq!(batch[1].ip, "9.9.9.9");
    }

    #[test]
    fn a_bad_click_is_rejected_alone() {
        let parsed = parse_body(
            br#"[{"visitor":"a","url":"http://x/1"},{"visitor":"","url":"http://x/2"},{"url":"x"},{"visitor":"c","url":"http://x/3"}]"#,
            1,
            "",
            "",
        )
        .unwrap();
        let kept: Vec<&str> = parsed.clicks.iter().map(|c| c.visitor.as_str()).collect();
        assert_eq!(kept, ["a", "c"]);
        let rejected: Vec<(usize, &str)> = parsed
            .rejected
            .iter()
            .map(|r| (r.index, r.reason.as_str()))
            .collect();
        assert_eq!(
            rejected,
            [
                (1, "click 1: empty visitor id"),
                (2, "click 2: missing field `visitor`")
            ]
        );
        assert_eq!(parsed.rejected[1].raw, r#"{"url":"x"}"#);
    }

    #[test]
    fn interactions_are_taken_with_their_fields_and_bad_ones_rejected_alone() {
        use clickpulse_engine::event::EventType;
        let parsed = parse_body(
            br#"[{"type":"add_to_cart","visitor":"a","url":"http://x/p/VD1?utm_source=ads&utm_medium=cpc","product":{"id":"VD1","price":9.5,"quantity":1,"currency":"EUR"}},
                 {"type":"purchase","visitor":"a","url":"http://x/done"},
                 {"type":"search","visitor":"a","url":"http://x/s","query":"red shoes","properties":{"results":12}}]"#,
            7,
            "1.2.3.4",
            "UA",
        )
        .unwrap();
        let types: Vec<&str> = parsed.clicks.iter().map(|c| c.event.as_str()).collect();
        assert_eq!(types, ["add_to_cart", "search"]);
        let cart = parsed.clicks[0].detail.as_ref().unwrap();
        assert_eq!(cart.product_id(), Some("VD1"));
        let utm = cart.utm.as_ref().unwrap();
        assert_eq!(
            (utm.source.as_deref(), utm.medium.as_deref()),
            (Some("ads"), Some("cpc"))
        );
        assert_eq!(parsed.clicks[1].event, EventType::Search);
        assert_eq!(parsed.rejected.len(), 1);
        assert_eq!(parsed.rejected[0].index, 1);
        assert!(
            parsed.rejected[0]
                .reason
                .starts_with("click 1: a purchase event needs an order"),
            "{}",
            parsed.rejected[0].reason
        );
    }

    fn identity() -> Identity {
        Identity {
            trusted_proxies: Arc::from(vec!["10.0.0.0/8".parse::<ipnet::IpNet>().unwrap()]),
            ..Identity::new(crate::offers::OfferTokens::new(b"secret"))
        }
    }

    fn untrusted<'a>(token: Option<&'a str>) -> Sender<'a> {
        Sender {
            ip: "203.0.113.7",
            user_agent: "UA",
            trusted: false,
            token,
        }
    }

    #[test]
    fn nobody_can_act_as_another_visitor() {
        let id = identity();
        let token = id.tokens.issue("visitor-b");
        let parse = |body: &str, sender: &Sender<'_>| {
            parse_body_from(body.as_bytes(), 1_000, sender, Some(&id)).unwrap()
        };
        // Naming B without B's token is refused, with a way out.
        let refused = parse(
            r#"{"visitor":"visitor-b","url":"http://x/1"}"#,
            &untrusted(None),
        );
        assert!(refused.clicks.is_empty());
        assert!(
            refused.rejected[0]
                .reason
                .contains("needs its identity token"),
            "{refused:?}"
        );
        let forged = parse(
            r#"{"visitor":"visitor-b","token":"00ff","url":"http://x/1"}"#,
            &untrusted(None),
        );
        assert!(forged.rejected[0].reason.contains("not visitor"));
        let other = id.tokens.issue("visitor-a");
        let borrowed = parse(
            &format!(r#"{{"visitor":"visitor-b","token":"{other}","url":"http://x/1"}}"#),
            &untrusted(None),
        );
        assert!(borrowed.rejected[0].reason.contains("not visitor"));
        // With B's token, in the click or the header, it is B.
        let own = parse(
            &format!(r#"{{"visitor":"visitor-b","token":"{token}","url":"http://x/1"}}"#),
            &untrusted(None),
        );
        assert_eq!(own.clicks[0].visitor, "visitor-b");
        let header = parse(
            r#"{"visitor":"visitor-b","url":"http://x/1"}"#,
            &untrusted(Some(&token)),
        );
        assert_eq!(header.clicks[0].visitor, "visitor-b");
        // No visitor: an anonymous id from the day, the address and the user agent.
        let anon = parse(r#"{"url":"http://x/1"}"#, &untrusted(None));
        let anon_id = anon.clicks[0].visitor.clone();
        assert!(anon_id.starts_with("anon-"), "{anon_id}");
        assert_eq!(
            parse(r#"{"url":"http://x/2"}"#, &untrusted(None)).clicks[0].visitor,
            anon_id
        );
        let elsewhere = Sender {
            ip: "198.51.100.1",
            ..untrusted(None)
        };
        assert_ne!(
            parse(r#"{"url":"http://x/1"}"#, &elsewhere).clicks[0].visitor,
            anon_id
        );
        assert_ne!(
            id.anonymous_id(86_400_000 + 1_000, "203.0.113.7", "UA"),
            anon_id,
            "a new id every day"
        );
    }

    #[test]
    fn a_client_s_word_about_its_address_counts_only_from_a_trusted_proxy() {
        let id = identity();
        let untrusted = parse_body_from(
            br#"{"url":"http://x/1","ip":"not-an-ip"}"#,
            1,
            &untrusted(None),
            Some(&id),
        )
        .unwrap();
        assert_eq!(
            untrusted.clicks[0].ip, "203.0.113.7",
            "the connection's address"
        );
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "1.2.3.4, 10.1.1.1".parse().unwrap());
        let proxy: std::net::IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(client_ip(&id, Some(proxy), &headers), "1.2.3.4");
        let stranger: std::net::IpAddr = "192.0.2.9".parse().unwrap();
        assert_eq!(client_ip(&id, Some(stranger), &headers), "192.0.2.9");
    }

    #[test]
    fn only_this_site_s_pages_and_allowed_origins_may_send() {
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, v.parse().unwrap());
            }
            h
        };
        let allowed = vec!["https://shop.example".to_owned()];
        assert!(
            origin_may_send(&allowed, &headers(&[])).is_ok(),
            "not a page"
        );
        let own = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
        ]);
        assert!(origin_may_send(&[], &own).is_ok());
        let listed = headers(&[("host", "c.example"), ("origin", "https://shop.example")]);
        assert!(origin_may_send(&allowed, &listed).is_ok());
        let evil = headers(&[("host", "c.example"), ("origin", "https://evil.example")]);
        assert_eq!(
            origin_may_send(&allowed, &evil),
            Err("https://evil.example".to_owned())
        );
        let beacon = headers(&[
            ("host", "c.example"),
            ("referer", "https://evil.example/page?x"),
        ]);
        assert_eq!(
            origin_may_send(&allowed, &beacon),
            Err("https://evil.example".to_owned())
        );
        assert!(origin_may_send(&["*".to_owned()], &evil).is_ok());
    }

    #[test]
    fn a_country_is_an_iso_3166_code_or_name() {
        let err = parse_body(
            br#"{"visitor":"v","url":"http://x/1","country":"Atlantis"}"#,
            1,
            "",
            "",
        )
        .unwrap();
        assert!(
            err.rejected[0].reason.contains("not an ISO 3166-1"),
            "{err:?}"
        );
        let ok = parse_body(
            br#"[{"visitor":"v","url":"u","country":"DE"},{"visitor":"v","url":"u","country":"france"}]"#,
            1,
            "",
            "",
        )
        .unwrap();
        let countries: Vec<_> = ok.clicks.iter().map(|c| c.country.as_deref()).collect();
        assert_eq!(countries, [Some("deu"), Some("fra")]);
    }

    #[test]
    fn bad_bodies_get_clear_reasons() {
        // The whole body's problems refuse it; a lone click's problem is its rejection.
        let err = |b: &[u8]| match parse_body(b, 1, "", "") {
            Err(reason) => reason,
            Ok(parsed) => {
                assert!(parsed.clicks.is_empty(), "{parsed:?}");
                parsed.rejected[0].reason.clone()
            }
        };
        assert!(err(b"not json").starts_with("body is not JSON"));
        assert!(err(b"[]").contains("no clicks"));
        assert!(err(br#"{"url":"http://x/1"}"#).contains("missing field `visitor`"));
        assert!(
            err(br#"{"visitor":"v","url":"http://x/1","ip":"not-an-ip"}"#).contains("not an IP")
        );
        assert!(err(br#"{"visitor":"","url":"http://x/1"}"#).contains("click 0: empty visitor id"));
        assert!(err(br#"{"visitor":"v","url":"http://x/1","gender":"X"}"#).contains("click 0"));
        assert!(
            err(br#"{"visitor":"v","url":"http://x/1","shoe_size":42}"#)
                .contains("unknown field `shoe_size`")
        );
        assert!(err(&[0xff, 0xfe]).contains("not UTF-8"));
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(
            err(deep.as_bytes()).starts_with("body is not JSON"),
            "deep nesting is refused, not a stack overflow"
        );
        let many = format!(
            "[{}]",
            vec![r#"{"visitor":"v","url":"u"}"#; MAX_BATCH + 1].join(",")
        );
        assert!(err(many.as_bytes()).contains("at most 500"));
    }
}
