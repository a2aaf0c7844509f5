//! A visitor's session, as the dashboard and the patterns both define it (Google Analytics'
//! rule): a session ends after [`SESSION_GAP_MS`] without an event, and an event carrying a
//! client session id other than the session's starts a new one. The dashboard's windows
//! ([`crate::window::shop`]) close sessions by the watermark; detection
//! ([`crate::pattern::DetectOperator`]) keeps a [`VisitorSession`] per visitor for the
//! `session` conditions of patterns. Both decide with [`continues`].

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::click::EnrichedRef;
use crate::event::EventType;
use crate::source::Medium;

/// How long without an event ends a session.
pub const SESSION_GAP_MS: i64 = 30 * 60_000;

/// Products a session remembers for `product_views` and `product_in_cart`: past this many
/// distinct products the least recently touched one is forgotten (and counts afresh if it is
/// viewed again), so one visitor's state stays bounded whatever they do.
pub const MAX_SESSION_PRODUCTS: usize = 32;

/// Whether an event at `ts_ms` with client session id `id` belongs to the session whose last
/// event was at `last_ms` with id `last_id`. An id on only one side says nothing.
pub fn continues(last_ms: i64, last_id: Option<&str>, ts_ms: i64, id: Option<&str>) -> bool {
    ts_ms - last_ms < SESSION_GAP_MS && !other_id(last_id, id)
}

/// Whether two client session ids name different sessions.
pub fn other_id(a: Option<&str>, b: Option<&str>) -> bool {
    matches!((a, b), (Some(a), Some(b)) if a != b)
}

/// What a pattern condition may ask about the visitor's session, as of the event being looked
/// at (which is counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionFacts {
    /// Page views in the session.
    pub pages: u32,
    /// Visits of the event's product page in the session: page views of it, a reload (a view
    /// right after a view of the same product) not counting again.
    pub product_views: u32,
    /// Whether the event's product was added to the cart in the session (and not removed since).
    pub product_in_cart: bool,
    /// Where the session came from: its first event's source (`internal` counts as `direct`).
    pub source: Medium,
}

/// One product a session touched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SessionProduct {
    id: Arc<str>,
    views: u32,
    in_cart: bool,
}

/// A visitor's current session, as detection keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VisitorSession {
    /// Event time of its latest event.
    pub last_ms: i64,
    /// The client's session id, once an event sent one.
    id: Option<Arc<str>>,
    pages: u32,
    source: Medium,
    /// The product of the latest page view (a view of it again is a reload).
    #[serde(default)]
    last_viewed: Option<Arc<str>>,
    /// Most recently touched last.
    products: Vec<SessionProduct>,
}

impl VisitorSession {
    /// Applies `click` to the visitor's session `current` (starting a new one when it does not
    /// continue it) and returns the facts as of the click. Events of one visitor may come out of
    /// order: an earlier one within the session counts in it and does not move its end back.
    pub fn apply(current: &mut Option<VisitorSession>, click: &EnrichedRef<'_>) -> SessionFacts {
        let id = click.detail.and_then(|d| d.session_id.as_deref());
        let continued = current
            .as_ref()
            .is_some_and(|s| continues(s.last_ms, s.id.as_deref(), click.ts_ms, id));
        if !continued {
            let source = match crate::source::classify(click.url, click.detail).medium {
                Medium::Internal => Medium::Direct,
                m => m,
            };
            *current = Some(VisitorSession {
                last_ms: click.ts_ms,
                id: None,
                pages: 0,
                source,
                last_viewed: None,
                products: Vec::new(),
            });
        }
        let s = current.as_mut().expect("set above");
        s.last_ms = s.last_ms.max(click.ts_ms);
        if s.id.is_none() {
            s.id = id.map(Arc::from);
        }
        let page_view = click.event.is_page_view();
        let reload = page_view && s.last_viewed.as_deref() == Some(&**click.product_id);
        if page_view {
            s.pages += 1;
            if !reload {
                s.last_viewed = Some(click.product_id.clone());
            }
        }
        let product = s.touch(click.product_id);
        match click.event {
            EventType::PageView if !reload => product.views += 1,
            EventType::AddToCart => product.in_cart = true,
            EventType::RemoveFromCart => product.in_cart = false,
            _ => {}
        }
        let (views, in_cart) = (product.views, product.in_cart);
        SessionFacts {
            pages: s.pages,
            product_views: views,
            product_in_cart: in_cart,
            source: s.source,
        }
    }

    /// Whether the session has ended by event time `now_ms` (no event can continue it).
    pub fn has_ended(&self, now_ms: i64) -> bool {
        now_ms - self.last_ms >= SESSION_GAP_MS
    }

    /// The product's entry, most recently touched now (added, forgetting the least recently
    /// touched past [`MAX_SESSION_PRODUCTS`]).
    fn touch(&mut self, id: &Arc<str>) -> &mut SessionProduct {
        match self.products.iter().position(|p| *p.id == **id) {
            Some(i) => {
                let p = self.products.remove(i);
                self.products.push(p);
            }
            None => {
                if self.products.len() == MAX_SESSION_PRODUCTS {
                    self.products.remove(0);
                }
                self.products.push(SessionProduct {
                    id: id.clone(),
                    views: 0,
                    in_cart: false,
                });
            }
        }
        self.products.last_mut().expect("pushed above")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::click::{Device, EnrichedClick, Gender};
    use crate::event::EventDetail;

    fn click(
        ts_s: i64,
        event: EventType,
        product: &str,
        session_id: Option<&str>,
    ) -> EnrichedClick {
        EnrichedClick {
            ts_ms: ts_s * 1_000,
            visitor: "v".to_owned(),
            ip: String::new(),
            url: format!("http://www.acme.com/SH1/{product}"),
            product_id: product.into(),
            category: "clothing".into(),
            title: "Title".into(),
            known_visitor: false,
            gender: Gender::U,
            age: None,
            country: "usa".into(),
            city: None,
            region: None,
            device: Device::Desktop,
            event,
            detail: session_id.map(|id| {
                Box::new(EventDetail {
                    session_id: Some(id.into()),
                    ..EventDetail::default()
                })
            }),
        }
    }

    fn apply(s: &mut Option<VisitorSession>, c: &EnrichedClick) -> SessionFacts {
        VisitorSession::apply(s, &c.borrowed())
    }

    #[test]
    fn a_gap_of_thirty_minutes_starts_a_new_session_and_one_second_less_does_not_end_it() {
        let mut s = None;
        apply(&mut s, &click(0, EventType::PageView, "A", None));
        apply(&mut s, &click(1, EventType::PageView, "B", None));
        let f = apply(&mut s, &click(1_800, EventType::PageView, "A", None));
        assert_eq!((f.pages, f.product_views), (3, 2));
        let f = apply(
            &mut s,
            &click(1_800 + 1_800, EventType::PageView, "A", None),
        );
        assert_eq!(
            (f.pages, f.product_views),
            (1, 1),
            "30 minutes later: a new session"
        );
    }

    #[test]
    fn another_client_session_id_starts_a_new_session() {
        let mut s = None;
        apply(&mut s, &click(0, EventType::PageView, "A", Some("s1")));
        let f = apply(&mut s, &click(10, EventType::PageView, "A", None));
        assert_eq!(f.pages, 2, "no id says nothing");
        let f = apply(&mut s, &click(20, EventType::PageView, "A", Some("s2")));
        assert_eq!(f.pages, 1);
    }

    #[test]
    fn a_reload_is_a_page_but_not_another_visit_of_the_product() {
        let mut s = None;
        apply(&mut s, &click(0, EventType::PageView, "A", None));
        let f = apply(&mut s, &click(1, EventType::PageView, "A", None));
        assert_eq!((f.pages, f.product_views), (2, 1));
        apply(&mut s, &click(2, EventType::AddToCart, "A", None));
        let f = apply(&mut s, &click(3, EventType::PageView, "A", None));
        assert_eq!(
            f.product_views, 1,
            "an interaction between does not end the reload"
        );
        apply(&mut s, &click(4, EventType::PageView, "B", None));
        let f = apply(&mut s, &click(5, EventType::PageView, "A", None));
        assert_eq!((f.pages, f.product_views), (5, 2));
    }

    #[test]
    fn views_and_cart_are_counted_per_product_and_interactions_are_not_pages() {
        let mut s = None;
        apply(&mut s, &click(0, EventType::PageView, "A", None));
        apply(&mut s, &click(1, EventType::PageView, "B", None));
        let f = apply(&mut s, &click(2, EventType::AddToCart, "A", None));
        assert_eq!((f.pages, f.product_views, f.product_in_cart), (2, 1, true));
        let f = apply(&mut s, &click(3, EventType::PageView, "A", None));
        assert_eq!((f.pages, f.product_views, f.product_in_cart), (3, 2, true));
        let f = apply(&mut s, &click(4, EventType::RemoveFromCart, "A", None));
        assert!(!f.product_in_cart);
    }

    #[test]
    fn an_earlier_event_counts_in_the_session_without_moving_its_end_back() {
        let mut s = None;
        apply(&mut s, &click(100, EventType::PageView, "A", None));
        let f = apply(&mut s, &click(50, EventType::PageView, "A", None));
        assert_eq!(f.pages, 2);
        assert_eq!(s.as_ref().unwrap().last_ms, 100_000);
    }

    #[test]
    fn past_the_bound_the_least_recently_touched_product_is_forgotten() {
        let mut s = None;
        apply(&mut s, &click(0, EventType::PageView, "P0", None));
        for i in 1..=MAX_SESSION_PRODUCTS {
            apply(
                &mut s,
                &click(i as i64, EventType::PageView, &format!("P{i}"), None),
            );
        }
        assert_eq!(s.as_ref().unwrap().products.len(), MAX_SESSION_PRODUCTS);
        let f = apply(&mut s, &click(100, EventType::PageView, "P0", None));
        assert_eq!(f.product_views, 1, "P0 was forgotten");
        let f = apply(&mut s, &click(101, EventType::PageView, "P5", None));
        assert_eq!(f.product_views, 2, "P5 was kept");
    }
}
