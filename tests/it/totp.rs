//! One-time codes (RFC 6238) as the `totp` factor: right, wrong, replayed and stale codes,
//! the failure budget, header stripping, and replays refused across replicas through Redis.

use crate::support::client::basic;
use crate::support::gateway::yaml_with;
use crate::support::otp::{self, SECRET};
use crate::support::redis::RedisServer;
use crate::support::{Client, FakeUpstream, TestGateway, TestPki};

async fn send(c: &Client, path: &str, headers: &[(&str, &str)]) -> crate::support::client::Reply {
    crate::support::client::send_with(c, "GET", path, headers).await
}

fn policy(hash: &str, extra: &str) -> String {
    format!(
        r#"
rate_limits:
  auth_failures: {{ key: ip, rate: 1/min, burst: 6 }}
{extra}
principals:
  - name: alice
    basic: {{ user: alice, argon2: "{hash}" }}
    totp: {{ secret: "{SECRET}" }}
    roles: [reader]
  - {{ name: bob, basic: {{ user: bob, argon2: "{hash}" }}, roles: [reader] }}
routes:
  - name: secure
    match: {{ prefix: /secure/ }}
    upstream: app
    allow: {{ roles: [reader], factors: [basic, totp] }}
  - {{ name: docs, match: {{ prefix: / }}, upstream: app, allow: {{ roles: [reader] }} }}
"#
    )
}

#[tokio::test]
async fn a_one_time_code_is_a_second_factor_that_works_once() {
    assert_eq!(
        otp::code_with(SECRET, 59, 30, 8),
        "94287082",
        "the test's own generator follows RFC 6238"
    );
    let pki = TestPki::new();
    let hash = portcullis::auth::hash_password("correct horse").unwrap();
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(
        &pki,
        &yaml_with(&pki, up.addr, "client_auth: optional", &policy(&hash, "")),
    )
    .await;
    let c = gw.client(None);
    let alice = basic("alice", "correct horse");
    let now = otp::now();

    // The password alone does not meet factors: [basic, totp].
    let r = send(&c, "/secure/x", &[("authorization", &alice)]).await;
    assert_eq!(r.status, 403);

    // With the current code it does; the upstream sees both factors and never the code.
    let code = otp::code(SECRET, now);
    let r = send(
        &c,
        "/secure/x",
        &[("authorization", &alice), ("x-otp", &code)],
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let seen = up.last();
    assert_eq!(seen.headers["x-client-auth"], "basic,totp");
    assert_eq!(seen.headers["x-client-id"], "alice");
    assert!(
        !seen.headers.contains_key("x-otp"),
        "the code is not forwarded"
    );

    // The same code again is a replay: 401, like any refused credential.
    let before = up.requests().len();
    let r = send(
        &c,
        "/secure/x",
        &[("authorization", &alice), ("x-otp", &code)],
    )
    .await;
    assert_eq!(r.status, 401, "a replayed code");
    assert_eq!(r.json()["error"], "authentication required");

    // The next step's code is within the skew and newer: accepted. After it, the current
    // step's code is older than the last one used and refused too.
    let next = otp::code(SECRET, now + 30);
    let r = send(
        &c,
        "/secure/x",
        &[("authorization", &alice), ("x-otp", &next)],
    )
    .await;
    assert_eq!(r.status, 200, "the next step's code (skew 1)");
    let before_next = up.requests().len();
    let prev = otp::code(SECRET, now - 30);
    for stale in [&code, &prev] {
        let r = send(
            &c,
            "/secure/x",
            &[("authorization", &alice), ("x-otp", stale)],
        )
        .await;
        assert_eq!(r.status, 401, "a code older than the last used one");
    }
    assert_eq!(up.requests().len(), before_next);
    assert_eq!(before + 1, before_next);

    // A code two steps away is outside the skew; a code with nobody to bind it to (bob has
    // no secret, and a code alone identifies nobody) is refused rather than ignored.
    let far = otp::code(SECRET, now + 90);
    let bob = basic("bob", "correct horse");
    for (who, headers) in [
        (
            "outside the skew",
            vec![("authorization", alice.as_str()), ("x-otp", far.as_str())],
        ),
        (
            "bob has no secret",
            vec![("authorization", bob.as_str()), ("x-otp", "123456")],
        ),
        ("a code alone", vec![("x-otp", "123456")]),
    ] {
        let r = send(&c, "/docs", &headers).await;
        assert_eq!(r.status, 401, "{who}");
    }
    // Each refusal spent the failure budget (burst 6: replay, 2 stale, 3 above): now even
    // a right password with a fresh code is answered 429 before anything is checked.
    let r = send(
        &c,
        "/secure/x",
        &[
            ("authorization", &alice),
            ("x-otp", &otp::code(SECRET, now + 60)),
        ],
    )
    .await;
    assert_eq!(r.status, 429);
    let m = crate::support::admin_get(gw.admin.unwrap(), "/metrics").await;
    assert!(
        m.contains("portcullis_authz_denied_total{route=\"secure\",reason=\"bad_credential\"} 3"),
        "{m}"
    );
}

#[tokio::test]
async fn a_code_one_replica_accepted_is_refused_by_the_other_through_redis() {
    let redis = RedisServer::start();
    let pki = TestPki::new();
    let hash = portcullis::auth::hash_password("correct horse").unwrap();
    // The second gateway reads the same secret from a file, as a Kubernetes Secret mounts it.
    std::fs::write(pki.file("alice.totp"), format!("{SECRET}\n")).unwrap();
    let store = format!("  store: {}\n", redis.url());
    let a_policy = policy(&hash, "").replace("rate_limits:\n", &format!("rate_limits:\n{store}"));
    let b_policy = a_policy.replace(
        &format!("secret: \"{SECRET}\""),
        &format!("secret_file: {}", pki.file("alice.totp").display()),
    );
    assert_ne!(a_policy, b_policy);
    let up = FakeUpstream::start().await;
    let a = TestGateway::start(
        &pki,
        &yaml_with(&pki, up.addr, "client_auth: optional", &a_policy),
    )
    .await;
    let b = TestGateway::start(
        &pki,
        &yaml_with(&pki, up.addr, "client_auth: optional", &b_policy),
    )
    .await;
    let alice = basic("alice", "correct horse");
    let code = otp::code(SECRET, otp::now());
    let headers = [("authorization", alice.as_str()), ("x-otp", code.as_str())];
    let r = send(&a.client(None), "/secure/x", &headers).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let r = send(&b.client(None), "/secure/x", &headers).await;
    assert_eq!(r.status, 401, "the other replica knows the code was used");
    // The store holds a hashed key, never the principal's name or the code.
    let keys = redis.keys();
    assert!(
        keys.iter().any(|k| k.starts_with("portcullis:rl:totp:")),
        "{keys:?}"
    );
    assert!(!keys.iter().any(|k| k.contains("alice")), "{keys:?}");
}

/// A stolen password cannot walk the code space from many addresses: past ten wrong codes in
/// ten minutes, the principal's codes are refused unchecked, whatever the client's own budget.
#[tokio::test]
async fn ten_wrong_codes_lock_the_principals_codes_for_the_window() {
    let pki = TestPki::new();
    let hash = portcullis::auth::hash_password("correct horse").unwrap();
    let up = FakeUpstream::start().await;
    // A client budget far above ten, so the per-principal limit is what stops the guessing.
    let text = policy(&hash, "").replace("burst: 6", "burst: 100");
    let gw = TestGateway::start(
        &pki,
        &yaml_with(&pki, up.addr, "client_auth: optional", &text),
    )
    .await;
    let c = gw.client(None);
    let alice = basic("alice", "correct horse");
    let now = otp::now();
    let right = otp::code(SECRET, now);
    let window: Vec<String> = (0..3)
        .map(|i| otp::code(SECRET, now - 30 + 30 * i))
        .collect();
    let mut wrong = (0..1_000_000u32)
        .map(|n| format!("{n:06}"))
        .filter(|c| !window.contains(c));
    for _ in 0..10 {
        let code = wrong.next().unwrap();
        let r = send(
            &c,
            "/secure/x",
            &[("authorization", &alice), ("x-otp", &code)],
        )
        .await;
        assert_eq!(r.status, 401);
    }
    let r = send(
        &c,
        "/secure/x",
        &[("authorization", &alice), ("x-otp", &right)],
    )
    .await;
    assert_eq!(
        r.status, 401,
        "the right code is refused unchecked once the principal is locked"
    );
    // The password alone still works where no code is needed.
    let r = send(&c, "/docs", &[("authorization", &alice)]).await;
    assert_eq!(r.status, 200);
}
