//! The change messages of PostgreSQL's `pgoutput` plugin (protocol version 1, text format), as
//! the logical replication stream carries them inside its `XLogData`: `Relation` (a table's
//! columns, sent before its first change on each connection and again after a schema change),
//! `Insert`, `Update`, `Delete`, `Truncate`, `Type` and `Origin`. `Begin` and `Commit` are read
//! by the replication client itself. A pure decoder, fuzzed (`fuzz_targets/pgoutput.rs`): any
//! byte string is a message or an error, never a panic.
//!
//! The format: PostgreSQL's documentation, "Logical Replication Message Formats".

use std::sync::Arc;

/// Why a message cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// It ends before a field it announces.
    #[error("pgoutput message {tag:?} ends early (reading {field})")]
    Truncated {
        /// The message's tag.
        tag: char,
        /// The field being read.
        field: &'static str,
    },
    /// A byte that names no kind of tuple or column.
    #[error("pgoutput message {tag:?} has an unknown {what} {byte:?}")]
    Unknown {
        /// The message's tag.
        tag: char,
        /// What the byte should have named.
        what: &'static str,
        /// The byte.
        byte: char,
    },
    /// Bytes after its last field.
    #[error("pgoutput message {tag:?} has {extra} bytes after its last field")]
    Trailing {
        /// The message's tag.
        tag: char,
        /// How many.
        extra: usize,
    },
    /// An empty message.
    #[error("empty pgoutput message")]
    Empty,
}

/// A column of a relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// Whether it is part of the replica identity (the key a delete carries).
    pub key: bool,
    /// Its type's OID.
    pub type_oid: u32,
}

/// A table as the stream describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Its OID, which the change messages name.
    pub id: u32,
    /// Its schema.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its replica identity setting: `d` (default: the primary key), `n` (nothing), `f`
    /// (full: every column), `i` (an index).
    pub replica_identity: u8,
    /// Its columns, in order.
    pub columns: Vec<Column>,
}

impl Relation {
    /// `schema.table`.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.namespace, self.name)
    }
}

/// One column's value in a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A TOASTed value the change did not touch: not sent.
    Unchanged,
    /// The value in PostgreSQL's text output form.
    Text(Arc<str>),
    /// The value in binary form (only with the `binary` option, which Clickpulse does not ask
    /// for).
    Binary(Vec<u8>),
}

impl Value {
    /// Its text, if it has one.
    pub fn text(&self) -> Option<&str> {
        match self {
            Value::Text(t) => Some(t),
            _ => None,
        }
    }
}

/// A row's values, in the relation's column order.
pub type Tuple = Vec<Value>;

/// A change message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A table's description.
    Relation(Relation),
    /// A new row.
    Insert {
        /// The relation's OID.
        relation: u32,
        /// The row.
        new: Tuple,
    },
    /// A changed row: `old` is the key (`K`) or the whole old row (`O`, with replica identity
    /// full) when the server sends it.
    Update {
        /// The relation's OID.
        relation: u32,
        /// The old key or row, if sent.
        old: Option<Tuple>,
        /// The new row.
        new: Tuple,
    },
    /// A removed row: its key, or its whole old row with replica identity full.
    Delete {
        /// The relation's OID.
        relation: u32,
        /// The key or old row.
        old: Tuple,
    },
    /// Tables emptied by `TRUNCATE`.
    Truncate {
        /// Their OIDs.
        relations: Vec<u32>,
    },
    /// Anything else (`Type`, `Origin`, `Begin`, `Commit`, …): nothing to map.
    Other(char),
}

struct Reader<'a> {
    bytes: &'a [u8],
    tag: char,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(DecodeError::Truncated {
                tag: self.tag,
                field,
            });
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A NUL-terminated string.
    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let end = memchr_nul(self.bytes).ok_or(DecodeError::Truncated {
            tag: self.tag,
            field,
        })?;
        let s = String::from_utf8_lossy(&self.bytes[..end]).into_owned();
        self.bytes = &self.bytes[end + 1..];
        Ok(s)
    }

    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let n = self.u16("the tuple's column count")?;
        // Each column takes at least one byte: a count beyond what is left is a truncation,
        // found before anything is allocated for it.
        if usize::from(n) > self.bytes.len() {
            return Err(DecodeError::Truncated {
                tag: self.tag,
                field: "a tuple's columns",
            });
        }
        let mut values = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            let kind = self.u8("a column's kind")?;
            values.push(match kind {
                b'n' => Value::Null,
                b'u' => Value::Unchanged,
                b't' | b'b' => {
                    let len = self.u32("a column's length")? as usize;
                    let bytes = self.take(len, "a column's value")?;
                    if kind == b't' {
                        Value::Text(Arc::from(String::from_utf8_lossy(bytes)))
                    } else {
                        Value::Binary(bytes.to_vec())
                    }
                }
                other => {
                    return Err(DecodeError::Unknown {
                        tag: self.tag,
                        what: "column kind",
                        byte: other as char,
                    });
                }
            });
        }
        Ok(values)
    }

    fn end(self, message: Message) -> Result<Message, DecodeError> {
        if self.bytes.is_empty() {
            Ok(message)
        } else {
            Err(DecodeError::Trailing {
                tag: self.tag,
                extra: self.bytes.len(),
            })
        }
    }
}

fn memchr_nul(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == 0)
}

/// Decodes one pgoutput message.
pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
    let (&tag, rest) = bytes.split_first().ok_or(DecodeError::Empty)?;
    let tag = tag as char;
    let mut r = Reader { bytes: rest, tag };
    match tag {
        'R' => {
            let id = r.u32("the relation's OID")?;
            let namespace = r.string("the relation's schema")?;
            let name = r.string("the relation's name")?;
            let replica_identity = r.u8("the replica identity")?;
            let n = r.u16("the column count")?;
            let mut columns = Vec::with_capacity(usize::from(n).min(r.bytes.len() / 10));
            for _ in 0..n {
                let flags = r.u8("a column's flags")?;
                let name = r.string("a column's name")?;
                let type_oid = r.u32("a column's type")?;
                let _typmod = r.u32("a column's type modifier")?;
                columns.push(Column {
                    name,
                    key: flags & 1 == 1,
                    type_oid,
                });
            }
            r.end(Message::Relation(Relation {
                id,
                namespace,
                name,
                replica_identity,
                columns,
            }))
        }
        'I' => {
            let relation = r.u32("the relation's OID")?;
            match r.u8("the tuple's marker")? {
                b'N' => {}
                other => {
                    return Err(DecodeError::Unknown {
                        tag,
                        what: "tuple marker",
                        byte: other as char,
                    });
                }
            }
            let new = r.tuple()?;
            r.end(Message::Insert { relation, new })
        }
        'U' => {
            let relation = r.u32("the relation's OID")?;
            let mut old = None;
            let mut marker = r.u8("the tuple's marker")?;
            if marker == b'K' || marker == b'O' {
                old = Some(r.tuple()?);
                marker = r.u8("the new tuple's marker")?;
            }
            if marker != b'N' {
                return Err(DecodeError::Unknown {
                    tag,
                    what: "tuple marker",
                    byte: marker as char,
                });
            }
            let new = r.tuple()?;
            r.end(Message::Update { relation, old, new })
        }
        'D' => {
            let relation = r.u32("the relation's OID")?;
            match r.u8("the tuple's marker")? {
                b'K' | b'O' => {}
                other => {
                    return Err(DecodeError::Unknown {
                        tag,
                        what: "tuple marker",
                        byte: other as char,
                    });
                }
            }
            let old = r.tuple()?;
            r.end(Message::Delete { relation, old })
        }
        'T' => {
            let n = r.u32("the relation count")? as usize;
            let _options = r.u8("the options")?;
            if n > r.bytes.len() / 4 {
                return Err(DecodeError::Truncated {
                    tag,
                    field: "the relations",
                });
            }
            let relations = (0..n)
                .map(|_| r.u32("a relation's OID"))
                .collect::<Result<_, _>>()?;
            r.end(Message::Truncate { relations })
        }
        other => Ok(Message::Other(other)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds pgoutput messages the way the server writes them.
    #[derive(Default)]
    pub(crate) struct Wire(pub(crate) Vec<u8>);

    impl Wire {
        pub(crate) fn tag(mut self, t: u8) -> Self {
            self.0.push(t);
            self
        }
        pub(crate) fn u8(mut self, v: u8) -> Self {
            self.0.push(v);
            self
        }
        pub(crate) fn u16(mut self, v: u16) -> Self {
            self.0.extend(v.to_be_bytes());
            self
        }
        pub(crate) fn u32(mut self, v: u32) -> Self {
            self.0.extend(v.to_be_bytes());
            self
        }
        pub(crate) fn string(mut self, s: &str) -> Self {
            self.0.extend(s.as_bytes());
            self.0.push(0);
            self
        }
        pub(crate) fn tuple(mut self, values: &[Option<&str>]) -> Self {
            self = self.u16(values.len() as u16);
            for v in values {
                match v {
                    None => self = self.u8(b'n'),
                    Some(t) => {
                        self = self.u8(b't').u32(t.len() as u32);
                        self.0.extend(t.as_bytes());
                    }
                }
            }
            self
        }
        pub(crate) fn relation(id: u32, ns: &str, name: &str, cols: &[(&str, bool)]) -> Vec<u8> {
            let mut w = Wire::default()
                .tag(b'R')
                .u32(id)
                .string(ns)
                .string(name)
                .u8(b'd')
                .u16(cols.len() as u16);
            for (c, key) in cols {
                w = w.u8(u8::from(*key)).string(c).u32(25).u32(u32::MAX);
            }
            w.0
        }
    }

    #[test]
    fn a_relation_and_its_changes_decode() {
        let rel = Wire::relation(16384, "public", "orders", &[("id", true), ("total", false)]);
        let Message::Relation(r) = decode(&rel).unwrap() else {
            panic!()
        };
        assert_eq!(r.qualified_name(), "public.orders");
        assert_eq!(
            r.columns
                .iter()
                .map(|c| (&*c.name, c.key))
                .collect::<Vec<_>>(),
            [("id", true), ("total", false)]
        );
        let insert = Wire::default()
            .tag(b'I')
            .u32(16384)
            .u8(b'N')
            .tuple(&[Some("7"), None])
            .0;
        assert_eq!(
            decode(&insert).unwrap(),
            Message::Insert {
                relation: 16384,
                new: vec![Value::Text("7".into()), Value::Null]
            }
        );
        let update = Wire::default()
            .tag(b'U')
            .u32(16384)
            .u8(b'K')
            .tuple(&[Some("7"), None])
            .u8(b'N')
            .tuple(&[Some("8"), Some("9.50")])
            .0;
        let Message::Update { old, new, .. } = decode(&update).unwrap() else {
            panic!()
        };
        assert_eq!(old.unwrap()[0], Value::Text("7".into()));
        assert_eq!(new[1].text(), Some("9.50"));
        let delete = Wire::default()
            .tag(b'D')
            .u32(16384)
            .u8(b'O')
            .tuple(&[Some("8"), Some("9.50")])
            .0;
        assert!(matches!(decode(&delete).unwrap(), Message::Delete { .. }));
        let truncate = Wire::default().tag(b'T').u32(2).u8(0).u32(1).u32(2).0;
        assert_eq!(
            decode(&truncate).unwrap(),
            Message::Truncate {
                relations: vec![1, 2]
            }
        );
        assert_eq!(decode(b"Yxyz").unwrap(), Message::Other('Y'));
    }

    #[test]
    fn every_cut_of_a_message_is_an_error_never_a_panic() {
        let insert = Wire::default()
            .tag(b'I')
            .u32(1)
            .u8(b'N')
            .tuple(&[Some("abc"), None, Some("")])
            .0;
        for cut in 0..insert.len() {
            assert!(decode(&insert[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = insert.clone();
        long.push(0);
        assert_eq!(
            decode(&long),
            Err(DecodeError::Trailing { tag: 'I', extra: 1 })
        );
        let huge_count = Wire::default().tag(b'I').u32(1).u8(b'N').u16(60_000).0;
        assert!(matches!(
            decode(&huge_count),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(
            decode(&Wire::default().tag(b'I').u32(1).u8(b'X').0),
            Err(DecodeError::Unknown { .. })
        ));
    }
}
