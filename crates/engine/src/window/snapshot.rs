//! The dashboard snapshot: what the aggregate publishes, `/api/dashboard` serves, the backtest
//! reports and the dashboard store persists. One type for all of them, so a field renamed or
//! added in one place is a compile error in every other (the JSON names are the contract of
//! `web/assets/dashboard.js` and of saved backtest reports; see the table in [`super::dashboard`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The dashboard as of a watermark (`now_ms`); before any event every list is empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardSnapshot {
    /// The watermark the snapshot is as of (`null` before any event).
    pub now_ms: Option<i64>,
    /// Page views per tumbling minute, the 15 up to the one containing `now_ms`.
    pub page_views_per_minute: Vec<MinuteViews>,
    /// Distinct visitors per tumbling 30 minutes, 16 buckets.
    pub visitors_per_30min: Vec<BucketVisitors>,
    /// The 10 most viewed products of the last hour.
    pub top_products_1h: Vec<ProductViews>,
    /// Views per category in the last hour, most viewed first.
    pub category_views_1h: Vec<CategoryViews>,
    /// Views per device class in the last 10 minutes.
    pub device_views_10m: DeviceViews,
    /// The 10 newest views, newest first.
    pub latest_views: Vec<LatestView>,
    /// Distinct visitors in the last 30 minutes.
    pub active_visitors_30m: u64,
    /// Distinct visitors in the last 5 minutes.
    pub active_visitors_5m: u64,
    /// Distinct visitors per tumbling minute, 30 buckets.
    pub active_visitors_per_minute_30m: Vec<BucketVisitors>,
    /// Views per country in the last 30 minutes, most viewed first.
    pub country_views_30m: Vec<CountryViews>,
    /// Offers of the last hour, by pattern.
    pub offers_by_pattern_1h: BTreeMap<String, u64>,
    /// Sessions, sources and conversions (see [`super::shop`]).
    #[serde(default)]
    pub shop: ShopSnapshot,
}

/// Sessions, sources and conversions as of the watermark. "The last hour" (`_1h`) is the 60
/// UTC minutes up to the one containing `now_ms`. Money is in hundredths of the currency's
/// unit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShopSnapshot {
    /// Sessions that an event can still continue (an event in the last 30 minutes).
    pub active_sessions: u64,
    /// Sessions started and ended in the last hour, with the ended ones' totals.
    pub sessions_1h: SessionTotals,
    /// The first page of sessions, by the minute of that page view.
    pub entry_pages_1h: Vec<Ranked>,
    /// The last page of sessions that ended.
    pub exit_pages_1h: Vec<Ranked>,
    /// Sessions started, by source (`direct`, `search`, `social`, `referral`, `email`, `paid`).
    pub sources_1h: Vec<Ranked>,
    /// Sessions started, by referrer host (direct ones have none).
    pub referrer_hosts_1h: Vec<Ranked>,
    /// Sessions started, by `utm_source`.
    pub utm_sources_1h: Vec<Ranked>,
    /// Sessions started, by `utm_medium`.
    pub utm_mediums_1h: Vec<Ranked>,
    /// Sessions started, by `utm_campaign`.
    pub utm_campaigns_1h: Vec<Ranked>,
    /// Adds to cart, checkouts, purchases and revenue per tumbling minute, the 15 up to the one
    /// containing `now_ms`.
    pub conversions_per_minute: Vec<ConversionMinute>,
    /// The last hour's conversions.
    pub conversions_1h: ConversionTotals,
    /// The 10 products with the most revenue in the last hour.
    pub top_products_by_revenue_1h: Vec<ProductRevenue>,
    /// The 10 most frequent search queries of the last hour (trimmed, lower case).
    pub top_queries_1h: Vec<Ranked>,
    /// Custom events of the last hour, by name.
    pub custom_events_1h: Vec<Ranked>,
    /// Every active funnel over the last hour.
    #[serde(default)]
    pub funnels_1h: Vec<FunnelResult>,
}

/// A funnel's steps reached, within a session, over a time span.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunnelResult {
    /// The funnel's name.
    pub name: String,
    /// What it shows.
    pub description: String,
    /// Its steps, in order.
    pub steps: Vec<FunnelStepResult>,
}

/// One step of a [`FunnelResult`]. Step-to-step conversion is `visitors / previous visitors`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunnelStepResult {
    /// The step's name.
    pub name: String,
    /// Distinct visitors whose session reached it in the span (after the steps before it).
    pub visitors: i64,
    /// The median time from the step before to this one (the lower of two middle values);
    /// `null` for the first step or when none reached it.
    pub median_ms_from_previous: Option<i64>,
}

/// A key and its count, in a list ranked by count (then key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ranked {
    /// The key (`(other)` for the keys over a minute's bound).
    pub key: String,
    /// Its count.
    pub count: i64,
}

/// Sessions of the last hour. Averages are `duration_ms / ended` and `pages / ended`; the
/// bounce rate is `bounces / ended`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionTotals {
    /// Sessions whose first event is in the last hour.
    pub started: i64,
    /// Sessions that closed (30 minutes after their last event) in the last hour.
    pub ended: i64,
    /// Their summed duration, first to last event.
    pub duration_ms: i64,
    /// Their summed page views.
    pub pages: i64,
    /// How many of them had one page view.
    pub bounces: i64,
}

/// Revenue and orders in one currency (`""`: sent without one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Money {
    /// ISO 4217 code, upper case.
    pub currency: String,
    /// Revenue in hundredths of the unit.
    pub hundredths: i64,
    /// Orders (average order value: `hundredths / orders`).
    pub orders: i64,
}

/// One minute's conversions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConversionMinute {
    /// The minute's start (UTC-aligned).
    pub start_ms: i64,
    /// Adds to cart.
    pub add_to_cart: i64,
    /// Checkouts begun.
    pub begin_checkout: i64,
    /// Purchases.
    pub purchases: i64,
    /// Revenue per currency.
    pub revenue: Vec<Money>,
    /// Whether the watermark has passed its end.
    #[serde(rename = "final")]
    pub is_final: bool,
}

/// The last hour's conversions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConversionTotals {
    /// Adds to cart.
    pub add_to_cart: i64,
    /// Removals from the cart.
    pub remove_from_cart: i64,
    /// Checkouts begun.
    pub begin_checkout: i64,
    /// Purchases (an order id counts once within the hour).
    pub purchases: i64,
    /// Searches.
    pub searches: i64,
    /// Revenue and orders per currency.
    pub revenue: Vec<Money>,
}

/// A product's sales in the last hour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductRevenue {
    /// The product id.
    pub product_id: String,
    /// Its catalogue title (`Unknown` when the catalogue has none).
    pub title: String,
    /// Units sold.
    pub units: i64,
    /// Revenue in hundredths (of the orders' currency).
    pub hundredths: i64,
}

/// One minute's page views.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MinuteViews {
    /// The bucket's start (UTC-aligned).
    pub start_ms: i64,
    /// Views in it.
    pub views: u64,
    /// Whether the watermark has passed its end (the value can no longer change).
    #[serde(rename = "final")]
    pub is_final: bool,
}

/// One bucket's distinct visitors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketVisitors {
    /// The bucket's start (UTC-aligned).
    pub start_ms: i64,
    /// Distinct visitors in it.
    pub visitors: u64,
    /// Whether the watermark has passed its end.
    #[serde(rename = "final")]
    pub is_final: bool,
}

/// A product's views, with its catalogue title and category.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductViews {
    /// The product id (`(other)` for the products over the key bound).
    pub product_id: String,
    /// Its title (`Unknown` when the catalogue has none).
    pub title: String,
    /// Its category.
    pub category: String,
    /// Views.
    pub views: u64,
}

/// A category's views.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryViews {
    /// The category.
    pub category: String,
    /// Views.
    pub views: u64,
}

/// A country's views.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountryViews {
    /// ISO 3166-1 alpha-2 (or `(other)`).
    pub country: String,
    /// Views.
    pub views: u64,
}

/// Views per device class.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceViews {
    /// Desktop browsers.
    #[serde(rename = "Desktop")]
    pub desktop: u64,
    /// Phones.
    #[serde(rename = "Mobile")]
    pub mobile: u64,
    /// Tablets.
    #[serde(rename = "Tablet")]
    pub tablet: u64,
    /// Everything else (bots, TVs, unknown agents).
    #[serde(rename = "Other")]
    pub other: u64,
}

/// One of the newest views. `visitor` and `ip` are what the pipeline saw; the server
/// pseudonymises them for audiences that may not see them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatestView {
    /// Event time.
    pub ts_ms: i64,
    /// The visitor id.
    pub visitor: String,
    /// The client IP.
    pub ip: String,
    /// The IP's country.
    pub country: String,
    /// The product viewed.
    pub product_id: String,
    /// Its category.
    pub category: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_empty_snapshot_has_the_fields_the_dashboard_reads() {
        let json = serde_json::to_value(DashboardSnapshot::default()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "now_ms": null,
                "page_views_per_minute": [],
                "visitors_per_30min": [],
                "top_products_1h": [],
                "category_views_1h": [],
                "device_views_10m": {"Desktop": 0, "Mobile": 0, "Tablet": 0, "Other": 0},
                "latest_views": [],
                "active_visitors_30m": 0,
                "active_visitors_5m": 0,
                "active_visitors_per_minute_30m": [],
                "country_views_30m": [],
                "offers_by_pattern_1h": {},
                "shop": {
                    "active_sessions": 0,
                    "sessions_1h": {"started": 0, "ended": 0, "duration_ms": 0, "pages": 0, "bounces": 0},
                    "entry_pages_1h": [],
                    "exit_pages_1h": [],
                    "sources_1h": [],
                    "referrer_hosts_1h": [],
                    "utm_sources_1h": [],
                    "utm_mediums_1h": [],
                    "utm_campaigns_1h": [],
                    "conversions_per_minute": [],
                    "conversions_1h": {
                        "add_to_cart": 0, "remove_from_cart": 0, "begin_checkout": 0,
                        "purchases": 0, "searches": 0, "revenue": [],
                    },
                    "top_products_by_revenue_1h": [],
                    "top_queries_1h": [],
                    "custom_events_1h": [],
                    "funnels_1h": [],
                },
            })
        );
    }

    #[test]
    fn a_snapshot_with_an_unknown_field_is_refused() {
        let mut json = serde_json::to_value(DashboardSnapshot::default()).unwrap();
        json["views_per_hour"] = serde_json::json!([]);
        let err = serde_json::from_value::<DashboardSnapshot>(json).unwrap_err();
        assert!(err.to_string().contains("views_per_hour"), "{err}");
    }
}
