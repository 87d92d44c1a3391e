//! Credentials beyond the certificate: API keys, JWT, Basic, factors, conditions and the
//! brute-force guard, over real TLS to a real gateway.

use std::time::Duration;

use base64::Engine as _;
use serde_json::json;

use crate::support::client::basic;
use crate::support::gateway::{yaml, yaml_with};
use crate::support::jwt::{JwksServer, Signer, hs256, jwks, now};
use crate::support::{Client, FakeUpstream, TestGateway, TestPki};

fn sha256_hex(key: &str) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(key.as_bytes()))
}

async fn send(c: &Client, path: &str, headers: &[(&str, &str)]) -> crate::support::client::Reply {
    crate::support::client::send_with(c, "GET", path, headers).await
}

#[tokio::test]
async fn api_keys_good_bad_expired_and_missing() {
    let pki = TestPki::new();
    let (key, _) = portcullis::auth::new_api_key("batch").unwrap();
    let (old_key, _) = portcullis::auth::new_api_key("old").unwrap();
    let policy = format!(
        r#"
principals:
  - {{ name: batch, api_key: {{ sha256: "{}", expires: 2999-12-31 }}, roles: [batch] }}
  - {{ name: old, api_key: {{ sha256: "{}", expires: 2020-01-01 }}, roles: [batch] }}
routes:
  - {{ name: jobs, match: {{ prefix: / }}, upstream: app, allow: {{ roles: [batch] }} }}
"#,
        sha256_hex(&key),
        sha256_hex(&old_key)
    );
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(
        &pki,
        &yaml_with(&pki, up.addr, "client_auth: optional", &policy),
    )
    .await;
    let c = gw.client(None);

    let ok = send(&c, "/run", &[("x-api-key", &key)]).await;
    assert_eq!(ok.status, 200);
    let seen = up.last();
    assert_eq!(seen.headers["x-client-id"], "batch");
    assert_eq!(seen.headers["x-client-auth"], "api_key");
    assert_eq!(seen.headers["x-client-roles"], "batch");
    assert!(
        !seen.headers.contains_key("x-api-key"),
        "the consumed key is not forwarded"
    );

    let n = up.requests().len();
    for (name, value) in [("bad", "pk_not-a-real-key"), ("expired", old_key.as_str())] {
        let r = send(&c, "/run", &[("X-Api-Key", value)]).await;
        assert_eq!(r.status, 401, "{name} key");
        assert_eq!(r.json()["error"], "authentication required");
        assert!(
            !String::from_utf8_lossy(&r.body).contains(value),
            "the body never echoes the key"
        );
    }
    let missing = send(&c, "/run", &[]).await;
    assert_eq!(missing.status, 401);
    assert_eq!(
        up.requests().len(),
        n,
        "refused requests never reach the upstream"
    );
}

#[tokio::test]
async fn jwt_from_a_jwks_file_checks_signature_claims_and_algorithm() {
    let pki = TestPki::new();
    let signer = Signer::es256("k1");
    let stranger = Signer::es256("k1");
    std::fs::write(pki.file("jwks.json"), jwks(&[&signer])).unwrap();
    let policy = r#"
jwt:
  issuer: https://idp.test
  audiences: [portcullis]
  jwks: jwks.json
  algorithms: [ES256]
  leeway: 5s
principals:
  - { name: engineers, jwt: { claim: groups, contains: engineering }, roles: [reader] }
routes:
  - { name: me, match: { exact: /me }, upstream: app, allow: authenticated }
  - { name: docs, match: { prefix: / }, upstream: app, allow: { roles: [reader] } }
"#;
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(
        &pki,
        &yaml_with(&pki, up.addr, "client_auth: optional", policy),
    )
    .await;
    let c = gw.client(None);
    let claims = |extra: serde_json::Value| {
        let mut base = json!({"iss": "https://idp.test", "aud": "portcullis", "sub": "u-42", "exp": now() + 300, "groups": ["engineering"]});
        base.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        base
    };

    let good = signer.token(&claims(json!({})));
    let r = send(&c, "/docs", &[("authorization", &format!("Bearer {good}"))]).await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.headers["x-client-id"], "u-42");
    assert_eq!(seen.headers["x-client-principals"], "engineers");
    assert_eq!(seen.headers["x-client-auth"], "jwt");
    assert!(!seen.headers.contains_key("authorization"));

    let outsider = signer.token(&claims(json!({"groups": ["sales"]})));
    assert_eq!(
        send(
            &c,
            "/me",
            &[("authorization", &format!("Bearer {outsider}"))]
        )
        .await
        .status,
        200
    );
    assert_eq!(
        send(
            &c,
            "/docs",
            &[("authorization", &format!("Bearer {outsider}"))]
        )
        .await
        .status,
        403
    );

    let bad = [
        ("expired", signer.token(&claims(json!({"exp": now() - 60})))),
        (
            "not yet valid",
            signer.token(&claims(json!({"nbf": now() + 120}))),
        ),
        (
            "wrong issuer",
            signer.token(&claims(json!({"iss": "https://evil.test"}))),
        ),
        (
            "wrong audience",
            signer.token(&claims(json!({"aud": "someone-else"}))),
        ),
        (
            "no exp",
            signer.token(&json!({"iss": "https://idp.test", "aud": "portcullis", "sub": "x"})),
        ),
        ("unknown signer", stranger.token(&claims(json!({})))),
        (
            "HS256 not allowed",
            hs256(b"0123456789abcdef0123456789abcdef", &claims(json!({}))),
        ),
        ("garbage", "not.a.jwt".to_owned()),
    ];
    for (name, token) in bad {
        let r = send(&c, "/me", &[("authorization", &format!("Bearer {token}"))]).await;
        assert_eq!(r.status, 401, "{name}");
        let challenge = r
            .headers
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(
            challenge.as_deref(),
            Some("Bearer realm=\"portcullis\""),
            "{name}"
        );
    }
    let missing = send(&c, "/me", &[]).await;
    assert_eq!(missing.status, 401);
    assert!(missing.headers.contains_key("www-authenticate"));
}

#[tokio::test]
async fn jwks_file_changes_are_picked_up() {
    let pki = TestPki::new();
    let first = Signer::es256("k1");
    let second = Signer::es256("k2");
    std::fs::write(pki.file("jwks.json"), jwks(&[&first])).unwrap();
    let policy = r#"
jwt: { jwks: jwks.json, algorithms: [ES256] }
routes:
  - { name: me, match: { prefix: / }, upstream: app, allow: authenticated }
"#;
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(
        &pki,
        &yaml_with(&pki, up.addr, "client_auth: optional", policy),
    )
    .await;
    let c = gw.client(None);
    let token = second.token(&json!({"sub": "rotated", "exp": now() + 300}));
    let bearer = format!("Bearer {token}");
    assert_eq!(
        send(&c, "/", &[("authorization", &bearer)]).await.status,
        401
    );
    // A broken write is ignored; the rotated set is used once it lands.
    std::fs::write(pki.file("jwks.json"), "{ not json").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    std::fs::write(pki.file("jwks.json"), jwks(&[&first, &second])).unwrap();
    let mut status = 0;
    for _ in 0..40 {
        status = send(&c, "/", &[("authorization", &bearer)])
            .await
            .status
            .as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status, 200,
        "the new key is used within seconds of the write"
    );
}

#[tokio::test]
async fn jwks_from_an_https_url_and_certificate_bound_tokens() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let alice = pki.client("ops-alice");
    let signer = Signer::es256("url-key");
    let server = JwksServer::start(&pki, jwks(&[&signer])).await;
    let policy = format!(
        r#"
jwt:
  jwks: https://localhost:{}/.well-known/jwks.json
  jwks_ca: ca.crt
  algorithms: [ES256]
  bind_to_certificate: true
routes:
  - {{ name: me, match: {{ prefix: / }}, upstream: app, allow: {{ factors: [certificate, jwt] }} }}
"#,
        server.addr.port()
    );
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, &policy)).await;
    let thumb = |der: &[u8]| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(<sha2::Sha256 as sha2::Digest>::digest(der))
    };
    let token = signer
        .token(&json!({"sub": "bob", "exp": now() + 300, "cnf": {"x5t#S256": thumb(&bob.der)}}));
    let bearer = format!("Bearer {token}");
    let mut status = 0;
    for _ in 0..50 {
        status = send(&gw.client(Some(&bob)), "/", &[("authorization", &bearer)])
            .await
            .status
            .as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status, 200,
        "the JWKS was fetched over https and the bound token accepted"
    );
    assert_eq!(up.last().headers["x-client-auth"], "certificate,jwt");
    // The same token presented over another client's certificate is refused.
    assert_eq!(
        send(&gw.client(Some(&alice)), "/", &[("authorization", &bearer)])
            .await
            .status,
        401
    );
    drop(server);
}

#[tokio::test]
async fn basic_credentials_and_the_brute_force_guard() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let hash = portcullis::auth::hash_password("correct horse").unwrap();
    let policy = format!(
        r#"
basic: {{ realm: "staff area" }}
rate_limits:
  auth_failures: {{ key: ip, rate: 1/min, burst: 3 }}
principals:
  - {{ name: alice, basic: {{ user: alice, argon2: "{hash}" }}, roles: [reader] }}
  - {{ name: readers, cert: {{ cn: "reader-*" }}, roles: [reader] }}
routes:
  - {{ name: docs, match: {{ prefix: / }}, upstream: app, allow: {{ roles: [reader] }} }}
"#
    );
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(
        &pki,
        &yaml_with(&pki, up.addr, "client_auth: optional", &policy),
    )
    .await;
    let c = gw.client(None);

    let ok = send(
        &c,
        "/doc",
        &[("authorization", &basic("alice", "correct horse"))],
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(up.last().headers["x-client-id"], "alice");
    assert_eq!(up.last().headers["x-client-auth"], "basic");

    for (user, pass) in [
        ("alice", "wrong"),
        ("mallory", "correct horse"),
        ("alice", ""),
    ] {
        let r = send(&c, "/doc", &[("authorization", &basic(user, pass))]).await;
        assert_eq!(r.status, 401, "{user}:{pass}");
        assert_eq!(
            r.headers["www-authenticate"],
            "Basic realm=\"staff area\", charset=\"UTF-8\""
        );
    }
    // Three failures spent the budget: even the right password now gets 429.
    let blocked = send(
        &c,
        "/doc",
        &[("authorization", &basic("alice", "correct horse"))],
    )
    .await;
    assert_eq!(blocked.status, 429);
    assert_eq!(blocked.json()["error"], "too many failed authentications");
    let retry: u64 = blocked.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // A request without credentials (here: a certificate only) is not affected.
    assert_eq!(gw.client(Some(&bob)).get("/doc").await.unwrap().status, 200);
    // The guard's 429 is counted as such, against the route the request was for.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let m = crate::support::admin_get(gw.admin.unwrap(), "/metrics").await;
    for want in [
        "portcullis_authz_denied_total{route=\"docs\",reason=\"bad_credential\"} 3",
        "portcullis_authz_denied_total{route=\"docs\",reason=\"auth_failures\"} 1",
        "portcullis_requests_total{route=\"docs\",status=\"429\"} 1",
    ] {
        assert!(m.contains(want), "missing {want} in\n{m}");
    }
}

#[tokio::test]
async fn factors_demand_every_credential_and_an_invalid_one_is_never_ignored() {
    let mut pki = TestPki::new();
    let ops = pki.client("ops-alice");
    let (key, _) = portcullis::auth::new_api_key("ops-key").unwrap();
    let policy = format!(
        r#"
principals:
  - {{ name: ops, cert: {{ cn: "ops-*" }}, roles: [admin] }}
  - {{ name: ops-key, api_key: {{ sha256: "{}" }}, roles: [admin] }}
routes:
  - name: admin
    match: {{ prefix: /admin/ }}
    upstream: app
    allow: {{ roles: [admin], factors: [certificate, api_key] }}
  - {{ name: rest, match: {{ prefix: / }}, upstream: app, allow: authenticated }}
"#,
        sha256_hex(&key)
    );
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(
        &pki,
        &yaml_with(&pki, up.addr, "client_auth: optional", &policy),
    )
    .await;
    let with_cert = gw.client(Some(&ops));
    let without = gw.client(None);

    assert_eq!(
        send(&with_cert, "/admin/x", &[]).await.status,
        403,
        "certificate alone"
    );
    assert_eq!(
        send(&without, "/admin/x", &[("x-api-key", &key)])
            .await
            .status,
        403,
        "key alone"
    );
    let both = send(&with_cert, "/admin/x", &[("x-api-key", &key)]).await;
    assert_eq!(both.status, 200);
    assert_eq!(up.last().headers["x-client-auth"], "certificate,api_key");
    assert_eq!(up.last().headers["x-client-principals"], "ops,ops-key");
    let bad_beside_good = send(&with_cert, "/other", &[("x-api-key", "pk_wrong")]).await;
    assert_eq!(
        bad_beside_good.status, 401,
        "an invalid key is refused even beside a valid certificate"
    );
}

#[tokio::test]
async fn when_conditions_on_ip_certificate_and_headers() {
    let mut pki = TestPki::new();
    pki.add_client(
        "reader-p",
        portcullis::pki::ClientSpec {
            cn: "reader-p".into(),
            ou: Some("Platform".into()),
            days: 30,
            ..Default::default()
        },
    );
    let platform = pki.client("reader-p");
    let plain = pki.client("reader-q");
    let policy = r#"
principals:
  - { name: readers, cert: { cn: "reader-*" }, roles: [reader] }
routes:
  - name: local-platform
    match: { prefix: /local/ }
    upstream: app
    allow: { roles: [reader], when: { source_ip: [127.0.0.0/8, "::1"], cert: { ou: Platform }, headers: { x-tenant: ["acme-*", globex] } } }
  - name: remote-only
    match: { prefix: /remote/ }
    upstream: app
    allow: { roles: [reader], when: { source_ip: 10.0.0.0/8 } }
"#;
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, policy)).await;
    let p = gw.client(Some(&platform));
    assert_eq!(
        send(&p, "/local/x", &[("x-tenant", "acme-eu")])
            .await
            .status,
        200
    );
    assert_eq!(
        send(&p, "/local/x", &[("x-tenant", "globex")]).await.status,
        200
    );
    assert_eq!(
        send(&p, "/local/x", &[("x-tenant", "initech")])
            .await
            .status,
        403
    );
    assert_eq!(send(&p, "/local/x", &[]).await.status, 403);
    assert_eq!(
        send(
            &gw.client(Some(&plain)),
            "/local/x",
            &[("x-tenant", "acme-eu")]
        )
        .await
        .status,
        403
    );
    assert_eq!(
        send(&p, "/remote/x", &[]).await.status,
        403,
        "127.0.0.1 is not in 10.0.0.0/8"
    );
}

#[tokio::test]
async fn credentials_are_forwarded_only_when_configured() {
    let pki = TestPki::new();
    let (key, _) = portcullis::auth::new_api_key("k").unwrap();
    let policy = format!(
        "principals:\n  - {{ name: k, api_key: {{ sha256: \"{}\" }}, roles: [r] }}\nroutes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: app, allow: {{ roles: [r] }} }}\nforward:\n  credentials: true\n",
        sha256_hex(&key)
    );
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(
        &pki,
        &yaml_with(&pki, up.addr, "client_auth: optional", &policy),
    )
    .await;
    assert_eq!(
        send(&gw.client(None), "/", &[("x-api-key", &key)])
            .await
            .status,
        200
    );
    assert_eq!(
        up.last().headers["x-api-key"],
        key.as_str(),
        "forward.credentials: true keeps the key"
    );
}
