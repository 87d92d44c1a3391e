//! The cost and accuracy of a rate-limit decision, in process and through Redis.
//!
//!     cargo bench --bench ratelimit
//!
//! Cost: criterion, one decision per iteration (the Redis part needs `redis-server` on PATH;
//! without it that part says so and is left out). Accuracy: N seconds of steady overload
//! against a 100/s limit with a burst of 50; the allowed count is compared with the budget,
//! burst + rate x seconds. Then two Redis stores (two replicas) with 16 concurrent callers
//! each against 1000/s with a burst of 2000, where replicas take leases (budget ahead of their
//! requests): the allowed count must stay within the budget, and the script calls per
//! decision show what leases and batching save.

use std::hint::black_box;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::Criterion;
use portcullis::config::{LimitKey, LimitSpec};
use portcullis::ratelimit::{LocalLimiter, RedisStore};

const ACCURACY_SECONDS: u64 = 5;

fn spec(rate: u32, burst: u32) -> LimitSpec {
    LimitSpec {
        key: LimitKey::Identity,
        rate,
        per: Duration::from_secs(1),
        burst,
    }
}

struct Redis(std::process::Child, u16);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> Option<Redis> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let r = Redis(child, port);
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(r);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // --- cost ---
    let never = spec(1_000_000, 1_000_000);
    let local = LocalLimiter::new(never, 100_000);
    let bob: std::sync::Arc<str> = std::sync::Arc::from("id:CN=reader-bob");
    c.bench_function("ratelimit/local_decision", |b| {
        b.iter(|| local.check(black_box(&bob)))
    });
    let many = LocalLimiter::new(never, 100_000);
    let keys: Vec<std::sync::Arc<str>> = (0..10_000)
        .map(|i| std::sync::Arc::from(format!("id:caller-{i}")))
        .collect();
    let mut i = 0;
    c.bench_function("ratelimit/local_decision_10k_keys", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            many.check(black_box(&keys[i]))
        })
    });

    let redis = start_redis();
    match &redis {
        Some(r) => {
            let url = format!("redis://127.0.0.1:{}/0", r.1);
            let store = std::sync::Arc::new(
                RedisStore::new(
                    &url,
                    "bench:",
                    Duration::from_millis(500),
                    &Default::default(),
                )
                .unwrap(),
            );
            c.bench_function("ratelimit/redis_decision", |b| {
                b.iter(|| rt.block_on(store.check("api", &never, black_box("id:CN=reader-bob"))))
            });
        }
        None => println!("ratelimit/redis_decision: left out (no redis-server on PATH)"),
    }
    c.final_summary();

    // --- accuracy under steady overload ---
    let limit = spec(100, 50);
    let budget = f64::from(limit.burst) + f64::from(limit.rate) * ACCURACY_SECONDS as f64;
    let l = LocalLimiter::new(limit, 1000);
    let (mut offered, mut allowed) = (0u64, 0u64);
    let overload: std::sync::Arc<str> = std::sync::Arc::from("id:overload");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(ACCURACY_SECONDS) {
        offered += 1;
        if l.check(&overload).allowed {
            allowed += 1;
        }
    }
    println!(
        "accuracy/local: {ACCURACY_SECONDS}s at {offered} offered requests, allowed {allowed} of a {budget} budget ({:.2}%)",
        allowed as f64 * 100.0 / budget
    );
    if let Some(r) = &redis {
        let url = format!("redis://127.0.0.1:{}/0", r.1);
        let store = std::sync::Arc::new(
            RedisStore::new(
                &url,
                "accuracy:",
                Duration::from_millis(500),
                &Default::default(),
            )
            .unwrap(),
        );
        let (mut offered, mut allowed, mut errors) = (0u64, 0u64, 0u64);
        let start = Instant::now();
        rt.block_on(async {
            while start.elapsed() < Duration::from_secs(ACCURACY_SECONDS) {
                offered += 1;
                match store.check("api", &limit, "id:overload").await {
                    Ok(o) if o.allowed => allowed += 1,
                    Ok(_) => {}
                    Err(_) => errors += 1,
                }
            }
        });
        println!(
            "accuracy/redis: {ACCURACY_SECONDS}s at {offered} offered requests, allowed {allowed} of a {budget} budget ({:.2}%), {errors} store errors",
            allowed as f64 * 100.0 / budget
        );

        let busy = spec(1000, 2000);
        let budget = f64::from(busy.burst) + f64::from(busy.rate) * ACCURACY_SECONDS as f64;
        let replicas: Vec<_> = (0..2)
            .map(|_| {
                std::sync::Arc::new(
                    RedisStore::new(
                        &url,
                        "leased:",
                        Duration::from_millis(500),
                        &Default::default(),
                    )
                    .unwrap(),
                )
            })
            .collect();
        let calls_before = script_calls(r.1);
        let start = Instant::now();
        let (offered, allowed, errors) = rt.block_on(async {
            let mut callers = tokio::task::JoinSet::new();
            for i in 0..32 {
                let store = replicas[i % 2].clone();
                callers.spawn(async move {
                    let (mut offered, mut allowed, mut errors) = (0u64, 0u64, 0u64);
                    while start.elapsed() < Duration::from_secs(ACCURACY_SECONDS) {
                        offered += 1;
                        match store.check("api", &busy, "id:busy").await {
                            Ok(o) if o.allowed => allowed += 1,
                            Ok(_) => {}
                            Err(_) => errors += 1,
                        }
                        // A caller that paces itself a little, as real clients do.
                        tokio::task::yield_now().await;
                    }
                    (offered, allowed, errors)
                });
            }
            let mut sum = (0u64, 0u64, 0u64);
            for (o, a, e) in callers.join_all().await {
                sum = (sum.0 + o, sum.1 + a, sum.2 + e);
            }
            sum
        });
        let calls = script_calls(r.1) - calls_before;
        println!(
            "accuracy/redis-2-replicas-leased: {ACCURACY_SECONDS}s at {offered} offered requests, allowed {allowed} of a {budget} budget ({:.2}%), {calls} script calls ({:.3} per decision), {errors} store errors",
            allowed as f64 * 100.0 / budget,
            calls as f64 / offered as f64
        );
    }
}

/// EVALSHA calls Redis has served so far.
fn script_calls(port: u16) -> u64 {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "info", "commandstats"])
        .output();
    out.ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
                .and_then(|rest| rest.split(',').next())
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}
