//! The JSON-lines click format: one [`Click`](crate::Click) object per line.
//!
//! ```json
//! {"ts_ms":1331881176000,"visitor":"7D1C...","url":"http://www.acme.com/SH55126545/VD55170364",
//!  "ip":"99.46.44.132","user_agent":"Mozilla/5.0 ...","gender":"F","age":30}
//! ```
//! Blank lines are skipped. A line that is not a valid click becomes a dead letter.

use std::io::BufRead;

use super::{DeadLetter, Lines, LogRecord, ReaderError};
use crate::click::Click;

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
}
