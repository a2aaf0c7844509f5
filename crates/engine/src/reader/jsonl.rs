//! The JSON-lines click format: one [`Click`](crate::Click) object per line.
//!
//! ```json
//! {"ts_ms":1331881176000,"visitor":"7D1C...","url":"http://www.acme.com/SH55126545/VD55170364",
//!  "ip":"99.46.44.132","user_agent":"Mozilla/5.0 ...","gender":"F","age":30}
//! ```
//! Blank lines are skipped. A line that is not a valid click becomes a dead letter.

use std::io::BufRead;

use super::{DeadLetter, Lines, LogRecord, ReaderError};
use crate::click::{Click, ClickJson, ClickRef};

/// Streaming reader for JSON lines of clicks.
pub struct JsonLinesReader<R> {
    lines: Lines<R>,
}

impl<R: BufRead> JsonLinesReader<R> {
    /// Reads `inner`, naming it `name` in dead letters and errors.
    pub fn new(name: &str, inner: R) -> Self {
        JsonLinesReader {
            lines: Lines::new(name, inner),
        }
    }
}

/// Parses and validates one JSON click (the collector uses the same rules).
pub fn parse_click(bytes: &[u8]) -> Result<Click, String> {
    let click: Click =
        serde_json::from_slice(bytes).map_err(|e| format!("invalid click JSON: {e}"))?;
    click.validate().map_err(|e| e.to_string())?;
    Ok(click)
}

impl<R: BufRead> JsonLinesReader<R> {
    /// Reads the rest: each valid click handed to `on_click` borrowed from its line (nothing is
    /// copied unless `on_click` keeps it), each bad line to `on_malformed`. Only an I/O error
    /// stops it.
    pub fn read_all(
        &mut self,
        mut on_click: impl FnMut(ClickRef<'_>),
        mut on_malformed: impl FnMut(DeadLetter),
    ) -> Result<(), ReaderError> {
        while let Some(line) = self.lines.next_line() {
            let line = line?;
            if line.bytes.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            // The line checked as UTF-8 once, 32 or 64 bytes at a time: `from_slice` would check
            // each string on its own, a word at a time (an eighth of reading a line).
            let read = simdutf8::basic::from_utf8(line.bytes)
                .map_err(|_| {
                    let e = std::str::from_utf8(line.bytes).expect_err("simdutf8 found a bad byte");
                    format!(
                        "invalid click JSON: invalid UTF-8 at byte {}",
                        e.valid_up_to()
                    )
                })
                .and_then(|text| {
                    serde_json::from_str::<ClickJson<'_>>(text)
                        .map_err(|e| format!("invalid click JSON: {e}"))
                })
                .and_then(|json| json.with_log_click(&mut on_click));
            if let Err(reason) = read {
                on_malformed(DeadLetter::new(
                    line.source,
                    line.number,
                    reason,
                    line.bytes,
                ));
            }
        }
        Ok(())
    }
}

impl<R: BufRead> Iterator for JsonLinesReader<R> {
    type Item = Result<LogRecord, ReaderError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let line = match self.lines.next_line()? {
                Ok(line) => line,
                Err(e) => return Some(Err(e)),
            };
            if line.bytes.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Some(Ok(match parse_click(line.bytes) {
                Ok(click) => LogRecord::Click(click),
                Err(reason) => LogRecord::Malformed(DeadLetter::new(
                    line.source,
                    line.number,
                    reason,
                    line.bytes,
                )),
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Vec<LogRecord> {
        JsonLinesReader::new("t.jsonl", text.as_bytes())
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn reads_clicks_and_rejects_bad_lines_with_their_line_number() {
        let records = read(concat!(
            "{\"ts_ms\":1,\"visitor\":\"a\",\"url\":\"http://x/1\",\"gender\":\"F\",\"age\":30}\n",
            "\n",
            "not json\n",
            "{\"ts_ms\":2,\"visitor\":\"\",\"url\":\"http://x/1\"}\n",
            "{\"ts_ms\":3,\"visitor\":\"b\",\"url\":\"http://x/2\",\"extra\":1}\n",
        ));
        assert_eq!(records.len(), 4);
        let LogRecord::Click(first) = &records[0] else {
            panic!("first line is valid")
        };
        assert_eq!(first.age, Some(30));
        let lines: Vec<u64> = records[1..]
            .iter()
            .map(|r| match r {
                LogRecord::Malformed(d) => d.position,
                LogRecord::Click(_) => panic!("expected a dead letter"),
            })
            .collect();
        assert_eq!(lines, [3, 4, 5]);
    }

    /// `read_all` borrows from the line where it can, and copies an escaped text: it reads
    /// what the iterator reads, and a line that is not UTF-8 is a dead letter saying where.
    #[test]
    fn read_all_reads_what_the_iterator_reads_escapes_and_bad_bytes_included() {
        let mut text = concat!(
            r#"{"ts_ms":1,"visitor":"a\u0062","url":"http://x/\"1\"","city":"K\u00f6ln","country":"deu"}"#,
            "\n",
            r#"{"type":"search","ts_ms":2,"visitor":"b","url":"http://x/s?utm_source=n","query":"red"}"#,
            "\n",
            r#"{"ts_ms":3,"visitor":"c","url":"http://x/1","extra":1}"#,
            "\n",
        )
        .as_bytes()
        .to_vec();
        text.extend_from_slice(b"{\"ts_ms\":4,\"visitor\":\"\xff\",\"url\":\"u\"}\n");
        let by_iterator: Vec<LogRecord> = JsonLinesReader::new("t.jsonl", &text[..])
            .map(Result::unwrap)
            .collect();
        let (mut clicks, mut letters) = (Vec::new(), Vec::new());
        JsonLinesReader::new("t.jsonl", &text[..])
            .read_all(|c| clicks.push(c.to_click()), |l| letters.push(l))
            .unwrap();
        let iterated: Vec<&Click> = by_iterator
            .iter()
            .filter_map(|r| match r {
                LogRecord::Click(c) => Some(c),
                LogRecord::Malformed(_) => None,
            })
            .collect();
        assert_eq!(clicks.iter().collect::<Vec<_>>(), iterated);
        assert_eq!(clicks[0].visitor, "ab");
        assert_eq!(clicks[0].url, "http://x/\"1\"");
        assert_eq!(clicks[0].city.as_deref(), Some("Köln"));
        assert_eq!(
            clicks[1]
                .detail
                .as_ref()
                .and_then(|d| d.utm.as_ref())
                .and_then(|u| u.source.as_deref()),
            Some("n")
        );
        let positions: Vec<u64> = letters.iter().map(|l| l.position).collect();
        assert_eq!(positions, [3, 4]);
        assert!(
            letters[0].reason.contains("unknown field `extra`"),
            "{}",
            letters[0].reason
        );
        assert!(
            letters[1].reason.contains("invalid UTF-8 at byte 22"),
            "{}",
            letters[1].reason
        );
    }

    fn reason(record: &LogRecord) -> &str {
        match record {
            LogRecord::Malformed(d) => &d.reason,
            LogRecord::Click(c) => panic!("expected a dead letter, read {c:?}"),
        }
    }

    #[test]
    fn interactions_read_with_their_fields_and_old_lines_as_page_views() {
        use crate::event::{EventType, PropValue};
        let records = read(concat!(
            r#"{"ts_ms":1,"visitor":"a","url":"http://x/SH1/VD1?utm_source=mail&utm_medium=email"}"#,
            "\n",
            r#"{"type":"add_to_cart","ts_ms":2,"visitor":"a","url":"http://x/SH1/VD1","session_id":"s1","product":{"id":"VD1","price":19.5,"quantity":2,"currency":"EUR"},"properties":{"colour":"red","size":42,"gift":true}}"#,
            "\n",
            r#"{"type":"purchase","ts_ms":3,"visitor":"a","url":"http://x/done","order":{"id":"o-1","revenue":39.0,"currency":"EUR","items":[{"product_id":"VD1","price":19.5,"quantity":2}]}}"#,
            "\n",
            r#"{"type":"search","ts_ms":4,"visitor":"a","url":"http://x/s","query":"red shoes","referrer":"https://www.google.com/"}"#,
            "\n",
            r#"{"type":"newsletter_signup","ts_ms":5,"visitor":"a","url":"http://x/"}"#,
            "\n",
        ));
        let clicks: Vec<&Click> = records
            .iter()
            .map(|r| match r {
                LogRecord::Click(c) => c,
                LogRecord::Malformed(d) => panic!("line {}: {}", d.position, d.reason),
            })
            .collect();
        let types: Vec<&str> = clicks.iter().map(|c| c.event.as_str()).collect();
        assert_eq!(
            types,
            [
                "page_view",
                "add_to_cart",
                "purchase",
                "search",
                "newsletter_signup"
            ]
        );
        // An old line: a page view, its campaign read from the URL.
        let utm = clicks[0].detail.as_ref().unwrap().utm.as_ref().unwrap();
        assert_eq!(
            (utm.source.as_deref(), utm.medium.as_deref()),
            (Some("mail"), Some("email"))
        );
        let cart = clicks[1].detail.as_ref().unwrap();
        assert_eq!(cart.product_id(), Some("VD1"));
        assert_eq!(cart.product.as_ref().unwrap().quantity, Some(2));
        assert_eq!(cart.session_id.as_deref(), Some("s1"));
        assert_eq!(cart.properties["size"], PropValue::Number(42.0));
        assert_eq!(cart.properties["gift"], PropValue::Bool(true));
        let order = clicks[2].detail.as_ref().unwrap().order.as_ref().unwrap();
        assert_eq!(
            (order.id.as_str(), order.revenue, order.items.len()),
            ("o-1", 39.0, 1)
        );
        assert_eq!(clicks[3].event, EventType::Search);
        assert!(clicks[4].detail.is_none());
        // What a line says, a dump prints again, and it reads back the same.
        for click in clicks {
            let json = serde_json::to_string(click).unwrap();
            assert_eq!(&parse_click(json.as_bytes()).unwrap(), click, "{json}");
        }
    }

    #[test]
    fn events_that_break_a_rule_are_dead_letters_with_the_reason() {
        let cases = [
            (
                r#"{"type":"add_to_cart","ts_ms":2,"visitor":"a","url":"http://x/1"}"#,
                "a add_to_cart event needs product.id",
            ),
            (
                r#"{"type":"purchase","ts_ms":2,"visitor":"a","url":"http://x/1"}"#,
                "a purchase event needs an order",
            ),
            (
                r#"{"type":"Add To Cart","ts_ms":2,"visitor":"a","url":"http://x/1"}"#,
                "is neither a built-in type",
            ),
            (
                r#"{"ts_ms":2,"visitor":"a","url":"http://x/1","token":"t"}"#,
                "field `token` belongs to the collector",
            ),
            (
                r#"{"visitor":"a","url":"http://x/1"}"#,
                "missing field `ts_ms`",
            ),
            (
                r#"{"ts_ms":2,"visitor":"a","url":"http://x/1","properties":{"k":[1]}}"#,
                "a property's value must be a string, a number or a bool",
            ),
            (
                r#"{"ts_ms":2,"visitor":"a","url":"http://x/1","product":{"id":"VD1","currency":"euro"}}"#,
                "is not an ISO 4217 code",
            ),
            (
                r#"{"ts_ms":2,"visitor":"a","url":"http://x/1","product":{"id":"VD1","colour":"red"}}"#,
                "unknown field `colour`",
            ),
        ];
        for (line, expected) in cases {
            let records = read(&format!("{line}\n"));
            let reason = reason(&records[0]);
            assert!(reason.contains(expected), "{line}: {reason}");
        }
        let long = format!(
            r#"{{"ts_ms":2,"visitor":"a","url":"http://x/1","properties":{{"plan":"{}"}}}}"#,
            "x".repeat(300)
        );
        assert!(
            reason(&read(&format!("{long}\n"))[0])
                .contains("field properties.plan is 300 bytes long, more than the limit of 256")
        );
    }
}
