//! Snowplow's events onto the event model: what the tracker-protocol endpoints
//! (`clickpulse_server::collector::snowplow`) and the enriched-event log reader
//! ([`crate::reader::snowplow`]) share. The callers find the event's fields (tracker-protocol
//! names: `e`, `se_ac`, `tr_id`, ...), its self-describing event and its contexts; this maps
//! them onto an [`EventType`] and an [`EventDetail`].

use serde_json::Value;

use crate::event::{EventDetail, EventProduct, EventType, LineItem, Order, PropValue};
use crate::loose::{count, custom_type, number, text};

/// A self-describing JSON: `{"schema": "iglu:vendor/name/jsonschema/version", "data": ...}`.
pub struct SelfDescribing<'a> {
    /// The schema's vendor (`com.snowplowanalytics.snowplow`).
    pub vendor: &'a str,
    /// The schema's name (`add_to_cart`).
    pub name: &'a str,
    /// Its data.
    pub data: &'a Value,
}

impl<'a> SelfDescribing<'a> {
    /// Reads `value` as one.
    pub fn of(value: &'a Value) -> Result<SelfDescribing<'a>, String> {
        let schema = value["schema"]
            .as_str()
            .ok_or("a self-describing JSON without `schema`")?;
        let mut parts = schema
            .strip_prefix("iglu:")
            .ok_or_else(|| format!("schema {schema:?} is not an iglu: URI"))?
            .split('/');
        let (Some(vendor), Some(name), Some("jsonschema"), Some(_version)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(format!(
                "schema {schema:?} is not iglu:vendor/name/jsonschema/version"
            ));
        };
        Ok(SelfDescribing {
            vendor,
            name,
            data: &value["data"],
        })
    }

    /// Whether its schema is `vendor`/`name`.
    pub fn is(&self, vendor: &str, name: &str) -> bool {
        self.vendor == vendor && self.name == name
    }
}

/// Snowplow's own schemas' vendor.
pub const SNOWPLOW: &str = "com.snowplowanalytics.snowplow";
/// The e-commerce plugin's schemas' vendor.
pub const ECOMMERCE: &str = "com.snowplowanalytics.snowplow.ecommerce";

/// The entities of a `contexts` self-describing JSON (its data: an array of self-describing
/// entities).
pub fn context_entities(contexts: &Value) -> Result<Vec<SelfDescribing<'_>>, String> {
    let outer = SelfDescribing::of(contexts).map_err(|e| format!("contexts: {e}"))?;
    match outer.data {
        Value::Array(entities) => entities
            .iter()
            .map(SelfDescribing::of)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("contexts: {e}")),
        _ => Err("contexts: `data` is not an array of entities".to_owned()),
    }
}

/// What a Snowplow event is to Clickpulse.
#[derive(Debug, Clone, PartialEq)]
pub enum Mapped {
    /// An event of this type (its detail filled in).
    Event(EventType),
    /// A valid event that means nothing here (page pings, ...), by what it is: counted, not kept.
    Ignored(&'static str),
}

/// Maps one event: `kind` is the tracker protocol's `e` (`pv`, `pp`, `se`, `ue`, `tr`, `ti`),
/// `field` gives its other fields by their tracker-protocol names (trimmed, `None` when empty),
/// `unstruct` is its `unstruct_event` self-describing JSON (for `ue`), `entities` its contexts'.
pub fn map_event(
    kind: &str,
    field: &dyn Fn(&str) -> Option<String>,
    unstruct: Option<&Value>,
    entities: &[SelfDescribing<'_>],
    detail: &mut EventDetail,
) -> Result<Mapped, String> {
    Ok(Mapped::Event(match kind {
        "pv" => EventType::PageView,
        "pp" => return Ok(Mapped::Ignored("page_ping")),
        "ti" => return Ok(Mapped::Ignored("transaction_item")),
        "se" => {
            let action = field("se_ac").ok_or("a structured event without `se_ac`")?;
            for (key, name) in [
                ("category", "se_ca"),
                ("label", "se_la"),
                ("property", "se_pr"),
            ] {
                if let Some(v) = field(name) {
                    detail.properties.insert(key.to_owned(), PropValue::Text(v));
                }
            }
            if let Some(v) = field("se_va") {
                let value = v
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite())
                    .ok_or_else(|| format!("se_va {v:?} is not a number"))?;
                detail
                    .properties
                    .insert("value".to_owned(), PropValue::Number(value));
            }
            custom_type(&action)?
        }
        "ue" => {
            let outer = unstruct.ok_or("a self-describing event without `ue_pr` or `ue_px`")?;
            let outer = SelfDescribing::of(outer).map_err(|e| format!("ue: {e}"))?;
            let inner = SelfDescribing::of(outer.data).map_err(|e| format!("ue: {e}"))?;
            match unstructured(&inner, entities, detail)? {
                Some(event) => event,
                None => return Ok(Mapped::Ignored("ecommerce_action")),
            }
        }
        "tr" => {
            // A transaction (the classic e-commerce API): its items come as `ti` events.
            detail.order = Some(Order {
                id: field("tr_id").ok_or("a transaction without `tr_id`")?,
                revenue: field("tr_tt")
                    .and_then(|t| t.parse::<f64>().ok())
                    .ok_or("a transaction without a numeric `tr_tt`")?,
                currency: field("tr_cu"),
                items: Vec::new(),
            });
            EventType::Purchase
        }
        "" => return Err("missing field `e` (the event type)".to_owned()),
        other => {
            return Err(format!(
                "event type e={:?} is not one of pv, pp, se, ue, tr, ti",
                other.chars().take(20).collect::<String>()
            ));
        }
    }))
}

/// A product of the e-commerce plugin's product entity.
pub fn ecommerce_product(data: &Value) -> EventProduct {
    EventProduct {
        id: text(&data["id"]),
        category: text(&data["category"]),
        price: number(&data["price"]),
        quantity: count(&data["quantity"]),
        currency: text(&data["currency"]),
    }
}

/// The event type and detail of a self-describing (`ue`) event, with the contexts' entities.
fn unstructured(
    event: &SelfDescribing<'_>,
    entities: &[SelfDescribing<'_>],
    detail: &mut EventDetail,
) -> Result<Option<EventType>, String> {
    let data = event.data;
    let products = || {
        entities
            .iter()
            .filter(|e| e.is(ECOMMERCE, "product"))
            .map(|e| ecommerce_product(e.data))
    };
    if event.is(SNOWPLOW, "add_to_cart") || event.is(SNOWPLOW, "remove_from_cart") {
        detail.product = Some(EventProduct {
            id: text(&data["sku"]),
            category: text(&data["category"]),
            price: number(&data["unitPrice"]),
            quantity: count(&data["quantity"]),
            currency: text(&data["currency"]),
        });
        return Ok(Some(if event.name == "add_to_cart" {
            EventType::AddToCart
        } else {
            EventType::RemoveFromCart
        }));
    }
    if event.is(SNOWPLOW, "site_search") {
        let terms: Vec<String> = data["terms"]
            .as_array()
            .map(|t| t.iter().filter_map(text).collect())
            .unwrap_or_default();
        if terms.is_empty() {
            return Err("site_search without `terms`".to_owned());
        }
        detail.query = Some(terms.join(" "));
        return Ok(Some(EventType::Search));
    }
    if event.is(ECOMMERCE, "snowplow_ecommerce_action") {
        let action = data["type"].as_str().unwrap_or("");
        return Ok(match action {
            "add_to_cart" | "remove_from_cart" => {
                detail.product = Some(
                    products()
                        .next()
                        .ok_or_else(|| format!("{action} without a product entity"))?,
                );
                Some(if action == "add_to_cart" {
                    EventType::AddToCart
                } else {
                    EventType::RemoveFromCart
                })
            }
            "checkout_step" => {
                let step = entities
                    .iter()
                    .find(|e| e.is(ECOMMERCE, "checkout_step"))
                    .and_then(|e| count(&e.data["step"]));
                // The first step is where a checkout begins; the later ones are counted.
                (step.unwrap_or(1) <= 1).then_some(EventType::BeginCheckout)
            }
            "transaction" => {
                let transaction = entities
                    .iter()
                    .find(|e| e.is(ECOMMERCE, "transaction"))
                    .ok_or("transaction without a transaction entity")?
                    .data;
                let items = products()
                    .map(|p| {
                        Ok(LineItem {
                            product_id: p.id.ok_or("a product entity without `id`")?,
                            category: p.category,
                            price: p.price,
                            quantity: p.quantity.unwrap_or(1),
                        })
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                detail.order = Some(Order {
                    id: text(&transaction["transaction_id"])
                        .ok_or("transaction without `transaction_id`")?,
                    revenue: number(&transaction["revenue"])
                        .ok_or("transaction without a numeric `revenue`")?,
                    currency: text(&transaction["currency"]),
                    items,
                });
                Some(EventType::Purchase)
            }
            "" => return Err("snowplow_ecommerce_action without `type`".to_owned()),
            // product_view, list_view, list_click, promo_view, promo_click, refund, trns_error:
            // a product page's view is its page view.
            _ => None,
        });
    }
    // Any other self-describing event (link_click, submit_form, a shop's own): a custom event
    // named after its schema; its data is not taken apart.
    Ok(Some(custom_type(event.name)?))
}
