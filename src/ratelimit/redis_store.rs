//! The shared store: the same GCRA, evaluated atomically inside Redis by one Lua script call
//! per decision (EVALSHA), with Redis' own clock (`TIME`) so every replica agrees on "now".
//!
//! There is no read-then-write race: the script reads the theoretical arrival time, decides and
//! writes it back in one atomic step. Keys expire when their bucket is full again, so Redis
//! holds only callers that are actually spending budget. Caller keys are hashed (SHA-256) so
//! identities do not appear in Redis.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::oneshot;

use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};

use super::{Outcome, StoreUnavailable};
use crate::config::LimitSpec;

/// KEYS[1]: bucket. ARGV: interval µs, burst, n (requests to decide, in order). Grants the
/// first `granted` of them, exactly as `n` calls for one request each would.
/// Returns {granted, remaining after them, reset µs after them, retry µs for the rest}.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local tolerance = interval * (burst - 1)
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then
  tat = now
end
local granted = 0
if tat - now <= tolerance then
  granted = math.min(n, math.floor((now + tolerance - tat) / interval) + 1)
end
if granted > 0 then
  tat = tat + granted * interval
  redis.call('SET', KEYS[1], tat, 'PX', math.ceil((tat - now) / 1000))
end
local remaining = 0
if now + tolerance >= tat then
  remaining = math.floor((now + tolerance - tat) / interval) + 1
end
local retry = tat - now - tolerance
if retry < 0 then
  retry = 0
end
return {granted, remaining, tat - now, retry}
"#;

/// Requests decided by one script call at most; more wait for the next call.
const MAX_BATCH: usize = 256;

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
    /// Buckets with a script call in flight, and the requests that arrived for them since:
    /// those are decided together by the next call, one round trip for all of them.
    waiting: Mutex<HashMap<String, Vec<Waiter>>>,
}

thread_local! {
    /// The bucket name being looked up, reused from request to request.
    static BUCKET: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// A request waiting for its bucket's next call.
type Waiter = oneshot::Sender<Result<Outcome, StoreUnavailable>>;

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
            waiting: Mutex::new(HashMap::new()),
        })
    }

    /// Whether two stores talk to the same Redis with the same keys.
    pub fn same_target(&self, other: &RedisStore) -> bool {
        self.url == other.url && self.prefix == other.prefix && self.timeout == other.timeout
    }

    /// Decides one request.
    ///
    /// Requests for the same bucket that arrive while a call for it is in flight wait for the
    /// next call and are decided together, in arrival order, by one script call: under load a
    /// round trip to Redis serves many requests, and each is counted exactly as if it had
    /// been sent alone.
    ///
    /// # Errors
    /// [`StoreUnavailable`] when Redis is down or slower than `store_timeout`. The first
    /// failure of an outage is logged, and so is the recovery.
    pub async fn check(
        self: &Arc<Self>,
        route: &str,
        spec: &LimitSpec,
        key: &str,
    ) -> Result<Outcome, StoreUnavailable> {
        if self.down.load(Ordering::Relaxed) {
            return Err(StoreUnavailable);
        }
        let (tx, rx) = oneshot::channel();
        let lead = BUCKET.with_borrow_mut(|bucket| {
            self.bucket_name(bucket, route, key);
            let mut waiting = self.lock_waiting();
            match waiting.get_mut(bucket.as_str()) {
                Some(queue) => {
                    queue.push(tx);
                    None
                }
                None => {
                    waiting.insert(bucket.clone(), Vec::new());
                    Some((bucket.clone(), tx))
                }
            }
        });
        if let Some((bucket, first)) = lead {
            // The calls run in a task of their own, so a request that goes away while it
            // waits cannot strand the others queued behind it.
            tokio::spawn(self.clone().drive(bucket, *spec, vec![first]));
        }
        // Each call is bounded by store_timeout (and then fails the whole batch): a request
        // that queued behind a call in flight waits at most twice that.
        rx.await.unwrap_or(Err(StoreUnavailable))
    }

    /// `{prefix}{route}:{first 16 bytes of SHA-256(key), hex}`: identities stay out of Redis.
    fn bucket_name(&self, out: &mut String, route: &str, key: &str) {
        out.clear();
        out.push_str(&self.prefix);
        out.push_str(route);
        out.push(':');
        let mut digits = [0u8; 32];
        if hex::encode_to_slice(&Sha256::digest(key.as_bytes())[..16], &mut digits).is_ok() {
            out.extend(digits.iter().map(|&d| char::from(d)));
        }
    }

    fn lock_waiting(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Waiter>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decides `batch`, then whatever queued for `bucket` meanwhile, until nothing has.
    async fn drive(self: Arc<Self>, bucket: String, spec: LimitSpec, mut batch: Vec<Waiter>) {
        loop {
            let result = self.call(&bucket, &spec, batch.len()).await;
            for (i, waiter) in batch.drain(..).enumerate() {
                let outcome = result.as_ref().map(|d| d.outcome(i, &spec)).map_err(|e| *e);
                let _ = waiter.send(outcome);
            }
            let mut waiting = self.lock_waiting();
            let Some(queue) = waiting.get_mut(&bucket) else {
                return;
            };
            if queue.is_empty() {
                waiting.remove(&bucket);
                return;
            }
            let take = queue.len().min(MAX_BATCH);
            batch.extend(queue.drain(..take));
        }
    }

    /// One script call deciding `n` requests.
    async fn call(
        &self,
        bucket: &str,
        spec: &LimitSpec,
        n: usize,
    ) -> Result<Decided, StoreUnavailable> {
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
            inv.key(bucket).arg(interval).arg(spec.burst).arg(n);
            inv.invoke_async::<(i64, i64, i64, i64)>(&mut conn).await
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok((granted, remaining, reset_us, retry_us))) => Ok(Decided {
                granted: usize::try_from(granted.max(0)).unwrap_or(0),
                remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
                reset: Duration::from_micros(u64::try_from(reset_us.max(0)).unwrap_or(0)),
                retry: Duration::from_micros(u64::try_from(retry_us.max(0)).unwrap_or(0)),
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

/// What one script call decided for a batch.
struct Decided {
    /// The first `granted` requests of the batch are allowed.
    granted: usize,
    /// Left after all the granted ones.
    remaining: u32,
    /// Until the bucket is full again, after the granted ones.
    reset: Duration,
    /// Until the next request could be allowed.
    retry: Duration,
}

impl Decided {
    /// The outcome of the `i`-th request of the batch, as a call of its own would have
    /// reported it: each granted request saw the budget before the ones after it.
    fn outcome(&self, i: usize, spec: &LimitSpec) -> Outcome {
        if i < self.granted {
            let after = u32::try_from(self.granted - 1 - i).unwrap_or(u32::MAX);
            Outcome {
                allowed: true,
                limit: spec.burst,
                remaining: self.remaining.saturating_add(after),
                reset: self
                    .reset
                    .saturating_sub(spec.interval().saturating_mul(after)),
            }
        } else {
            Outcome {
                allowed: false,
                limit: spec.burst,
                remaining: 0,
                reset: self.retry,
            }
        }
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
