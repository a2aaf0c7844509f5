//! `clickpulse generate`: scale data in the Omniture layout whose statistics follow the real
//! log.
//!
//! The model is fitted, deterministically, from the bundled real log and users: product (URL)
//! popularity, views per session, gaps between views of a session, hour of day of session
//! starts, each visitor's user agent and location (sampled from real rows), and the share of
//! visitors with a users record (those get real user ids from `users.json`). Sessions are
//! written one after another, grouped by visitor like the real log (not time-sorted), in the
//! 53-column layout, in constant memory. Same arguments and seed, same bytes.
//!
//! With `--interactions` the log is JSON lines (`docs/click-format.md`) and sessions also search,
//! add to and remove from the cart, check out and buy, at the rates of [`Rates`].

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use chrono::DateTime;
use clickpulse_engine::ClickLog;
use clickpulse_engine::click::Click;
use clickpulse_engine::event::{EventDetail, EventProduct, EventType, LineItem, Order};
use clickpulse_engine::reader::{LogReader, LogRecord};
use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::bundled;
use crate::cli::GenerateArgs;
use crate::inputs;

const SESSION_GAP_S: i64 = 30 * 60;
const COLUMNS: usize = 53;

/// How often a generated session does more than view pages: published e-commerce
/// benchmarks for a small shop, as shares of sessions (or of the step before).
///
/// - Add to cart in 5.2 % of sessions and purchase in 1.4 %: Littledata's 2023 Shopify
///   benchmarks (median store).
/// - 70 % of carts are abandoned: Baymard Institute's average over 49 studies; here half the
///   carts reach the checkout and 54 % of checkouts buy, so 27 % of carts buy (1.4 % of
///   sessions) and 73 % are abandoned.
/// - Site search in 5.4 % of sessions.
/// - One cart in ten is emptied again (our own assumption: no published figure); 56 % of the
///   others reach the checkout, half of all carts.
#[derive(Debug, Clone, Copy)]
struct Rates {
    search: f64,
    add_to_cart: f64,
    remove_given_cart: f64,
    checkout_given_cart: f64,
    purchase_given_checkout: f64,
}

const RATES: Rates = Rates {
    search: 0.054,
    add_to_cart: 0.052,
    remove_given_cart: 0.10,
    checkout_given_cart: 0.56,
    purchase_given_checkout: 0.54,
};

/// A catalogue product, as the generator prices its carts and orders.
#[derive(serde::Deserialize)]
struct Product {
    id: String,
    title: String,
    price: f64,
}

/// An empirical distribution: values with their counts, sampled in proportion.
struct Empirical<T> {
    values: Vec<T>,
    index: WeightedIndex<u64>,
}

impl<T: Clone + Ord> Empirical<T> {
    fn from_counts(counts: BTreeMap<T, u64>) -> Result<Self> {
        let (values, weights): (Vec<T>, Vec<u64>) = counts.into_iter().unzip();
        let index = WeightedIndex::new(&weights).context("an empty distribution")?;
        Ok(Empirical { values, index })
    }

    fn sample(&self, rng: &mut ChaCha8Rng) -> &T {
        &self.values[self.index.sample(rng)]
    }
}

/// What the generator reproduces of the real log.
struct Model {
    urls: Empirical<String>,
    session_views: Empirical<u32>,
    gaps_s: Empirical<i64>,
    start_hour: Empirical<u32>,
    agents: Empirical<String>,
    places: Empirical<(String, String, String, String)>,
    known_share: f64,
    user_ids: Vec<String>,
}

fn fit() -> Result<Model> {
    let mut rows = Vec::new();
    for (name, bytes) in bundled::LOGS {
        for record in LogReader::from_reader(name, bytes)? {
            if let LogRecord::Click(c) = record? {
                rows.push(c);
            }
        }
    }
    let (lookups, _) = inputs::read_lookups(None)?;
    let mut urls = BTreeMap::new();
    let mut agents = BTreeMap::new();
    let mut places = BTreeMap::new();
    for c in &rows {
        *urls.entry(c.url.clone()).or_insert(0u64) += 1;
        *agents.entry(c.user_agent.clone()).or_insert(0u64) += 1;
        let place = (
            c.ip.clone(),
            c.city.clone().unwrap_or_default(),
            c.country.clone().unwrap_or_default(),
            c.region.clone().unwrap_or_default(),
        );
        *places.entry(place).or_insert(0u64) += 1;
    }
    // Sessions: a visitor's views in time order, split at gaps of 30 minutes.
    let mut by_visitor: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for c in &rows {
        by_visitor
            .entry(c.visitor.as_str())
            .or_default()
            .push(c.ts_ms / 1000);
    }
    let mut session_views = BTreeMap::new();
    let mut gaps = BTreeMap::new();
    let mut start_hour = BTreeMap::new();
    let mut known = 0u64;
    for (visitor, times) in &mut by_visitor {
        if lookups_has(&lookups, visitor) {
            known += 1;
        }
        times.sort_unstable();
        let mut views = 0u32;
        for (i, t) in times.iter().enumerate() {
            let new_session = i == 0 || t - times[i - 1] >= SESSION_GAP_S;
            if new_session {
                if views > 0 {
                    *session_views.entry(views).or_insert(0u64) += 1;
                }
                views = 0;
                *start_hour.entry(((t / 3600) % 24) as u32).or_insert(0u64) += 1;
            } else {
                *gaps.entry(t - times[i - 1]).or_insert(0u64) += 1;
            }
            views += 1;
        }
        *session_views.entry(views).or_insert(0u64) += 1;
    }
    let mut user_ids: Vec<String> = lookups.users().map(|(id, _)| id.to_owned()).collect();
    user_ids.sort();
    Ok(Model {
        urls: Empirical::from_counts(urls)?,
        session_views: Empirical::from_counts(session_views)?,
        gaps_s: Empirical::from_counts(gaps)?,
        start_hour: Empirical::from_counts(start_hour)?,
        agents: Empirical::from_counts(agents)?,
        places: Empirical::from_counts(places)?,
        known_share: known as f64 / by_visitor.len().max(1) as f64,
        user_ids,
    })
}

fn lookups_has(lookups: &clickpulse_engine::lookups::Lookups, visitor: &str) -> bool {
    use clickpulse_engine::lookups::LookupSource;
    lookups.user(visitor).is_some()
}

/// The catalogue, by product id.
fn catalogue() -> Result<BTreeMap<String, Product>> {
    let products: Vec<Product> = serde_json::from_slice(bundled::PRODUCTS_JSON)
        .context("the bundled products.json parses")?;
    Ok(products.into_iter().map(|p| (p.id.clone(), p)).collect())
}

/// The product id of a URL (its last path part).
fn product_of(url: &str) -> &str {
    url.trim_end_matches('/').rsplit('/').next().unwrap_or("")
}

/// Writes one session as JSON lines: its page views `(time, url)` and what it does beyond them
/// ([`session_interactions`]), in time order. Returns how many events it wrote.
fn write_session_jsonl(
    out: &mut dyn Write,
    rng: &mut ChaCha8Rng,
    v: &Visitor,
    views: &[(i64, &str)],
    products: &BTreeMap<String, Product>,
    orders: &mut u64,
) -> std::io::Result<u64> {
    let mut events: Vec<Click> = views
        .iter()
        .map(|(t, url)| v.click(EventType::PageView, *t, url))
        .collect();
    events.extend(session_interactions(rng, v, views, products, orders));
    // In time order (stable: a page view before an interaction of the same second).
    events.sort_by_key(|e| e.ts_ms);
    for e in &events {
        serde_json::to_writer(&mut *out, e)?;
        out.write_all(b"\n")?;
    }
    Ok(events.len() as u64)
}

/// What one session with page views `(time, url)` does beyond them, at [`RATES`]: a search, an
/// add to cart of a product it viewed (and perhaps its removal), a checkout and a purchase.
fn session_interactions(
    rng: &mut ChaCha8Rng,
    v: &Visitor,
    views: &[(i64, &str)],
    products: &BTreeMap<String, Product>,
    orders: &mut u64,
) -> Vec<Click> {
    let with = |mut c: Click, detail: EventDetail| {
        c.detail = Some(Box::new(detail));
        c
    };
    let mut events = Vec::new();
    let (first, last) = (views[0].0, views[views.len() - 1].0);
    let site = "http://www.acme.com";
    if rng.random_bool(RATES.search) {
        let words: Vec<&str> = products
            .values()
            .flat_map(|p| p.title.split_whitespace())
            .filter(|w| w.len() > 3 && w.chars().all(char::is_alphabetic))
            .collect();
        let query = words[rng.random_range(0..words.len())].to_lowercase();
        let at = first + rng.random_range(1..20);
        let url = format!("{site}/search?q={query}");
        events.push(with(
            v.click(EventType::Search, at, &url),
            EventDetail {
                query: Some(query),
                ..EventDetail::default()
            },
        ));
    }
    let viewed: Vec<&(i64, &str)> = views
        .iter()
        .filter(|(_, url)| products.contains_key(product_of(url)))
        .collect();
    if !viewed.is_empty() && rng.random_bool(RATES.add_to_cart) {
        let (at, url) = *viewed[rng.random_range(0..viewed.len())];
        let p = &products[product_of(url)];
        let quantity = if rng.random_bool(0.15) { 2 } else { 1 };
        let product = EventProduct {
            id: Some(p.id.clone()),
            category: None,
            price: Some(p.price),
            quantity: Some(quantity),
            currency: Some("USD".to_owned()),
        };
        let added = at + rng.random_range(5..60);
        let carted = |product: EventProduct| EventDetail {
            product: Some(product),
            ..EventDetail::default()
        };
        events.push(with(
            v.click(EventType::AddToCart, added, url),
            carted(product.clone()),
        ));
        if rng.random_bool(RATES.remove_given_cart) {
            let at = added + rng.random_range(10..120);
            events.push(with(
                v.click(EventType::RemoveFromCart, at, &format!("{site}/shop/cart")),
                carted(product),
            ));
        } else if rng.random_bool(RATES.checkout_given_cart) {
            let checkout = last.max(added) + rng.random_range(20..90);
            events.push(v.click(
                EventType::BeginCheckout,
                checkout,
                &format!("{site}/checkout"),
            ));
            if rng.random_bool(RATES.purchase_given_checkout) {
                *orders += 1;
                let bought = checkout + rng.random_range(40..240);
                let revenue = (p.price * f64::from(quantity) * 100.0).round() / 100.0;
                let order = Order {
                    id: format!("g-{}", *orders),
                    revenue,
                    currency: Some("USD".to_owned()),
                    items: vec![LineItem {
                        product_id: p.id.clone(),
                        category: None,
                        price: Some(p.price),
                        quantity,
                    }],
                };
                events.push(with(
                    v.click(
                        EventType::Purchase,
                        bought,
                        &format!("{site}/checkout/done"),
                    ),
                    EventDetail {
                        order: Some(order),
                        ..EventDetail::default()
                    },
                ));
            }
        }
    }
    events
}

/// The shop interactions of a log of page views (the bundled one, for the demo's live replay):
/// the log's sessions (a visitor's views less than 30 minutes apart) do what
/// [`session_interactions`] says, each with the user agent and location of its first view.
/// Same log and seed, same interactions.
pub(crate) fn interactions_of(log: &ClickLog, seed: u64) -> Result<Vec<Click>> {
    let products = catalogue()?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Per visitor (dense id): the open session's views, by index into the log.
    let mut open: HashMap<u32, Vec<usize>> = HashMap::new();
    let mut sessions: Vec<Vec<usize>> = Vec::new();
    for i in 0..log.len() {
        if !log.get(i).event.is_page_view() {
            continue;
        }
        let views = open.entry(log.visitor_id(i)).or_default();
        if let Some(&last) = views.last()
            && log.ts_ms(i) - log.ts_ms(last) >= SESSION_GAP_S * 1000
        {
            sessions.push(std::mem::take(views));
        }
        views.push(i);
    }
    sessions.extend(open.into_values());
    // In the order sessions start: the same for the same log, whatever the map's order.
    sessions.sort_unstable_by_key(|views| views[0]);
    let mut orders = 0;
    let mut out = Vec::new();
    let mut views: Vec<(i64, &str)> = Vec::new();
    for session in &sessions {
        let first = log.get(session[0]);
        let v = Visitor {
            id: first.visitor.to_owned(),
            agent: first.user_agent.to_owned(),
            place: (
                first.ip.to_owned(),
                first.city.unwrap_or_default().to_owned(),
                first.country.unwrap_or_default().to_owned(),
                first.region.unwrap_or_default().to_owned(),
            ),
        };
        views.clear();
        views.extend(
            session
                .iter()
                .map(|&i| (log.ts_ms(i) / 1000, log.get(i).url)),
        );
        out.extend(session_interactions(
            &mut rng,
            &v,
            &views,
            &products,
            &mut orders,
        ));
    }
    Ok(out)
}

/// One generated visitor: its id, user agent and location stay the same across sessions.
struct Visitor {
    id: String,
    agent: String,
    place: (String, String, String, String),
}

impl Visitor {
    /// An event of this visitor at `ts_s` (unix seconds) on `url`.
    fn click(&self, event: EventType, ts_s: i64, url: &str) -> Click {
        let mut c = Click::new(ts_s * 1000, self.id.clone(), url);
        c.ip = self.place.0.clone();
        c.user_agent = self.agent.clone();
        let known = |s: &String| (!s.is_empty()).then(|| s.clone());
        c.city = known(&self.place.1);
        c.country = known(&self.place.2);
        c.region = known(&self.place.3);
        c.event = event;
        c
    }
}

fn guid(rng: &mut ChaCha8Rng) -> String {
    let b: [u8; 16] = rng.random();
    let h: String = b.iter().map(|x| format!("{x:02X}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn row(
    out: &mut impl Write,
    ts_s: i64,
    v: &Visitor,
    url: &str,
    cols: &mut [String],
) -> std::io::Result<()> {
    for c in cols.iter_mut() {
        c.clear();
    }
    cols[0] = ts_s.to_string();
    cols[1] = DateTime::from_timestamp(ts_s - 8 * 3600, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default();
    cols[7].push_str(&v.place.0);
    cols[12].push_str(url);
    cols[13] = format!("{{{}}}", v.id);
    cols[43].push_str(&v.agent);
    cols[49].push_str(&v.place.1);
    cols[50].push_str(&v.place.2);
    cols[52].push_str(&v.place.3);
    out.write_all(cols.join("\t").as_bytes())?;
    out.write_all(b"\n")
}

pub(crate) fn run(args: GenerateArgs) -> Result<ExitCode> {
    if args.visitors == 0 || args.days == 0 {
        bail!("--visitors and --days must be at least 1");
    }
    let started = Instant::now();
    let model = fit()?;
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let known =
        ((args.visitors as f64 * model.known_share).round() as usize).min(model.user_ids.len());
    let mut ids: Vec<String> = Vec::with_capacity(args.visitors);
    // Real user ids for the known share (a seeded partial shuffle), random ids for the rest.
    let mut pool = model.user_ids.clone();
    for i in 0..known {
        let j = rng.random_range(i..pool.len());
        pool.swap(i, j);
        ids.push(pool[i].clone());
    }
    while ids.len() < args.visitors {
        ids.push(guid(&mut rng));
    }
    let visitors: Vec<Visitor> = ids
        .into_iter()
        .map(|id| Visitor {
            id,
            agent: model.agents.sample(&mut rng).clone(),
            place: model.places.sample(&mut rng).clone(),
        })
        .collect();
    let file =
        File::create(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let mut out = Sink::new(&args.out, file)?;
    let start_day = 1_330_560_000i64; // 2012-03-01 00:00:00 UTC, like the real log
    let mut cols = vec![String::new(); COLUMNS];
    let mut written = 0u64;
    let products = catalogue()?;
    let mut orders = 0u64;
    let mut views: Vec<(i64, &str)> = Vec::new();
    while written < args.events {
        let v = &visitors[rng.random_range(0..visitors.len())];
        let day = rng.random_range(0..args.days as i64);
        let hour = i64::from(*model.start_hour.sample(&mut rng));
        let mut t = start_day + day * 86_400 + hour * 3_600 + rng.random_range(0..3_600);
        let session_views = *model.session_views.sample(&mut rng);
        if args.interactions {
            views.clear();
            for i in 0..session_views {
                if i > 0 {
                    t += *model.gaps_s.sample(&mut rng);
                }
                views.push((t, model.urls.sample(&mut rng)));
            }
            let left = (args.events - written) as usize;
            views.truncate(left.max(1));
            written +=
                write_session_jsonl(out.writer(), &mut rng, v, &views, &products, &mut orders)
                    .context("cannot write the log")?;
            continue;
        }
        for i in 0..session_views {
            if written >= args.events {
                break;
            }
            if i > 0 {
                t += *model.gaps_s.sample(&mut rng);
            }
            row(
                &mut out.writer(),
                t,
                v,
                model.urls.sample(&mut rng),
                &mut cols,
            )
            .context("cannot write the log")?;
            written += 1;
        }
    }
    out.finish().context("cannot write the log")?;
    let secs = started.elapsed().as_secs_f64();
    let what = if args.interactions {
        format!("events ({orders} orders)")
    } else {
        "page views".to_owned()
    };
    eprintln!(
        "wrote {written} {what} of {} visitors ({known} with a users record) over {} days to {} in {secs:.1} s",
        visitors.len(),
        args.days,
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Where the rows go: the file, compressed as its extension says (`.gz`: gzip, `.zst`:
/// Zstandard without a frame checksum), buffered.
enum Sink {
    Plain(BufWriter<File>),
    Gzip(BufWriter<flate2::write::GzEncoder<File>>),
    Zstd(BufWriter<zstd::Encoder<'static, File>>),
}

impl Sink {
    fn new(path: &Path, file: File) -> Result<Self> {
        const BUFFER: usize = 1 << 20;
        Ok(match path.extension().and_then(|e| e.to_str()) {
            Some("gz") => Sink::Gzip(BufWriter::with_capacity(
                BUFFER,
                flate2::write::GzEncoder::new(file, flate2::Compression::fast()),
            )),
            Some("zst") => {
                // No frame checksum, like the bundled logs: verifying it slows every backtest
                // of the log, and a generated log is reproducible from its seed (zstd still
                // rejects a stream whose structure is damaged).
                let z = zstd::Encoder::new(file, 3).context("cannot start Zstandard")?;
                Sink::Zstd(BufWriter::with_capacity(BUFFER, z))
            }
            _ => Sink::Plain(BufWriter::with_capacity(BUFFER, file)),
        })
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Sink::Plain(w) => w,
            Sink::Gzip(w) => w,
            Sink::Zstd(w) => w,
        }
    }

    /// Flushes the buffer and writes the compressed stream's end: an error here is reported,
    /// not lost in a `drop`.
    fn finish(self) -> std::io::Result<()> {
        match self {
            Sink::Plain(w) => w.into_inner().map(drop)?,
            Sink::Gzip(w) => drop(w.into_inner()?.finish()?),
            Sink::Zstd(w) => drop(w.into_inner()?.finish()?),
        }
        Ok(())
    }
}

/// The path for a generated log in `dir` (used by benchmarks).
#[allow(dead_code)]
pub(crate) fn default_path(dir: &Path, events: u64) -> PathBuf {
    dir.join(format!("generated-{events}.tsv"))
}
