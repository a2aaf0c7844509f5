//! Snowplow's tracker protocol: a shop that already runs a Snowplow tracker points its collector
//! URL at Clickpulse, and its events arrive as if sent by `clickpulse.js`.
//!
//! - `POST /com.snowplowanalytics.snowplow/tp2`: a `payload_data` self-describing JSON whose
//!   `data` is a batch of events (what the JavaScript, Node and Python trackers send with the
//!   POST method), with any `Content-Type`.
//! - `GET /i`: one event in the query string (the GET method's pixel); the answer is a 1×1 GIF
//!   that no cache keeps.
//! - `OPTIONS` on both: CORS as the Snowplow collector answers it, with credentials, for the
//!   origins the collector accepts (this site's own and `--cors-origin`).
//!
//! What is mapped onto the event model, what is ignored and counted, and how visitors are
//! identified is in `docs/sources/snowplow.md`. Answers: `200 ok` once the batch's events are
//! durable (events that cannot be mapped go to `dead-letters` with their reason and do not
//! fail the batch); `400` for a body the tracker should not send again (not a payload, no
//! event could be taken); `403` for a page on an origin that may not send; `429` and `503`
//! with `Retry-After` for back-pressure. Bad input never gets a 5xx.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use clickpulse_engine::event::EventDetail;
use serde_json::{Map, Value};

use clickpulse_engine::snowplow::{self, SelfDescribing, context_entities, map_event};

use super::values::{TrackedClick, Who, just, namespaced, verified_visitor};
use super::{Identity, Mapped, ParsedEvents, Sender, admit, batch_len};
use crate::{AppError, AppState};

/// The POST endpoint's path (the trackers' default `postPath`).
pub const TP2_PATH: &str = "/com.snowplowanalytics.snowplow/tp2";
/// The GET endpoint's path.
pub const PIXEL_PATH: &str = "/i";
/// The source name of the Snowplow endpoints' dead letters.
pub const DEAD_LETTER_SOURCE: &str = "snowplow";
/// The self-describing context a page attaches to name a Clickpulse visitor: `{"visitor",
/// "token"}` as `POST /api/identity` issued them. Its events then reach that visitor's offers.
pub const IDENTITY_SCHEMA: &str = "iglu:io.clickpulse/identity/jsonschema/1-0-0";

/// The smallest transparent GIF: what `GET /i` answers, as Snowplow's collector does.
const PIXEL: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0xf0, 0x00, 0x00, 0xff, 0xff, 0xff,
    0x00, 0x00, 0x00, 0x21, 0xf9, 0x04, 0x05, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// One event of the tracker protocol: its fields, as sent.
type Fields<'a> = BTreeMap<Cow<'a, str>, Cow<'a, str>>;

/// Reads a `tp2` POST body: a `payload_data` self-describing JSON of 1 to
/// [`MAX_BATCH`](super::MAX_BATCH) events. `Err`: the whole body is refused (400).
pub fn parse_post(
    bytes: &[u8],
    ts_ms: i64,
    sender: &Sender<'_>,
    identity: Option<&Identity>,
) -> Result<ParsedEvents, String> {
    parse_post_with_query(bytes, "", ts_ms, sender, identity)
}

/// [`parse_post`] for a request with a query string: its fields are merged into every event
/// and win over the event's own (as Snowplow's enrich does).
pub fn parse_post_with_query(
    bytes: &[u8],
    query: &str,
    ts_ms: i64,
    sender: &Sender<'_>,
    identity: Option<&Identity>,
) -> Result<ParsedEvents, String> {
    let merged: Fields<'_> = form_urlencoded::parse(query.as_bytes()).collect();
    let text = std::str::from_utf8(bytes).map_err(|e| format!("body is not UTF-8: {e}"))?;
    let payload: Value =
        serde_json::from_str(text).map_err(|e| format!("body is not JSON: {e}"))?;
    let schema = payload["schema"].as_str().unwrap_or("");
    if !schema.starts_with("iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-") {
        return Err(format!(
            "expected a payload_data self-describing JSON \
             (iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-*), not schema {:?}",
            schema.chars().take(120).collect::<String>()
        ));
    }
    let Some(events) = payload["data"].as_array() else {
        return Err("payload_data has no `data` array of events".to_owned());
    };
    batch_len(events.len(), "events")?;
    let mut parsed = ParsedEvents::default();
    for (i, event) in events.iter().enumerate() {
        let taken = match event {
            Value::Object(map) => fields_of_json(map).and_then(|mut fields| {
                fields.extend(merged.iter().map(|(k, v)| (k.clone(), v.clone())));
                to_click(&fields, ts_ms, sender, identity)
            }),
            _ => Err("an event is a JSON object of fields".to_owned()),
        };
        parsed.take(i, "event", taken, || event.to_string());
    }
    Ok(parsed)
}

/// Reads a `GET /i` query string: one event.
pub fn parse_query(
    query: &str,
    ts_ms: i64,
    sender: &Sender<'_>,
    identity: Option<&Identity>,
) -> ParsedEvents {
    let fields: Fields<'_> = form_urlencoded::parse(query.as_bytes()).collect();
    let mut parsed = ParsedEvents::default();
    let taken = to_click(&fields, ts_ms, sender, identity);
    parsed.take(0, "event", taken, || query.to_owned());
    parsed
}

/// The fields of one POSTed event. The trackers send every value as a string; a number or a
/// boolean is taken as its text, a `null` as absent.
fn fields_of_json(map: &Map<String, Value>) -> Result<Fields<'_>, String> {
    let mut fields = Fields::new();
    for (key, value) in map {
        let text = match value {
            Value::String(s) => Cow::Borrowed(s.as_str()),
            Value::Number(n) => Cow::Owned(n.to_string()),
            Value::Bool(b) => Cow::Owned(b.to_string()),
            Value::Null => continue,
            Value::Array(_) | Value::Object(_) => {
                return Err(format!("field `{key}` is not a string"));
            }
        };
        fields.insert(Cow::Borrowed(key.as_str()), text);
    }
    Ok(fields)
}

/// A JSON field sent either plainly (`plain`) or base64url-encoded (`encoded`, padding optional).
fn json_field(fields: &Fields<'_>, plain: &str, encoded: &str) -> Result<Option<Value>, String> {
    let text = if let Some(text) = fields.get(plain) {
        text.clone().into_owned()
    } else if let Some(text) = fields.get(encoded) {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text.trim_end_matches('=').as_bytes())
            .map_err(|e| format!("field `{encoded}` is not base64url: {e}"))?;
        String::from_utf8(bytes).map_err(|_| format!("field `{encoded}` is not UTF-8 JSON"))?
    } else {
        return Ok(None);
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| format!("field `{plain}`/`{encoded}` is not JSON: {e}"))
}

/// The event's contexts (`co`/`cx`: a `contexts` self-describing JSON), if it has any.
fn contexts(fields: &Fields<'_>) -> Result<Option<Value>, String> {
    json_field(fields, "co", "cx")
}

/// Which visitor an event is: the Clickpulse identity context's visitor when its token is
/// right; a trusted sender's `uid`; else `sp-` and the tracker's domain user id (its first-party
/// cookie: a namespace of its own, so no tracker can name a Clickpulse visitor); else the
/// anonymous id of the client's day, address and user agent.
fn visitor_of(
    fields: &Fields<'_>,
    entities: &[SelfDescribing<'_>],
    ts_ms: i64,
    sender: &Sender<'_>,
    ip: &str,
    user_agent: &str,
    identity: Option<&Identity>,
) -> Result<Who, String> {
    let given = |key: &str| fields.get(key).map(|v| v.trim()).filter(|v| !v.is_empty());
    if let Some(context) = entities.iter().find(|e| e.is("io.clickpulse", "identity")) {
        return verified_visitor(context.data, "the identity context", identity);
    }
    if sender.trusted
        && let Some(uid) = given("uid")
    {
        return Ok(just(uid.to_owned()));
    }
    if let Some(duid) = given("duid") {
        return namespaced("sp-", "duid", duid, b"").map(just);
    }
    match identity {
        Some(identity) => Ok(just(identity.anonymous_id(ts_ms, ip, user_agent))),
        None => Err("the event names no visitor (`duid`)".to_owned()),
    }
}

/// Maps one tracker-protocol event onto a click stamped at `ts_ms` (the server's clock: the
/// tracker's `dtm`/`stm` are a device's and are not believed).
fn to_click(
    fields: &Fields<'_>,
    ts_ms: i64,
    sender: &Sender<'_>,
    identity: Option<&Identity>,
) -> Result<Mapped, String> {
    let kind = fields.get("e").map_or("", |e| e.as_ref());
    let context_values = contexts(fields)?;
    let entities = context_values
        .as_ref()
        .map(context_entities)
        .transpose()?
        .unwrap_or_default();
    let given = |key: &str| fields.get(key).map(|v| v.trim()).filter(|v| !v.is_empty());
    let mut detail = EventDetail {
        session_id: given("sid").map(str::to_owned),
        referrer: given("refr").map(str::to_owned),
        page_title: given("page").map(str::to_owned),
        ..EventDetail::default()
    };
    let unstruct = if kind == "ue" {
        json_field(fields, "ue_pr", "ue_px")?
    } else {
        None
    };
    let field = |key: &str| given(key).map(str::to_owned);
    let event = match map_event(kind, &field, unstruct.as_ref(), &entities, &mut detail)? {
        snowplow::Mapped::Event(event) => event,
        snowplow::Mapped::Ignored(what) => return Ok(Mapped::Ignored(what)),
    };
    // A page view is of a page; a server-side tracker's cart or order event often has none: it
    // is then placed at the app (`snowplow://shop/`).
    let app_url;
    let url = match given("url") {
        Some(url) => url,
        None if kind == "pv" => return Err("missing field `url` (the page's URL)".to_owned()),
        None => {
            let app = given("aid")
                .filter(|a| {
                    a.len() <= 64
                        && a.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                })
                .unwrap_or("app");
            app_url = format!("snowplow://{app}/");
            &app_url
        }
    };
    let ip = match given("ip") {
        Some(ip) if sender.trusted => {
            ip.parse::<std::net::IpAddr>()
                .map_err(|_| format!("ip {ip:?} is not an IP address"))?;
            ip.to_owned()
        }
        _ => sender.ip.to_owned(),
    };
    let user_agent = given("ua").unwrap_or(sender.user_agent).to_owned();
    // The Clickpulse identity may say the visitor's gender and age, as `POST /collect` may.
    let who = visitor_of(fields, &entities, ts_ms, sender, &ip, &user_agent, identity)?;
    let click = TrackedClick {
        ts_ms,
        who,
        url: url.to_owned(),
        ip,
        user_agent,
        event,
        detail,
    };
    Ok(Mapped::Click(Box::new(click.into_click()?)))
}

/// `POST /com.snowplowanalytics.snowplow/tp2`.
pub(crate) async fn post(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let request = admit(&state, peer, &headers, body)?;
    let parsed = parse_post_with_query(
        &request.body,
        query.as_deref().unwrap_or(""),
        request.now_ms(),
        &request.sender(),
        Some(&request.collector.identity),
    )
    .map_err(|reason| {
        request.refused();
        AppError::BadRequest(reason)
    })?;
    let ok = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "ok",
    )
        .into_response();
    Ok(request
        .deliver_events(parsed, DEAD_LETTER_SOURCE, |_| ok)
        .await)
}

/// `GET /i`.
pub(crate) async fn pixel(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, AppError> {
    let query = query.unwrap_or_default();
    if query.len() > super::MAX_BODY_BYTES {
        return Err(AppError::TooLarge(format!(
            "query over {} bytes (the limit)",
            super::MAX_BODY_BYTES
        )));
    }
    let request = admit(&state, peer, &headers, Ok(Bytes::new()))?;
    let parsed = parse_query(
        &query,
        request.now_ms(),
        &request.sender(),
        Some(&request.collector.identity),
    );
    let mut ok = (StatusCode::OK, [(header::CONTENT_TYPE, "image/gif")], PIXEL).into_response();
    let h = ok.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store, must-revalidate"),
    );
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    h.insert(header::EXPIRES, HeaderValue::from_static("0"));
    Ok(request
        .deliver_events(parsed, DEAD_LETTER_SOURCE, |_| ok)
        .await)
}

/// The endpoints' CORS: as Snowplow's collector answers trackers (credentials included, the
/// origin echoed), for the origins that may send (`origins`, `*` for any; a page of this site
/// needs none).
pub(crate) fn cors_layer(origins: &[String]) -> tower_http::cors::CorsLayer {
    use axum::http::Method;
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let origins: Vec<String> = origins
        .iter()
        .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
        .collect();
    CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([
            header::CONTENT_TYPE,
            axum::http::HeaderName::from_static("sp-anonymous"),
        ])
        .allow_credentials(true)
        .max_age(std::time::Duration::from_secs(3600))
        .allow_origin(AllowOrigin::predicate(move |origin, _| {
            origin.to_str().is_ok_and(|o| {
                let o = o.to_ascii_lowercase();
                origins.iter().any(|a| a == "*" || *a == o)
            })
        }))
}

#[cfg(test)]
mod tests {
    use clickpulse_engine::click::{Click, Gender};
    use clickpulse_engine::event::{EventType, PropValue};

    use super::*;

    const TS: i64 = 1_764_806_400_000;

    fn trusted() -> Sender<'static> {
        Sender {
            ip: "203.0.113.9",
            user_agent: "curl/8",
            trusted: true,
            token: None,
        }
    }

    fn untrusted() -> Sender<'static> {
        Sender {
            trusted: false,
            ..trusted()
        }
    }

    fn identity() -> Identity {
        Identity::new(crate::offers::OfferTokens::new(b"k"))
    }

    fn payload(events: Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schema": "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4",
            "data": events,
        }))
        .unwrap()
    }

    fn self_describing(schema: &str, data: Value) -> Value {
        serde_json::json!({"schema": schema, "data": data})
    }

    fn ue(schema: &str, data: Value) -> String {
        self_describing(
            "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0",
            self_describing(schema, data),
        )
        .to_string()
    }

    fn cx(entities: Vec<Value>) -> String {
        let json = self_describing(
            "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0",
            Value::Array(entities),
        )
        .to_string();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    fn one(event: Value, sender: &Sender<'_>) -> ParsedEvents {
        parse_post(
            &payload(Value::Array(vec![event])),
            TS,
            sender,
            Some(&identity()),
        )
        .unwrap()
    }

    fn click(event: Value) -> Click {
        one(event, &untrusted()).the_click()
    }

    #[test]
    fn a_page_view_takes_the_page_s_fields_and_the_server_s_time() {
        let c = click(serde_json::json!({
            "e": "pv", "url": "https://shop.example/shop/product/VD55177927?utm_source=news",
            "refr": "https://www.google.com/", "page": "Shoes", "duid": "0b6c1f9e-aa",
            "sid": "s-42", "dtm": "1000", "stm": "2000", "tv": "js-4.6.0", "p": "web",
            "ua": "Mozilla/5.0 (X11)", "res": "1920x1080", "aid": "shop",
        }));
        assert_eq!(c.ts_ms, TS);
        assert_eq!(c.visitor, "sp-0b6c1f9e-aa");
        assert_eq!(c.event, EventType::PageView);
        assert_eq!(c.user_agent, "Mozilla/5.0 (X11)");
        assert_eq!(c.ip, "203.0.113.9");
        let d = c.detail.unwrap();
        assert_eq!(d.session_id.as_deref(), Some("s-42"));
        assert_eq!(d.referrer.as_deref(), Some("https://www.google.com/"));
        assert_eq!(d.page_title.as_deref(), Some("Shoes"));
        assert_eq!(d.utm.unwrap().source.as_deref(), Some("news"));
    }

    #[test]
    fn cart_events_of_both_schemas_carry_their_product() {
        let legacy = click(serde_json::json!({
            "e": "ue", "url": "https://shop.example/cart", "duid": "d1",
            "ue_pr": ue("iglu:com.snowplowanalytics.snowplow/add_to_cart/jsonschema/1-0-0",
                serde_json::json!({"sku": "VD1", "category": "shoes", "unitPrice": 59.9, "quantity": 2, "currency": "EUR"})),
        }));
        assert_eq!(legacy.event, EventType::AddToCart);
        let p = legacy.detail.unwrap().product.unwrap();
        assert_eq!(
            (p.id.as_deref(), p.price, p.quantity, p.currency.as_deref()),
            (Some("VD1"), Some(59.9), Some(2), Some("EUR"))
        );
        // The e-commerce plugin: the action is the event, the product an entity; ue_px with
        // and without padding.
        for pad in ["", "="] {
            let action = ue(
                "iglu:com.snowplowanalytics.snowplow.ecommerce/snowplow_ecommerce_action/jsonschema/1-0-2",
                serde_json::json!({"type": "remove_from_cart"}),
            );
            let mut px = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(action);
            if !px.len().is_multiple_of(4) {
                px.push_str(pad);
            }
            let c = click(serde_json::json!({
                "e": "ue", "url": "https://shop.example/cart", "duid": "d1", "ue_px": px,
                "cx": cx(vec![self_describing(
                    "iglu:com.snowplowanalytics.snowplow.ecommerce/product/jsonschema/1-0-0",
                    serde_json::json!({"id": "VD2", "name": "Boot", "category": "shoes", "price": 80, "currency": "EUR", "quantity": 1}))]),
            }));
            assert_eq!(c.event, EventType::RemoveFromCart);
            assert_eq!(c.detail.unwrap().product_id(), Some("VD2"));
        }
    }

    #[test]
    fn a_transaction_is_a_purchase_with_its_lines() {
        let c = click(serde_json::json!({
            "e": "ue", "url": "https://shop.example/checkout", "duid": "d1",
            "ue_pr": ue("iglu:com.snowplowanalytics.snowplow.ecommerce/snowplow_ecommerce_action/jsonschema/1-0-2",
                serde_json::json!({"type": "transaction"})),
            "co": self_describing("iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0", serde_json::json!([
                self_describing("iglu:com.snowplowanalytics.snowplow.ecommerce/transaction/jsonschema/1-0-0",
                    serde_json::json!({"transaction_id": "o-7", "revenue": 139.9, "currency": "EUR", "payment_method": "card", "total_quantity": 2})),
                self_describing("iglu:com.snowplowanalytics.snowplow.ecommerce/product/jsonschema/1-0-0",
                    serde_json::json!({"id": "VD1", "category": "shoes", "price": 59.9, "currency": "EUR"})),
                self_describing("iglu:com.snowplowanalytics.snowplow.ecommerce/product/jsonschema/1-0-0",
                    serde_json::json!({"id": "VD2", "category": "shoes", "price": 80, "currency": "EUR", "quantity": 1})),
            ])).to_string(),
        }));
        assert_eq!(c.event, EventType::Purchase);
        let order = c.detail.unwrap().order.unwrap();
        assert_eq!((order.id.as_str(), order.revenue), ("o-7", 139.9));
        let lines: Vec<_> = order
            .items
            .iter()
            .map(|i| (i.product_id.as_str(), i.quantity))
            .collect();
        assert_eq!(lines, [("VD1", 1), ("VD2", 1)]);
    }

    #[test]
    fn searches_checkouts_structured_and_other_events() {
        let search = click(
            serde_json::json!({"e": "ue", "url": "https://s/", "duid": "d",
            "ue_pr": ue("iglu:com.snowplowanalytics.snowplow/site_search/jsonschema/1-0-0",
                serde_json::json!({"terms": ["red", "shoes"]}))}),
        );
        assert_eq!(search.event, EventType::Search);
        assert_eq!(search.detail.unwrap().query.as_deref(), Some("red shoes"));
        let checkout = |step: u32| {
            one(
                serde_json::json!({"e": "ue", "url": "https://s/", "duid": "d",
                "ue_pr": ue("iglu:com.snowplowanalytics.snowplow.ecommerce/snowplow_ecommerce_action/jsonschema/1-0-2",
                    serde_json::json!({"type": "checkout_step"})),
                "cx": cx(vec![self_describing("iglu:com.snowplowanalytics.snowplow.ecommerce/checkout_step/jsonschema/1-0-0",
                    serde_json::json!({"step": step}))])}),
                &untrusted(),
            )
        };
        assert_eq!(checkout(1).body.clicks[0].event, EventType::BeginCheckout);
        assert_eq!(
            checkout(2).ignored,
            BTreeMap::from([("ecommerce_action", 1)])
        );
        let se = click(
            serde_json::json!({"e": "se", "url": "https://s/", "duid": "d",
            "se_ca": "video", "se_ac": "Play Video", "se_va": "3.5"}),
        );
        assert_eq!(se.event, EventType::parse("play_video").unwrap());
        let props = se.detail.unwrap().properties;
        assert_eq!(props["category"], PropValue::Text("video".into()));
        assert_eq!(props["value"], PropValue::Number(3.5));
        let link = click(
            serde_json::json!({"e": "ue", "url": "https://s/", "duid": "d",
            "ue_pr": ue("iglu:com.snowplowanalytics.snowplow/link_click/jsonschema/1-0-1",
                serde_json::json!({"targetUrl": "https://elsewhere/"}))}),
        );
        assert_eq!(link.event, EventType::parse("link_click").unwrap());
        let tr = click(
            serde_json::json!({"e": "tr", "url": "https://s/", "duid": "d",
            "tr_id": "o-1", "tr_tt": "20.5", "tr_cu": "USD"}),
        );
        assert_eq!(tr.detail.unwrap().order.unwrap().revenue, 20.5);
        // A server-side tracker's order has no page: it is placed at the app.
        let server_side = click(serde_json::json!({"e": "tr", "aid": "shop", "duid": "d",
            "tr_id": "o-2", "tr_tt": "1"}));
        assert_eq!(server_side.url, "snowplow://shop/");
        let ping = one(
            serde_json::json!({"e": "pp", "url": "https://s/"}),
            &untrusted(),
        );
        assert_eq!(ping.ignored, BTreeMap::from([("page_ping", 1)]));
    }

    #[test]
    fn who_the_visitor_is() {
        let id = identity();
        let token = id.tokens.issue("amber-falcon-river-42");
        let with_context = |token: &str| {
            serde_json::json!({"e": "pv", "url": "https://s/", "duid": "d", "uid": "u-1",
                "cx": cx(vec![self_describing(IDENTITY_SCHEMA,
                    serde_json::json!({"visitor": "amber-falcon-river-42", "token": token}))])})
        };
        let c = click(with_context(&token));
        assert_eq!(c.visitor, "amber-falcon-river-42");
        assert_eq!((c.gender, c.age), (None, None));
        let with_demographics = |gender: Value, age: Value| {
            one(
                serde_json::json!({"e": "pv", "url": "https://s/",
                "cx": cx(vec![self_describing(IDENTITY_SCHEMA,
                    serde_json::json!({"visitor": "amber-falcon-river-42", "token": token, "gender": gender, "age": age}))])}),
                &untrusted(),
            )
        };
        let c = &with_demographics("F".into(), 31.into()).body.clicks[0];
        assert_eq!((c.gender, c.age), (Some(Gender::F), Some(31)));
        for (gender, age) in [
            (Value::from("X"), Value::from(31)),
            ("M".into(), (-1).into()),
            ("M".into(), 200.into()),
        ] {
            let refused = with_demographics(gender.clone(), age.clone());
            assert_eq!(refused.body.rejected.len(), 1, "{gender} {age}");
        }
        let forged = one(with_context("not-the-token"), &untrusted());
        assert!(
            forged.body.rejected[0].reason.contains("not visitor"),
            "{forged:?}"
        );
        // `uid` only from a trusted sender; a tracker's cookie id in its own namespace.
        let named = serde_json::json!({"e": "pv", "url": "https://s/", "duid": "d", "uid": "u-1"});
        assert_eq!(one(named.clone(), &trusted()).body.clicks[0].visitor, "u-1");
        assert_eq!(one(named, &untrusted()).body.clicks[0].visitor, "sp-d");
        let bare = one(
            serde_json::json!({"e": "pv", "url": "https://s/"}),
            &untrusted(),
        );
        assert!(bare.body.clicks[0].visitor.starts_with("anon-"));
        let odd = one(
            serde_json::json!({"e": "pv", "url": "https://s/", "duid": "a b"}),
            &untrusted(),
        );
        assert!(odd.body.rejected[0].reason.contains("duid"));
    }

    #[test]
    fn bad_events_are_rejected_alone_and_bad_bodies_whole() {
        let parsed = parse_post(
            &payload(serde_json::json!([
                {"e": "pv", "url": "https://s/", "duid": "d"},
                {"e": "pv", "duid": "d"},
                {"e": "zz", "url": "https://s/"},
                {"e": "ue", "url": "https://s/", "ue_px": "%%%"},
                {"e": "ue", "url": "https://s/", "ue_pr": "{not json"},
                {"e": "se", "url": "https://s/"},
                {"e": "pv", "url": "https://s/", "co": "[]"},
                {"e": "pv", "url": ["https://s/"]},
                "pv",
            ])),
            TS,
            &untrusted(),
            Some(&identity()),
        )
        .unwrap();
        assert_eq!(parsed.body.clicks.len(), 1);
        let reasons: Vec<_> = parsed
            .body
            .rejected
            .iter()
            .map(|r| (r.index, r.reason.as_str()))
            .collect();
        assert_eq!(reasons.len(), 8, "{reasons:?}");
        assert!(reasons[0].1.contains("missing field `url`"));
        assert!(reasons[1].1.contains("e=\"zz\""));
        assert!(reasons[2].1.contains("base64url"));
        assert!(reasons[3].1.contains("not JSON"));
        assert!(reasons[4].1.contains("se_ac"));
        for body in [
            &b"{}"[..],
            b"not json",
            b"\xff",
            br#"{"schema": "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4", "data": []}"#,
            br#"{"schema": "iglu:com.acme/payload/jsonschema/1-0-0", "data": [{"e": "pv"}]}"#,
        ] {
            assert!(parse_post(body, TS, &untrusted(), None).is_err(), "{body:?}");
        }
        let many = payload(Value::Array(vec![
            serde_json::json!({"e": "pp"});
            super::super::MAX_BATCH + 1
        ]));
        assert!(
            parse_post(&many, TS, &untrusted(), None)
                .unwrap_err()
                .contains("at most")
        );
    }

    #[test]
    fn a_post_s_query_string_is_merged_into_every_event() {
        let body = payload(serde_json::json!([
            {"e": "pv", "url": "https://s/a", "duid": "d1"},
            {"e": "pv", "url": "https://s/b"},
        ]));
        let parsed =
            parse_post_with_query(&body, "duid=q9&aid=x", TS, &untrusted(), Some(&identity()))
                .unwrap();
        let visitors: Vec<_> = parsed
            .body
            .clicks
            .iter()
            .map(|c| c.visitor.as_str())
            .collect();
        assert_eq!(visitors, ["sp-q9", "sp-q9"]);
    }

    #[test]
    fn a_pixel_is_one_event_in_the_query_string() {
        let parsed = parse_query(
            "e=pv&url=https%3A%2F%2Fshop.example%2Fshop%2Fproduct%2FVD1&page=Boot+shop&duid=d9&tv=js-4",
            TS,
            &untrusted(),
            Some(&identity()),
        );
        let c = &parsed.body.clicks[0];
        assert_eq!(c.url, "https://shop.example/shop/product/VD1");
        assert_eq!(
            c.detail.as_ref().unwrap().page_title.as_deref(),
            Some("Boot shop")
        );
        assert_eq!(c.visitor, "sp-d9");
    }
}
