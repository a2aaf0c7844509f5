//! Where a visitor came from: an event's source, from its campaign parameters and its referrer,
//! by rules like Google Analytics' default channels (`docs/click-format.md`, "Sources") and a
//! host list kept as data (`data/referrers.toml`).

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::event::EventDetail;

/// How a visitor came.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Medium {
    /// No referrer and no campaign: typed, bookmarked, or the referrer was withheld.
    #[default]
    Direct,
    /// From a search engine.
    Search,
    /// From a social network.
    Social,
    /// From another site.
    Referral,
    /// From an e-mail (a webmail referrer, or a campaign whose source or medium says so).
    Email,
    /// From an ad (a campaign medium such as `cpc`, or an ad network's referrer).
    Paid,
    /// From another page of the same site.
    Internal,
}

impl Medium {
    /// Every medium, in display order.
    pub const ALL: [Medium; 7] = [
        Medium::Direct,
        Medium::Search,
        Medium::Social,
        Medium::Referral,
        Medium::Email,
        Medium::Paid,
        Medium::Internal,
    ];

    /// Its name: `direct`, `search`, …
    pub fn as_str(self) -> &'static str {
        match self {
            Medium::Direct => "direct",
            Medium::Search => "search",
            Medium::Social => "social",
            Medium::Referral => "referral",
            Medium::Email => "email",
            Medium::Paid => "paid",
            Medium::Internal => "internal",
        }
    }

    /// The medium called `name`.
    pub fn parse(name: &str) -> Option<Medium> {
        Medium::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(name))
    }
}

/// An event's source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// How the visitor came.
    pub medium: Medium,
    /// The referrer's host, if any (lower case).
    pub host: Option<String>,
    /// The referrer's name in the host list (`Google`), if listed.
    pub name: Option<&'static str>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostFile {
    host: Vec<HostEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostEntry {
    host: String,
    medium: String,
    name: String,
    #[serde(default)]
    #[allow(dead_code)]
    query: Vec<String>,
}

/// A listed host: its labels (`["mail", "google", "com"]`, or `["google"]` with `any_suffix`
/// for `google.*`).
struct Listed {
    labels: Vec<String>,
    any_suffix: bool,
    medium: Medium,
    name: &'static str,
}

const HOSTS: &str = include_str!("../../../data/referrers.toml");

fn listed() -> &'static [Listed] {
    static LIST: OnceLock<Vec<Listed>> = OnceLock::new();
    LIST.get_or_init(|| {
        let file: HostFile = toml::from_str(HOSTS).expect("data/referrers.toml parses (tested)");
        file.host
            .into_iter()
            .map(|e| {
                let (host, any_suffix) = match e.host.strip_suffix(".*") {
                    Some(base) => (base.to_owned(), true),
                    None => (e.host, false),
                };
                Listed {
                    labels: host.split('.').map(str::to_ascii_lowercase).collect(),
                    any_suffix,
                    medium: Medium::parse(&e.medium).expect("a known medium (tested)"),
                    name: Box::leak(e.name.into_boxed_str()),
                }
            })
            .collect()
    })
}

/// Whether `host` (labels) is `entry` or a subdomain of it; with `any_suffix`, under any public
/// suffix of at most two labels (`google.co.uk`). How many labels matched: the most specific
/// entry wins (`mail.google.com` over `google.*`).
fn matches(host: &[&str], entry: &Listed) -> Option<usize> {
    let n = entry.labels.len();
    let at = |start: usize| {
        host.get(start..start + n)
            .is_some_and(|part| part.iter().zip(&entry.labels).all(|(a, b)| a == b))
    };
    if entry.any_suffix {
        // The entry's labels, then one or two suffix labels (com, co.uk, com.au).
        (0..host.len())
            .find(|&start| at(start) && (1..=2).contains(&(host.len() - start - n)))
            .map(|_| n)
    } else {
        (host.len() >= n && at(host.len() - n)).then_some(n)
    }
}

/// The host of a URL (lower case, without port or credentials), if it has one.
pub fn host_of(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host.rfind(':') {
        Some(i) if !host.ends_with(']') => &host[..i],
        _ => host,
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

fn email_word(s: &str) -> bool {
    ["email", "e-mail", "e_mail", "e mail"]
        .iter()
        .any(|w| s.eq_ignore_ascii_case(w))
}

/// GA4's paid medium: `^(.*cp.*|ppc|retargeting|paid.*)$`, case-insensitive.
fn paid_medium(medium: &str) -> bool {
    let m = medium.to_ascii_lowercase();
    m.contains("cp") || m == "ppc" || m == "retargeting" || m.starts_with("paid")
}

fn social_medium(medium: &str) -> bool {
    [
        "social",
        "social-network",
        "social-media",
        "sm",
        "social network",
        "social media",
    ]
    .iter()
    .any(|w| medium.eq_ignore_ascii_case(w))
}

/// The source of an event on page `url` with `detail`: its campaign first (a paid medium, an
/// e-mail source or medium, a social medium), then its referrer (another page of the site,
/// a listed host's medium, any other site), else direct.
pub fn classify(url: &str, detail: Option<&EventDetail>) -> Source {
    let utm = detail.and_then(|d| d.utm.as_ref());
    let referrer = detail
        .and_then(|d| d.referrer.as_deref())
        .filter(|r| !r.trim().is_empty());
    let host = referrer.and_then(host_of);
    let from_list = host.as_deref().and_then(|h| {
        let labels: Vec<&str> = h.split('.').collect();
        listed()
            .iter()
            .filter_map(|e| matches(&labels, e).map(|n| (n, e)))
            .max_by_key(|(n, _)| *n)
            .map(|(_, e)| e)
    });
    let source = |medium| Source {
        medium,
        host: host.clone(),
        name: from_list.map(|e| e.name),
    };
    if let Some(utm) = utm {
        let medium = utm.medium.as_deref().unwrap_or("");
        let campaign_source = utm.source.as_deref().unwrap_or("");
        if paid_medium(medium) {
            return source(Medium::Paid);
        }
        if email_word(medium) || email_word(campaign_source) {
            return source(Medium::Email);
        }
        if social_medium(medium) {
            return source(Medium::Social);
        }
    }
    let Some(referrer_host) = host.as_deref() else {
        // A campaign without a referrer still names where the visitor came from.
        return source(if utm.is_some() {
            Medium::Referral
        } else {
            Medium::Direct
        });
    };
    if host_of(url).as_deref() == Some(referrer_host) {
        return source(Medium::Internal);
    }
    source(from_list.map_or(Medium::Referral, |e| e.medium))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Utm;

    fn from(url: &str, referrer: Option<&str>, utm: Option<(&str, &str)>) -> Source {
        let detail = EventDetail {
            referrer: referrer.map(str::to_owned),
            utm: utm.map(|(source, medium)| Utm {
                source: Some(source.to_owned()),
                medium: Some(medium.to_owned()),
                ..Utm::default()
            }),
            ..EventDetail::default()
        };
        classify(url, Some(&detail))
    }

    #[test]
    fn the_host_list_parses_and_every_medium_is_known() {
        assert!(listed().len() > 50);
        for e in listed() {
            assert!(!e.labels.is_empty() && !e.name.is_empty());
        }
    }

    #[test]
    fn referrers_and_campaigns_are_classified() {
        let page = "https://shop.example/p/VD1";
        let cases = [
            (from(page, None, None), Medium::Direct),
            (classify(page, None), Medium::Direct),
            (
                from(page, Some("https://www.google.com/search?q=shoes"), None),
                Medium::Search,
            ),
            (
                from(page, Some("https://www.google.co.uk/"), None),
                Medium::Search,
            ),
            (
                from(page, Some("https://mail.google.com/mail/u/0/"), None),
                Medium::Email,
            ),
            (
                from(page, Some("https://l.facebook.com/l.php?u=x"), None),
                Medium::Social,
            ),
            (from(page, Some("https://t.co/abc"), None), Medium::Social),
            (
                from(page, Some("https://blog.example.org/post"), None),
                Medium::Referral,
            ),
            (
                from(page, Some("https://shop.example/cart"), None),
                Medium::Internal,
            ),
            (
                from(
                    page,
                    Some("https://www.google.com/"),
                    Some(("google", "cpc")),
                ),
                Medium::Paid,
            ),
            (
                from(page, None, Some(("newsletter", "email"))),
                Medium::Email,
            ),
            (from(page, None, Some(("e-mail", "link"))), Medium::Email),
            (
                from(page, None, Some(("partner", "affiliate"))),
                Medium::Referral,
            ),
            (from(page, None, Some(("fb", "social"))), Medium::Social),
            (from(page, None, Some(("x", "paid_social"))), Medium::Paid),
        ];
        for (i, (got, want)) in cases.iter().enumerate() {
            assert_eq!(got.medium, *want, "case {i}: {got:?}");
        }
        let google = from(page, Some("https://www.google.de/"), None);
        assert_eq!(
            (google.host.as_deref(), google.name),
            (Some("www.google.de"), Some("Google"))
        );
        // Not Google: a host that merely contains the label elsewhere.
        assert_eq!(
            from(page, Some("https://google.evil.example.net/"), None).medium,
            Medium::Referral
        );
    }

    #[test]
    fn hosts_come_without_port_credentials_or_path() {
        assert_eq!(
            host_of("https://u:p@Shop.Example:8443/a?b#c").as_deref(),
            Some("shop.example")
        );
        assert_eq!(host_of("http://[::1]:8080/").as_deref(), Some("[::1]"));
        assert_eq!(host_of("not a url"), None);
        assert_eq!(host_of("https:///path"), None);
    }
}
