//! Event-time windows: watermarks, tumbling/hopping buckets and pane-based sliding windows, and
//! the dashboard aggregation built from them.
//!
//! - [`watermark`]: per-partition watermarks with allowed lateness and an idle-partition
//!   fallback driven by the wall clock; an [`EventTimeBuffer`] that holds events until the
//!   watermark passes them, so state only ever contains events up to "now".
//! - [`buckets`]: tumbling and hopping windows ([`WindowSpec`], [`Buckets`]) and sliding windows
//!   over one-second panes ([`Sliding`]).
//! - [`dashboard`]: the dashboard metrics and the aggregation operator.
//! - [`shop`]: sessions, sources and conversions, fed every event.
//! - [`snapshot`]: the typed [`DashboardSnapshot`] it publishes.
//! - [`visitor`]: visitor ids hashed once and shared, as the window state keys them.
//!
//! Time has one-second resolution here: the watermark is floored to a whole second, and a
//! sliding window "last N minutes" (`now − N < ts ≤ now`) is the exact union of the
//! right-closed one-second panes `(s − 1 s, s]` with `s` in that range.

pub mod buckets;
pub mod dashboard;
pub mod shop;
pub mod snapshot;
pub mod visitor;
pub mod watermark;

pub use buckets::{Buckets, Sliding, WindowSpec};
pub use dashboard::{AggregateOperator, DashboardAggregator, DashboardHandle};
pub use snapshot::DashboardSnapshot;
pub use watermark::{EventTimeBuffer, Frontier, Watermarks};

/// Milliseconds per second: the resolution of watermarks and panes.
pub const SECOND_MS: i64 = 1_000;
/// Milliseconds per minute.
pub const MINUTE_MS: i64 = 60_000;

/// `ts` rounded down to a multiple of `step`.
pub fn floor_to(ts: i64, step: i64) -> i64 {
    ts.div_euclid(step) * step
}

/// `ts` rounded up to a multiple of `step`.
pub fn ceil_to(ts: i64, step: i64) -> i64 {
    -floor_to(-ts, step)
}
