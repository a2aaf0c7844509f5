//! Per-client rate limits on the routes anyone can call.
//!
//! Each client address gets a bucket (GCRA, from `governor`): a sustained rate and a burst. An
//! address over its rate is answered `429` with `Retry-After`; the others are not slowed down.
//! The table of addresses is bounded in time: addresses idle long enough to have refilled their
//! bucket are dropped (`retain_recent`), every [`SWEEP_EVERY`] checks.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

/// Checks between two sweeps of idle addresses.
const SWEEP_EVERY: u64 = 4_096;

/// A rate per client address.
#[derive(Clone)]
pub struct PerClient {
    limiter: Arc<RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, DefaultClock>>,
    checks: Arc<AtomicU64>,
    /// What the limit is, for messages.
    pub per_minute: u32,
}

impl PerClient {
    /// At most `per_minute` requests a minute per address, `burst` at once.
    pub fn new(per_minute: u32, burst: u32) -> Self {
        let rate = NonZeroU32::new(per_minute.max(1)).expect("at least one");
        let burst = NonZeroU32::new(burst.max(1)).expect("at least one");
        PerClient {
            limiter: Arc::new(RateLimiter::keyed(
                Quota::per_minute(rate).allow_burst(burst),
            )),
            checks: Arc::new(AtomicU64::new(0)),
            per_minute,
        }
    }

    /// Takes `n` requests' worth for `client`; `Err` with how long to wait when over the rate.
    pub fn check(&self, client: IpAddr, n: u32) -> Result<(), Duration> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        let n = NonZeroU32::new(n.max(1)).expect("at least one");
        match self.limiter.check_key_n(&client, n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(not_until.wait_time_from(DefaultClock::default().now())),
            // More at once than the burst: never, at this rate.
            Err(_) => Err(Duration::from_secs(60)),
        }
    }

    /// Addresses currently tracked.
    pub fn clients(&self) -> usize {
        self.limiter.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_client_over_its_rate_waits_the_others_do_not() {
        let limit = PerClient::new(60, 5);
        let a: IpAddr = "203.0.113.1".parse().unwrap();
        let b: IpAddr = "203.0.113.2".parse().unwrap();
        for _ in 0..5 {
            assert!(limit.check(a, 1).is_ok());
        }
        let wait = limit.check(a, 1).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(
            limit.check(b, 1).is_ok(),
            "another client is not slowed down"
        );
        assert!(limit.check(b, 100).is_err(), "more than the burst at once");
        assert_eq!(limit.clients(), 2);
    }
}
