//! Delivering offers to the browser of the visitor they are for.
//!
//! - `POST /api/identity` issues a new readable visitor id (`amber-falcon-river-42`) with its
//!   **offer token**, an HMAC-SHA256 of the id under the server's secret. Only the server can
//!   make a token, and it makes one only for an id it just generated, so nobody can subscribe to
//!   another visitor's offers.
//! - The web stage ([`WebOperator`]) consumes `special-offers` and hands each offer to the
//!   [`OfferHub`], which drops duplicates by `offer_id` (reprocessing after a crash re-emits the
//!   same ids) and keeps each visitor's recent offers for a minute, so a page that subscribes a
//!   moment after the click still gets its popup.
//! - `GET /api/offers/stream?visitor=&token=` streams that visitor's offers as Server-Sent
//!   Events (`event: offer`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use clickpulse_engine::operator::{Emitter, Operator, RestoreError, StateChanges};
use clickpulse_engine::pattern::Offer;
use clickpulse_engine::topics;
use futures_util::Stream;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::broadcast;

use crate::{AppError, AppState};

/// How long a delivered offer is kept for a page that subscribes late.
const RECENT: Duration = Duration::from_secs(60);
/// How many delivered offer ids are remembered for de-duplication.
const SEEN_IDS: usize = 100_000;

/// An offer as the browser receives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveredOffer {
    /// The offer.
    #[serde(flatten)]
    pub offer: Offer,
    /// Picture for the popup, when the server has one for this offer.
    pub image_url: Option<String>,
}

#[derive(Default)]
struct HubState {
    recent: HashMap<String, VecDeque<(Instant, Arc<DeliveredOffer>)>>,
    seen: HashSet<String>,
    seen_order: VecDeque<String>,
    delivered: u64,
    duplicates: u64,
}

/// Maps an offer name to its popup picture's URL.
type ImageFor = dyn Fn(&str) -> Option<String> + Send + Sync;

/// Records `offer_id` as seen (forgetting the oldest beyond [`SEEN_IDS`]); `false` if it was.
fn mark_seen(s: &mut HubState, offer_id: &str) -> bool {
    if !s.seen.insert(offer_id.to_owned()) {
        return false;
    }
    s.seen_order.push_back(offer_id.to_owned());
    if s.seen_order.len() > SEEN_IDS
        && let Some(old) = s.seen_order.pop_front()
    {
        s.seen.remove(&old);
    }
    true
}

/// Fans offers out to subscribed browsers, once per `offer_id`.
#[derive(Clone)]
pub struct OfferHub {
    state: Arc<Mutex<HubState>>,
    live: broadcast::Sender<Arc<DeliveredOffer>>,
    image_for: Arc<ImageFor>,
}

impl OfferHub {
    /// A hub; `image_for(offer)` gives the popup picture's URL, if any.
    pub fn new(image_for: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        OfferHub {
            state: Arc::new(Mutex::new(HubState::default())),
            live: broadcast::channel(1024).0,
            image_for: Arc::new(image_for),
        }
    }

    /// Marks `offer_id` as delivered earlier (restored from a checkpoint): it is not delivered
    /// again.
    pub fn remember(&self, offer_id: &str) {
        mark_seen(&mut self.state.lock().expect("hub lock"), offer_id);
    }

    /// Delivers an offer; returns `false` for a duplicate.
    pub fn deliver(&self, offer: Offer) -> bool {
        let mut s = self.state.lock().expect("hub lock");
        if !mark_seen(&mut s, &offer.offer_id) {
            s.duplicates += 1;
            return false;
        }
        let delivered = Arc::new(DeliveredOffer {
            image_url: (self.image_for)(&offer.offer),
            offer,
        });
        let now = Instant::now();
        let mine = s.recent.entry(delivered.offer.visitor.clone()).or_default();
        mine.retain(|(at, _)| now.duration_since(*at) < RECENT);
        mine.push_back((now, delivered.clone()));
        s.recent.retain(|_, q| {
            q.back()
                .is_some_and(|(at, _)| now.duration_since(*at) < RECENT)
        });
        s.delivered += 1;
        drop(s);
        // No subscriber is fine: the offer waits in `recent`.
        let _ = self.live.send(delivered);
        true
    }

    /// The visitor's offers of the last minute, oldest first.
    fn recent(&self, visitor: &str) -> Vec<Arc<DeliveredOffer>> {
        let s = self.state.lock().expect("hub lock");
        let now = Instant::now();
        s.recent
            .get(visitor)
            .map(|q| {
                q.iter()
                    .filter(|(at, _)| now.duration_since(*at) < RECENT)
                    .map(|(_, o)| o.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Offers delivered, duplicates dropped, browsers subscribed.
    pub fn counters(&self) -> (u64, u64, usize) {
        let s = self.state.lock().expect("hub lock");
        (s.delivered, s.duplicates, self.live.receiver_count())
    }
}

/// Signs visitor ids.
#[derive(Clone)]
pub struct OfferTokens {
    secret: Arc<[u8]>,
}

impl OfferTokens {
    /// Tokens under `secret`.
    pub fn new(secret: &[u8]) -> Self {
        OfferTokens {
            secret: Arc::from(secret),
        }
    }

    fn mac(&self, visitor: &str) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes keys of any size");
        mac.update(visitor.as_bytes());
        mac
    }

    /// The token for `visitor`.
    pub fn issue(&self, visitor: &str) -> String {
        self.mac(visitor)
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Whether `token` is `visitor`'s (constant-time).
    pub fn verify(&self, visitor: &str, token: &str) -> bool {
        let Some(bytes) = decode_hex(token) else {
            return false;
        };
        self.mac(visitor).verify_slice(&bytes).is_ok()
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

pub(crate) async fn identity(State(state): State<AppState>) -> Result<Json<Value>, AppError> {
    let Some(web) = &state.web else {
        return Err(AppError::NotFound(
            "offer delivery does not run in this process".to_owned(),
        ));
    };
    let visitor = readable_visitor_id();
    let token = web.tokens.issue(&visitor);
    Ok(Json(json!({"visitor": visitor, "token": token})))
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
    if !web.tokens.verify(&q.visitor, &q.token) {
        return Err(AppError::Unauthorized);
    }
    // Subscribe before reading the recent offers, so nothing falls in between.
    let live = web.hub.live.subscribe();
    let backlog: VecDeque<Arc<DeliveredOffer>> = web.hub.recent(&q.visitor).into();
    let sent: HashSet<String> = HashSet::new();
    let events = futures_util::stream::unfold(
        (live, backlog, sent, q.visitor),
        |(mut live, mut backlog, mut sent, visitor)| async move {
            loop {
                let next = match backlog.pop_front() {
                    Some(o) => o,
                    None => match live.recv().await {
                        Ok(o) if o.offer.visitor == visitor => o,
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    },
                };
                if !sent.insert(next.offer.offer_id.clone()) {
                    continue;
                }
                let data = serde_json::to_string(&*next).expect("offer serializes");
                let event = Event::default()
                    .event("offer")
                    .id(next.offer.offer_id.clone())
                    .data(data);
                return Some((Ok(event), (live, backlog, sent, visitor)));
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
}

impl WebOperator {
    /// A stage delivering to `hub`.
    pub fn new(hub: OfferHub) -> Self {
        WebOperator {
            hub,
            newly_delivered: Vec::new(),
        }
    }
}

/// State key prefix of a delivered offer id.
pub const DELIVERED_PREFIX: &str = "delivered/";

impl Operator for WebOperator {
    type Input = Offer;

    fn name(&self) -> &'static str {
        "web"
    }

    fn input_topic(&self) -> &'static str {
        topics::SPECIAL_OFFERS
    }

    fn process(&mut self, input: Offer, _out: &mut Emitter) {
        let (id, ts) = (input.offer_id.clone(), input.ts_ms);
        if self.hub.deliver(input) {
            self.newly_delivered.push((id, ts));
        }
    }

    fn checkpoint(&mut self, changes: &mut StateChanges) {
        for (id, ts) in self.newly_delivered.drain(..) {
            changes.push((
                format!("{DELIVERED_PREFIX}{id}"),
                Some(ts.to_string().into_bytes()),
            ));
        }
    }

    fn restore(&mut self, key: &str, _value: &[u8]) -> Result<(), RestoreError> {
        if let Some(id) = key.strip_prefix(DELIVERED_PREFIX) {
            self.hub.remember(id);
        }
        Ok(())
    }

    fn stats(&self) -> Value {
        let (delivered, duplicates, subscribers) = self.hub.counters();
        json!({"delivered": delivered, "duplicates": duplicates, "subscribers": subscribers})
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
        }
    }

    #[test]
    fn tokens_verify_only_for_their_visitor() {
        let tokens = OfferTokens::new(b"secret");
        let t = tokens.issue("amber-falcon-river-42");
        assert_eq!(t.len(), 64);
        assert!(tokens.verify("amber-falcon-river-42", &t));
        assert!(!tokens.verify("amber-falcon-river-43", &t));
        assert!(!tokens.verify("amber-falcon-river-42", "zz"));
        assert!(!OfferTokens::new(b"other").verify("amber-falcon-river-42", &t));
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

    #[test]
    fn readable_ids_look_like_three_words_and_a_number() {
        let id = readable_visitor_id();
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(parts.len(), 4, "{id}");
        assert!(parts[3].parse::<u32>().is_ok());
        assert_ne!(parts[0], parts[1]);
    }
}
