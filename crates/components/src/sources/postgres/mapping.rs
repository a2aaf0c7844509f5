//! The pure core of the source: a committed transaction's row changes, as the stream sent them,
//! into events by the `[[postgres.table]]` mappings. No I/O: the runtimes feed it decoded
//! messages and take a transaction's events at its commit.
//!
//! A row becomes one event per mapping of its table whose operations include the change and
//! whose `when` holds; order lines (`lines_of`) are gathered first and attached to the purchase
//! with their order id in the same transaction. A row that cannot become a valid event (a NULL
//! visitor, a price that is not a number, a column the table does not have) is a dead letter
//! with the reason; a row no mapping takes is ignored and counted.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use clickpulse_engine::click::Click;
use clickpulse_engine::event::{self, EventDetail, EventProduct, EventType, LineItem, Order};
use clickpulse_engine::reader::DeadLetter;

use super::config::{Operation, PostgresConfig, TableMapping, qualified};
use super::pgoutput::{Message, Relation, Tuple, Value};

/// One change of a transaction.
#[derive(Debug, Clone)]
pub struct Change {
    relation: Arc<Relation>,
    operation: Operation,
    row: Tuple,
}

/// What a transaction became.
#[derive(Debug, Default)]
pub struct Mapped {
    /// Its events, in the transaction's order.
    pub clicks: Vec<Click>,
    /// Its rows that could not become events.
    pub dead_letters: Vec<DeadLetter>,
    /// Its changes no mapping takes (other tables, other operations, `when` not met,
    /// truncations).
    pub ignored: u64,
}

/// The mappings, and the relations the stream described on this connection.
pub struct Mapper {
    database: String,
    tables: Vec<(String, TableMapping, EventType)>,
    lines: Vec<(String, TableMapping)>,
    relations: HashMap<u32, Arc<Relation>>,
}

impl Mapper {
    /// The mappings of a checked configuration.
    pub fn new(config: &PostgresConfig) -> Mapper {
        let mut tables = Vec::new();
        let mut lines = Vec::new();
        for t in &config.tables {
            if t.lines_of.is_some() {
                lines.push((qualified(&t.name), t.clone()));
            } else if let Some(Ok(event)) = t.event.as_deref().map(EventType::parse) {
                tables.push((qualified(&t.name), t.clone(), event));
            }
        }
        Mapper {
            database: config.database.clone(),
            tables,
            lines,
            relations: HashMap::new(),
        }
    }

    /// Forgets the relations (a new connection describes them again).
    pub fn reconnected(&mut self) {
        self.relations.clear();
    }

    /// Takes one change message: a relation is remembered, a row change is added to `txn`.
    /// Returns how many changes it ignored (a truncation's tables, a change of a table the
    /// stream never described).
    pub fn message(&mut self, message: Message, txn: &mut Vec<Change>) -> u64 {
        let (relation, operation, row) = match message {
            Message::Relation(r) => {
                self.relations.insert(r.id, Arc::new(r));
                return 0;
            }
            Message::Insert { relation, new } => (relation, Operation::Insert, new),
            Message::Update { relation, new, .. } => (relation, Operation::Update, new),
            Message::Delete { relation, old } => (relation, Operation::Delete, old),
            Message::Truncate { relations } => return relations.len() as u64,
            Message::Other(_) => return 0,
        };
        match self.relations.get(&relation) {
            Some(relation) => {
                txn.push(Change {
                    relation: relation.clone(),
                    operation,
                    row,
                });
                0
            }
            None => 1,
        }
    }

    /// A committed transaction's changes as events. `now_ms` is the event time where a mapping
    /// names no time column (the event clock when the transaction arrived, as a live click is
    /// stamped); `commit_lsn` names the transaction in dead letters.
    pub fn transaction(&self, changes: &[Change], now_ms: i64, commit_lsn: u64) -> Mapped {
        let mut mapped = Mapped::default();
        let dead = |change: &Change, reason: String| {
            DeadLetter::new(
                &format!("postgres:{}", change.relation.qualified_name()),
                commit_lsn,
                reason,
                row_json(change).as_bytes(),
            )
        };
        // The order lines first: (orders table, order id) → lines, in the transaction's order.
        let mut lines: HashMap<(String, String), Vec<LineItem>> = HashMap::new();
        let mut line_rows: Vec<(usize, String, String)> = Vec::new();
        let mut taken = vec![false; changes.len()];
        for (i, change) in changes.iter().enumerate() {
            let name = change.relation.qualified_name();
            for (table, mapping) in &self.lines {
                if *table != name || !mapping.operations.contains(&change.operation) {
                    continue;
                }
                let row = Row { change };
                match row
                    .when(mapping)
                    .and_then(|ok| ok.then(|| row.line_item(mapping)).transpose())
                {
                    Ok(Some((order, item))) => {
                        let target = qualified(mapping.lines_of.as_deref().unwrap_or_default());
                        line_rows.push((i, target.clone(), order.clone()));
                        lines.entry((target, order)).or_default().push(item);
                        taken[i] = true;
                    }
                    Ok(None) => {}
                    Err(reason) => {
                        mapped.dead_letters.push(dead(change, reason));
                        taken[i] = true;
                    }
                }
            }
        }
        let mut orders_seen: Vec<(String, String)> = Vec::new();
        let mut orders_left_out: Vec<(String, String)> = Vec::new();
        for (i, change) in changes.iter().enumerate() {
            let name = change.relation.qualified_name();
            for (table, mapping, event) in &self.tables {
                if *table != name || !mapping.operations.contains(&change.operation) {
                    continue;
                }
                let row = Row { change };
                match row.when(mapping) {
                    Ok(true) => {}
                    Ok(false) => {
                        // An order its `when` leaves out (not paid yet): its lines go with it.
                        if let Some(Ok(Some(id))) =
                            mapping.fields.order_id.as_deref().map(|c| row.get(c))
                        {
                            orders_left_out.push((table.clone(), id.to_owned()));
                        }
                        continue;
                    }
                    Err(reason) => {
                        mapped.dead_letters.push(dead(change, reason));
                        taken[i] = true;
                        continue;
                    }
                }
                taken[i] = true;
                match row.click(mapping, event, &self.database, now_ms, &lines, table) {
                    Ok(click) => {
                        if let Some(order) = click.detail.as_ref().and_then(|d| d.order.as_ref()) {
                            orders_seen.push((table.clone(), order.id.clone()));
                        }
                        mapped.clicks.push(click);
                    }
                    Err(reason) => mapped.dead_letters.push(dead(change, reason)),
                }
            }
        }
        // Lines whose order is not in the transaction: kept as dead letters, never dropped.
        for (i, target, order) in line_rows {
            let key = (target.clone(), order.clone());
            if orders_left_out.contains(&key) && !orders_seen.contains(&key) {
                taken[i] = false;
            } else if !orders_seen.contains(&key) {
                mapped.dead_letters.push(dead(
                    &changes[i],
                    format!(
                        "an order line of order {order:?} of {target} without that order in \
                         the same transaction"
                    ),
                ));
            }
        }
        mapped.ignored += taken.iter().filter(|t| !**t).count() as u64;
        mapped
    }
}

/// A row's columns by name.
struct Row<'a> {
    change: &'a Change,
}

impl Row<'_> {
    /// The text of `column`: `Ok(None)` for NULL.
    fn get(&self, column: &str) -> Result<Option<&str>, String> {
        let relation = &self.change.relation;
        let i = relation
            .columns
            .iter()
            .position(|c| c.name == column)
            .ok_or_else(|| {
                format!(
                    "table {} has no column {column:?}",
                    relation.qualified_name()
                )
            })?;
        match self.change.row.get(i) {
            Some(Value::Text(t)) => Ok(Some(t)),
            Some(Value::Null) | None => Ok(None),
            Some(Value::Unchanged) => Err(format!(
                "column {column:?} is an unchanged TOASTed value the update did not send (set \
                 REPLICA IDENTITY FULL on {})",
                relation.qualified_name()
            )),
            Some(Value::Binary(_)) => Err(format!("column {column:?} came in binary form")),
        }
    }

    /// The text of a column the event needs.
    fn required(&self, column: &str) -> Result<&str, String> {
        self.get(column)?.ok_or_else(|| {
            let hint = if self.change.operation == Operation::Delete {
                " (a delete carries only the key columns unless the table has REPLICA \
                 IDENTITY FULL)"
            } else {
                ""
            };
            format!("column {column:?} is NULL{hint}")
        })
    }

    fn optional(&self, column: &Option<String>) -> Result<Option<String>, String> {
        match column {
            Some(c) => Ok(self.get(c)?.map(str::to_owned)),
            None => Ok(None),
        }
    }

    fn number(&self, column: &Option<String>) -> Result<Option<f64>, String> {
        let Some(text) = self.optional(column)? else {
            return Ok(None);
        };
        text.trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .map(Some)
            .ok_or_else(|| {
                format!(
                    "column {:?} is {text:?}, not a number",
                    column.as_deref().unwrap_or_default()
                )
            })
    }

    fn quantity(&self, column: &Option<String>) -> Result<Option<u32>, String> {
        let Some(text) = self.optional(column)? else {
            return Ok(None);
        };
        text.trim().parse::<u32>().map(Some).map_err(|_| {
            format!(
                "column {:?} is {text:?}, not a quantity (a whole number ≥ 0)",
                column.as_deref().unwrap_or_default()
            )
        })
    }

    fn when(&self, mapping: &TableMapping) -> Result<bool, String> {
        for (column, value) in &mapping.when {
            if self.get(column)? != Some(value.as_str()) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn line_item(&self, mapping: &TableMapping) -> Result<(String, LineItem), String> {
        let f = &mapping.fields;
        let order = self
            .required(f.order_id.as_deref().unwrap_or_default())?
            .to_owned();
        let product_id = self
            .required(f.product_id.as_deref().unwrap_or_default())?
            .to_owned();
        Ok((
            order,
            LineItem {
                product_id,
                category: self.optional(&f.category)?,
                price: self.number(&f.price)?,
                quantity: self.quantity(&f.quantity)?.unwrap_or(1),
            },
        ))
    }

    fn click(
        &self,
        mapping: &TableMapping,
        event: &EventType,
        database: &str,
        now_ms: i64,
        lines: &HashMap<(String, String), Vec<LineItem>>,
        table: &str,
    ) -> Result<Click, String> {
        let column = mapping.visitor.as_deref().unwrap_or_default();
        let visitor = self.required(column)?;
        if visitor.trim().is_empty() {
            return Err(format!("column {column:?} (the visitor) is empty"));
        }
        let ts_ms = match &mapping.time {
            Some(column) => timestamp_ms(self.required(column)?)
                .ok_or_else(|| format!("column {column:?} is not a timestamp"))?,
            None => now_ms,
        };
        let f = &mapping.fields;
        let url = self
            .optional(&f.url)?
            .unwrap_or_else(|| format!("postgres://{database}/{table}"));
        let mut click = Click::new(ts_ms, visitor, url);
        let mut detail = EventDetail {
            session_id: self.optional(&f.session_id)?,
            query: self.optional(&f.query)?,
            ..EventDetail::default()
        };
        let product = EventProduct {
            id: self.optional(&f.product_id)?,
            category: self.optional(&f.category)?,
            price: self.number(&f.price)?,
            quantity: self.quantity(&f.quantity)?,
            currency: self.optional(&f.currency)?,
        };
        if product != EventProduct::default() {
            detail.product = Some(product);
        }
        if *event == EventType::Purchase {
            let id = self
                .required(f.order_id.as_deref().unwrap_or_default())?
                .to_owned();
            let revenue = self.number(&f.revenue)?.ok_or_else(|| {
                format!(
                    "column {:?} is NULL",
                    f.revenue.as_deref().unwrap_or_default()
                )
            })?;
            let items = lines
                .get(&(table.to_owned(), id.clone()))
                .cloned()
                .unwrap_or_default();
            detail.order = Some(Order {
                id,
                revenue,
                currency: self.optional(&f.currency)?,
                items,
            });
            detail.product = None;
        }
        for (name, column) in &mapping.properties {
            if let Some(text) = self.get(column)? {
                detail
                    .properties
                    .insert(name.clone(), event::PropValue::Text(text.to_owned()));
            }
        }
        event::validate(event, Some(&detail)).map_err(|e| e.to_string())?;
        click.event = event.clone();
        click.detail = (!detail.is_empty()).then(|| Box::new(detail));
        Ok(click)
    }
}

/// A `timestamptz` (`2026-12-07 14:08:39.5+01`) or `timestamp` (taken as UTC) in PostgreSQL's
/// text form, as unix milliseconds.
pub fn timestamp_ms(text: &str) -> Option<i64> {
    use chrono::{DateTime, NaiveDateTime};
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z") {
        return Some(t.timestamp_millis());
    }
    NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc().timestamp_millis())
}

/// A change's row as JSON (the dead letter's raw record).
fn row_json(change: &Change) -> String {
    let row: BTreeMap<&str, Option<&str>> = change
        .relation
        .columns
        .iter()
        .zip(&change.row)
        .map(|(c, v)| (c.name.as_str(), v.text()))
        .collect();
    serde_json::json!({
        "table": change.relation.qualified_name(),
        "operation": format!("{:?}", change.operation).to_lowercase(),
        "row": row,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::super::pgoutput::{decode, tests::Wire};
    use super::*;

    fn config() -> PostgresConfig {
        super::super::config::parse_table(&format!(
            "[postgres]\ndatabase = \"shop\"\n{}",
            super::super::config::SHOP_MAPPING
        ))
        .unwrap()
    }

    fn insert(rel: u32, values: &[Option<&str>]) -> Vec<u8> {
        Wire::default().tag(b'I').u32(rel).u8(b'N').tuple(values).0
    }

    fn mapper() -> Mapper {
        let config = config();
        assert_eq!(config.problems(), Vec::<String>::new());
        let mut m = Mapper::new(&config);
        let mut none = Vec::new();
        for rel in [
            Wire::relation(
                1,
                "public",
                "orders",
                &[
                    ("id", true),
                    ("visitor_id", false),
                    ("total", false),
                    ("currency", false),
                    ("status", false),
                    ("created_at", false),
                ],
            ),
            Wire::relation(
                2,
                "public",
                "order_lines",
                &[
                    ("order_id", false),
                    ("product_id", false),
                    ("price", false),
                    ("quantity", false),
                ],
            ),
            Wire::relation(
                3,
                "public",
                "cart_items",
                &[
                    ("id", true),
                    ("visitor_id", false),
                    ("product_id", false),
                    ("quantity", false),
                ],
            ),
            Wire::relation(4, "public", "audit", &[("x", false)]),
        ] {
            assert_eq!(m.message(decode(&rel).unwrap(), &mut none), 0);
        }
        m
    }

    fn changes(m: &mut Mapper, messages: &[Vec<u8>]) -> Vec<Change> {
        let mut txn = Vec::new();
        for msg in messages {
            m.message(decode(msg).unwrap(), &mut txn);
        }
        txn
    }

    #[test]
    fn an_order_with_its_lines_becomes_one_purchase_and_cart_rows_become_cart_events() {
        let mut m = mapper();
        let txn = changes(
            &mut m,
            &[
                insert(
                    1,
                    &[
                        Some("17"),
                        Some("v1"),
                        Some("59.90"),
                        Some("EUR"),
                        Some("paid"),
                        Some("2026-12-07 14:08:39.25+01"),
                    ],
                ),
                insert(2, &[Some("17"), Some("p-1"), Some("19.95"), Some("2")]),
                insert(2, &[Some("17"), Some("p-2"), Some("20"), None]),
                insert(3, &[Some("5"), Some("v2"), Some("p-3"), Some("1")]),
                Wire::default()
                    .tag(b'D')
                    .u32(3)
                    .u8(b'O')
                    .tuple(&[Some("5"), Some("v2"), Some("p-3"), Some("1")])
                    .0,
                insert(4, &[Some("x")]),
            ],
        );
        let mapped = m.transaction(&txn, 1_000, 42);
        assert_eq!(mapped.dead_letters, vec![]);
        assert_eq!(mapped.ignored, 1, "the audit row");
        let [purchase, add, remove] = &mapped.clicks[..] else {
            panic!("{:?}", mapped.clicks)
        };
        assert_eq!(purchase.event, EventType::Purchase);
        assert_eq!(purchase.visitor, "v1");
        assert_eq!(purchase.ts_ms, 1_796_648_919_250);
        assert_eq!(purchase.url, "postgres://shop/public.orders");
        let order = purchase.detail.as_ref().unwrap().order.as_ref().unwrap();
        assert_eq!((order.id.as_str(), order.revenue), ("17", 59.90));
        assert_eq!(order.currency.as_deref(), Some("EUR"));
        assert_eq!(
            order
                .items
                .iter()
                .map(|l| (l.product_id.as_str(), l.price, l.quantity))
                .collect::<Vec<_>>(),
            [("p-1", Some(19.95), 2), ("p-2", Some(20.0), 1)]
        );
        assert_eq!(add.event, EventType::AddToCart);
        assert_eq!(add.ts_ms, 1_000, "no time column: the event clock");
        assert_eq!(add.detail.as_ref().unwrap().product_id(), Some("p-3"));
        assert_eq!(remove.event, EventType::RemoveFromCart);
    }

    #[test]
    fn rows_that_cannot_be_events_are_dead_letters_with_the_reason() {
        let mut m = mapper();
        let txn = changes(
            &mut m,
            &[
                // An unpaid order: ignored (`when`).
                insert(
                    1,
                    &[
                        Some("1"),
                        Some("v"),
                        Some("5"),
                        None,
                        Some("open"),
                        Some("2026-01-01 00:00:00"),
                    ],
                ),
                insert(2, &[Some("1"), Some("p"), None, None]),
                // A paid one without a visitor.
                insert(
                    1,
                    &[
                        Some("2"),
                        None,
                        Some("5"),
                        None,
                        Some("paid"),
                        Some("2026-01-01 00:00:00"),
                    ],
                ),
                // A price that is not a number.
                insert(
                    1,
                    &[
                        Some("3"),
                        Some("v"),
                        Some("five"),
                        None,
                        Some("paid"),
                        Some("2026-01-01 00:00:00"),
                    ],
                ),
                // A line of an order not in this transaction.
                insert(2, &[Some("99"), Some("p"), None, None]),
                // A delete by key only: no visitor.
                Wire::default()
                    .tag(b'D')
                    .u32(3)
                    .u8(b'K')
                    .tuple(&[Some("5"), None, None, None])
                    .0,
            ],
        );
        let mapped = m.transaction(&txn, 0, 7);
        assert_eq!(mapped.clicks, vec![]);
        assert_eq!(mapped.ignored, 2, "the unpaid order and its line");
        let reasons: Vec<&str> = mapped
            .dead_letters
            .iter()
            .map(|d| d.reason.as_str())
            .collect();
        assert_eq!(
            reasons,
            [
                "column \"visitor_id\" is NULL",
                "column \"total\" is \"five\", not a number",
                "column \"visitor_id\" is NULL (a delete carries only the key columns unless the table has REPLICA IDENTITY FULL)",
                "an order line of order \"99\" of public.orders without that order in the same transaction",
            ]
        );
        assert!(mapped.dead_letters.iter().all(|d| d.position == 7));
        assert!(mapped.dead_letters[0].source == "postgres:public.orders");
        assert!(mapped.dead_letters[0].raw.contains("\"status\":\"paid\""));
    }

    #[test]
    fn timestamps_in_postgres_text_form() {
        assert_eq!(timestamp_ms("1970-01-01 00:00:01+00"), Some(1_000));
        assert_eq!(timestamp_ms("1970-01-01 01:00:01.5+01"), Some(1_500));
        assert_eq!(timestamp_ms("1970-01-01 00:00:01.123456"), Some(1_123));
        assert_eq!(timestamp_ms("1970-01-01 05:30:00+05:30"), Some(0));
        assert_eq!(timestamp_ms("yesterday"), None);
    }
}
