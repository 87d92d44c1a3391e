//! Opaque OAuth 2.0 bearer tokens checked by introspection (RFC 7662) at a local https
//! authorization server: active, inactive, a missing scope, the cache, one call for many
//! concurrent requests, and an unreachable provider (503, nothing cached).

use std::time::Duration;

use serde_json::json;

use crate::support::client::request;
use crate::support::gateway::yaml_with;
use crate::support::idp::{CLIENT_ID, CLIENT_SECRET, Idp};
use crate::support::{Client, FakeUpstream, TestGateway, TestPki};

async fn get(c: &Client, path: &str, token: &str) -> crate::support::client::Reply {
    let mut req = request("GET", path);
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    c.send(req).await.unwrap()
}

fn policy(idp: std::net::SocketAddr, extra: &str) -> String {
    format!(
        r#"
oauth:
  introspection_url: https://localhost:{port}/oauth2/introspect
  client_id: {CLIENT_ID}
  client_secret: "{CLIENT_SECRET}"
  ca: ca.crt
  cache: 60s
rate_limits:
  # Twenty requests at once with a token being introspected each hold an attempt.
  auth_failures: {{ key: ip, rate: 100/min, burst: 40 }}
{extra}
principals:
  - {{ name: partner-app, oauth: {{ client_id: "partner-*", scope: "orders:read" }}, roles: [orders] }}
routes:
  - {{ name: orders, match: {{ prefix: /orders/ }}, upstream: app, allow: {{ roles: [orders] }} }}
  - {{ name: rest, match: {{ prefix: / }}, upstream: app, allow: authenticated }}
"#,
        port = idp.port()
    )
}

#[tokio::test]
async fn introspected_tokens_are_active_inactive_or_short_of_a_scope_and_cached() {
    let pki = TestPki::new();
    let idp = Idp::start(&pki).await;
    let far = crate::support::otp::now() + 3600;
    idp.set(
        "opaque-good",
        json!({"active": true, "client_id": "partner-7", "sub": "svc-7", "scope": "orders:read orders:write", "exp": far}),
    );
    idp.set(
        "opaque-narrow",
        json!({"active": true, "client_id": "partner-8", "scope": "profile", "exp": far}),
    );
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(
        &pki,
        &yaml_with(
            &pki,
            up.addr,
            "client_auth: optional",
            &policy(idp.addr, ""),
        ),
    )
    .await;
    let c = gw.client(None);

    let r = get(&c, "/orders/1", "opaque-good").await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let seen = up.last();
    assert_eq!(seen.headers["x-client-id"], "svc-7");
    assert_eq!(seen.headers["x-client-auth"], "oauth");
    assert_eq!(seen.headers["x-client-principals"], "partner-app");
    assert!(!seen.headers.contains_key("authorization"));
    assert_eq!(idp.calls(), 1);

    // Cached: no second call for the same token.
    for _ in 0..3 {
        assert_eq!(get(&c, "/orders/1", "opaque-good").await.status, 200);
    }
    assert_eq!(idp.calls(), 1, "answers are cached");

    // Active but without the scope: authenticated, not a partner-app.
    assert_eq!(get(&c, "/orders/1", "opaque-narrow").await.status, 403);
    assert_eq!(get(&c, "/other", "opaque-narrow").await.status, 200);

    // Inactive (unknown, revoked, expired at the IdP): 401, and cached briefly too.
    let before = idp.calls();
    assert_eq!(get(&c, "/other", "opaque-unknown").await.status, 401);
    assert_eq!(get(&c, "/other", "opaque-unknown").await.status, 401);
    assert_eq!(idp.calls(), before + 1);
    let m = crate::support::admin_get(gw.admin.unwrap(), "/metrics").await;
    for want in [
        "portcullis_introspections_total{result=\"active\"} 6",
        "portcullis_introspections_total{result=\"inactive\"} 2",
    ] {
        assert!(m.contains(want), "missing {want} in\n{m}");
    }
}

#[tokio::test]
async fn concurrent_requests_with_one_token_make_one_call_and_a_down_idp_is_503() {
    let pki = TestPki::new();
    let idp = Idp::start(&pki).await;
    let far = crate::support::otp::now() + 3600;
    idp.set(
        "opaque-busy",
        json!({"active": true, "client_id": "partner-1", "scope": "orders:read", "exp": far}),
    );
    *idp.delay.lock().unwrap() = Duration::from_millis(300);
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(
        &pki,
        &yaml_with(
            &pki,
            up.addr,
            "client_auth: optional",
            &policy(idp.addr, ""),
        ),
    )
    .await;
    let mut all = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let c = gw.client(None);
        all.spawn(async move { get(&c, "/orders/1", "opaque-busy").await.status.as_u16() });
    }
    let statuses = all.join_all().await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        idp.calls(),
        1,
        "twenty concurrent requests, one introspection call"
    );

    // The provider goes away: a new token gets 503, nothing is cached, and the cached token
    // still works.
    let addr = idp.addr;
    drop(idp);
    let c = gw.client(None);
    let r = get(&c, "/orders/1", "opaque-new").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "identity provider unavailable");
    assert_eq!(get(&c, "/orders/1", "opaque-busy").await.status, 200);

    // Back on the same port: the token that got 503 is asked about again, not remembered.
    let pki2 = pki;
    let idp = Idp::start_on(&pki2, addr).await;
    idp.set(
        "opaque-new",
        json!({"active": true, "client_id": "partner-2", "scope": "orders:read", "exp": far}),
    );
    assert_eq!(get(&c, "/orders/1", "opaque-new").await.status, 200);
    assert_eq!(idp.calls(), 1);
}

#[test]
fn oauth_settings_are_checked_where_they_are_written() {
    let base = "listen: \"127.0.0.1:0\"\ntls: { cert: s.crt, key: s.key, client_auth: off }\nupstreams: { app: { url: \"http://127.0.0.1:9\" } }\nroutes:\n  - { name: r, match: { prefix: / }, upstream: app, allow: authenticated }\n";
    for (extra, want) in [
        (
            "oauth: { introspection_url: \"http://idp.example.com/i\", client_id: a, client_secret: b }\n",
            "oauth.introspection_url: must use https",
        ),
        (
            "oauth: { introspection_url: \"https://idp.example.com/i\", client_secret: b }\n",
            "oauth.client_id: missing",
        ),
        (
            "principals:\n  - { name: p, oauth: { client_id: \"x-*\" }, roles: [r] }\n",
            "principal \"p\" matches introspected OAuth tokens, but there is no oauth: section",
        ),
        (
            "oauth: { introspection_url: \"https://idp/i\", client_id: a, client_secret: b }\nprincipals:\n  - { name: p, oauth: {}, roles: [r] }\n",
            "principals[0].oauth: expected client_id, sub or scope",
        ),
    ] {
        let text = format!("{base}{extra}");
        let e = portcullis::config::from_str(&text, std::path::Path::new("gateway.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "want {want:?} in {e}");
    }
    let ok = format!(
        "{base}oauth: {{ introspection_url: \"http://127.0.0.1:9/i\", client_id: a, client_secret: b }}\n"
    );
    assert!(
        portcullis::config::from_str(&ok, std::path::Path::new("gateway.yaml")).is_ok(),
        "http is allowed on loopback"
    );
}

#[test]
fn policy_tests_can_present_an_introspected_token() {
    let text = "listen: \"127.0.0.1:0\"\ntls: { cert: s.crt, key: s.key, client_auth: off }\nupstreams: { app: { url: \"http://127.0.0.1:9\" } }\noauth: { introspection_url: \"https://idp/i\", client_id: a, client_secret: b }\nprincipals:\n  - { name: partner-app, oauth: { client_id: \"partner-*\", scope: \"orders:read\" }, roles: [orders] }\nroutes:\n  - { name: orders, match: { prefix: /orders/ }, upstream: app, allow: { roles: [orders] } }\ntests:\n  - name: a partner with the scope\n    request: { path: /orders/1, oauth: { client_id: partner-7, scope: \"orders:read orders:write\" } }\n    expect: allow\n  - name: a partner without it\n    request: { path: /orders/1, oauth: { client_id: partner-7, scope: profile } }\n    expect: \"403\"\n  - name: another client\n    request: { path: /orders/1, oauth: { client_id: other, scope: \"orders:read\" } }\n    expect: \"403\"\n";
    let config = portcullis::config::from_str(text, std::path::Path::new("gateway.yaml")).unwrap();
    let outcomes = portcullis::explain::run_tests(&config);
    assert_eq!(outcomes.len(), 3);
    for o in &outcomes {
        assert!(o.failure.is_none(), "{}: {:?}", o.name, o.failure);
    }
}
