//! Personal data on the public routes.
//!
//! The dashboard and the state-machine log name visitors and their addresses, which are personal
//! data (an IP address or an online identifier tied to browsing, under the GDPR). Unless a
//! request proves it may see them, they are served **pseudonymised**: a visitor id becomes
//! `v-` and 12 hex digits of an HMAC of the id under the server's secret (stable, so a visitor's
//! steps can still be followed, but not reversible, and different on another server), and an
//! IP address is cut to its network (`203.0.113.0`, IPv6 to its /48). May see everything:
//! a request with the viewer token (`--viewer-token`; `Authorization: Bearer`, or `?viewer=`
//! where a browser's `EventSource` cannot set headers), or with the admin token. A visitor sees
//! its own records in full with its identity token (`me` and `token`).

use std::net::IpAddr;
use std::sync::Arc;

use axum::http::HeaderMap;
use clickpulse_engine::window::DashboardSnapshot;

use crate::offers::OfferTokens;

/// Who may see personal data, and how it is hidden from the others.
#[derive(Clone)]
pub struct Privacy {
    tokens: OfferTokens,
    viewer_token: Option<Arc<str>>,
    admin_token: Option<Arc<str>>,
}

/// What a request may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// Everything (the viewer or admin token).
    Viewer,
    /// Pseudonyms, and in full only its own visitor's records (proved by its identity token).
    Public {
        /// The requesting visitor, when its token is valid.
        me: Option<String>,
    },
}

impl Privacy {
    /// Pseudonyms keyed by `tokens`' secret; `viewer_token` (and `admin_token`) see everything.
    pub fn new(
        tokens: OfferTokens,
        viewer_token: Option<Arc<str>>,
        admin_token: Option<Arc<str>>,
    ) -> Self {
        Privacy {
            tokens,
            viewer_token,
            admin_token,
        }
    }

    /// What a request with `headers` and the query's `viewer`, `me` and `token` may see.
    pub fn audience(
        &self,
        headers: &HeaderMap,
        viewer: Option<&str>,
        me: Option<&str>,
        token: Option<&str>,
    ) -> Audience {
        let matches = |expected: &Option<Arc<str>>| {
            expected.as_deref().is_some_and(|t| {
                crate::bearer_matches(headers, t)
                    || viewer.is_some_and(|v| crate::tokens_equal(v, t))
            })
        };
        if matches(&self.viewer_token) || matches(&self.admin_token) {
            return Audience::Viewer;
        }
        let me = match (me, token) {
            (Some(me), Some(token)) if self.tokens.verify(me, token) => Some(me.to_owned()),
            _ => None,
        };
        Audience::Public { me }
    }

    /// The pseudonym of `visitor`.
    pub fn pseudonym(&self, visitor: &str) -> String {
        let mac = self.tokens.issue(&format!("pseudonym\0{visitor}"));
        format!("v-{}", &mac[..12])
    }

    /// `visitor` as `audience` may see it.
    pub fn visitor_for(&self, audience: &Audience, visitor: &str) -> String {
        match audience {
            Audience::Viewer => visitor.to_owned(),
            Audience::Public { me } if me.as_deref() == Some(visitor) => visitor.to_owned(),
            Audience::Public { .. } => self.pseudonym(visitor),
        }
    }

    /// Whether a filter `given` (an id or a pseudonym) names `visitor` for `audience`.
    pub fn names(&self, audience: &Audience, given: &str, visitor: &str) -> bool {
        self.visitor_for(audience, visitor) == given
    }

    /// A dashboard snapshot as `audience` may see it: `latest_views` pseudonymised (a
    /// visitor with its identity token sees its own views in full).
    pub fn snapshot_for(
        &self,
        audience: &Audience,
        snapshot: &DashboardSnapshot,
    ) -> DashboardSnapshot {
        let mut out = snapshot.clone();
        if *audience == Audience::Viewer {
            return out;
        }
        for view in &mut out.latest_views {
            if matches!(audience, Audience::Public { me: Some(me) } if *me == view.visitor) {
                continue;
            }
            view.visitor = self.pseudonym(&view.visitor);
            view.ip = truncate_ip(&view.ip);
        }
        out
    }
}

/// The server's privacy rules, or (no secret configured) rules nobody is a viewer of, keyed by
/// a random secret of this process.
pub fn of(state: &crate::AppState) -> Privacy {
    static FALLBACK: std::sync::OnceLock<OfferTokens> = std::sync::OnceLock::new();
    match &state.privacy {
        Some(p) => p.clone(),
        None => {
            let key = FALLBACK.get_or_init(|| {
                let mut key = [0u8; 32];
                getrandom::fill(&mut key).expect("the OS provides randomness");
                OfferTokens::new(&key)
            });
            Privacy::new(key.clone(), None, state.admin_token.clone())
        }
    }
}

/// `ip` cut to its network: IPv4 to its /24 (`203.0.113.0`), IPv6 to its /48; anything else
/// (not an address) to nothing.
pub fn truncate_ip(ip: &str) -> String {
    match ip.trim().parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.0")
        }
        Ok(IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}::", s[0], s[1], s[2])
        }
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use clickpulse_engine::window::snapshot::LatestView;

    use super::*;

    fn privacy() -> Privacy {
        Privacy::new(
            OfferTokens::new(b"secret"),
            Some(Arc::from("viewer")),
            Some(Arc::from("admin")),
        )
    }

    #[test]
    fn ips_are_cut_to_their_network() {
        assert_eq!(truncate_ip("203.0.113.77"), "203.0.113.0");
        assert_eq!(truncate_ip("2001:db8:abcd:12::1"), "2001:db8:abcd::");
        assert_eq!(truncate_ip("not-an-ip"), "");
    }

    #[test]
    fn the_public_sees_pseudonyms_the_viewer_and_the_visitor_itself_see_ids() {
        let p = privacy();
        let view = |visitor: &str, ip: &str, product_id: &str| LatestView {
            ts_ms: 0,
            visitor: visitor.to_owned(),
            ip: ip.to_owned(),
            country: "US".to_owned(),
            product_id: product_id.to_owned(),
            category: "shoes".to_owned(),
        };
        let snapshot = DashboardSnapshot {
            latest_views: vec![
                view("ann", "203.0.113.77", "P1"),
                view("bob", "198.51.100.2", "P2"),
            ],
            ..DashboardSnapshot::default()
        };
        let public = p.audience(&HeaderMap::new(), None, None, None);
        let seen = p.snapshot_for(&public, &snapshot);
        let views = &seen.latest_views;
        assert_eq!(views[0].visitor, p.pseudonym("ann"));
        assert!(views[0].visitor.starts_with("v-"));
        assert_ne!(p.pseudonym("ann"), p.pseudonym("bob"));
        assert_eq!(views[0].ip, "203.0.113.0");
        assert_eq!(views[0].product_id, "P1");
        // The viewer token, as a bearer or in the query.
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer viewer".parse().unwrap());
        assert_eq!(p.audience(&headers, None, None, None), Audience::Viewer);
        assert_eq!(
            p.audience(&HeaderMap::new(), Some("viewer"), None, None),
            Audience::Viewer
        );
        assert_eq!(
            p.snapshot_for(&Audience::Viewer, &snapshot),
            snapshot,
            "everything"
        );
        assert_ne!(
            p.audience(&HeaderMap::new(), Some("wrong"), None, None),
            Audience::Viewer
        );
        // Ann with her identity token sees her own view in full, bob's pseudonymised.
        let token = p.tokens.issue("ann");
        let ann = p.audience(&HeaderMap::new(), None, Some("ann"), Some(&token));
        let seen = p.snapshot_for(&ann, &snapshot);
        assert_eq!(seen.latest_views[0].visitor, "ann");
        assert_eq!(seen.latest_views[0].ip, "203.0.113.77");
        assert_eq!(seen.latest_views[1].visitor, p.pseudonym("bob"));
        // Claiming to be ann without her token is the public's view.
        let claim = p.audience(&HeaderMap::new(), None, Some("ann"), Some("00"));
        assert_eq!(claim, Audience::Public { me: None });
    }
}
