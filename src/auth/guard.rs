//! The brute-force guard: failed authentications counted per client IP (`auth_failures`).
//!
//! A GCRA per client network (an IPv4 address, or an IPv6 /64), in a bounded, sharded table.
//! Every attempt *reserves* one failure before its credential is verified and gives it back
//! when the credential turns out good. So a burst of concurrent guesses cannot all pass the
//! check while their verifications are still running: at most `burst` attempts are ever in
//! flight or failed at once, a blocked client learns nothing from further guesses (a right
//! password gets 429 too), and it costs no argon2 work. governor cannot give a cell back,
//! which this needs, hence this small table.
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
use crate::ratelimit::client_net;

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

    /// Reserves one failure for an attempt from `ip` before its credential is verified.
    /// Give it back with [`AuthGuard::refund`] when the credential is good; a failed attempt
    /// simply keeps it.
    ///
    /// # Errors
    /// How long to wait, when the budget is spent (by failures and attempts still being
    /// verified), or when the table is full and `ip` cannot be tracked (fail closed).
    pub fn reserve(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let net = client_net(ip);
        let mut shard = self.shard(&net).lock().unwrap_or_else(|p| p.into_inner());
        if !shard.contains_key(&net) && shard.len() >= self.per_shard {
            shard.retain(|_, tat| *tat > now);
            if shard.len() >= self.per_shard {
                return Err(self.interval);
            }
        }
        let tat = shard.entry(net).or_insert(now);
        let start = (*tat).max(now);
        let limit = now + self.tolerance;
        if start > limit {
            return Err(start - limit);
        }
        *tat = start + self.interval;
        Ok(())
    }

    /// Gives back a reservation whose credential was good.
    pub fn refund(&self, ip: IpAddr, now: Instant) {
        let net = client_net(ip);
        let mut shard = self.shard(&net).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tat) = shard.get_mut(&net) {
            match tat.checked_sub(self.interval) {
                Some(t) if t > now => *tat = t,
                _ => {
                    shard.remove(&net);
                }
            }
        }
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
    fn reservations_cap_attempts_in_flight_and_good_ones_are_refunded() {
        let g = AuthGuard::new(limit(10, 60, 3));
        let ip: IpAddr = [10, 0, 0, 1].into();
        let t0 = Instant::now();
        // Three attempts may be in flight at once; a fourth waits for one of them.
        for _ in 0..3 {
            assert_eq!(g.reserve(ip, t0), Ok(()));
        }
        let wait = g
            .reserve(ip, t0)
            .expect_err("a fourth concurrent attempt is refused");
        assert!(
            wait <= Duration::from_secs(6) && wait > Duration::ZERO,
            "{wait:?}"
        );
        // One of them was good: its reservation comes back.
        g.refund(ip, t0);
        assert_eq!(g.reserve(ip, t0), Ok(()));
        assert!(g.reserve(ip, t0).is_err());
        // Refill: one failure's worth after the interval.
        assert_eq!(g.reserve(ip, t0 + wait), Ok(()));
        let other: IpAddr = [10, 0, 0, 2].into();
        assert_eq!(g.reserve(other, t0), Ok(()), "budgets are per client");
    }

    #[test]
    fn ipv6_clients_share_a_budget_per_64_and_mapped_ipv4_is_ipv4() {
        let g = AuthGuard::new(limit(1, 60, 2));
        let t0 = Instant::now();
        let a: IpAddr = "2001:db8:5:6::1".parse().unwrap();
        let b: IpAddr = "2001:db8:5:6:ffff::2".parse().unwrap();
        assert_eq!(g.reserve(a, t0), Ok(()));
        assert_eq!(g.reserve(b, t0), Ok(()));
        assert!(
            g.reserve(a, t0).is_err(),
            "another address in the /64 spends the same budget"
        );
        let v4: IpAddr = [192, 0, 2, 1].into();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(g.reserve(v4, t0), Ok(()));
        assert_eq!(g.reserve(mapped, t0), Ok(()));
        assert!(
            g.reserve(v4, t0).is_err(),
            "a mapped address is the IPv4 address"
        );
    }

    #[test]
    fn the_table_is_bounded_and_fails_closed_when_full() {
        let g = AuthGuard::with_capacity(limit(1, 3600, 5), SHARDS);
        let t0 = Instant::now();
        let mut refused = 0;
        for i in 0..200u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            if g.reserve(ip, t0).is_err() {
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
