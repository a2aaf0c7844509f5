//! The Omniture/Hortonworks TSV log (see `data/README.md` for the column layout).
//!
//! Columns used (1-based): 1 unix seconds, 8 IP, 13 URL, 14 `{visitor}`, 44 user agent,
//! 50/51/53 city/country/state. Rows have 178 columns (the Hortonworks export) or 53 (the
//! trimmed export); any row with at least 53 is read. A first line whose first column is not a
//! number is a header and is skipped.

use std::io::BufRead;

use super::{DeadLetter, Lines, LogRecord, ReaderError};
use crate::click::{ClickRef, InvalidClick};
use crate::event::{EventDetail, EventType, Utm};

/// The fewest columns a row may have (column 53 is the state).
pub const MIN_COLUMNS: usize = 53;

const COL_TIME: usize = 0;
const COL_IP: usize = 7;
const COL_URL: usize = 12;
const COL_VISITOR: usize = 13;
const COL_USER_AGENT: usize = 43;
const COL_CITY: usize = 49;
const COL_COUNTRY: usize = 50;
const COL_STATE: usize = 52;

/// Streaming reader for the Omniture TSV log.
pub struct TsvReader<R> {
    lines: Lines<R>,
}

impl<R: BufRead> TsvReader<R> {
    /// Reads `inner`, naming it `name` in dead letters and errors.
    pub fn new(name: &str, inner: R) -> Self {
        TsvReader {
            lines: Lines::new(name, inner),
        }
    }
}

impl<R: BufRead> TsvReader<R> {
    /// Reads the rest of the log, handing each valid click over borrowed from its row (nothing
    /// is copied unless `on_click` keeps it) and each bad row as a dead letter.
    pub fn read_all(
        &mut self,
        mut on_click: impl FnMut(ClickRef<'_>),
        mut on_malformed: impl FnMut(DeadLetter),
    ) -> Result<(), ReaderError> {
        let mut scratch = Scratch::default();
        while let Some(line) = self.lines.next_line() {
            let line = line?;
            if line.bytes.is_empty() {
                continue;
            }
            match parse_row(line.bytes, &mut scratch) {
                Ok(click) => on_click(click),
                Err(RowError::Header) if line.number == 1 => {}
                Err(e) => on_malformed(DeadLetter::new(
                    line.source,
                    line.number,
                    e.reason(),
                    line.bytes,
                )),
            }
        }
        Ok(())
    }
}

impl<R: BufRead> Iterator for TsvReader<R> {
    type Item = Result<LogRecord, ReaderError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut scratch = Scratch::default();
        loop {
            let line = match self.lines.next_line()? {
                Ok(line) => line,
                Err(e) => return Some(Err(e)),
            };
            if line.bytes.is_empty() {
                continue;
            }
            return Some(Ok(match parse_row(line.bytes, &mut scratch) {
                Ok(click) => LogRecord::Click(click.to_click()),
                Err(RowError::Header) if line.number == 1 => continue,
                Err(e) => LogRecord::Malformed(DeadLetter::new(
                    line.source,
                    line.number,
                    e.reason(),
                    line.bytes,
                )),
            }));
        }
    }
}

/// Rows and bytes [`locate_columns`] went through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Located {
    /// Non-empty rows.
    pub rows: u64,
    /// Their bytes, line endings excluded.
    pub bytes: u64,
}

/// The least any reader of this layout does: finds each row and the ends of its first 53
/// columns, and nothing more (no UTF-8 check, no parsing, nothing kept). What it costs is the
/// floor under reading a log, which `clickpulse bench backtest` reports beside the real reader.
pub fn locate_columns(inner: impl BufRead) -> Result<Located, ReaderError> {
    let mut lines = Lines::new("log", inner);
    let mut located = Located::default();
    let mut tabs = [0usize; MIN_COLUMNS];
    while let Some(line) = lines.next_line() {
        let line = line?;
        if line.bytes.is_empty() {
            continue;
        }
        let found = find_tabs(line.bytes, &mut tabs);
        std::hint::black_box(&tabs[..found]);
        located.rows += 1;
        located.bytes += line.bytes.len() as u64;
    }
    Ok(located)
}

/// Why a row was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RowError {
    InvalidUtf8(usize),
    TooFewColumns(usize),
    /// The time column is not a number: a header on line 1, malformed elsewhere.
    Header,
    TimeOutOfRange,
    EmptyVisitor,
    EmptyUrl,
    /// The row parses but breaks a rule every click must meet (time beyond the year 9999, a
    /// field over the length limit).
    Invalid(InvalidClick),
}

impl RowError {
    fn reason(&self) -> String {
        match self {
            RowError::InvalidUtf8(at) => format!("invalid UTF-8 at byte {at}"),
            RowError::TooFewColumns(n) => {
                format!("too few columns: {n}, need at least {MIN_COLUMNS}")
            }
            RowError::Header => "non-numeric time in column 1".to_owned(),
            RowError::TimeOutOfRange => "time in column 1 is out of range".to_owned(),
            RowError::EmptyVisitor => "empty visitor id in column 14".to_owned(),
            RowError::EmptyUrl => "empty URL in column 13".to_owned(),
            RowError::Invalid(e) => e.to_string(),
        }
    }
}

/// What a parsed row borrows that is not in the row itself.
#[derive(Default)]
struct Scratch {
    /// The lower-cased country, when the row's is not lower-case already.
    country: String,
    /// The campaign parameters of the row's URL, when it has any.
    detail: Option<EventDetail>,
}

/// Parses one TSV row (without its line ending) into a valid click, borrowed from the row
/// and `scratch`.
fn parse_row<'a>(row: &'a [u8], scratch: &'a mut Scratch) -> Result<ClickRef<'a>, RowError> {
    let Scratch {
        country: scratch,
        detail,
    } = scratch;
    // Only the first 53 columns matter: split no further (the rest of a 178-column row stays
    // one unsplit piece). A tab is ASCII, so every cut is at a character boundary.
    let mut tabs = [0usize; MIN_COLUMNS];
    let found = find_tabs(row, &mut tabs);
    if found + 1 < MIN_COLUMNS {
        // Bytes that are not text at all (a compressed file read as TSV) say more than a
        // column count.
        if let Err(e) = std::str::from_utf8(row) {
            return Err(RowError::InvalidUtf8(e.valid_up_to()));
        }
        return Err(RowError::TooFewColumns(found + 1));
    }
    // Only those columns need to be text: a stray byte in the unread rest of a row does not
    // cost the view (and checking it was a tenth of parsing the real log's long rows).
    let read = if found == MIN_COLUMNS {
        tabs[MIN_COLUMNS - 1]
    } else {
        row.len()
    };
    // simdutf8 checks the mostly-ASCII prefix 32 or 64 bytes at a time; `str::from_utf8` (a
    // word at a time) was a tenth of parsing. Only a row that fails is checked again, by
    // `str::from_utf8`, for the position of the first bad byte.
    let row = match simdutf8::basic::from_utf8(&row[..read]) {
        Ok(row) => row,
        Err(_) => {
            let e = std::str::from_utf8(&row[..read]).expect_err("simdutf8 found a bad byte");
            return Err(RowError::InvalidUtf8(e.valid_up_to()));
        }
    };
    let column = |i: usize| {
        let start = if i == 0 { 0 } else { tabs[i - 1] + 1 };
        let end = if i < found { tabs[i] } else { row.len() };
        &row[start..end]
    };
    // One call per column (an array's `map` over the column numbers cost a tenth of parsing).
    let (time, ip, url, visitor) = (
        column(COL_TIME),
        column(COL_IP),
        column(COL_URL),
        column(COL_VISITOR),
    );
    let (user_agent, city, country, state) = (
        column(COL_USER_AGENT),
        column(COL_CITY),
        column(COL_COUNTRY),
        column(COL_STATE),
    );
    // ASCII trims: a TSV field's padding is ASCII, and `str::trim` (Unicode whitespace) was a
    // few percent of reading a log.
    let secs: i64 = time.trim_ascii().parse().map_err(|_| RowError::Header)?;
    let ts_ms = secs
        .checked_mul(1000)
        .filter(|t| *t >= 0)
        .ok_or(RowError::TimeOutOfRange)?;
    let visitor = visitor
        .trim_ascii()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .trim_ascii();
    if visitor.is_empty() {
        return Err(RowError::EmptyVisitor);
    }
    let url = url.trim_ascii();
    if url.is_empty() {
        return Err(RowError::EmptyUrl);
    }
    let optional = |s: &'a str| {
        let s = s.trim_ascii();
        (!s.is_empty()).then_some(s)
    };
    let country = match optional(country) {
        Some(c) if c.bytes().any(|b| b.is_ascii_uppercase()) => {
            scratch.clear();
            scratch.push_str(c);
            scratch.make_ascii_lowercase();
            Some(scratch.as_str())
        }
        other => other,
    };
    let click = ClickRef {
        ts_ms,
        visitor,
        url,
        ip: ip.trim_ascii(),
        user_agent,
        city: optional(city),
        country,
        region: optional(state),
        gender: None,
        age: None,
        // The log has page views only; their campaign is in the URL, if anywhere.
        event: &EventType::PageView,
        detail: {
            // Most URLs have no query: one byte search rules them out.
            *detail = memchr::memchr(b'?', url.as_bytes())
                .and_then(|_| Utm::from_url(url))
                .map(|utm| EventDetail {
                    utm: Some(utm),
                    ..EventDetail::default()
                });
            detail.as_ref()
        },
    };
    // The same rules as the JSON-lines reader and the collector.
    click.validate().map_err(RowError::Invalid)?;
    Ok(click)
}

/// Finds the first `out.len()` tabs of `row`, writing their positions to `out`; returns how
/// many there were. A block of 64 bytes at a time becomes one mask of its tabs (on x86-64 four
/// SSE2 compares), whose set bits are then taken lowest first: no branch per byte and no call
/// per tab (`memchr` per tab cost more than the search: the columns are a few bytes long).
fn find_tabs(row: &[u8], out: &mut [usize]) -> usize {
    let mut n = 0;
    let mut blocks = row.chunks_exact(BLOCK);
    let mut base = 0;
    for block in &mut blocks {
        if take_tabs(
            tab_mask(block.try_into().expect("a whole block")),
            base,
            out,
            &mut n,
        ) {
            return n;
        }
        base += BLOCK;
    }
    let rest = blocks.remainder();
    if !rest.is_empty() {
        // The padding is zeros, never a tab.
        let mut last = [0u8; BLOCK];
        last[..rest.len()].copy_from_slice(rest);
        take_tabs(tab_mask(&last), base, out, &mut n);
    }
    n
}

const BLOCK: usize = 64;

/// Writes the positions of `mask`'s set bits (offset by `base`) to `out` from `*n` on; returns
/// whether `out` is full.
#[inline(always)]
fn take_tabs(mut mask: u64, base: usize, out: &mut [usize], n: &mut usize) -> bool {
    while mask != 0 {
        // One check for "room left" and the bounds.
        let Some(slot) = out.get_mut(*n) else {
            return true;
        };
        *slot = base + mask.trailing_zeros() as usize;
        *n += 1;
        mask &= mask - 1;
    }
    *n == out.len()
}

/// Bit `i` is set where `block[i]` is a tab.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn tab_mask(block: &[u8; BLOCK]) -> u64 {
    use safe_arch::{
        cmp_eq_mask_i8_m128i, load_unaligned_m128i, move_mask_i8_m128i, set_splat_i8_m128i,
    };
    let tab = set_splat_i8_m128i(b'\t' as i8);
    let mut mask = 0;
    for (k, part) in block.chunks_exact(16).enumerate() {
        let bytes = load_unaligned_m128i(part.try_into().expect("16 bytes"));
        let bits = move_mask_i8_m128i(cmp_eq_mask_i8_m128i(bytes, tab)) as u16;
        mask |= u64::from(bits) << (16 * k);
    }
    mask
}

/// Bit `i` is set where `block[i]` is a tab.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn tab_mask(block: &[u8; BLOCK]) -> u64 {
    portable_tab_mask(block)
}

/// [`tab_mask`] without SIMD: eight bytes at a time.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn portable_tab_mask(block: &[u8; BLOCK]) -> u64 {
    let mut mask = 0;
    for (k, word) in block.chunks_exact(8).enumerate() {
        let tabs = tab_bytes(u64::from_le_bytes(word.try_into().expect("8 bytes")));
        // Gathers the eight high bits (bits 7, 15, ..., 63) into the top byte: the multiplier's
        // partial products land on distinct bits, so no carry mixes them.
        let bits = ((tabs >> 7).wrapping_mul(0x0102_0408_1020_4080)) >> 56;
        mask |= bits << (8 * k);
    }
    mask
}

/// The high bit of each byte of `word` that is a tab, and no other bit. Exact per byte: no
/// carry crosses a byte (each byte's low seven bits plus 0x7f is at most 0xfe).
fn tab_bytes(word: u64) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let v = word ^ 0x0909_0909_0909_0909; // a tab becomes 0
    !(((v & LOW7).wrapping_add(LOW7)) | v | LOW7)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::click::Click;
    use proptest::strategy::Just;

    #[test]
    fn locate_columns_counts_the_rows_a_reader_would_see() {
        let log = format!(
            "{}\n\n{}\r\n{}",
            row(178, "1331769600", "{A}"),
            row(53, "1331769601", "{B}"),
            "too\tfew\tcolumns"
        );
        let located = locate_columns(log.as_bytes()).expect("in memory");
        let lines: Vec<&str> = log.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(located.rows, 3);
        assert_eq!(
            located.bytes,
            lines.iter().map(|l| l.len() as u64).sum::<u64>()
        );
    }

    /// A row with `n` columns and the used ones filled in.
    pub(crate) fn row(n: usize, time: &str, visitor: &str) -> String {
        let mut cols = vec![String::new(); n];
        cols[COL_TIME] = time.to_owned();
        cols[1] = "2012-03-01 00:00:19".to_owned();
        cols[COL_IP] = "99.46.44.132".to_owned();
        cols[COL_URL] = "http://www.acme.com/SH55126545/VD55170364".to_owned();
        cols[COL_VISITOR] = visitor.to_owned();
        cols[COL_USER_AGENT] =
            "Mozilla/5.0 (Windows NT 6.1; WOW64; rv:10.0.2) Gecko/20100101 Firefox/10.0.2"
                .to_owned();
        cols[COL_CITY] = "dallas".to_owned();
        cols[COL_COUNTRY] = "USA".to_owned();
        cols[COL_STATE] = "tx".to_owned();
        cols.join("\t")
    }

    fn read(text: &[u8]) -> Vec<LogRecord> {
        TsvReader::new("t.tsv", text).map(Result::unwrap).collect()
    }

    fn reasons(records: &[LogRecord]) -> Vec<(u64, String)> {
        records
            .iter()
            .filter_map(|r| match r {
                LogRecord::Malformed(d) => Some((d.position, d.reason.clone())),
                LogRecord::Click(_) => None,
            })
            .collect()
    }

    #[test]
    fn reads_178_and_53_column_rows() {
        let text = format!(
            "{}\n{}\r\n",
            row(178, "1330588819", "{ABC}"),
            row(53, "1330588820", "{DEF}")
        );
        let records = read(text.as_bytes());
        assert_eq!(records.len(), 2);
        let LogRecord::Click(c) = &records[0] else {
            panic!()
        };
        assert_eq!(c.ts_ms, 1_330_588_819_000);
        assert_eq!(c.visitor, "ABC");
        assert_eq!(c.ip, "99.46.44.132");
        assert_eq!(c.country.as_deref(), Some("usa"));
        assert_eq!(c.city.as_deref(), Some("dallas"));
        assert_eq!(c.region.as_deref(), Some("tx"));
        let LogRecord::Click(c) = &records[1] else {
            panic!()
        };
        assert_eq!(c.visitor, "DEF");
    }

    #[test]
    fn skips_a_header_line_but_not_a_bad_time_later() {
        let mut header = row(178, "Unix Timestamp", "Visitor Unique ID");
        header.push('\n');
        let text = format!(
            "{header}{}\n{}\n",
            row(178, "1330588819", "{A}"),
            row(178, "soon", "{B}")
        );
        let records = read(text.as_bytes());
        assert_eq!(records.len(), 2);
        assert_eq!(
            reasons(&records),
            [(3, "non-numeric time in column 1".to_owned())]
        );
    }

    #[test]
    fn bad_rows_become_dead_letters_with_line_numbers() {
        let mut text = Vec::new();
        text.extend_from_slice(row(178, "1330588819", "{A}").as_bytes());
        text.push(b'\n');
        text.extend_from_slice(b"1330588819\tonly\tthree\n");
        text.extend_from_slice(row(178, "1330588819", "{}").as_bytes());
        text.push(b'\n');
        let mut bad_utf8 = row(178, "1330588819", "{B}").into_bytes();
        bad_utf8[30] = 0xff;
        text.extend_from_slice(&bad_utf8);
        text.push(b'\n');
        text.extend_from_slice(b"\n");
        text.extend_from_slice(row(178, "1330588821", "{C}").as_bytes());
        // Not UTF-8 in a column past the 53 read: the view is kept.
        text.extend_from_slice(b"\t\xff\xfe\n");
        let records = read(&text);
        assert_eq!(records.len(), 5, "the blank line is skipped, nothing else");
        assert_eq!(
            reasons(&records),
            [
                (2, "too few columns: 3, need at least 53".to_owned()),
                (3, "empty visitor id in column 14".to_owned()),
                (4, "invalid UTF-8 at byte 30".to_owned()),
            ]
        );
        assert!(matches!(&records[4], LogRecord::Click(c) if c.visitor == "C"));
    }

    proptest::proptest! {
        /// The tabs found are the row's first tabs, in order, whatever surrounds them.
        #[test]
        fn find_tabs_finds_the_first_tabs(
            row in proptest::collection::vec(
                proptest::prop_oneof![
                    Just(b'\t'),
                    Just(0x89u8),
                    Just(0x08u8),
                    Just(0x0au8),
                    Just(0u8),
                    proptest::num::u8::ANY
                ],
                0..300,
            ),
            limit in 0usize..70,
        ) {
            let expected: Vec<usize> = row
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\t')
                .map(|(i, _)| i)
                .take(limit)
                .collect();
            let mut out = vec![0; limit];
            let n = find_tabs(&row, &mut out);
            proptest::prop_assert_eq!(&out[..n], &expected[..]);
        }
    }

    proptest::proptest! {
        /// The portable mask (other targets) and the SIMD one agree, bit for bit, with the bytes.
        #[test]
        fn tab_masks_mark_exactly_the_tabs(
            block in proptest::collection::vec(
                proptest::prop_oneof![Just(b'\t'), Just(0x89u8), Just(0x08u8), proptest::num::u8::ANY],
                BLOCK,
            ),
        ) {
            let block: [u8; BLOCK] = block.try_into().expect("64 bytes");
            let expected = block
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\t')
                .fold(0u64, |m, (i, _)| m | 1 << i);
            proptest::prop_assert_eq!(tab_mask(&block), expected);
            proptest::prop_assert_eq!(portable_tab_mask(&block), expected);
        }
    }

    #[test]
    fn reading_borrowed_gives_what_the_iterator_gives() {
        let mut text = format!(
            "{}\n{}\n1330588819\tonly\tthree\n{}\n",
            row(178, "Unix Timestamp", "Visitor"),
            row(178, "1330588819", "{A}"),
            row(53, "1330588820", "{B}").replace("USA", "usa")
        );
        text.push_str(&row(53, "1330588821", "{C}").replace("USA", "Usa"));
        let records = std::cell::RefCell::new(Vec::new());
        TsvReader::new("t.tsv", text.as_bytes())
            .read_all(
                |c| records.borrow_mut().push(LogRecord::Click(c.to_click())),
                |d| records.borrow_mut().push(LogRecord::Malformed(d)),
            )
            .unwrap();
        let records = records.into_inner();
        assert_eq!(records, read(text.as_bytes()));
        let clicks: Vec<&Click> = records
            .iter()
            .filter_map(|r| match r {
                LogRecord::Click(c) => Some(c),
                LogRecord::Malformed(_) => None,
            })
            .collect();
        let countries: Vec<_> = clicks.iter().map(|c| c.country.as_deref()).collect();
        assert_eq!(countries, [Some("usa"); 3], "lower-cased, borrowed or not");
    }

    #[test]
    fn rows_breaking_the_click_rules_become_dead_letters() {
        let long_agent = row(53, "1330588819", "{A}").replace("Mozilla/5.0", &"M".repeat(5000));
        let text = format!(
            "{}\n{long_agent}\n{}\n",
            row(53, "253402300800", "{A}"),
            row(53, "253402300799", "{A}")
        );
        let records = read(text.as_bytes());
        assert_eq!(
            reasons(&records),
            [
                (1, "timestamp 253402300800000 ms is out of range".to_owned()),
                (
                    2,
                    "field user_agent is 5065 bytes long, more than the limit of 4096".to_owned()
                ),
            ]
        );
        assert!(matches!(&records[2], LogRecord::Click(c) if c.ts_ms == 253_402_300_799_000));
    }
}
