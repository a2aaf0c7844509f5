//! The records that flow through Clickpulse's topics.
//!
//! A [`Click`] is one page view as it arrives, from the replayed log or from the live collector
//! (its JSON form is the documented JSON-lines click format, see `docs/click-format.md`). An
//! [`EnrichedClick`] is the same view after the enrichment stage added what the lookups and the
//! request tell about it.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

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

/// One page view as it enters the pipeline (topic `click-data`).
///
/// The replayed log fills `city`, `country` and `region` from its own columns; a live click may
/// carry `gender` and `age`, which then override the lookups (as the original demo shop did).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Click {
    /// Event time, unix milliseconds (UTC).
    pub ts_ms: i64,
    /// Visitor id (the log's SWID without braces, or the live visitor id).
    pub visitor: String,
    /// The page's URL; its last path part is the product id.
    pub url: String,
    /// Client IP address, if known.
    #[serde(default)]
    pub ip: String,
    /// The browser's user agent, if known.
    #[serde(default)]
    pub user_agent: String,
    /// City, as the source knows it.
    #[serde(default)]
    pub city: Option<String>,
    /// Country, lower-case ISO 3166-1 alpha-3 (`usa`), as the source knows it.
    #[serde(default)]
    pub country: Option<String>,
    /// State or region, as the source knows it.
    #[serde(default)]
    pub region: Option<String>,
    /// Gender supplied by a live event; overrides the lookups.
    #[serde(default)]
    pub gender: Option<Gender>,
    /// Age supplied by a live event; overrides the birth date in the lookups.
    #[serde(default)]
    pub age: Option<u32>,
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
        ..Click::new(ts_ms, visitor, "http://www.acme.com/SH5/VD1")
    }
}

/// A [`Click`] whose text is borrowed: from a log row being parsed, or from a
/// [`ClickLog`](crate::click_log::ClickLog)'s interned strings. Readers hand these out so a
/// click is copied only where it is kept. It serializes exactly as the [`Click`] it borrows
/// (same fields, same order), so a replay encodes it without copying it first.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
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
        }
    }

    /// Checks what every source must guarantee before a click is published.
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
    /// Product id: the URL's last path part, `home` for the home page.
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
        }
    }
}
