//! The shared store: the same GCRA, evaluated atomically inside Redis by one Lua script call
//! per decision (EVALSHA), with Redis' own clock (`TIME`) so every replica agrees on "now".
//!
//! There is no read-then-write race: the script reads the theoretical arrival time, decides and
//! writes it back in one atomic step. Keys expire when their bucket is full again, so Redis
//! holds only callers that are actually spending budget. Caller keys are hashed (SHA-256) so
//! identities do not appear in Redis.
//!
//! Round trips are saved three ways, none of which lets more through than the shared limit:
//! requests that arrive while a call for their bucket is in flight are decided together by the
//! next call; a bucket that is busy on this replica takes a few requests' worth of budget
//! ahead (a lease: counted in Redis first, spent here without a call); and a bucket Redis has
//! just refused is refused here until the retry time Redis gave.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

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

/// The Redis client for `url`, with the TLS material of a `rediss://` URL read now, so a
/// missing or unreadable file is a configuration error rather than a failing store.
fn client(
    url: &str,
    tls: &crate::config::RedisTls,
) -> Result<redis::Client, crate::config::ConfigError> {
    use crate::config::{ConfigError, FileRef};
    let problem = |f: Option<&FileRef>, key: &str, message: String| ConfigError {
        file: String::new(),
        pos: f.map(|f| f.pos).unwrap_or_default(),
        key: f.map_or_else(|| key.to_owned(), |f| f.key.clone()),
        message,
    };
    let read = |f: &FileRef| {
        std::fs::read(&f.path).map_err(|e| {
            problem(
                Some(f),
                "",
                format!(
                    "{}: {}",
                    f.path.display(),
                    crate::config::read_error(&f.path, &e)
                ),
            )
        })
    };
    if !url.starts_with("rediss://") {
        return redis::Client::open(url)
            .map_err(|e| problem(None, "rate_limits.store", e.to_string()));
    }
    let root_cert = tls.ca.as_ref().map(read).transpose()?;
    let client_tls = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read(cert)?,
            client_key: read(key)?,
        }),
        _ => None,
    };
    redis::Client::build_with_tls(
        url,
        redis::TlsCertificates {
            client_tls,
            root_cert,
        },
    )
    .map_err(|e| {
        let at = tls.ca.as_ref().or(tls.cert.as_ref());
        problem(
            at,
            "rate_limits.redis_tls",
            format!("cannot use the Redis TLS files: {e}"),
        )
    })
}

/// Requests decided by one script call at most; more wait for the next call.
const MAX_BATCH: usize = 256;

/// A lease is at most this fraction of the burst (1/32: 31 of a burst of 1,000; none below a
/// burst of 64), so budget a replica holds but does not spend stays a small part of the limit.
const LEASE_SHARE: u32 = 32;

/// Budget leased and not spent within this long is given up (it stays spent in Redis).
const LEASE_TTL: Duration = Duration::from_secs(1);

/// The bucket table is swept when it reaches this many entries: first of leases and refusals
/// no longer in force, then, if that is not enough to halve it, of everything but calls in
/// flight (losing a lease or a refusal early is always safe: the next request asks Redis).
/// So memory stays bounded whatever keys callers vary, at an amortized constant cost.
const SWEEP_AT: usize = 4096;

/// Moves a counter forward, atomically: `1` when ARGV[1] is greater than the stored value
/// (which is then replaced and expires after ARGV[2] ms), `0` when it is not. One-time codes
/// use it so that a step accepted by any replica is accepted by no other.
const ADVANCE: &str = r#"
local last = tonumber(redis.call('GET', KEYS[1]) or '-1')
if last >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
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
    advance: redis::Script,
    prefix: String,
    timeout: Duration,
    /// Known down: decisions fail at once (no request waits `store_timeout` for a Redis that
    /// refuses connections) while a background probe waits for it to come back. Shared with
    /// that probe, which ends when the store is dropped.
    down: Arc<AtomicBool>,
    /// What this replica knows about the buckets it is using: calls in flight and the
    /// requests waiting for them, leases, and refusals still in force.
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// One bucket as this replica sees it.
#[derive(Default)]
struct Bucket {
    /// `Some` while a script call for the bucket is in flight: the requests that arrived
    /// since, decided together by the next call.
    queue: Option<Vec<Waiter>>,
    lease: Lease,
    /// Redis refused this bucket until then: refusing here too sends nothing to Redis and
    /// is what Redis would answer (a bucket only refills with time).
    refused_until: Option<Instant>,
}

/// Budget Redis granted to this replica ahead of its requests: counted in Redis when it was
/// taken, spent here one request at a time without a round trip. Spending budget later than it
/// was counted never lets more through than the limit; budget not spent is simply lost.
#[derive(Default)]
struct Lease {
    /// Requests still allowed from the lease.
    left: u32,
    /// How many requests the last lease was for (it grows while leases run out, and follows
    /// what was actually spent when one expires).
    size: u32,
    /// What Redis reported after the lease was taken: left beyond the lease, until the bucket
    /// is full again, and when.
    remaining: u32,
    reset: Duration,
    taken: Option<Instant>,
}

impl Lease {
    /// Spends one request of the lease, if it has one and has not expired.
    fn spend(&mut self, now: Instant, spec: &LimitSpec) -> Option<Outcome> {
        let taken = self.taken?;
        let age = now.saturating_duration_since(taken);
        if self.left == 0 || age >= LEASE_TTL {
            return None;
        }
        self.left -= 1;
        // As a batch member reports it: the budget left after this request, counting the rest
        // of the lease, which nobody else can spend.
        Some(Outcome {
            allowed: true,
            limit: spec.burst,
            remaining: self.remaining.saturating_add(self.left),
            reset: self
                .reset
                .saturating_sub(spec.interval().saturating_mul(self.left))
                .saturating_sub(age),
        })
    }

    /// How many requests the next call should take ahead for this replica, beyond the
    /// `waiting` requests it decides.
    fn next_size(&self, waiting: usize, spec: &LimitSpec) -> u32 {
        let cap = spec.burst / LEASE_SHARE;
        if cap < 2 {
            return 0;
        }
        let want = if self.size == 0 {
            // Not leasing yet: a bucket with requests queueing behind a call is busy here.
            if waiting >= 2 {
                u32::try_from(waiting).unwrap_or(u32::MAX)
            } else {
                0
            }
        } else if self.left == 0 {
            // The last lease ran out before it expired: twice as much.
            self.size.saturating_mul(2)
        } else {
            // It expired: ask for what was spent of it.
            self.size - self.left
        };
        want.min(cap)
    }

    /// Whether nothing is left to spend.
    fn idle(&self, now: Instant) -> bool {
        self.left == 0
            || self
                .taken
                .is_none_or(|t| now.saturating_duration_since(t) >= LEASE_TTL)
    }
}

impl Bucket {
    /// Whether the entry holds nothing in force: no lease to spend, no refusal to repeat.
    fn idle(&self, now: Instant) -> bool {
        self.lease.idle(now) && self.refused_until.is_none_or(|until| now >= until)
    }
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
    /// A `rediss://` URL speaks TLS (rustls, with the process's crypto provider), verifying
    /// the server against `tls.ca` or the system roots, and showing `tls.cert` when given.
    ///
    /// # Errors
    /// An invalid URL, or a TLS file that cannot be read or used, at the key that named it.
    pub fn new(
        url: &str,
        prefix: &str,
        timeout: Duration,
        tls: &crate::config::RedisTls,
    ) -> Result<RedisStore, crate::config::ConfigError> {
        let client = client(url, tls)?;
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
            advance: redis::Script::new(ADVANCE),
            prefix: prefix.to_owned(),
            timeout,
            down: Arc::new(AtomicBool::new(false)),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Whether two stores talk to the same Redis with the same keys.
    pub fn same_target(&self, other: &RedisStore) -> bool {
        self.url == other.url && self.prefix == other.prefix && self.timeout == other.timeout
    }

    /// Decides one request.
    ///
    /// From this replica's lease for the bucket when it has one; refused at once while Redis'
    /// last refusal for the bucket is in force; otherwise by a script call. Requests for the
    /// same bucket that arrive while a call for it is in flight wait for the next call and are
    /// decided together, in arrival order: under load a round trip to Redis serves many
    /// requests, and each is counted exactly as if it had been sent alone.
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
        let now = Instant::now();
        let step = BUCKET.with_borrow_mut(|name| {
            self.bucket_name(name, route, key);
            let mut buckets = self.lock_buckets();
            if let Some(bucket) = buckets.get_mut(name.as_str()) {
                if let Some(outcome) = bucket.lease.spend(now, spec) {
                    return Step::Decided(outcome);
                }
                if let Some(until) = bucket.refused_until {
                    if now < until {
                        return Step::Decided(refused(spec, until - now));
                    }
                    bucket.refused_until = None;
                }
            }
            if self.down.load(Ordering::Relaxed) {
                return Step::Unavailable;
            }
            let (tx, rx) = oneshot::channel();
            if buckets.len() >= SWEEP_AT {
                sweep(&mut buckets, now);
            }
            let bucket = buckets.entry(name.clone()).or_default();
            match &mut bucket.queue {
                Some(queue) => {
                    queue.push(tx);
                    Step::Wait(rx)
                }
                None => {
                    bucket.queue = Some(Vec::new());
                    let ahead = bucket.lease.next_size(1, spec);
                    Step::Lead(name.clone(), tx, ahead, rx)
                }
            }
        });
        let rx = match step {
            Step::Decided(outcome) => return Ok(outcome),
            Step::Unavailable => return Err(StoreUnavailable),
            Step::Wait(rx) => rx,
            Step::Lead(name, first, ahead, rx) => {
                // The calls run in a task of their own, so a request that goes away while it
                // waits cannot strand the others queued behind it.
                tokio::spawn(self.clone().drive(name, *spec, vec![first], ahead));
                rx
            }
        };
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

    fn lock_buckets(&self) -> std::sync::MutexGuard<'_, HashMap<String, Bucket>> {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decides `batch` (taking `ahead` more for a lease), then whatever queued for `bucket`
    /// meanwhile and the lease cannot serve, until nothing is left.
    async fn drive(
        self: Arc<Self>,
        name: String,
        spec: LimitSpec,
        mut batch: Vec<Waiter>,
        mut ahead: u32,
    ) {
        loop {
            let n = batch.len();
            let result = self.call(&name, &spec, n + ahead as usize).await;
            for (i, waiter) in batch.drain(..).enumerate() {
                let outcome = result.as_ref().map(|d| d.outcome(i, &spec)).map_err(|e| *e);
                let _ = waiter.send(outcome);
            }
            let now = Instant::now();
            let mut buckets = self.lock_buckets();
            let Some(bucket) = buckets.get_mut(&name) else {
                return;
            };
            if let Ok(decided) = &result {
                if decided.granted < n {
                    bucket.refused_until = Some(now + decided.retry);
                }
                // With nothing taken ahead this call, the bucket starts over as not leasing.
                let leased = decided.granted.saturating_sub(n);
                bucket.lease = Lease {
                    left: u32::try_from(leased).unwrap_or(0),
                    size: ahead,
                    remaining: decided.remaining,
                    reset: decided.reset,
                    taken: (ahead > 0).then_some(now),
                };
            }
            // Requests that queued during the call are served from a fresh lease first.
            let mut queue = Vec::new();
            let mut queued = bucket.queue.take().unwrap_or_default().into_iter();
            while let Some(waiter) = queued.next() {
                match bucket.lease.spend(now, &spec) {
                    Some(outcome) => {
                        let _ = waiter.send(Ok(outcome));
                    }
                    None => {
                        queue.push(waiter);
                        queue.extend(queued);
                        break;
                    }
                }
            }
            if queue.is_empty() {
                if bucket.lease.size == 0 && bucket.refused_until.is_none() {
                    buckets.remove(&name);
                }
                return;
            }
            let take = queue.len().min(MAX_BATCH);
            batch.extend(queue.drain(..take));
            ahead = bucket.lease.next_size(batch.len(), &spec);
            bucket.queue = Some(queue);
        }
    }

    /// Records `value` under `{prefix}{kind}:{SHA-256(name), 16 bytes hex}` for `ttl` when it
    /// is greater than what is stored; `Ok(false)` when it is not (the value, or a later one,
    /// was recorded first, by this replica or another).
    ///
    /// # Errors
    /// [`StoreUnavailable`] when Redis is down or slower than `store_timeout`.
    pub async fn advance(
        &self,
        kind: &str,
        name: &str,
        value: u64,
        ttl: Duration,
    ) -> Result<bool, StoreUnavailable> {
        let key = self.key_for(kind, name)?;
        let mut conn = self.connection().await?;
        let call = async {
            let mut inv = self.advance.prepare_invoke();
            inv.key(&key)
                .arg(value)
                .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1));
            inv.invoke_async::<i64>(&mut conn).await
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(n)) => Ok(n == 1),
            Ok(Err(e)) => Err(self.failed(&e.to_string())),
            Err(_) => Err(self.failed("no answer within rate_limits.store_timeout")),
        }
    }

    /// Sets `{prefix}{kind}:{hash of name}` for `ttl` (a revoked token id).
    ///
    /// # Errors
    /// [`StoreUnavailable`] when Redis is down or slower than `store_timeout`.
    pub async fn mark(
        &self,
        kind: &str,
        name: &str,
        ttl: Duration,
    ) -> Result<(), StoreUnavailable> {
        let key = self.key_for(kind, name)?;
        let mut conn = self.connection().await?;
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut cmd = redis::cmd("SET");
        cmd.arg(&key).arg(1).arg("PX").arg(ms);
        let call = cmd.query_async::<()>(&mut conn);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.failed(&e.to_string())),
            Err(_) => Err(self.failed("no answer within rate_limits.store_timeout")),
        }
    }

    /// Whether [`RedisStore::mark`] set `kind`/`name` and it has not expired.
    ///
    /// # Errors
    /// [`StoreUnavailable`] when Redis is down or slower than `store_timeout`.
    pub async fn marked(&self, kind: &str, name: &str) -> Result<bool, StoreUnavailable> {
        let key = self.key_for(kind, name)?;
        let mut conn = self.connection().await?;
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(&key);
        let call = cmd.query_async::<i64>(&mut conn);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(n)) => Ok(n > 0),
            Ok(Err(e)) => Err(self.failed(&e.to_string())),
            Err(_) => Err(self.failed("no answer within rate_limits.store_timeout")),
        }
    }

    /// The key for `kind`/`name`, or at once an error while the store is known to be down.
    fn key_for(&self, kind: &str, name: &str) -> Result<String, StoreUnavailable> {
        if self.down.load(Ordering::Relaxed) {
            return Err(StoreUnavailable);
        }
        let mut key = String::new();
        self.bucket_name(&mut key, kind, name);
        Ok(key)
    }

    async fn connection(&self) -> Result<ConnectionManager, StoreUnavailable> {
        let conn = self
            .conn
            .get_or_try_init(|| async {
                self.client.get_connection_manager_lazy(self.config.clone())
            })
            .await;
        match conn {
            Ok(c) => Ok(c.clone()),
            Err(e) => Err(self.failed(&e.to_string())),
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
        let mut conn = self.connection().await?;
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

/// What [`RedisStore::check`] does with a request, decided under the table's lock.
enum Step {
    Decided(Outcome),
    Unavailable,
    Wait(oneshot::Receiver<Result<Outcome, StoreUnavailable>>),
    /// No call in flight for the bucket: this request starts one, taking `u32` ahead.
    Lead(
        String,
        Waiter,
        u32,
        oneshot::Receiver<Result<Outcome, StoreUnavailable>>,
    ),
}

/// Empties the bucket table of what it need not keep (see [`SWEEP_AT`]).
fn sweep(buckets: &mut HashMap<String, Bucket>, now: Instant) {
    buckets.retain(|_, b| b.queue.is_some() || !b.idle(now));
    if buckets.len() >= SWEEP_AT / 2 {
        buckets.retain(|_, b| b.queue.is_some());
    }
}

/// A refusal, the next request possible after `retry`.
fn refused(spec: &LimitSpec, retry: Duration) -> Outcome {
    Outcome {
        allowed: false,
        limit: spec.burst,
        remaining: 0,
        reset: retry,
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
            refused(spec, self.retry)
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
    use std::time::{Duration, Instant};

    use super::{LEASE_TTL, Lease};
    use crate::config::{LimitKey, LimitSpec};

    fn spec(rate: u32, burst: u32) -> LimitSpec {
        LimitSpec {
            rate,
            per: Duration::from_secs(1),
            burst,
            key: LimitKey::Identity,
        }
    }

    #[test]
    fn leases_are_spent_in_order_then_expire() {
        let spec = spec(10, 1000);
        let now = Instant::now();
        let mut lease = Lease {
            left: 2,
            size: 2,
            remaining: 7,
            reset: Duration::from_secs(100),
            taken: Some(now),
        };
        let first = lease.spend(now, &spec).unwrap();
        assert!(first.allowed);
        assert_eq!(
            first.remaining, 8,
            "the rest of the lease is the caller's too"
        );
        assert_eq!(first.reset, Duration::from_millis(99_900));
        assert_eq!(lease.spend(now, &spec).unwrap().remaining, 7);
        assert!(lease.spend(now, &spec).is_none(), "spent");

        lease.left = 1;
        assert!(lease.spend(now + LEASE_TTL, &spec).is_none(), "expired");
    }

    #[test]
    fn lease_sizes_follow_demand_within_a_share_of_the_burst() {
        let mut lease = Lease::default();
        let big = spec(1000, 640);
        assert_eq!(
            lease.next_size(1, &big),
            0,
            "one request at a time: no lease"
        );
        assert_eq!(
            lease.next_size(5, &big),
            5,
            "requests queueing: lease what queued"
        );
        lease.size = 16;
        assert_eq!(
            lease.next_size(1, &big),
            20,
            "ran out: doubles, up to burst/32"
        );
        lease.size = 8;
        lease.left = 3;
        assert_eq!(lease.next_size(1, &big), 5, "expired: what was spent");
        assert_eq!(
            Lease::default().next_size(100, &spec(1000, 63)),
            0,
            "a burst under 64 is never leased"
        );
    }
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
