//! Delivering offers to the browser of the visitor they are for.
//!
//! - `POST /api/identity` issues a new readable visitor id (`amber-falcon-river-42`) with two
//!   credentials, both HMAC-SHA256 under the server's secret, so only the server can make them,
//!   and it makes them only for an id it just generated (nobody can subscribe to another
//!   visitor's offers):
//!   - `identity_token`: the visitor's lasting credential. It never travels in a URL: the shop
//!     keeps it in `localStorage` and sends it only in request bodies. `POST /api/identity` with
//!     `{"visitor", "identity_token"}` issues a fresh `token` for the same visitor.
//!   - `token`: the **offer token** for `GET /api/offers/stream?visitor=&token=`. EventSource can
//!     only send it in the query string (where proxies and histories may keep it), so it is
//!     short-lived: it carries its issue time and is refused (`401`, "expired") after
//!     [`STREAM_TOKEN_MAX_AGE`] (15 min); the shop then gets a new one with its identity token.
//!     A stream already open is not cut when its token expires; it ends at the stream lifetime
//!     ([`crate::limits::STREAM_MAX_LIFETIME`]) like every stream.
//! - The web stage ([`WebOperator`]) consumes `special-offers` and hands each offer to the
//!   [`OfferHub`], which drops duplicates by `offer_id` (reprocessing after a crash re-emits the
//!   same ids) and keeps each visitor's recent offers for a minute, so a page that subscribes a
//!   moment after the click still gets its popup.
//! - `GET /api/offers/stream?visitor=&token=` streams that visitor's offers as Server-Sent
//!   Events (`event: offer`).
//!
//! # Cost per offer
//! [`OfferHub::deliver`] does a bounded amount of work per offer whatever the offer rate or the
//! number of visitors with recent offers: a hash lookup for the duplicate check, one push onto
//! the recent offers (expired ones leave from the front of one queue kept in delivery order, so
//! each offer is expired once: amortized O(1)), and a hash lookup of *this visitor's* open
//! streams, each of which gets the offer through its own bounded queue ([`STREAM_QUEUE`]).
//! Nothing scans other visitors and no stream sees other visitors' offers, so a flood of offers
//! for fresh visitor ids neither slows nor crowds out a real visitor's popup. Memory is bounded
//! too: at most [`MAX_RECENT_OFFERS`] recent offers and [`SEEN_IDS`] remembered ids.
//!
//! # De-duplication window
//! A delivered offer id is remembered, and persisted by the web stage (state key
//! `delivered/<offer_id>`, value its event time), for [`DEDUP_RETENTION`] (30 days) of event
//! time after the newest offer the stage delivered, and among the newest [`DEDUP_MAX_IDS`]
//! (100,000) ids of the stage task (the hub keeps the newest [`SEEN_IDS`] in memory). Within
//! that window an offer re-emitted by a restarted upstream stage is never shown twice; older
//! ids are deleted from the checkpointed state and forgotten, so an offer id arriving again
//! after more than 100,000 newer offers or 30 days of event time would be delivered again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use clickpulse_engine::operator::{Context, Operator, RecordError, RestoreError, StateChanges};
use clickpulse_engine::pattern::{Offer, OfferContent};
use futures_util::Stream;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::mpsc;

use crate::{AppError, AppState};

/// How long a delivered offer is kept for a page that subscribes late.
pub const RECENT: Duration = Duration::from_secs(60);
/// Most offers kept for late subscribers, all visitors together; beyond it the oldest go first.
pub const MAX_RECENT_OFFERS: usize = 100_000;
/// How many delivered offer ids the hub remembers in memory for de-duplication.
pub const SEEN_IDS: usize = 100_000;
/// Offers queued for one open stream that does not read them; beyond it that stream misses
/// them (counted as `slow_stream_drops`), nobody else waits.
pub const STREAM_QUEUE: usize = 64;
/// How long, in event time after the newest delivered offer, a delivered id stays persisted.
pub const DEDUP_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// Most delivered ids one web stage task keeps persisted; the oldest are deleted first.
pub const DEDUP_MAX_IDS: usize = 100_000;
/// How long an offer token (the `token` of `GET /api/offers/stream`) is accepted.
pub const STREAM_TOKEN_MAX_AGE: Duration = Duration::from_secs(15 * 60);

/// An offer as the browser receives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveredOffer {
    /// The offer.
    #[serde(flatten)]
    pub offer: Offer,
    /// Picture for the popup, when the server has one for this offer.
    pub image_url: Option<String>,
    /// The headline: the pattern's `[offers.<name>]` title, or a generic one.
    pub title: String,
    /// The text under it (may be empty).
    pub text: String,
    /// The shop page the offer links to (its `product`), if any.
    pub link: Option<String>,
}

/// The headline of an offer whose pattern does not declare what to show.
pub const DEFAULT_TITLE: &str = "A special offer just for you";

type Subscriber = (u64, mpsc::Sender<Arc<DeliveredOffer>>);

#[derive(Default)]
struct HubState {
    /// Each visitor's offers of the last [`RECENT`], oldest first.
    recent: HashMap<Arc<str>, VecDeque<(Instant, Arc<DeliveredOffer>)>>,
    /// One entry per offer in `recent`, in delivery order (so in time order): what expires next
    /// is at the front.
    recent_order: VecDeque<(Instant, Arc<str>)>,
    /// The open streams of each visitor.
    subscribers: HashMap<Arc<str>, Vec<Subscriber>>,
    subscriber_count: usize,
    next_subscriber: u64,
    seen: HashSet<Arc<str>>,
    seen_order: VecDeque<Arc<str>>,
    /// The newest delivery time (deliveries are ordered by it even if a caller's clock is not).
    last_at: Option<Instant>,
    delivered: u64,
    duplicates: u64,
    slow_stream_drops: u64,
    /// Entries of the hub's structures touched: a measure of the work per offer.
    work: u64,
}

impl HubState {
    /// Records `offer_id` as seen (forgetting the oldest beyond [`SEEN_IDS`]); `false` if it was.
    fn mark_seen(&mut self, offer_id: &str) -> bool {
        self.work += 1;
        if self.seen.contains(offer_id) {
            return false;
        }
        let id: Arc<str> = Arc::from(offer_id);
        self.seen.insert(id.clone());
        self.seen_order.push_back(id);
        if self.seen_order.len() > SEEN_IDS
            && let Some(old) = self.seen_order.pop_front()
        {
            self.work += 1;
            self.seen.remove(&old);
        }
        true
    }

    /// Drops recent offers older than [`RECENT`] at `now`, and the oldest beyond
    /// [`MAX_RECENT_OFFERS`]: each from the front of `recent_order`, so each offer once.
    fn expire(&mut self, now: Instant) {
        while let Some((at, visitor)) = self.recent_order.front() {
            let stale = now.duration_since(*at) >= RECENT;
            if !stale && self.recent_order.len() <= MAX_RECENT_OFFERS {
                break;
            }
            self.work += 1;
            let visitor = visitor.clone();
            self.recent_order.pop_front();
            // The globally oldest offer is its visitor's oldest too.
            if let Some(queue) = self.recent.get_mut(&visitor) {
                queue.pop_front();
                if queue.is_empty() {
                    self.recent.remove(&visitor);
                }
            }
        }
    }
}

/// Maps an offer name to its popup picture's URL.
type ImageFor = dyn Fn(&str) -> Option<String> + Send + Sync;
type ContentFor = dyn Fn(&Offer) -> Option<OfferContent> + Send + Sync;
type OnDelivery = dyn Fn(&Offer) + Send + Sync;

/// Fans offers out to subscribed browsers, once per `offer_id`.
#[derive(Clone)]
pub struct OfferHub {
    state: Arc<Mutex<HubState>>,
    image_for: Arc<ImageFor>,
    content_for: Arc<ContentFor>,
    on_delivery: Option<Arc<OnDelivery>>,
}

/// What an offer shows, from the active patterns: the `[offers.<name>]` of the pattern that
/// gave it (as it is now: a pattern changed since shows its new words).
pub fn content_from(
    registry: clickpulse_engine::pattern::PatternRegistry,
) -> impl Fn(&Offer) -> Option<OfferContent> + Send + Sync + 'static {
    move |offer| {
        registry
            .current()
            .get(&offer.pattern)
            .and_then(|p| p.offers.get(&offer.offer).cloned())
    }
}

/// One open offer stream: the visitor's recent offers at subscription, then the live ones.
/// Dropping it unsubscribes.
pub struct Subscription {
    /// The visitor's offers of the last minute when it subscribed, oldest first.
    pub backlog: Vec<Arc<DeliveredOffer>>,
    /// The offers delivered since (bounded: [`STREAM_QUEUE`]).
    pub live: mpsc::Receiver<Arc<DeliveredOffer>>,
    _guard: Unsubscribe,
}

struct Unsubscribe {
    state: Arc<Mutex<HubState>>,
    visitor: Arc<str>,
    id: u64,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        if let Some(list) = s.subscribers.get_mut(&self.visitor) {
            let before = list.len();
            list.retain(|(id, _)| *id != self.id);
            let removed = before - list.len();
            if list.is_empty() {
                s.subscribers.remove(&self.visitor);
            }
            s.subscriber_count -= removed;
        }
    }
}

impl OfferHub {
    /// A hub; `image_for(offer)` gives the popup picture's URL of the shop's own offer of that
    /// name, if any.
    pub fn new(image_for: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        OfferHub {
            state: Arc::new(Mutex::new(HubState::default())),
            image_for: Arc::new(image_for),
            content_for: Arc::new(|_| None),
            on_delivery: None,
        }
    }

    /// The same hub, calling `on_delivery` with every offer it delivers (not the duplicates):
    /// where the latency metrics are taken.
    pub fn with_observer(mut self, on_delivery: impl Fn(&Offer) + Send + Sync + 'static) -> Self {
        self.on_delivery = Some(Arc::new(on_delivery));
        self
    }

    /// The same hub, showing what `content_for(offer)` says (the pattern's `[offers.<name>]`,
    /// see [`content_from`]) in place of the shop's own offer.
    pub fn with_content(
        mut self,
        content_for: impl Fn(&Offer) -> Option<OfferContent> + Send + Sync + 'static,
    ) -> Self {
        self.content_for = Arc::new(content_for);
        self
    }

    /// Marks `offer_id` as delivered earlier (restored from a checkpoint): it is not delivered
    /// again.
    pub fn remember(&self, offer_id: &str) {
        self.state.lock().expect("hub lock").mark_seen(offer_id);
    }

    /// Delivers an offer; returns `false` for a duplicate.
    pub fn deliver(&self, offer: Offer) -> bool {
        self.deliver_at(offer, Instant::now())
    }

    /// [`OfferHub::deliver`] at time `now` (tests inject it).
    #[doc(hidden)]
    pub fn deliver_at(&self, offer: Offer, now: Instant) -> bool {
        // What it shows is worked out outside the lock.
        let content = (self.content_for)(&offer);
        // The product the match earned the offer for (`product_from`) wins over the offer's own.
        let product = |c: &OfferContent| offer.product.clone().or_else(|| c.product.clone());
        let image_url = match &content {
            // The offer's own picture is for its own product: a match's product shows its own.
            Some(c) => match offer.product.as_deref() {
                Some(p) => crate::static_files::product_image(p).or_else(|| c.image.clone()),
                None => c.image.clone().or_else(|| {
                    c.product
                        .as_deref()
                        .and_then(crate::static_files::product_image)
                }),
            },
            None => (self.image_for)(&offer.offer),
        };
        let (title, text, link) = match &content {
            Some(c) => (
                c.title.clone(),
                c.text.clone(),
                // Only ids that need no escaping make a link (catalogue ids are such).
                product(c)
                    .as_ref()
                    .filter(|p| {
                        p.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    })
                    .map(|p| format!("/shop/product/{p}")),
            ),
            None => (DEFAULT_TITLE.to_owned(), String::new(), None),
        };
        let mut s = self.state.lock().expect("hub lock");
        if !s.mark_seen(&offer.offer_id) {
            s.duplicates += 1;
            return false;
        }
        if let Some(observe) = &self.on_delivery {
            observe(&offer);
        }
        let now = s.last_at.map_or(now, |last| last.max(now));
        s.last_at = Some(now);
        let delivered = Arc::new(DeliveredOffer {
            image_url,
            title,
            text,
            link,
            offer,
        });
        let visitor: Arc<str> = match s.recent.get_key_value(delivered.offer.visitor.as_str()) {
            Some((key, _)) => key.clone(),
            None => Arc::from(delivered.offer.visitor.as_str()),
        };
        s.recent
            .entry(visitor.clone())
            .or_default()
            .push_back((now, delivered.clone()));
        s.recent_order.push_back((now, visitor.clone()));
        s.work += 1;
        s.expire(now);
        s.delivered += 1;
        // Only this visitor's streams, each through its own bounded queue.
        let mut dropped = 0;
        if let Some(list) = s.subscribers.get(&visitor) {
            for (_, tx) in list {
                if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(delivered.clone()) {
                    dropped += 1;
                }
            }
        }
        let streams = s.subscribers.get(&visitor).map_or(0, Vec::len) as u64;
        s.work += streams;
        s.slow_stream_drops += dropped;
        true
    }

    /// Opens a stream of `visitor`'s offers: the recent ones and, without a gap, the live ones.
    pub fn subscribe(&self, visitor: &str) -> Subscription {
        let (tx, live) = mpsc::channel(STREAM_QUEUE);
        let mut s = self.state.lock().expect("hub lock");
        let now = s
            .last_at
            .map_or_else(Instant::now, |last| last.max(Instant::now()));
        let backlog = s
            .recent
            .get(visitor)
            .map(|q| {
                q.iter()
                    .filter(|(at, _)| now.duration_since(*at) < RECENT)
                    .map(|(_, o)| o.clone())
                    .collect()
            })
            .unwrap_or_default();
        let visitor: Arc<str> = Arc::from(visitor);
        let id = s.next_subscriber;
        s.next_subscriber += 1;
        s.subscribers
            .entry(visitor.clone())
            .or_default()
            .push((id, tx));
        s.subscriber_count += 1;
        drop(s);
        Subscription {
            backlog,
            live,
            _guard: Unsubscribe {
                state: self.state.clone(),
                visitor,
                id,
            },
        }
    }

    /// The visitor's offers of the last minute, oldest first.
    #[cfg(test)]
    fn recent(&self, visitor: &str) -> Vec<Arc<DeliveredOffer>> {
        self.subscribe(visitor).backlog
    }

    /// Offers delivered, duplicates dropped, browsers subscribed.
    pub fn counters(&self) -> (u64, u64, usize) {
        let s = self.state.lock().expect("hub lock");
        (s.delivered, s.duplicates, s.subscriber_count)
    }

    /// Offers kept for late subscribers, and offers an open stream missed because its queue was
    /// full.
    pub fn load(&self) -> (usize, u64) {
        let s = self.state.lock().expect("hub lock");
        (s.recent_order.len(), s.slow_stream_drops)
    }

    /// How many entries of its structures the hub has touched so far: what a test compares to
    /// the number of offers to show the work per offer is bounded.
    #[doc(hidden)]
    pub fn work(&self) -> u64 {
        self.state.lock().expect("hub lock").work
    }
}

/// Why an offer token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Not a token the server made for this visitor.
    Invalid,
    /// A genuine token, issued more than [`STREAM_TOKEN_MAX_AGE`] ago.
    Expired,
}

/// Signs visitor ids: lasting identity tokens and short-lived offer tokens.
#[derive(Clone)]
pub struct OfferTokens {
    secret: Arc<[u8]>,
    max_age: Duration,
}

/// Seconds since the Unix epoch, now.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl OfferTokens {
    /// Tokens under `secret`, offer tokens accepted for [`STREAM_TOKEN_MAX_AGE`].
    pub fn new(secret: &[u8]) -> Self {
        OfferTokens {
            secret: Arc::from(secret),
            max_age: STREAM_TOKEN_MAX_AGE,
        }
    }

    /// The same tokens with offer tokens accepted for `max_age`.
    pub fn with_max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// How long an offer token is accepted.
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    fn mac(&self, visitor: &str) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes keys of any size");
        mac.update(visitor.as_bytes());
        mac
    }

    /// An offer token's MAC: domain-separated from identity tokens (a visitor id holds no NUL).
    fn stream_mac(&self, visitor: &str, issued: u64) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes keys of any size");
        mac.update(b"offer-stream\0");
        mac.update(visitor.as_bytes());
        mac.update(b"\0");
        mac.update(issued.to_string().as_bytes());
        mac
    }

    /// The lasting identity token of `visitor` (64 hex digits); never put it in a URL.
    pub fn issue(&self, visitor: &str) -> String {
        hex(&self.mac(visitor).finalize().into_bytes())
    }

    /// Whether `token` is `visitor`'s identity token (constant-time).
    pub fn verify_identity(&self, visitor: &str, token: &str) -> bool {
        let Some(bytes) = decode_hex(token) else {
            return false;
        };
        self.mac(visitor).verify_slice(&bytes).is_ok()
    }

    /// Whether `token` is `visitor`'s identity token or one of its unexpired offer tokens.
    pub fn verify(&self, visitor: &str, token: &str) -> bool {
        self.verify_identity(visitor, token) || self.check_stream(visitor, token).is_ok()
    }

    /// A new offer token for `visitor`: `<issue time, Unix seconds>.<HMAC, hex>`.
    pub fn issue_stream(&self, visitor: &str) -> String {
        self.issue_stream_at(visitor, unix_now())
    }

    /// [`OfferTokens::issue_stream`] as of `issued` (Unix seconds).
    pub fn issue_stream_at(&self, visitor: &str, issued: u64) -> String {
        let mac = self.stream_mac(visitor, issued).finalize().into_bytes();
        format!("{issued}.{}", hex(&mac))
    }

    /// Checks an offer token now.
    pub fn check_stream(&self, visitor: &str, token: &str) -> Result<(), TokenError> {
        self.check_stream_at(visitor, token, unix_now())
    }

    /// Checks an offer token as of `now` (Unix seconds): genuine (constant-time MAC check), and
    /// issued at most [`OfferTokens::max_age`] before `now` (and not more than a minute after).
    pub fn check_stream_at(&self, visitor: &str, token: &str, now: u64) -> Result<(), TokenError> {
        let (issued, mac) = token.split_once('.').ok_or(TokenError::Invalid)?;
        let issued_secs: u64 = issued.parse().map_err(|_| TokenError::Invalid)?;
        if issued_secs.to_string() != issued {
            return Err(TokenError::Invalid);
        }
        let bytes = decode_hex(mac).ok_or(TokenError::Invalid)?;
        self.stream_mac(visitor, issued_secs)
            .verify_slice(&bytes)
            .map_err(|_| TokenError::Invalid)?;
        if issued_secs > now.saturating_add(60)
            || now.saturating_sub(issued_secs) > self.max_age.as_secs()
        {
            return Err(TokenError::Expired);
        }
        Ok(())
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

const ADJECTIVES: [&str; 48] = [
    "amber", "brave", "calm", "clever", "cosmic", "crimson", "dapper", "eager", "fancy", "gentle",
    "golden", "happy", "jolly", "keen", "lively", "lucky", "mellow", "merry", "mighty", "nimble",
    "noble", "olive", "plucky", "proud", "quick", "quiet", "rapid", "royal", "rustic", "silver",
    "sleek", "smart", "snowy", "solar", "sunny", "swift", "tidy", "vivid", "warm", "wild", "witty",
    "zesty", "azure", "bold", "breezy", "cheery", "dreamy", "frosty",
];
const NOUNS: [&str; 48] = [
    "falcon", "river", "maple", "otter", "comet", "harbor", "meadow", "panda", "pebble", "canyon",
    "cedar", "dolphin", "ember", "fjord", "garden", "heron", "island", "jaguar", "kettle",
    "lagoon", "lantern", "marble", "nectar", "orchid", "parrot", "quartz", "raven", "saddle",
    "tiger", "tulip", "valley", "walrus", "willow", "yak", "zephyr", "badger", "beacon", "bison",
    "cactus", "dune", "eagle", "forest", "glacier", "hazel", "iris", "juniper", "koala", "lynx",
];

/// A new readable visitor id: adjective-adjective-noun-NN.
pub fn readable_visitor_id() -> String {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).expect("the OS provides randomness");
    let pick = |i: usize| usize::from(b[i]);
    let (a1, a2) = (
        ADJECTIVES[pick(0) % 48],
        ADJECTIVES[(pick(1) + 1 + pick(0)) % 48],
    );
    let a2 = if a2 == a1 {
        ADJECTIVES[(pick(1) + 7) % 48]
    } else {
        a2
    };
    format!("{a1}-{a2}-{}-{:02}", NOUNS[pick(2) % 48], pick(3) % 100)
}

#[derive(Deserialize)]
struct Renewal {
    visitor: String,
    identity_token: String,
}

/// `POST /api/identity`: with no body, a new visitor; with `{"visitor", "identity_token"}`, a
/// fresh offer token for that visitor. Either way `{"visitor", "token", "identity_token",
/// "token_expires_in_s"}`, not to be cached.
pub(crate) async fn identity(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Response, AppError> {
    let Some(web) = &state.web else {
        return Err(AppError::NotFound(
            "offer delivery does not run in this process".to_owned(),
        ));
    };
    let visitor = if body.iter().all(u8::is_ascii_whitespace) {
        readable_visitor_id()
    } else {
        let renewal: Renewal = serde_json::from_slice(&body).map_err(|e| {
            AppError::BadRequest(format!(
                "expected no body (a new visitor) or {{\"visitor\", \"identity_token\"}}: {e}"
            ))
        })?;
        if !web
            .tokens
            .verify_identity(&renewal.visitor, &renewal.identity_token)
        {
            return Err(AppError::InvalidToken(
                "the identity token is not this visitor's: create a new visitor with an empty \
                 POST /api/identity"
                    .to_owned(),
            ));
        }
        renewal.visitor
    };
    let mut response = Json(json!({
        "visitor": visitor,
        "token": web.tokens.issue_stream(&visitor),
        "identity_token": web.tokens.issue(&visitor),
        "token_expires_in_s": web.tokens.max_age().as_secs(),
    }))
    .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// What offer delivery needs.
#[derive(Clone)]
pub struct WebDelivery {
    /// Where the web stage puts offers.
    pub hub: OfferHub,
    /// Signs and checks visitor tokens.
    pub tokens: OfferTokens,
}

#[derive(Deserialize)]
pub(crate) struct StreamQuery {
    visitor: String,
    token: String,
}

pub(crate) async fn stream(
    State(state): State<AppState>,
    Query(q): Query<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, AppError> {
    let Some(web) = state.web.clone() else {
        return Err(AppError::NotFound(
            "offer delivery does not run in this process".to_owned(),
        ));
    };
    match web.tokens.check_stream(&q.visitor, &q.token) {
        Ok(()) => {}
        Err(TokenError::Expired) => {
            return Err(AppError::InvalidToken(
                "the offer token has expired: get a new one with POST /api/identity \
                 {\"visitor\", \"identity_token\"}"
                    .to_owned(),
            ));
        }
        Err(TokenError::Invalid) => {
            return Err(AppError::InvalidToken(
                "the offer token is not this visitor's: get one with POST /api/identity".to_owned(),
            ));
        }
    }
    // Subscribing returns the recent offers and the live ones with nothing in between.
    let subscription = web.hub.subscribe(&q.visitor);
    let mut subscription = subscription;
    let backlog: VecDeque<Arc<DeliveredOffer>> = std::mem::take(&mut subscription.backlog).into();
    let sent: HashSet<String> = HashSet::new();
    let events = futures_util::stream::unfold(
        (subscription, backlog, sent),
        |(mut subscription, mut backlog, mut sent)| async move {
            loop {
                let next = match backlog.pop_front() {
                    Some(o) => o,
                    None => subscription.live.recv().await?,
                };
                if !sent.insert(next.offer.offer_id.clone()) {
                    continue;
                }
                let data = serde_json::to_string(&*next).expect("offer serializes");
                let event = Event::default()
                    .event("offer")
                    .id(next.offer.offer_id.clone())
                    .data(data);
                return Some((Ok(event), (subscription, backlog, sent)));
            }
        },
    );
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// The web stage: `special-offers` → subscribed browsers.
pub struct WebOperator {
    hub: OfferHub,
    /// Offers delivered since the last checkpoint: persisted, so a restarted web stage that
    /// reads them again never shows them twice.
    newly_delivered: Vec<(String, i64)>,
    /// The ids this stage persisted, with their event times, in delivery order (restored ones
    /// sorted by time before the first pruning).
    ledger: VecDeque<(i64, String)>,
    ledger_sorted: bool,
    /// The newest event time delivered.
    newest_ts: i64,
    /// Ids past the de-duplication window, to delete at the next checkpoint.
    expired: Vec<String>,
    retention_ms: i64,
    max_ids: usize,
}

impl WebOperator {
    /// A stage delivering to `hub`, keeping delivered ids for [`DEDUP_RETENTION`] and at most
    /// [`DEDUP_MAX_IDS`] of them.
    pub fn new(hub: OfferHub) -> Self {
        Self::with_window(hub, DEDUP_RETENTION, DEDUP_MAX_IDS)
    }

    /// A stage keeping delivered ids for `retention` of event time and at most `max_ids`.
    pub fn with_window(hub: OfferHub, retention: Duration, max_ids: usize) -> Self {
        WebOperator {
            hub,
            newly_delivered: Vec::new(),
            ledger: VecDeque::new(),
            ledger_sorted: true,
            newest_ts: i64::MIN,
            expired: Vec::new(),
            retention_ms: i64::try_from(retention.as_millis()).unwrap_or(i64::MAX),
            max_ids: max_ids.max(1),
        }
    }

    /// Moves the ids past the window from the ledger to `expired`.
    fn prune(&mut self) {
        if !self.ledger_sorted {
            self.ledger.make_contiguous().sort_unstable();
            self.ledger_sorted = true;
        }
        let horizon = self.newest_ts.saturating_sub(self.retention_ms);
        while let Some((ts, _)) = self.ledger.front() {
            if self.ledger.len() <= self.max_ids && *ts >= horizon {
                break;
            }
            if let Some((_, id)) = self.ledger.pop_front() {
                self.expired.push(id);
            }
        }
    }
}

impl WebOperator {
    /// Delivers `offer` unless its id was delivered before.
    pub fn take(&mut self, offer: Offer) {
        let (id, ts) = (offer.offer_id.clone(), offer.ts_ms);
        if self.hub.deliver(offer) {
            self.newly_delivered.push((id.clone(), ts));
            self.ledger.push_back((ts, id));
            self.newest_ts = self.newest_ts.max(ts);
            self.prune();
        }
    }
}

/// State key prefix of a delivered offer id.
pub const DELIVERED_PREFIX: &str = "delivered/";

impl Operator for WebOperator {
    fn name(&self) -> &'static str {
        "web"
    }

    fn input_topics(&self) -> Vec<clickpulse_engine::topics::Topic> {
        vec![clickpulse_engine::topics::Topic::SpecialOffers]
    }

    fn process_record(&mut self, value: &[u8], _ctx: &mut Context<'_>) -> Result<(), RecordError> {
        let offer: Offer = clickpulse_engine::codec::decode(value)?;
        self.take(offer);
        Ok(())
    }

    fn checkpoint(&mut self, changes: &mut StateChanges) {
        self.prune();
        for (id, ts) in self.newly_delivered.drain(..) {
            changes.push((
                format!("{DELIVERED_PREFIX}{id}"),
                Some(ts.to_string().into_bytes()),
            ));
        }
        // After the puts: an id delivered and expired since the last checkpoint ends deleted.
        for id in self.expired.drain(..) {
            changes.push((format!("{DELIVERED_PREFIX}{id}"), None));
        }
    }

    fn restore(&mut self, key: &str, value: &[u8]) -> Result<(), RestoreError> {
        if let Some(id) = key.strip_prefix(DELIVERED_PREFIX) {
            self.hub.remember(id);
            // Ids written before their time was stored count as the oldest.
            let ts = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(i64::MIN);
            self.newest_ts = self.newest_ts.max(ts);
            self.ledger.push_back((ts, id.to_owned()));
            self.ledger_sorted = false;
        }
        Ok(())
    }

    fn stats(&self) -> Value {
        let (delivered, duplicates, subscribers) = self.hub.counters();
        let (recent, slow_stream_drops) = self.hub.load();
        json!({
            "delivered": delivered,
            "duplicates": duplicates,
            "subscribers": subscribers,
            "recent_offers": recent,
            "slow_stream_drops": slow_stream_drops,
            "dedup_ids": self.ledger.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(id: &str, visitor: &str) -> Offer {
        Offer {
            offer_id: id.to_owned(),
            visitor: visitor.to_owned(),
            pattern: "p".to_owned(),
            pattern_version: "1".to_owned(),
            offer: "offer1".to_owned(),
            ts_ms: 1,
            product: None,
        }
    }

    #[test]
    fn tokens_verify_only_for_their_visitor() {
        let tokens = OfferTokens::new(b"secret");
        let t = tokens.issue("amber-falcon-river-42");
        assert_eq!(t.len(), 64);
        assert!(tokens.verify_identity("amber-falcon-river-42", &t));
        assert!(tokens.verify("amber-falcon-river-42", &t));
        assert!(!tokens.verify("amber-falcon-river-43", &t));
        assert!(!tokens.verify("amber-falcon-river-42", "zz"));
        assert!(!OfferTokens::new(b"other").verify("amber-falcon-river-42", &t));
        // An identity token is no offer token, and the reverse.
        assert_eq!(
            tokens.check_stream("amber-falcon-river-42", &t),
            Err(TokenError::Invalid)
        );
        let s = tokens.issue_stream("amber-falcon-river-42");
        assert!(!tokens.verify_identity("amber-falcon-river-42", &s));
        assert!(tokens.verify("amber-falcon-river-42", &s));
        assert_eq!(tokens.check_stream("amber-falcon-river-42", &s), Ok(()));
        assert_eq!(
            tokens.check_stream("amber-falcon-river-43", &s),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn offer_tokens_expire_after_their_max_age() {
        let tokens = OfferTokens::new(b"secret");
        let max = STREAM_TOKEN_MAX_AGE.as_secs();
        let issued = 1_800_000_000;
        let t = tokens.issue_stream_at("v", issued);
        assert_eq!(tokens.check_stream_at("v", &t, issued), Ok(()));
        assert_eq!(tokens.check_stream_at("v", &t, issued + max), Ok(()));
        assert_eq!(
            tokens.check_stream_at("v", &t, issued + max + 1),
            Err(TokenError::Expired)
        );
        // Issued in the future (beyond a minute of clock skew): refused as well.
        assert_eq!(
            tokens.check_stream_at("v", &t, issued - 61),
            Err(TokenError::Expired)
        );
        // The issue time is signed: moving it forward breaks the MAC.
        let (_, mac) = t.split_once('.').unwrap();
        let forged = format!("{}.{mac}", issued + max);
        assert_eq!(
            tokens.check_stream_at("v", &forged, issued + max + 1),
            Err(TokenError::Invalid)
        );
        let padded = format!("0{t}");
        assert_eq!(
            tokens.check_stream_at("v", &padded, issued),
            Err(TokenError::Invalid)
        );
        // An expired offer token is no credential for clicks either.
        assert!(!tokens.verify("v", &t));
        let short = OfferTokens::new(b"secret").with_max_age(Duration::from_secs(5));
        assert_eq!(
            short.check_stream_at("v", &t, issued + 6),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn hub_drops_duplicates_and_keeps_recent_offers_per_visitor() {
        let hub =
            OfferHub::new(|o| (o == "offer1").then(|| "/images/offers/offer1.png".to_owned()));
        assert!(hub.deliver(offer("a", "v1")));
        assert!(!hub.deliver(offer("a", "v1")), "same offer_id again");
        assert!(hub.deliver(offer("b", "v2")));
        let recent = hub.recent("v1");
        assert_eq!(recent.len(), 1);
        assert_eq!(
            recent[0].image_url.as_deref(),
            Some("/images/offers/offer1.png")
        );
        assert_eq!(hub.counters(), (2, 1, 0));
    }

    /// A pattern's `[offers.<name>]` is what the popup shows: its title, text, picture (or its
    /// product's) and a link to the product; an undeclared offer shows the shop's own.
    #[test]
    fn delivered_offers_show_what_the_pattern_declares() {
        let hub =
            OfferHub::new(|o| (o == "offer1").then(|| "/images/offers/offer1.png".to_owned()))
                .with_content(|o: &Offer| {
                    (o.offer_id != "plain").then(|| OfferContent {
                        title: "Free shipping".into(),
                        text: "Today only.".into(),
                        image: None,
                        product: Some("VD55137665".into()),
                    })
                });
        assert!(hub.deliver(offer("declared", "v1")));
        assert!(hub.deliver(offer("plain", "v2")));
        let declared = &hub.recent("v1")[0];
        assert_eq!(
            (declared.title.as_str(), declared.text.as_str()),
            ("Free shipping", "Today only.")
        );
        assert_eq!(declared.link.as_deref(), Some("/shop/product/VD55137665"));
        assert_eq!(
            declared.image_url.as_deref(),
            Some("/images/products/VD55137665.png"),
            "the product's picture stands in"
        );
        let plain = &hub.recent("v2")[0];
        assert_eq!(plain.title, DEFAULT_TITLE);
        assert_eq!(plain.link, None);
        assert_eq!(
            plain.image_url.as_deref(),
            Some("/images/offers/offer1.png")
        );
    }

    /// An offer for the product a match recorded (`product_from`, the browse-abandonment
    /// pattern's) shows and links that product, not the offer's own.
    #[test]
    fn an_offer_for_a_product_shows_and_links_that_product() {
        let hub = OfferHub::new(|_| None).with_content(|_: &Offer| {
            Some(OfferContent {
                title: "15% off".into(),
                text: String::new(),
                image: Some("/images/offers/offer1.png".into()),
                product: Some("VD55137665".into()),
            })
        });
        let mut o = offer("browse", "v1");
        o.product = Some("VD55129406".into());
        assert!(hub.deliver(o));
        let shown = &hub.recent("v1")[0];
        assert_eq!(shown.link.as_deref(), Some("/shop/product/VD55129406"));
        assert_eq!(
            shown.image_url.as_deref(),
            Some("/images/products/VD55129406.png")
        );
    }

    #[test]
    fn recent_offers_expire_after_a_minute_and_are_bounded() {
        let hub = OfferHub::new(|_| None);
        let t0 = Instant::now();
        assert!(hub.deliver_at(offer("a", "v1"), t0));
        assert!(hub.deliver_at(offer("b", "v2"), t0 + RECENT / 2));
        assert_eq!(hub.load().0, 2);
        // A minute after the first, it is gone; the second stays.
        assert!(hub.deliver_at(offer("c", "v3"), t0 + RECENT));
        assert_eq!(hub.load().0, 2);
        assert!(hub.recent("v1").is_empty());
        // Never more than MAX_RECENT_OFFERS, however fast they come.
        for i in 0..MAX_RECENT_OFFERS + 10 {
            hub.deliver_at(offer(&format!("f{i}"), &format!("fresh{i}")), t0 + RECENT);
        }
        assert_eq!(hub.load().0, MAX_RECENT_OFFERS);
        // The seen ids are bounded too.
        assert!(hub.state.lock().unwrap().seen.len() <= SEEN_IDS);
    }

    #[test]
    fn the_work_per_offer_does_not_grow_with_the_visitors_with_recent_offers() {
        let hub = OfferHub::new(|_| None);
        let t0 = Instant::now();
        // Streams of other visitors are not touched by an offer for someone else.
        let others: Vec<Subscription> = (0..1_000)
            .map(|i| hub.subscribe(&format!("other{i}")))
            .collect();
        let real = hub.subscribe("real");
        let cost = |hub: &OfferHub, id: &str, visitor: &str| {
            let before = hub.work();
            assert!(hub.deliver_at(offer(id, visitor), t0));
            hub.work() - before
        };
        let few: Vec<u64> = (0..10)
            .map(|i| cost(&hub, &format!("a{i}"), &format!("fresh-a{i}")))
            .collect();
        let real_few = cost(&hub, "r1", "real");
        // A flood: 90,000 fresh visitors with an offer in the last minute.
        for i in 0..90_000 {
            hub.deliver_at(offer(&format!("f{i}"), &format!("flood{i}")), t0);
        }
        let many: Vec<u64> = (0..10)
            .map(|i| cost(&hub, &format!("b{i}"), &format!("fresh-b{i}")))
            .collect();
        let real_many = cost(&hub, "r2", "real");
        assert_eq!(
            few, many,
            "per-offer work with 10 vs 90,000 recent visitors"
        );
        assert_eq!(real_few, real_many);
        // Constant: the duplicate check, the recent entry, the visitor's one stream.
        assert!(many.iter().all(|&w| w <= 2), "{many:?}");
        assert!(real_many <= 3, "{real_many}");
        // Expiring the flood a minute later costs one step per expired offer (amortized O(1)):
        // the total never exceeds a few steps per offer delivered.
        let delivered = hub.counters().0;
        cost(&hub, "late", "someone");
        let total = hub.work();
        assert!(
            total <= 4 * delivered + 10,
            "{total} steps for {delivered} offers"
        );
        let after = cost(&hub, "late2", "someone");
        assert!(after <= 2, "{after}");
        drop(others);
        drop(real);
        assert_eq!(hub.counters().2, 0, "dropped subscriptions unsubscribe");
    }

    #[test]
    fn a_stream_gets_its_visitors_offers_only_in_a_bounded_queue() {
        let hub = OfferHub::new(|_| None);
        let t0 = Instant::now();
        hub.deliver_at(offer("early", "real"), t0);
        let mut real = hub.subscribe("real");
        assert_eq!(real.backlog.len(), 1, "the offer of a moment ago");
        for i in 0..10_000 {
            hub.deliver_at(offer(&format!("f{i}"), &format!("flood{i}")), t0);
        }
        hub.deliver_at(offer("mine", "real"), t0);
        let got = real.live.try_recv().unwrap();
        assert_eq!(got.offer.offer_id, "mine");
        assert!(real.live.try_recv().is_err(), "nothing of other visitors");
        // A stream that never reads misses offers beyond its queue; nobody waits for it.
        for i in 0..STREAM_QUEUE + 5 {
            hub.deliver_at(offer(&format!("m{i}"), "real"), t0);
        }
        assert_eq!(hub.load().1, 5);
    }

    #[test]
    fn delivered_ids_are_pruned_from_the_checkpoint_after_the_window() {
        let hub = OfferHub::new(|_| None);
        let mut web = WebOperator::with_window(hub, Duration::from_secs(3600), 3);
        let at = |id: &str, ts: i64| Offer {
            ts_ms: ts,
            ..offer(id, "v")
        };
        web.take(at("a", 0));
        web.take(at("b", 1_000));
        let mut changes = StateChanges::new();
        web.checkpoint(&mut changes);
        assert_eq!(
            changes,
            vec![
                ("delivered/a".to_owned(), Some(b"0".to_vec())),
                ("delivered/b".to_owned(), Some(b"1000".to_vec())),
            ]
        );
        // Over an hour of event time later, `a` leaves the window (b is 1 s younger and stays).
        web.take(at("c", 3_600_001));
        let mut changes = StateChanges::new();
        web.checkpoint(&mut changes);
        assert_eq!(
            changes,
            vec![
                ("delivered/c".to_owned(), Some(b"3600001".to_vec())),
                ("delivered/a".to_owned(), None),
            ]
        );
        // At most 3 ids: the oldest go first.
        web.take(at("d", 3_600_002));
        web.take(at("e", 3_600_003));
        let mut changes = StateChanges::new();
        web.checkpoint(&mut changes);
        let deleted: Vec<&str> = changes
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(deleted, ["delivered/b"]);

        // A restored stage (keys come in key order, not time order) prunes the same way, and
        // still drops the duplicates it remembers.
        let hub = OfferHub::new(|_| None);
        let mut web = WebOperator::with_window(hub.clone(), Duration::from_secs(3600), 2);
        for (key, ts) in [
            ("delivered/x", "10"),
            ("delivered/y", "5"),
            ("delivered/z", "7"),
        ] {
            web.restore(key, ts.as_bytes()).unwrap();
        }
        web.take(at("x", 10));
        assert_eq!(hub.counters(), (0, 1, 0), "x is a duplicate");
        let mut changes = StateChanges::new();
        web.checkpoint(&mut changes);
        assert_eq!(changes, vec![("delivered/y".to_owned(), None)]);
    }

    #[test]
    fn readable_ids_look_like_three_words_and_a_number() {
        let id = readable_visitor_id();
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(parts.len(), 4, "{id}");
        assert!(parts[3].parse::<u32>().is_ok());
        assert_ne!(parts[0], parts[1]);
    }
}
