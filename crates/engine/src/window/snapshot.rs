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
