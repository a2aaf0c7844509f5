//! The records that flow through Clickpulse's topics.
//!
//! A [`Click`] is one page view as it arrives, from the replayed log or from the live collector
//! (its JSON form is the documented JSON-lines click format, see `docs/click-format.md`). An
//! [`EnrichedClick`] is the same view after the enrichment stage added what the lookups and the
//! request tell about it.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::event::{EventDetail, EventProduct, EventType, InvalidEvent, Order, Properties, Utm};

/// A visitor's gender as the lookups record it: `M`, `F` or `U` (unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum Gender {
    /// Male.
    M,
    /// Female.
    F,
    /// Unknown or not given.
    #[default]
    U,
}

impl FromStr for Gender {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "M" | "m" => Ok(Gender::M),
            "F" | "f" => Ok(Gender::F),
            "U" | "u" | "" => Ok(Gender::U),
            other => Err(format!("gender must be M, F or U, not {other:?}")),
        }
    }
}

impl fmt::Display for Gender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Gender::M => "M",
            Gender::F => "F",
            Gender::U => "U",
        })
    }
}

/// The kind of device a page view came from, classified from its user agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum Device {
    /// Desktop or laptop browser.
    Desktop,
    /// Phone.
    Mobile,
    /// Tablet (iPad, Android without `Mobile`, Kindle).
    Tablet,
    /// Crawler, spider or other robot.
    Bot,
    /// Anything else, including a missing user agent.
    Other,
}

impl Device {
    /// All device classes, in display order.
    pub const ALL: [Device; 5] = [
        Device::Desktop,
        Device::Mobile,
        Device::Tablet,
        Device::Bot,
        Device::Other,
    ];

    /// The class's name as it appears in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Device::Desktop => "Desktop",
            Device::Mobile => "Mobile",
            Device::Tablet => "Tablet",
            Device::Bot => "Bot",
            Device::Other => "Other",
        }
    }
}

/// One event as it enters the pipeline (topic `click-data`): a page view or an interaction
/// ([`EventType`]), with what it says beyond a page view in `detail`.
///
/// The replayed log fills `city`, `country` and `region` from its own columns; a live click may
/// carry `gender` and `age`, which then override the lookups (as the original demo shop did).
///
/// Its JSON form is flat — the documented JSON-lines format, [`ClickJson`] — and its binary
/// form (the embedded and Kafka topics) is its fields in order; [`ClickRef`] serializes the
/// same way.
#[derive(Debug, Clone, PartialEq)]
pub struct Click {
    /// Event time, unix milliseconds (UTC).
    pub ts_ms: i64,
    /// Visitor id (the log's SWID without braces, or the live visitor id).
    pub visitor: String,
    /// The page's URL; for a page view without a product its last path part is the product id.
    pub url: String,
    /// Client IP address, if known.
    pub ip: String,
    /// The browser's user agent, if known.
    pub user_agent: String,
    /// City, as the source knows it.
    pub city: Option<String>,
    /// Country, lower-case ISO 3166-1 alpha-3 (`usa`), as the source knows it.
    pub country: Option<String>,
    /// State or region, as the source knows it.
    pub region: Option<String>,
    /// Gender supplied by a live event; overrides the lookups.
    pub gender: Option<Gender>,
    /// Age supplied by a live event; overrides the birth date in the lookups.
    pub age: Option<u32>,
    /// What the visitor did.
    pub event: EventType,
    /// What the event says beyond a page view (`None` for a bare page view).
    pub detail: Option<Box<EventDetail>>,
}

impl Serialize for Click {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.borrowed().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Click {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        if deserializer.is_human_readable() {
            let json = ClickJson::deserialize(deserializer)?;
            return json.into_click().map_err(D::Error::custom);
        }
        // The binary form: the fields in order, as [`ClickRef`] writes them.
        type Wire = (
            i64,
            String,
            String,
            String,
            String,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<Gender>,
            Option<u32>,
            EventType,
            Option<Box<EventDetail>>,
        );
        let (
            ts_ms,
            visitor,
            url,
            ip,
            user_agent,
            city,
            country,
            region,
            gender,
            age,
            event,
            detail,
        ) = Wire::deserialize(deserializer)?;
        Ok(Click {
            ts_ms,
            visitor,
            url,
            ip,
            user_agent,
            city,
            country,
            region,
            gender,
            age,
            event,
            detail,
        })
    }
}

/// The JSON form of an event: the JSON-lines log format, the collector's body
/// (`docs/click-format.md`). Flat: the event's detail fields sit beside the page view's.
///
/// The page view's texts borrow from the input where it has them unescaped (a log line): a
/// reader hands them on without copying ([`ClickJson::with_log_click`]).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickJson<'a> {
    /// Visitor id (required in logs; optional at the collector).
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub visitor: Option<Cow<'a, str>>,
    /// The collector's identity token for `visitor` (refused in logs).
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub token: Option<Cow<'a, str>>,
    /// The page's URL.
    #[serde(borrow)]
    pub url: Cow<'a, str>,
    /// Event time (required in logs; the collector stamps its own).
    #[serde(default)]
    pub ts_ms: Option<i64>,
    /// Client IP address.
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub ip: Option<Cow<'a, str>>,
    /// User agent.
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub user_agent: Option<Cow<'a, str>>,
    /// City.
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub city: Option<Cow<'a, str>>,
    /// Country.
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub country: Option<Cow<'a, str>>,
    /// State or region.
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub region: Option<Cow<'a, str>>,
    /// Gender.
    #[serde(default)]
    pub gender: Option<Gender>,
    /// Age.
    #[serde(default)]
    pub age: Option<u32>,
    /// The event's type (default `page_view`).
    #[serde(default, rename = "type")]
    pub event: EventType,
    /// The client's session id.
    #[serde(default)]
    pub session_id: Option<String>,
    /// The referring page.
    #[serde(default)]
    pub referrer: Option<String>,
    /// The page's title.
    #[serde(default)]
    pub page_title: Option<String>,
    /// Campaign parameters.
    #[serde(default)]
    pub utm: Option<Utm>,
    /// The product the event is about.
    #[serde(default)]
    pub product: Option<EventProduct>,
    /// The order (`purchase`).
    #[serde(default)]
    pub order: Option<Order>,
    /// The search query (`search`).
    #[serde(default)]
    pub query: Option<String>,
    /// Custom properties.
    #[serde(default)]
    pub properties: Properties,
}

/// An optional text borrowed from the input where it has no escapes: serde borrows a `Cow`
/// only as a field of its own, never inside an `Option`, so the `Option` is taken apart here.
fn borrowed<'de: 'a, 'a, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Cow<'a, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Text<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Text<'a>>::deserialize(deserializer)?.map(|t| t.0))
}

impl<'a> ClickJson<'a> {
    /// The event's type and detail (`None` when it says nothing beyond a page view).
    pub fn take_event(&mut self) -> (EventType, Option<Box<EventDetail>>) {
        let detail = EventDetail {
            session_id: self.session_id.take(),
            referrer: self.referrer.take(),
            page_title: self.page_title.take(),
            utm: self.utm.take(),
            product: self.product.take(),
            order: self.order.take(),
            query: self.query.take(),
            properties: std::mem::take(&mut self.properties),
        };
        let event = std::mem::take(&mut self.event);
        (event, (!detail.is_empty()).then(|| Box::new(detail)))
    }

    /// The time and visitor of a log line: both are required, and `token` is refused.
    fn log_key(&mut self) -> Result<(i64, Cow<'a, str>), String> {
        if self.token.is_some() {
            return Err("field `token` belongs to the collector's requests, not to logs".into());
        }
        let ts_ms = self.ts_ms.ok_or("missing field `ts_ms`")?;
        let visitor = self.visitor.take().ok_or("missing field `visitor`")?;
        Ok((ts_ms, visitor))
    }

    /// The click of a log line: `ts_ms` and `visitor` are required, `token` refused.
    pub fn into_click(mut self) -> Result<Click, String> {
        let (ts_ms, visitor) = self.log_key()?;
        let (event, detail) = self.take_event();
        let detail = crate::event::with_url_utm(&self.url, detail);
        let owned = |s: Option<Cow<'_, str>>| s.map(Cow::into_owned);
        Ok(Click {
            ts_ms,
            visitor: visitor.into_owned(),
            url: self.url.into_owned(),
            ip: owned(self.ip).unwrap_or_default(),
            user_agent: owned(self.user_agent).unwrap_or_default(),
            city: owned(self.city),
            country: owned(self.country),
            region: owned(self.region),
            gender: self.gender,
            age: self.age,
            event,
            detail,
        })
    }

    /// [`ClickJson::into_click`] without copying: the click of a log line, borrowed from it,
    /// checked ([`ClickRef::validate`]) and handed to `f`.
    pub fn with_log_click<R>(mut self, f: impl FnOnce(ClickRef<'_>) -> R) -> Result<R, String> {
        let (ts_ms, visitor) = self.log_key()?;
        let (event, detail) = self.take_event();
        let detail = crate::event::with_url_utm(&self.url, detail);
        let click = ClickRef {
            ts_ms,
            visitor: &visitor,
            url: &self.url,
            ip: self.ip.as_deref().unwrap_or_default(),
            user_agent: self.user_agent.as_deref().unwrap_or_default(),
            city: self.city.as_deref(),
            country: self.country.as_deref(),
            region: self.region.as_deref(),
            gender: self.gender,
            age: self.age,
            event: &event,
            detail: detail.as_deref(),
        };
        click.validate().map_err(|e| e.to_string())?;
        Ok(f(click))
    }
}

/// Why a click cannot enter the pipeline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidClick {
    /// The visitor id is empty.
    #[error("empty visitor id")]
    EmptyVisitor,
    /// The URL is empty.
    #[error("empty url")]
    EmptyUrl,
    /// The timestamp is negative or beyond the year 9999.
    #[error("timestamp {0} ms is out of range")]
    TimestampOutOfRange(i64),
    /// A field is longer than the limit.
    #[error("field {field} is {len} bytes long, more than the limit of {limit}")]
    FieldTooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The age is implausible.
    #[error("age {0} is out of range 0..=130")]
    AgeOutOfRange(u32),
    /// The event's type or detail breaks a rule.
    #[error(transparent)]
    Event(#[from] InvalidEvent),
}

/// The longest field value a click may carry, in bytes.
pub const MAX_FIELD_BYTES: usize = 4096;
/// 9999-12-31T23:59:59Z in unix milliseconds.
const MAX_TS_MS: i64 = 253_402_300_799_000;

impl Click {
    /// A page view with only the required fields set.
    pub fn new(ts_ms: i64, visitor: impl Into<String>, url: impl Into<String>) -> Self {
        Click {
            ts_ms,
            visitor: visitor.into(),
            url: url.into(),
            ip: String::new(),
            user_agent: String::new(),
            city: None,
            country: None,
            region: None,
            gender: None,
            age: None,
            event: EventType::PageView,
            detail: None,
        }
    }

    /// The click with its text borrowed.
    pub fn borrowed(&self) -> ClickRef<'_> {
        ClickRef {
            ts_ms: self.ts_ms,
            visitor: &self.visitor,
            url: &self.url,
            ip: &self.ip,
            user_agent: &self.user_agent,
            city: self.city.as_deref(),
            country: self.country.as_deref(),
            region: self.region.as_deref(),
            gender: self.gender,
            age: self.age,
            event: &self.event,
            detail: self.detail.as_deref(),
        }
    }

    /// Checks what every source must guarantee before a click is published.
    pub fn validate(&self) -> Result<(), InvalidClick> {
        self.borrowed().validate()
    }
}

/// A click with every optional field set, for tests.
#[cfg(test)]
pub(crate) fn full_click_for_tests(ts_ms: i64, visitor: &str) -> Click {
    Click {
        ip: "10.0.0.1".into(),
        user_agent: "Mozilla/5.0".into(),
        city: Some("dallas".into()),
        country: Some("usa".into()),
        region: Some("tx".into()),
        gender: Some(Gender::F),
        age: Some(31),
        event: EventType::AddToCart,
        detail: Some(Box::new(EventDetail {
            session_id: Some("s-1".into()),
            referrer: Some("https://www.google.com/".into()),
            page_title: Some("Shoes".into()),
            utm: Some(Utm {
                source: Some("newsletter".into()),
                ..Utm::default()
            }),
            product: Some(EventProduct {
                id: Some("VD1".into()),
                category: Some("shoes".into()),
                price: Some(59.9),
                quantity: Some(2),
                currency: Some("EUR".into()),
            }),
            order: None,
            query: None,
            properties: [(
                "colour".to_owned(),
                crate::event::PropValue::Text("red".into()),
            )]
            .into(),
        })),
        ..Click::new(ts_ms, visitor, "http://www.acme.com/SH5/VD1")
    }
}

/// A [`Click`] whose text is borrowed: from a log row being parsed, or from a
/// [`ClickLog`](crate::click_log::ClickLog)'s interned strings. Readers hand these out so a
/// click is copied only where it is kept. It serializes exactly as the [`Click`] it borrows
/// (same fields, same order), so a replay encodes it without copying it first.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClickRef<'a> {
    /// Event time, unix milliseconds (UTC).
    pub ts_ms: i64,
    /// Visitor id.
    pub visitor: &'a str,
    /// The page's URL.
    pub url: &'a str,
    /// Client IP address, empty if unknown.
    pub ip: &'a str,
    /// User agent, empty if unknown.
    pub user_agent: &'a str,
    /// City.
    pub city: Option<&'a str>,
    /// Country, lower-case.
    pub country: Option<&'a str>,
    /// State or region.
    pub region: Option<&'a str>,
    /// Gender supplied by a live event.
    pub gender: Option<Gender>,
    /// Age supplied by a live event.
    pub age: Option<u32>,
    /// What the visitor did.
    pub event: &'a EventType,
    /// What the event says beyond a page view.
    pub detail: Option<&'a EventDetail>,
}

/// The JSON form: the page view's fields as they always were, then the type, then the detail's
/// fields flat, each only when present.
#[derive(Serialize)]
struct ClickRefJson<'a> {
    ts_ms: i64,
    visitor: &'a str,
    url: &'a str,
    ip: &'a str,
    user_agent: &'a str,
    city: Option<&'a str>,
    country: Option<&'a str>,
    region: Option<&'a str>,
    gender: Option<Gender>,
    age: Option<u32>,
    #[serde(rename = "type")]
    event: &'a EventType,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    referrer: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    page_title: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    utm: Option<&'a Utm>,
    #[serde(skip_serializing_if = "Option::is_none")]
    product: Option<&'a EventProduct>,
    #[serde(skip_serializing_if = "Option::is_none")]
    order: Option<&'a Order>,
    #[serde(skip_serializing_if = "Option::is_none")]
    query: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    properties: Option<&'a Properties>,
}

impl Serialize for ClickRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let c = self;
        if !serializer.is_human_readable() {
            // The fields in order (postcard writes a tuple as it writes a struct).
            return (
                c.ts_ms,
                c.visitor,
                c.url,
                c.ip,
                c.user_agent,
                c.city,
                c.country,
                c.region,
                c.gender,
                c.age,
                c.event,
                c.detail,
            )
                .serialize(serializer);
        }
        let d = c.detail;
        ClickRefJson {
            ts_ms: c.ts_ms,
            visitor: c.visitor,
            url: c.url,
            ip: c.ip,
            user_agent: c.user_agent,
            city: c.city,
            country: c.country,
            region: c.region,
            gender: c.gender,
            age: c.age,
            event: c.event,
            session_id: d.and_then(|d| d.session_id.as_deref()),
            referrer: d.and_then(|d| d.referrer.as_deref()),
            page_title: d.and_then(|d| d.page_title.as_deref()),
            utm: d.and_then(|d| d.utm.as_ref()),
            product: d.and_then(|d| d.product.as_ref()),
            order: d.and_then(|d| d.order.as_ref()),
            query: d.and_then(|d| d.query.as_deref()),
            properties: d.map(|d| &d.properties).filter(|p| !p.is_empty()),
        }
        .serialize(serializer)
    }
}

impl ClickRef<'_> {
    /// An owned copy.
    pub fn to_click(&self) -> Click {
        Click {
            ts_ms: self.ts_ms,
            visitor: self.visitor.to_owned(),
            url: self.url.to_owned(),
            ip: self.ip.to_owned(),
            user_agent: self.user_agent.to_owned(),
            city: self.city.map(str::to_owned),
            country: self.country.map(str::to_owned),
            region: self.region.map(str::to_owned),
            gender: self.gender,
            age: self.age,
            event: self.event.clone(),
            detail: self.detail.map(|d| Box::new(d.clone())),
        }
    }

    /// Checks what every source must guarantee before a click is published.
    #[inline]
    pub fn validate(&self) -> Result<(), InvalidClick> {
        if self.visitor.trim().is_empty() {
            return Err(InvalidClick::EmptyVisitor);
        }
        if self.url.trim().is_empty() {
            return Err(InvalidClick::EmptyUrl);
        }
        if !(0..=MAX_TS_MS).contains(&self.ts_ms) {
            return Err(InvalidClick::TimestampOutOfRange(self.ts_ms));
        }
        for (field, value) in [
            ("visitor", self.visitor),
            ("url", self.url),
            ("ip", self.ip),
            ("user_agent", self.user_agent),
        ] {
            if value.len() > MAX_FIELD_BYTES {
                return Err(InvalidClick::FieldTooLong {
                    field,
                    len: value.len(),
                    limit: MAX_FIELD_BYTES,
                });
            }
        }
        if let Some(age) = self.age
            && age > 130
        {
            return Err(InvalidClick::AgeOutOfRange(age));
        }
        // A bare page view (every row of a page-view log) has nothing more to check.
        if self.detail.is_some() || !self.event.is_page_view() {
            crate::event::validate(self.event, self.detail)?;
        }
        Ok(())
    }
}

/// A page view after enrichment (topic `enriched-click-data`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrichedClick {
    /// Event time, unix milliseconds (UTC).
    pub ts_ms: i64,
    /// Visitor id.
    pub visitor: String,
    /// Client IP address.
    pub ip: String,
    /// The page's URL.
    pub url: String,
    /// Product id: the event's `product.id`, else the URL's last path part (`home` for the home
    /// page).
    pub product_id: Arc<str>,
    /// Product category, `Unknown` for a product in neither lookup file.
    pub category: Arc<str>,
    /// Product title, `Unknown` for a product in neither lookup file.
    pub title: Arc<str>,
    /// Whether the visitor has a record in the users lookup.
    pub known_visitor: bool,
    /// Gender: from the live event, else the users lookup, else `U`.
    pub gender: Gender,
    /// Age in whole years at the event's UTC date, if a birth date (or live age) is known.
    pub age: Option<u32>,
    /// Lower-case ISO 3166-1 alpha-3 country code, or `unknown`.
    pub country: Arc<str>,
    /// City, if known.
    pub city: Option<String>,
    /// State or region, if known.
    pub region: Option<String>,
    /// Device class from the user agent.
    pub device: Device,
    /// What the visitor did.
    pub event: EventType,
    /// What the event says beyond a page view, as the click carried it.
    pub detail: Option<Box<EventDetail>>,
}

/// An [`EnrichedClick`] whose texts are borrowed: what detection and the aggregation read of a
/// view. A backtest hands them out from its log and its lookups' answers, so a view costs no
/// copy of its visitor, URL, address, city and region (those five allocations, and freeing
/// them, were a twentieth of a backtest); the aggregation copies only what it keeps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EnrichedRef<'a> {
    /// Event time, unix milliseconds (UTC).
    pub ts_ms: i64,
    /// Visitor id.
    pub visitor: &'a str,
    /// Client IP address.
    pub ip: &'a str,
    /// The page's URL.
    pub url: &'a str,
    /// Product id.
    pub product_id: &'a Arc<str>,
    /// Product category.
    pub category: &'a Arc<str>,
    /// Product title.
    pub title: &'a Arc<str>,
    /// Whether the visitor has a record in the users lookup.
    pub known_visitor: bool,
    /// Gender.
    pub gender: Gender,
    /// Age in whole years at the event's UTC date, if known.
    pub age: Option<u32>,
    /// Lower-case ISO 3166-1 alpha-3 country code, or `unknown`.
    pub country: &'a Arc<str>,
    /// City, if known.
    pub city: Option<&'a str>,
    /// State or region, if known.
    pub region: Option<&'a str>,
    /// Device class.
    pub device: Device,
    /// What the visitor did.
    pub event: &'a EventType,
    /// What the event says beyond a page view.
    pub detail: Option<&'a EventDetail>,
    /// The visitor's session as of this event, where detection tracks it (for the patterns'
    /// `session` conditions; `None` elsewhere).
    pub session: Option<crate::session::SessionFacts>,
}

impl EnrichedClick {
    /// The view, borrowed.
    pub fn borrowed(&self) -> EnrichedRef<'_> {
        EnrichedRef {
            ts_ms: self.ts_ms,
            visitor: &self.visitor,
            ip: &self.ip,
            url: &self.url,
            product_id: &self.product_id,
            category: &self.category,
            title: &self.title,
            known_visitor: self.known_visitor,
            gender: self.gender,
            age: self.age,
            country: &self.country,
            city: self.city.as_deref(),
            region: self.region.as_deref(),
            device: self.device,
            event: &self.event,
            detail: self.detail.as_deref(),
            session: None,
        }
    }
}

impl EnrichedRef<'_> {
    /// The view, copied.
    pub fn to_enriched(&self) -> EnrichedClick {
        EnrichedClick {
            ts_ms: self.ts_ms,
            visitor: self.visitor.to_owned(),
            ip: self.ip.to_owned(),
            url: self.url.to_owned(),
            product_id: self.product_id.clone(),
            category: self.category.clone(),
            title: self.title.clone(),
            known_visitor: self.known_visitor,
            gender: self.gender,
            age: self.age,
            country: self.country.clone(),
            city: self.city.map(str::to_owned),
            region: self.region.map(str::to_owned),
            device: self.device,
            event: self.event.clone(),
            detail: self.detail.map(|d| Box::new(d.clone())),
        }
    }
}
