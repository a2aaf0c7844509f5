//! Streaming readers for click logs.
//!
//! Two formats, each plain, gzip- or Zstandard-compressed (detected from the content, not the
//! name):
//! - the Omniture/Hortonworks TSV log ([`tsv`]): 178 (or 53) tab-separated columns, optional
//!   header line;
//! - JSON lines of [`Click`](crate::Click) ([`jsonl`]), the live collector's format.
//!
//! Readers hold one line at a time, so memory stays constant whatever the file size. A row that
//! cannot be read becomes a [`DeadLetter`] carrying its source, line number and reason; it is
//! counted and never stops the run. Only an I/O error (an unreadable file, a truncated gzip
//! stream) is a [`ReaderError`].

pub mod jsonl;
pub mod snowplow;
pub mod tsv;

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use flate2::read::MultiGzDecoder;
use serde::{Deserialize, Serialize};

use crate::click::{Click, ClickRef};

/// What a reader yields for one input line.
#[derive(Debug, Clone, PartialEq)]
pub enum LogRecord {
    /// A valid page view.
    Click(Click),
    /// A row that could not be read, with where and why.
    Malformed(DeadLetter),
}

/// A record that could not be processed, kept with its origin and the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Where it came from: a file name, `collector`, or a topic name.
    pub source: String,
    /// Position in the source: 1-based line number for files, offset for topics.
    pub position: u64,
    /// Why it was rejected.
    pub reason: String,
    /// The start of the raw record: at most [`DEAD_LETTER_RAW_BYTES`] bytes of lossy UTF-8
    /// (each invalid sequence shown as U+FFFD), cut at a character boundary.
    pub raw: String,
}

/// How much of a rejected record a dead letter keeps.
pub const DEAD_LETTER_RAW_BYTES: usize = 512;

impl DeadLetter {
    /// A dead letter for `raw` bytes at `position` of `source`.
    pub fn new(source: &str, position: u64, reason: impl Into<String>, raw: &[u8]) -> Self {
        DeadLetter {
            source: source.to_owned(),
            position,
            reason: reason.into(),
            raw: lossy_prefix(raw, DEAD_LETTER_RAW_BYTES),
        }
    }
}

/// The longest prefix of `raw`, decoded lossily, that fits in `limit` bytes of UTF-8.
///
/// Cutting the bytes first would not do: each invalid byte becomes a 3-byte U+FFFD (so the text
/// could triple), and a character cut in half would show as a spurious U+FFFD.
fn lossy_prefix(raw: &[u8], limit: usize) -> String {
    let mut out = String::with_capacity(raw.len().min(limit));
    for chunk in raw.utf8_chunks() {
        for c in chunk.valid().chars() {
            if out.len() + c.len_utf8() > limit {
                return out;
            }
            out.push(c);
        }
        if !chunk.invalid().is_empty() {
            if out.len() + char::REPLACEMENT_CHARACTER.len_utf8() > limit {
                return out;
            }
            out.push(char::REPLACEMENT_CHARACTER);
        }
    }
    out
}

/// An error that stops reading a source.
#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    /// The file could not be opened.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The path.
        path: String,
        /// The cause.
        source: io::Error,
    },
    /// Reading failed part-way (for example a truncated gzip stream).
    #[error("cannot read {name} after line {line}: {source}")]
    Read {
        /// The source's name.
        name: String,
        /// The last line read successfully.
        line: u64,
        /// The cause.
        source: io::Error,
    },
}

/// The log formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Omniture/Hortonworks TSV.
    Tsv,
    /// JSON lines of clicks.
    JsonLines,
    /// Snowplow enriched events (131-field TSV).
    SnowplowEnriched,
}

/// A streaming reader over one log, whichever its format.
pub struct LogReader {
    inner: Inner,
}

enum Inner {
    Tsv(tsv::TsvReader<Box<dyn BufRead + Send>>),
    Json(jsonl::JsonLinesReader<Box<dyn BufRead + Send>>),
    Snowplow(snowplow::EnrichedReader<Box<dyn BufRead + Send>>),
}

impl LogReader {
    /// Opens a log file; gzip and the format are detected from its first bytes.
    pub fn open(path: &Path) -> Result<Self, ReaderError> {
        let name = path.display().to_string();
        let file = File::open(path).map_err(|source| ReaderError::Open {
            path: name.clone(),
            source,
        })?;
        Self::from_reader(&name, file)
    }

    /// Reads a log from any byte source (a file, bundled bytes, a socket).
    pub fn from_reader(
        name: &str,
        reader: impl Read + Send + 'static,
    ) -> Result<Self, ReaderError> {
        let read_err = |source| ReaderError::Read {
            name: name.to_owned(),
            line: 0,
            source,
        };
        let mut stream = decompress(reader).map_err(read_err)?;
        let format = sniff_format(stream.fill_buf().map_err(read_err)?);
        let inner = match format {
            LogFormat::Tsv => Inner::Tsv(tsv::TsvReader::new(name, stream)),
            LogFormat::JsonLines => Inner::Json(jsonl::JsonLinesReader::new(name, stream)),
            LogFormat::SnowplowEnriched => {
                Inner::Snowplow(snowplow::EnrichedReader::new(name, stream))
            }
        };
        Ok(LogReader { inner })
    }

    /// The detected format.
    pub fn format(&self) -> LogFormat {
        match self.inner {
            Inner::Tsv(_) => LogFormat::Tsv,
            Inner::Json(_) => LogFormat::JsonLines,
            Inner::Snowplow(_) => LogFormat::SnowplowEnriched,
        }
    }
}

impl LogReader {
    /// Reads the rest of the log: each valid click is handed to `on_click` borrowed (a TSV row
    /// is not copied unless `on_click` keeps it), each bad row to `on_malformed`. Only an I/O
    /// error stops it.
    pub fn read_all(
        self,
        on_click: impl FnMut(ClickRef<'_>),
        on_malformed: impl FnMut(DeadLetter),
    ) -> Result<(), ReaderError> {
        match self.inner {
            Inner::Tsv(mut r) => r.read_all(on_click, on_malformed),
            Inner::Json(mut r) => r.read_all(on_click, on_malformed),
            Inner::Snowplow(mut r) => r.read_all(on_click, on_malformed),
        }
    }
}

impl Iterator for LogReader {
    type Item = Result<LogRecord, ReaderError>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.inner {
            Inner::Tsv(r) => r.next(),
            Inner::Json(r) => r.next(),
            Inner::Snowplow(r) => r.next(),
        }
    }
}

/// The compressed formats a log may come in, told apart by their first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain bytes.
    None,
    /// gzip (RFC 1952), one member or several concatenated.
    Gzip,
    /// Zstandard (RFC 8878), one frame or several concatenated. It inflates the real log about
    /// 2.5 times as fast as gzip does (see BENCHMARKS.md).
    Zstd,
}

impl Compression {
    /// The compression `head` (a stream's first bytes) starts with.
    pub fn sniff(head: &[u8]) -> Self {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// A buffered stream over `reader`, decompressed if it starts with the gzip or the Zstandard
/// magic bytes.
pub fn decompress(reader: impl Read + Send + 'static) -> io::Result<Box<dyn BufRead + Send>> {
    const BUFFER: usize = 256 * 1024;
    let mut buffered = BufReader::with_capacity(BUFFER, reader);
    Ok(match Compression::sniff(buffered.fill_buf()?) {
        Compression::Gzip => Box::new(BufReader::with_capacity(
            BUFFER,
            MultiGzDecoder::new(buffered),
        )),
        // Reads every frame up to the end, like `MultiGzDecoder` every member.
        Compression::Zstd => Box::new(BufReader::with_capacity(
            BUFFER,
            zstd::Decoder::with_buffer(buffered)?,
        )),
        Compression::None => Box::new(buffered),
    })
}

/// JSON lines start with `{` (after optional whitespace); a first line of 131 tab-separated
/// fields whose fourth is a timestamp is a Snowplow enriched event; everything else is read as
/// the Omniture TSV.
fn sniff_format(head: &[u8]) -> LogFormat {
    match head.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => LogFormat::JsonLines,
        _ => {
            let first = head.split(|b| *b == b'\n').next().unwrap_or(head);
            let first = first.strip_suffix(b"\r").unwrap_or(first);
            if snowplow::looks_enriched(first) {
                LogFormat::SnowplowEnriched
            } else {
                LogFormat::Tsv
            }
        }
    }
}

/// One line of a source, without its line ending.
pub(crate) struct Line<'a> {
    /// 1-based line number.
    pub(crate) number: u64,
    /// The bytes.
    pub(crate) bytes: &'a [u8],
    /// The source's name, for dead letters.
    pub(crate) source: &'a str,
}

/// Reads a source line by line, counting lines; an I/O error ends it (reported once). The
/// format readers build on it.
pub(crate) struct Lines<R> {
    name: String,
    inner: R,
    number: u64,
    buf: Vec<u8>,
    /// Bytes of the line returned last that are still in `inner`'s buffer.
    pending: usize,
    failed: bool,
}

impl<R: BufRead> Lines<R> {
    pub(crate) fn new(name: &str, inner: R) -> Self {
        Lines {
            name: name.to_owned(),
            inner,
            number: 0,
            buf: Vec::with_capacity(4096),
            pending: 0,
            failed: false,
        }
    }

    /// The next line; `None` at the end, or after the read error it returned.
    pub(crate) fn next_line(&mut self) -> Option<Result<Line<'_>, ReaderError>> {
        let Lines {
            name,
            inner,
            number,
            buf,
            pending,
            failed,
        } = self;
        if *failed {
            return None;
        }
        let mut fail = |source| {
            *failed = true;
            Some(Err(ReaderError::Read {
                name: name.clone(),
                line: *number,
                source,
            }))
        };
        inner.consume(std::mem::take(pending));
        // A line whole in the reader's buffer is returned from there (no copy); one that spans
        // buffer refills is gathered in `buf`.
        let whole = match inner.fill_buf() {
            Ok(available) => memchr::memchr(b'\n', available),
            Err(source) => return fail(source),
        };
        let bytes = match whole {
            Some(end) => match inner.fill_buf() {
                Ok(available) => {
                    *pending = end + 1;
                    trim_line_end(&available[..=end])
                }
                Err(source) => return fail(source),
            },
            None => match read_line(inner, buf) {
                Ok(false) => return None,
                Ok(true) => &buf[..],
                Err(source) => return fail(source),
            },
        };
        *number += 1;
        Some(Ok(Line {
            number: *number,
            bytes,
            source: name,
        }))
    }
}

/// `line` without its `\n` or `\r\n`.
fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Reads the next line into `buf` without its line ending; `Ok(false)` at the end.
fn read_line(reader: &mut impl BufRead, buf: &mut Vec<u8>) -> io::Result<bool> {
    buf.clear();
    if reader.read_until(b'\n', buf)? == 0 {
        return Ok(false);
    }
    let len = trim_line_end(buf).len();
    buf.truncate(len);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn detects_gzip_and_json_lines() {
        let line = br#"{"ts_ms":1000,"visitor":"v1","url":"http://www.acme.com/SH5/VD1"}"#;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(line).unwrap();
        let bytes = gz.finish().unwrap();
        let reader = LogReader::from_reader("x.jsonl.gz", io::Cursor::new(bytes)).unwrap();
        assert_eq!(reader.format(), LogFormat::JsonLines);
        let records: Vec<_> = reader.map(Result::unwrap).collect();
        assert!(matches!(&records[..], [LogRecord::Click(c)] if c.visitor == "v1"));
    }

    #[test]
    fn dead_letter_raw_text_stays_within_its_limit() {
        let invalid = DeadLetter::new("x", 1, "bad", &[0xff; 600]);
        assert_eq!(invalid.raw, "\u{fffd}".repeat(DEAD_LETTER_RAW_BYTES / 3));
        let mut cut_char = vec![b'a'; DEAD_LETTER_RAW_BYTES - 1];
        cut_char.extend_from_slice("é and more".as_bytes());
        let cut = DeadLetter::new("x", 1, "bad", &cut_char);
        assert_eq!(
            cut.raw,
            "a".repeat(DEAD_LETTER_RAW_BYTES - 1),
            "no half character"
        );
        let short = DeadLetter::new("x", 1, "bad", b"ok\xffok");
        assert_eq!(short.raw, "ok\u{fffd}ok");
    }

    /// `bytes` as one Zstandard frame with a content checksum, as `zstd` writes by default.
    fn zstd(bytes: &[u8]) -> Vec<u8> {
        let mut z = zstd::Encoder::new(Vec::new(), 3).unwrap();
        z.include_checksum(true).unwrap();
        z.write_all(bytes).unwrap();
        z.finish().unwrap()
    }

    #[test]
    fn detects_zstd_and_reads_every_frame() {
        let first = b"1330560019\t2\n";
        let mut bytes = zstd(first);
        bytes.extend(zstd(b"second frame\n"));
        let mut stream = decompress(io::Cursor::new(bytes)).unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        assert_eq!(text, "1330560019\t2\nsecond frame\n");
        let line = br#"{"ts_ms":1000,"visitor":"v1","url":"http://www.acme.com/SH5/VD1"}"#;
        let reader = LogReader::from_reader("x.jsonl.zst", io::Cursor::new(zstd(line))).unwrap();
        assert_eq!(reader.format(), LogFormat::JsonLines);
        let records: Vec<_> = reader.map(Result::unwrap).collect();
        assert!(matches!(&records[..], [LogRecord::Click(c)] if c.visitor == "v1"));
    }

    #[test]
    fn sniffs_compression_from_the_first_bytes_only() {
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(Compression::sniff(&zstd(b"x")), Compression::Zstd);
        assert_eq!(Compression::sniff(b"1330560019\t"), Compression::None);
        assert_eq!(Compression::sniff(&[0x28, 0xb5]), Compression::None);
        assert_eq!(Compression::sniff(b""), Compression::None);
    }

    #[test]
    fn truncated_or_corrupt_zstd_is_a_read_error_not_a_panic() {
        let whole = zstd(&b"1\t2\t3\n".repeat(10_000));
        // An error when the reader opens (its first refill) or on a later line; never a quiet
        // end.
        let fails = |name: &str, bytes: Vec<u8>| {
            LogReader::from_reader(name, io::Cursor::new(bytes))
                .map_or(true, |r| r.into_iter().any(|r| r.is_err()))
        };
        let mut cut = whole.clone();
        cut.truncate(cut.len() / 2);
        assert!(fails("cut.tsv.zst", cut));
        let mut corrupt = whole;
        let n = corrupt.len();
        corrupt[n / 2..n - 4].fill(0xa5);
        assert!(fails("bad.tsv.zst", corrupt), "corruption went unnoticed");
    }

    #[test]
    fn truncated_gzip_is_a_read_error_not_a_panic() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&b"1\t2\t3\n".repeat(10_000)).unwrap();
        let mut bytes = gz.finish().unwrap();
        bytes.truncate(bytes.len() / 2);
        let reader = LogReader::from_reader("cut.tsv.gz", io::Cursor::new(bytes)).unwrap();
        assert!(reader.into_iter().any(|r| r.is_err()));
    }
}
