//! Segment's HTTP tracking API (also what RudderStack's SDKs speak): a shop that runs
//! analytics.js or a Segment server library points its API host at Clickpulse.
//!
//! - `POST /v1/batch` (`/v1/b`): `{"batch": [message, ...]}`; `POST /v1/track`, `/v1/page`,
//!   `/v1/identify` (`/v1/t`, `/v1/p`, `/v1/i`) and `/v1/screen`, `/v1/group`, `/v1/alias`: one
//!   message. JSON whatever the `Content-Type` (analytics.js sends `text/plain`).
//! - The write key as HTTP Basic auth (`writeKey:`) or the body's `writeKey`: required; when
//!   `--segment-write-key` names keys, only those are taken (`401` otherwise).
//! - Segment's limits: 32 KB per message, 500 KB per batch (`400`).
//!
//! What is mapped, ignored and counted is in `docs/sources/segment.md`. Answers: `200
//! {"success": true}` once the messages are durable (a message that cannot be mapped goes to
//! `dead-letters` with its reason); `400` for a body the library should not send again; `401`
//! for a missing or unknown write key; `429`/`503` with `Retry-After` for back-pressure.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use clickpulse_engine::event::{
    EventDetail, EventProduct, EventType, LineItem, Order, PropValue, Utm,
};
use serde_json::{Map, Value, json};

use super::values::{
    TrackedClick, Who, count, custom_type, just, namespaced, number, snake_case, text,
    verified_visitor,
};
use super::{Identity, Mapped, ParsedEvents, Rejected, Sender, admit_within, batch_len};
use crate::{AppError, AppState};

/// The source name of the Segment endpoints' dead letters.
pub const DEAD_LETTER_SOURCE: &str = "segment";
/// The largest message (Segment's limit).
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024;
/// The largest batch request (Segment's limit).
pub const MAX_BATCH_BYTES: usize = 500 * 1024;

/// The message types, by the path of a single-message endpoint.
fn path_type(path: &str) -> Option<&'static str> {
    Some(match path {
        "track" | "t" => "track",
        "page" | "p" => "page",
        "identify" | "i" => "identify",
        "screen" | "s" => "screen",
        "group" | "g" => "group",
        "alias" | "a" => "alias",
        _ => return None,
    })
}

/// Reads a request to `/v1/<path>`: a batch (`batch`, `b`) or one message. `Err`: the whole body
/// is refused (400).
pub fn parse(
    path: &str,
    bytes: &[u8],
    ts_ms: i64,
    sender: &Sender<'_>,
    identity: Option<&Identity>,
) -> Result<ParsedEvents, String> {
    let batch = matches!(path, "batch" | "b");
    let single = path_type(path);
    if !batch && single.is_none() {
        return Err(format!("no endpoint /v1/{path}"));
    }
    let limit = if batch {
        MAX_BATCH_BYTES
    } else {
        MAX_MESSAGE_BYTES
    };
    if bytes.len() > limit {
        return Err(format!(
            "{} bytes in one request; Segment's limit is {limit}",
            bytes.len()
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| format!("body is not UTF-8: {e}"))?;
    let body: Value = serde_json::from_str(text).map_err(|e| format!("body is not JSON: {e}"))?;
    let Value::Object(body) = body else {
        return Err("the body is not a JSON object".to_owned());
    };
    let messages: Vec<(Value, Option<&'static str>)> = if batch {
        let Some(Value::Array(items)) = body.get("batch") else {
            return Err("a batch request without a `batch` array".to_owned());
        };
        batch_len(items.len(), "messages")?;
        // A batch's own `context` applies to each message (the message's wins).
        let shared = body.get("context").and_then(Value::as_object);
        items
            .iter()
            .map(|m| {
                let mut m = m.clone();
                if let (Some(shared), Some(map)) = (shared, m.as_object_mut()) {
                    let context = map
                        .entry("context")
                        .or_insert_with(|| Value::Object(Map::new()));
                    if let Some(context) = context.as_object_mut() {
                        for (k, v) in shared {
                            context.entry(k.clone()).or_insert_with(|| v.clone());
                        }
                    }
                }
                (m, None)
            })
            .collect()
    } else {
        vec![(Value::Object(body), single)]
    };
    let mut parsed = ParsedEvents::default();
    for (i, (message, kind)) in messages.into_iter().enumerate() {
        let size = message.to_string();
        let taken = if size.len() > MAX_MESSAGE_BYTES {
            Err(format!(
                "{} bytes; Segment's limit is {MAX_MESSAGE_BYTES} per message",
                size.len()
            ))
        } else {
            to_click(&message, kind, ts_ms, sender, identity)
        };
        parsed.take(i, "message", taken, || size);
    }
    Ok(parsed)
}

/// The write key of a request: HTTP Basic auth's user (`writeKey:`), else the body's.
pub fn write_key(headers: &HeaderMap, body: &[u8]) -> Option<String> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .map(|user| user.split(':').next().unwrap_or("").to_owned())
        .filter(|k| !k.is_empty());
    basic.or_else(|| {
        #[derive(serde::Deserialize)]
        struct Keyed<'a> {
            #[serde(rename = "writeKey", borrow)]
            write_key: Option<Cow<'a, str>>,
        }
        serde_json::from_slice::<Keyed<'_>>(body)
            .ok()
            .and_then(|k| k.write_key)
            .map(Cow::into_owned)
            .filter(|k| !k.is_empty())
    })
}

/// A product of Segment's e-commerce spec (`product_id`, else `sku`, else `id`).
fn product(p: &Value) -> EventProduct {
    EventProduct {
        id: text(&p["product_id"])
            .or_else(|| text(&p["sku"]))
            .or_else(|| text(&p["id"])),
        category: text(&p["category"]),
        price: number(&p["price"]),
        quantity: count(&p["quantity"]),
        currency: text(&p["currency"]),
    }
}

/// The custom properties of a track event: its scalar properties (bounded by the event model;
/// over a bound the message is refused with the reason, never cut).
fn properties(props: &Map<String, Value>) -> BTreeMap<String, PropValue> {
    props
        .iter()
        .filter_map(|(k, v)| {
            let value = match v {
                Value::String(s) => PropValue::Text(s.clone()),
                Value::Number(n) => PropValue::Number(n.as_f64()?),
                Value::Bool(b) => PropValue::Bool(*b),
                _ => return None,
            };
            Some((snake_case(k), value))
        })
        .collect()
}

/// The event type and detail of a track event by its name (Segment's e-commerce spec, else a
/// custom event with the scalar properties).
fn track(
    name: &str,
    props: &Map<String, Value>,
    detail: &mut EventDetail,
) -> Result<EventType, String> {
    let p = Value::Object(props.clone());
    Ok(match name {
        "Product Added" => {
            detail.product = Some(product(&p));
            EventType::AddToCart
        }
        "Product Removed" => {
            detail.product = Some(product(&p));
            EventType::RemoveFromCart
        }
        "Checkout Started" => EventType::BeginCheckout,
        "Order Completed" => {
            let items = p["products"]
                .as_array()
                .map(|items| {
                    items
                        .iter()
                        .map(|item| {
                            let p = product(item);
                            Ok(LineItem {
                                product_id: p
                                    .id
                                    .ok_or("an order's product without `product_id`")?,
                                category: p.category,
                                price: p.price,
                                quantity: p.quantity.unwrap_or(1),
                            })
                        })
                        .collect::<Result<Vec<_>, String>>()
                })
                .transpose()?
                .unwrap_or_default();
            detail.order = Some(Order {
                id: text(&p["order_id"])
                    .or_else(|| text(&p["checkout_id"]))
                    .ok_or("Order Completed without `order_id`")?,
                revenue: number(&p["revenue"])
                    .or_else(|| number(&p["total"]))
                    .ok_or("Order Completed without a numeric `revenue` or `total`")?,
                currency: text(&p["currency"]),
                items,
            });
            EventType::Purchase
        }
        "Products Searched" => {
            detail.query = Some(text(&p["query"]).ok_or("Products Searched without `query`")?);
            EventType::Search
        }
        other => {
            detail.properties = properties(props);
            custom_type(other)?
        }
    })
}

/// Which visitor a message is (as for Snowplow: docs/sources/segment.md): a verified
/// `context.clickpulse` identity, a trusted sender's `userId`, `seg-` and the `anonymousId`, else
/// the anonymous id of the day, address and user agent.
fn visitor_of(
    message: &Value,
    ts_ms: i64,
    sender: &Sender<'_>,
    ip: &str,
    user_agent: &str,
    identity: Option<&Identity>,
) -> Result<Who, String> {
    let context = &message["context"]["clickpulse"];
    if !context.is_null() {
        return verified_visitor(context, "context.clickpulse", identity);
    }
    if sender.trusted
        && let Some(user) = text(&message["userId"])
    {
        return Ok(just(user));
    }
    if let Some(anonymous) = text(&message["anonymousId"]) {
        return namespaced("seg-", "anonymousId", &anonymous, b".:").map(just);
    }
    match identity {
        Some(identity) => Ok(just(identity.anonymous_id(ts_ms, ip, user_agent))),
        None => Err("the message names no visitor (`anonymousId`)".to_owned()),
    }
}

/// Maps one message onto a click stamped at `ts_ms` (the server's clock: a library's
/// `timestamp` is a device's and is not believed). `kind` is the endpoint's type, else the
/// message's `type`.
fn to_click(
    message: &Value,
    kind: Option<&'static str>,
    ts_ms: i64,
    sender: &Sender<'_>,
    identity: Option<&Identity>,
) -> Result<Mapped, String> {
    if !message.is_object() {
        return Err("a message is a JSON object".to_owned());
    }
    let kind = match kind {
        Some(kind) => kind,
        None => match message["type"].as_str() {
            Some(t) => path_type(t).filter(|p| *p == t).ok_or_else(|| {
                format!("type {t:?} is not track, page, identify, screen, group or alias")
            })?,
            None => return Err("missing field `type`".to_owned()),
        },
    };
    match kind {
        "screen" | "group" | "alias" => return Ok(Mapped::Ignored(kind)),
        _ => {}
    }
    let context = &message["context"];
    let page = &context["page"];
    let props = message["properties"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let from = |key: &str| {
        text(&props.get(key).cloned().unwrap_or(Value::Null)).or_else(|| text(&page[key]))
    };
    let mut detail = EventDetail {
        referrer: from("referrer"),
        page_title: from("title"),
        ..EventDetail::default()
    };
    let campaign = &context["campaign"];
    if campaign.is_object() {
        let utm = Utm {
            source: text(&campaign["source"]),
            medium: text(&campaign["medium"]),
            campaign: text(&campaign["name"]),
            term: text(&campaign["term"]),
            content: text(&campaign["content"]),
        };
        if utm != Utm::default() {
            detail.utm = Some(utm);
        }
    }
    let event = match kind {
        "page" => EventType::PageView,
        // Links the visitor (its anonymous id) to the shop's user: enrichment then gives its
        // later events that user's demographics (clickpulse_engine::event::IDENTIFY).
        "identify" => {
            let user = text(&message["userId"]).ok_or("an identify message without `userId`")?;
            detail
                .properties
                .insert("user_id".to_owned(), PropValue::Text(user));
            EventType::parse(clickpulse_engine::event::IDENTIFY).map_err(|e| e.to_string())?
        }
        _ => {
            let name = text(&message["event"]).ok_or("a track message without `event`")?;
            track(&name, &props, &mut detail)?
        }
    };
    let app_url;
    let url = match from("url") {
        Some(url) => url,
        None if kind == "page" => {
            return Err("a page message without `properties.url` or `context.page.url`".to_owned());
        }
        None => {
            app_url = "segment://server/".to_owned();
            app_url
        }
    };
    let ip = match text(&context["ip"]) {
        Some(ip) if sender.trusted => {
            ip.parse::<std::net::IpAddr>()
                .map_err(|_| format!("context.ip {ip:?} is not an IP address"))?;
            ip
        }
        _ => sender.ip.to_owned(),
    };
    let user_agent = text(&context["userAgent"]).unwrap_or_else(|| sender.user_agent.to_owned());
    let who = visitor_of(message, ts_ms, sender, &ip, &user_agent, identity)?;
    let click = TrackedClick {
        ts_ms,
        who,
        url,
        ip,
        user_agent,
        event,
        detail,
    };
    Ok(Mapped::Click(Box::new(click.into_click()?)))
}

/// `POST /v1/{path}`.
pub(crate) async fn post(
    State(state): State<AppState>,
    axum::extract::Path(path): axum::extract::Path<String>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let request = admit_within(&state, peer, &headers, body, MAX_BATCH_BYTES)?;
    let key = write_key(&headers, &request.body);
    let known = match (&key, state.segment_write_keys.as_slice()) {
        (None, _) => false,
        (Some(_), []) => true,
        (Some(k), keys) => keys.iter().any(|known| crate::tokens_equal(known, k)),
    };
    if !known {
        request.refused();
        return Ok((
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": if key.is_none() {
                "no write key: send it as HTTP Basic auth (`writeKey:`) or as the body's `writeKey`"
            } else {
                "this write key is not one of this server's (--segment-write-key)"
            }})),
        )
            .into_response());
    }
    let parsed = parse(
        &path,
        &request.body,
        request.now_ms(),
        &request.sender(),
        Some(&request.collector.identity),
    )
    .map_err(|reason| {
        request.refused();
        AppError::BadRequest(reason)
    })?;
    let ok = |rejected: &[Rejected]| {
        let mut body = json!({"success": true});
        if !rejected.is_empty() {
            body["rejected"] = rejected
                .iter()
                .map(|r| json!({"index": r.index, "error": r.reason}))
                .collect();
        }
        (StatusCode::OK, Json(body)).into_response()
    };
    Ok(request.deliver_events(parsed, DEAD_LETTER_SOURCE, ok).await)
}

#[cfg(test)]
mod tests {
    use clickpulse_engine::click::{Click, Gender};

    use super::*;

    const TS: i64 = 1_764_806_400_000;

    fn sender(trusted: bool) -> Sender<'static> {
        Sender {
            ip: "203.0.113.9",
            user_agent: "analytics-node-next/latest",
            trusted,
            token: None,
        }
    }

    fn identity() -> Identity {
        Identity::new(crate::offers::OfferTokens::new(b"k"))
    }

    fn one(path: &str, message: Value) -> ParsedEvents {
        parse(
            path,
            message.to_string().as_bytes(),
            TS,
            &sender(false),
            Some(&identity()),
        )
        .unwrap()
    }

    fn click(path: &str, message: Value) -> Click {
        one(path, message).the_click()
    }

    #[test]
    fn pages_and_the_e_commerce_spec() {
        let page = click(
            "p",
            json!({"anonymousId": "a-1", "properties": {"url": "https://shop.example/shop/product/VD1", "title": "Boot", "referrer": "https://www.google.com/"},
            "context": {"campaign": {"source": "news", "medium": "email", "name": "spring"}, "userAgent": "Mozilla/5.0"}}),
        );
        assert_eq!(
            (
                page.event.clone(),
                page.visitor.as_str(),
                page.user_agent.as_str()
            ),
            (EventType::PageView, "seg-a-1", "Mozilla/5.0")
        );
        let d = page.detail.unwrap();
        assert_eq!(d.utm.unwrap().campaign.as_deref(), Some("spring"));
        assert_eq!(d.page_title.as_deref(), Some("Boot"));
        let added = click(
            "track",
            json!({"anonymousId": "a-1", "event": "Product Added",
            "properties": {"product_id": "VD1", "category": "shoes", "price": 59.9, "quantity": 2, "currency": "EUR"},
            "context": {"page": {"url": "https://shop.example/shop/product/VD1"}}}),
        );
        assert_eq!(added.event, EventType::AddToCart);
        assert_eq!(added.detail.unwrap().product.unwrap().quantity, Some(2));
        let order = click(
            "t",
            json!({"anonymousId": "a-1", "event": "Order Completed",
            "properties": {"order_id": "o-9", "total": 119.8, "currency": "EUR", "products": [{"product_id": "VD1", "price": 59.9, "quantity": 2}]}}),
        );
        let o = order.detail.unwrap().order.unwrap();
        assert_eq!(
            (o.id.as_str(), o.revenue, o.items[0].quantity),
            ("o-9", 119.8, 2)
        );
        assert_eq!(order.url, "segment://server/");
        let search = click(
            "t",
            json!({"anonymousId": "a", "event": "Products Searched", "properties": {"query": "red shoes"}}),
        );
        assert_eq!(search.detail.unwrap().query.as_deref(), Some("red shoes"));
        let custom = click(
            "t",
            json!({"anonymousId": "a", "event": "Newsletter Signup", "properties": {"listName": "weekly", "nested": {"x": 1}}}),
        );
        assert_eq!(custom.event, EventType::parse("newsletter_signup").unwrap());
        assert_eq!(
            custom.detail.unwrap().properties["list_name"],
            PropValue::Text("weekly".into())
        );
        for kind in ["screen", "group", "alias"] {
            assert_eq!(
                one(kind, json!({"userId": "u"})).ignored,
                BTreeMap::from([(kind, 1)])
            );
        }
        // identify links the anonymous visitor to the user (enrichment keeps the link).
        let identify = click(
            "i",
            json!({"anonymousId": "a-1", "userId": "shop-user-7", "traits": {"plan": "gold"}}),
        );
        assert_eq!(identify.visitor, "seg-a-1");
        assert_eq!(
            clickpulse_engine::event::identified_user(&identify.event, identify.detail.as_deref()),
            Some("shop-user-7")
        );
        assert!(
            one("identify", json!({"anonymousId": "a-1"})).body.rejected[0]
                .reason
                .contains("userId")
        );
    }

    #[test]
    fn batches_share_their_context_and_refuse_bad_messages_alone() {
        let body = json!({"writeKey": "k", "context": {"page": {"url": "https://s/"}}, "batch": [
            {"type": "page", "anonymousId": "a"},
            {"type": "page", "anonymousId": "a", "context": {"page": {"url": "https://s/own"}}},
            {"type": "track", "anonymousId": "a"},
            {"type": "nonsense"},
            {"type": "screen", "anonymousId": "a"},
            {"type": "track", "event": "Order Completed", "anonymousId": "a", "properties": {"order_id": "o"}},
        ]});
        let parsed = parse(
            "batch",
            body.to_string().as_bytes(),
            TS,
            &sender(false),
            Some(&identity()),
        )
        .unwrap();
        let urls: Vec<_> = parsed.body.clicks.iter().map(|c| c.url.as_str()).collect();
        assert_eq!(urls, ["https://s/", "https://s/own"]);
        let reasons: Vec<_> = parsed
            .body
            .rejected
            .iter()
            .map(|r| r.reason.as_str())
            .collect();
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(reasons[0].starts_with("message 2: a track message without `event`"));
        assert!(reasons[1].contains("\"nonsense\""));
        assert!(reasons[2].contains("revenue"));
        assert_eq!(parsed.ignored, BTreeMap::from([("screen", 1)]));
        for (path, body) in [
            ("batch", "{}".to_owned()),
            ("batch", json!({"batch": []}).to_string()),
            ("track", "[1]".to_owned()),
            ("nope", "{}".to_owned()),
            ("track", "not json".to_owned()),
            (
                "track",
                format!("{{\"x\": \"{}\"}}", "a".repeat(MAX_MESSAGE_BYTES)),
            ),
            (
                "batch",
                format!("{{\"x\": \"{}\"}}", "a".repeat(MAX_BATCH_BYTES)),
            ),
        ] {
            assert!(
                parse(path, body.as_bytes(), TS, &sender(false), None).is_err(),
                "{path} {}",
                &body[..body.len().min(40)]
            );
        }
        // A message over 32 KB inside a batch is refused alone.
        let big = json!({"batch": [{"type": "page", "anonymousId": "a", "properties": {"url": "https://s/", "pad": "a".repeat(MAX_MESSAGE_BYTES)}}, {"type": "page", "anonymousId": "a", "properties": {"url": "https://s/"}}]});
        let parsed = parse(
            "batch",
            big.to_string().as_bytes(),
            TS,
            &sender(false),
            Some(&identity()),
        )
        .unwrap();
        assert_eq!(
            (parsed.body.clicks.len(), parsed.body.rejected.len()),
            (1, 1)
        );
    }

    #[test]
    fn who_the_visitor_is_and_the_write_key() {
        let id = identity();
        let token = id.tokens.issue("amber-falcon-river-42");
        let page = |clickpulse: Value| json!({"anonymousId": "a", "userId": "u-7", "properties": {"url": "https://s/"}, "context": {"clickpulse": clickpulse}});
        let c = click(
            "page",
            page(
                json!({"visitor": "amber-falcon-river-42", "token": token, "gender": "F", "age": 31}),
            ),
        );
        assert_eq!(
            (c.visitor.as_str(), c.gender, c.age),
            ("amber-falcon-river-42", Some(Gender::F), Some(31))
        );
        assert!(
            one(
                "page",
                page(json!({"visitor": "amber-falcon-river-42", "token": "forged"}))
            )
            .body
            .rejected[0]
                .reason
                .contains("not visitor")
        );
        let named =
            json!({"anonymousId": "a", "userId": "u-7", "properties": {"url": "https://s/"}});
        let trusted = parse(
            "page",
            named.to_string().as_bytes(),
            TS,
            &sender(true),
            Some(&id),
        )
        .unwrap();
        assert_eq!(trusted.body.clicks[0].visitor, "u-7");
        assert_eq!(click("page", named).visitor, "seg-a");
        assert!(
            click("page", json!({"properties": {"url": "https://s/"}}))
                .visitor
                .starts_with("anon-")
        );

        let mut headers = HeaderMap::new();
        assert_eq!(
            write_key(&headers, br#"{"writeKey": "wk"}"#).as_deref(),
            Some("wk")
        );
        assert_eq!(write_key(&headers, b"{}"), None);
        headers.insert(header::AUTHORIZATION, "Basic d2s6".parse().unwrap());
        assert_eq!(write_key(&headers, b"{}").as_deref(), Some("wk"));
    }
}
