//! Rate limits: a GCRA per route and key, decided in process (governor) or atomically in
//! Redis so that several replicas share one budget.
//!
//! This module owns the budgets and the decision; `gateway` calls [`RateLimits::check`] after
//! authorization (so denied callers neither spend quota nor create keys) and turns the
//! [`Outcome`] into 429 and `RateLimit-*` headers. What a key is ([`key_for`]) is decided here
//! too, so `explain` prints exactly the key the gateway uses.
//!
//! Reload: a route whose limit did not change keeps its in-process limiter (and so its
//! callers' remaining budgets); a changed or new limit starts full. Redis state is keyed by
//! route and caller, so it carries over by itself.

mod local;
mod redis_store;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};

pub use local::LocalLimiter;
pub use redis_store::RedisStore;

use crate::config::{Config, LimitKey, LimitSpec, LimitStore, OnStoreError};
use crate::policy::Caller;

/// One rate-limit decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Whether the request may pass.
    pub allowed: bool,
    /// The burst size (`RateLimit-Limit`).
    pub limit: u32,
    /// Requests still allowed right now (`RateLimit-Remaining`).
    pub remaining: u32,
    /// Until the budget is full again (allowed), or until the next request may pass (denied).
    pub reset: Duration,
}

impl Outcome {
    /// Writes `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (seconds, rounded
    /// up), and `Retry-After` when denied.
    pub fn write_headers(&self, h: &mut HeaderMap) {
        let reset = ceil_secs(self.reset);
        h.reserve(4);
        h.insert(RATELIMIT_LIMIT, number(self.limit.into()));
        // Changes with every response: not worth a place in the HTTP/2 header table.
        let mut remaining = number(self.remaining.into());
        remaining.set_sensitive(true);
        h.insert(RATELIMIT_REMAINING, remaining);
        h.insert(RATELIMIT_RESET, number(reset));
        if !self.allowed {
            h.insert(http::header::RETRY_AFTER, number(reset.max(1)));
        }
    }
}

const RATELIMIT_LIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit-limit");
const RATELIMIT_REMAINING: http::HeaderName = http::HeaderName::from_static("ratelimit-remaining");
const RATELIMIT_RESET: http::HeaderName = http::HeaderName::from_static("ratelimit-reset");

/// A number as a header value: below 1024 (every reset, and the limit and remaining of most
/// configurations) a shared static one, else in one allocation (`HeaderValue::from(u64)`
/// makes two).
fn number(n: u64) -> HeaderValue {
    const SMALL: usize = 1024;
    static SMALL_NUMBERS: std::sync::OnceLock<Vec<HeaderValue>> = std::sync::OnceLock::new();
    if let Ok(i) = usize::try_from(n)
        && i < SMALL
    {
        let table = SMALL_NUMBERS.get_or_init(|| {
            // One string holds every digit sequence, made once for the process's life.
            let digits: &'static str = Box::leak(
                (0..SMALL)
                    .map(|i| i.to_string())
                    .collect::<String>()
                    .into_boxed_str(),
            );
            let mut at = 0;
            (0..SMALL)
                .map(|i| {
                    let len = i.checked_ilog10().map_or(1, |l| l as usize + 1);
                    let value = HeaderValue::from_static(&digits[at..at + len]);
                    at += len;
                    value
                })
                .collect()
        });
        if let Some(v) = table.get(i) {
            return v.clone();
        }
    }
    HeaderValue::from_str(itoa::Buffer::new().format(n))
        .unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// Whole seconds, rounded up.
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The store could not decide in time; `on_store_error` says what happens.
#[derive(Clone, Copy, Debug)]
pub struct StoreUnavailable;

/// The network a client address is budgeted as: an IPv4 address (IPv4-mapped IPv6 included)
/// as itself, an IPv6 address as its /64, since one subscriber or host usually holds a whole
/// /64 and could otherwise rotate addresses to escape `key: ip` and `auth_failures`.
pub fn client_net(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

fn ip_key(ip: IpAddr) -> String {
    match client_net(ip) {
        IpAddr::V6(net) => format!("ip:{net}/64"),
        v4 => format!("ip:{v4}"),
    }
}

/// The rate-limit key of a request: what its budget is kept per. Identities are namespaced by
/// the credential they came from, so a JWT `sub` that spells a certificate's DN does not share
/// that certificate's budget.
pub fn key_for(kind: LimitKey, caller: &Caller, ip: IpAddr) -> Arc<str> {
    match kind {
        LimitKey::Identity => match (&caller.identity, caller.identity_factor) {
            (Some(id), Some(f)) => Arc::from(format!("id:{}:{id}", f.as_str())),
            _ => Arc::from(ip_key(ip)),
        },
        LimitKey::Principal if !caller.principals.is_empty() => {
            Arc::from(format!("p:{}", caller.principals.join(",")))
        }
        LimitKey::Principal => key_for(LimitKey::Identity, caller, ip),
        LimitKey::Ip => Arc::from(ip_key(ip)),
        LimitKey::Route => route_key(),
    }
}

/// The one key of `key: route` limits.
fn route_key() -> Arc<str> {
    static ROUTE: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    ROUTE.get_or_init(|| Arc::from("route")).clone()
}

/// A caller's keys for every kind of limit, made once per connection and configuration (see
/// `gateway::CallerView`), so deciding a request allocates nothing.
#[derive(Debug)]
pub struct CallerKeys {
    identity: Arc<str>,
    principal: Arc<str>,
    ip: Arc<str>,
}

impl CallerKeys {
    /// The keys of `caller` connecting from `ip`.
    pub fn new(caller: &Caller, ip: IpAddr) -> CallerKeys {
        CallerKeys {
            identity: key_for(LimitKey::Identity, caller, ip),
            principal: key_for(LimitKey::Principal, caller, ip),
            ip: key_for(LimitKey::Ip, caller, ip),
        }
    }

    /// The key for `kind`: the same text [`key_for`] makes.
    pub fn get(&self, kind: LimitKey) -> Arc<str> {
        match kind {
            LimitKey::Identity => self.identity.clone(),
            LimitKey::Principal => self.principal.clone(),
            LimitKey::Ip => self.ip.clone(),
            LimitKey::Route => route_key(),
        }
    }
}

/// The budgets of one configuration snapshot.
pub struct RateLimits {
    local: HashMap<String, Arc<LocalLimiter>>,
    redis: Option<Arc<RedisStore>>,
    on_store_error: OnStoreError,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("routes", &self.local.len())
            .field("redis", &self.redis.is_some())
            .finish()
    }
}

impl RateLimits {
    /// Builds the limiters of a configuration. With a Redis store, no connection is made until
    /// the first decision (its TLS files, for `rediss://`, are read now).
    ///
    /// # Errors
    /// A Redis TLS file that cannot be read or used.
    pub fn new(config: &Config) -> Result<RateLimits, crate::config::ConfigErrors> {
        let rl = &config.rate_limits;
        let redis = match &rl.store {
            LimitStore::Local => None,
            LimitStore::Redis(url) => {
                match RedisStore::new(url, &rl.key_prefix, rl.store_timeout, &rl.redis_tls) {
                    Ok(store) => Some(Arc::new(store)),
                    Err(mut e) => {
                        let file = config.path.display().to_string();
                        e.file.clone_from(&file);
                        return Err(crate::config::ConfigErrors {
                            file,
                            errors: vec![e],
                        });
                    }
                }
            }
        };
        let mut local = HashMap::new();
        if redis.is_none() {
            for r in &config.routes {
                if let Some(spec) = r.rate_limit {
                    local.insert(
                        r.name.to_string(),
                        Arc::new(LocalLimiter::new(spec, rl.max_keys)),
                    );
                }
            }
        }
        Ok(RateLimits {
            local,
            redis,
            on_store_error: rl.on_store_error,
        })
    }

    /// Keeps the limiters of routes whose limit did not change (reload).
    pub fn carry_over(&mut self, old: &RateLimits) {
        for (route, limiter) in self.local.iter_mut() {
            if let Some(prev) = old.local.get(route)
                && prev.spec() == limiter.spec()
                && prev.max_keys() == limiter.max_keys()
            {
                *limiter = prev.clone();
            }
        }
        if let (Some(new), Some(prev)) = (&self.redis, &old.redis)
            && new.same_target(prev)
        {
            self.redis = Some(prev.clone());
        }
    }

    /// What to do when the store cannot answer.
    pub fn on_store_error(&self) -> OnStoreError {
        self.on_store_error
    }

    /// Decides one request on `route` under `spec`.
    ///
    /// # Errors
    /// [`StoreUnavailable`] when Redis did not answer within `store_timeout`.
    pub async fn check(
        &self,
        route: &str,
        spec: &LimitSpec,
        key: &Arc<str>,
    ) -> Result<Outcome, StoreUnavailable> {
        if let Some(redis) = &self.redis {
            return redis.check(route, spec, key).await;
        }
        match self.local.get(route) {
            Some(l) => Ok(l.check(key)),
            // Every route with a limit has a limiter; an absent one means no limit.
            None => Ok(Outcome {
                allowed: true,
                limit: spec.burst,
                remaining: spec.burst,
                reset: Duration::ZERO,
            }),
        }
    }

    /// Records `value` for `name` in the shared store when it is greater than the one there
    /// (see [`RedisStore::advance`]); `None` when the store is in process (the caller keeps
    /// its own record).
    pub async fn advance_shared(
        &self,
        kind: &str,
        name: &str,
        value: u64,
        ttl: Duration,
    ) -> Option<Result<bool, StoreUnavailable>> {
        match &self.redis {
            Some(redis) => Some(redis.advance(kind, name, value, ttl).await),
            None => None,
        }
    }

    /// Marks `name` in the shared store for `ttl`; `None` when the store is in process.
    pub async fn mark_shared(
        &self,
        kind: &str,
        name: &str,
        ttl: Duration,
    ) -> Option<Result<(), StoreUnavailable>> {
        match &self.redis {
            Some(redis) => Some(redis.mark(kind, name, ttl).await),
            None => None,
        }
    }

    /// Whether `name` is marked in the shared store; `None` when the store is in process.
    pub async fn marked_shared(
        &self,
        kind: &str,
        name: &str,
    ) -> Option<Result<bool, StoreUnavailable>> {
        match &self.redis {
            Some(redis) => Some(redis.marked(kind, name).await),
            None => None,
        }
    }

    /// Forgets keys whose budget is full again; run on a timer.
    pub fn prune(&self) {
        for l in self.local.values() {
            l.prune();
        }
    }

    /// Keys held in process, per route (for tests and metrics).
    pub fn local_keys(&self, route: &str) -> usize {
        self.local.get(route).map_or(0, |l| l.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Factor;

    #[test]
    fn numbers_render_as_decimal_small_or_large() {
        for n in (0..1100).chain([9_999, 1_000_000, u64::MAX]) {
            assert_eq!(number(n).to_str().unwrap(), n.to_string());
        }
    }

    #[test]
    fn keys() {
        let ip: IpAddr = [192, 0, 2, 7].into();
        let anon = Caller::default();
        let known = Caller {
            identity: Some("CN=bob".into()),
            identity_factor: Some(Factor::Certificate),
            principals: vec!["readers".into(), "staff".into()],
            roles: vec![],
            factors: vec![Factor::Certificate],
        };
        assert_eq!(
            &*key_for(LimitKey::Identity, &known, ip),
            "id:certificate:CN=bob"
        );
        let same_text_by_jwt = Caller {
            identity_factor: Some(Factor::Jwt),
            ..known.clone()
        };
        assert_eq!(
            &*key_for(LimitKey::Identity, &same_text_by_jwt, ip),
            "id:jwt:CN=bob"
        );
        assert_eq!(&*key_for(LimitKey::Identity, &anon, ip), "ip:192.0.2.7");
        assert_eq!(
            &*key_for(LimitKey::Principal, &known, ip),
            "p:readers,staff"
        );
        assert_eq!(&*key_for(LimitKey::Principal, &anon, ip), "ip:192.0.2.7");
        assert_eq!(&*key_for(LimitKey::Ip, &known, ip), "ip:192.0.2.7");
        assert_eq!(&*key_for(LimitKey::Route, &known, ip), "route");
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(&*key_for(LimitKey::Ip, &known, mapped), "ip:192.0.2.7");
        let v6a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(&*key_for(LimitKey::Ip, &known, v6a), "ip:2001:db8:1:2::/64");
        assert_eq!(
            key_for(LimitKey::Ip, &known, v6a),
            key_for(LimitKey::Ip, &known, v6b)
        );
    }

    #[test]
    fn headers_round_up() {
        let mut h = HeaderMap::new();
        Outcome {
            allowed: false,
            limit: 20,
            remaining: 0,
            reset: Duration::from_millis(1200),
        }
        .write_headers(&mut h);
        assert_eq!(h["ratelimit-limit"], "20");
        assert_eq!(h["ratelimit-remaining"], "0");
        assert_eq!(h["ratelimit-reset"], "2");
        assert_eq!(h["retry-after"], "2");
    }
}
