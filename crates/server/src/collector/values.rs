//! What the other trackers' protocols share: reading loosely typed JSON values, event names in
//! snake case, and the Clickpulse identity a page attaches.

use clickpulse_engine::click::Gender;
use clickpulse_engine::event::EventType;
use serde_json::Value;

use super::Identity;

/// A non-blank text (trimmed), or a number as its text.
pub(crate) fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A number, or a text that is one.
pub(crate) fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A whole, non-negative number that fits a `u32`.
pub(crate) fn count(value: &Value) -> Option<u32> {
    number(value)
        .filter(|n| n.fract() == 0.0 && *n >= 0.0 && *n <= f64::from(u32::MAX))
        .map(|n| n as u32)
}

/// `Product Added` → `product_added`, `linkClick` → `link_click`, `submit-form` → `submit_form`.
pub(crate) fn snake_case(name: &str) -> String {
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
pub(crate) fn custom_type(name: &str) -> Result<EventType, String> {
    EventType::parse(&snake_case(name)).map_err(|e| e.to_string())
}

/// The visitor a page's Clickpulse identity (`{"visitor", "token", "gender"?, "age"?}`, named
/// `what` in errors) names, when its token is that visitor's, with the gender and age it gives.
pub(crate) fn verified_visitor(
    data: &Value,
    what: &str,
    identity: Option<&Identity>,
) -> Result<(String, Option<Gender>, Option<u32>), String> {
    let visitor = data["visitor"]
        .as_str()
        .ok_or_else(|| format!("{what} has no `visitor`"))?;
    let token = data["token"]
        .as_str()
        .ok_or_else(|| format!("{what} has no `token`"))?;
    let identity = identity.ok_or("visitor ids cannot be checked here")?;
    if !identity.tokens.verify(visitor, token) {
        return Err(format!("the token is not visitor {visitor:?}'s"));
    }
    let gender = match &data["gender"] {
        Value::Null => None,
        Value::String(g) => Some(g.parse::<Gender>()?),
        other => return Err(format!("{what}: gender {other} is not M, F or U")),
    };
    let age = match &data["age"] {
        Value::Null => None,
        other => {
            Some(count(other).ok_or_else(|| format!("{what}: age {other} is not a whole number"))?)
        }
    };
    Ok((visitor.to_owned(), gender, age))
}

/// A tracker's own id for the browser (`field`) as a visitor id in the tracker's namespace
/// (`prefix`): no tracker can name a Clickpulse visitor.
pub(crate) fn namespaced(
    prefix: &str,
    field: &str,
    id: &str,
    also: &[u8],
) -> Result<String, String> {
    let id_like = id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || also.contains(&b));
    if !id_like {
        return Err(format!(
            "field `{field}` is not a tracker's id (at most 64 letters, digits, - and _{})",
            also.iter()
                .map(|b| format!(", {}", *b as char))
                .collect::<String>()
        ));
    }
    Ok(format!("{prefix}{id}"))
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

    #[test]
    fn loose_values() {
        assert_eq!(text(&" a ".into()), Some("a".to_owned()));
        assert_eq!(text(&3.into()), Some("3".to_owned()));
        assert_eq!(text(&"  ".into()), None);
        assert_eq!(number(&"2.5".into()), Some(2.5));
        assert_eq!(count(&"2".into()), Some(2));
        assert_eq!(count(&2.5.into()), None);
        assert_eq!(count(&(-1).into()), None);
        assert_eq!(namespaced("sp-", "duid", "a-1", b"").unwrap(), "sp-a-1");
        assert!(
            namespaced("sp-", "duid", "a b", b"")
                .unwrap_err()
                .contains("duid")
        );
        assert_eq!(
            namespaced("seg-", "anonymousId", "a.b", b".").unwrap(),
            "seg-a.b"
        );
    }
}
