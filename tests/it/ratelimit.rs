//! Rate limits in one process and across replicas through a real redis-server.

use std::time::{Duration, Instant};

use crate::support::gateway::yaml;
use crate::support::redis::RedisServer;
use crate::support::{FakeUpstream, TestGateway, TestPki};
use portcullis::pki::Ca;

const PRINCIPALS: &str = r#"
principals:
  - { name: ops, cert: { cn: "ops-*" }, roles: [admin, reader] }
  - { name: readers, cert: { cn: "reader-*" }, roles: [reader] }
"#;

fn routes(limit: &str) -> String {
    format!(
        "{PRINCIPALS}routes:\n  - {{ name: admin, match: {{ prefix: /admin/ }}, upstream: app, allow: {{ roles: [admin] }}, rate_limit: {limit} }}\n  - {{ name: api, match: {{ prefix: / }}, upstream: app, allow: {{ roles: [reader] }}, rate_limit: {limit} }}\n"
    )
}

/// The test routes with `limit`, counted in `redis`.
fn routes_in_redis(limit: &str, redis: &RedisServer) -> String {
    format!("{}rate_limits:\n  store: {}\n", routes(limit), redis.url())
}

#[tokio::test]
async fn local_limits_answer_429_with_headers_and_are_per_identity() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let alice = pki.client("ops-alice");
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(
        &pki,
        &yaml(
            &pki,
            up.addr,
            &routes("{ key: identity, rate: 1/min, burst: 3 }"),
        ),
    )
    .await;
    let c = gw.client(Some(&bob));
    for remaining in ["2", "1", "0"] {
        let r = c.get("/x").await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["ratelimit-limit"], "3");
        assert_eq!(r.headers["ratelimit-remaining"], remaining);
        let reset: u64 = r.headers["ratelimit-reset"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            (1..=180).contains(&reset),
            "three requests refill in 3 minutes: {reset}"
        );
    }
    let n = up.requests().len();
    let limited = c.get("/x").await.unwrap();
    assert_eq!(limited.status, 429);
    assert_eq!(limited.json()["error"], "rate limited");
    assert_eq!(limited.headers["ratelimit-remaining"], "0");
    let retry: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=60).contains(&retry),
        "one request refills in a minute: {retry}"
    );
    assert_eq!(
        up.requests().len(),
        n,
        "a limited request never reaches the upstream"
    );
    assert_eq!(
        gw.client(Some(&alice)).get("/x").await.unwrap().status,
        200,
        "budgets are per identity"
    );
}

#[tokio::test]
async fn denied_callers_neither_spend_quota_nor_create_keys() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let alice = pki.client("ops-alice");
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(
        &pki,
        &yaml(
            &pki,
            up.addr,
            &routes("{ key: route, rate: 1/min, burst: 2 }"),
        ),
    )
    .await;
    for _ in 0..5 {
        assert_eq!(
            gw.client(Some(&bob)).get("/admin/x").await.unwrap().status,
            403
        );
    }
    assert_eq!(
        gw.shared.state.load().ratelimits.local_keys("admin"),
        0,
        "403s created no key"
    );
    let ops = gw.client(Some(&alice));
    assert_eq!(ops.get("/admin/x").await.unwrap().status, 200);
    assert_eq!(ops.get("/admin/x").await.unwrap().status, 200);
    assert_eq!(
        ops.get("/admin/x").await.unwrap().status,
        429,
        "key: route is one budget for everyone"
    );
}

#[tokio::test]
async fn limiter_state_survives_a_reload_for_unchanged_routes() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let limited = routes("{ key: identity, rate: 1/min, burst: 2 }");
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, &limited)).await;
    let c = gw.client(Some(&bob));
    assert_eq!(c.get("/x").await.unwrap().status, 200);
    assert_eq!(c.get("/x").await.unwrap().status, 200);
    assert_eq!(c.get("/x").await.unwrap().status, 429);

    // Reload with a change elsewhere (the admin route): the api route keeps its state.
    let path = pki.file("gateway.yaml");
    let other = limited.replacen("rate: 1/min, burst: 2", "rate: 5/min, burst: 9", 1);
    std::fs::write(&path, yaml(&pki, up.addr, &other)).unwrap();
    portcullis::reload::reload(&gw.shared, &path).unwrap();
    assert_eq!(
        c.get("/x").await.unwrap().status,
        429,
        "unchanged limit: the spent budget carries over"
    );

    // A changed limit starts full.
    let changed = limited.replace("rate: 1/min, burst: 2", "rate: 1/min, burst: 4");
    std::fs::write(&path, yaml(&pki, up.addr, &changed)).unwrap();
    portcullis::reload::reload(&gw.shared, &path).unwrap();
    let r = c.get("/x").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["ratelimit-limit"], "4");
}

/// Sends `n` requests alternating between gateways as fast as one client can; returns how many
/// were allowed and how long it took.
async fn blast(
    gws: &[&TestGateway],
    cert: &crate::support::pki::ClientCert,
    n: usize,
) -> (usize, Duration) {
    let start = Instant::now();
    let mut allowed = 0;
    for i in 0..n {
        let r = gws[i % gws.len()]
            .client(Some(cert))
            .get("/x")
            .await
            .unwrap();
        match r.status.as_u16() {
            200 => allowed += 1,
            429 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    (allowed, start.elapsed())
}

#[tokio::test]
async fn http2_responses_each_carry_their_own_request_id_and_remaining_count() {
    // Both values change with every response; over HTTP/2 they are sent as literals that never
    // enter the connection's header table. Each response on one connection must still decode
    // to its own values.
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(
        &pki,
        &yaml(
            &pki,
            up.addr,
            &routes("{ key: identity, rate: 1/hour, burst: 10 }"),
        ),
    )
    .await;
    let (mut sender, _conn) = crate::support::client::Client::h2(gw.addr, &pki.ca_pem, Some(&bob))
        .h2_session()
        .await;
    let mut ids = Vec::new();
    for expected in (0..10).rev() {
        let r = sender
            .send_request(crate::support::client::request("GET", "/x"))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["ratelimit-remaining"],
            expected.to_string().as_str()
        );
        assert_eq!(r.headers()["ratelimit-limit"], "10");
        let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(up.last().headers["x-request-id"], id.as_str());
        ids.push(id);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 10, "one request id per response");
}

#[tokio::test]
async fn two_replicas_sharing_redis_enforce_one_limit_not_two() {
    let redis = RedisServer::start();
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let limit = "{ key: identity, rate: 2/s, burst: 5 }";
    let shared_cfg = routes_in_redis(limit, &redis);
    let a = TestGateway::start(&pki, &yaml(&pki, up.addr, &shared_cfg)).await;
    let b = TestGateway::start(&pki, &yaml(&pki, up.addr, &shared_cfg)).await;

    let (allowed, elapsed) = blast(&[&a, &b], &bob, 40).await;
    // One budget: the burst plus what refills while the blast runs (2 per second).
    let ceiling = 5 + (elapsed.as_secs_f64() * 2.0).ceil() as usize + 1;
    assert!(
        allowed >= 5 && allowed <= ceiling,
        "allowed {allowed} of 40 in {elapsed:?}; one shared limit allows at most {ceiling}"
    );

    // The same two replicas with local stores each allow a full budget: twice as much.
    let local_a = TestGateway::start(&pki, &yaml(&pki, up.addr, &routes(limit))).await;
    let local_b = TestGateway::start(&pki, &yaml(&pki, up.addr, &routes(limit))).await;
    let (local_allowed, _) = blast(&[&local_a, &local_b], &bob, 40).await;
    assert!(
        local_allowed >= 10,
        "per-replica limits multiply: {local_allowed}"
    );
}

#[tokio::test]
async fn concurrent_requests_through_redis_are_each_counted_once() {
    // 60 requests at once on one HTTP/2 connection (one identity, one bucket): they queue
    // behind each other's Redis calls and are decided in batches. The budget of 10 (no
    // refill during the test) must admit exactly 10, each told a different remaining count,
    // as if every request had been decided alone.
    let redis = RedisServer::start();
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let cfg = routes_in_redis("{ key: identity, rate: 1/hour, burst: 10 }", &redis);
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, &cfg)).await;
    let replies = at_once(&gw, &pki, &bob, 60).await;
    let mut remaining: Vec<u32> = Vec::new();
    let mut denied = 0;
    for r in &replies {
        match r.status().as_u16() {
            200 => remaining.push(
                r.headers()["ratelimit-remaining"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap(),
            ),
            429 => {
                denied += 1;
                assert!(r.headers().contains_key("retry-after"));
            }
            other => panic!("unexpected status {other}"),
        }
    }
    remaining.sort_unstable();
    assert_eq!(remaining, (0..10).collect::<Vec<u32>>(), "{denied} denied");
    assert_eq!(denied, 50);
    let calls = redis.calls("evalsha");
    assert!(
        (1..60).contains(&calls),
        "{calls} script calls for 60 concurrent requests: they were not batched"
    );
}

/// `n` requests sent at once on one HTTP/2 connection to `gw`, their responses.
async fn at_once(
    gw: &TestGateway,
    pki: &TestPki,
    cert: &crate::support::pki::ClientCert,
    n: usize,
) -> Vec<http::Response<hyper::body::Incoming>> {
    let (sender, _conn) = crate::support::client::Client::h2(gw.addr, &pki.ca_pem, Some(cert))
        .h2_session()
        .await;
    let mut all = tokio::task::JoinSet::new();
    for _ in 0..n {
        let mut s = sender.clone();
        all.spawn(async move {
            s.send_request(crate::support::client::request("GET", "/x"))
                .await
                .unwrap()
        });
    }
    all.join_all().await
}

/// `n` requests at once on one HTTP/2 connection to `gw`: (allowed, refused).
async fn flood(
    gw: &TestGateway,
    pki: &TestPki,
    cert: &crate::support::pki::ClientCert,
    n: usize,
) -> (usize, usize) {
    let statuses: Vec<u16> = at_once(gw, pki, cert, n)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    for s in &statuses {
        assert!(*s == 200 || *s == 429, "unexpected status {s}");
    }
    let allowed = statuses.iter().filter(|s| **s == 200).count();
    (allowed, statuses.len() - allowed)
}

#[tokio::test]
async fn leases_never_let_replicas_exceed_the_shared_limit() {
    // A burst of 1024 lets each replica take up to 1024/32 = 32 requests ahead of time (a
    // lease): budget counted in Redis first and spent locally. Two replicas sent waves of 16
    // concurrent requests each, 1,280 in all, with no refill (1/hour), must admit no more than
    // 1024 between them, and no less than 1024 minus what each may hold unspent (32 each).
    let redis = RedisServer::start();
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let cfg = routes_in_redis("{ key: identity, rate: 1/hour, burst: 1024 }", &redis);
    let a = TestGateway::start(&pki, &yaml(&pki, up.addr, &cfg)).await;
    let b = TestGateway::start(&pki, &yaml(&pki, up.addr, &cfg)).await;

    let waves = |gw| {
        let (pki, bob) = (&pki, &bob);
        async move {
            let mut allowed = 0;
            for _ in 0..40 {
                allowed += flood(gw, pki, bob, 16).await.0;
            }
            allowed
        }
    };
    let (a_allowed, b_allowed) = tokio::join!(waves(&a), waves(&b));
    let allowed = a_allowed + b_allowed;
    assert!(
        (960..=1024).contains(&allowed),
        "{allowed} admitted ({a_allowed} + {b_allowed}) against one budget of 1024"
    );
    assert_eq!(
        up.requests().len(),
        allowed,
        "only admitted requests reach the upstream"
    );
    // Batching alone takes two calls per wave (the first request, then the 15 that queued
    // behind it): 128 calls to spend the budget. Leases take far fewer.
    let calls = redis.calls("evalsha");
    assert!(calls < 64, "{calls} script calls: leases were not taken");

    // Spent: the replicas now refuse from what Redis told them, without asking again.
    let (again, refused) = flood(&a, &pki, &bob, 16).await;
    assert_eq!((again, refused), (0, 16));
    let r = a.client(Some(&bob)).get("/x").await.unwrap();
    assert_eq!(r.status, 429);
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(
        redis.calls("evalsha"),
        calls,
        "a refusal in force is repeated locally"
    );
}

#[tokio::test]
async fn redis_outages_follow_on_store_error_and_recover() {
    let mut redis = RedisServer::start();
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let limit = "{ key: identity, rate: 1/min, burst: 2 }";
    let cfg = |mode: &str| {
        format!(
            "{}rate_limits:\n  store: {}\n  on_store_error: {mode}\n  store_timeout: 200ms\n",
            routes(limit),
            redis.url()
        )
    };
    let allow = TestGateway::start(&pki, &yaml(&pki, up.addr, &cfg("allow"))).await;
    let deny = TestGateway::start(&pki, &yaml(&pki, up.addr, &cfg("deny"))).await;

    let r = allow.client(Some(&bob)).get("/x").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["ratelimit-remaining"], "1", "decided in Redis");

    redis.stop();
    for _ in 0..3 {
        let r = allow.client(Some(&bob)).get("/x").await.unwrap();
        assert_eq!(r.status, 200, "on_store_error: allow lets requests through");
        assert!(!r.headers.contains_key("ratelimit-remaining"));
        let d = deny.client(Some(&bob)).get("/x").await.unwrap();
        assert_eq!(d.status, 503, "on_store_error: deny");
        assert_eq!(d.json()["error"], "rate limit store unavailable");
    }
    assert!(
        allow
            .shared
            .metrics
            .encode()
            .contains("portcullis_ratelimit_store_errors_total 3")
    );

    redis.restart();
    // The connection manager reconnects by itself; the fresh Redis starts with full budgets.
    let mut statuses = Vec::new();
    for _ in 0..50 {
        let s = deny
            .client(Some(&bob))
            .get("/x")
            .await
            .unwrap()
            .status
            .as_u16();
        statuses.push(s);
        if s == 429 {
            break;
        }
        if s == 503 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(
        statuses.last(),
        Some(&429),
        "limits hold again after recovery: {statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        2,
        "the burst, then 429: {statuses:?}"
    );
}

#[tokio::test]
async fn replicas_share_one_limit_through_redis_over_tls_with_client_certificates() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    // The gateways' certificate for Redis, from the same CA Redis trusts.
    let gw = pki.client("gateway-redis");
    std::fs::write(pki.file("redis-client.crt"), &gw.cert_pem).unwrap();
    std::fs::write(pki.file("redis-client.key"), &gw.key_pem).unwrap();
    let redis = RedisServer::start_tls(pki.path(), true);
    assert!(redis.url().starts_with("rediss://"));
    let up = FakeUpstream::start().await;
    let limit = "{ key: identity, rate: 1/min, burst: 5 }";
    let over_tls = |tls: &str| {
        format!(
            "{}rate_limits:\n  store: {}\n  on_store_error: deny\n  redis_tls: {tls}\n",
            routes(limit),
            redis.url()
        )
    };
    let good = over_tls("{ ca: ca.crt, cert: redis-client.crt, key: redis-client.key }");
    let a = TestGateway::start(&pki, &yaml(&pki, up.addr, &good)).await;
    let b = TestGateway::start(&pki, &yaml(&pki, up.addr, &good)).await;
    let (allowed, _) = blast(&[&a, &b], &bob, 20).await;
    assert_eq!(
        allowed, 5,
        "one budget of 5 across both replicas, kept in Redis over TLS"
    );

    // Without the client certificate Redis hangs up: the store is unavailable (deny: 503).
    let anonymous =
        TestGateway::start(&pki, &yaml(&pki, up.addr, &over_tls("{ ca: ca.crt }"))).await;
    let r = anonymous.client(Some(&bob)).get("/x").await.unwrap();
    assert_eq!(r.status, 503, "no client certificate, no decision");
    // A server certificate the configured CA did not sign is refused as well.
    let other = Ca::generate("another CA").unwrap();
    std::fs::write(pki.file("other-ca.crt"), other.cert_pem()).unwrap();
    let wrong_ca = over_tls("{ ca: other-ca.crt, cert: redis-client.crt, key: redis-client.key }");
    let c = TestGateway::start(&pki, &yaml(&pki, up.addr, &wrong_ca)).await;
    assert_eq!(
        c.client(Some(&bob)).get("/x").await.unwrap().status,
        503,
        "an unverified Redis is not used"
    );
    // A TLS file that cannot be read is a configuration error at its key, not a dead store.
    let missing = pki.file("missing.yaml");
    std::fs::write(&missing, yaml(&pki, up.addr, &over_tls("{ ca: nope.crt }"))).unwrap();
    let err = portcullis::gateway::State::build(portcullis::config::load(&missing).unwrap())
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("rate_limits.redis_tls.ca: ") && err.contains("nope.crt: No such file"),
        "{err}"
    );
}

#[test]
fn redis_tls_settings_are_checked_where_they_are_written() {
    let check = |rest: &str| {
        let text = format!(
            "tls:\n  cert: s.crt\n  key: s.key\n  client_ca: ca.crt\nupstreams:\n  app: {{ url: \"http://127.0.0.1:9\" }}\nroutes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: app, allow: anyone }}\nrate_limits:\n{rest}"
        );
        portcullis::config::from_str(&text, std::path::Path::new("g.yaml"))
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    assert!(check("  store: rediss://127.0.0.1:6380/0\n  redis_tls: { ca: ca.crt }\n").is_ok());
    let e = check("  store: redis://127.0.0.1:6379/0\n  redis_tls: { ca: ca.crt }\n").unwrap_err();
    assert!(
        e.contains("rate_limits.redis_tls: only for a rediss:// store"),
        "{e}"
    );
    let e =
        check("  store: rediss://127.0.0.1:6380/0\n  redis_tls: { cert: c.crt }\n").unwrap_err();
    assert!(e.contains("cert and key go together"), "{e}");
}

/// Chaos: Redis is killed while four clients keep sending, then comes back. Every request gets
/// its documented answer (200, or 503 under `on_store_error: deny`) within a bounded time,
/// nothing hangs, and once Redis is back requests are decided in it again.
#[tokio::test]
async fn redis_killed_under_load_gives_every_request_its_documented_answer() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

    let mut redis = RedisServer::start();
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let cfg = format!(
        "{}rate_limits:\n  store: {}\n  on_store_error: deny\n  store_timeout: 200ms\n",
        routes("{ key: identity, rate: 100000/s, burst: 100000 }"),
        redis.url()
    );
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, &cfg)).await;
    // 0: Redis up, 1: killed, 2: back.
    let phase = Arc::new(AtomicU8::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let c = gw.client(Some(&bob));
        let (phase, done) = (phase.clone(), done.clone());
        load.spawn(async move {
            // (phase when sent, status, error, decided in Redis, how long it took)
            let mut seen = Vec::new();
            for _ in 0..5_000 {
                if done.load(Ordering::SeqCst) {
                    break;
                }
                let at = phase.load(Ordering::SeqCst);
                let started = Instant::now();
                let r = c.get("/x").await.expect("every request gets an answer");
                let error = (r.status != 200).then(|| r.json()["error"].to_string());
                let decided = r.headers.contains_key("ratelimit-remaining");
                seen.push((at, r.status.as_u16(), error, decided, started.elapsed()));
            }
            seen
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.stop();
    phase.store(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.restart();
    phase.store(2, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    done.store(true, Ordering::SeqCst);
    let seen: Vec<_> = load.join_all().await.into_iter().flatten().collect();

    for (at, status, error, _, took) in &seen {
        assert!(
            *status == 200
                || (*status == 503 && error.as_deref() == Some("\"rate limit store unavailable\"")),
            "phase {at}: {status} {error:?}"
        );
        assert!(
            *took < Duration::from_secs(2),
            "phase {at}: a request took {took:?}"
        );
    }
    type Seen = (u8, u16, Option<String>, bool, Duration);
    let count = |f: &dyn Fn(&Seen) -> bool| seen.iter().filter(|s| f(s)).count();
    assert!(
        count(&|s| s.0 == 0 && s.1 == 200 && s.3) > 0,
        "decided in Redis while it ran"
    );
    assert!(
        count(&|s| s.0 == 1 && s.1 == 503) > 0,
        "503 while Redis was down"
    );
    assert!(
        count(&|s| s.0 == 2 && s.1 == 200 && s.3) > 0,
        "decided in Redis again once it was back: {} requests after the restart",
        count(&|s| s.0 == 2)
    );
}
