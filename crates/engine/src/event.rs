//! The event model: what a visitor did — its [`EventType`] — and what the event says beyond a
//! page view ([`EventDetail`]: session, referrer, campaign, commerce fields, custom properties).
//!
//! Every source maps onto it: the JSON-lines logs and the collector (`docs/click-format.md`),
//! and the logs that carry nothing but page views (the Omniture TSV), whose events are
//! [`EventType::PageView`] with no detail. Page views and interactions share `click-data`
//! (keyed by visitor), so detection sees one visitor's events in their order.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a visitor did.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum EventType {
    /// Looked at a page (the only type the Omniture log has).
    #[default]
    PageView,
    /// Put a product in the cart.
    AddToCart,
    /// Took a product out of the cart.
    RemoveFromCart,
    /// Started the checkout.
    BeginCheckout,
    /// Completed an order.
    Purchase,
    /// Searched the shop.
    Search,
    /// A name of the shop's own (a short identifier: [`EventType::parse`]).
    Custom(Arc<str>),
}

/// The longest custom event name, in bytes.
pub const MAX_EVENT_NAME_BYTES: usize = 40;

impl EventType {
    /// The built-in types, in the order of the funnel they usually form.
    pub const BUILT_IN: [EventType; 6] = [
        EventType::PageView,
        EventType::AddToCart,
        EventType::RemoveFromCart,
        EventType::BeginCheckout,
        EventType::Purchase,
        EventType::Search,
    ];

    /// Its name: `page_view`, `add_to_cart`, … or the custom name.
    pub fn as_str(&self) -> &str {
        match self {
            EventType::PageView => "page_view",
            EventType::AddToCart => "add_to_cart",
            EventType::RemoveFromCart => "remove_from_cart",
            EventType::BeginCheckout => "begin_checkout",
            EventType::Purchase => "purchase",
            EventType::Search => "search",
            EventType::Custom(name) => name,
        }
    }

    /// The type called `name`: a built-in one, else a custom one, whose name must be a short
    /// identifier (a lower-case ASCII letter, then lower-case letters, digits and `_`, at most
    /// [`MAX_EVENT_NAME_BYTES`] bytes), so that it can be a dashboard key and a pattern's
    /// condition without escaping.
    pub fn parse(name: &str) -> Result<EventType, InvalidEvent> {
        if let Some(built_in) = EventType::BUILT_IN.iter().find(|t| t.as_str() == name) {
            return Ok(built_in.clone());
        }
        let identifier = name.len() <= MAX_EVENT_NAME_BYTES
            && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if identifier {
            Ok(EventType::Custom(Arc::from(name)))
        } else {
            let shown: String = name.chars().take(48).collect();
            Err(InvalidEvent::TypeName(shown))
        }
    }

    /// Whether it is a page view.
    pub fn is_page_view(&self) -> bool {
        matches!(self, EventType::PageView)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for EventType {
    type Err = InvalidEvent;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::parse(s)
    }
}

// JSON carries the name (`"type": "add_to_cart"`); the binary topic encoding a variant index
// (and a custom type its name), so a page view costs one byte.
#[derive(Serialize, Deserialize)]
enum EventTypeWire<'a> {
    PageView,
    AddToCart,
    RemoveFromCart,
    BeginCheckout,
    Purchase,
    Search,
    Custom(#[serde(borrow)] std::borrow::Cow<'a, str>),
}

impl Serialize for EventType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            return serializer.serialize_str(self.as_str());
        }
        match self {
            EventType::PageView => EventTypeWire::PageView,
            EventType::AddToCart => EventTypeWire::AddToCart,
            EventType::RemoveFromCart => EventTypeWire::RemoveFromCart,
            EventType::BeginCheckout => EventTypeWire::BeginCheckout,
            EventType::Purchase => EventTypeWire::Purchase,
            EventType::Search => EventTypeWire::Search,
            EventType::Custom(name) => EventTypeWire::Custom(std::borrow::Cow::Borrowed(name)),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        if deserializer.is_human_readable() {
            let name = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
            return EventType::parse(&name).map_err(D::Error::custom);
        }
        Ok(match EventTypeWire::deserialize(deserializer)? {
            EventTypeWire::PageView => EventType::PageView,
            EventTypeWire::AddToCart => EventType::AddToCart,
            EventTypeWire::RemoveFromCart => EventType::RemoveFromCart,
            EventTypeWire::BeginCheckout => EventType::BeginCheckout,
            EventTypeWire::Purchase => EventType::Purchase,
            EventTypeWire::Search => EventType::Search,
            EventTypeWire::Custom(name) => EventType::parse(&name).map_err(D::Error::custom)?,
        })
    }
}

/// Campaign parameters (`utm_*`), given with the event or read from its URL's query.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Utm {
    /// `utm_source`: who sent the visitor (`newsletter`, `google`).
    pub source: Option<String>,
    /// `utm_medium`: how (`email`, `cpc`, `social`).
    pub medium: Option<String>,
    /// `utm_campaign`.
    pub campaign: Option<String>,
    /// `utm_term`: the paid keyword.
    pub term: Option<String>,
    /// `utm_content`: which link or ad.
    pub content: Option<String>,
}

impl Utm {
    /// The `utm_*` parameters of `url`'s query, if it has any (percent- and `+`-decoded; the
    /// first of a repeated parameter wins).
    pub fn from_url(url: &str) -> Option<Utm> {
        let query = url.split_once('?')?.1;
        let query = query.split_once('#').map_or(query, |(q, _)| q);
        if !query.contains("utm_") {
            return None;
        }
        let mut utm = Utm::default();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let slot = match key.as_ref() {
                "utm_source" => &mut utm.source,
                "utm_medium" => &mut utm.medium,
                "utm_campaign" => &mut utm.campaign,
                "utm_term" => &mut utm.term,
                "utm_content" => &mut utm.content,
                _ => continue,
            };
            let value = value.trim();
            if slot.is_none() && !value.is_empty() {
                let end = floor_char_boundary(value, MAX_SHORT_BYTES);
                *slot = Some(value[..end].to_owned());
            }
        }
        (utm != Utm::default()).then_some(utm)
    }

    fn fields(&self) -> [(&'static str, &Option<String>); 5] {
        [
            ("utm.source", &self.source),
            ("utm.medium", &self.medium),
            ("utm.campaign", &self.campaign),
            ("utm.term", &self.term),
            ("utm.content", &self.content),
        ]
    }
}

/// The product an event is about (a product page's view, an add to or removal from the cart).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventProduct {
    /// Its id (the catalogue's): wins over the id in the URL.
    pub id: Option<String>,
    /// Its category, if the sender knows it (else the catalogue's).
    pub category: Option<String>,
    /// Unit price, in `currency`.
    pub price: Option<f64>,
    /// How many (an add to cart of 2).
    pub quantity: Option<u32>,
    /// ISO 4217 code (`EUR`).
    pub currency: Option<String>,
}

/// A completed order (`purchase`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Order {
    /// The shop's order id.
    pub id: String,
    /// What the order brought in, in `currency`.
    pub revenue: f64,
    /// ISO 4217 code (`EUR`).
    #[serde(default)]
    pub currency: Option<String>,
    /// Its lines.
    #[serde(default)]
    pub items: Vec<LineItem>,
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineItem {
    /// The product's id.
    pub product_id: String,
    /// Its category, if the sender knows it.
    #[serde(default)]
    pub category: Option<String>,
    /// Unit price.
    #[serde(default)]
    pub price: Option<f64>,
    /// How many.
    #[serde(default = "one")]
    pub quantity: u32,
}

fn one() -> u32 {
    1
}

/// A custom property's value.
#[derive(Debug, Clone, PartialEq)]
pub enum PropValue {
    /// Text.
    Text(String),
    /// A number.
    Number(f64),
    /// True or false.
    Bool(bool),
}

// JSON: the bare value (`"plan": "gold"`, `"seats": 3`); binary: tagged.
#[derive(Serialize, Deserialize)]
enum PropValueWire<'a> {
    Text(#[serde(borrow)] std::borrow::Cow<'a, str>),
    Number(f64),
    Bool(bool),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PropValueJson {
    Text(String),
    Number(f64),
    Bool(bool),
}

impl Serialize for PropValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match (self, serializer.is_human_readable()) {
            (PropValue::Text(s), true) => serializer.serialize_str(s),
            (PropValue::Number(n), true) => serializer.serialize_f64(*n),
            (PropValue::Bool(b), true) => serializer.serialize_bool(*b),
            (PropValue::Text(s), false) => {
                PropValueWire::Text(std::borrow::Cow::Borrowed(s)).serialize(serializer)
            }
            (PropValue::Number(n), false) => PropValueWire::Number(*n).serialize(serializer),
            (PropValue::Bool(b), false) => PropValueWire::Bool(*b).serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for PropValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            return Ok(
                match PropValueJson::deserialize(deserializer).map_err(|_| {
                    serde::de::Error::custom(
                        "a property's value must be a string, a number or a bool",
                    )
                })? {
                    PropValueJson::Text(s) => PropValue::Text(s),
                    PropValueJson::Number(n) => PropValue::Number(n),
                    PropValueJson::Bool(b) => PropValue::Bool(b),
                },
            );
        }
        Ok(match PropValueWire::deserialize(deserializer)? {
            PropValueWire::Text(s) => PropValue::Text(s.into_owned()),
            PropValueWire::Number(n) => PropValue::Number(n),
            PropValueWire::Bool(b) => PropValue::Bool(b),
        })
    }
}

impl fmt::Display for PropValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PropValue::Text(s) => f.write_str(s),
            PropValue::Number(n) => write!(f, "{n}"),
            PropValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// An event's custom properties (bounded: [`MAX_PROPERTIES`] keys, keys of at most
/// [`MAX_PROPERTY_KEY_BYTES`], text values of at most [`MAX_PROPERTY_VALUE_BYTES`]).
pub type Properties = BTreeMap<String, PropValue>;

/// The most custom properties an event may carry.
pub const MAX_PROPERTIES: usize = 20;
/// The longest property key, in bytes.
pub const MAX_PROPERTY_KEY_BYTES: usize = 40;
/// The longest text property value, in bytes.
pub const MAX_PROPERTY_VALUE_BYTES: usize = 256;
/// The longest session id, order id, currency-free short text (a query, a campaign), in bytes.
pub const MAX_SHORT_BYTES: usize = 256;
/// The most lines an order may have.
pub const MAX_ORDER_ITEMS: usize = 100;
/// The largest quantity of one product in one event.
pub const MAX_QUANTITY: u32 = 10_000;

/// What an event says beyond a page view. Absent (not merely empty) on the page views of logs
/// that carry nothing else, so those cost nothing more than before.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct EventDetail {
    /// The client's session id: wins over the 30-minute rule when sent.
    pub session_id: Option<String>,
    /// The page that linked here (`document.referrer`).
    pub referrer: Option<String>,
    /// The page's title.
    pub page_title: Option<String>,
    /// Campaign parameters, as given (enrichment reads them from the URL when absent).
    pub utm: Option<Utm>,
    /// The product the event is about.
    pub product: Option<EventProduct>,
    /// The order (`purchase`).
    pub order: Option<Order>,
    /// What was searched (`search`).
    pub query: Option<String>,
    /// Custom properties.
    pub properties: Properties,
}

impl EventDetail {
    /// Whether it says nothing.
    pub fn is_empty(&self) -> bool {
        *self == EventDetail::default()
    }

    /// The product id it names, if any.
    pub fn product_id(&self) -> Option<&str> {
        self.product.as_ref()?.id.as_deref()
    }
}

/// `detail` with the campaign parameters of `url` filled in where the sender gave none.
pub fn with_url_utm(url: &str, detail: Option<Box<EventDetail>>) -> Option<Box<EventDetail>> {
    if detail.as_ref().is_some_and(|d| d.utm.is_some()) {
        return detail;
    }
    let Some(utm) = Utm::from_url(url) else {
        return detail;
    };
    let mut detail = detail.unwrap_or_default();
    detail.utm = Some(utm);
    Some(detail)
}

/// Why an event's type or detail is refused. Nothing is truncated: an event over a limit is
/// rejected (collector) or dead-lettered (logs) with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEvent {
    /// A custom type that is not a short identifier.
    #[error(
        "event type {0:?} is neither a built-in type (page_view, add_to_cart, remove_from_cart, \
         begin_checkout, purchase, search) nor a custom name (a lower-case letter, then \
         lower-case letters, digits and _, at most 40 bytes)"
    )]
    TypeName(String),
    /// A field the type needs is missing.
    #[error("a {event} event needs {what}")]
    Missing {
        /// The event's type.
        event: String,
        /// What it needs.
        what: &'static str,
    },
    /// A text over its limit.
    #[error("field {field} is {len} bytes long, more than the limit of {limit}")]
    TooLong {
        /// Which field.
        field: String,
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A number out of its range.
    #[error("field {field} is {value}, {rule}")]
    OutOfRange {
        /// Which field.
        field: &'static str,
        /// Its value.
        value: String,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// Not a currency code.
    #[error("currency {0:?} is not an ISO 4217 code (three capital letters, like EUR)")]
    Currency(String),
    /// Too many properties or order lines.
    #[error("{field} has {count} entries, more than the limit of {limit}")]
    TooMany {
        /// Which field.
        field: &'static str,
        /// How many it has.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A property key that is not an identifier.
    #[error(
        "property key {0:?} must be 1 to 40 bytes of letters, digits, _ and - (starting with a letter)"
    )]
    PropertyKey(String),
}

/// The custom event that links its visitor to a user of the users lookup: `identify` with the
/// user's id as its property `user_id` (what Segment's `identify` call becomes). Enrichment keeps
/// the link and gives the visitor's later events that user's demographics; the event itself goes
/// no further.
pub const IDENTIFY: &str = "identify";

/// The user an `identify` event links its visitor to (`None` for every other event).
pub fn identified_user<'a>(event: &EventType, detail: Option<&'a EventDetail>) -> Option<&'a str> {
    if event.as_str() != IDENTIFY {
        return None;
    }
    match detail?.properties.get("user_id")? {
        PropValue::Text(user) if !user.trim().is_empty() => Some(user.trim()),
        _ => None,
    }
}

/// Checks an event's detail against its type's needs and the limits.
pub fn validate(event: &EventType, detail: Option<&EventDetail>) -> Result<(), InvalidEvent> {
    if detail.is_none() && event.is_page_view() {
        return Ok(());
    }
    let missing = |what| InvalidEvent::Missing {
        event: event.as_str().to_owned(),
        what,
    };
    let has_product = detail.and_then(EventDetail::product_id).is_some();
    match event {
        EventType::AddToCart | EventType::RemoveFromCart if !has_product => {
            return Err(missing("product.id"));
        }
        EventType::Purchase if detail.and_then(|d| d.order.as_ref()).is_none() => {
            return Err(missing("an order (order.id and order.revenue)"));
        }
        EventType::Search
            if detail
                .and_then(|d| d.query.as_deref())
                .is_none_or(|q| q.trim().is_empty()) =>
        {
            return Err(missing("a query"));
        }
        EventType::Custom(name)
            if &**name == IDENTIFY && identified_user(event, detail).is_none() =>
        {
            return Err(missing("properties.user_id (the user's id, a text)"));
        }
        _ => {}
    }
    let Some(detail) = detail else {
        return Ok(());
    };
    let text = |field: &str, value: Option<&str>, limit: usize| match value {
        Some(v) if v.len() > limit => Err(InvalidEvent::TooLong {
            field: field.to_owned(),
            len: v.len(),
            limit,
        }),
        _ => Ok(()),
    };
    text("session_id", detail.session_id.as_deref(), MAX_SHORT_BYTES)?;
    let long = crate::click::MAX_FIELD_BYTES;
    text("referrer", detail.referrer.as_deref(), long)?;
    text("page_title", detail.page_title.as_deref(), long)?;
    text("query", detail.query.as_deref(), MAX_SHORT_BYTES)?;
    if let Some(utm) = &detail.utm {
        for (field, value) in utm.fields() {
            text(field, value.as_deref(), MAX_SHORT_BYTES)?;
        }
    }
    let mut currencies = Vec::new();
    if let Some(product) = &detail.product {
        text("product.id", product.id.as_deref(), MAX_SHORT_BYTES)?;
        text(
            "product.category",
            product.category.as_deref(),
            MAX_SHORT_BYTES,
        )?;
        check_price("product.price", product.price)?;
        check_quantity("product.quantity", product.quantity)?;
        currencies.extend(product.currency.as_deref());
    }
    if let Some(order) = &detail.order {
        if order.id.trim().is_empty() {
            return Err(missing("a non-empty order.id"));
        }
        text("order.id", Some(&order.id), MAX_SHORT_BYTES)?;
        check_price("order.revenue", Some(order.revenue))?;
        currencies.extend(order.currency.as_deref());
        if order.items.len() > MAX_ORDER_ITEMS {
            return Err(InvalidEvent::TooMany {
                field: "order.items",
                count: order.items.len(),
                limit: MAX_ORDER_ITEMS,
            });
        }
        for item in &order.items {
            if item.product_id.trim().is_empty() {
                return Err(missing("a product_id on every order line"));
            }
            text(
                "order.items.product_id",
                Some(&item.product_id),
                MAX_SHORT_BYTES,
            )?;
            text(
                "order.items.category",
                item.category.as_deref(),
                MAX_SHORT_BYTES,
            )?;
            check_price("order.items.price", item.price)?;
            check_quantity("order.items.quantity", Some(item.quantity))?;
        }
    }
    for currency in currencies {
        if !(currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_uppercase())) {
            let shown: String = currency.chars().take(16).collect();
            return Err(InvalidEvent::Currency(shown));
        }
    }
    if detail.properties.len() > MAX_PROPERTIES {
        return Err(InvalidEvent::TooMany {
            field: "properties",
            count: detail.properties.len(),
            limit: MAX_PROPERTIES,
        });
    }
    for (key, value) in &detail.properties {
        let identifier = key.len() <= MAX_PROPERTY_KEY_BYTES
            && key.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !identifier {
            let shown: String = key.chars().take(48).collect();
            return Err(InvalidEvent::PropertyKey(shown));
        }
        match value {
            PropValue::Text(text) if text.len() > MAX_PROPERTY_VALUE_BYTES => {
                return Err(InvalidEvent::TooLong {
                    field: format!("properties.{key}"),
                    len: text.len(),
                    limit: MAX_PROPERTY_VALUE_BYTES,
                });
            }
            PropValue::Number(n) if !n.is_finite() => {
                return Err(InvalidEvent::OutOfRange {
                    field: "properties",
                    value: n.to_string(),
                    rule: "not a finite number",
                });
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_price(field: &'static str, price: Option<f64>) -> Result<(), InvalidEvent> {
    match price {
        Some(p) if !(p.is_finite() && (0.0..1e12).contains(&p)) => Err(InvalidEvent::OutOfRange {
            field,
            value: p.to_string(),
            rule: "not an amount from 0 to 10^12",
        }),
        _ => Ok(()),
    }
}

fn check_quantity(field: &'static str, quantity: Option<u32>) -> Result<(), InvalidEvent> {
    match quantity {
        Some(q) if !(1..=MAX_QUANTITY).contains(&q) => Err(InvalidEvent::OutOfRange {
            field,
            value: q.to_string(),
            rule: "not a quantity from 1 to 10000",
        }),
        _ => Ok(()),
    }
}

/// The largest index ≤ `max` that is a char boundary of `s`.
pub fn floor_char_boundary(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    (0..=max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_and_custom_type_names_parse_and_bad_ones_are_refused() {
        for t in EventType::BUILT_IN {
            assert_eq!(EventType::parse(t.as_str()).unwrap(), t);
        }
        assert_eq!(
            EventType::parse("newsletter_signup").unwrap(),
            EventType::Custom(Arc::from("newsletter_signup"))
        );
        for bad in [
            "",
            "Newsletter",
            "1st",
            "sign up",
            "a-b",
            &"x".repeat(41),
            "é",
        ] {
            assert!(
                matches!(EventType::parse(bad), Err(InvalidEvent::TypeName(_))),
                "{bad:?}"
            );
        }
        assert!(EventType::parse(&"x".repeat(40)).is_ok());
    }

    #[test]
    fn types_are_names_in_json_and_small_in_the_binary_encoding() {
        let custom = EventType::parse("wishlist_add").unwrap();
        for t in EventType::BUILT_IN.into_iter().chain([custom]) {
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
            assert_eq!(serde_json::from_str::<EventType>(&json).unwrap(), t);
            let bytes = crate::codec::encode(&t);
            assert_eq!(crate::codec::decode::<EventType>(&bytes).unwrap(), t);
        }
        assert_eq!(crate::codec::encode(&EventType::PageView).len(), 1);
        assert!(serde_json::from_str::<EventType>("\"Bad Name\"").is_err());
    }

    #[test]
    fn utm_parameters_come_from_the_query_decoded() {
        let utm = Utm::from_url(
            "https://shop.example/p/VD1?utm_source=news+letter&utm_medium=email&utm_campaign=%C3%A9t%C3%A9&x=1#top",
        )
        .unwrap();
        assert_eq!(utm.source.as_deref(), Some("news letter"));
        assert_eq!(utm.medium.as_deref(), Some("email"));
        assert_eq!(utm.campaign.as_deref(), Some("été"));
        assert_eq!(utm.term, None);
        assert_eq!(Utm::from_url("https://shop.example/p/VD1?x=1"), None);
        assert_eq!(Utm::from_url("https://shop.example/p/VD1"), None);
        assert_eq!(Utm::from_url("https://s/?utm_source="), None);
        let long = format!("https://s/?utm_source={}", "é".repeat(200));
        let source = Utm::from_url(&long).unwrap().source.unwrap();
        assert!(source.len() <= MAX_SHORT_BYTES && source.starts_with('é'));
    }

    fn detail() -> EventDetail {
        EventDetail::default()
    }

    #[test]
    fn each_type_needs_its_fields() {
        assert!(validate(&EventType::PageView, None).is_ok());
        assert!(validate(&EventType::BeginCheckout, None).is_ok());
        let err = validate(&EventType::AddToCart, None).unwrap_err();
        assert_eq!(err.to_string(), "a add_to_cart event needs product.id");
        let with_product = EventDetail {
            product: Some(EventProduct {
                id: Some("VD1".into()),
                price: Some(19.9),
                quantity: Some(2),
                currency: Some("EUR".into()),
                ..EventProduct::default()
            }),
            ..detail()
        };
        assert!(validate(&EventType::AddToCart, Some(&with_product)).is_ok());
        assert!(validate(&EventType::Purchase, Some(&with_product)).is_err());
        assert!(validate(&EventType::Search, Some(&detail())).is_err());
        let search = EventDetail {
            query: Some("red shoes".into()),
            ..detail()
        };
        assert!(validate(&EventType::Search, Some(&search)).is_ok());
        let order = EventDetail {
            order: Some(Order {
                id: "o-1".into(),
                revenue: 39.8,
                currency: Some("EUR".into()),
                items: vec![LineItem {
                    product_id: "VD1".into(),
                    category: None,
                    price: Some(19.9),
                    quantity: 2,
                }],
            }),
            ..detail()
        };
        assert!(validate(&EventType::Purchase, Some(&order)).is_ok());
    }

    #[test]
    fn limits_reject_and_never_truncate() {
        let mut d = detail();
        d.properties = (0..=MAX_PROPERTIES)
            .map(|i| (format!("k{i}"), PropValue::Bool(true)))
            .collect();
        assert!(matches!(
            validate(&EventType::PageView, Some(&d)),
            Err(InvalidEvent::TooMany {
                field: "properties",
                count: 21,
                ..
            })
        ));
        d.properties = [("plan".to_owned(), PropValue::Text("x".repeat(257)))].into();
        assert_eq!(
            validate(&EventType::PageView, Some(&d))
                .unwrap_err()
                .to_string(),
            "field properties.plan is 257 bytes long, more than the limit of 256"
        );
        d.properties = [("bad key".to_owned(), PropValue::Number(1.0))].into();
        assert!(matches!(
            validate(&EventType::PageView, Some(&d)),
            Err(InvalidEvent::PropertyKey(_))
        ));
        let priced = |price, quantity, currency: &str| EventDetail {
            product: Some(EventProduct {
                id: Some("VD1".into()),
                price: Some(price),
                quantity: Some(quantity),
                currency: Some(currency.into()),
                ..EventProduct::default()
            }),
            ..detail()
        };
        assert!(validate(&EventType::AddToCart, Some(&priced(-1.0, 1, "EUR"))).is_err());
        assert!(validate(&EventType::AddToCart, Some(&priced(f64::NAN, 1, "EUR"))).is_err());
        assert!(validate(&EventType::AddToCart, Some(&priced(1.0, 0, "EUR"))).is_err());
        assert!(
            validate(
                &EventType::AddToCart,
                Some(&priced(1.0, MAX_QUANTITY + 1, "EUR"))
            )
            .is_err()
        );
        assert!(matches!(
            validate(&EventType::AddToCart, Some(&priced(1.0, 1, "eur"))),
            Err(InvalidEvent::Currency(_))
        ));
        let long_query = EventDetail {
            query: Some("q".repeat(MAX_SHORT_BYTES + 1)),
            ..detail()
        };
        assert!(matches!(
            validate(&EventType::Search, Some(&long_query)),
            Err(InvalidEvent::TooLong { .. })
        ));
    }

    #[test]
    fn property_values_are_bare_in_json_and_tagged_in_the_binary_encoding() {
        let props: Properties = [
            ("plan".to_owned(), PropValue::Text("gold".into())),
            ("seats".to_owned(), PropValue::Number(3.0)),
            ("trial".to_owned(), PropValue::Bool(false)),
        ]
        .into();
        let json = serde_json::to_string(&props).unwrap();
        assert_eq!(json, r#"{"plan":"gold","seats":3.0,"trial":false}"#);
        assert_eq!(serde_json::from_str::<Properties>(&json).unwrap(), props);
        let bytes = crate::codec::encode(&props);
        assert_eq!(crate::codec::decode::<Properties>(&bytes).unwrap(), props);
        assert!(serde_json::from_str::<Properties>(r#"{"a":[1]}"#).is_err());
        assert!(serde_json::from_str::<Properties>(r#"{"a":null}"#).is_err());
    }
}
