//! The shared store: the same GCRA, evaluated atomically inside Redis by one Lua script call
//! per decision (EVALSHA), with Redis' own clock (`TIME`) so every replica agrees on "now".
//!
//! There is no read-then-write race: the script reads the theoretical arrival time, decides and
//! writes it back in one atomic step. Keys expire when their bucket is full again, so Redis
//! holds only callers that are actually spending budget. Caller keys are hashed (SHA-256) so
//! identities do not appear in Redis.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};

use super::{Outcome, StoreUnavailable};
use crate::config::LimitSpec;

/// KEYS[1]: bucket. ARGV: interval µs, burst. Returns {allowed, remaining, reset µs}.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tolerance = interval * (burst - 1)
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then
  tat = now
end
if tat - now > tolerance then
  return {0, 0, tat - now - tolerance}
end
local new_tat = tat + interval
local ttl_ms = math.ceil((new_tat - now) / 1000)
redis.call('SET', KEYS[1], new_tat, 'PX', ttl_ms)
local remaining = math.floor((now + tolerance - new_tat) / interval) + 1
return {1, remaining, new_tat - now}
"#;

/// Decisions through Redis.
pub struct RedisStore {
    url: String,
    client: redis::Client,
    config: redis::aio::ConnectionManagerConfig,
    /// Made on the first decision: creating a connection manager needs a running Tokio
    /// runtime, which `portcullis check` (building the same state) does not have.
    conn: tokio::sync::OnceCell<ConnectionManager>,
    script: redis::Script,
    prefix: String,
    timeout: Duration,
    /// Known down: decisions fail at once (no request waits `store_timeout` for a Redis that
    /// refuses connections) while a background probe waits for it to come back. Shared with
    /// that probe, which ends when the store is dropped.
    down: Arc<AtomicBool>,
}

/// How often a down store is probed.
const PROBE_EVERY: Duration = Duration::from_millis(500);

impl RedisStore {
    /// A store for `url`; connects lazily on the first decision and reconnects by itself.
    ///
    /// # Errors
    /// An invalid URL.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> redis::RedisResult<RedisStore> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(200))))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        Ok(RedisStore {
            url: url.to_owned(),
            client,
            config,
            conn: tokio::sync::OnceCell::new(),
            script: redis::Script::new(GCRA),
            prefix: prefix.to_owned(),
            timeout,
            down: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Whether two stores talk to the same Redis with the same keys.
    pub fn same_target(&self, other: &RedisStore) -> bool {
        self.url == other.url && self.prefix == other.prefix && self.timeout == other.timeout
    }

    /// Decides one request.
    ///
    /// # Errors
    /// [`StoreUnavailable`] when Redis is down or slower than `store_timeout`. The first
    /// failure of an outage is logged, and so is the recovery.
    pub async fn check(
        &self,
        route: &str,
        spec: &LimitSpec,
        key: &str,
    ) -> Result<Outcome, StoreUnavailable> {
        if self.down.load(Ordering::Relaxed) {
            return Err(StoreUnavailable);
        }
        let digest = Sha256::digest(key.as_bytes());
        let bucket = format!("{}{}:{}", self.prefix, route, hex::encode(&digest[..16]));
        let interval = spec.interval().as_micros().max(1) as u64;
        let conn = self
            .conn
            .get_or_try_init(|| async {
                self.client.get_connection_manager_lazy(self.config.clone())
            })
            .await;
        let mut conn = match conn {
            Ok(c) => c.clone(),
            Err(e) => return Err(self.failed(&e.to_string())),
        };
        let call = async {
            let mut inv = self.script.prepare_invoke();
            inv.key(&bucket).arg(interval).arg(spec.burst);
            inv.invoke_async::<(i64, i64, i64)>(&mut conn).await
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok((allowed, remaining, reset_us))) => Ok(Outcome {
                allowed: allowed == 1,
                limit: spec.burst,
                remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
                reset: Duration::from_micros(u64::try_from(reset_us.max(0)).unwrap_or(0)),
            }),
            Ok(Err(e)) => Err(self.failed(&e.to_string())),
            Err(_) => Err(self.failed("no answer within rate_limits.store_timeout")),
        }
    }

    fn failed(&self, why: &str) -> StoreUnavailable {
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(store = %redacted(&self.url), error = %why, "rate-limit store unavailable; applying on_store_error until it recovers");
            tokio::spawn(probe(
                Arc::downgrade(&self.down),
                self.client.clone(),
                self.url.clone(),
                self.timeout.max(Duration::from_millis(200)),
            ));
        }
        StoreUnavailable
    }
}

/// PINGs a store that is down until it answers, then lets decisions through again. Ends when
/// the store is gone (a reload replaced it).
async fn probe(down: Weak<AtomicBool>, client: redis::Client, url: String, timeout: Duration) {
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let Some(flag) = down.upgrade() else { return };
        let ping = async {
            let mut c = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut c).await
        };
        if let Ok(Ok(_)) = tokio::time::timeout(timeout, ping).await {
            flag.store(false, Ordering::Relaxed);
            tracing::info!(store = %redacted(&url), "rate-limit store is reachable again");
            return;
        }
    }
}

/// The URL without a password, for logs.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(
            super::redacted("redis://:hunter2@cache:6379/0"),
            "redis://***@cache:6379/0"
        );
        assert_eq!(
            super::redacted("redis://cache:6379/0"),
            "redis://cache:6379/0"
        );
    }
}
