//! Loosely typed JSON values as other trackers send them (numbers as strings, strings as
//! numbers), and their event names as Clickpulse's.

use serde_json::Value;

use crate::event::EventType;

/// A non-blank text (trimmed), or a number as its text.
pub fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A number, or a text that is one.
pub fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A whole, non-negative number that fits a `u32`.
pub fn count(value: &Value) -> Option<u32> {
    number(value)
        .filter(|n| n.fract() == 0.0 && *n >= 0.0 && *n <= f64::from(u32::MAX))
        .map(|n| n as u32)
}

/// `Product Added` → `product_added`, `linkClick` → `link_click`, `submit-form` → `submit_form`.
pub fn snake_case(name: &str) -> String {
    let mut snake = String::with_capacity(name.len());
    let mut previous_lower = false;
    for c in name.trim().chars() {
        if c.is_ascii_uppercase() {
            if previous_lower {
                snake.push('_');
            }
            snake.push(c.to_ascii_lowercase());
            previous_lower = false;
        } else if c.is_ascii_alphanumeric() {
            snake.push(c);
            previous_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        } else {
            if !snake.ends_with('_') && !snake.is_empty() {
                snake.push('_');
            }
            previous_lower = false;
        }
    }
    snake.trim_end_matches('_').to_owned()
}

/// A custom event type named after `name` in snake case (an error when that is not a valid
/// name: too long, or no letter to start with).
pub fn custom_type(name: &str) -> Result<EventType, String> {
    EventType::parse(&snake_case(name)).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_identifiers() {
        for (name, want) in [
            ("Play Video", "play_video"),
            ("linkClick", "link_click"),
            ("submit-form", "submit_form"),
            ("add_gift_wrap", "add_gift_wrap"),
            ("Product Added", "product_added"),
            ("orderId", "order_id"),
        ] {
            assert_eq!(snake_case(name), want);
            assert_eq!(custom_type(name).unwrap(), EventType::parse(want).unwrap());
        }
        assert!(custom_type("!!!").is_err());
        assert!(custom_type(&"a".repeat(60)).is_err());
    }
}
