//! What the other trackers' protocols share: the Clickpulse identity a page attaches, tracker
//! ids as visitors, and (from the engine) loosely typed JSON values and snake-case names.

use clickpulse_engine::click::Gender;
pub(crate) use clickpulse_engine::loose::{count, custom_type, number, snake_case, text};
use serde_json::Value;

use super::Identity;

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

/// Who an event is: the visitor, and the gender and age a verified Clickpulse identity gave.
pub(crate) type Who = (String, Option<Gender>, Option<u32>);

/// A tracker's own id as a visitor nobody vouched for further (no gender or age).
pub(crate) fn just(visitor: String) -> Who {
    (visitor, None, None)
}

/// The click another tracker's event becomes, validated.
pub(crate) struct TrackedClick {
    pub(crate) ts_ms: i64,
    pub(crate) who: Who,
    pub(crate) url: String,
    pub(crate) ip: String,
    pub(crate) user_agent: String,
    pub(crate) event: clickpulse_engine::event::EventType,
    pub(crate) detail: clickpulse_engine::event::EventDetail,
}

impl TrackedClick {
    /// The click (campaign parameters from the URL where none were given), if it is valid.
    pub(crate) fn into_click(self) -> Result<clickpulse_engine::click::Click, String> {
        let (visitor, gender, age) = self.who;
        let detail = (!self.detail.is_empty()).then(|| Box::new(self.detail));
        let click = clickpulse_engine::click::Click {
            ts_ms: self.ts_ms,
            visitor,
            detail: clickpulse_engine::event::with_url_utm(&self.url, detail),
            url: self.url,
            ip: self.ip,
            user_agent: self.user_agent,
            city: None,
            country: None,
            region: None,
            gender,
            age,
            event: self.event,
        };
        click.validate().map_err(|e| e.to_string())?;
        Ok(click)
    }
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
