//! Slack incoming webhooks: what piles up between two messages goes out as one digest, within
//! Slack's limits. Slack takes about one message per second per webhook (more answer `429`
//! with a `Retry-After`, which the outbox honours), at most 50 blocks per message and 3,000
//! characters per section; a message's offers are its sections, one each (the offer id is the
//! section's `block_id`, so a receiver can tell them apart), after a one-line header.
//!
//! A digest names each offer's pattern, its title and product, never the visitor: the channel
//! is read by staff, the visitor ids stay in the shop's own systems (the signed webhooks).

use serde_json::{Value, json};

use super::outbox::Entry;

/// Most offers one message holds (Slack allows 50 blocks: one header and 49 sections).
pub const MAX_ITEMS: usize = 49;
/// Most characters of one section's text (Slack's limit is 3,000).
const MAX_SECTION_CHARS: usize = 2_900;

/// The Slack message for `entries` (each an offer's webhook body).
pub fn digest(entries: &[Entry]) -> String {
    let bodies: Vec<Value> = entries
        .iter()
        .map(|e| serde_json::from_str(&e.body).unwrap_or(Value::Null))
        .collect();
    let is_alert = |b: &Value| b["type"].as_str().is_some_and(|t| t.starts_with("alert."));
    let alerts = bodies.iter().filter(|b| is_alert(b)).count();
    let offers = entries.len() - alerts;
    let plural = |n: usize, one: &str| match n {
        1 => format!("1 {one}"),
        n => format!("{n} {one}s"),
    };
    let header = match (alerts, offers) {
        (0, n) => plural(n, "new offer"),
        (a, 0) => plural(a, "alert"),
        (a, o) => format!("{}, {}", plural(a, "alert"), plural(o, "new offer")),
    };
    let mut blocks = vec![json!({
        "type": "section",
        "text": {"type": "mrkdwn", "text": format!("*{header}*")},
    })];
    for (entry, body) in entries.iter().zip(&bodies).take(MAX_ITEMS) {
        let text = if is_alert(body) {
            alert_line(&body["data"])
        } else {
            line(&body["data"])
        };
        blocks.push(json!({
            "type": "section",
            "block_id": entry.id,
            "text": {"type": "mrkdwn", "text": text},
        }));
    }
    json!({"text": header, "blocks": blocks}).to_string()
}

/// One offer's line: `• *pattern* — title · product p-1 · 14:03:07 UTC`.
fn line(offer: &Value) -> String {
    let mut text = format!("• *{}*", escape(offer["pattern"].as_str().unwrap_or("?")));
    if let Some(title) = offer["title"].as_str() {
        text.push_str(&format!(" — {}", escape(title)));
    }
    if let Some(product) = offer["product"].as_str() {
        text.push_str(&format!(" · product {}", escape(product)));
    }
    if let Some(at) = offer["ts_ms"]
        .as_i64()
        .and_then(chrono::DateTime::from_timestamp_millis)
    {
        text.push_str(&format!(" · {} UTC", at.format("%H:%M:%S")));
    }
    if text.chars().count() > MAX_SECTION_CHARS {
        text = text.chars().take(MAX_SECTION_CHARS).collect::<String>() + "…";
    }
    text
}

/// An alert's line: `:red_circle: *no-purchases* firing: 0 (threshold 1) · 14:03 UTC`.
fn alert_line(alert: &Value) -> String {
    let firing = alert["state"] == "firing";
    let mut text = format!(
        "{} *{}* {}: {}",
        if firing {
            ":red_circle:"
        } else {
            ":large_green_circle:"
        },
        escape(alert["alert"].as_str().unwrap_or("?")),
        if firing { "firing" } else { "resolved" },
        alert["value"]
    );
    if let Some(against) = alert["against"].as_f64() {
        text.push_str(&format!(" (against {against})"));
    }
    if let Some(at) = alert["ts_ms"]
        .as_i64()
        .and_then(chrono::DateTime::from_timestamp_millis)
    {
        text.push_str(&format!(" · {} UTC", at.format("%H:%M")));
    }
    text
}

/// Slack's mrkdwn escapes: `&`, `<` and `>` (what a pattern's title could hold).
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, title: &str) -> Entry {
        Entry {
            endpoint: "ops".into(),
            id: id.into(),
            body: json!({"type": "offer.created", "data": {
                "pattern": "cart-abandonment", "title": title, "ts_ms": 1_700_000_000_000i64,
                "visitor": "v-secret", "product": "p-1"}})
            .to_string(),
            attempts: 0,
            due_ms: 0,
            last_error: None,
        }
    }

    #[test]
    fn a_digest_has_a_header_and_one_section_per_offer_within_slack_s_limits() {
        let entries: Vec<Entry> = (0..MAX_ITEMS)
            .map(|i| entry(&format!("o-{i}"), &"<b>10% off</b> & more ".repeat(200)))
            .collect();
        let message: Value = serde_json::from_str(&digest(&entries)).unwrap();
        assert_eq!(message["text"], "49 new offers");
        let blocks = message["blocks"].as_array().unwrap();
        assert_eq!(blocks.len(), 50);
        assert_eq!(blocks[1]["block_id"], "o-0");
        let text = blocks[1]["text"]["text"].as_str().unwrap();
        assert!(text.starts_with("• *cart-abandonment* — &lt;b&gt;10% off&lt;/b&gt; &amp; more"));
        assert!(text.chars().count() <= 3_000);
        assert!(!digest(&entries).contains("v-secret"), "no visitor ids");
        let one: Value = serde_json::from_str(&digest(&[entry("o", "Hi")])).unwrap();
        assert_eq!(
            one["blocks"][1]["text"]["text"],
            "• *cart-abandonment* — Hi · product p-1 · 22:13:20 UTC"
        );
        assert_eq!(one["text"], "1 new offer");
    }

    #[test]
    fn alerts_and_offers_share_a_digest() {
        let alert = Entry {
            id: "alert-no-purchases-firing-1".into(),
            body: json!({"type": "alert.firing", "data": {
                "alert": "no-purchases", "state": "firing", "ts_ms": 1_700_000_000_000i64,
                "value": 0.0, "against": 1.0}})
            .to_string(),
            ..entry("x", "")
        };
        let message: Value = serde_json::from_str(&digest(&[alert, entry("o", "Hi")])).unwrap();
        assert_eq!(message["text"], "1 alert, 1 new offer");
        assert_eq!(
            message["blocks"][1]["text"]["text"],
            ":red_circle: *no-purchases* firing: 0.0 (against 1) · 22:13 UTC"
        );
    }
}
