//! The brute-force guard: failed authentications counted per client IP (`auth_failures`).
//!
//! A GCRA per IP, in a bounded, sharded table. It is checked *before* a credential is verified,
//! so a blocked IP learns nothing from further guesses (a right password gets 429 too) and
//! costs no argon2 work. governor has no way to look at a key's state without spending a cell,
//! which this check needs, hence this small table.
//!
//! Memory is bounded: each shard holds at most `MAX_KEYS / SHARDS` IPs. Entries whose budget
//! has refilled are dropped when a shard is full; if a shard is still full (a flood of failing
//! IPs), new IPs are refused (429) until entries refill: the guard fails closed.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::AuthFailureLimit;

/// Most IPs tracked at once.
pub const MAX_KEYS: usize = 100_000;
const SHARDS: usize = 16;

/// Per-IP failure budget.
#[derive(Debug)]
pub struct AuthGuard {
    /// Time per failure (the emission interval).
    interval: Duration,
    /// How far ahead of now the theoretical arrival time may run before blocking.
    tolerance: Duration,
    shards: Vec<Mutex<HashMap<IpAddr, Instant>>>,
    hasher: std::collections::hash_map::RandomState,
    per_shard: usize,
}

impl AuthGuard {
    /// A guard allowing `burst` failures at once, refilled at `rate` per `per`.
    pub fn new(limit: AuthFailureLimit) -> AuthGuard {
        Self::with_capacity(limit, MAX_KEYS)
    }

    /// As `new`, with a chosen table size (tests).
    pub fn with_capacity(limit: AuthFailureLimit, max_keys: usize) -> AuthGuard {
        let interval = limit.per / limit.rate.max(1);
        AuthGuard {
            interval,
            tolerance: interval * limit.burst.saturating_sub(1),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            per_shard: (max_keys / SHARDS).max(1),
        }
    }

    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, Instant>> {
        &self.shards[(self.hasher.hash_one(ip) as usize) % SHARDS]
    }

    /// `Some(wait)` when `ip` has spent its budget and must wait before trying again.
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let shard = self.shard(&ip).lock().unwrap_or_else(|p| p.into_inner());
        let tat = *shard.get(&ip)?;
        let limit = now + self.tolerance;
        (tat > limit).then(|| tat - limit)
    }

    /// Records a failed attempt. Returns `Some(wait)` when the attempt did not fit the budget
    /// (concurrent attempts raced past [`AuthGuard::blocked`]), or when the table is full and
    /// `ip` cannot be tracked (fail closed). `burst` failures in a row are answered normally;
    /// the next attempt is blocked.
    pub fn record_failure(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let mut shard = self.shard(&ip).lock().unwrap_or_else(|p| p.into_inner());
        if !shard.contains_key(&ip) && shard.len() >= self.per_shard {
            shard.retain(|_, tat| *tat > now);
            if shard.len() >= self.per_shard {
                return Some(self.interval);
            }
        }
        let tat = shard.entry(ip).or_insert(now);
        let start = (*tat).max(now);
        let limit = now + self.tolerance;
        if start > limit {
            return Some(start - limit);
        }
        *tat = start + self.interval;
        None
    }

    /// Drops entries whose budget has fully refilled; run on a timer.
    pub fn prune(&self, now: Instant) {
        for s in &self.shards {
            s.lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|_, tat| *tat > now);
        }
    }

    /// IPs currently tracked.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    /// Whether no IP is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(rate: u32, per_s: u64, burst: u32) -> AuthFailureLimit {
        AuthFailureLimit {
            rate,
            per: Duration::from_secs(per_s),
            burst,
        }
    }

    #[test]
    fn allows_burst_failures_then_blocks_until_refill() {
        let g = AuthGuard::new(limit(10, 60, 3));
        let ip: IpAddr = [10, 0, 0, 1].into();
        let t0 = Instant::now();
        assert_eq!(g.blocked(ip, t0), None);
        for _ in 0..3 {
            assert_eq!(
                g.record_failure(ip, t0),
                None,
                "burst failures are answered normally"
            );
        }
        let wait = g.blocked(ip, t0).expect("blocked after the burst");
        assert!(
            wait <= Duration::from_secs(6) && wait > Duration::ZERO,
            "{wait:?}"
        );
        assert_eq!(
            g.blocked(ip, t0 + wait),
            None,
            "one failure refills after the interval"
        );
        let other: IpAddr = [10, 0, 0, 2].into();
        assert_eq!(g.blocked(other, t0), None, "budgets are per IP");
    }

    #[test]
    fn the_table_is_bounded_and_fails_closed_when_full() {
        let g = AuthGuard::with_capacity(limit(1, 3600, 5), SHARDS);
        let t0 = Instant::now();
        let mut refused = 0;
        for i in 0..200u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            if g.record_failure(ip, t0).is_some() {
                refused += 1;
            }
        }
        let tracked = g.len();
        assert!(tracked <= SHARDS, "at most one IP per shard: {tracked}");
        assert!(refused > 0, "new IPs are refused while the table is full");
        // Once budgets refill, the table makes room again.
        let later = t0 + Duration::from_secs(3600 * 5);
        g.prune(later);
        assert!(g.is_empty());
    }
}
