//! The in-process limiter: governor's GCRA keyed by caller, in a bounded key table.
//!
//! governor's DashMap store grows with every new key. [`BoundedStore`] wraps it: once it holds
//! `max_keys` keys, a caller without a bucket of its own is counted in one shared overflow
//! bucket (same quota) until pruning frees room. Existing callers keep their budgets; a flood of
//! new identities or addresses cannot grow memory, and only competes with itself.

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::{Quota, RateLimiter};

use super::Outcome;
use crate::config::LimitSpec;

/// The key shared by callers that arrive while the table is full; no real key looks like it
/// (real keys start with `id:`, `p:`, `ip:` or are `route`).
const OVERFLOW: &str = "\u{0}overflow";

/// A DashMap state store with a ceiling on its key count.
pub struct BoundedStore {
    inner: DashMapStateStore<Arc<str>>,
    max_keys: usize,
    overflow: Arc<str>,
}

impl StateStore for BoundedStore {
    type Key = Arc<str>;

    fn measure_and_replace<T, F, E>(&self, key: &Arc<str>, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        // A known key, or room for a new one: its own bucket. Otherwise the overflow bucket.
        // The length check runs only for keys not yet in the table.
        if self.inner.contains_key(key) || self.inner.len() < self.max_keys {
            self.inner.measure_and_replace(key, f)
        } else {
            self.inner.measure_and_replace(&self.overflow, f)
        }
    }
}

impl ShrinkableKeyedStateStore<Arc<str>> for BoundedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        ShrinkableKeyedStateStore::retain_recent(&self.inner, drop_below);
    }

    fn shrink_to_fit(&self) {
        ShrinkableKeyedStateStore::shrink_to_fit(&self.inner);
    }

    fn len(&self) -> usize {
        self.inner.len()
    }

    fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

/// One route's in-process limiter.
pub struct LocalLimiter {
    limiter: RateLimiter<Arc<str>, BoundedStore, DefaultClock, StateInformationMiddleware>,
    clock: DefaultClock,
    spec: LimitSpec,
    max_keys: usize,
}

impl LocalLimiter {
    /// A limiter for `spec` holding at most `max_keys` keys.
    pub fn new(spec: LimitSpec, max_keys: usize) -> LocalLimiter {
        let clock = DefaultClock::default();
        let burst = NonZeroU32::new(spec.burst).unwrap_or(NonZeroU32::MIN);
        // The interval is at least 1 ns for any rate the config accepts; fall back to that.
        let quota = Quota::with_period(spec.interval())
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
            .allow_burst(burst);
        let store = BoundedStore {
            inner: DashMapStateStore::default(),
            max_keys,
            overflow: Arc::from(OVERFLOW),
        };
        let limiter: RateLimiter<Arc<str>, BoundedStore, DefaultClock> =
            RateLimiter::new(quota, store, clock.clone());
        let limiter = limiter.with_middleware::<StateInformationMiddleware>();
        LocalLimiter {
            limiter,
            clock,
            spec,
            max_keys,
        }
    }

    /// The limit this limiter enforces.
    pub fn spec(&self) -> &LimitSpec {
        &self.spec
    }

    /// Its key ceiling.
    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// Decides one request for `key` (shared: a caller's key is made once per connection,
    /// and deciding copies nothing).
    pub fn check(&self, key: &Arc<str>) -> Outcome {
        let interval = self.spec.interval();
        match self.limiter.check_key(key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let used = self.spec.burst.saturating_sub(remaining);
                Outcome {
                    allowed: true,
                    limit: self.spec.burst,
                    remaining,
                    reset: interval * used,
                }
            }
            Err(not_until) => Outcome {
                allowed: false,
                limit: self.spec.burst,
                remaining: 0,
                reset: not_until.wait_time_from(self.clock.now()),
            },
        }
    }

    /// Drops keys whose budget is full again.
    pub fn prune(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Keys currently held.
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::LimitKey;

    fn spec(rate: u32, per_s: u64, burst: u32) -> LimitSpec {
        LimitSpec {
            key: LimitKey::Identity,
            rate,
            per: Duration::from_secs(per_s),
            burst,
        }
    }

    #[test]
    fn allows_the_burst_then_limits_with_a_reset() {
        let l = LocalLimiter::new(spec(1, 60, 3), 100);
        let a: Arc<str> = Arc::from("id:a");
        let outcomes: Vec<Outcome> = (0..4).map(|_| l.check(&a)).collect();
        assert_eq!(
            outcomes.iter().map(|o| o.allowed).collect::<Vec<_>>(),
            [true, true, true, false]
        );
        assert_eq!(
            outcomes.iter().map(|o| o.remaining).collect::<Vec<_>>(),
            [2, 1, 0, 0]
        );
        assert!(
            outcomes[3].reset > Duration::from_secs(50)
                && outcomes[3].reset <= Duration::from_secs(60)
        );
        assert!(l.check(&Arc::from("id:b")).allowed, "budgets are per key");
    }

    #[test]
    fn the_key_table_is_bounded_with_a_shared_overflow_bucket() {
        let l = LocalLimiter::new(spec(1, 3600, 2), 10);
        for i in 0..10 {
            assert!(l.check(&Arc::from(format!("id:{i}"))).allowed);
        }
        assert_eq!(l.len(), 10);
        // New callers beyond the ceiling share one bucket of the same quota.
        assert!(l.check(&Arc::from("id:new-1")).allowed);
        assert!(l.check(&Arc::from("id:new-2")).allowed);
        assert!(
            !l.check(&Arc::from("id:new-3")).allowed,
            "the overflow bucket is spent"
        );
        assert_eq!(l.len(), 11, "ten keys plus the overflow bucket");
        // Existing callers are unaffected.
        let zero: Arc<str> = Arc::from("id:0");
        assert!(l.check(&zero).allowed);
        assert!(!l.check(&zero).allowed);
    }
}
