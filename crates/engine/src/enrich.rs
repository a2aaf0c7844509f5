//! Enrichment: what the lookups and the request tell about a page view.
//!
//! [`Enricher::enrich`] is the pure per-event core: product id from the URL, category and title
//! from the catalogue (`Unknown` when the product is in neither file), gender and age (whole
//! years at the event's UTC date) from the users lookup unless the live event supplies them,
//! country as a lower-case ISO 3166-1 alpha-3 code (the log's own column, or derived offline
//! from the IP with the `iptocc` table), and a device class from the user agent (`woothee`).
//! [`EnrichOperator`] wraps it as a stream stage with its counters.

use ahash::AHashMap as HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};

use crate::click::{Click, ClickRef, Device, EnrichedClick, EnrichedRef, Gender};
use crate::click_log::ClickLog;
use crate::event::{EventDetail, EventProduct, EventType};
use crate::lookups::{LookupSource, Product, User, product_id_from_url};
use crate::operator::{Context, Operator, RecordError, RestoreError, StateChanges};
use crate::topics::Topic;

/// Category and title of a product in neither lookup file.
pub const UNKNOWN: &str = "Unknown";
/// Country of a click whose country cannot be determined.
pub const UNKNOWN_COUNTRY: &str = "unknown";

/// How many distinct user agents / strings the caches keep before starting afresh.
const CACHE_LIMIT: usize = 10_000;

/// The pure enrichment core. Holds only caches, never per-visitor state.
pub struct Enricher {
    ua_parser: woothee::parser::Parser,
    devices: HashMap<Box<str>, Device>,
    interned: HashMap<Box<str>, Arc<str>>,
    unknown: Arc<str>,
    /// The last country looked up: most clicks of a shop come from one country.
    last_country: Option<Arc<str>>,
}

/// User agents that make woothee compile the regular expressions of the paths most agents
/// take: the common desktop and phone browsers, a crawler, an HTTP library, and an agent it does
/// not know (its rare-case checks).
const WARM_UP_AGENTS: [&str; 10] = [
    "Mozilla/5.0 (Windows NT 6.1; WOW64) AppleWebKit/535.11 (KHTML, like Gecko) Chrome/17.0.963.79 Safari/535.11",
    "Mozilla/5.0 (Windows NT 6.1; WOW64; rv:10.0.2) Gecko/20100101 Firefox/10.0.2",
    "Mozilla/4.0 (compatible; MSIE 8.0; Windows NT 5.1; Trident/4.0)",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_5_8) AppleWebKit/534.50.2 (KHTML, like Gecko) Version/5.0.6 Safari/533.22.3",
    "Opera/9.80 (Windows NT 6.1; U; en) Presto/2.10.229 Version/11.61",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 5_1 like Mac OS X) AppleWebKit/534.46 (KHTML, like Gecko) Version/5.1 Mobile/9B179 Safari/7534.48.3",
    "Mozilla/5.0 (Linux; U; Android 2.3.6; en-us; Nexus S Build/GRK39F) AppleWebKit/533.1 (KHTML, like Gecko) Version/4.0 Mobile Safari/533.1",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Java/1.6.0_26",
    "clickpulse warm-up",
];

impl Default for Enricher {
    fn default() -> Self {
        Self::new()
    }
}

impl Enricher {
    /// A new enricher with empty caches and its user-agent parser ready: woothee compiles each
    /// of its regular expressions on the first agent that needs it, which is costly, so the
    /// agents in [`WARM_UP_AGENTS`] take every common path once here, rather than the first
    /// views that would.
    pub fn new() -> Self {
        let ua_parser = woothee::parser::Parser::new();
        for agent in WARM_UP_AGENTS {
            ua_parser.parse(agent);
        }
        Enricher {
            ua_parser,
            devices: HashMap::new(),
            interned: HashMap::new(),
            unknown: Arc::from(UNKNOWN),
            last_country: None,
        }
    }

    /// Enriches one click.
    pub fn enrich(&mut self, click: Click, lookups: &impl LookupSource) -> EnrichedClick {
        let derived = self.derive(&click.borrowed(), lookups);
        derived.with_request(Request {
            ts_ms: click.ts_ms,
            visitor: click.visitor,
            ip: click.ip,
            url: click.url,
            city: click.city,
            region: click.region,
            event: click.event,
            detail: click.detail,
        })
    }

    /// Enriches a borrowed click, copying only what the enriched click keeps (a backtest's
    /// clicks are borrowed from its log; copying the user agent and country only to drop them
    /// was a few percent of it).
    pub fn enrich_ref(
        &mut self,
        click: &ClickRef<'_>,
        lookups: &impl LookupSource,
    ) -> EnrichedClick {
        self.derive(click, lookups).with_borrowed_request(click)
    }

    /// Enriches the `i`th click of `memo`'s log, as [`Enricher::enrich_ref`] does, but asks the
    /// lookups, the IP table and the user-agent parser about each distinct text of the log only
    /// once: the answers are kept in `memo` by the log's text ids. Only for lookups that do not
    /// change while the log is enriched (a backtest's).
    pub fn enrich_logged(
        &mut self,
        memo: &mut LogMemo<'_>,
        i: usize,
        lookups: &impl LookupSource,
    ) -> EnrichedClick {
        self.enrich_logged_ref(memo, i, lookups).to_enriched()
    }

    /// [`Enricher::enrich_logged`], borrowed from the log and the memo: nothing is copied.
    pub fn enrich_logged_ref<'m>(
        &mut self,
        memo: &'m mut LogMemo<'_>,
        i: usize,
        lookups: &impl LookupSource,
    ) -> EnrichedRef<'m> {
        let log = memo.log;
        let click = log.get(i);
        let ids = log.text_ids(i);
        // Each answer is asked for once per distinct text and kept in the memo, which the view
        // then borrows.
        let (url, visitor, agent, ip) = (
            ids.url as usize,
            ids.visitor as usize,
            ids.user_agent as usize,
            ids.ip as usize,
        );
        let named = click.detail.and_then(|d| d.product.as_ref());
        match named {
            // An event that names its product: asked about once per event.
            Some(named) if named.id.is_some() => {
                let facts = self.named_product(named, lookups);
                memo.named_products.insert(i, facts);
            }
            _ if memo.products[url].is_none() => {
                memo.products[url] = Some(self.product(click.url, lookups));
            }
            _ => {}
        }
        let user = *memo.users[visitor]
            .get_or_insert_with(|| lookups.user(crate::replay::unlayered(click.visitor)));
        let device = *memo.devices[agent].get_or_insert_with(|| self.device(click.user_agent));
        let column = match (ids.country, click.country) {
            (Some(id), Some(text)) => {
                let id = id as usize;
                if memo.column_countries[id].is_none() {
                    memo.column_countries[id] = Some(self.country_from_column(text));
                }
                Some(id)
            }
            _ => None,
        };
        let from_column = column.filter(|&id| matches!(memo.column_countries[id], Some(Some(_))));
        if from_column.is_none() && memo.ip_countries[ip].is_none() {
            memo.ip_countries[ip] = Some(self.country_from_ip(click.ip));
        }
        let memo: &'m LogMemo<'_> = memo;
        let country = match from_column {
            Some(id) => memo.column_countries[id].as_ref().and_then(Option::as_ref),
            None => memo.ip_countries[ip].as_ref(),
        }
        .expect("the country was found above");
        let product = match memo.named_products.get(&i) {
            Some(named) => named,
            None => memo.products[url].as_ref().expect("found above"),
        };
        let (gender, age) = demographics(&click, user);
        EnrichedRef {
            ts_ms: click.ts_ms,
            visitor: click.visitor,
            ip: click.ip,
            url: click.url,
            product_id: &product.id,
            category: &product.category,
            title: &product.title,
            known_visitor: user.is_some(),
            gender,
            age,
            country,
            city: click.city,
            region: click.region,
            device,
            event: click.event,
            detail: click.detail,
            session: None,
        }
    }

    /// What the lookups and the request add to a click.
    fn derive(&mut self, click: &ClickRef<'_>, lookups: &impl LookupSource) -> Derived {
        let product = match click.detail.and_then(|d| d.product.as_ref()) {
            Some(named) if named.id.is_some() => self.named_product(named, lookups),
            _ => self.product(click.url, lookups),
        };
        // A visitor of an overlaid replay's day `k` (`id~k`) is the log's visitor `id`.
        let user = lookups.user(crate::replay::unlayered(click.visitor));
        let country = self.country(click);
        let device = self.device(click.user_agent);
        Derived::new(click, product, user, country, device)
    }

    /// Id, category and title of the product a URL shows.
    fn product(&mut self, url: &str, lookups: &impl LookupSource) -> ProductFacts {
        let product_id = product_id_from_url(url);
        match lookups.product(product_id) {
            Some(p) => ProductFacts {
                id: p.id.clone(),
                category: p.category.clone(),
                title: p.title.clone(),
            },
            None => ProductFacts {
                id: self.intern(product_id),
                category: self.unknown.clone(),
                title: self.unknown.clone(),
            },
        }
    }

    /// Id, category and title of the product an event names: the sender's id, the sender's
    /// category when given (else the catalogue's), the catalogue's title.
    fn named_product(&mut self, named: &EventProduct, lookups: &impl LookupSource) -> ProductFacts {
        let id = named.id.as_deref().unwrap_or_default();
        let known = lookups.product(id);
        let category = match (&named.category, &known) {
            (Some(given), _) => self.intern(given),
            (None, Some(p)) => p.category.clone(),
            (None, None) => self.unknown.clone(),
        };
        match known {
            Some(p) => ProductFacts {
                id: p.id.clone(),
                category,
                title: p.title.clone(),
            },
            None => ProductFacts {
                id: self.intern(id),
                category,
                title: self.unknown.clone(),
            },
        }
    }

    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(v) = self.interned.get(s) {
            return v.clone();
        }
        if self.interned.len() >= CACHE_LIMIT {
            self.interned.clear();
        }
        let v: Arc<str> = Arc::from(s);
        self.interned.insert(s.into(), v.clone());
        v
    }

    /// The click's country column as a code, else the country of its IP address.
    fn country(&mut self, click: &ClickRef<'_>) -> Arc<str> {
        match click.country.and_then(|c| self.country_from_column(c)) {
            Some(code) => code,
            None => self.country_from_ip(click.ip),
        }
    }

    /// A country column as a lower-case alpha-3 code; `None` if blank or an unknown alpha-2.
    fn country_from_column(&mut self, column: &str) -> Option<Arc<str>> {
        let c = column.trim();
        if c.is_empty() {
            return None;
        }
        if c.len() != 2 && !c.bytes().any(|b| b.is_ascii_uppercase()) {
            // Already a lower-case code (the log reader lower-cases them): no copy.
            if let Some(last) = &self.last_country
                && **last == *c
            {
                return Some(last.clone());
            }
            let code = self.intern(c);
            self.last_country = Some(code.clone());
            return Some(code);
        }
        let code = if c.len() == 2 {
            alpha2_to_alpha3(c)
        } else {
            Some(c.to_ascii_lowercase())
        };
        code.map(|code| self.intern(&code))
    }

    fn country_from_ip(&mut self, ip: &str) -> Arc<str> {
        match country_from_ip(ip) {
            Some(code) => self.intern(&code),
            None => self.intern(UNKNOWN_COUNTRY),
        }
    }

    fn device(&mut self, user_agent: &str) -> Device {
        if let Some(d) = self.devices.get(user_agent) {
            return *d;
        }
        let device = classify_user_agent(&self.ua_parser, user_agent);
        if self.devices.len() >= CACHE_LIMIT {
            self.devices.clear();
        }
        self.devices.insert(user_agent.into(), device);
        device
    }
}

/// What a [`ClickLog`]'s distinct texts were found to mean, by text id (see
/// [`Enricher::enrich_logged`]). Looking a text up again cost a hash of it and a probe per
/// lookup: the user agent, the product's URL, the visitor and the country, a third of enriching
/// a click.
pub struct LogMemo<'a> {
    log: &'a ClickLog,
    /// By URL id.
    products: Vec<Option<ProductFacts>>,
    /// By visitor id: the users record, if any.
    users: Vec<Option<Option<User>>>,
    /// By user-agent id.
    devices: Vec<Option<Device>>,
    /// By place id of a country column: its code, or `None` when the IP address decides.
    column_countries: Vec<Option<Option<Arc<str>>>>,
    /// By IP id.
    ip_countries: Vec<Option<Arc<str>>>,
    /// By click index: the product of each event that names its own.
    named_products: HashMap<usize, ProductFacts>,
}

impl<'a> LogMemo<'a> {
    /// An empty memo for the clicks of `log`.
    pub fn new(log: &'a ClickLog) -> Self {
        fn empty<T>(len: u32) -> Vec<Option<T>> {
            let mut v = Vec::new();
            v.resize_with(len as usize, || None);
            v
        }
        let n = log.distinct_texts();
        LogMemo {
            log,
            products: empty(n.url),
            users: empty(n.visitor),
            devices: empty(n.user_agent),
            column_countries: empty(n.country.unwrap_or(0)),
            ip_countries: empty(n.ip),
            named_products: HashMap::new(),
        }
    }
}

/// A product's id, category and title (`Unknown` for a product in neither lookup file).
#[derive(Clone)]
struct ProductFacts {
    id: Arc<str>,
    category: Arc<str>,
    title: Arc<str>,
}

/// What enrichment derives from a click, before it is joined with the request's own fields.
/// Gender and age: the live event's, else the users record's (the age at the event's UTC date).
fn demographics(click: &ClickRef<'_>, user: Option<User>) -> (Gender, Option<u32>) {
    let gender = click.gender.or(user.map(|u| u.gender)).unwrap_or_default();
    let age = click.age.or_else(|| {
        let birth = user?.birth_date?;
        age_on(birth, event_date(click.ts_ms)?)
    });
    (gender, age)
}

struct Derived {
    product_id: Arc<str>,
    category: Arc<str>,
    title: Arc<str>,
    known_visitor: bool,
    gender: Gender,
    age: Option<u32>,
    country: Arc<str>,
    device: Device,
}

impl Derived {
    /// [`Derived::with_request`], copying the fields it keeps from a borrowed click.
    fn with_borrowed_request(self, click: &ClickRef<'_>) -> EnrichedClick {
        self.with_request(Request {
            ts_ms: click.ts_ms,
            visitor: click.visitor.to_owned(),
            ip: click.ip.to_owned(),
            url: click.url.to_owned(),
            city: click.city.map(str::to_owned),
            region: click.region.map(str::to_owned),
            event: click.event.clone(),
            detail: click.detail.map(|d| Box::new(d.clone())),
        })
    }

    fn new(
        click: &ClickRef<'_>,
        product: ProductFacts,
        user: Option<User>,
        country: Arc<str>,
        device: Device,
    ) -> Self {
        let (gender, age) = demographics(click, user);
        Derived {
            product_id: product.id,
            category: product.category,
            title: product.title,
            known_visitor: user.is_some(),
            gender,
            age,
            country,
            device,
        }
    }

    fn with_request(self, r: Request) -> EnrichedClick {
        EnrichedClick {
            ts_ms: r.ts_ms,
            visitor: r.visitor,
            ip: r.ip,
            url: r.url,
            product_id: self.product_id,
            category: self.category,
            title: self.title,
            known_visitor: self.known_visitor,
            gender: self.gender,
            age: self.age,
            country: self.country,
            city: r.city,
            region: r.region,
            device: self.device,
            event: r.event,
            detail: r.detail,
        }
    }
}

/// What an enriched click keeps of the click as it came.
struct Request {
    ts_ms: i64,
    visitor: String,
    ip: String,
    url: String,
    city: Option<String>,
    region: Option<String>,
    event: EventType,
    detail: Option<Box<EventDetail>>,
}

/// The UTC date of an event time in unix milliseconds.
pub fn event_date(ts_ms: i64) -> Option<NaiveDate> {
    chrono::DateTime::from_timestamp_millis(ts_ms).map(|t| t.date_naive())
}

/// Age in whole years on `date` of someone born on `birth`; `None` if born after `date`.
///
/// A 29 February birthday counts as reached on 1 March in common years.
pub fn age_on(birth: NaiveDate, date: NaiveDate) -> Option<u32> {
    let mut years = date.year() - birth.year();
    if (date.month(), date.day()) < (birth.month(), birth.day()) {
        years -= 1;
    }
    u32::try_from(years).ok()
}

/// Lower-case alpha-3 code for an IP address, from the offline RIR delegation table.
pub fn country_from_ip(ip: &str) -> Option<String> {
    let ip: IpAddr = ip.trim().parse().ok()?;
    alpha2_to_alpha3(iptocc::country_code(ip)?)
}

pub(crate) fn alpha2_to_alpha3(alpha2: &str) -> Option<String> {
    celes::Country::from_alpha2(alpha2)
        .ok()
        .map(|c| c.alpha3.to_ascii_lowercase())
}

/// Classifies a user agent as Desktop, Mobile, Tablet, Bot or Other.
///
/// The device class of one user agent (for a single request; the enrich stage caches its own).
pub fn device_of_user_agent(user_agent: &str) -> Device {
    classify_user_agent(&woothee::parser::Parser::new(), user_agent)
}

/// woothee recognises browsers, crawlers and phones; it files tablets under `smartphone`, so
/// iPads, Kindles and Android devices without `Mobile` in their agent are told apart here.
pub fn classify_user_agent(parser: &woothee::parser::Parser, user_agent: &str) -> Device {
    let ua = user_agent.trim();
    if ua.is_empty() {
        return Device::Other;
    }
    let lower = ua.to_ascii_lowercase();
    let Some(result) = parser.parse(ua) else {
        return if ["bot", "spider", "crawl", "slurp"]
            .iter()
            .any(|w| lower.contains(w))
        {
            Device::Bot
        } else {
            Device::Other
        };
    };
    match result.category {
        "crawler" => Device::Bot,
        "pc" => Device::Desktop,
        "smartphone" | "mobilephone" => {
            let tablet = lower.contains("ipad")
                || lower.contains("tablet")
                || lower.contains("kindle")
                || lower.contains("silk/")
                || (lower.contains("android") && !lower.contains("mobile"));
            if tablet {
                Device::Tablet
            } else {
                Device::Mobile
            }
        }
        _ if ["bot", "spider", "crawl"].iter().any(|w| lower.contains(w)) => Device::Bot,
        _ => Device::Other,
    }
}

/// Counters of the enrichment stage, persisted with its offsets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrichStats {
    /// Clicks enriched.
    pub events: u64,
    /// Clicks whose product is in neither lookup file.
    pub unknown_product_events: u64,
    /// Clicks from visitors with a users record.
    pub known_visitor_events: u64,
}

/// The enrichment stage: `click-data` → `enriched-click-data`.
pub struct EnrichOperator<L> {
    enricher: Enricher,
    lookups: L,
    stats: EnrichStats,
    checkpointed: EnrichStats,
    /// Visitor → the user an `identify` event linked it to: the visitor's later events get that
    /// user's demographics. Checkpointed with the offsets, one state entry per visitor, so a
    /// restart (or, distributed, the worker that takes the partition over) keeps them.
    links: HashMap<String, String>,
    dirty_links: std::collections::HashSet<String>,
}

/// The lookups as a linked visitor sees them: the users lookup asked for its user instead.
struct Linked<'a, L> {
    lookups: &'a L,
    links: &'a HashMap<String, String>,
}

impl<L: LookupSource> LookupSource for Linked<'_, L> {
    fn user(&self, visitor: &str) -> Option<User> {
        let user = self.links.get(visitor).map_or(visitor, String::as_str);
        self.lookups.user(user)
    }

    fn product(&self, product_id: &str) -> Option<Arc<Product>> {
        self.lookups.product(product_id)
    }
}

/// State key prefix of a visitor's link.
const LINK_PREFIX: &str = "link/";

impl<L: LookupSource> EnrichOperator<L> {
    /// A stage reading lookups from `lookups`.
    pub fn new(lookups: L) -> Self {
        EnrichOperator {
            enricher: Enricher::new(),
            lookups,
            stats: EnrichStats::default(),
            checkpointed: EnrichStats::default(),
            links: HashMap::new(),
            dirty_links: std::collections::HashSet::new(),
        }
    }

    /// Links `visitor` to `user` (an `identify` event): its later events get that user's
    /// demographics.
    pub fn link(&mut self, visitor: &str, user: &str) {
        if self.links.get(visitor).map(String::as_str) != Some(user) {
            self.links.insert(visitor.to_owned(), user.to_owned());
            self.dirty_links.insert(visitor.to_owned());
        }
    }

    /// The user `visitor` is linked to, if an `identify` event linked it.
    pub fn linked_user(&self, visitor: &str) -> Option<&str> {
        self.links.get(visitor).map(String::as_str)
    }

    /// The stage's counters.
    pub fn counters(&self) -> EnrichStats {
        self.stats
    }

    /// Enriches one click and counts it.
    pub fn enrich(&mut self, click: Click) -> EnrichedClick {
        let linked = Linked {
            lookups: &self.lookups,
            links: &self.links,
        };
        let enriched = self.enricher.enrich(click, &linked);
        self.count(enriched)
    }

    /// Enriches one borrowed click and counts it (see [`Enricher::enrich_ref`]).
    pub fn enrich_ref(&mut self, click: &ClickRef<'_>) -> EnrichedClick {
        let linked = Linked {
            lookups: &self.lookups,
            links: &self.links,
        };
        let enriched = self.enricher.enrich_ref(click, &linked);
        self.count(enriched)
    }

    /// Enriches the `i`th click of `memo`'s log and counts it (see [`Enricher::enrich_logged`]).
    pub fn enrich_logged(&mut self, memo: &mut LogMemo<'_>, i: usize) -> EnrichedClick {
        self.enrich_logged_ref(memo, i).to_enriched()
    }

    /// [`EnrichOperator::enrich_logged`], borrowed (see [`Enricher::enrich_logged_ref`]).
    pub fn enrich_logged_ref<'m>(
        &mut self,
        memo: &'m mut LogMemo<'_>,
        i: usize,
    ) -> EnrichedRef<'m> {
        let enriched = self.enricher.enrich_logged_ref(memo, i, &self.lookups);
        self.tally(enriched.category, enriched.known_visitor);
        enriched
    }

    fn count(&mut self, enriched: EnrichedClick) -> EnrichedClick {
        self.tally(&enriched.category, enriched.known_visitor);
        enriched
    }

    fn tally(&mut self, category: &str, known_visitor: bool) {
        self.stats.events += 1;
        if category == UNKNOWN {
            self.stats.unknown_product_events += 1;
        }
        if known_visitor {
            self.stats.known_visitor_events += 1;
        }
    }
}

const STATS_KEY: &str = "stats";

/// The leading fields of an encoded [`Click`] (postcard is positional: these are its first
/// three fields, in order), borrowed from the record.
#[derive(Deserialize)]
struct LookupKeys<'a> {
    #[serde(rename = "ts_ms")]
    _ts_ms: i64,
    visitor: &'a str,
    url: &'a str,
}

/// The visitor and URL of an encoded click, without decoding the rest of it; `None` for a
/// record that is not a click (`process_record` then dead-letters it).
fn lookup_keys(record: &[u8]) -> Option<LookupKeys<'_>> {
    postcard::take_from_bytes::<LookupKeys<'_>>(record)
        .ok()
        .map(|(keys, _rest)| keys)
}

impl<L: LookupSource + Send> Operator for EnrichOperator<L> {
    fn name(&self) -> &'static str {
        "enrich"
    }

    fn input_topics(&self) -> Vec<Topic> {
        vec![Topic::ClickData]
    }

    fn process_record(&mut self, value: &[u8], ctx: &mut Context<'_>) -> Result<(), RecordError> {
        let click = crate::codec::decode::<Click>(value)?;
        // An identify event links its visitor and goes no further.
        if let Some(user) = crate::event::identified_user(&click.event, click.detail.as_deref()) {
            let user = user.to_owned();
            self.link(&click.visitor, &user);
            // The batch was prefetched before this link was known: a remote users lookup
            // fetches the user's record now (identify events are rare), so the visitor's next
            // events in this batch find it.
            self.lookups.prefetch(&[user.as_str()], &[]);
            return Ok(());
        }
        let enriched = self.enrich(click);
        ctx.out
            .emit(Topic::EnrichedClickData, &enriched.visitor, &enriched);
        Ok(())
    }

    fn prepare_batch(&mut self, values: &[&[u8]]) {
        // Only the two keys, borrowed from the record: the click itself is decoded once, by
        // `process_record` (decoding it here too cost a tenth of the distributed enrich worker).
        let keys: Vec<LookupKeys<'_>> = values.iter().filter_map(|v| lookup_keys(v)).collect();
        // A linked visitor's record is its user's.
        let visitors: Vec<&str> = keys
            .iter()
            .map(|k| self.links.get(k.visitor).map_or(k.visitor, String::as_str))
            .collect();
        let products: Vec<&str> = keys.iter().map(|k| product_id_from_url(k.url)).collect();
        self.lookups.prefetch(&visitors, &products);
    }

    fn checkpoint(&mut self, changes: &mut StateChanges) {
        for visitor in self.dirty_links.drain() {
            let user = self
                .links
                .get(&visitor)
                .map(|u| serde_json::to_vec(u).expect("a text serializes"));
            changes.push((format!("{LINK_PREFIX}{visitor}"), user));
        }
        if self.stats == self.checkpointed {
            return;
        }
        self.checkpointed = self.stats;
        changes.push((
            STATS_KEY.to_owned(),
            Some(serde_json::to_vec(&self.stats).expect("stats serialize")),
        ));
    }

    fn restore(&mut self, key: &str, value: &[u8]) -> Result<(), RestoreError> {
        if let Some(visitor) = key.strip_prefix(LINK_PREFIX) {
            let user: String = serde_json::from_slice(value).map_err(|e| RestoreError {
                operator: "enrich",
                key: key.to_owned(),
                message: format!("a linked user id is not a JSON text: {e}"),
            })?;
            self.links.insert(visitor.to_owned(), user);
        } else if key == STATS_KEY {
            self.stats = serde_json::from_slice(value).map_err(|e| RestoreError {
                operator: "enrich",
                key: key.to_owned(),
                message: e.to_string(),
            })?;
            self.checkpointed = self.stats;
        }
        Ok(())
    }

    fn stats(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self.stats).expect("stats serialize");
        v["linked_visitors"] = self.links.len().into();
        if let Some(serde_json::Value::Object(cache)) = self.lookups.cache_stats() {
            for (k, x) in cache {
                v[format!("lookup_{k}")] = x;
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::click::Gender;
    use crate::lookups::{Lookups, Product, User};

    #[test]
    fn lookup_keys_read_the_visitor_and_url_of_an_encoded_click() {
        let mut click = Click::new(1_330_588_819_000, "V1", "http://www.acme.com/SH1/VD2");
        click.user_agent = "Mozilla/5.0".into();
        click.country = Some("usa".into());
        click.age = Some(30);
        let record = crate::codec::encode(&click);
        let keys = lookup_keys(&record).expect("a click");
        assert_eq!(
            (keys.visitor, keys.url),
            ("V1", "http://www.acme.com/SH1/VD2")
        );
        assert!(lookup_keys(b"\xff").is_none());
    }

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    fn ts(y: i32, m: u32, d: u32, h: u32) -> i64 {
        date(y, m, d)
            .and_hms_opt(h, 0, 0)
            .unwrap()
            .and_utc()
            .timestamp_millis()
    }

    fn lookups() -> Lookups {
        Lookups::from_parts(
            [
                (
                    "F30".to_owned(),
                    User {
                        gender: Gender::F,
                        birth_date: Some(date(1982, 3, 10)),
                    },
                ),
                (
                    "NODATE".to_owned(),
                    User {
                        gender: Gender::M,
                        birth_date: None,
                    },
                ),
            ],
            [Product {
                id: Arc::from("VD55177927"),
                category: Arc::from("clothing"),
                title: Arc::from("Red Shirt"),
                description: String::new(),
                image: None,
                price: Some(20.0),
            }],
        )
    }

    fn click(visitor: &str, url: &str, ts_ms: i64) -> Click {
        Click {
            ts_ms,
            visitor: visitor.to_owned(),
            url: url.to_owned(),
            ip: "99.46.44.132".to_owned(),
            user_agent:
                "Mozilla/5.0 (Windows NT 6.1; WOW64; rv:10.0.2) Gecko/20100101 Firefox/10.0.2"
                    .to_owned(),
            city: None,
            country: Some("usa".to_owned()),
            region: None,
            gender: None,
            age: None,
            event: crate::event::EventType::PageView,
            detail: None,
        }
    }

    #[test]
    fn age_turns_over_on_the_birthday_in_utc() {
        assert_eq!(age_on(date(1982, 3, 10), date(2012, 3, 9)), Some(29));
        assert_eq!(age_on(date(1982, 3, 10), date(2012, 3, 10)), Some(30));
        assert_eq!(age_on(date(1984, 2, 29), date(2013, 2, 28)), Some(28));
        assert_eq!(age_on(date(1984, 2, 29), date(2013, 3, 1)), Some(29));
        assert_eq!(age_on(date(2013, 1, 1), date(2012, 3, 10)), None);
        // 23:00 on the 9th UTC is still the 9th, whatever the visitor's local time.
        let mut e = Enricher::new();
        let before = e.enrich(
            click(
                "F30",
                "http://www.acme.com/SH1/VD55177927",
                ts(2012, 3, 9, 23),
            ),
            &lookups(),
        );
        let on = e.enrich(
            click(
                "F30",
                "http://www.acme.com/SH1/VD55177927",
                ts(2012, 3, 10, 0),
            ),
            &lookups(),
        );
        assert_eq!((before.age, on.age), (Some(29), Some(30)));
    }

    #[test]
    fn known_and_unknown_visitors_and_products() {
        let mut e = Enricher::new();
        let known = e.enrich(
            click(
                "F30",
                "http://www.acme.com/SH1/VD55177927",
                ts(2012, 3, 1, 8),
            ),
            &lookups(),
        );
        assert_eq!(
            (
                &*known.category,
                &*known.title,
                known.gender,
                known.known_visitor
            ),
            ("clothing", "Red Shirt", Gender::F, true)
        );
        let nodate = e.enrich(
            click("NODATE", "http://www.acme.com/SH1/VD55177927", 0),
            &lookups(),
        );
        assert_eq!(
            (nodate.gender, nodate.age, nodate.known_visitor),
            (Gender::M, None, true)
        );
        let stranger = e.enrich(click("X", "http://www.acme.com/SH1/VD999", 0), &lookups());
        assert_eq!(
            (&*stranger.product_id, &*stranger.category, &*stranger.title),
            ("VD999", UNKNOWN, UNKNOWN)
        );
        assert_eq!(
            (stranger.gender, stranger.age, stranger.known_visitor),
            (Gender::U, None, false)
        );
    }

    #[test]
    fn live_gender_and_age_override_the_lookups() {
        let mut e = Enricher::new();
        let mut c = click(
            "F30",
            "http://www.acme.com/SH1/VD55177927",
            ts(2012, 3, 1, 8),
        );
        c.gender = Some(Gender::M);
        c.age = Some(40);
        let enriched = e.enrich(c, &lookups());
        assert_eq!((enriched.gender, enriched.age), (Gender::M, Some(40)));
    }

    #[test]
    fn a_borrowed_click_enriches_as_its_owned_copy() {
        let mut clicks = Vec::new();
        for (visitor, country, ip) in [
            ("F30", Some("usa"), ""),
            ("X", Some("deu"), ""),
            ("X", Some("usa"), ""),
            ("NODATE", Some("DE"), ""),
            ("X", Some("GBR"), ""),
            ("X", None, "1.0.16.1"),
            ("X", None, "garbage"),
        ] {
            let mut c = click(
                visitor,
                "http://www.acme.com/SH1/VD55177927",
                ts(2012, 3, 1, 8),
            );
            c.country = country.map(str::to_owned);
            c.ip = ip.to_owned();
            c.city = Some("Oslo".to_owned());
            c.user_agent = "Mozilla/5.0 (iPad; CPU OS 5_1 like Mac OS X)".to_owned();
            clicks.push(c);
        }
        let mut live = click("F30", "http://www.acme.com/", 0);
        live.gender = Some(Gender::M);
        live.age = Some(40);
        live.region = Some("ny".to_owned());
        clicks.push(live);
        let (mut owned, mut borrowed) = (Enricher::new(), Enricher::new());
        for c in clicks {
            let from_ref = borrowed.enrich_ref(&c.borrowed(), &lookups());
            assert_eq!(from_ref, owned.enrich(c, &lookups()));
        }
    }

    #[test]
    fn an_event_that_names_its_product_wins_over_the_url() {
        let mut e = EnrichOperator::new(lookups());
        let named = |id: &str, category: Option<&str>| {
            let mut c = click("F30", "http://www.acme.com/cart", ts(2012, 3, 1, 8));
            c.event = EventType::AddToCart;
            c.detail = Some(Box::new(EventDetail {
                product: Some(EventProduct {
                    id: Some(id.to_owned()),
                    category: category.map(str::to_owned),
                    price: Some(21.0),
                    ..EventProduct::default()
                }),
                ..EventDetail::default()
            }));
            c
        };
        let known = e.enrich(named("VD55177927", None));
        assert_eq!(
            (&*known.product_id, &*known.category, &*known.title),
            ("VD55177927", "clothing", "Red Shirt")
        );
        assert_eq!(known.event, EventType::AddToCart);
        assert_eq!(
            known
                .detail
                .as_ref()
                .unwrap()
                .product
                .as_ref()
                .unwrap()
                .price,
            Some(21.0)
        );
        let recategorised = e.enrich(named("VD55177927", Some("gifts")));
        assert_eq!(&*recategorised.category, "gifts");
        let unknown = e.enrich(named("VD0", None));
        assert_eq!(
            (&*unknown.product_id, &*unknown.category, &*unknown.title),
            ("VD0", "Unknown", "Unknown")
        );
        // A page view that names nothing: the URL's last path part, as before.
        let view = e.enrich(click("F30", "http://www.acme.com/SH1/VD55177927", 0));
        assert_eq!(
            (&*view.product_id, view.event.clone()),
            ("VD55177927", EventType::PageView)
        );
    }

    #[test]
    fn a_logged_click_enriches_as_a_borrowed_one() {
        // Texts repeated across clicks and columns, so answers come from the memo too: a
        // country column that decides, one that leaves it to the IP, none, an unknown alpha-2
        // code, a product in the catalogue, one that is not, known and unknown visitors, a
        // visitor's birthday passing between two of their clicks.
        let urls = [
            "http://www.acme.com/SH1/VD55177927",
            "http://www.acme.com/",
            "http://www.acme.com/SH1/NOPE?x=1",
        ];
        let agents = [
            "Mozilla/5.0 (iPad; CPU OS 5_1 like Mac OS X)",
            "Mozilla/5.0 (Windows NT 6.1; rv:10.0) Gecko/20100101 Firefox/10.0",
            "",
        ];
        let countries = [Some("usa"), Some("DE"), Some("ZZ"), Some(" "), None];
        let ips = ["1.0.16.1", "8.8.8.8", "garbage", ""];
        let visitors = ["F30", "X", "NODATE", "M25"];
        let mut clicks = Vec::new();
        for n in 0..120usize {
            let mut c = click(
                visitors[n % visitors.len()],
                urls[n % urls.len()],
                ts(2012, 3, 1 + (n % 28) as u32, 8),
            );
            c.user_agent = agents[n % agents.len()].to_owned();
            c.country = countries[n % countries.len()].map(str::to_owned);
            c.ip = ips[(n / 3) % ips.len()].to_owned();
            c.city = (n % 2 == 0).then(|| "Oslo".to_owned());
            // Every fifth an interaction that names its product (known or not, with or
            // without the sender's category), whatever its URL says.
            if n % 5 == 0 {
                c.event = EventType::AddToCart;
                c.detail = Some(Box::new(EventDetail {
                    product: Some(EventProduct {
                        id: Some(["VD55177927", "VD0"][n % 2].to_owned()),
                        category: (n % 3 == 0).then(|| "gifts".to_owned()),
                        ..EventProduct::default()
                    }),
                    ..EventDetail::default()
                }));
            }
            clicks.push(c);
        }
        let log = ClickLog::from_clicks(&clicks);
        let mut memo = LogMemo::new(&log);
        let (mut logged, mut borrowed) = (Enricher::new(), Enricher::new());
        for i in 0..log.len() {
            let expected = borrowed.enrich_ref(&log.get(i), &lookups());
            assert_eq!(
                logged.enrich_logged_ref(&mut memo, i, &lookups()),
                expected.borrowed(),
                "click {i}"
            );
            assert_eq!(
                logged.enrich_logged(&mut memo, i, &lookups()),
                expected,
                "click {i}"
            );
        }
    }

    #[test]
    fn country_from_column_or_ip() {
        let mut e = Enricher::new();
        let mut c = click("X", "http://www.acme.com/", 0);
        assert_eq!(&*e.enrich(c.clone(), &lookups()).country, "usa");
        c.country = None;
        c.ip = "8.8.8.8".to_owned();
        assert_eq!(&*e.enrich(c.clone(), &lookups()).country, "usa");
        c.ip = "1.0.16.1".to_owned();
        assert_eq!(&*e.enrich(c.clone(), &lookups()).country, "jpn");
        c.ip = "127.0.0.1".to_owned();
        assert_eq!(&*e.enrich(c.clone(), &lookups()).country, UNKNOWN_COUNTRY);
        c.ip = "garbage".to_owned();
        assert_eq!(&*e.enrich(c.clone(), &lookups()).country, UNKNOWN_COUNTRY);
        c.country = Some("DE".to_owned());
        assert_eq!(&*e.enrich(c, &lookups()).country, "deu");
    }

    #[test]
    fn user_agent_classes() {
        let p = woothee::parser::Parser::new();
        let cases = [
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_6_8) AppleWebKit/534.52.7 (KHTML, like Gecko) Version/5.1.2 Safari/534.52.7",
                Device::Desktop,
            ),
            (
                "Mozilla/4.0 (compatible; MSIE 8.0; Windows NT 5.1; Trident/4.0)",
                Device::Desktop,
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 5_1 like Mac OS X) AppleWebKit/534.46 (KHTML, like Gecko) Version/5.1 Mobile/9B176 Safari/7534.48.3",
                Device::Mobile,
            ),
            (
                "Mozilla/5.0 (Linux; U; Android 2.3.6; en-us; Nexus S Build/GRK39F) AppleWebKit/533.1 (KHTML, like Gecko) Version/4.0 Mobile Safari/533.1",
                Device::Mobile,
            ),
            (
                "Mozilla/5.0 (iPad; CPU OS 5_1 like Mac OS X) AppleWebKit/534.46 (KHTML, like Gecko) Version/5.1 Mobile/9B176 Safari/7534.48.3",
                Device::Tablet,
            ),
            (
                "Mozilla/5.0 (Linux; U; Android 3.2; en-us; Xoom Build/HTK75D) AppleWebKit/534.13 (KHTML, like Gecko) Version/4.0 Safari/534.13",
                Device::Tablet,
            ),
            (
                "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
                Device::Bot,
            ),
            ("MyCustomSpider/1.0", Device::Bot),
            ("", Device::Other),
            ("curl/7.88.1", Device::Other),
        ];
        for (ua, expected) in cases {
            assert_eq!(classify_user_agent(&p, ua), expected, "{ua}");
        }
    }

    #[test]
    fn operator_counts_and_restores_its_stats() {
        let mut op = EnrichOperator::new(lookups());
        let mut out = crate::operator::Emitter::default();
        for c in [
            click("F30", "http://www.acme.com/SH1/VD55177927", 0),
            click("X", "http://www.acme.com/SH1/VD999", 0),
        ] {
            let value = crate::codec::encode(&c);
            crate::operator::process_one(
                &mut op,
                crate::topics::Topic::ClickData,
                0,
                &value,
                std::time::Instant::now(),
                &mut out,
            )
            .unwrap();
        }
        assert_eq!(out.outputs().len(), 2);
        assert_eq!(
            out.outputs()[1].topic,
            crate::topics::Topic::EnrichedClickData
        );
        let mut changes = Vec::new();
        op.checkpoint(&mut changes);
        let mut restored = EnrichOperator::new(lookups());
        for (k, v) in &changes {
            restored.restore(k, v.as_deref().unwrap()).unwrap();
        }
        assert_eq!(
            restored.counters(),
            EnrichStats {
                events: 2,
                unknown_product_events: 1,
                known_visitor_events: 1
            }
        );
    }

    #[test]
    fn identify_links_a_visitor_to_a_user_across_a_restore() {
        let identify = |visitor: &str, user: &str| {
            let mut c = click(visitor, "segment://server/", 0);
            c.event = crate::event::EventType::parse(crate::event::IDENTIFY).unwrap();
            c.detail = Some(Box::new(EventDetail {
                properties: [(
                    "user_id".to_owned(),
                    crate::event::PropValue::Text(user.into()),
                )]
                .into(),
                ..EventDetail::default()
            }));
            c.validate().unwrap();
            c
        };
        let feed = |op: &mut EnrichOperator<Lookups>, c: &Click| {
            let mut out = crate::operator::Emitter::default();
            crate::operator::process_one(
                op,
                crate::topics::Topic::ClickData,
                0,
                &crate::codec::encode(c),
                std::time::Instant::now(),
                &mut out,
            )
            .unwrap();
            out.outputs()
                .iter()
                .map(|o| crate::codec::decode::<EnrichedClick>(&o.value).unwrap())
                .collect::<Vec<_>>()
        };
        let view = click("seg-anon", "http://www.acme.com/SH1/VD55177927", 0);
        let mut op = EnrichOperator::new(lookups());
        assert!(!feed(&mut op, &view)[0].known_visitor, "not yet linked");
        // The identify event goes no further; the visitor's next view is F30's.
        assert!(feed(&mut op, &identify("seg-anon", "F30")).is_empty());
        let linked = feed(&mut op, &view);
        assert!(linked[0].known_visitor);
        assert_eq!(linked[0].gender, Gender::F);
        assert_eq!(linked[0].visitor, "seg-anon", "the visitor keeps its id");
        let mut changes = Vec::new();
        op.checkpoint(&mut changes);
        assert!(changes.iter().any(|(k, _)| k == "link/seg-anon"));
        let mut restored = EnrichOperator::new(lookups());
        for (k, v) in &changes {
            restored.restore(k, v.as_deref().unwrap()).unwrap();
        }
        assert_eq!(restored.linked_user("seg-anon"), Some("F30"));
        assert!(feed(&mut restored, &view)[0].known_visitor);
        // Nothing changed: nothing more to write.
        let mut again = Vec::new();
        restored.checkpoint(&mut again);
        assert!(again.iter().all(|(k, _)| !k.starts_with("link/")));
        // An identify without a user id is not an event.
        let mut bad = identify("v", "x");
        bad.detail = None;
        assert!(bad.validate().is_err());
    }
}
