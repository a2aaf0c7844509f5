//! `[postgres]`: where the shop's database is, which slot and publication to read, and how its
//! tables' rows become events (`[[postgres.table]]`). Documented field by field in
//! `config/clickpulse.example.toml` and `docs/sources/postgres.md`.

use std::collections::BTreeMap;

use clickpulse_engine::event::EventType;
use serde::Deserialize;

/// The PostgreSQL change data capture source.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// The server's host name or address, or the directory of its Unix socket (`/run/...`).
    #[serde(default = "default_host")]
    pub host: String,
    /// Its port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// A role with the `REPLICATION` attribute (or a superuser).
    #[serde(default = "default_user")]
    pub user: String,
    /// The environment variable holding the role's password (none: trust or peer auth).
    #[serde(default)]
    pub password_env: Option<String>,
    /// The shop's database.
    pub database: String,
    /// The logical replication slot Clickpulse reads (and owns: nothing else may consume it).
    #[serde(default = "default_slot")]
    pub slot: String,
    /// The publication naming the mapped tables.
    #[serde(default = "default_slot")]
    pub publication: String,
    /// Create the slot, and the publication over the mapped tables, when they are missing.
    #[serde(default = "yes")]
    pub create: bool,
    /// How each table's rows become events.
    #[serde(default, rename = "table")]
    pub tables: Vec<TableMapping>,
}

fn default_host() -> String {
    "127.0.0.1".to_owned()
}
fn default_port() -> u16 {
    5432
}
fn default_user() -> String {
    "postgres".to_owned()
}
fn default_slot() -> String {
    "clickpulse".to_owned()
}
fn yes() -> bool {
    true
}

/// A change to a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// `INSERT`.
    Insert,
    /// `UPDATE`.
    Update,
    /// `DELETE` (the row's old values: its key only, unless the table has `REPLICA IDENTITY
    /// FULL`).
    Delete,
}

/// How the rows of one table become events. A table may have several mappings (its inserts
/// as `add_to_cart`, its deletes as `remove_from_cart`); a row matching none is ignored and
/// counted.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableMapping {
    /// `schema.table` (`orders` means `public.orders`).
    pub name: String,
    /// The event type its rows become (a built-in type or a custom name). Not with `lines_of`.
    #[serde(default)]
    pub event: Option<String>,
    /// The changes that become events.
    #[serde(default = "inserts")]
    pub operations: Vec<Operation>,
    /// The column holding the visitor (the shop's user or cookie id). Not with `lines_of`.
    #[serde(default)]
    pub visitor: Option<String>,
    /// The column holding the event time (`timestamptz`, or `timestamp` taken as UTC); none:
    /// the transaction's commit time.
    #[serde(default)]
    pub time: Option<String>,
    /// Event fields read from columns.
    #[serde(default)]
    pub fields: Fields,
    /// Custom properties: property name → column.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Only rows whose columns have these values (column → its text form); others are ignored
    /// and counted.
    #[serde(default)]
    pub when: BTreeMap<String, String>,
    /// This table holds the lines of the orders of another mapped table (`public.orders`):
    /// each row becomes a line item of the purchase with its `order_id` in the same
    /// transaction, instead of an event of its own.
    #[serde(default)]
    pub lines_of: Option<String>,
}

fn inserts() -> Vec<Operation> {
    vec![Operation::Insert]
}

/// Event fields and the columns they are read from.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fields {
    /// The product's id.
    pub product_id: Option<String>,
    /// The product's category.
    pub category: Option<String>,
    /// Unit price (numeric).
    pub price: Option<String>,
    /// Quantity (integer).
    pub quantity: Option<String>,
    /// ISO 4217 currency code.
    pub currency: Option<String>,
    /// The order's id (`purchase`; for `lines_of`, the order a line belongs to).
    pub order_id: Option<String>,
    /// The order's revenue (numeric).
    pub revenue: Option<String>,
    /// The client's session id.
    pub session_id: Option<String>,
    /// The page the event happened on.
    pub url: Option<String>,
    /// The search query (`search`).
    pub query: Option<String>,
}

/// The mapping of a typical shop schema (`[[postgres.table]]` entries): orders paid, their
/// lines, cart rows added and removed.
pub const SHOP_MAPPING: &str = include_str!("shop-mapping.toml");

/// A `[postgres]` table (with its `[[postgres.table]]` entries) on its own.
pub fn parse_table(text: &str) -> Result<PostgresConfig, toml::de::Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Only {
        postgres: PostgresConfig,
    }
    toml::from_str::<Only>(text).map(|o| o.postgres)
}

/// `name` with its schema (`public` when it has none).
pub fn qualified(name: &str) -> String {
    if name.contains('.') {
        name.to_owned()
    } else {
        format!("public.{name}")
    }
}

impl PostgresConfig {
    /// What the types cannot say: every problem, each naming its mapping.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.database.is_empty() {
            problems.push("[postgres] database must not be empty".to_owned());
        }
        for (what, name) in [("slot", &self.slot), ("publication", &self.publication)] {
            // Slot names: lower-case letters, digits and _ (PostgreSQL's rule); the same for
            // the publication, which Clickpulse may create and quotes nowhere.
            if name.is_empty()
                || name.len() > 63
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                problems.push(format!(
                    "[postgres] {what} {name:?} must be 1 to 63 lower-case letters, digits or _"
                ));
            }
        }
        if self.tables.is_empty() {
            problems.push("[postgres] maps no table: add a [[postgres.table]]".to_owned());
        }
        let purchases: Vec<String> = self
            .tables
            .iter()
            .filter(|t| t.event.as_deref() == Some("purchase"))
            .map(|t| qualified(&t.name))
            .collect();
        for (i, t) in self.tables.iter().enumerate() {
            let at = format!("[[postgres.table]] #{} ({})", i + 1, t.name);
            let mut problem = |p: String| problems.push(format!("{at}: {p}"));
            if t.name.is_empty() || t.name.split('.').count() > 2 {
                problem("name must be `table` or `schema.table`".to_owned());
            }
            if let Some(target) = &t.lines_of {
                if t.event.is_some() || t.visitor.is_some() {
                    problem("a table of order lines has no event or visitor of its own".to_owned());
                }
                if !purchases.contains(&qualified(target)) {
                    problem(format!(
                        "lines_of = {target:?} names no table mapped to `purchase`"
                    ));
                }
                if t.fields.order_id.is_none() || t.fields.product_id.is_none() {
                    problem("order lines need fields.order_id and fields.product_id".to_owned());
                }
                continue;
            }
            match t.event.as_deref().map(EventType::parse) {
                None => problem("needs event = \"...\" (or lines_of)".to_owned()),
                Some(Err(e)) => problem(e.to_string()),
                Some(Ok(EventType::Purchase)) => {
                    if t.fields.order_id.is_none() || t.fields.revenue.is_none() {
                        problem("a purchase needs fields.order_id and fields.revenue".to_owned());
                    }
                }
                Some(Ok(EventType::AddToCart | EventType::RemoveFromCart)) => {
                    if t.fields.product_id.is_none() {
                        problem("a cart event needs fields.product_id".to_owned());
                    }
                }
                Some(Ok(EventType::Search)) if t.fields.query.is_none() => {
                    problem("a search needs fields.query".to_owned());
                }
                Some(Ok(_)) => {}
            }
            if t.visitor.is_none() {
                problem("needs visitor = \"<column>\"".to_owned());
            }
            if t.operations.is_empty() {
                problem("operations must name at least one of insert, update, delete".to_owned());
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_of_a_mapping_is_named() {
        let config: PostgresConfig = toml::from_str(
            r#"
            database = "shop"
            slot = "Bad-Slot"
            [[table]]
            name = "orders"
            event = "purchase"
            visitor = "visitor_id"
            [[table]]
            name = "lines"
            lines_of = "carts"
            [[table]]
            name = "a.b.c"
            event = "Not A Name"
            "#,
        )
        .unwrap();
        let problems = config.problems().join("\n");
        for expected in [
            "slot \"Bad-Slot\" must be",
            "#1 (orders): a purchase needs fields.order_id and fields.revenue",
            "#2 (lines): lines_of = \"carts\" names no table mapped to `purchase`",
            "#2 (lines): order lines need fields.order_id and fields.product_id",
            "#3 (a.b.c): name must be",
            "#3 (a.b.c): event type \"Not A Name\"",
            "#3 (a.b.c): needs visitor",
        ] {
            assert!(
                problems.contains(expected),
                "{expected:?} not in\n{problems}"
            );
        }
        assert!(
            toml::from_str::<PostgresConfig>("database = \"x\"\nslott = \"y\"").is_err(),
            "unknown fields are errors"
        );
    }
}
