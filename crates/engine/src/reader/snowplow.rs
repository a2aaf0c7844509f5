//! Snowplow enriched events: the 131-field TSV Snowplow's enrich writes (the field order of
//! Snowplow's Scala Analytics SDK), one event per line, read as a log (`demo --log`,
//! `backtest --log`) by a shop whose Snowplow pipeline already runs.
//!
//! What is mapped is what the tracker-protocol endpoints map (`docs/sources/snowplow.md`), from
//! the enriched columns: the event time is `derived_tstamp` (else `collector_tstamp`); the
//! visitor is `user_id`, else `sp-` and `domain_userid` (else `network_userid`); the page,
//! referrer, title, session, campaign (`mkt_*`), address, user agent and geography columns; the
//! event from `event`, `se_*`, `tr_*`, `unstruct_event` and `contexts`. Page pings and
//! transaction items are skipped and counted ([`EnrichedReader::ignored`]); a line that is not
//! an enriched event becomes a dead letter with the reason.

use std::collections::BTreeMap;
use std::io::BufRead;

use serde_json::Value;

use super::{DeadLetter, Lines, LogRecord, ReaderError};
use crate::click::{Click, ClickRef};
use crate::event::{EventDetail, Utm, with_url_utm};
use crate::snowplow::{Mapped, context_entities, map_event};

/// Fields of an enriched event.
pub const FIELDS: usize = 131;

const APP_ID: usize = 0;
const COLLECTOR_TSTAMP: usize = 3;
const EVENT: usize = 5;
const USER_ID: usize = 12;
const USER_IPADDRESS: usize = 13;
const DOMAIN_USERID: usize = 15;
const NETWORK_USERID: usize = 17;
const GEO_COUNTRY: usize = 18;
const GEO_REGION: usize = 19;
const GEO_CITY: usize = 20;
const PAGE_URL: usize = 29;
const PAGE_TITLE: usize = 30;
const PAGE_REFERRER: usize = 31;
const MKT_MEDIUM: usize = 47;
const MKT_SOURCE: usize = 48;
const MKT_TERM: usize = 49;
const MKT_CONTENT: usize = 50;
const MKT_CAMPAIGN: usize = 51;
const CONTEXTS: usize = 52;
const UNSTRUCT_EVENT: usize = 58;
const USERAGENT: usize = 77;
const DOMAIN_SESSIONID: usize = 123;
const DERIVED_TSTAMP: usize = 124;

/// The enriched column of a tracker-protocol field `map_event` asks for.
fn column_of(field: &str) -> Option<usize> {
    Some(match field {
        "se_ca" => 53,
        "se_ac" => 54,
        "se_la" => 55,
        "se_pr" => 56,
        "se_va" => 57,
        "tr_id" => 59,
        "tr_tt" => 61,
        "tr_cu" => 108,
        _ => return None,
    })
}

/// Whether `first_line` is an enriched event (the format sniffer asks): 131 fields, the fourth
/// (`collector_tstamp`) a timestamp.
pub fn looks_enriched(first_line: &[u8]) -> bool {
    let fields: Vec<&[u8]> = first_line.split(|b| *b == b'\t').collect();
    fields.len() == FIELDS
        && std::str::from_utf8(fields[COLLECTOR_TSTAMP])
            .ok()
            .and_then(timestamp_ms)
            .is_some()
}

/// `2013-11-26 00:02:05.123` (or without the milliseconds; UTC) as unix milliseconds.
fn timestamp_ms(text: &str) -> Option<i64> {
    chrono::NaiveDateTime::parse_from_str(text.trim(), "%Y-%m-%d %H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc().timestamp_millis())
}

/// Streaming reader for enriched events.
pub struct EnrichedReader<R> {
    lines: Lines<R>,
    ignored: BTreeMap<&'static str, u64>,
}

impl<R: BufRead> EnrichedReader<R> {
    /// Reads `inner`, naming it `name` in dead letters and errors.
    pub fn new(name: &str, inner: R) -> Self {
        EnrichedReader {
            lines: Lines::new(name, inner),
            ignored: BTreeMap::new(),
        }
    }

    /// The events skipped so far, by what they were (`page_ping`, `transaction_item`, ...).
    pub fn ignored(&self) -> &BTreeMap<&'static str, u64> {
        &self.ignored
    }

    /// Reads the rest: each event handed to `on_click`, each bad line to `on_malformed`. Only an
    /// I/O error stops it.
    pub fn read_all(
        &mut self,
        mut on_click: impl FnMut(ClickRef<'_>),
        mut on_malformed: impl FnMut(DeadLetter),
    ) -> Result<(), ReaderError> {
        while let Some(record) = self.next_record() {
            match record? {
                LogRecord::Click(click) => on_click(click.borrowed()),
                LogRecord::Malformed(letter) => on_malformed(letter),
            }
        }
        Ok(())
    }

    fn next_record(&mut self) -> Option<Result<LogRecord, ReaderError>> {
        loop {
            let line = match self.lines.next_line()? {
                Ok(line) => line,
                Err(e) => return Some(Err(e)),
            };
            if line.bytes.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let record = match parse_event(line.bytes) {
                Ok(Some(click)) => LogRecord::Click(click),
                Ok(None) => continue,
                Err(Skip::Ignored(what)) => {
                    *self.ignored.entry(what).or_default() += 1;
                    continue;
                }
                Err(Skip::Bad(reason)) => LogRecord::Malformed(DeadLetter::new(
                    line.source,
                    line.number,
                    reason,
                    line.bytes,
                )),
            };
            return Some(Ok(record));
        }
    }
}

impl<R: BufRead> Iterator for EnrichedReader<R> {
    type Item = Result<LogRecord, ReaderError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_record()
    }
}

/// One enriched event on its own (a record of a Snowplow pipeline's enriched stream).
#[derive(Debug, Clone, PartialEq)]
pub enum EnrichedLine {
    /// An event kept, as a click.
    Click(Box<Click>),
    /// An event not kept, counted by what it was (`page_ping`, `transaction_item`, …).
    Ignored(&'static str),
    /// Not an enriched event: why.
    Bad(String),
}

/// Maps one enriched event line (its trailing newline optional), as the log reader does.
pub fn parse_line(bytes: &[u8]) -> EnrichedLine {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    match parse_event(bytes) {
        Ok(Some(click)) => EnrichedLine::Click(Box::new(click)),
        Ok(None) => EnrichedLine::Ignored("empty"),
        Err(Skip::Ignored(what)) => EnrichedLine::Ignored(what),
        Err(Skip::Bad(reason)) => EnrichedLine::Bad(reason),
    }
}

enum Skip {
    Ignored(&'static str),
    Bad(String),
}

impl From<String> for Skip {
    fn from(reason: String) -> Self {
        Skip::Bad(reason)
    }
}

impl From<&str> for Skip {
    fn from(reason: &str) -> Self {
        Skip::Bad(reason.to_owned())
    }
}

/// One enriched event as a click; `Ok(None)` never (kept for blank-like rows), `Skip` for what
/// is not kept.
fn parse_event(bytes: &[u8]) -> Result<Option<Click>, Skip> {
    let text = simdutf8::basic::from_utf8(bytes).map_err(|_| "the line is not UTF-8")?;
    let columns: Vec<&str> = text.split('\t').collect();
    if columns.len() != FIELDS {
        return Err(Skip::Bad(format!(
            "{} fields; a Snowplow enriched event has {FIELDS}",
            columns.len()
        )));
    }
    let get = |i: usize| Some(columns[i].trim()).filter(|v| !v.is_empty());
    let kind = match get(EVENT) {
        Some("page_view") => "pv",
        Some("page_ping") => "pp",
        Some("struct") => "se",
        Some("unstruct") => "ue",
        Some("transaction") => "tr",
        Some("transaction_item") => "ti",
        Some(other) => {
            return Err(Skip::Bad(format!(
                "event {:?} is not page_view, page_ping, struct, unstruct, transaction or transaction_item",
                other.chars().take(40).collect::<String>()
            )));
        }
        None => return Err("no `event`".into()),
    };
    let ts_ms = get(DERIVED_TSTAMP)
        .or_else(|| get(COLLECTOR_TSTAMP))
        .and_then(timestamp_ms)
        .ok_or("no valid derived_tstamp or collector_tstamp (yyyy-MM-dd HH:mm:ss.SSS)")?;
    let json = |i: usize, what: &str| -> Result<Option<Value>, String> {
        get(i)
            .map(|t| serde_json::from_str(t).map_err(|e| format!("{what} is not JSON: {e}")))
            .transpose()
    };
    let contexts = json(CONTEXTS, "contexts")?;
    let entities = contexts
        .as_ref()
        .map(context_entities)
        .transpose()?
        .unwrap_or_default();
    let unstruct = json(UNSTRUCT_EVENT, "unstruct_event")?;
    let utm = Utm {
        source: get(MKT_SOURCE).map(str::to_owned),
        medium: get(MKT_MEDIUM).map(str::to_owned),
        campaign: get(MKT_CAMPAIGN).map(str::to_owned),
        term: get(MKT_TERM).map(str::to_owned),
        content: get(MKT_CONTENT).map(str::to_owned),
    };
    let mut detail = EventDetail {
        session_id: get(DOMAIN_SESSIONID).map(str::to_owned),
        referrer: get(PAGE_REFERRER).map(str::to_owned),
        page_title: get(PAGE_TITLE).map(str::to_owned),
        utm: (utm != Utm::default()).then_some(utm),
        ..EventDetail::default()
    };
    let field = |name: &str| column_of(name).and_then(get).map(str::to_owned);
    let event = match map_event(kind, &field, unstruct.as_ref(), &entities, &mut detail)? {
        Mapped::Event(event) => event,
        Mapped::Ignored(what) => return Err(Skip::Ignored(what)),
    };
    let visitor = match (get(USER_ID), get(DOMAIN_USERID), get(NETWORK_USERID)) {
        (Some(user), _, _) => user.to_owned(),
        (None, Some(duid), _) | (None, None, Some(duid)) => format!("sp-{duid}"),
        (None, None, None) => {
            return Err("no visitor: user_id, domain_userid and network_userid are empty".into());
        }
    };
    let url = match get(PAGE_URL) {
        Some(url) => url.to_owned(),
        None if kind == "pv" => return Err("a page view without page_url".into()),
        None => format!("snowplow://{}/", get(APP_ID).unwrap_or("app")),
    };
    let detail = (!detail.is_empty()).then(|| Box::new(detail));
    let click = Click {
        ts_ms,
        visitor,
        detail: with_url_utm(&url, detail),
        url,
        ip: get(USER_IPADDRESS).unwrap_or_default().to_owned(),
        user_agent: get(USERAGENT).unwrap_or_default().to_owned(),
        city: get(GEO_CITY).map(str::to_owned),
        country: get(GEO_COUNTRY).and_then(crate::enrich::alpha2_to_alpha3),
        region: get(GEO_REGION).map(str::to_owned),
        gender: None,
        age: None,
        event,
    };
    click.validate().map_err(|e| e.to_string())?;
    Ok(Some(click))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventType;

    /// An enriched event with `set` columns (index, value), the others empty.
    fn row(set: &[(usize, &str)]) -> String {
        let mut columns = vec![""; FIELDS];
        for (i, v) in set {
            columns[*i] = v;
        }
        columns.join("\t")
    }

    fn read(lines: &[String]) -> (Vec<LogRecord>, BTreeMap<&'static str, u64>) {
        let text = lines.join("\n");
        let mut reader = EnrichedReader::new("e.tsv", text.as_bytes());
        let records = (&mut reader).map(Result::unwrap).collect();
        (records, reader.ignored().clone())
    }

    const CART: &str = r#"{"schema":"iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0","data":{"schema":"iglu:com.snowplowanalytics.snowplow/add_to_cart/jsonschema/1-0-0","data":{"sku":"VD55177927","quantity":2,"unitPrice":59.9,"currency":"EUR"}}}"#;

    #[test]
    fn page_views_carts_and_orders_with_their_columns() {
        let view = row(&[
            (0, "shop"),
            (3, "2013-11-26 00:02:05.885"),
            (5, "page_view"),
            (13, "203.0.113.9"),
            (15, "d-1"),
            (18, "US"),
            (20, "Dallas"),
            (29, "http://www.acme.com/SH55126545/VD55177927"),
            (31, "https://www.google.com/"),
            (48, "news"),
            (77, "Mozilla/5.0"),
            (123, "s-1"),
            (124, "2013-11-26 00:02:05.800"),
        ]);
        let cart = row(&[
            (3, "2013-11-26 00:03:00"),
            (5, "unstruct"),
            (12, "u-7"),
            (58, CART),
        ]);
        let order = row(&[
            (0, "shop"),
            (3, "2013-11-26 00:04:00"),
            (5, "transaction"),
            (15, "d-1"),
            (59, "o-1"),
            (61, "119.8"),
            (108, "EUR"),
        ]);
        let ping = row(&[(3, "2013-11-26 00:04:10"), (5, "page_ping"), (15, "d-1")]);
        let (records, ignored) = read(&[view, cart, order, ping]);
        let clicks: Vec<&Click> = records
            .iter()
            .map(|r| match r {
                LogRecord::Click(c) => c,
                LogRecord::Malformed(m) => panic!("{m:?}"),
            })
            .collect();
        assert_eq!(clicks.len(), 3);
        let v = clicks[0];
        assert_eq!(v.ts_ms, 1_385_424_125_800, "derived_tstamp wins");
        assert_eq!(
            (
                v.visitor.as_str(),
                v.ip.as_str(),
                v.country.as_deref(),
                v.city.as_deref()
            ),
            ("sp-d-1", "203.0.113.9", Some("usa"), Some("Dallas"))
        );
        let d = v.detail.as_ref().unwrap();
        assert_eq!(d.utm.as_ref().unwrap().source.as_deref(), Some("news"));
        assert_eq!(d.session_id.as_deref(), Some("s-1"));
        assert_eq!(clicks[1].event, EventType::AddToCart);
        assert_eq!(clicks[1].visitor, "u-7");
        assert_eq!(
            clicks[1].detail.as_ref().unwrap().product_id(),
            Some("VD55177927")
        );
        assert_eq!(clicks[2].event, EventType::Purchase);
        assert_eq!(clicks[2].url, "snowplow://shop/");
        assert_eq!(ignored, BTreeMap::from([("page_ping", 1)]));
    }

    #[test]
    fn bad_lines_are_dead_letters_with_their_reason() {
        let (records, _) = read(&[
            "a\tb\tc".to_owned(),
            row(&[
                (3, "yesterday"),
                (5, "page_view"),
                (15, "d"),
                (29, "http://x/"),
            ]),
            row(&[
                (3, "2013-11-26 00:02:05"),
                (5, "page_view"),
                (29, "http://x/"),
            ]),
            row(&[
                (3, "2013-11-26 00:02:05"),
                (5, "unstruct"),
                (15, "d"),
                (58, "{not json"),
            ]),
            row(&[(3, "2013-11-26 00:02:05"), (5, "ad_impression"), (15, "d")]),
            row(&[(3, "2013-11-26 00:02:05"), (5, "page_view"), (15, "d")]),
        ]);
        let reasons: Vec<String> = records
            .iter()
            .map(|r| match r {
                LogRecord::Malformed(m) => m.reason.clone(),
                LogRecord::Click(c) => panic!("{c:?}"),
            })
            .collect();
        for (reason, want) in reasons.iter().zip([
            "3 fields; a Snowplow enriched event has 131",
            "no valid derived_tstamp",
            "no visitor",
            "unstruct_event is not JSON",
            "event \"ad_impression\"",
            "without page_url",
        ]) {
            assert!(reason.contains(want), "{reason}");
        }
        assert_eq!(reasons.len(), 6);
    }

    #[test]
    fn the_sniffer_knows_an_enriched_event() {
        assert!(looks_enriched(
            row(&[(3, "2013-11-26 00:02:05")]).as_bytes()
        ));
        assert!(!looks_enriched(row(&[(3, "1330588819")]).as_bytes()));
        assert!(!looks_enriched(b"1330588819\ta\tb"));
    }
}
